//! The data files a validated upload becomes, written by the worker that decoded it.
//!
//! The upload is decoded once, in the memory- and time-limited worker; the batches that
//! pass validation are written here with our own writer and settings (nothing of the
//! upload's footer, page index, statistics or metadata is carried over), with the Delta
//! statistics of each file. The server then only moves these files into the table and
//! commits a log entry that adds them: it never parses an uploaded byte.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Date32Type, Float64Type, Int32Type, Int64Type, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::StoreError;

/// A data file ready to be added to a table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataFile {
    /// File name inside the output directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Rows.
    pub rows: u64,
    /// Delta statistics (JSON): rows, and per column minimum, maximum and nulls.
    pub stats: String,
}

/// A new file is started once the current one holds this many bytes.
const TARGET_FILE_BYTES: usize = 32 << 20;
/// Rows per row group: bounds the writer's memory whatever the upload's size.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The writer settings of every stored data file.
/// Pseudonym columns (`plain`) are nearly all distinct: a dictionary would only cost
/// hashing every value to fall back to plain encoding, and their minimum and maximum
/// prune nothing, so they get neither.
pub fn writer_properties(plain: &[String]) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_created_by("concordat".into());
    for c in plain {
        let path = parquet::schema::types::ColumnPath::from(c.as_str());
        b = b
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    b.build()
}

/// The columns written without dictionary or statistics: the pseudonyms.
pub fn plain_columns(schema: &concordat_core::DatasetSchema) -> Vec<String> {
    schema
        .columns
        .iter()
        .filter(|c| c.pseudonym)
        .map(|c| c.name.clone())
        .collect()
}

/// Per-column statistics of the file being written.
#[derive(Default)]
struct ColumnStats {
    min: Option<Value>,
    max: Option<Value>,
    nulls: u64,
}

fn merge(slot: &mut Option<Value>, v: Value, keep_new: impl Fn(&Value, &Value) -> bool) {
    match slot {
        Some(old) if !keep_new(&v, old) => {}
        _ => *slot = Some(v),
    }
}

fn less(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64().unwrap_or(f64::NAN) < y.as_f64().unwrap_or(f64::NAN)
        }
        (Value::String(x), Value::String(y)) => x < y,
        _ => false,
    }
}

impl ColumnStats {
    fn update(&mut self, a: &ArrayRef) {
        self.nulls += a.null_count() as u64;
        let (lo, hi): (Option<Value>, Option<Value>) = match a.data_type() {
            DataType::Utf8 => {
                let s = a.as_string::<i32>();
                (
                    arrow::compute::min_string(s).map(|v| json!(v)),
                    arrow::compute::max_string(s).map(|v| json!(v)),
                )
            }
            DataType::Int32 => {
                let p = a.as_primitive::<Int32Type>();
                (
                    arrow::compute::min(p).map(|v| json!(v)),
                    arrow::compute::max(p).map(|v| json!(v)),
                )
            }
            DataType::Int64 => {
                let p = a.as_primitive::<Int64Type>();
                (
                    arrow::compute::min(p).map(|v| json!(v)),
                    arrow::compute::max(p).map(|v| json!(v)),
                )
            }
            DataType::Float64 => {
                let p = a.as_primitive::<Float64Type>();
                (
                    arrow::compute::min(p)
                        .filter(|v| v.is_finite())
                        .map(|v| json!(v)),
                    arrow::compute::max(p)
                        .filter(|v| v.is_finite())
                        .map(|v| json!(v)),
                )
            }
            DataType::Date32 => {
                let p = a.as_primitive::<Date32Type>();
                let day = |d: i32| {
                    chrono::DateTime::from_timestamp(i64::from(d) * 86_400, 0)
                        .map(|t| json!(t.format("%Y-%m-%d").to_string()))
                };
                (
                    arrow::compute::min(p).and_then(day),
                    arrow::compute::max(p).and_then(day),
                )
            }
            _ => (None, None),
        };
        if let Some(v) = lo {
            merge(&mut self.min, v, less);
        }
        if let Some(v) = hi {
            merge(&mut self.max, v, |new, old| less(old, new));
        }
    }
}

/// Writes validated batches into data files of bounded size in one directory.
pub struct Sink {
    dir: PathBuf,
    schema: SchemaRef,
    plain: Vec<String>,
    /// Per column, whether its minimum and maximum are kept.
    ranged: Vec<bool>,
    current: Option<(ArrowWriter<File>, String)>,
    rows: u64,
    stats: Vec<ColumnStats>,
    done: Vec<DataFile>,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("writing a data file: {e}"))
}

impl Sink {
    /// A sink writing files of `schema` into `dir` (which must exist); the `plain`
    /// columns get no dictionary and no minimum or maximum.
    pub fn new(dir: &Path, schema: SchemaRef, plain: Vec<String>) -> Sink {
        let ranged = schema
            .fields()
            .iter()
            .map(|f| !plain.contains(f.name()))
            .collect();
        Sink {
            dir: dir.to_path_buf(),
            plain,
            ranged,
            stats: Vec::new(),
            schema,
            current: None,
            rows: 0,
            done: Vec::new(),
        }
    }

    /// Writes columns in the schema's order.
    pub fn write(&mut self, columns: Vec<ArrayRef>) -> Result<(), StoreError> {
        let batch = RecordBatch::try_new(self.schema.clone(), columns).map_err(io)?;
        if self.current.is_none() {
            let name = format!("part-{:05}.parquet", self.done.len());
            let file = File::create(self.dir.join(&name)).map_err(io)?;
            let props = writer_properties(&self.plain);
            let writer =
                ArrowWriter::try_new(file, self.schema.clone(), Some(props)).map_err(io)?;
            self.current = Some((writer, name));
            self.rows = 0;
            self.stats = (0..self.schema.fields().len())
                .map(|_| ColumnStats::default())
                .collect();
        }
        for ((s, c), ranged) in self.stats.iter_mut().zip(batch.columns()).zip(&self.ranged) {
            if *ranged {
                s.update(c);
            } else {
                s.nulls += c.null_count() as u64;
            }
        }
        self.rows += batch.num_rows() as u64;
        let full = match &mut self.current {
            Some((writer, _)) => {
                writer.write(&batch).map_err(io)?;
                writer.bytes_written() + writer.in_progress_size() >= TARGET_FILE_BYTES
            }
            None => false,
        };
        if full {
            self.close_current()?;
        }
        Ok(())
    }

    fn close_current(&mut self) -> Result<(), StoreError> {
        let Some((writer, name)) = self.current.take() else {
            return Ok(());
        };
        writer.close().map_err(io)?;
        let path = self.dir.join(&name);
        let file = File::open(&path).map_err(io)?;
        file.sync_all().map_err(io)?;
        let bytes = file.metadata().map_err(io)?.len();
        let (mut min, mut max, mut nulls) = (Map::new(), Map::new(), Map::new());
        for (f, s) in self.schema.fields().iter().zip(&self.stats) {
            if let Some(v) = &s.min {
                min.insert(f.name().clone(), v.clone());
            }
            if let Some(v) = &s.max {
                max.insert(f.name().clone(), v.clone());
            }
            nulls.insert(f.name().clone(), json!(s.nulls));
        }
        let stats = json!({
            "numRecords": self.rows,
            "minValues": min,
            "maxValues": max,
            "nullCount": nulls,
        });
        self.done.push(DataFile {
            name,
            bytes,
            rows: self.rows,
            stats: stats.to_string(),
        });
        Ok(())
    }

    /// Closes the last file; returns every file written.
    pub fn finish(mut self) -> Result<Vec<DataFile>, StoreError> {
        self.close_current()?;
        Ok(self.done)
    }
}

/// The arrow schema of stored data files (every column nullable, as Delta reads them).
pub fn file_schema(schema: &concordat_core::DatasetSchema) -> SchemaRef {
    let arrow = crate::arrow_schema(schema);
    Arc::new(arrow::datatypes::Schema::new(
        arrow
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn files_carry_their_rows_and_statistics() {
        let dir = tempfile::tempdir().expect("dir");
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("n", DataType::Int32, true),
        ]));
        let mut sink = Sink::new(dir.path(), schema, Vec::new());
        sink.write(vec![
            Arc::new(StringArray::from(vec![Some("b"), None])),
            Arc::new(Int32Array::from(vec![5, 2])),
        ])
        .expect("write");
        sink.write(vec![
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(Int32Array::from(vec![9])),
        ])
        .expect("write");
        let files = sink.finish().expect("finish");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].rows, 3);
        let stats: Value = serde_json::from_str(&files[0].stats).expect("json");
        assert_eq!(stats["numRecords"], 3);
        assert_eq!(stats["minValues"]["k"], "a");
        assert_eq!(stats["maxValues"]["k"], "b");
        assert_eq!(stats["minValues"]["n"], 2);
        assert_eq!(stats["maxValues"]["n"], 9);
        assert_eq!(stats["nullCount"]["k"], 1);
        let on_disk = std::fs::metadata(dir.path().join(&files[0].name)).expect("file");
        assert_eq!(on_disk.len(), files[0].bytes);
    }
}
