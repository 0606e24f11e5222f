//! A dataset's stored files as DataFusion reads them, planned once per table version.
//!
//! Planning a read through the Delta table provider replays the table's file list and
//! evaluates its statistics with the Delta kernel on every query (about two
//! milliseconds, most of the fixed cost of a small answer). A version never changes
//! once committed, so its file list and per-file statistics are read once, into
//! [`StoredVersion`], and each query prunes files with DataFusion's own
//! `PruningPredicate` over those statistics and reads the rest with DataFusion's
//! Parquet scan (row-group pruning, the shared footer cache). Tables using Delta
//! features this reader does not handle (partition columns, column mapping, deletion
//! vectors) are read through the Delta provider as before; the gateway's own tables use
//! none of them.
//!
//! Statistics are used for pruning only where they are exact: integer and date columns,
//! and text whose bounds are shorter than any writer's truncation. Anything else counts
//! as unknown, which keeps the file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, BooleanArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, Result, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use deltalake::DeltaTable;
use object_store::ObjectStore;

/// Text bounds at least this long may have been cut short by a writer (Delta's and
/// Parquet's truncate at 32 characters or more), so they are not used.
const EXACT_TEXT_CHARS: usize = 32;

/// One committed version of a dataset: its files and what their statistics prove.
#[derive(Debug)]
pub(crate) struct StoredVersion {
    version: u64,
    url: ObjectStoreUrl,
    store: Arc<dyn ObjectStore>,
    schema: SchemaRef,
    files: Vec<PartitionedFile>,
    stats: FileStats,
}

impl StoredVersion {
    /// Reads a version's file list and statistics, or `None` when the table uses a Delta
    /// feature this reader does not handle.
    fn of(dataset: &str, table: &DeltaTable) -> Result<Option<StoredVersion>> {
        let Some(version) = table.version() else {
            return Ok(None);
        };
        let snapshot = table.snapshot()?;
        if !snapshot.metadata().partition_columns().is_empty()
            || snapshot
                .metadata()
                .configuration()
                .get("delta.columnMapping.mode")
                .is_some_and(|m| m != "none")
        {
            return Ok(None);
        }
        let schema = read_schema(&snapshot.snapshot().arrow_schema());
        let mut files = Vec::new();
        let mut stats = Vec::new();
        for file in snapshot.log_data().iter() {
            if file.deletion_vector_descriptor().is_some() {
                return Ok(None);
            }
            let mut f = PartitionedFile::new(file.path().into_owned(), file.size().max(0) as u64);
            f.object_meta.location = file.object_store_path();
            if let Some(t) = chrono::DateTime::from_timestamp_millis(file.modification_time()) {
                f.object_meta.last_modified = t;
            }
            files.push(f);
            stats.push(
                file.stats()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()),
            );
        }
        let url = ObjectStoreUrl::parse(format!("concordat-table://{dataset}"))?;
        Ok(Some(StoredVersion {
            version,
            url,
            store: table.log_store().object_store(None),
            stats: FileStats::of(&schema, &stats),
            schema,
            files,
        }))
    }
}

/// The schema queries see: text as string views, as DataFusion reads Parquet text.
fn read_schema(stored: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        stored
            .fields()
            .iter()
            .map(|f| {
                let t = match f.data_type() {
                    DataType::Utf8 | DataType::LargeUtf8 => DataType::Utf8View,
                    other => other.clone(),
                };
                Field::new(f.name(), t, true)
            })
            .collect::<Vec<_>>(),
    ))
}

/// Per-file row counts and, per column, exact minimums, maximums and null counts
/// (null where unknown), one entry per file.
#[derive(Debug)]
struct FileStats {
    files: usize,
    rows: ArrayRef,
    columns: HashMap<String, [ArrayRef; 3]>,
}

impl FileStats {
    fn of(schema: &Schema, stats: &[Option<serde_json::Value>]) -> FileStats {
        let count = |v: &serde_json::Value| v.as_u64();
        let rows: UInt64Array = stats
            .iter()
            .map(|s| s.as_ref().and_then(|s| count(&s["numRecords"])))
            .collect();
        let mut columns = HashMap::new();
        for field in schema.fields() {
            let name = field.name();
            let t = field.data_type();
            if !matches!(
                t,
                DataType::Int32 | DataType::Int64 | DataType::Date32 | DataType::Utf8View
            ) {
                continue;
            }
            let bound = |key: &str| -> Option<ArrayRef> {
                let unknown = ScalarValue::try_from(t).ok()?;
                ScalarValue::iter_to_array(stats.iter().map(|s| {
                    s.as_ref()
                        .and_then(|s| exact(&s[key][name], t))
                        .unwrap_or_else(|| unknown.clone())
                }))
                .ok()
            };
            let nulls: ArrayRef = Arc::new(
                stats
                    .iter()
                    .map(|s| s.as_ref().and_then(|s| count(&s["nullCount"][name])))
                    .collect::<UInt64Array>(),
            );
            if let (Some(min), Some(max)) = (bound("minValues"), bound("maxValues")) {
                columns.insert(name.clone(), [min, max, nulls]);
            }
        }
        FileStats {
            files: stats.len(),
            rows: Arc::new(rows),
            columns,
        }
    }
}

/// A statistic's value as the column's type, where it is exact.
fn exact(v: &serde_json::Value, t: &DataType) -> Option<ScalarValue> {
    match t {
        DataType::Int32 => Some(ScalarValue::Int32(Some(i32::try_from(v.as_i64()?).ok()?))),
        DataType::Int64 => Some(ScalarValue::Int64(Some(v.as_i64()?))),
        DataType::Date32 => ScalarValue::Utf8(Some(v.as_str()?.to_owned()))
            .cast_to(&DataType::Date32)
            .ok(),
        DataType::Utf8View => {
            let s = v.as_str()?;
            (s.chars().count() < EXACT_TEXT_CHARS).then(|| ScalarValue::Utf8View(Some(s.into())))
        }
        _ => None,
    }
}

impl PruningStatistics for FileStats {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        Some(self.columns.get(&column.name)?[0].clone())
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        Some(self.columns.get(&column.name)?[1].clone())
    }

    fn num_containers(&self) -> usize {
        self.files
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        Some(self.columns.get(&column.name)?[2].clone())
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(self.rows.clone())
    }

    fn contained(
        &self,
        _column: &Column,
        _values: &std::collections::HashSet<ScalarValue>,
    ) -> Option<BooleanArray> {
        None
    }
}

/// The latest planned version of each dataset read so far.
#[derive(Debug, Default)]
pub(crate) struct StoredVersions {
    latest: Mutex<HashMap<String, Arc<StoredVersion>>>,
}

impl StoredVersions {
    /// The table a query reads for a dataset at the table's version: planned from the
    /// cache when that version was read before, through Delta's provider when the table
    /// uses a feature this reader does not handle.
    pub(crate) async fn provider(
        &self,
        dataset: &str,
        table: &DeltaTable,
        session: &dyn Session,
    ) -> Result<Arc<dyn TableProvider>> {
        let version = table.version();
        let cached = self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(dataset)
            .filter(|s| Some(s.version) == version)
            .cloned();
        let stored = match cached {
            Some(s) => Some(s),
            None => match StoredVersion::of(dataset, table)? {
                Some(s) => {
                    let s = Arc::new(s);
                    let mut latest = self
                        .latest
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    // A slower reader of an older version must not replace a newer one.
                    if latest.get(dataset).is_none_or(|l| l.version <= s.version) {
                        latest.insert(dataset.to_owned(), s.clone());
                    }
                    Some(s)
                }
                None => None,
            },
        };
        match stored {
            Some(version) => Ok(Arc::new(StoredTable { version })),
            None => {
                table.update_datafusion_session(session)?;
                Ok(table.table_provider().await?)
            }
        }
    }
}

/// One version of a dataset as a table.
#[derive(Debug)]
pub(crate) struct StoredTable {
    version: Arc<StoredVersion>,
}

#[async_trait]
impl TableProvider for StoredTable {
    fn schema(&self) -> SchemaRef {
        self.version.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Predicates prune files and row groups; rows are never filtered here.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let v = &self.version;
        let predicate = match conjunction(filters.iter().cloned()) {
            Some(e) => {
                let df_schema = DFSchema::try_from(v.schema.as_ref().clone())?;
                Some(state.create_physical_expr(e, &df_schema)?)
            }
            None => None,
        };
        // `None`: the predicate cannot prune by statistics, so every file is read.
        let keep = predicate
            .as_ref()
            .and_then(|p| {
                PruningPredicateBuilder::new()
                    .with_file_schema(v.schema.clone())
                    .build(p.clone())
            })
            .map(|pruning| pruning.prune(&v.stats))
            .transpose()?;
        let files: Vec<PartitionedFile> = v
            .files
            .iter()
            .enumerate()
            .filter(|(i, _)| keep.as_ref().is_none_or(|k| k[*i]))
            .map(|(_, f)| f.clone())
            .collect();
        if files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(v.schema.project(p)?),
                None => v.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        state
            .runtime_env()
            .register_object_store(v.url.as_ref(), v.store.clone());
        let footers = state.runtime_env().cache_manager.get_file_metadata_cache();
        let mut source = ParquetSource::new(v.schema.clone())
            .with_table_parquet_options(state.table_options().parquet.clone())
            .with_parquet_file_reader_factory(Arc::new(CachedParquetFileReaderFactory::new(
                v.store.clone(),
                footers,
            )));
        if let Some(p) = predicate {
            source = source.with_predicate(p);
        }
        let groups = FileGroup::new(files).split_files(state.config().target_partitions());
        let config = FileScanConfigBuilder::new(v.url.clone(), Arc::new(source))
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};
    use datafusion::prelude::SessionContext;

    /// Which of three files a predicate keeps: Kent's, Essex's, and one without
    /// statistics.
    fn kept(predicate: Expr) -> Vec<bool> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("pfa_code", DataType::Utf8View, true),
            Field::new("n", DataType::Int32, true),
            Field::new("day", DataType::Date32, true),
            Field::new("person_id", DataType::Utf8View, true),
            Field::new("x", DataType::Float64, true),
        ]));
        let long = |c: char| c.to_string().repeat(64);
        let file = |force: &str, n: (i32, i32), day: (&str, &str), person: char| {
            Some(serde_json::json!({
                "numRecords": 10,
                "minValues": {"pfa_code": force, "n": n.0, "day": day.0, "person_id": long(person), "x": 1.0},
                "maxValues": {"pfa_code": force, "n": n.1, "day": day.1, "person_id": long(person), "x": 2.0},
                "nullCount": {"pfa_code": 0, "n": 0, "day": 0, "person_id": 0, "x": 0},
            }))
        };
        let stats = FileStats::of(
            &schema,
            &[
                file("E23000032", (1, 5), ("2020-01-01", "2020-12-31"), 'a'),
                file("E23000011", (6, 9), ("2021-01-01", "2021-12-31"), 'b'),
                None,
            ],
        );
        let state = SessionContext::new().state();
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).expect("schema");
        let physical = state
            .create_physical_expr(predicate, &df_schema)
            .expect("expr");
        PruningPredicateBuilder::new()
            .with_file_schema(schema)
            .build(physical)
            .expect("prunes")
            .prune(&stats)
            .expect("pruned")
    }

    #[test]
    fn files_are_skipped_only_where_their_statistics_are_exact() {
        let text = |s: &str| lit(ScalarValue::Utf8View(Some(s.into())));
        // Force codes, integers and dates prune; a file without statistics is kept.
        assert_eq!(
            kept(col("pfa_code").in_list(vec![text("E23000032")], false)),
            [true, false, true]
        );
        assert_eq!(kept(col("n").gt(lit(5i32))), [false, true, true]);
        let day = |s: &str| {
            lit(ScalarValue::Utf8(Some(s.into()))
                .cast_to(&DataType::Date32)
                .expect("date"))
        };
        assert_eq!(kept(col("day").lt(day("2021-01-01"))), [true, false, true]);
        // Bounds of 32 characters or more may have been cut short by a writer, and
        // floats are not used: nothing is skipped on them.
        assert_eq!(
            kept(col("person_id").eq(text(&"c".repeat(64)))),
            [true, true, true]
        );
        assert_eq!(kept(col("x").gt(lit(100.0))), [true, true, true]);
    }
}
