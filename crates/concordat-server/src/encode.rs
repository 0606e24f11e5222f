//! Query results in the format the caller's `Accept` asks for, encoded batch by batch so
//! a large answer starts arriving before the query ends and memory stays bounded.

use std::io::Write;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use serde_json::{Value, json};

/// An answer format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{columns, rows, row_count, truncated, disclosure}`.
    Json,
    /// One JSON object per line.
    NdJson,
    /// CSV with a header line.
    Csv,
    /// Arrow IPC stream.
    Arrow,
    /// A Parquet file.
    Parquet,
}

impl Format {
    /// The first supported type in an `Accept` header; JSON when absent or `*/*`.
    pub fn from_accept(accept: Option<&str>) -> Option<Format> {
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return Some(Format::Json);
        };
        accept
            .split(',')
            .find_map(|part| match part.split(';').next().unwrap_or("").trim() {
                "application/json" | "*/*" | "application/*" => Some(Format::Json),
                "application/x-ndjson" | "application/ndjson" => Some(Format::NdJson),
                "text/csv" => Some(Format::Csv),
                "application/vnd.apache.arrow.stream" => Some(Format::Arrow),
                "application/vnd.apache.parquet" => Some(Format::Parquet),
                _ => None,
            })
    }

    /// The response's media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::NdJson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// A `Write` whose bytes are taken out after each batch.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Shared {
    fn take(&self) -> Bytes {
        let mut v = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Bytes::from(std::mem::take(&mut *v))
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Kind {
    Json {
        columns: Vec<String>,
        wrote_row: bool,
    },
    NdJson,
    Csv {
        header: bool,
        schema: SchemaRef,
    },
    Arrow(Box<arrow::ipc::writer::StreamWriter<Shared>>),
    Parquet(Box<ArrowWriter<Shared>>),
}

/// Encodes one answer.
pub struct Encoder {
    kind: Kind,
    buf: Shared,
    max_rows: Option<usize>,
    /// Rows encoded so far.
    pub rows: u64,
    /// Whether rows were cut at the JSON limit.
    pub truncated: bool,
}

type EncodeResult<T> = Result<T, String>;

impl Encoder {
    /// An encoder and the bytes that open the answer.
    pub fn new(
        format: Format,
        schema: &SchemaRef,
        max_json_rows: usize,
    ) -> EncodeResult<(Encoder, Bytes)> {
        let buf = Shared::default();
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let (kind, prefix) = match format {
            Format::Json => {
                let columns: Vec<Value> = schema
                    .fields()
                    .iter()
                    .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
                    .collect();
                let head = format!("{{\"columns\":{},\"rows\":[", Value::Array(columns));
                (
                    Kind::Json {
                        columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
                        wrote_row: false,
                    },
                    Bytes::from(head),
                )
            }
            Format::NdJson => (Kind::NdJson, Bytes::new()),
            Format::Csv => (
                Kind::Csv {
                    header: true,
                    schema: schema.clone(),
                },
                Bytes::new(),
            ),
            Format::Arrow => {
                let w = arrow::ipc::writer::StreamWriter::try_new(buf.clone(), schema)
                    .map_err(|x| e(&x))?;
                (Kind::Arrow(Box::new(w)), buf.take())
            }
            Format::Parquet => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(64 * 1024))
                    .build();
                let w = ArrowWriter::try_new(buf.clone(), schema.clone(), Some(props))
                    .map_err(|x| e(&x))?;
                (Kind::Parquet(Box::new(w)), buf.take())
            }
        };
        let max_rows = (format == Format::Json).then_some(max_json_rows);
        Ok((
            Encoder {
                kind,
                buf,
                max_rows,
                rows: 0,
                truncated: false,
            },
            prefix,
        ))
    }

    /// Whether more rows are wanted (a JSON answer stops at its row limit).
    pub fn wants_more(&self) -> bool {
        !self.truncated
    }

    /// Encodes a batch; returns the bytes ready to send.
    pub fn batch(&mut self, batch: &RecordBatch) -> EncodeResult<Bytes> {
        let mut batch = batch.clone();
        if let Some(max) = self.max_rows {
            let room = max.saturating_sub(self.rows as usize);
            if batch.num_rows() > room {
                batch = batch.slice(0, room);
                self.truncated = true;
            }
        }
        self.rows += batch.num_rows() as u64;
        let e = |e: &dyn std::fmt::Display| e.to_string();
        match &mut self.kind {
            Kind::Json { columns, wrote_row } => {
                let mut w = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::JsonArray>(Vec::new());
                w.write(&batch).map_err(|x| e(&x))?;
                w.finish().map_err(|x| e(&x))?;
                let objects: Vec<serde_json::Map<String, Value>> =
                    serde_json::from_slice(&w.into_inner()).unwrap_or_default();
                let mut out = String::new();
                for obj in objects {
                    let row: Vec<Value> = columns
                        .iter()
                        .map(|c| obj.get(c).cloned().unwrap_or(Value::Null))
                        .collect();
                    if *wrote_row {
                        out.push(',');
                    }
                    out.push_str(&Value::Array(row).to_string());
                    *wrote_row = true;
                }
                Ok(Bytes::from(out))
            }
            Kind::NdJson => {
                let mut w = arrow::json::LineDelimitedWriter::new(self.buf.clone());
                w.write(&batch).map_err(|x| e(&x))?;
                w.finish().map_err(|x| e(&x))?;
                Ok(self.buf.take())
            }
            Kind::Csv { header, .. } => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(*header)
                    .build(self.buf.clone());
                w.write(&batch).map_err(|x| e(&x))?;
                *header = false;
                Ok(self.buf.take())
            }
            Kind::Arrow(w) => {
                w.write(&batch).map_err(|x| e(&x))?;
                Ok(self.buf.take())
            }
            Kind::Parquet(w) => {
                w.write(&batch).map_err(|x| e(&x))?;
                Ok(self.buf.take())
            }
        }
    }

    /// Closes the answer: the JSON tail with counts and the disclosure record, the Arrow
    /// end-of-stream marker, the Parquet footer.
    pub fn finish(self, disclosure: &Value) -> EncodeResult<Bytes> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        match self.kind {
            Kind::Json { .. } => Ok(Bytes::from(format!(
                "],\"row_count\":{},\"truncated\":{},\"disclosure\":{}}}",
                self.rows, self.truncated, disclosure
            ))),
            Kind::NdJson => Ok(Bytes::new()),
            Kind::Csv { header, schema } => {
                // An empty answer still names its columns.
                if header {
                    let mut w = arrow::csv::WriterBuilder::new()
                        .with_header(true)
                        .build(self.buf.clone());
                    w.write(&RecordBatch::new_empty(schema))
                        .map_err(|x| e(&x))?;
                }
                Ok(self.buf.take())
            }
            Kind::Arrow(mut w) => {
                w.finish().map_err(|x| e(&x))?;
                Ok(self.buf.take())
            }
            Kind::Parquet(w) => {
                w.close().map_err(|x| e(&x))?;
                Ok(self.buf.take())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_picks_the_first_supported_type() {
        assert_eq!(Format::from_accept(None), Some(Format::Json));
        assert_eq!(Format::from_accept(Some("text/csv")), Some(Format::Csv));
        assert_eq!(
            Format::from_accept(Some("image/png, application/vnd.apache.arrow.stream;q=0.9")),
            Some(Format::Arrow)
        );
        assert_eq!(Format::from_accept(Some("*/*")), Some(Format::Json));
        assert_eq!(Format::from_accept(Some("image/png")), None);
    }
}
