//! Durable state on an S3-compatible object store, shared by every replica.
//!
//! With `[store] url = "s3://bucket/prefix"`, everything that must outlive a process and
//! be seen by every replica lives under that prefix: the tables (`tables/<dataset>/`, Delta
//! Lake, whose commits are put-if-absent: `If-None-Match: *`, never a rename), the audit
//! trail (`audit/`), the token register (`tokens/`), the record-key secret (`keys/`) and
//! the leases of background work (`leases/`). What stays on local disk is scratch: staged
//! uploads and the worker's files before they are copied up, query spill, and a local
//! copy of the audit trail for reading.
//!
//! The store is `object_store`'s S3 client. The audit log and the token register are
//! written from plain threads (an audit event is durable before an answer completes, and
//! the writers are synchronous), so their requests run on one small runtime of their own
//! and the caller waits for the result ([`Shared::block_on`]).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use url::Url;

use crate::StoreError;

/// Where durable state lives: a local directory (the embedded default) or a shared
/// object store.
#[derive(Debug, Clone)]
pub enum Location {
    /// The data directory.
    Local(std::path::PathBuf),
    /// An S3-compatible object store.
    Shared(Shared),
}

/// How to reach an S3-compatible store; anything unset comes from the usual `AWS_*`
/// variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// Endpoint URL (a non-AWS store, or a local one).
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Allow `http://` endpoints.
    pub allow_http: bool,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
}

/// A connection to the shared store, rooted at the configured prefix.
#[derive(Clone)]
pub struct Shared {
    inner: Arc<Inner>,
}

struct Inner {
    /// `s3://bucket/prefix` without a trailing slash.
    url: Url,
    /// The store, rooted at the bucket.
    root: Arc<dyn ObjectStore>,
    /// The same store with a connection pool of its own, for requests made on the store's
    /// own runtime: a pooled connection is driven by the runtime that opened it, and the
    /// threads waiting in [`Shared::block_on`] may be that runtime's.
    io_root: Arc<dyn ObjectStore>,
    /// The configured prefix inside the bucket.
    prefix: String,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.inner.url.as_str())
            .finish()
    }
}

/// The runtime the synchronous writers' requests run on: one per process.
fn io_runtime() -> &'static tokio::runtime::Runtime {
    static IO: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    IO.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("concordat-store-io")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("the store's I/O runtime could not start: {e}"))
    })
}

/// Delta tables on `s3://` use the default log store: a commit is a put-if-absent of the
/// next log entry, which S3 (and every S3-compatible store with conditional writes)
/// answers atomically.
fn register_with_delta() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        #[derive(Debug)]
        struct ConditionalPut;
        impl deltalake::logstore::LogStoreFactory for ConditionalPut {
            fn with_options(
                &self,
                prefixed_store: deltalake::logstore::ObjectStoreRef,
                root_store: deltalake::logstore::ObjectStoreRef,
                location: &Url,
                options: &deltalake::logstore::StorageConfig,
            ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
                Ok(deltalake::logstore::default_logstore(
                    prefixed_store,
                    root_store,
                    location,
                    options,
                ))
            }
        }
        if let Ok(scheme) = Url::parse("s3://") {
            deltalake::logstore::logstore_factories().insert(scheme, Arc::new(ConditionalPut));
        }
    });
}

impl Shared {
    /// Connects to `s3://bucket[/prefix]`. Nothing is read yet: a store that cannot be
    /// reached fails the first request, which names it.
    pub fn connect(url: &str, s3: &S3Settings) -> Result<Shared, StoreError> {
        let bad = |m: String| StoreError::Internal(format!("store url {url}: {m}"));
        let parsed = Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if parsed.scheme() != "s3" {
            return Err(bad("only s3:// URLs name a shared store".into()));
        }
        let bucket = parsed
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad("it names no bucket".into()))?
            .to_owned();
        let prefix = parsed.path().trim_matches('/').to_owned();
        let mut b = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
            .with_allow_http(s3.allow_http);
        if let Some(v) = &s3.endpoint {
            b = b.with_endpoint(v);
        }
        if let Some(v) = &s3.region {
            b = b.with_region(v);
        }
        if let Some(v) = &s3.access_key_id {
            b = b.with_access_key_id(v);
        }
        if let Some(v) = &s3.secret_access_key {
            b = b.with_secret_access_key(v);
        }
        let io_root = b.clone().build().map_err(|e| bad(e.to_string()))?;
        let root = b.build().map_err(|e| bad(e.to_string()))?;
        let mut base = format!("s3://{bucket}");
        if !prefix.is_empty() {
            base.push('/');
            base.push_str(&prefix);
        }
        register_with_delta();
        Ok(Shared {
            inner: Arc::new(Inner {
                url: Url::parse(&base).map_err(|e| bad(e.to_string()))?,
                root: Arc::new(root),
                io_root: Arc::new(io_root),
                prefix,
            }),
        })
    }

    /// The store's URL, as configured.
    pub fn url(&self) -> &Url {
        &self.inner.url
    }

    /// The store, rooted at the bucket (what Delta is given).
    pub fn root(&self) -> Arc<dyn ObjectStore> {
        self.inner.root.clone()
    }

    /// The client for a request made here: the store runtime's own pool on that runtime.
    fn client(&self) -> &Arc<dyn ObjectStore> {
        let on_io = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.id() == io_runtime().handle().id());
        if on_io {
            &self.inner.io_root
        } else {
            &self.inner.root
        }
    }

    /// The key of `rel` (a `/`-separated path) under the prefix.
    pub fn key(&self, rel: &str) -> Key {
        if self.inner.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.inner.prefix))
        }
    }

    /// The URL of a dataset's table.
    pub fn table_url(&self, dataset: &str) -> Result<Url, StoreError> {
        Url::parse(&format!("{}/tables/{dataset}/", self.inner.url)).map_err(StoreError::internal)
    }

    /// Runs the work `f` makes of this store on the store's own runtime and waits for
    /// it: for callers that are plain threads (never call it from that runtime itself).
    pub fn block_on<F, Fut>(&self, f: F) -> Fut::Output
    where
        F: FnOnce(Shared) -> Fut,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let work = f(self.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        io_runtime().spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv()
            .unwrap_or_else(|_| panic!("the store's I/O runtime stopped"))
    }

    /// Starts the work `f` makes of this store on the store's own runtime, not waiting
    /// for it.
    pub fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Shared) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        io_runtime().spawn(f(self.clone()));
    }

    /// Writes `bytes` at `rel` only if nothing is there yet; `false` when something is.
    pub async fn put_new(&self, rel: &str, bytes: Bytes) -> Result<bool, StoreError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .client()
            .put_opts(&self.key(rel), PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.failed("write", rel, e)),
        }
    }

    /// Writes `bytes` at `rel`, replacing what is there.
    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.client()
            .put(&self.key(rel), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.failed("write", rel, e))
    }

    /// The bytes at `rel`, or `None` when nothing is there.
    pub async fn get(&self, rel: &str) -> Result<Option<Bytes>, StoreError> {
        match self.client().get(&self.key(rel)).await {
            Ok(got) => got
                .bytes()
                .await
                .map(Some)
                .map_err(|e| self.failed("read", rel, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed("read", rel, e)),
        }
    }

    /// Removes `rel` (nothing there is not an error).
    pub async fn delete(&self, rel: &str) -> Result<(), StoreError> {
        match self.client().delete(&self.key(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("remove", rel, e)),
        }
    }

    /// Every object under `rel_dir/`, with keys relative to the prefix, in key order;
    /// with `after`, only those whose relative key sorts after it.
    pub async fn list(
        &self,
        rel_dir: &str,
        after: Option<&str>,
    ) -> Result<Vec<(String, ObjectMeta)>, StoreError> {
        let dir = self.key(rel_dir);
        let listed: Vec<ObjectMeta> = match after {
            Some(a) => {
                self.client()
                    .list_with_offset(Some(&dir), &self.key(a))
                    .try_collect()
                    .await
            }
            None => self.client().list(Some(&dir)).try_collect().await,
        }
        .map_err(|e| self.failed("list", rel_dir, e))?;
        let cut = if self.inner.prefix.is_empty() {
            0
        } else {
            self.inner.prefix.len() + 1
        };
        let mut out: Vec<(String, ObjectMeta)> = listed
            .into_iter()
            .map(|m| (m.location.as_ref().get(cut..).unwrap_or("").to_owned(), m))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Whether anything is under `rel_dir/` (one request, whatever is there).
    pub async fn any(&self, rel_dir: &str) -> Result<bool, StoreError> {
        use futures::StreamExt;
        let dir = self.key(rel_dir);
        match self.client().list(Some(&dir)).next().await {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(self.failed("list", rel_dir, e)),
        }
    }

    /// Copies a local file to `rel` in parts, without holding it in memory.
    pub async fn upload_file(&self, local: &std::path::Path, rel: &str) -> Result<(), StoreError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(StoreError::internal)?;
        let mut out = object_store::buffered::BufWriter::with_capacity(
            self.client().clone(),
            self.key(rel),
            8 << 20,
        );
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await.map_err(StoreError::internal)?;
            if n == 0 {
                break;
            }
            if let Err(e) = out.write_all(&buf[..n]).await {
                let _ = out.abort().await;
                return Err(self.failed("write", rel, e));
            }
        }
        out.shutdown()
            .await
            .map_err(|e| self.failed("write", rel, e))
    }

    /// Reads (or, the first time anyone asks, creates with `make`) a small object that
    /// every replica must agree on: whoever writes it first wins, the others read theirs.
    pub async fn get_or_create(
        &self,
        rel: &str,
        make: impl FnOnce() -> Bytes,
    ) -> Result<Bytes, StoreError> {
        if let Some(b) = self.get(rel).await? {
            return Ok(b);
        }
        let made = make();
        if self.put_new(rel, made.clone()).await? {
            return Ok(made);
        }
        self.get(rel)
            .await?
            .ok_or_else(|| StoreError::Internal(format!("{rel} vanished from the store")))
    }

    fn failed(&self, what: &str, rel: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Internal(format!(
            "could not {what} {rel} on the store {}: {e}",
            self.inner.url
        ))
    }
}
