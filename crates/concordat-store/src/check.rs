//! Checking one upload: the footer inspected, the rows decoded once and validated
//! against the schema and the uploader's scope, and written into the data files the
//! commit will add. Runs wherever the validator runs (the sandboxed worker process in a
//! server), and depends on nothing that commits.

use std::path::Path;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use concordat_core::DatasetSchema;
use concordat_core::schema::{ColumnSchema, ColumnType};
use concordat_policy::ScopeFilter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::file::metadata::ParquetMetaData;
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::cluster;
use crate::datafile::{DataFile, file_schema, plain_columns};
use crate::inspect::{FileLimits, arrow_type, inspect};
use crate::validate::RowChecker;
use crate::violation::Violations;

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
        StoreError::Validation(Violations::of_file(
            "parquet",
            "the file could not be decoded: it is truncated or corrupt",
        ))
    };
    let mut file = std::fs::File::open(path).map_err(StoreError::internal)?;
    let inspected = inspect(&mut file, schema, limits).map_err(StoreError::Validation)?;
    drop(file);
    let declared = inspected.metadata.file_metadata().num_rows();
    let coded = coded_columns(schema);
    let meta = reader_metadata(Arc::new(inspected.metadata), &inspected.projection, &coded)
        .ok_or_else(corrupt)?;
    let reader = Decoders::start(path, meta, &inspected.projection, batch_rows)?;
    let mut checker = RowChecker::new(schema, scope, agreements);
    // Encoding costs more than decoding and checking: two encoders on threads of their
    // own (each writing its own files) take the batches, so both cores work. Rows are
    // written clustered by force area: a set of held batches becomes one piece per force
    // area, and each channel holds all of one set's pieces.
    let force = schema
        .force_column
        .as_ref()
        .and_then(|f| schema.columns.iter().position(|c| &c.name == f));
    let queued = if force.is_some() {
        cluster::PIECES_QUEUED
    } else {
        1
    };
    let stored = file_schema(schema);
    let mut senders = Vec::with_capacity(ENCODERS);
    let mut encoders = Vec::with_capacity(ENCODERS);
    for e in 0..ENCODERS {
        let (tx, rx) = std::sync::mpsc::sync_channel::<cluster::Piece>(queued);
        let (dir, stored, plain) = (out.to_path_buf(), stored.clone(), plain_columns(schema));
        let thread = std::thread::Builder::new()
            .name("concordat-encode".into())
            .stack_size(1 << 20)
            .spawn(move || cluster::encode(rx, &dir, stored, plain, e))
            .map_err(|_| over_memory())?;
        senders.push(tx);
        encoders.push(thread);
    }
    let mut router = cluster::Router::new(senders, force, u64::try_from(declared).unwrap_or(0));
    let decoded = (|| -> Result<(), StoreError> {
        for batch in reader {
            let batch = batch.ok_or_else(corrupt)?;
            let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.columns.len());
            for (c, coded) in schema.columns.iter().zip(&coded) {
                let a = batch.column_by_name(&c.name).ok_or_else(corrupt)?;
                cols.push(canonical(a, c.data_type, *coded).ok_or_else(corrupt)?);
            }
            checker.check(&cols);
            // Once a rule is broken nothing will be committed: stop writing, keep checking.
            if checker.violations.count == 0 && router.push(cols).is_err() {
                // An encoder stopped: its error is reported below.
                return Ok(());
            }
        }
        if checker.violations.count == 0 {
            // An encoder that stopped reports its error below.
            let _ = router.finish();
        }
        Ok(())
    })();
    let mut files = Vec::new();
    let mut failed = None;
    for thread in encoders {
        match thread.join() {
            Ok(Ok(f)) => files.extend(f),
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(_) => {
                failed = failed.or(Some(StoreError::Internal(
                    "the data file writer panicked".into(),
                )))
            }
        }
    }
    decoded?;
    if let Some(e) = failed {
        return Err(e);
    }
    if checker.violations.count > 0 {
        let mut v = checker.violations;
        v.sort();
        return Err(StoreError::Validation(v));
    }
    if i64::try_from(checker.rows).ok() != Some(declared) {
        return Err(StoreError::Validation(Violations::of_file(
            "parquet",
            format!(
                "the file declares {declared} rows but holds {}: it is truncated or corrupt",
                checker.rows
            ),
        )));
    }
    if checker.rows == 0 {
        return Err(StoreError::Validation(Violations::of_file(
            "empty",
            "the file has no rows",
        )));
    }
    Ok(Checked {
        rows: checker.rows,
        periods: checker.periods.into_iter().collect(),
        files: in_force_order(out, files, schema.force_column.as_deref())?,
    })
}

/// The files renamed `part-<n>.parquet` in the order of the force area they hold (then
/// of their names), so that whatever reads them in name order reads force by force.
fn in_force_order(
    out: &Path,
    mut files: Vec<DataFile>,
    force: Option<&str>,
) -> Result<Vec<DataFile>, StoreError> {
    let first_force = |f: &DataFile| -> Option<String> {
        crate::datafile::text_bounds(&f.stats, force?).map(|(min, _)| min)
    };
    files.sort_by_cached_key(|f| (first_force(f), f.name.clone()));
    for (i, f) in files.iter_mut().enumerate() {
        let name = format!("part-{i:05}.parquet");
        std::fs::rename(out.join(&f.name), out.join(&name)).map_err(StoreError::internal)?;
        f.name = name;
    }
    Ok(files)
}

/// Threads encoding data files.
const ENCODERS: usize = 2;

/// The type text columns of few distinct values are decoded, checked and written as.
fn coded_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// Per column, whether it is text of few distinct values (an enum, a reference or a
/// period), kept as a dictionary from decoding to encoding: each distinct value is
/// decoded and checked once, not once per row.
fn coded_columns(schema: &DatasetSchema) -> Vec<bool> {
    schema
        .columns
        .iter()
        .map(ColumnSchema::is_coded_text)
        .collect()
}

/// Threads decoding row groups.
const DECODERS: usize = 2;

/// Batches decoded (per decoder) and not yet taken.
const BATCHES_QUEUED: usize = 8;

/// What a decoder hands on: a batch, the end of a row group, or a failure to decode.
enum Decoded {
    Batch(RecordBatch),
    EndOfRowGroup,
    Corrupt,
}

/// The file's row groups decoded on [`DECODERS`] threads, row group `i` by decoder
/// `i % DECODERS`, each with a handle of its own on the file; their batches are taken in
/// file order, so rows are checked and numbered as the file holds them. Decoding is the
/// busiest part of the worker's one pass: on one thread it kept the encoders waiting.
struct Decoders {
    queues: Vec<std::sync::mpsc::Receiver<Decoded>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    row_groups: usize,
    /// The row group being taken.
    at: usize,
    failed: bool,
}

impl Decoders {
    fn start(
        path: &Path,
        meta: ArrowReaderMetadata,
        projection: &[usize],
        batch_rows: usize,
    ) -> Result<Decoders, StoreError> {
        let row_groups = meta.metadata().num_row_groups();
        let mut queues = Vec::with_capacity(DECODERS);
        let mut threads = Vec::with_capacity(DECODERS);
        for d in 0..DECODERS.min(row_groups.max(1)) {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Decoded>(BATCHES_QUEUED);
            let (path, meta, projection) = (path.to_path_buf(), meta.clone(), projection.to_vec());
            let thread = std::thread::Builder::new()
                .name("concordat-decode".into())
                .stack_size(1 << 20)
                .spawn(move || {
                    for rg in (d..row_groups).step_by(DECODERS) {
                        let Some(reader) =
                            row_group_reader(&path, &meta, &projection, batch_rows, rg)
                        else {
                            let _ = tx.send(Decoded::Corrupt);
                            return;
                        };
                        for batch in reader {
                            let item = match batch {
                                Ok(b) => Decoded::Batch(b),
                                Err(_) => Decoded::Corrupt,
                            };
                            let stop = matches!(item, Decoded::Corrupt);
                            // The checker stopped taking: nothing more to do.
                            if tx.send(item).is_err() || stop {
                                return;
                            }
                        }
                        if tx.send(Decoded::EndOfRowGroup).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|_| over_memory())?;
            queues.push(rx);
            threads.push(thread);
        }
        Ok(Decoders {
            queues,
            threads,
            row_groups,
            at: 0,
            failed: false,
        })
    }
}

impl Iterator for Decoders {
    /// A batch, or `None` where the file could not be decoded.
    type Item = Option<RecordBatch>;

    fn next(&mut self) -> Option<Option<RecordBatch>> {
        while !self.failed && self.at < self.row_groups {
            // A decoder that ended early (or panicked on a hostile file) closed its queue.
            match self.queues[self.at % self.queues.len()].recv() {
                Ok(Decoded::Batch(b)) => return Some(Some(b)),
                Ok(Decoded::EndOfRowGroup) => self.at += 1,
                Ok(Decoded::Corrupt) | Err(_) => {
                    self.failed = true;
                    return Some(None);
                }
            }
        }
        None
    }
}

impl Drop for Decoders {
    fn drop(&mut self) {
        // Closing the queues stops the decoders at their next batch.
        self.queues.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The refusal when a thread cannot be had within the worker's memory limit.
fn over_memory() -> StoreError {
    StoreError::Validation(Violations::of_file(
        "limits",
        "the file could not be checked within the validation memory limit",
    ))
}

/// How the `projection` (root columns) is decoded, from the footer `inspect` already read
/// (it is not read again): the coded text columns as dictionaries.
fn reader_metadata(
    footer: Arc<ParquetMetaData>,
    projection: &[usize],
    coded: &[bool],
) -> Option<ArrowReaderMetadata> {
    let options = ArrowReaderOptions::new();
    let meta = ArrowReaderMetadata::try_new(footer, options.clone()).ok()?;
    let fields: Vec<Field> = meta
        .schema()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let is_coded = projection
                .iter()
                .position(|p| *p == i)
                .is_some_and(|k| coded.get(k).copied().unwrap_or(false));
            if is_coded && f.data_type() == &DataType::Utf8 {
                f.as_ref().clone().with_data_type(coded_type())
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    let hinted = Arc::new(Schema::new_with_metadata(
        fields,
        meta.schema().metadata().clone(),
    ));
    ArrowReaderMetadata::try_new(meta.metadata().clone(), options.with_schema(hinted)).ok()
}

/// A decoder of row group `row_group` of the file at `path`, on a handle of its own.
fn row_group_reader(
    path: &Path,
    meta: &ArrowReaderMetadata,
    projection: &[usize],
    batch_rows: usize,
    row_group: usize,
) -> Option<ParquetRecordBatchReader> {
    let file = std::fs::File::open(path).ok()?;
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta.clone());
    let mask = ProjectionMask::roots(builder.parquet_schema(), projection.iter().copied());
    builder
        .with_projection(mask)
        .with_row_groups(vec![row_group])
        .with_batch_size(batch_rows)
        .build()
        .ok()
}

/// A decoded column in the type it is checked and written as: coded text as a
/// dictionary of valid UTF-8 with `Int32` keys, anything else in the schema's type.
fn canonical(a: &ArrayRef, t: ColumnType, coded: bool) -> Option<ArrayRef> {
    if !coded {
        let want = arrow_type(t);
        return if a.data_type() == &want {
            Some(a.clone())
        } else {
            arrow::compute::cast(a, &want).ok()
        };
    }
    if a.data_type() == &coded_type() {
        // The decoder checks keys against the dictionary; the dictionary's own text is
        // checked here, each batch. A dictionary larger than the batch (a hostile file's
        // way to make every batch cost the whole dictionary) is first cut down to the
        // values the batch uses, so each batch costs at most its own rows.
        let d = a.as_dictionary::<Int32Type>();
        if d.values().len() <= d.len() {
            d.values().to_data().validate_full().ok()?;
            return Some(a.clone());
        }
        let used = arrow::compute::take(d.values(), d.keys(), None).ok()?;
        used.to_data().validate_full().ok()?;
        return arrow::compute::cast(&used, &coded_type()).ok();
    }
    let text = arrow::compute::cast(a, &DataType::Utf8).ok()?;
    arrow::compute::cast(&text, &coded_type()).ok()
}

#[cfg(test)]
mod tests {
    use arrow::array::{DictionaryArray, Int32Array, StringArray};

    use super::*;

    #[test]
    fn a_dictionary_larger_than_its_batch_is_cut_to_the_values_the_batch_uses() {
        let values: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
        let values = StringArray::from_iter_values(values);
        let keys = Int32Array::from(vec![Some(7), None, Some(2)]);
        let a: ArrayRef = Arc::new(DictionaryArray::new(keys, Arc::new(values)));
        let c = canonical(&a, ColumnType::Utf8, true).expect("canonical");
        let d = c.as_dictionary::<Int32Type>();
        assert!(d.values().len() <= 2, "{} values kept", d.values().len());
        let text = arrow::compute::cast(&c, &DataType::Utf8).expect("text");
        let text: Vec<Option<&str>> = text.as_string::<i32>().iter().collect();
        assert_eq!(text, vec![Some("v7"), None, Some("v2")]);
        // A dictionary no larger than its batch is kept as it is.
        let small: ArrayRef = Arc::new(
            vec![Some("a"), Some("b"), Some("a")]
                .into_iter()
                .collect::<DictionaryArray<Int32Type>>(),
        );
        let kept = canonical(&small, ColumnType::Utf8, true).expect("canonical");
        assert!(Arc::ptr_eq(&kept, &small));
    }
}
