//! The efficiency dataset's record-level figures are released exactly as an analyst's
//! query is, under the terms `concordat-policy` decides.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use chrono::NaiveDate;
use concordat_core::{Caller, Role, Schemas};
use concordat_efficiency::rebuild::RECORD_LEVEL_INPUTS;
use concordat_efficiency::{Release, read_inputs};
use concordat_policy::{Access, ForPurpose, Policies, ScopeFilter};
use concordat_query::sdc::cellkey::RecordKey;
use concordat_query::{QueryLimits, QueryRequest, QueryService};
use concordat_store::audit::AuditLog;
use concordat_store::{Mode, Store, StoreConfig, UploadRequest};

const KENT: &str = "E23000032";

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 6, 1).expect("date")
}

fn policies() -> Arc<Policies> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    Arc::new(Policies::load(&dir).expect("policies"))
}

async fn load(store: &Store, dataset: &str) {
    let batches = concordat_synth::Synth::new(0.02, 5)
        .only(&["kent", "essex"])
        .batches(dataset);
    let bytes = concordat_synth::parquet_bytes(&batches).expect("parquet");
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
    let file = store.stage(body).await.expect("stage");
    store
        .upload(UploadRequest {
            schema: Schemas::builtin().get(dataset).expect("schema"),
            mode: Mode::Append,
            partner: "loader".into(),
            subject: "loader".into(),
            agreements: vec![],
            scope: ScopeFilter::All,
            file,
        })
        .await
        .expect("load");
}

fn first(b: &[RecordBatch]) -> Option<f64> {
    let batch = b.iter().find(|b| b.num_rows() > 0)?;
    let a = arrow::compute::cast(batch.column(0), &DataType::Float64).ok()?;
    let a = a.as_primitive::<Float64Type>();
    a.is_valid(0).then(|| a.value(0))
}

#[tokio::test]
async fn reoffending_equals_what_an_analyst_is_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(StoreConfig::new(dir.path().join("data"))).expect("store"));
    load(&store, "reoffending_cohort").await;
    let policies = policies();
    let audit = Arc::new(AuditLog::open(&dir.path().join("audit.log")).expect("audit"));
    let key = Arc::new(RecordKey::from_secret(&[1u8; 32]));
    let service = QueryService::new(
        store.clone(),
        audit,
        policies.clone(),
        QueryLimits::default(),
    )
    .expect("service")
    .with_record_key(key.clone());
    let session = service.session().expect("session");
    let release = Release {
        session: &session,
        terms: policies.derived_terms(&RECORD_LEVEL_INPUTS),
        key: &key,
    };
    let (inputs, _, _) = read_inputs(&store, release).await.expect("inputs");
    let kent = Caller {
        subject: "analyst@kent".into(),
        partner: policies.partners().get("pcc-kent").expect("kent").clone(),
        roles: vec![Role::Analyst],
        purposes: Vec::new(),
    };
    let run = service
        .query(QueryRequest {
            caller: &kent,
            purpose: "reducing-reoffending",
            sql: "SELECT 100.0 * sum(CASE WHEN reoffended THEN 1 ELSE 0 END) / count(*) AS pct, count(*) AS n \
                  FROM reoffending_cohort WHERE cohort_quarter IN ('2023Q2', '2023Q3', '2023Q4', '2024Q1')",
            door: "test",
            today: today(),
            params: &[],
            dialect: concordat_query::Dialect::Standard,
            fresh: false,
        })
        .await
        .expect("analyst");
    let (_, b) = run.collect().await.expect("batches");
    let pct = first(&b).expect("released");
    let figure = inputs
        .reoffending
        .get(&(KENT.to_owned(), "2023-24".to_owned()))
        .expect("Kent 2023-24");
    assert_eq!(figure.value, pct);
    let n = arrow::compute::cast(b[0].column(1), &DataType::Float64).expect("cast");
    assert_eq!(n.as_primitive::<Float64Type>().value(0), figure.weight);
}

/// The rebuild's terms are the strictest any partner's own decision carries for the
/// record-level inputs: no partner is released more through the derived dataset than its
/// own agreement releases, and at least one partner is released exactly as much.
#[test]
fn the_rebuild_applies_terms_no_weaker_than_any_partners_own_decision() {
    let policies = policies();
    let derived = policies.derived_terms(&RECORD_LEVEL_INPUTS);
    let mut matched = false;
    let mut seen = 0;
    for partner in policies.partners().iter() {
        for dataset in RECORD_LEVEL_INPUTS {
            let schema = Schemas::builtin().get(dataset).expect("schema");
            let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
            for purpose in concordat_core::Purpose::KNOWN {
                let typed = concordat_core::Purpose::known(purpose).expect("purpose");
                let Ok(read) = policies.effective_read(
                    partner,
                    &schema.name,
                    &columns,
                    ForPurpose::One(&typed),
                    today(),
                ) else {
                    continue;
                };
                if read.access != Access::Aggregate {
                    continue;
                }
                let terms = read.terms.expect("aggregate access has terms");
                seen += 1;
                assert!(
                    terms.min_count <= derived.min_count && terms.round_to <= derived.round_to,
                    "{} {dataset} {purpose}: {terms:?} stricter than the rebuild's {derived:?}",
                    partner.id
                );
                matched |= terms == derived;
            }
        }
    }
    assert!(
        seen >= 43,
        "every PCC reads the inputs as aggregates: {seen}"
    );
    assert!(matched, "the rebuild's terms are some partner's own terms");
}
