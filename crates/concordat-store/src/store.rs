//! The store: staging, validation and atomic commits of uploads; versions and provenance.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::ArrayRef;
use concordat_core::DatasetSchema;
use concordat_policy::ScopeFilter;
use datafusion::prelude::{ParquetReadOptions, col, lit};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::{Stream, StreamExt, TryStreamExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::datafile::{DataFile, Sink, file_schema};
use crate::inspect::{FileLimits, arrow_type, inspect};
use crate::validate::RowChecker;
use crate::violation::{Violation, Violations};
use crate::{StoreError, fault};

/// Key under which Concordat's provenance is stored in each commit.
const PROVENANCE_KEY: &str = "concordat";

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
        }
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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "append" => Ok(Mode::Append),
            "replace_periods" => Ok(Mode::ReplacePeriods),
            _ => Err("mode must be append or replace_periods".into()),
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
struct Provenance {
    partner: String,
    subject: String,
    mode: String,
    rows: u64,
    periods: Vec<String>,
    sha256: String,
    bytes: u64,
    agreements: Vec<String>,
    uploaded_at: String,
    #[serde(default)]
    sources: std::collections::BTreeMap<String, Option<u64>>,
}

/// Data files smaller than this are merged by [`Store::compact`].
const SMALL_FILE_BYTES: u64 = 8 << 20;

/// Versioned datasets on local disk.
pub struct Store {
    cfg: StoreConfig,
    /// The latest snapshot of each dataset, brought up to date on each use: reading
    /// only the log entries since, instead of the whole log, per query.
    snapshots: tokio::sync::Mutex<HashMap<String, DeltaTable>>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    validations: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.cfg.data_dir)
            .finish()
    }
}

impl Store {
    /// Opens (creating) the data directory.
    pub fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        std::fs::create_dir_all(cfg.data_dir.join("tables")).map_err(StoreError::internal)?;
        std::fs::create_dir_all(cfg.data_dir.join("staging")).map_err(StoreError::internal)?;
        let permits = cfg.concurrent_validations.max(1);
        Ok(Store {
            snapshots: tokio::sync::Mutex::new(HashMap::new()),
            cfg,
            locks: std::sync::Mutex::new(HashMap::new()),
            validations: tokio::sync::Semaphore::new(permits),
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
        if let Ok(tables) = std::fs::read_dir(self.cfg.data_dir.join("tables")) {
            for t in tables.flatten() {
                let removed = sweep_uncommitted(&t.path())?;
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

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// URL of a dataset's table.
    pub fn table_url(&self, dataset: &str) -> Result<Url, StoreError> {
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
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::Receive(e.to_string()))?;
            bytes += chunk.len() as u64;
            if bytes > limit {
                return Err(StoreError::TooLarge { limit });
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(StoreError::internal)?;
        }
        out.flush().await.map_err(StoreError::internal)?;
        Ok(StagedFile {
            path,
            bytes,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    async fn open_table(&self, dataset: &str) -> Result<DeltaTable, StoreError> {
        let url = self.table_url(dataset)?;
        let mut builder = DeltaTableBuilder::from_url(url.clone()).map_err(StoreError::internal)?;
        if self.cfg.abort_in_commit {
            let local: Arc<dyn object_store::ObjectStore> =
                Arc::new(object_store::local::LocalFileSystem::new());
            builder = builder
                .with_storage_backend(Arc::new(fault::AbortInCommit::new(local)), url.clone());
        }
        let mut table = builder.build().map_err(StoreError::internal)?;
        // A table with no log yet is simply empty; asking the kernel to load it only logs an error.
        if let Ok(path) = url.to_file_path()
            && !path.join("_delta_log").exists()
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

    async fn latest(&self, dataset: &str) -> Result<DeltaTable, StoreError> {
        let mut cache = self.snapshots.lock().await;
        if let Some(table) = cache.get_mut(dataset) {
            match table.update_incremental(None).await {
                Ok(()) => return Ok(table.clone()),
                Err(e) => {
                    tracing::warn!(dataset, error = %e, "cached snapshot could not be refreshed; reloading");
                    cache.remove(dataset);
                }
            }
        }
        let table = self.open_table(dataset).await?;
        if table.version().is_none() {
            return Err(StoreError::NotFound(format!(
                "dataset {dataset} has no data yet"
            )));
        }
        cache.insert(dataset.to_owned(), table.clone());
        Ok(table)
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
        written
            .version()
            .ok_or_else(|| StoreError::Internal("commit left no version".into()))
    }

    /// Rewrites a dataset's small data files (under 8 MiB) into few larger ones (Delta `OPTIMIZE`, no
    /// data change) once it holds at least `min_files` files: datasets uploaded force by
    /// force otherwise keep one file per upload, and each query would open them all.
    /// Returns the new version and the files replaced, or `None` when nothing was done.
    pub async fn compact(
        &self,
        dataset: &str,
        min_files: usize,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let lock = self.lock_for(dataset);
        let _guard = lock.lock().await;
        let table = self.open_table(dataset).await?;
        if table.version().is_none() {
            return Ok(None);
        }
        let small = table
            .snapshot()
            .map_err(StoreError::internal)?
            .log_data()
            .iter()
            .filter(|f| f.size() < SMALL_FILE_BYTES as i64)
            .count();
        if small < min_files {
            return Ok(None);
        }
        // Only small files are merged (into files of up to 8 MiB): the 32 MiB files of a
        // large upload are left alone, so compaction never rewrites, or holds in memory,
        // a large dataset.
        let (table, metrics) = table
            .optimize()
            .with_target_size(
                std::num::NonZeroU64::new(SMALL_FILE_BYTES).unwrap_or(std::num::NonZeroU64::MIN),
            )
            .with_max_concurrent_tasks(1)
            .await
            .map_err(StoreError::internal)?;
        if metrics.num_files_removed == 0 {
            return Ok(None);
        }
        Ok(table.version().map(|v| (v, metrics.num_files_removed)))
    }

    fn lock_for(&self, dataset: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(dataset.to_owned()).or_default().clone()
    }

    /// Validates the staged file and, if every row passes, commits it as a new version.
    pub async fn upload(&self, req: UploadRequest<'_>) -> Result<UploadOutcome, StoreError> {
        let started = std::time::Instant::now();
        let dataset = req.schema.name.to_string();
        // The worker writes the upload's data files here; removed whatever happens, after
        // the files that are committed have been moved into the table.
        let out = tempfile::Builder::new()
            .prefix("upload-")
            .suffix(".d")
            .tempdir_in(self.cfg.data_dir.join("staging"))
            .map_err(StoreError::internal)?;
        let checked = {
            let _permit = self
                .validations
                .acquire()
                .await
                .map_err(StoreError::internal)?;
            let path = req.file.path().to_path_buf();
            let schema = req.schema.clone();
            let scope = req.scope.clone();
            let agreements = req.agreements.clone();
            let limits = self.cfg.file_limits.clone();
            let batch_rows = self.cfg.batch_rows;
            let out_dir = out.path().to_path_buf();
            if let crate::worker::Validator::Worker {
                program,
                args,
                memory_bytes,
                timeout,
            } = &self.cfg.validator
            {
                let request = crate::worker::WorkerRequest {
                    path,
                    dataset: dataset.clone(),
                    scope,
                    agreements,
                    limits,
                    batch_rows,
                    memory_bytes: *memory_bytes,
                    out_dir,
                };
                crate::worker::validate_in_worker(program, args, *timeout, &request).await?
            } else {
                let checked = tokio::task::spawn_blocking(move || {
                    check_file(
                        &path,
                        &schema,
                        &scope,
                        &agreements,
                        &limits,
                        batch_rows,
                        &out_dir,
                    )
                })
                .await;
                match checked {
                    Ok(result) => result?,
                    // A panic inside the decoder on a hostile file: refuse the file, keep serving.
                    Err(e) if e.is_panic() => {
                        return Err(StoreError::Validation(Violations::single(Violation {
                            row: None,
                            column: None,
                            rule: "parquet".into(),
                            message: "the file could not be decoded: it is corrupt".into(),
                        })));
                    }
                    Err(e) => return Err(StoreError::internal(e)),
                }
            }
        };
        let Checked {
            rows,
            periods,
            files,
        } = checked;
        // What the worker says is checked, not trusted: the files it names are plain
        // names in the output directory, and their sizes and rows add up.
        let mut written = 0u64;
        for f in &files {
            let on_disk = std::fs::metadata(out.path().join(&f.name)).ok();
            if f.name.contains(['/', '\\'])
                || f.name.starts_with('.')
                || on_disk.map(|m| m.len()) != Some(f.bytes)
            {
                return Err(StoreError::Internal(format!(
                    "the validation worker named a data file that is not there: {}",
                    f.name
                )));
            }
            written += f.rows;
        }
        if written != rows || files.is_empty() {
            return Err(StoreError::Internal(
                "the validation worker's data files do not hold the rows it validated".into(),
            ));
        }
        let validated = started.elapsed();
        let lock = self.lock_for(&dataset);
        let _guard = lock.lock().await;
        let table = self.open_table(&dataset).await?;
        if let Some(version) = self
            .duplicate_of(&table, &req.file.sha256, req.mode)
            .await?
        {
            return Ok(UploadOutcome {
                dataset,
                version,
                rows,
                periods,
                sha256: req.file.sha256.clone(),
                duplicate: true,
            });
        }
        let provenance = Provenance {
            partner: req.partner.clone(),
            subject: req.subject.clone(),
            mode: req.mode.as_str().into(),
            rows,
            periods: periods.clone(),
            sha256: req.file.sha256.clone(),
            bytes: req.file.bytes,
            agreements: req.agreements.clone(),
            uploaded_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            sources: Default::default(),
        };
        let version = self
            .commit(table, &req, &periods, provenance, out.path(), &files)
            .await?;
        tracing::info!(
            dataset,
            version,
            rows,
            validate_ms = validated.as_millis() as u64,
            write_ms = (started.elapsed() - validated).as_millis() as u64,
            "upload validated and written"
        );
        Ok(UploadOutcome {
            dataset,
            version,
            rows,
            periods,
            sha256: req.file.sha256.clone(),
            duplicate: false,
        })
    }

    /// An append is a duplicate if the same bytes were ever committed to the table; a
    /// replacement only if they are the latest commit (re-applying an older file after
    /// another replacement is a real change).
    async fn duplicate_of(
        &self,
        table: &DeltaTable,
        sha256: &str,
        mode: Mode,
    ) -> Result<Option<u64>, StoreError> {
        let Some(latest) = table.version() else {
            return Ok(None);
        };
        let limit = (mode == Mode::ReplacePeriods).then_some(1);
        let infos: Vec<_> = table
            .history(limit)
            .try_collect()
            .await
            .map_err(StoreError::internal)?;
        Ok(infos.iter().enumerate().find_map(|(i, info)| {
            let prov = info.info.get(PROVENANCE_KEY)?;
            (prov.get("sha256")?.as_str()? == sha256
                && prov.get("mode")?.as_str()? == mode.as_str())
            .then_some(latest.checked_sub(i as u64))
            .flatten()
        }))
    }

    fn properties(
        &self,
        provenance: &Provenance,
        mode: Mode,
    ) -> Result<CommitProperties, StoreError> {
        Ok(CommitProperties::default()
            .with_metadata([(
                PROVENANCE_KEY.to_owned(),
                serde_json::to_value(provenance).map_err(StoreError::internal)?,
            )])
            .with_max_retries(if mode == Mode::Append { 15 } else { 0 }))
    }

    fn table_configuration(&self) -> [(&'static str, Option<String>); 2] {
        let retention = format!("interval {} days", self.cfg.log_retention_days);
        [
            ("delta.logRetentionDuration", Some(retention.clone())),
            ("delta.deletedFileRetentionDuration", Some(retention)),
        ]
    }

    /// Commits the worker's data files. An append (or the first version) moves them into
    /// the table and commits one log entry that adds them: no byte is decoded here. A
    /// replacement of periods lets Delta rewrite what it replaces, reading the worker's
    /// files (written by our own writer), never the upload.
    async fn commit(
        &self,
        table: DeltaTable,
        req: &UploadRequest<'_>,
        periods: &[String],
        provenance: Provenance,
        out: &Path,
        files: &[DataFile],
    ) -> Result<u64, StoreError> {
        let schema = req.schema;
        let dataset = schema.name.to_string();
        let conflict = |e: DeltaTableError| -> StoreError {
            match e {
                DeltaTableError::Transaction { source } => {
                    use deltalake::kernel::transaction::TransactionError as T;
                    match source {
                        T::CommitConflict(_)
                        | T::VersionAlreadyExists(_)
                        | T::MaxCommitAttempts(_) => StoreError::Conflict {
                            dataset: dataset.clone(),
                        },
                        other => StoreError::internal(other),
                    }
                }
                DeltaTableError::VersionAlreadyExists(_) => StoreError::Conflict {
                    dataset: dataset.clone(),
                },
                e => StoreError::internal(e),
            }
        };
        let properties = self.properties(&provenance, req.mode)?;
        let is_new = table.version().is_none();
        if req.mode == Mode::Append || is_new {
            let moved = self.move_into_table(&dataset, out, files)?;
            let adds: Vec<deltalake::kernel::Action> = moved
                .iter()
                .zip(files)
                .map(|(path, f)| {
                    deltalake::kernel::Action::Add(deltalake::kernel::Add {
                        path: path.clone(),
                        size: f.bytes as i64,
                        modification_time: chrono::Utc::now().timestamp_millis(),
                        data_change: true,
                        stats: Some(f.stats.clone()),
                        ..Default::default()
                    })
                })
                .collect();
            let append = |table: DeltaTable, adds: Vec<deltalake::kernel::Action>| {
                let properties = self.properties(&provenance, req.mode);
                async move {
                    let snapshot = table.snapshot()?;
                    deltalake::kernel::transaction::CommitBuilder::from(
                        properties.map_err(|e| DeltaTableError::Generic(e.to_string()))?,
                    )
                    .with_actions(adds)
                    .build(
                        Some(snapshot),
                        table.log_store(),
                        deltalake::protocol::DeltaOperation::Write {
                            mode: SaveMode::Append,
                            partition_by: None,
                            predicate: None,
                        },
                    )
                    .await
                    .map(|c| Some(c.version()))
                }
            };
            let committed = if is_new {
                use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
                let delta_schema: deltalake::kernel::StructType = file_schema(schema)
                    .as_ref()
                    .try_into_kernel()
                    .map_err(StoreError::internal)?;
                let created = deltalake::operations::create::CreateBuilder::new()
                    .with_log_store(table.log_store())
                    .with_columns(delta_schema.fields().cloned())
                    .with_configuration(self.table_configuration())
                    .with_table_name(&dataset)
                    .with_actions(adds.clone())
                    .with_commit_properties(properties)
                    .await
                    .map(|t| t.version());
                match created {
                    // Another process (a replica) created the table first: append instead.
                    Err(_) => {
                        let now = self.open_table(&dataset).await?;
                        if now.version().is_some() {
                            append(now, adds).await
                        } else {
                            created
                        }
                    }
                    ok => ok,
                }
            } else {
                append(table, adds).await
            };
            return match committed {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err(StoreError::Internal("commit left no version".into())),
                Err(e) => {
                    // Not committed: the moved files are referenced by nothing.
                    for path in &moved {
                        let _ = std::fs::remove_file(self.table_dir(&dataset).join(path));
                    }
                    Err(conflict(e))
                }
            };
        }
        // Delta's own session: its planner executes the write's custom plan nodes.
        let ctx = deltalake::delta_datafusion::create_session().into_inner();
        let paths: Vec<String> = files
            .iter()
            .map(|f| out.join(&f.name).to_string_lossy().into_owned())
            .collect();
        let df = ctx
            .read_parquet(paths, ParquetReadOptions::default())
            .await
            .map_err(StoreError::internal)?;
        let plan = df.into_unoptimized_plan();
        let write = table
            .write(Vec::new())
            .with_input_plan(plan)
            .with_session_state(Arc::new(ctx.state()))
            .with_commit_properties(properties)
            .with_table_name(&dataset)
            // Bounded memory: Delta's writer holds a data file and a row group in memory
            // until it flushes them, so both are kept small whatever the upload's size.
            .with_target_file_size(std::num::NonZeroU64::new(32 << 20))
            .with_writer_properties(crate::datafile::writer_properties())
            .with_configuration(self.table_configuration())
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where(replace_predicate(schema, periods, &req.scope));
        match write.await {
            Ok(table) => table
                .version()
                .ok_or_else(|| StoreError::Internal("commit left no version".into())),
            Err(e) => Err(conflict(e)),
        }
    }

    fn table_dir(&self, dataset: &str) -> PathBuf {
        self.cfg.data_dir.join("tables").join(dataset)
    }

    /// Moves the worker's files into the table under names no other upload uses
    /// (`u-<upload>-<n>.parquet`); returns their paths relative to the table.
    fn move_into_table(
        &self,
        dataset: &str,
        out: &Path,
        files: &[DataFile],
    ) -> Result<Vec<String>, StoreError> {
        let dir = self.table_dir(dataset);
        std::fs::create_dir_all(&dir).map_err(StoreError::internal)?;
        let upload = uuid::Uuid::new_v4().simple().to_string();
        let mut moved = Vec::with_capacity(files.len());
        for (i, f) in files.iter().enumerate() {
            let name = format!("{ORPHAN_PREFIX}{upload}-{i:05}.parquet");
            if let Err(e) = std::fs::rename(out.join(&f.name), dir.join(&name)) {
                for m in &moved {
                    let _ = std::fs::remove_file(dir.join(m));
                }
                return Err(StoreError::internal(e));
            }
            moved.push(name);
        }
        // The renames are durable before the log entry that names them is written.
        if let Ok(d) = std::fs::File::open(&dir) {
            d.sync_all().map_err(StoreError::internal)?;
        }
        Ok(moved)
    }
}

/// Data files moved into a table by an upload start with this; one that no log entry
/// names (a crash between the move and the commit) is removed at the next start.
const ORPHAN_PREFIX: &str = "u-";

/// Removes data files of uploads that never committed from a table directory: those
/// named by an upload (`u-…`) that no log entry adds.
fn sweep_uncommitted(table_dir: &Path) -> Result<usize, StoreError> {
    let mut named = std::collections::HashSet::new();
    let log = table_dir.join("_delta_log");
    if let Ok(entries) = std::fs::read_dir(&log) {
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(&path).map_err(StoreError::internal)?;
                for line in text.lines() {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                        && let Some(p) = v.pointer("/add/path").and_then(|p| p.as_str())
                    {
                        named.insert(p.to_owned());
                    }
                }
            } else if path.extension().is_some_and(|x| x == "parquet") {
                // A checkpoint summarises older entries, whose JSON files retention keeps;
                // to be safe, a table with checkpoints is left alone.
                return Ok(0);
            }
        }
    }
    let mut removed = 0;
    if let Ok(entries) = std::fs::read_dir(table_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(ORPHAN_PREFIX)
                && name.ends_with(".parquet")
                && !named.contains(&name)
            {
                std::fs::remove_file(e.path()).map_err(StoreError::internal)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Rows a replacement removes: the file's periods, within the uploader's scope.
fn replace_predicate(
    schema: &DatasetSchema,
    periods: &[String],
    scope: &ScopeFilter,
) -> datafusion::logical_expr::Expr {
    let mut predicate = lit(true);
    if let Some(p) = &schema.period_column {
        predicate =
            col(p.as_str()).in_list(periods.iter().map(|v| lit(v.as_str())).collect(), false);
    }
    if let (Some(f), ScopeFilter::Forces(forces)) = (&schema.force_column, scope) {
        let scoped =
            col(f.as_str()).in_list(forces.iter().map(|v| lit(v.as_str())).collect(), false);
        predicate = predicate.and(scoped);
    }
    predicate
}

/// What a valid upload became.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checked {
    /// Rows.
    pub rows: u64,
    /// Periods present.
    pub periods: Vec<String>,
    /// The data files written, in the output directory.
    pub files: Vec<DataFile>,
}

/// Inspects, decodes (once) and validates a file, writing the rows into data files in
/// `out` as it goes; returns the rows, periods and files. On refusal the files are
/// removed.
pub(crate) fn check_file(
    path: &Path,
    schema: &DatasetSchema,
    scope: &ScopeFilter,
    agreements: &[String],
    limits: &FileLimits,
    batch_rows: usize,
    out: &Path,
) -> Result<Checked, StoreError> {
    let checked = decode_validate_write(path, schema, scope, agreements, limits, batch_rows, out);
    if checked.is_err()
        && let Ok(entries) = std::fs::read_dir(out)
    {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    checked
}

fn decode_validate_write(
    path: &Path,
    schema: &DatasetSchema,
    scope: &ScopeFilter,
    agreements: &[String],
    limits: &FileLimits,
    batch_rows: usize,
    out: &Path,
) -> Result<Checked, StoreError> {
    let corrupt = || {
        StoreError::Validation(Violations::single(Violation {
            row: None,
            column: None,
            rule: "parquet".into(),
            message: "the file could not be decoded: it is truncated or corrupt".into(),
        }))
    };
    let mut file = std::fs::File::open(path).map_err(StoreError::internal)?;
    let inspected = inspect(&mut file, schema, limits).map_err(StoreError::Validation)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|_| corrupt())?;
    let mask = ProjectionMask::roots(
        builder.parquet_schema(),
        inspected.projection.iter().copied(),
    );
    let reader = builder
        .with_projection(mask)
        .with_batch_size(batch_rows)
        .build()
        .map_err(|_| corrupt())?;
    let mut checker = RowChecker::new(schema, scope, agreements);
    // Encoding runs on a thread of its own while the next batch is decoded and checked,
    // so both cores work; the channel holds at most two batches.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<ArrayRef>>(2);
    let mut sink = Sink::new(out, file_schema(schema));
    let writer = std::thread::Builder::new()
        .name("concordat-encode".into())
        .stack_size(1 << 20)
        .spawn(move || -> Result<Vec<DataFile>, StoreError> {
            for cols in rx {
                sink.write(cols)?;
            }
            sink.finish()
        })
        .map_err(|_| {
            StoreError::Validation(Violations::single(Violation {
                row: None,
                column: None,
                rule: "limits".into(),
                message: "the file could not be checked within the validation memory limit".into(),
            }))
        })?;
    let decoded = (|| -> Result<(), StoreError> {
        for batch in reader {
            let batch = batch.map_err(|_| corrupt())?;
            let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.columns.len());
            for c in &schema.columns {
                let a = batch.column_by_name(&c.name).ok_or_else(corrupt)?;
                let want = arrow_type(c.data_type);
                cols.push(if a.data_type() == &want {
                    a.clone()
                } else {
                    arrow::compute::cast(a, &want).map_err(|_| corrupt())?
                });
            }
            checker.check(&cols);
            // Once a rule is broken nothing will be committed: stop writing, keep checking.
            if checker.violations.count == 0 && tx.send(cols).is_err() {
                // The writer stopped: its error is reported below.
                break;
            }
        }
        Ok(())
    })();
    drop(tx);
    let written = writer
        .join()
        .map_err(|_| StoreError::Internal("the data file writer panicked".into()))?;
    decoded?;
    let files = written?;
    if checker.violations.count > 0 {
        let mut v = checker.violations;
        v.sort();
        return Err(StoreError::Validation(v));
    }
    let declared = inspected.metadata.file_metadata().num_rows();
    if i64::try_from(checker.rows).ok() != Some(declared) {
        return Err(StoreError::Validation(Violations::single(Violation {
            row: None,
            column: None,
            rule: "parquet".into(),
            message: format!(
                "the file declares {declared} rows but holds {}: it is truncated or corrupt",
                checker.rows
            ),
        })));
    }
    if checker.rows == 0 {
        return Err(StoreError::Validation(Violations::single(Violation {
            row: None,
            column: None,
            rule: "empty".into(),
            message: "the file has no rows".into(),
        })));
    }
    Ok(Checked {
        rows: checker.rows,
        periods: checker.periods.into_iter().collect(),
        files,
    })
}
