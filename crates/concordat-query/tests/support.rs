//! A store loaded with synthetic data, the shipped policies (plus test agreements), and
//! a reference engine that applies the filters by hand.

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use chrono::NaiveDate;
use concordat_core::Schemas;
use concordat_core::{Caller, Role};
use concordat_policy::{Policies, ScopeFilter};
use concordat_query::{QueryError, QueryLimits, QueryRequest, QueryRun, QueryService};
use concordat_store::audit::AuditLog;
use concordat_store::{Mode, Store, StoreConfig, UploadRequest};
use concordat_synth::Synth;
use datafusion::prelude::SessionContext;

/// Extra agreement for column rules: the Home Office sees court cases without pseudonyms,
/// with offence dates coarsened to the month.
const TEST_AGREEMENT: &str = r#"
title = "Test: court timeliness without identifiers"
purposes = ["inspection"]
providers = { partners = ["cps"] }
recipients = { partners = ["home-office"] }
[read.court_timeliness]
access = "record"
scope = "all"
hidden = ["person_id", "case_id"]
generalise = { offence_date = "month" }
"#;

pub struct World {
    pub _dir: tempfile::TempDir,
    pub store: Arc<Store>,
    pub audit: Arc<AuditLog>,
    pub service: QueryService,
    pub policies: Arc<Policies>,
}

/// The audit trail of a test store.
pub fn audit_log(store: &Store) -> Arc<AuditLog> {
    Arc::new(
        AuditLog::open(&store.config().data_dir.join("audit").join("audit.log")).expect("audit"),
    )
}

/// A world around a store and policies.
pub fn world_of(
    dir: tempfile::TempDir,
    store: Arc<Store>,
    policies: Arc<Policies>,
    limits: QueryLimits,
) -> World {
    let audit = audit_log(&store);
    let service =
        QueryService::new(store.clone(), audit.clone(), policies.clone(), limits).expect("service");
    World {
        _dir: dir,
        store,
        audit,
        service,
        policies,
    }
}

pub fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 6, 1).expect("date")
}

async fn load(store: &Store, dataset: &str, forces: &[&str], scale: f64) {
    load_batches(
        store,
        dataset,
        &Synth::new(scale, 5).only(forces).batches(dataset),
    )
    .await;
}

/// Commits batches as a new version of a dataset, through the real upload path.
pub async fn load_batches(store: &Store, dataset: &str, batches: &[RecordBatch]) {
    let bytes = concordat_synth::parquet_bytes(batches).expect("parquet");
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

pub async fn world_with(limits: QueryLimits) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policies_dir).expect("dir");
    for e in std::fs::read_dir(
        Path::new(
            &std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
        )
        .join("../../policies"),
    )
    .expect("policies")
    {
        let p = e.expect("entry").path();
        std::fs::copy(&p, policies_dir.join(p.file_name().expect("name"))).expect("copy");
    }
    std::fs::write(
        policies_dir.join("test-court-without-ids.toml"),
        TEST_AGREEMENT,
    )
    .expect("write");
    let policies = Arc::new(Policies::load(&policies_dir).expect("policies"));
    let store = Arc::new(Store::open(StoreConfig::new(dir.path().join("data"))).expect("store"));
    let three = ["kent", "essex", "surrey"];
    load(&store, "force_performance", &three, 0.01).await;
    load(&store, "force_resources", &three, 0.01).await;
    load(&store, "reoffending_cohort", &["kent", "essex"], 0.02).await;
    load(&store, "court_timeliness", &["kent", "essex"], 0.02).await;
    world_of(dir, store, policies, limits)
}

pub async fn world() -> World {
    world_with(QueryLimits::default()).await
}

impl World {
    /// An analyst and inspector of the partner.
    pub fn caller(&self, partner: &str) -> Caller {
        Caller {
            subject: format!("test@{partner}"),
            partner: self
                .policies
                .partners()
                .get(partner)
                .expect("partner")
                .clone(),
            roles: vec![Role::Analyst, Role::Inspector],
            purposes: Vec::new(),
        }
    }

    /// Another service over the same store, with this record-key secret.
    pub fn service_with(&self, key: concordat_query::sdc::cellkey::RecordKey) -> QueryService {
        QueryService::new(
            self.store.clone(),
            self.audit.clone(),
            self.policies.clone(),
            QueryLimits::default(),
        )
        .expect("service")
        .with_record_key(Arc::new(key))
    }

    /// Starts a query on a service, as the partner's analyst.
    pub async fn start_on(
        &self,
        service: &QueryService,
        partner: &str,
        sql: &str,
        purpose: &str,
        day: NaiveDate,
    ) -> Result<QueryRun, QueryError> {
        let caller = self.caller(partner);
        service
            .query(QueryRequest {
                caller: &caller,
                purpose,
                sql,
                door: "test",
                today: day,
                params: &[],
                dialect: concordat_query::Dialect::Standard,
                fresh: false,
            })
            .await
    }

    /// Starts a query as the partner's analyst.
    pub async fn start(
        &self,
        partner: &str,
        sql: &str,
        purpose: &str,
    ) -> Result<QueryRun, QueryError> {
        self.start_on(&self.service, partner, sql, purpose, today())
            .await
    }

    pub async fn run_on(
        &self,
        partner: &str,
        sql: &str,
        purpose: &str,
        day: NaiveDate,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        let mut run = self
            .start_on(&self.service, partner, sql, purpose, day)
            .await?;
        let mut out = Vec::new();
        while let Some(b) = run.batches.recv().await {
            out.push(b?);
        }
        Ok(out)
    }

    /// Runs a query on a service, as the partner's analyst, today.
    pub async fn run_on_service(
        &self,
        service: &QueryService,
        partner: &str,
        sql: &str,
        purpose: &str,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        let mut run = self
            .start_on(service, partner, sql, purpose, today())
            .await?;
        let mut out = Vec::new();
        while let Some(b) = run.batches.recv().await {
            out.push(b?);
        }
        Ok(out)
    }

    /// The store's data directory.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.store.config().data_dir.clone()
    }

    pub async fn run(
        &self,
        partner: &str,
        sql: &str,
        purpose: &str,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        self.run_on(partner, sql, purpose, today()).await
    }

    /// The same SQL in plain DataFusion, each table replaced by a view filtered by hand.
    pub async fn direct(&self, sql: &str, views: &[(&str, &str)]) -> Vec<RecordBatch> {
        let ctx = SessionContext::new();
        for (name, filter) in views {
            let table = self.store.table(name, None).await.expect("table");
            table
                .update_datafusion_session(&ctx.state())
                .expect("session");
            ctx.register_table(
                format!("raw_{name}").as_str(),
                table.table_provider().await.expect("provider"),
            )
            .expect("register");
            ctx.sql(&format!(
                "CREATE VIEW {name} AS SELECT * FROM raw_{name} WHERE {filter}"
            ))
            .await
            .expect("view");
        }
        ctx.sql(sql)
            .await
            .expect("direct sql")
            .collect()
            .await
            .expect("direct collect")
    }
}

/// Rows as sorted text lines, for comparing results regardless of order and batching.
pub fn lines(batches: &[RecordBatch]) -> Vec<String> {
    let text = arrow::util::pretty::pretty_format_batches(batches)
        .expect("format")
        .to_string();
    let mut rows: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(str::to_owned)
        .collect();
    rows.sort();
    rows
}

pub fn count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

pub fn single_i64(batches: &[RecordBatch]) -> i64 {
    use arrow::array::AsArray;
    batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0)
}

pub fn texts(batches: &[RecordBatch], col: usize) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let a =
            arrow::compute::cast(b.column(col), &arrow::datatypes::DataType::Utf8).expect("cast");
        let a = arrow::array::AsArray::as_string::<i32>(&a);
        out.extend(a.iter().map(|v| v.unwrap_or("NULL").to_owned()));
    }
    out
}
