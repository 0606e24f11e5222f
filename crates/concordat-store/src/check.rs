//! Checking one upload: the footer inspected, the rows decoded once and validated
//! against the schema and the uploader's scope, and written into the data files the
//! commit will add. Runs wherever the validator runs (the sandboxed worker process in a
//! server), and depends on nothing that commits.

use std::path::Path;

use arrow::array::ArrayRef;
use concordat_core::DatasetSchema;
use concordat_policy::ScopeFilter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::datafile::{DataFile, Sink, file_schema, plain_columns};
use crate::inspect::{FileLimits, arrow_type, inspect};
use crate::validate::RowChecker;
use crate::violation::{Violation, Violations};

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
    let mut sink = Sink::new(out, file_schema(schema), plain_columns(schema));
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
