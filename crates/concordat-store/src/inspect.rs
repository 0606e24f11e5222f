//! First look at an uploaded file, before a single page is decoded: is it Parquet, is
//! its footer sane, do its declared sizes and codecs stay within our limits, and do its
//! columns match the dataset. Hostile files are refused here, on metadata alone.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use arrow::datatypes::{DataType, Schema};
use concordat_core::DatasetSchema;
use concordat_core::schema::ColumnType;
use parquet::arrow::parquet_to_arrow_schema;
use parquet::basic::Compression;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::violation::{Violation, Violations};

/// Bounds on what an uploaded file may declare.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FileLimits {
    /// Largest footer accepted.
    pub max_footer_bytes: u64,
    /// Most rows in one file.
    pub max_rows: i64,
    /// Largest declared uncompressed size of one column chunk.
    pub max_chunk_uncompressed_bytes: i64,
    /// Largest declared uncompressed size of the whole file.
    pub max_total_uncompressed_bytes: i64,
    /// Largest ratio of uncompressed to compressed size of a column chunk over 16 MiB.
    pub max_compression_ratio: i64,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            max_footer_bytes: 16 << 20,
            max_rows: 500_000_000,
            max_chunk_uncompressed_bytes: 1 << 30,
            max_total_uncompressed_bytes: 64 << 30,
            max_compression_ratio: 1000,
        }
    }
}

/// What inspection learned about a file that passed it.
#[derive(Debug)]
pub struct Inspected {
    /// The footer.
    pub metadata: ParquetMetaData,
    /// For each schema column, its index among the file's top-level columns.
    pub projection: Vec<usize>,
}

fn file_error(rule: &str, message: impl Into<String>) -> Violation {
    Violation {
        row: None,
        column: None,
        rule: rule.to_owned(),
        message: message.into(),
    }
}

/// Checks the container and the column set. Returns the violations on refusal.
pub fn inspect(
    file: &mut File,
    schema: &DatasetSchema,
    limits: &FileLimits,
) -> Result<Inspected, Violations> {
    let refuse = |v: Violation| Violations::single(v);
    let len = file
        .metadata()
        .map_err(|_| refuse(file_error("parquet", "the file could not be read")))?
        .len();
    if len < 12 {
        return Err(refuse(file_error(
            "parquet",
            "not a Parquet file: it is shorter than a Parquet header and footer",
        )));
    }
    let mut head = [0u8; 4];
    let mut tail = [0u8; 8];
    let read = (|| -> std::io::Result<()> {
        file.seek(SeekFrom::Start(0))?;
        file.read_exact(&mut head)?;
        file.seek(SeekFrom::End(-8))?;
        file.read_exact(&mut tail)?;
        Ok(())
    })();
    if read.is_err() {
        return Err(refuse(file_error("parquet", "the file could not be read")));
    }
    if &head != b"PAR1" {
        return Err(refuse(file_error(
            "parquet",
            "not a Parquet file: it does not start with the Parquet magic bytes",
        )));
    }
    if &tail[4..] != b"PAR1" {
        return Err(refuse(file_error(
            "parquet",
            "the Parquet file is truncated or encrypted: it does not end with the Parquet magic bytes",
        )));
    }
    let footer = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if footer + 12 > len {
        return Err(refuse(file_error(
            "parquet",
            "the Parquet footer declares a length larger than the file: the file is truncated or corrupt",
        )));
    }
    if footer > limits.max_footer_bytes {
        return Err(refuse(file_error(
            "limits",
            format!(
                "the Parquet footer is larger than {} bytes",
                limits.max_footer_bytes
            ),
        )));
    }
    let metadata = ParquetMetaDataReader::new()
        .parse_and_finish(&*file)
        .map_err(|_| {
            refuse(file_error(
                "parquet",
                "the Parquet footer could not be decoded: the file is corrupt",
            ))
        })?;
    check_declared_sizes(&metadata, len, limits).map_err(refuse)?;
    let projection = check_columns(&metadata, schema)?;
    Ok(Inspected {
        metadata,
        projection,
    })
}

fn check_declared_sizes(
    md: &ParquetMetaData,
    len: u64,
    limits: &FileLimits,
) -> Result<(), Violation> {
    let declared_rows = md.file_metadata().num_rows();
    let mut rows = 0i64;
    let mut total = 0i64;
    for rg in md.row_groups() {
        if rg.num_rows() < 0 {
            return Err(file_error(
                "parquet",
                "a row group declares a negative number of rows",
            ));
        }
        rows = rows.saturating_add(rg.num_rows());
        for c in rg.columns() {
            let codec_ok = matches!(
                c.compression(),
                Compression::UNCOMPRESSED
                    | Compression::SNAPPY
                    | Compression::GZIP(_)
                    | Compression::ZSTD(_)
                    | Compression::LZ4_RAW
                    | Compression::LZ4
                    | Compression::BROTLI(_)
            );
            if !codec_ok {
                return Err(file_error(
                    "limits",
                    format!(
                        "column chunk `{}` uses a compression codec that is not accepted (use SNAPPY, ZSTD, GZIP, LZ4_RAW, BROTLI or none)",
                        c.column_path()
                    ),
                ));
            }
            let (comp, uncomp) = (c.compressed_size(), c.uncompressed_size());
            if comp < 0 || uncomp < 0 || comp as u64 > len {
                return Err(file_error(
                    "parquet",
                    format!(
                        "column chunk `{}` declares sizes that do not fit the file: it is corrupt",
                        c.column_path()
                    ),
                ));
            }
            if uncomp > limits.max_chunk_uncompressed_bytes {
                return Err(file_error(
                    "limits",
                    format!(
                        "column chunk `{}` declares {uncomp} uncompressed bytes; at most {} are accepted (write smaller row groups)",
                        c.column_path(),
                        limits.max_chunk_uncompressed_bytes
                    ),
                ));
            }
            if uncomp > 16 << 20 && uncomp / comp.max(1) > limits.max_compression_ratio {
                return Err(file_error(
                    "limits",
                    format!(
                        "column chunk `{}` declares a compression ratio above {}:1 and is refused as a decompression bomb",
                        c.column_path(),
                        limits.max_compression_ratio
                    ),
                ));
            }
            total = total.saturating_add(uncomp);
        }
    }
    if rows != declared_rows {
        return Err(file_error(
            "parquet",
            "the row groups do not add up to the file's declared row count: the file is corrupt",
        ));
    }
    if rows > limits.max_rows {
        return Err(file_error(
            "limits",
            format!(
                "the file declares {rows} rows; at most {} are accepted in one upload",
                limits.max_rows
            ),
        ));
    }
    if total > limits.max_total_uncompressed_bytes {
        return Err(file_error(
            "limits",
            "the file declares more uncompressed data than one upload may hold",
        ));
    }
    Ok(())
}

/// Whether a file column of type `found` can hold the schema's `want` without loss.
pub fn compatible(want: ColumnType, found: &DataType) -> bool {
    use DataType as D;
    match want {
        ColumnType::Utf8 => match found {
            D::Utf8 | D::LargeUtf8 | D::Utf8View => true,
            D::Dictionary(_, v) => matches!(v.as_ref(), D::Utf8 | D::LargeUtf8 | D::Utf8View),
            _ => false,
        },
        ColumnType::Int32 => matches!(found, D::Int8 | D::Int16 | D::Int32 | D::UInt8 | D::UInt16),
        ColumnType::Int64 => matches!(
            found,
            D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32
        ),
        ColumnType::Float64 => matches!(
            found,
            D::Float32 | D::Float64 | D::Int8 | D::Int16 | D::Int32 | D::UInt8 | D::UInt16
        ),
        ColumnType::Boolean => matches!(found, D::Boolean),
        ColumnType::Date32 => matches!(found, D::Date32),
    }
}

/// The Arrow type a schema column is stored as.
pub fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::Utf8 => DataType::Utf8,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Date32 => DataType::Date32,
    }
}

/// The Arrow schema a dataset is stored with.
pub fn arrow_schema(schema: &DatasetSchema) -> Schema {
    Schema::new(
        schema
            .columns
            .iter()
            .map(|c| arrow::datatypes::Field::new(&c.name, arrow_type(c.data_type), c.nullable))
            .collect::<Vec<_>>(),
    )
}

fn check_columns(md: &ParquetMetaData, schema: &DatasetSchema) -> Result<Vec<usize>, Violations> {
    let fm = md.file_metadata();
    let arrow =
        parquet_to_arrow_schema(fm.schema_descr(), fm.key_value_metadata()).map_err(|_| {
            Violations::single(file_error(
                "parquet",
                "the file's schema could not be read as Arrow types",
            ))
        })?;
    let mut out = Violations::default();
    // Two columns of one name (or names that differ only by case) would leave which one
    // is read to chance.
    for (i, f) in arrow.fields().iter().enumerate() {
        if arrow.fields()[..i]
            .iter()
            .any(|g| g.name().eq_ignore_ascii_case(f.name()))
        {
            out.push(Violation {
                row: None,
                column: Some(f.name().chars().take(64).collect()),
                rule: "duplicate_column".into(),
                message: "the file has more than one column of this name (names may not differ only by case)".into(),
            });
        }
    }
    if out.count > 0 {
        return Err(out);
    }
    let mut projection = Vec::with_capacity(schema.columns.len());
    for col in &schema.columns {
        match arrow.fields().iter().position(|f| f.name() == &col.name) {
            None => out.push(Violation {
                row: None,
                column: Some(col.name.clone()),
                rule: "missing_column".into(),
                message: format!(
                    "the dataset requires column `{}` ({:?})",
                    col.name, col.data_type
                )
                .to_lowercase(),
            }),
            Some(i) => {
                let found = arrow.field(i).data_type();
                if compatible(col.data_type, found) {
                    projection.push(i);
                } else {
                    out.push(Violation {
                        row: None,
                        column: Some(col.name.clone()),
                        rule: "type".into(),
                        message: format!(
                            "column `{}` must be {} but the file has {found}",
                            col.name,
                            format!("{:?}", col.data_type).to_lowercase()
                        ),
                    });
                }
            }
        }
    }
    for f in arrow.fields() {
        if schema.column(f.name()).is_none() {
            out.push(Violation {
                row: None,
                column: Some(f.name().chars().take(64).collect()),
                rule: "unknown_column".into(),
                message: format!(
                    "the dataset has no column of this name; its columns are: {}",
                    schema
                        .columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    if out.count > 0 {
        return Err(out);
    }
    Ok(projection)
}
