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
    /// The shared store the tables are on, when not the local directory.
    pub shared: Option<concordat_store::Shared>,
}

/// Where a fixture keeps its tables.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Local,
    S3,
}

pub fn fixture() -> Fixture {
    fixture_with(|_| {})
}

pub fn fixture_with(tune: impl FnOnce(&mut StoreConfig)) -> Fixture {
    fixture_on(Backend::Local, tune)
}

/// A store on the backend, with a fresh prefix of its own on S3.
pub fn fixture_on(backend: Backend, tune: impl FnOnce(&mut StoreConfig)) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = StoreConfig::new(dir.path().join("data"));
    let shared = match backend {
        Backend::Local => None,
        Backend::S3 => Some(s3_prefix()),
    };
    cfg.shared = shared.clone();
    tune(&mut cfg);
    let store = Store::open(cfg).expect("store");
    Fixture { dir, store, shared }
}

impl Fixture {
    /// Another store (a replica) on the same tables.
    pub fn replica(&self) -> Store {
        self.replica_with(|_| {})
    }

    /// Another store on the same tables, with settings of its own.
    pub fn replica_with(&self, tune: impl FnOnce(&mut StoreConfig)) -> Store {
        let mut cfg = StoreConfig::new(self.dir.path().join("replica"));
        cfg.shared = self.shared.clone();
        if cfg.shared.is_none() {
            cfg.data_dir = self.dir.path().join("data");
        }
        tune(&mut cfg);
        Store::open(cfg).expect("replica")
    }

    /// Names of a table's data files (not its log).
    pub async fn data_files(&self, dataset: &str) -> Vec<String> {
        let mut names: Vec<String> = match &self.shared {
            Some(shared) => shared
                .list(&format!("tables/{dataset}"), None)
                .await
                .expect("list")
                .into_iter()
                .filter_map(|(k, _)| {
                    let rest = k.strip_prefix(&format!("tables/{dataset}/"))?.to_owned();
                    (!rest.contains('/') && rest.ends_with(".parquet")).then_some(rest)
                })
                .collect(),
            None => std::fs::read_dir(self.dir.path().join("data/tables").join(dataset))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.ends_with(".parquet"))
                        .collect()
                })
                .unwrap_or_default(),
        };
        names.sort();
        names
    }

    /// The bytes of one of a table's data files.
    pub async fn read_data_file(&self, dataset: &str, name: &str) -> bytes::Bytes {
        match &self.shared {
            Some(shared) => shared
                .get(&format!("tables/{dataset}/{name}"))
                .await
                .expect("get")
                .expect("there"),
            None => std::fs::read(self.dir.path().join("data/tables").join(dataset).join(name))
                .expect("read")
                .into(),
        }
    }

    /// Writes a file into a table's directory (as a crash or another tool might).
    pub async fn put_data_file(&self, dataset: &str, name: &str, bytes: bytes::Bytes) {
        match &self.shared {
            Some(shared) => shared
                .put(&format!("tables/{dataset}/{name}"), bytes)
                .await
                .expect("put"),
            None => std::fs::write(
                self.dir.path().join("data/tables").join(dataset).join(name),
                bytes,
            )
            .expect("write"),
        }
    }

    /// Entries left in the local staging directory.
    pub fn staging_entries(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("data/staging"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// An S3-compatible server on loopback for this test process (`moto`'s server, which
/// honours conditional writes), started once. It runs under a shell that stops it when
/// this process's end of a pipe closes, so no server outlives the tests.
struct S3Server {
    endpoint: String,
    _guard: std::sync::Mutex<(std::process::Child, std::process::ChildStdin)>,
}

fn s3_server() -> &'static S3Server {
    static SERVER: std::sync::OnceLock<S3Server> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "python3 -m moto.server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & pid=$!; read _; kill $pid"
                ),
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("python3 -m moto.server (pip install 'moto[server]')");
        let stdin = child.stdin.take().expect("stdin");
        let endpoint = format!("http://127.0.0.1:{port}");
        let start = std::time::Instant::now();
        let http = reqwest::blocking::Client::new();
        loop {
            match http.put(format!("{endpoint}/concordat")).send() {
                Ok(r) if r.status().is_success() => break,
                _ if start.elapsed() > std::time::Duration::from_secs(30) => {
                    panic!("the S3 server did not start on {endpoint}")
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
        S3Server {
            endpoint,
            _guard: std::sync::Mutex::new((child, stdin)),
        }
    })
}

/// A fresh prefix on the test S3 server.
fn s3_prefix() -> concordat_store::Shared {
    let server = std::thread::spawn(|| s3_server().endpoint.clone())
        .join()
        .expect("server");
    let settings = concordat_store::S3Settings {
        endpoint: Some(server),
        region: Some("us-east-1".into()),
        allow_http: true,
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
    };
    let url = format!("s3://concordat/{}", uuid::Uuid::new_v4().simple());
    concordat_store::Shared::connect(&url, &settings).expect("connect")
}

/// Tests run once on a local directory and once on S3: `on_both! { async fn name(f) {...} }`.
macro_rules! on_both {
    ($(#[$m:meta])* async fn $name:ident($f:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn case($f: $crate::support::Fixture) $body
            #[tokio::test]
            async fn local() {
                case($crate::support::fixture_on($crate::support::Backend::Local, |_| {})).await
            }
            #[tokio::test]
            async fn s3() {
                case($crate::support::fixture_on($crate::support::Backend::S3, |_| {})).await
            }
        }
    };
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
