//! Committing an upload: the worker's check, the data files moved into the table, and
//! the one log entry that adds them (or replaces the periods they cover).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use concordat_core::DatasetSchema;
use concordat_policy::ScopeFilter;
use datafusion::prelude::{ParquetReadOptions, col, lit};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;

use crate::StoreError;
use crate::check::{Checked, check_file};
use crate::datafile::{DataFile, file_schema};
use crate::store::{Mode, PROVENANCE_KEY, Provenance, Store, UploadOutcome, UploadRequest};
use crate::violation::Violations;

impl Store {
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
                        return Err(StoreError::Validation(Violations::of_file(
                            "parquet",
                            "the file could not be decoded: it is corrupt",
                        )));
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
        let committed = self
            .commit(table, &req, &periods, provenance, out.path(), &files)
            .await;
        // Whatever the outcome, the next read looks at the log again.
        self.changed(&dataset);
        let version = committed?;
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
            let moved = self.move_into_table(&dataset, out, files).await?;
            let adds: Vec<deltalake::kernel::Action> = moved
                .iter()
                .zip(files)
                .map(|(path, f)| add_action(path, f, true))
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
                    self.remove_moved(&dataset, &moved).await;
                    Err(conflict(e))
                }
            };
        }
        // When every file the replacement touches is wholly inside it (the usual case:
        // files hold one force area, and the upload brings every period they hold), the
        // worker's files are added and those files removed in one log entry: nothing is
        // decoded or written again. Otherwise Delta rewrites what is partly replaced.
        let snapshot = table.snapshot().map_err(StoreError::internal)?;
        if let Some(removes) = wholly_replaced(snapshot, schema, periods, &req.scope) {
            let moved = self.move_into_table(&dataset, out, files).await?;
            let actions: Vec<deltalake::kernel::Action> = removes
                .into_iter()
                .chain(
                    moved
                        .iter()
                        .zip(files)
                        .map(|(path, f)| add_action(path, f, true)),
                )
                .collect();
            let committed = deltalake::kernel::transaction::CommitBuilder::from(properties)
                .with_actions(actions)
                .build(
                    Some(snapshot),
                    table.log_store(),
                    deltalake::protocol::DeltaOperation::Write {
                        mode: SaveMode::Overwrite,
                        partition_by: None,
                        predicate: Some(replace_sql(schema, periods, &req.scope)),
                    },
                )
                .await
                .map(|c| c.version());
            return match committed {
                Ok(v) => Ok(v),
                Err(e) => {
                    // Not committed: the moved files are referenced by nothing.
                    self.remove_moved(&dataset, &moved).await;
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
            .with_writer_properties(crate::datafile::writer_properties(
                &crate::datafile::plain_columns(schema),
                false,
            ))
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
    /// (`u-<upload>-<n>.parquet`); returns their paths relative to the table. On a shared
    /// store they are copied up (in parts) instead.
    pub(crate) async fn move_into_table(
        &self,
        dataset: &str,
        out: &Path,
        files: &[DataFile],
    ) -> Result<Vec<String>, StoreError> {
        let upload = uuid::Uuid::new_v4().simple().to_string();
        let names: Vec<String> = (0..files.len())
            .map(|i| format!("{ORPHAN_PREFIX}{upload}-{i:05}.parquet"))
            .collect();
        let mut moved = Vec::with_capacity(files.len());
        if let Some(shared) = &self.cfg.shared {
            for (f, name) in files.iter().zip(&names) {
                let key = format!("tables/{dataset}/{name}");
                if let Err(e) = shared.upload_file(&out.join(&f.name), &key).await {
                    self.remove_moved(dataset, &moved).await;
                    return Err(e);
                }
                moved.push(name.clone());
            }
            return Ok(moved);
        }
        let dir = self.table_dir(dataset);
        std::fs::create_dir_all(&dir).map_err(StoreError::internal)?;
        for (f, name) in files.iter().zip(&names) {
            if let Err(e) = std::fs::rename(out.join(&f.name), dir.join(name)) {
                self.remove_moved(dataset, &moved).await;
                return Err(StoreError::internal(e));
            }
            moved.push(name.clone());
        }
        // The renames are durable before the log entry that names them is written.
        if let Ok(d) = std::fs::File::open(&dir) {
            d.sync_all().map_err(StoreError::internal)?;
        }
        Ok(moved)
    }

    /// Removes files moved into a table for a commit that did not happen.
    pub(crate) async fn remove_moved(&self, dataset: &str, moved: &[String]) {
        for name in moved {
            match &self.cfg.shared {
                Some(shared) => {
                    let _ = shared.delete(&format!("tables/{dataset}/{name}")).await;
                }
                None => {
                    let _ = std::fs::remove_file(self.table_dir(dataset).join(name));
                }
            }
        }
    }
}

/// The log action adding a data file moved into a table under `path`; `data_change` is
/// false when the file only holds rows the table already had (a compaction).
pub(crate) fn add_action(path: &str, f: &DataFile, data_change: bool) -> deltalake::kernel::Action {
    deltalake::kernel::Action::Add(deltalake::kernel::Add {
        path: path.to_owned(),
        size: f.bytes as i64,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change,
        stats: Some(f.stats.clone()),
        ..Default::default()
    })
}

/// Data files moved into a table by an upload start with this; one that no log entry
/// names (a crash between the move and the commit) is removed at the next start.
const ORPHAN_PREFIX: &str = "u-";

/// Removes data files of uploads that never committed from a table directory: those
/// named by an upload (`u-…`) that no log entry adds.
pub(crate) fn sweep_uncommitted(table_dir: &Path) -> Result<usize, StoreError> {
    let mut named = std::collections::HashSet::new();
    let log = table_dir.join("_delta_log");
    if let Ok(entries) = std::fs::read_dir(&log) {
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(&path).map_err(StoreError::internal)?;
                named.extend(added_paths(&text));
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

/// Removes, from every table on a shared store, the data files of uploads that never
/// committed and are older than `age` (by default an hour: no upload takes that long
/// between copying its files up and committing them; validation, which can, comes
/// before the copy). A table with checkpoints is left alone, as on local disk.
pub(crate) async fn sweep_uncommitted_shared(
    shared: &crate::shared::Shared,
    age: chrono::TimeDelta,
) -> Result<usize, StoreError> {
    let listed = shared.list("tables", None).await?;
    let mut by_table: std::collections::BTreeMap<
        String,
        Vec<(String, chrono::DateTime<chrono::Utc>)>,
    > = Default::default();
    for (key, meta) in listed {
        let mut parts = key.splitn(3, '/');
        let (Some(_), Some(table), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        by_table
            .entry(table.to_owned())
            .or_default()
            .push((rest.to_owned(), meta.last_modified));
    }
    let cutoff = chrono::Utc::now() - age;
    let mut removed = 0;
    for (table, objects) in by_table {
        if objects
            .iter()
            .any(|(k, _)| k.starts_with("_delta_log/") && k.ends_with(".parquet"))
        {
            continue;
        }
        let mut named = std::collections::HashSet::new();
        for (k, _) in objects
            .iter()
            .filter(|(k, _)| k.starts_with("_delta_log/") && k.ends_with(".json"))
        {
            if let Some(text) = shared.get(&format!("tables/{table}/{k}")).await? {
                named.extend(added_paths(&String::from_utf8_lossy(&text)));
            }
        }
        for (k, modified) in &objects {
            if k.starts_with(ORPHAN_PREFIX)
                && k.ends_with(".parquet")
                && *modified <= cutoff
                && !named.contains(k)
            {
                shared.delete(&format!("tables/{table}/{k}")).await?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// The data files a log entry adds.
fn added_paths(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let v = serde_json::from_str::<serde_json::Value>(line).ok()?;
            Some(v.pointer("/add/path")?.as_str()?.to_owned())
        })
        .collect()
}

/// The remove actions of a replacement of `periods` (within `scope`) if every file of
/// the table it touches is wholly inside it, as the files' statistics prove; `None` if
/// any file may be partly replaced (or its statistics do not say), so Delta rewrites.
///
/// The period column's format gives every period a file can hold between its minimum
/// and maximum (uploads are validated, so no other value is stored): a file holds no
/// replaced row if none of those periods is replaced, or if its one force area is
/// outside the scope; all its rows are replaced if all of those periods are, none is
/// null, and (for a scoped uploader) its one force area is inside the scope.
fn wholly_replaced(
    snapshot: &deltalake::table::state::DeltaTableState,
    schema: &DatasetSchema,
    periods: &[String],
    scope: &ScopeFilter,
) -> Option<Vec<deltalake::kernel::Action>> {
    let period = schema.period_column.as_deref()?;
    let format = schema.columns.iter().find(|c| c.name == period)?.format;
    let replaced: std::collections::BTreeSet<&str> = periods.iter().map(String::as_str).collect();
    let mut removes = Vec::new();
    for file in snapshot.log_data().iter() {
        let stats: serde_json::Value = serde_json::from_str(file.stats().as_deref()?).ok()?;
        let no_nulls = |c: &str| stats["nullCount"][c].as_u64() == Some(0);
        let (lo, hi) = (
            stats["minValues"][period].as_str()?,
            stats["maxValues"][period].as_str()?,
        );
        let held = periods_between(format, lo, hi)?;
        let any = held.iter().any(|p| replaced.contains(p.as_str()));
        let all = held.iter().all(|p| replaced.contains(p.as_str())) && no_nulls(period);
        let in_scope = match scope {
            ScopeFilter::All => Some(true),
            ScopeFilter::Forces(forces) => {
                let force = schema.force_column.as_deref()?;
                let (f_lo, f_hi) = (
                    stats["minValues"][force].as_str()?,
                    stats["maxValues"][force].as_str()?,
                );
                if f_lo == f_hi && no_nulls(force) {
                    Some(forces.contains(f_lo))
                } else if forces
                    .range(f_lo.to_owned()..=f_hi.to_owned())
                    .next()
                    .is_none()
                {
                    Some(false)
                } else {
                    None
                }
            }
        };
        match (any, in_scope, all) {
            (false, _, _) | (_, Some(false), _) => {}
            (true, Some(true), true) => {
                removes.push(deltalake::kernel::Action::Remove(file.remove_action(true)));
            }
            _ => return None,
        }
    }
    Some(removes)
}

/// Every valid period from `lo` to `hi` of a period column of this format; `None` for
/// a column of no such format, bounds not of it, or a span beyond a hundred years.
fn periods_between(
    format: Option<concordat_core::schema::Format>,
    lo: &str,
    hi: &str,
) -> Option<Vec<String>> {
    use concordat_core::schema::Format;
    use concordat_core::{FinancialYear, Quarter};
    let mut out = Vec::new();
    match format? {
        Format::Quarter => {
            let (mut q, end) = (Quarter::parse(lo)?, Quarter::parse(hi)?);
            while q <= end && out.len() <= 400 {
                out.push(q.to_string());
                q = q.next();
            }
        }
        Format::FinancialYear => {
            let (start, end) = (
                FinancialYear::parse(lo)?.start,
                FinancialYear::parse(hi)?.start,
            );
            for y in start..=end.min(start + 100) {
                out.push(FinancialYear { start: y }.to_string());
            }
        }
        _ => return None,
    }
    (out.len() <= 400).then_some(out)
}

/// The replacement's predicate as SQL, for the log entry's record of the operation.
fn replace_sql(schema: &DatasetSchema, periods: &[String], scope: &ScopeFilter) -> String {
    let predicate = replace_predicate(schema, periods, scope);
    datafusion::sql::unparser::expr_to_sql(&predicate)
        .map_or_else(|_| predicate.to_string(), |sql| sql.to_string())
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
