//! The store: staging, validation and atomic commits of uploads; versions and provenance.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use concordat_core::DatasetSchema;
use concordat_policy::ScopeFilter;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use url::Url;

use crate::inspect::FileLimits;
use crate::{StoreError, fault};

/// Key under which Concordat's provenance is stored in each commit.
pub(crate) const PROVENANCE_KEY: &str = "concordat";

/// How the store is set up.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Root directory: `tables/` and `staging/` live here.
    pub data_dir: PathBuf,
    /// Largest upload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// Bounds on what a file may declare.
    pub file_limits: FileLimits,
    /// Uploads validated at once; others wait their turn.
    pub concurrent_validations: usize,
    /// Rows per decoded batch.
    pub batch_rows: usize,
    /// Days of log (and so of time travel and provenance) a table keeps.
    pub log_retention_days: u32,
    /// Abort the process when a commit reaches the log (crash tests only).
    pub abort_in_commit: bool,
    /// Where uploads are decoded and validated.
    pub validator: crate::worker::Validator,
    /// The shared object store holding the tables, when there is one (replicas); the
    /// data directory then holds only scratch (staging, spill).
    pub shared: Option<crate::shared::Shared>,
    /// How old an upload's data file on a shared store must be before a starting
    /// replica treats it as left by a crash (another replica may be about to commit a
    /// younger one).
    pub orphan_age: std::time::Duration,
}

impl StoreConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            max_upload_bytes: 2 << 30,
            file_limits: FileLimits::default(),
            concurrent_validations: 2,
            batch_rows: 8192,
            log_retention_days: 3650,
            abort_in_commit: false,
            validator: crate::worker::Validator::InProcess,
            shared: None,
            orphan_age: std::time::Duration::from_secs(3600),
        }
    }
    /// The tables on a shared store, when `location` is one (the data directory stays
    /// scratch).
    pub fn on(mut self, location: &crate::shared::Location) -> Self {
        if let crate::shared::Location::Shared(shared) = location {
            self.shared = Some(shared.clone());
        }
        self
    }
}

/// How an upload changes the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Add the rows.
    Append,
    /// Replace, within the uploader's scope, exactly the periods present in the file.
    ReplacePeriods,
}

impl Mode {
    /// As written in URLs and provenance.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Append => "append",
            Mode::ReplacePeriods => "replace_periods",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "append" => Ok(Mode::Append),
            "replace_periods" => Ok(Mode::ReplacePeriods),
            _ => Err(StoreError::refused(
                concordat_core::ErrorKind::InvalidInput,
                "bad_request",
                "mode must be append or replace_periods",
            )),
        }
    }
}

/// A received upload on local disk; removed when dropped.
#[derive(Debug)]
pub struct StagedFile {
    path: tempfile::TempPath,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

impl StagedFile {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One upload, with the rights the caller's agreements give.
#[derive(Debug)]
pub struct UploadRequest<'a> {
    /// The dataset.
    pub schema: &'a DatasetSchema,
    /// Append or replace.
    pub mode: Mode,
    /// Partner uploading.
    pub partner: String,
    /// Token subject uploading.
    pub subject: String,
    /// Agreements granting the upload.
    pub agreements: Vec<String>,
    /// Rows the uploader may write.
    pub scope: ScopeFilter,
    /// The bytes.
    pub file: StagedFile,
}

/// The result of an accepted upload.
#[derive(Debug, Clone, Serialize)]
pub struct UploadOutcome {
    /// Dataset name.
    pub dataset: String,
    /// Version committed (or, for a duplicate, the version that already holds the bytes).
    pub version: u64,
    /// Rows in the file.
    pub rows: u64,
    /// Periods in the file.
    pub periods: Vec<String>,
    /// SHA-256 of the file.
    pub sha256: String,
    /// True when the same bytes were already committed and nothing changed.
    pub duplicate: bool,
}

/// Provenance of one version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Table version.
    pub version: u64,
    /// Commit time, RFC 3339.
    pub committed_at: Option<String>,
    /// Delta operation (WRITE, CREATE TABLE...).
    pub operation: Option<String>,
    /// Partner that uploaded it.
    pub partner: Option<String>,
    /// Token subject that uploaded it.
    pub subject: Option<String>,
    /// append or replace_periods.
    pub mode: Option<String>,
    /// Rows uploaded.
    pub rows: Option<u64>,
    /// Periods uploaded.
    #[serde(default)]
    pub periods: Vec<String>,
    /// SHA-256 of the uploaded file.
    pub sha256: Option<String>,
    /// Agreements that granted the upload.
    #[serde(default)]
    pub agreements: Vec<String>,
    /// For a derived dataset: the version of each input it was built from (`null`: the
    /// input had no data).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sources: std::collections::BTreeMap<String, Option<u64>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Provenance {
    pub(crate) partner: String,
    pub(crate) subject: String,
    pub(crate) mode: String,
    pub(crate) rows: u64,
    pub(crate) periods: Vec<String>,
    pub(crate) sha256: String,
    pub(crate) bytes: u64,
    pub(crate) agreements: Vec<String>,
    pub(crate) uploaded_at: String,
    #[serde(default)]
    pub(crate) sources: std::collections::BTreeMap<String, Option<u64>>,
}

/// The one value a file's Delta statistics give a column (its minimum equals its
/// maximum), if they say so.
fn one_value(stats: Option<&str>, column: &str) -> Option<String> {
    let (min, max) = crate::datafile::text_bounds(stats?, column)?;
    (min == max).then_some(min)
}

/// Files in groups of at most [`SMALL_FILE_BYTES`] in all.
fn in_bins(
    files: Vec<deltalake::kernel::LogicalFileView>,
) -> Vec<Vec<deltalake::kernel::LogicalFileView>> {
    let mut bins: Vec<Vec<_>> = Vec::new();
    let mut taken = 0;
    for f in files {
        if bins.is_empty() || taken + f.size() > SMALL_FILE_BYTES as i64 {
            bins.push(Vec::new());
            taken = 0;
        }
        taken += f.size();
        if let Some(b) = bins.last_mut() {
            b.push(f);
        }
    }
    bins
}

/// Writes batches sorted by the force column (as they are, without one), gathered in
/// one copy: each row group's statistics then cover a run of force areas, and a file
/// holds few row groups (a row group per force area made national queries over little
/// data slower).
fn write_by_force(
    sink: &mut crate::datafile::Sink,
    batches: Vec<Vec<arrow::array::ArrayRef>>,
    force: Option<usize>,
) -> Result<(), StoreError> {
    let Some(force) = force else {
        for b in batches {
            sink.write(b)?;
        }
        return Ok(());
    };
    let rows = crate::cluster::rows_by_force(&batches, force);
    sink.write(crate::cluster::gather(&batches, &rows)?)
}

/// A force area whose small files hold less than this in all shares merged files with
/// other such force areas (sorted by force area) instead of having files of its own.
const TINY_FORCE_BYTES: i64 = 1 << 20;

/// Data files smaller than this are merged by [`Store::compact`].
const SMALL_FILE_BYTES: u64 = 8 << 20;

/// Versioned datasets on local disk.
pub struct Store {
    pub(crate) cfg: StoreConfig,
    /// The latest snapshot of each dataset, brought up to date on each use: reading
    /// only the log entries since, instead of the whole log, per query.
    /// One lock per dataset, so refreshing one dataset's snapshot never holds up a
    /// query of another.
    pub(crate) snapshots:
        std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<DeltaTable>>>>>,
    pub(crate) locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) validations: tokio::sync::Semaphore,
    /// This process, as named in the leases it holds.
    pub(crate) replica_id: String,
    /// What is known of each dataset's snapshot being current.
    pub(crate) fresh: std::sync::Mutex<Freshness>,
}

/// What is known of each cached snapshot being current, without reading the log.
#[derive(Debug, Default)]
pub(crate) struct Freshness {
    /// Shared store: when each snapshot was last brought up to date. Within
    /// [`SHARED_FRESH`] of that it is used as it is (one listing of the log per dataset
    /// per second, not per query).
    refreshed: HashMap<String, std::time::Instant>,
    /// Shared store: when this replica last committed to each dataset; a refresh begun
    /// before that may have missed the commit, so it does not count.
    changed: HashMap<String, std::time::Instant>,
    /// Local disk: each log directory's time at the last refresh. A commit adds a file
    /// to the directory, changing its time; while it is unchanged the snapshot is
    /// current, and one `stat` replaces listing the log.
    log_stamps: HashMap<String, std::time::SystemTime>,
}

impl Freshness {
    /// Whether the cached snapshot is current: on a shared store, refreshed within the
    /// last second; on local disk, the log directory's time (`stamp`) unchanged.
    fn current(&self, dataset: &str, shared: bool, stamp: Option<std::time::SystemTime>) -> bool {
        if shared {
            self.refreshed
                .get(dataset)
                .is_some_and(|at| at.elapsed() < SHARED_FRESH)
        } else {
            stamp.is_some() && self.log_stamps.get(dataset).copied() == stamp
        }
    }

    /// Records a refresh that began at `started`, when the log directory's time was
    /// `stamp`. A shared refresh counts unless this replica committed since it began. A
    /// stamp counts once it is old enough that a commit in the same clock tick (file
    /// times are coarse) cannot hide behind it; a younger one is not trusted, and the
    /// next read refreshes again.
    fn refreshed(
        &mut self,
        dataset: &str,
        shared: bool,
        started: std::time::Instant,
        stamp: Option<std::time::SystemTime>,
    ) {
        const SETTLED: std::time::Duration = std::time::Duration::from_millis(50);
        if shared {
            if self
                .changed
                .get(dataset)
                .is_none_or(|changed| *changed < started)
            {
                self.refreshed.insert(dataset.to_owned(), started);
            }
            return;
        }
        match stamp.filter(|s| s.elapsed().is_ok_and(|e| e > SETTLED)) {
            Some(s) => {
                self.log_stamps.insert(dataset.to_owned(), s);
            }
            None => {
                self.log_stamps.remove(dataset);
            }
        }
    }
}

/// How long a replica on a shared store serves a snapshot before looking for commits
/// made through other replicas.
pub const SHARED_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.cfg.data_dir)
            .finish()
    }
}

/// Chunks of an upload received and not yet hashed (or not yet written), at most.
const STAGE_QUEUE: usize = 32;

impl Store {
    /// Opens (creating) the data directory.
    pub fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        std::fs::create_dir_all(cfg.data_dir.join("tables")).map_err(StoreError::internal)?;
        std::fs::create_dir_all(cfg.data_dir.join("staging")).map_err(StoreError::internal)?;
        let permits = cfg.concurrent_validations.max(1);
        Ok(Store {
            snapshots: std::sync::Mutex::new(HashMap::new()),
            cfg,
            locks: std::sync::Mutex::new(HashMap::new()),
            validations: tokio::sync::Semaphore::new(permits),
            fresh: std::sync::Mutex::new(Freshness::default()),
            replica_id: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
        })
    }

    /// Removes uploads a crash left staged. Only the serving process calls this, at start:
    /// another process (a CLI command) must not touch uploads in flight.
    /// Data files of uploads that were moved into a table but never committed are removed
    /// too.
    pub fn discard_staged(&self) -> Result<(), StoreError> {
        let staging = self.cfg.data_dir.join("staging");
        std::fs::remove_dir_all(&staging).map_err(StoreError::internal)?;
        std::fs::create_dir_all(&staging).map_err(StoreError::internal)?;
        if let Some(shared) = &self.cfg.shared {
            // Other replicas may be between copying an upload's files up and committing
            // them: only files older than any upload could take are swept.
            let age =
                chrono::TimeDelta::from_std(self.cfg.orphan_age).map_err(StoreError::internal)?;
            let removed = shared.block_on(|store| async move {
                crate::commit::sweep_uncommitted_shared(&store, age).await
            })?;
            if removed > 0 {
                tracing::warn!(
                    removed,
                    "removed data files of uploads that never committed"
                );
            }
            return Ok(());
        }
        if let Ok(tables) = std::fs::read_dir(self.cfg.data_dir.join("tables")) {
            for t in tables.flatten() {
                let removed = crate::commit::sweep_uncommitted(&t.path())?;
                if removed > 0 {
                    tracing::warn!(
                        table = %t.path().display(),
                        removed,
                        "removed data files of uploads that never committed"
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether the tables live on a shared store (replicas).
    pub fn is_shared(&self) -> bool {
        self.cfg.shared.is_some()
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// URL of a dataset's table.
    pub fn table_url(&self, dataset: &str) -> Result<Url, StoreError> {
        if let Some(shared) = &self.cfg.shared {
            return shared.table_url(dataset);
        }
        let dir = self.cfg.data_dir.join("tables").join(dataset);
        std::fs::create_dir_all(&dir).map_err(StoreError::internal)?;
        let dir = std::path::absolute(&dir).map_err(StoreError::internal)?;
        Url::from_directory_path(&dir)
            .map_err(|_| StoreError::Internal(format!("bad table path {}", dir.display())))
    }

    /// Streams a request body to a staged file, hashing it and enforcing the size cap.
    pub async fn stage<S, E>(&self, mut body: S) -> Result<StagedFile, StoreError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let limit = self.cfg.max_upload_bytes;
        let tmp = tempfile::Builder::new()
            .prefix("upload-")
            .suffix(".parquet")
            .tempfile_in(self.cfg.data_dir.join("staging"))
            .map_err(StoreError::internal)?;
        let (file, path) = tmp.into_parts();
        // The digest and the writing each run on a thread of their own as the chunks
        // arrive (hashing costs as much CPU as receiving), sharing the chunks without a
        // copy; bounded queues keep what waits small. Chunks of 64 KiB or more are
        // written as they are, smaller ones gathered first.
        let (to_hash, mut hash_queue) = tokio::sync::mpsc::channel::<bytes::Bytes>(STAGE_QUEUE);
        let (to_write, mut write_queue) = tokio::sync::mpsc::channel::<bytes::Bytes>(STAGE_QUEUE);
        let hashing = tokio::task::spawn_blocking(move || {
            let mut hasher = Sha256::new();
            while let Some(chunk) = hash_queue.blocking_recv() {
                hasher.update(&chunk);
            }
            hex::encode(hasher.finalize())
        });
        let writing = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut out = std::io::BufWriter::with_capacity(64 << 10, file);
            while let Some(chunk) = write_queue.blocking_recv() {
                out.write_all(&chunk)?;
            }
            out.flush()
        });
        let mut bytes = 0u64;
        let mut stopped = false;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::Receive(e.to_string()))?;
            bytes += chunk.len() as u64;
            if bytes > limit {
                return Err(StoreError::TooLarge { limit });
            }
            if to_hash.send(chunk.clone()).await.is_err() || to_write.send(chunk).await.is_err() {
                // A thread stopped: the writer's error, if it was the writer, is
                // reported below.
                stopped = true;
                break;
            }
        }
        drop((to_hash, to_write));
        writing
            .await
            .map_err(StoreError::internal)?
            .map_err(StoreError::internal)?;
        if stopped {
            return Err(StoreError::Internal(
                "the staged upload stopped being written".into(),
            ));
        }
        let sha256 = hashing.await.map_err(StoreError::internal)?;
        Ok(StagedFile {
            path,
            bytes,
            sha256,
        })
    }

    pub(crate) async fn open_table(&self, dataset: &str) -> Result<DeltaTable, StoreError> {
        let url = self.table_url(dataset)?;
        let mut builder = DeltaTableBuilder::from_url(url.clone()).map_err(StoreError::internal)?;
        let backend: Option<Arc<dyn object_store::ObjectStore>> = match &self.cfg.shared {
            Some(shared) => Some(shared.root()),
            None if self.cfg.abort_in_commit => {
                Some(Arc::new(object_store::local::LocalFileSystem::new()))
            }
            None => None,
        };
        if let Some(store) = backend {
            let store: Arc<dyn object_store::ObjectStore> = if self.cfg.abort_in_commit {
                Arc::new(fault::AbortInCommit::new(store))
            } else {
                store
            };
            builder = builder.with_storage_backend(store, url.clone());
        }
        let mut table = builder.build().map_err(StoreError::internal)?;
        // A table with no log yet is simply empty; asking the kernel to load it only logs an error.
        if let Ok(path) = url.to_file_path()
            && !path.join("_delta_log").exists()
        {
            return Ok(table);
        }
        if let Some(shared) = &self.cfg.shared
            && !shared.any(&format!("tables/{dataset}/_delta_log")).await?
        {
            return Ok(table);
        }
        match table.load().await {
            Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(table),
            Err(e) => Err(StoreError::internal(e)),
        }
    }

    /// A loaded table at its latest version, or at `version`; `NotFound` if none.
    pub async fn table(
        &self,
        dataset: &str,
        version: Option<u64>,
    ) -> Result<DeltaTable, StoreError> {
        let Some(v) = version else {
            return self.latest(dataset).await;
        };
        let mut table = self.open_table(dataset).await?;
        if table.version().is_none() {
            return Err(StoreError::NotFound(format!(
                "dataset {dataset} has no data yet"
            )));
        }
        table
            .load_version(v)
            .await
            .map_err(|_| StoreError::NotFound(format!("dataset {dataset} has no version {v}")))?;
        Ok(table)
    }

    pub(crate) async fn latest(&self, dataset: &str) -> Result<DeltaTable, StoreError> {
        let slot = self
            .snapshots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(dataset.to_owned())
            .or_default()
            .clone();
        let mut cached = slot.lock().await;
        if let Some(table) = cached.as_mut() {
            let stamp = self.local_log_stamp(dataset);
            if self.fresh().current(dataset, self.is_shared(), stamp) {
                return Ok(table.clone());
            }
            let started = std::time::Instant::now();
            match table.update_incremental(None).await {
                Ok(()) => {
                    self.fresh()
                        .refreshed(dataset, self.is_shared(), started, stamp);
                    return Ok(table.clone());
                }
                Err(e) => {
                    tracing::warn!(dataset, error = %e, "cached snapshot could not be refreshed; reloading");
                    *cached = None;
                }
            }
        }
        let started = std::time::Instant::now();
        let stamp = self.local_log_stamp(dataset);
        let table = self.open_table(dataset).await?;
        if table.version().is_none() {
            return Err(StoreError::NotFound(format!(
                "dataset {dataset} has no data yet"
            )));
        }
        self.fresh()
            .refreshed(dataset, self.is_shared(), started, stamp);
        *cached = Some(table.clone());
        Ok(table)
    }

    /// The modification time of a local table's log directory (`None` on a shared store).
    fn local_log_stamp(&self, dataset: &str) -> Option<std::time::SystemTime> {
        if self.cfg.shared.is_some() {
            return None;
        }
        std::fs::metadata(
            self.cfg
                .data_dir
                .join("tables")
                .join(dataset)
                .join("_delta_log"),
        )
        .and_then(|m| m.modified())
        .ok()
    }

    fn fresh(&self) -> std::sync::MutexGuard<'_, Freshness> {
        self.fresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next read of `dataset` brings its snapshot up to date whatever the time since
    /// the last (work that must see every replica's commits: the efficiency rebuild).
    pub fn look_again(&self, dataset: &str) {
        self.fresh().refreshed.remove(dataset);
    }

    /// After a commit through this replica: the next read looks for it.
    pub(crate) fn changed(&self, dataset: &str) {
        let mut f = self.fresh();
        f.refreshed.remove(dataset);
        f.changed
            .insert(dataset.to_owned(), std::time::Instant::now());
    }

    /// Latest committed version of a dataset, if it has data.
    pub async fn latest_version(&self, dataset: &str) -> Result<Option<u64>, StoreError> {
        match self.latest(dataset).await {
            Ok(table) => Ok(table.version()),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every version still in the log, newest first, with provenance.
    pub async fn versions(&self, dataset: &str) -> Result<Vec<VersionInfo>, StoreError> {
        let table = self.open_table(dataset).await?;
        let Some(latest) = table.version() else {
            return Ok(Vec::new());
        };
        let infos: Vec<_> = table
            .history(None)
            .try_collect()
            .await
            .map_err(StoreError::internal)?;
        // History is newest first and may already hold commits made after the snapshot
        // was loaded; with the whole log kept, entry i is version len - 1 - i.
        let top = latest.max(infos.len().saturating_sub(1) as u64);
        let mut out = Vec::with_capacity(infos.len());
        for (i, info) in infos.into_iter().enumerate() {
            let Some(version) = top.checked_sub(i as u64) else {
                break;
            };
            let prov: Option<Provenance> = info
                .info
                .get(PROVENANCE_KEY)
                .and_then(|v| serde_json::from_value(v.clone()).ok());
            out.push(VersionInfo {
                version,
                committed_at: info
                    .timestamp
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                operation: info.operation.clone(),
                partner: prov.as_ref().map(|p| p.partner.clone()),
                subject: prov.as_ref().map(|p| p.subject.clone()),
                mode: prov.as_ref().map(|p| p.mode.clone()),
                rows: prov.as_ref().map(|p| p.rows),
                periods: prov.as_ref().map(|p| p.periods.clone()).unwrap_or_default(),
                sha256: prov.as_ref().map(|p| p.sha256.clone()),
                sources: prov.as_ref().map(|p| p.sources.clone()).unwrap_or_default(),
                agreements: prov.map(|p| p.agreements).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Deletes data files that no version newer than `retain` still uses: versions older
    /// than that stop being readable. Runs under the dataset's commit lock. Returns the
    /// number of files removed (or that would be, with `dry_run`).
    pub async fn vacuum(
        &self,
        dataset: &str,
        retain: std::time::Duration,
        dry_run: bool,
    ) -> Result<usize, StoreError> {
        let lock = self.lock_for(dataset);
        let _guard = lock.lock().await;
        let table = self.table(dataset, None).await?;
        let retain = chrono::Duration::from_std(retain).map_err(StoreError::internal)?;
        let (_, metrics) = table
            .vacuum()
            .with_retention_period(retain)
            .with_enforce_retention_duration(false)
            .with_dry_run(dry_run)
            .await
            .map_err(StoreError::internal)?;
        Ok(metrics.files_deleted.len())
    }

    /// Replaces the whole of a derived dataset with `batches`, as one new version that
    /// records the input versions it was built from. Readers see the old rows or the new,
    /// never a mixture.
    pub async fn write_derived(
        &self,
        dataset: &str,
        batches: Vec<arrow::array::RecordBatch>,
        sources: std::collections::BTreeMap<String, Option<u64>>,
    ) -> Result<u64, StoreError> {
        let lock = self.lock_for(dataset);
        let _guard = lock.lock().await;
        let table = self.open_table(dataset).await?;
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        let provenance = Provenance {
            partner: "concordat".into(),
            subject: "efficiency rebuild".into(),
            mode: "derived".into(),
            rows,
            periods: Vec::new(),
            sha256: String::new(),
            bytes: 0,
            agreements: Vec::new(),
            uploaded_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            sources,
        };
        let properties = CommitProperties::default().with_metadata([(
            PROVENANCE_KEY.to_owned(),
            serde_json::to_value(&provenance).map_err(StoreError::internal)?,
        )]);
        let retention = format!("interval {} days", self.cfg.log_retention_days);
        let ctx = deltalake::delta_datafusion::create_session().into_inner();
        let written = table
            .write(batches)
            .with_session_state(Arc::new(ctx.state()))
            .with_save_mode(SaveMode::Overwrite)
            .with_commit_properties(properties)
            .with_table_name(dataset)
            .with_configuration([
                ("delta.logRetentionDuration", Some(retention.clone())),
                ("delta.deletedFileRetentionDuration", Some(retention)),
            ])
            .await
            .map_err(StoreError::internal)?;
        self.changed(dataset);
        written
            .version()
            .ok_or_else(|| StoreError::Internal("commit left no version".into()))
    }

    /// Rewrites a dataset's small data files (under 8 MiB) into few larger ones (no data
    /// change) once it holds at least `min_files` of them: datasets uploaded force by
    /// force otherwise keep one file per upload, and each query would open them all.
    /// The layout stays clustered by force (by the files' statistics): a force area with
    /// 1 MiB or more of small files gets merged files of its own; force areas with less,
    /// and files holding several, share merged files sorted by force area. Returns the new version and the files replaced, or `None` when
    /// nothing was done.
    pub async fn compact(
        &self,
        dataset: &str,
        min_files: usize,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let lock = self.lock_for(dataset);
        let _guard = lock.lock().await;
        // One replica compacts a dataset at a time.
        let Some(_lease) = self
            .lease(
                &format!("compact-{dataset}"),
                std::time::Duration::from_secs(600),
            )
            .await?
        else {
            return Ok(None);
        };
        let Some(schema) = concordat_core::Schemas::builtin().get(dataset) else {
            return Ok(None);
        };
        let table = self.open_table(dataset).await?;
        if table.version().is_none() {
            return Ok(None);
        }
        let snapshot = table.snapshot().map_err(StoreError::internal)?;
        // Small files by the one force area they hold (`None`: several, or unknown).
        let mut groups: std::collections::BTreeMap<Option<String>, Vec<_>> =
            std::collections::BTreeMap::new();
        let mut small = 0;
        for file in snapshot.log_data().iter() {
            if file.size() >= SMALL_FILE_BYTES as i64 {
                continue;
            }
            small += 1;
            let force = schema
                .force_column
                .as_deref()
                .and_then(|c| one_value(file.stats().as_deref(), c));
            groups.entry(force).or_default().push(file);
        }
        if small < min_files {
            return Ok(None);
        }
        let store = table.log_store().object_store(None);
        let out = tempfile::Builder::new()
            .prefix("compact-")
            .suffix(".d")
            .tempdir_in(self.cfg.data_dir.join("staging"))
            .map_err(StoreError::internal)?;
        let stored = crate::datafile::file_schema(schema);
        let plain = crate::datafile::plain_columns(schema);
        // A force area with files of its own merges them into files of its own. Force
        // areas with little data (under 1 MiB in all; a force's quarterly figures) are
        // merged together with files already holding several, sorted by force area: a
        // national query opens one file, not 43, and a force's query prunes by the
        // row groups' statistics where there are several.
        let mut bins: Vec<(Vec<_>, bool)> = Vec::new();
        let mut shared = Vec::new();
        for (force, files) in groups {
            let bytes: i64 = files.iter().map(|f| f.size()).sum();
            if force.is_none() || bytes < TINY_FORCE_BYTES {
                shared.extend(files);
            } else if files.len() > 1 {
                bins.extend(in_bins(files).into_iter().map(|b| (b, false)));
            }
        }
        if shared.len() > 1 {
            bins.extend(in_bins(shared).into_iter().map(|b| (b, true)));
        }
        let force = schema
            .force_column
            .as_deref()
            .and_then(|c| stored.index_of(c).ok());
        let mut written = Vec::new();
        let mut removes = Vec::new();
        for (n, (files, sorted)) in bins.into_iter().enumerate() {
            if files.len() < 2 {
                continue;
            }
            // Merged files are of up to 8 MiB of small ones: compaction never rewrites,
            // or holds in memory, a large dataset.
            let mut sink = crate::datafile::Sink::new(
                out.path(),
                stored.clone(),
                plain.clone(),
                &format!("c{n:03}"),
            );
            let mut held = Vec::new();
            for file in &files {
                let bytes = object_store::ObjectStoreExt::get(&store, &file.object_store_path())
                    .await
                    .map_err(StoreError::internal)?
                    .bytes()
                    .await
                    .map_err(StoreError::internal)?;
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                        .and_then(|b| b.with_batch_size(8192).build())
                        .map_err(StoreError::internal)?;
                for batch in reader {
                    let batch = batch.map_err(StoreError::internal)?;
                    let mut columns = Vec::with_capacity(stored.fields().len());
                    for f in stored.fields() {
                        let c = batch.column_by_name(f.name()).ok_or_else(|| {
                            StoreError::Internal(format!("a stored file lacks column {}", f.name()))
                        })?;
                        // Files written by Delta's own writer (a replacement of
                        // periods) may hold text as string views: read as stored.
                        columns.push(if c.data_type() == f.data_type() {
                            c.clone()
                        } else {
                            arrow::compute::cast(c, f.data_type()).map_err(StoreError::internal)?
                        });
                    }
                    if sorted {
                        held.push(columns);
                    } else {
                        sink.write(columns)?;
                    }
                }
                removes.push(deltalake::kernel::Action::Remove(file.remove_action(false)));
            }
            if sorted {
                write_by_force(&mut sink, held, force)?;
            }
            written.extend(sink.finish()?);
        }
        if written.is_empty() {
            return Ok(None);
        }
        let moved = self.move_into_table(dataset, out.path(), &written).await?;
        let adds = moved
            .iter()
            .zip(&written)
            .map(|(path, f)| crate::commit::add_action(path, f, false));
        let removed = removes.len() as u64;
        let actions: Vec<_> = removes.into_iter().chain(adds).collect();
        let committed =
            deltalake::kernel::transaction::CommitBuilder::from(CommitProperties::default())
                .with_actions(actions)
                .build(
                    Some(snapshot),
                    table.log_store(),
                    deltalake::protocol::DeltaOperation::Optimize {
                        predicate: None,
                        target_size: SMALL_FILE_BYTES as i64,
                    },
                )
                .await;
        match committed {
            Ok(c) => {
                self.changed(dataset);
                Ok(Some((c.version(), removed)))
            }
            Err(e) => {
                // Not committed: the merged files are referenced by nothing.
                self.remove_moved(dataset, &moved).await;
                Err(StoreError::internal(e))
            }
        }
    }

    pub(crate) fn lock_for(&self, dataset: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(dataset.to_owned()).or_default().clone()
    }
}
