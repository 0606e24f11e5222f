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
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_writer::{ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::StoreError;
use crate::coded::CodedChunk;

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
pub(crate) const ROW_GROUP_ROWS: usize = 128 * 1024;
/// A file's data is synced in the background each time this much more is written.
const WRITE_BACK_BYTES: usize = 1 << 20;
/// Rows per data page, at most.
const PAGE_ROWS: usize = 20_000;

/// The writer settings of every stored data file.
/// Pseudonym columns (`plain`) are nearly all distinct: a dictionary would only cost
/// hashing every value to fall back to plain encoding, and their minimum and maximum
/// prune nothing, so they get neither. Nor are they compressed: a hexadecimal digest
/// has no repeats for Snappy to find (it saved 3% of their bytes at twice the cost of
/// every other column's encoding together).
/// Coded text columns (enums, references, periods) arriving as dictionaries are not
/// written by parquet-rs's column writer but from their keys ([`CodedChunk`]), their
/// indices uncompressed (a few bits a row, in runs: Snappy found little to save).
/// Statistics are never truncated: the Delta statistics are read from them.
/// `paged` files keep them per page too (the page index), so a query over a range of
/// periods reads only the pages holding it, of every column, the pseudonyms included.
/// Small files get none: their columns are a page or two, and reading and pruning an
/// index per file cost a query over many of them more than it saved.
pub fn writer_properties(plain: &[String], paged: bool) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_statistics_enabled(if paged {
            EnabledStatistics::Page
        } else {
            EnabledStatistics::Chunk
        })
        .set_statistics_truncate_length(None)
        .set_created_by("concordat".into());
    for c in plain {
        let path = parquet::schema::types::ColumnPath::from(c.as_str());
        b = b
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_compression(path.clone(), parquet::basic::Compression::UNCOMPRESSED)
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

/// The range of one column of a file.
#[derive(Default)]
struct ColumnStats {
    min: Option<Value>,
    max: Option<Value>,
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
    /// Widens the range to cover the values of `a`.
    fn widen(&mut self, a: &ArrayRef) {
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
///
/// Batches may carry text columns as dictionaries (as decoded): those are written from
/// the dictionary's keys ([`CodedChunk`]), the others by parquet-rs's column writers; the
/// files are written without an Arrow schema of their own, so they read as the stored
/// schema says.
pub struct Sink {
    dir: PathBuf,
    /// The schema of stored files (and of their Delta statistics).
    stored: SchemaRef,
    /// The schema of the batches written, known from the first.
    batch: Option<SchemaRef>,
    plain: Vec<String>,
    /// File names start with this.
    prefix: String,
    current: Option<Open>,
    rows: u64,
    nulls: Vec<u64>,
    done: Vec<DataFile>,
    /// Files being synced to disk.
    syncing: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

/// The file being written.
struct Open {
    name: String,
    file: SerializedFileWriter<File>,
    factory: ArrowRowGroupWriterFactory,
    paged: bool,
    /// The row group being written, once it has rows.
    group: Option<Vec<ColumnWriter>>,
    group_rows: usize,
    groups: usize,
    /// Bytes synced (or being synced) by [`Open::write_back`].
    synced: usize,
    writeback: Option<std::thread::JoinHandle<()>>,
}

/// The writer of one column of a row group.
enum ColumnWriter {
    Arrow(Box<ArrowColumnWriter>),
    Coded(CodedChunk),
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("writing a data file: {e}"))
}

impl Open {
    /// Adds a batch to the row group being written.
    fn write(&mut self, batch: &RecordBatch) -> Result<(), StoreError> {
        let writers = match self.group.take() {
            Some(writers) => writers,
            None => {
                let descr = self.file.schema_descr();
                self.factory
                    .create_column_writers(self.groups)
                    .map_err(io)?
                    .into_iter()
                    .zip(batch.columns())
                    .enumerate()
                    .map(|(i, (w, c))| {
                        if CodedChunk::takes(c.as_ref()) {
                            ColumnWriter::Coded(CodedChunk::new(
                                descr.column(i),
                                PAGE_ROWS,
                                self.paged,
                            ))
                        } else {
                            ColumnWriter::Arrow(Box::new(w))
                        }
                    })
                    .collect()
            }
        };
        let writers = self.group.insert(writers);
        for ((w, c), f) in writers
            .iter_mut()
            .zip(batch.columns())
            .zip(batch.schema().fields())
        {
            match w {
                ColumnWriter::Arrow(w) => {
                    for leaf in compute_leaves(f, c).map_err(io)? {
                        w.write(&leaf).map_err(io)?;
                    }
                }
                ColumnWriter::Coded(chunk) => chunk.push(c).map_err(io)?,
            }
        }
        self.group_rows += batch.num_rows();
        Ok(())
    }

    /// Writes the row group being written, if it has rows.
    fn end_group(&mut self) -> Result<(), StoreError> {
        let Some(writers) = self.group.take() else {
            return Ok(());
        };
        let mut group = self.file.next_row_group().map_err(io)?;
        for w in writers {
            match w {
                ColumnWriter::Arrow(w) => w
                    .close()
                    .and_then(|chunk| chunk.append_to_row_group(&mut group))
                    .map_err(io)?,
                ColumnWriter::Coded(chunk) => {
                    debug_assert_eq!(chunk.rows(), self.group_rows);
                    let (bytes, close) = chunk.finish().map_err(io)?;
                    group.append_column(&bytes, close).map_err(io)?;
                }
            }
        }
        group.close().map_err(io)?;
        self.group_rows = 0;
        self.groups += 1;
        self.write_back();
        Ok(())
    }

    /// Once a few MiB more are written, syncs what the file holds so far on a thread of
    /// its own (one at a time), so its sync when it is closed waits only for the rest.
    /// Syncing every file of an upload at its end took a quarter of the worker's time
    /// on a 2-core machine. A failure here is only a lost head start: the sync at the
    /// end reports errors.
    fn write_back(&mut self) {
        let written = self.file.bytes_written();
        if written < self.synced + WRITE_BACK_BYTES
            || self.writeback.as_ref().is_some_and(|t| !t.is_finished())
        {
            return;
        }
        let Ok(file) = self.file.inner().try_clone() else {
            return;
        };
        self.synced = written;
        self.writeback = std::thread::Builder::new()
            .name("concordat-sync".into())
            .stack_size(64 << 10)
            .spawn(move || {
                let _ = file.sync_data();
            })
            .ok();
    }
}

impl Sink {
    /// A sink writing files of the `stored` schema into `dir` (which must exist), named
    /// `<prefix>-<n>.parquet`; the `plain` columns get no dictionary and no minimum or
    /// maximum.
    pub fn new(dir: &Path, stored: SchemaRef, plain: Vec<String>, prefix: &str) -> Sink {
        Sink {
            dir: dir.to_path_buf(),
            stored,
            batch: None,
            plain,
            prefix: prefix.to_owned(),
            current: None,
            rows: 0,
            nulls: Vec::new(),
            done: Vec::new(),
            syncing: Vec::new(),
        }
    }

    /// Writes columns in the schema's order.
    pub fn write(&mut self, columns: Vec<ArrayRef>) -> Result<(), StoreError> {
        let schema = match &self.batch {
            Some(s) => s.clone(),
            None => {
                let fields: Vec<_> = self
                    .stored
                    .fields()
                    .iter()
                    .zip(&columns)
                    .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
                    .collect();
                let s = Arc::new(arrow::datatypes::Schema::new(fields));
                self.batch = Some(s.clone());
                s
            }
        };
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(io)?;
        if self.current.is_none() {
            let name = format!("{}-{:05}.parquet", self.prefix, self.done.len());
            let file = File::create(self.dir.join(&name)).map_err(io)?;
            // A file whose first row group spans several pages gets a page index.
            let paged = batch.num_rows() > 2 * PAGE_ROWS;
            let options = parquet::arrow::arrow_writer::ArrowWriterOptions::new()
                .with_properties(writer_properties(&self.plain, paged))
                .with_skip_arrow_metadata(true);
            let (file, factory) = ArrowWriter::try_new_with_options(file, schema, options)
                .and_then(ArrowWriter::into_serialized_writer)
                .map_err(io)?;
            self.current = Some(Open {
                name,
                file,
                factory,
                paged,
                group: None,
                group_rows: 0,
                groups: 0,
                synced: 0,
                writeback: None,
            });
            self.rows = 0;
            self.nulls = vec![0; self.stored.fields().len()];
        }
        for (n, c) in self.nulls.iter_mut().zip(batch.columns()) {
            *n += c.null_count() as u64;
        }
        self.rows += batch.num_rows() as u64;
        let group_full = match &mut self.current {
            Some(open) => {
                open.write(&batch)?;
                open.group_rows >= ROW_GROUP_ROWS
            }
            None => false,
        };
        if group_full {
            self.end_row_group()?;
        }
        Ok(())
    }

    /// Ends the current row group (the next rows start another), and the file once it
    /// is full.
    pub fn end_row_group(&mut self) -> Result<(), StoreError> {
        let full = match &mut self.current {
            Some(open) => {
                open.end_group()?;
                open.file.bytes_written() >= TARGET_FILE_BYTES
            }
            None => false,
        };
        if full {
            self.close_current()?;
        }
        Ok(())
    }

    fn close_current(&mut self) -> Result<(), StoreError> {
        let Some(mut open) = self.current.take() else {
            return Ok(());
        };
        open.end_group()?;
        let name = open.name;
        let metadata = open.file.close().map_err(io)?;
        let path = self.dir.join(&name);
        let bytes = std::fs::metadata(&path).map_err(io)?.len();
        // The file reaches the disk while the next one is encoded, on a thread with a
        // small stack (the worker's memory limit counts stacks too); if none can be
        // started, it is synced here.
        let sync = move || File::open(&path).and_then(|f| f.sync_all());
        let started = std::thread::Builder::new()
            .name("concordat-sync".into())
            .stack_size(64 << 10)
            .spawn(sync.clone());
        match started {
            Ok(handle) => self.syncing.push(handle),
            Err(_) => sync().map_err(io)?,
        }
        let (mut min, mut max, mut nulls) = (Map::new(), Map::new(), Map::new());
        for (f, n) in self.stored.fields().iter().zip(&self.nulls) {
            nulls.insert(f.name().clone(), json!(n));
            if self.plain.contains(f.name()) {
                continue;
            }
            // The range comes from the row groups' own statistics (exact: never
            // truncated), so no value is compared twice.
            let range = StatisticsConverter::try_new(
                f.name(),
                &self.stored,
                metadata.file_metadata().schema_descr(),
            )
            .and_then(|c| {
                Ok((
                    c.row_group_mins(metadata.row_groups().iter())?,
                    c.row_group_maxes(metadata.row_groups().iter())?,
                ))
            });
            let Ok((lo, hi)) = range else { continue };
            let mut s = ColumnStats::default();
            s.widen(&lo);
            s.widen(&hi);
            if let Some(v) = s.min {
                min.insert(f.name().clone(), v);
            }
            if let Some(v) = s.max {
                max.insert(f.name().clone(), v);
            }
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

    /// Closes the last file and waits until every file is on disk; returns them all.
    pub fn finish(mut self) -> Result<Vec<DataFile>, StoreError> {
        self.close_current()?;
        for s in self.syncing.drain(..) {
            s.join()
                .map_err(|_| io("the thread syncing it panicked"))?
                .map_err(io)?;
        }
        Ok(self.done)
    }
}

/// The minimum and maximum Delta statistics (JSON) give a text column, if they do.
pub(crate) fn text_bounds(stats: &str, column: &str) -> Option<(String, String)> {
    let stats: Value = serde_json::from_str(stats).ok()?;
    Some((
        stats["minValues"][column].as_str()?.to_owned(),
        stats["maxValues"][column].as_str()?.to_owned(),
    ))
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
    use arrow::array::{DictionaryArray, Int32Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn files_carry_their_rows_and_statistics() {
        let dir = tempfile::tempdir().expect("dir");
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("n", DataType::Int32, true),
        ]));
        let mut sink = Sink::new(dir.path(), schema, Vec::new(), "part");
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
        check(dir.path(), &files[0]);
    }

    #[test]
    fn only_files_of_several_pages_carry_a_page_index() {
        use parquet::file::reader::FileReader;
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int32, true)]));
        let indexed = |rows: i32| -> (bool, usize) {
            let dir = tempfile::tempdir().expect("dir");
            let mut sink = Sink::new(dir.path(), schema.clone(), Vec::new(), "part");
            sink.write(vec![Arc::new(Int32Array::from_iter_values(0..rows))])
                .expect("write");
            sink.end_row_group().expect("group");
            let files = sink.finish().expect("finish");
            let file = File::open(dir.path().join(&files[0].name)).expect("file");
            let options = parquet::file::serialized_reader::ReadOptionsBuilder::new()
                .with_page_index()
                .build();
            let reader = parquet::file::serialized_reader::SerializedFileReader::new_with_options(
                file, options,
            )
            .expect("reader");
            let meta = reader.metadata();
            let pages = meta
                .offset_index()
                .map_or(0, |o| o[0][0].page_locations().len());
            let index = meta.column_index().is_some_and(|c| {
                !matches!(
                    c[0][0],
                    parquet::file::page_index::column_index::ColumnIndexMetaData::NONE
                )
            });
            (index, pages)
        };
        let (index, _) = indexed(1_000);
        assert!(!index, "a small file has no column index");
        let (index, pages) = indexed(100_000);
        assert!(index, "a large file has a column index");
        assert!(pages >= 5, "{pages} pages of at most {PAGE_ROWS} rows");
    }

    #[test]
    fn text_written_from_a_dictionary_reads_as_text() {
        let dir = tempfile::tempdir().expect("dir");
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("n", DataType::Int32, true),
        ]));
        let mut sink = Sink::new(dir.path(), schema, Vec::new(), "part");
        let coded = |v: Vec<Option<&str>>| -> ArrayRef {
            Arc::new(v.into_iter().collect::<DictionaryArray<Int32Type>>())
        };
        sink.write(vec![
            coded(vec![Some("b"), None]),
            Arc::new(Int32Array::from(vec![5, 2])),
        ])
        .expect("write");
        sink.write(vec![
            coded(vec![Some("a")]),
            Arc::new(Int32Array::from(vec![9])),
        ])
        .expect("write");
        let files = sink.finish().expect("finish");
        assert_eq!(files.len(), 1);
        check(dir.path(), &files[0]);
        let file = File::open(dir.path().join(&files[0].name)).expect("file");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("reader");
        assert_eq!(reader.schema().field(0).data_type(), &DataType::Utf8);
        let rows: Vec<Option<String>> = reader
            .build()
            .expect("build")
            .flat_map(|b| {
                let b = b.expect("batch");
                b.column(0)
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(rows, vec![Some("b".into()), None, Some("a".into())]);
    }

    /// The file holds rows b, null, a in `k` and 5, 2, 9 in `n`.
    fn check(dir: &Path, file: &DataFile) {
        let files = [file.clone()];
        assert_eq!(files[0].rows, 3);
        let stats: Value = serde_json::from_str(&files[0].stats).expect("json");
        assert_eq!(stats["numRecords"], 3);
        assert_eq!(stats["minValues"]["k"], "a");
        assert_eq!(stats["maxValues"]["k"], "b");
        assert_eq!(stats["minValues"]["n"], 2);
        assert_eq!(stats["maxValues"]["n"], 9);
        assert_eq!(stats["nullCount"]["k"], 1);
        let on_disk = std::fs::metadata(dir.join(&files[0].name)).expect("file");
        assert_eq!(on_disk.len(), files[0].bytes);
    }
}
