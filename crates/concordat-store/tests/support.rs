//! Shared helpers: a store in a temp dir, files made from synthetic batches.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use concordat_core::Schemas;
use concordat_policy::ScopeFilter;
use concordat_store::{
    Mode, Store, StoreConfig, StoreError, UploadOutcome, UploadRequest, Violations,
};
use concordat_synth::Synth;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: Store,
}

pub fn fixture() -> Fixture {
    fixture_with(|_| {})
}

pub fn fixture_with(tune: impl FnOnce(&mut StoreConfig)) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = StoreConfig::new(dir.path().join("data"));
    tune(&mut cfg);
    let store = Store::open(cfg).expect("store");
    Fixture { dir, store }
}

pub fn parquet_bytes(batches: &[RecordBatch]) -> Vec<u8> {
    concordat_synth::parquet_bytes(batches).expect("parquet")
}

pub fn synth(dataset: &str, forces: &[&str]) -> Vec<RecordBatch> {
    Synth::new(0.01, 42).only(forces).batches(dataset)
}

/// A copy of the batch with one text value replaced (or nulled).
pub fn set_text(batch: &RecordBatch, column: &str, row: usize, value: Option<&str>) -> RecordBatch {
    let i = batch.schema().index_of(column).expect("column");
    let old = batch.column(i).as_string::<i32>();
    let new: StringArray = (0..old.len())
        .map(|r| {
            if r == row {
                value.map(str::to_owned)
            } else {
                old.is_valid(r).then(|| old.value(r).to_owned())
            }
        })
        .collect();
    replace(batch, i, Arc::new(new))
}

pub fn replace(batch: &RecordBatch, i: usize, array: ArrayRef) -> RecordBatch {
    let mut cols = batch.columns().to_vec();
    cols[i] = array;
    let mut fields: Vec<_> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[i] = fields[i]
        .clone()
        .with_nullable(true)
        .with_data_type(cols[i].data_type().clone());
    RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), cols).expect("batch")
}

pub async fn upload(
    store: &Store,
    dataset: &str,
    mode: Mode,
    partner: &str,
    scope: ScopeFilter,
    bytes: Vec<u8>,
) -> Result<UploadOutcome, StoreError> {
    let schema = Schemas::builtin().get(dataset).expect("schema");
    let body = futures::stream::iter(
        bytes
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let file = store.stage(body).await?;
    store
        .upload(UploadRequest {
            schema,
            mode,
            partner: partner.into(),
            subject: format!("{partner}-user"),
            agreements: vec!["test-agreement".into()],
            scope,
            file,
        })
        .await
}

pub fn kent() -> ScopeFilter {
    ScopeFilter::Forces(["E23000032".to_owned()].into())
}

pub fn violations(r: Result<UploadOutcome, StoreError>) -> Violations {
    match r {
        Err(StoreError::Validation(v)) => v,
        other => panic!("expected a validation failure, got {other:?}"),
    }
}

/// Rows of the dataset's latest (or given) version, via DataFusion over the Delta table.
pub async fn count_rows(store: &Store, dataset: &str, version: Option<u64>, filter: &str) -> usize {
    let table = store.table(dataset, version).await.expect("table");
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("t", table.table_provider().await.expect("provider"))
        .expect("register");
    let sql = format!("SELECT count(*) AS n FROM t {filter}");
    let batches = ctx
        .sql(&sql)
        .await
        .expect("sql")
        .collect()
        .await
        .expect("collect");
    batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0) as usize
}

/// A copy of the batch with one primitive value replaced (or nulled).
pub fn set_prim<T: arrow::datatypes::ArrowPrimitiveType>(
    batch: &RecordBatch,
    column: &str,
    row: usize,
    value: Option<T::Native>,
) -> RecordBatch {
    let i = batch.schema().index_of(column).expect("column");
    let old = batch.column(i).as_primitive::<T>();
    let new: arrow::array::PrimitiveArray<T> = (0..old.len())
        .map(|r| {
            if r == row {
                value
            } else {
                old.is_valid(r).then(|| old.value(r))
            }
        })
        .collect();
    replace(batch, i, Arc::new(new))
}

/// First row where a boolean column has the value.
pub fn row_where(batch: &RecordBatch, column: &str, value: bool) -> usize {
    let a = batch
        .column(batch.schema().index_of(column).expect("column"))
        .as_boolean();
    (0..a.len()).find(|&r| a.value(r) == value).expect("row")
}

/// First row where a text column has the value.
pub fn row_with(batch: &RecordBatch, column: &str, value: &str) -> usize {
    let a = batch
        .column(batch.schema().index_of(column).expect("column"))
        .as_string::<i32>();
    (0..a.len()).find(|&r| a.value(r) == value).expect("row")
}
