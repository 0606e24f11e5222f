//! `GET /v1/extracts/efficiency`: the police efficiency dataset for one financial year, as
//! one file (CSV, Parquet, Excel or JSON) with a manifest of where every figure came from.
//! The rows are read through the same policy-enforced query path as any SQL, and the
//! extract is audited like a query.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int32Type};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use concordat_core::{ErrorKind, FinancialYear, Purpose, Role, Schemas};
use concordat_efficiency::rebuild::RECORD_LEVEL_INPUTS;
use concordat_efficiency::{DATASET, METRICS};
use concordat_policy::ForPurpose;
use concordat_query::QueryRequest;
use concordat_store::audit::DatasetVersion;
use concordat_store::recorded::Pending;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::{AppState, Authed};

/// Formats an extract can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractFormat {
    /// Comma-separated values; the manifest is in the `concordat-manifest` header.
    Csv,
    /// Parquet; the manifest is in the file's key-value metadata.
    Parquet,
    /// Excel: a data sheet and a notes sheet with the manifest and definitions.
    Xlsx,
    /// JSON: `{manifest, columns, rows}`.
    Json,
}

impl ExtractFormat {
    fn parse(s: &str) -> Option<ExtractFormat> {
        Some(match s {
            "csv" => ExtractFormat::Csv,
            "parquet" => ExtractFormat::Parquet,
            "xlsx" => ExtractFormat::Xlsx,
            "json" => ExtractFormat::Json,
            _ => return None,
        })
    }

    fn content_type(self) -> &'static str {
        match self {
            ExtractFormat::Csv => "text/csv",
            ExtractFormat::Parquet => "application/vnd.apache.parquet",
            ExtractFormat::Xlsx => {
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            }
            ExtractFormat::Json => "application/json",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            ExtractFormat::Csv => "csv",
            ExtractFormat::Parquet => "parquet",
            ExtractFormat::Xlsx => "xlsx",
            ExtractFormat::Json => "json",
        }
    }
}

/// What the request asks for, checked.
struct Asked {
    fy: FinancialYear,
    format: ExtractFormat,
    format_text: String,
    purpose: String,
}

fn asked(
    state: &AppState,
    caller: &Caller,
    params: &HashMap<String, String>,
) -> Result<Asked, ApiError> {
    if !caller.has_any(&[Role::Analyst, Role::Inspector]) {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            "forbidden",
            "extracts need the analyst or inspector role",
        ));
    }
    let fy_text = params.get("financial_year").ok_or_else(|| {
        ApiError::bad_request("financial_year is required, e.g. financial_year=2023-24")
    })?;
    let fy = FinancialYear::parse(fy_text).ok_or_else(|| {
        ApiError::bad_request("financial_year must be written YYYY-YY, e.g. 2023-24")
    })?;
    let format_text = params.get("format").map_or("csv", String::as_str);
    let format = ExtractFormat::parse(format_text)
        .ok_or_else(|| ApiError::bad_request("format must be csv, parquet, xlsx or json"))?;
    let today = state.today();
    let schema = Schemas::builtin()
        .get(DATASET)
        .ok_or_else(|| ApiError::internal("no schema for the efficiency dataset"))?;
    let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    let purpose = match params.get("purpose") {
        Some(p) => p.clone(),
        None => Purpose::KNOWN
            .iter()
            .find(|p| {
                Purpose::known(p).is_ok_and(|p| {
                    state
                        .policies
                        .effective_read(
                            &caller.partner,
                            &schema.name,
                            &columns,
                            ForPurpose::One(&p),
                            today,
                        )
                        .is_ok()
                })
            })
            .map(|p| (*p).to_owned())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Forbidden,
                    "forbidden",
                    "no agreement in force gives your organisation the efficiency dataset",
                )
            })?,
    };
    Ok(Asked {
        fy,
        format,
        format_text: format_text.to_owned(),
        purpose,
    })
}

/// The handler: the request is checked here, the rows come from the query service under
/// the extract's one audit event, which is closed once the file is built.
#[utoipa::path(get, path = "/v1/extracts/efficiency", tag = "extracts",
    params(("financial_year" = String, Query, description = "`YYYY-YY`"),
        ("format" = Option<String>, Query, description = "`csv` (default), `json`, `parquet` or `xlsx`"),
        ("purpose" = Option<String>, Query, description = "The purpose; defaults to the caller's one purpose for force_efficiency")),
    responses(
        (status = 200, description = "Every force's nine metrics with most similar group and national comparators, and a manifest", content(
            (crate::api::EfficiencyExtract = "application/json"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.parquet"),
            (Vec<u8> = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"))),
        (status = 400, description = "Bad financial year or format", body = crate::api::ErrorBody), (status = 401, description = "No or bad credential", body = crate::api::ErrorBody),
        (status = 403, description = "No agreement gives the caller the efficiency dataset", body = crate::api::ErrorBody)))]
pub async fn efficiency(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut ev = Pending::new(state.audit.clone(), &caller, "extract", "http");
    ev.event().datasets = vec![DatasetVersion {
        dataset: DATASET.into(),
        version: None,
    }];
    let asked = match asked(&state, &caller, &params) {
        Ok(a) => a,
        Err(e) => {
            ev.refused(e.kind(), e.code()).await?;
            return Err(e);
        }
    };
    let Asked {
        fy,
        format,
        format_text,
        purpose,
    } = asked;
    let sql = format!(
        "SELECT pfa_code, force_name, financial_year, metric, value, msg_value, national_value, diff_from_msg_pct, rank, quartile, unit, weighted_by, note \
         FROM {DATASET} WHERE financial_year = '{fy}' ORDER BY pfa_code, metric"
    );
    let req = QueryRequest {
        caller: &caller,
        purpose: &purpose,
        sql: &sql,
        door: "http",
        today: state.today(),
        params: &[],
        dialect: concordat_query::Dialect::Standard,
        fresh: false,
    };
    {
        let body = ev.event();
        body.purpose = Some(purpose.clone());
        body.sql = Some(sql.clone());
        body.detail = Some(json!({"financial_year": fy.to_string(), "format": format_text}));
    }
    let mut run = state.query.query_as(ev, req).await?;
    let version = run.datasets.first().and_then(|d| d.version);
    run.event().datasets = vec![DatasetVersion {
        dataset: DATASET.into(),
        version,
    }];
    let mut batches = Vec::new();
    let mut failed = None;
    while let Some(b) = run.batches.recv().await {
        match b {
            Ok(b) => batches.push(b),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let schema = run.schema.clone();
    let agreements = run.agreements.clone();
    let mut ev = run.close();
    if let Some(e) = failed {
        ev.refused(e.kind(), e.code()).await?;
        return Err(e.into());
    }
    let built = file(
        &state, &caller, &schema, &batches, version, agreements, fy, format, &purpose,
    )
    .await;
    match built {
        Ok((response, rows, bytes)) => {
            let body = ev.event();
            body.rows = Some(rows);
            body.bytes = Some(bytes);
            ev.ok(200).await?;
            state.metrics.extracts.inc();
            Ok(response)
        }
        Err(e) => {
            ev.refused(e.kind(), e.code()).await?;
            Err(e)
        }
    }
}

/// The extract file and its manifest.
#[allow(clippy::too_many_arguments)]
async fn file(
    state: &AppState,
    caller: &Caller,
    schema: &arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
    version: Option<u64>,
    agreements: Vec<String>,
    fy: FinancialYear,
    format: ExtractFormat,
    purpose: &str,
) -> Result<(Response, u64, u64), ApiError> {
    let batch = arrow::compute::concat_batches(schema, batches).map_err(ApiError::internal)?;
    if batch.num_rows() == 0 {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            "not_found",
            format!("the efficiency dataset has no figures for {fy} yet"),
        ));
    }
    let terms = state.derived_terms();
    let sources = match version {
        Some(v) => state
            .store
            .versions(DATASET)
            .await
            .map_err(ApiError::internal)?
            .into_iter()
            .find(|i| i.version == v)
            .map(|i| i.sources)
            .unwrap_or_default(),
        None => Default::default(),
    };
    let manifest = json!({
        "dataset": DATASET,
        "dataset_version": version,
        "financial_year": fy.to_string(),
        "generated_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "generated_for": caller.partner.id.to_string(),
        "purpose": purpose,
        "rows": batch.num_rows(),
        "sources": sources,
        "agreements": agreements,
        "disclosure": {
            "record_level_inputs": RECORD_LEVEL_INPUTS,
            "min_count": terms.min_count,
            "round_to": terms.round_to,
            "rule": format!(
                "figures drawn from record-level data need at least {} distinct persons behind them; otherwise the value is null and the note says why",
                terms.min_count
            ),
        },
        "comparators": "msg_value is the weighted mean of the force's most similar group peers, national_value of all forces with a value; missing figures are left out, never counted as zero; rank 1 is best, quartile 1 the best quarter",
        "metrics": METRICS.iter().map(|m| json!({
            "metric": m.name,
            "unit": m.unit,
            "better": if m.higher_is_better { "higher" } else { "lower" },
            "weighted_by": m.weighted_by,
            "definition": m.definition,
        })).collect::<Vec<_>>(),
    });
    let rows = batch.num_rows() as u64;
    let (body, extra_header) = match format {
        ExtractFormat::Csv => (csv(&batch)?, Some(manifest.to_string())),
        ExtractFormat::Parquet => (parquet(&batch, &manifest)?, None),
        ExtractFormat::Xlsx => (xlsx(&batch, &manifest)?, None),
        ExtractFormat::Json => (json_file(&batch, &manifest)?, None),
    };
    let bytes = body.len() as u64;
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, format.content_type())
        .header(
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"force_efficiency_{fy}.{}\"",
                format.extension()
            ),
        );
    if let Some(m) = extra_header {
        response = response.header("concordat-manifest", m);
    }
    let response = response
        .body(Body::from(body))
        .map_err(ApiError::internal)?;
    Ok((response, rows, bytes))
}

fn csv(batch: &RecordBatch) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut out);
        w.write(batch).map_err(ApiError::internal)?;
    }
    Ok(out)
}

fn parquet(batch: &RecordBatch, manifest: &Value) -> Result<Vec<u8>, ApiError> {
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
            "concordat.manifest".to_owned(),
            manifest.to_string(),
        )]))
        .build();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), Some(props))
        .map_err(ApiError::internal)?;
    w.write(batch).map_err(ApiError::internal)?;
    w.close().map_err(ApiError::internal)?;
    Ok(out)
}

/// Each cell as JSON: numbers stay numbers, nulls stay null.
fn cell(column: &dyn Array, row: usize) -> Value {
    if column.is_null(row) {
        return Value::Null;
    }
    match column.data_type() {
        DataType::Float64 => {
            json!(column.as_primitive::<Float64Type>().value(row))
        }
        DataType::Int32 => json!(column.as_primitive::<Int32Type>().value(row)),
        _ => match arrow::util::display::array_value_to_string(column, row) {
            Ok(s) => json!(s),
            Err(_) => Value::Null,
        },
    }
}

fn json_file(batch: &RecordBatch, manifest: &Value) -> Result<Vec<u8>, ApiError> {
    let columns: Vec<&String> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name())
        .collect();
    let rows: Vec<Value> = (0..batch.num_rows())
        .map(|r| {
            Value::Array(
                batch
                    .columns()
                    .iter()
                    .map(|c| cell(c.as_ref(), r))
                    .collect(),
            )
        })
        .collect();
    serde_json::to_vec(&json!({"manifest": manifest, "columns": columns, "rows": rows}))
        .map_err(ApiError::internal)
}

fn xlsx(batch: &RecordBatch, manifest: &Value) -> Result<Vec<u8>, ApiError> {
    use rust_xlsxwriter::{Format, Workbook};
    let e = ApiError::internal;
    let mut book = Workbook::new();
    let bold = Format::new().set_bold();
    let decimal = Format::new().set_num_format("#,##0.00");
    let whole = Format::new().set_num_format("0");
    let data = book.add_worksheet();
    data.set_name("data").map_err(e)?;
    let schema = batch.schema();
    for (c, f) in schema.fields().iter().enumerate() {
        data.write_string_with_format(0, c as u16, f.name(), &bold)
            .map_err(e)?;
    }
    for (c, column) in batch.columns().iter().enumerate() {
        let col = c as u16;
        for r in 0..batch.num_rows() {
            let row = r as u32 + 1;
            match cell(column.as_ref(), r) {
                Value::Null => {}
                Value::Number(n) => {
                    let v = n.as_f64().unwrap_or_default();
                    let fmt = if column.data_type() == &DataType::Int32 {
                        &whole
                    } else {
                        &decimal
                    };
                    data.write_number_with_format(row, col, v, fmt).map_err(e)?;
                }
                Value::String(s) => {
                    data.write_string(row, col, s).map_err(e)?;
                }
                other => {
                    data.write_string(row, col, other.to_string()).map_err(e)?;
                }
            }
        }
        data.set_column_width(col, if c == 1 { 28 } else { 16 })
            .map_err(e)?;
    }
    data.set_freeze_panes(1, 0).map_err(e)?;
    let notes = book.add_worksheet();
    notes.set_name("notes").map_err(e)?;
    notes.set_column_width(0, 28).map_err(e)?;
    notes.set_column_width(1, 100).map_err(e)?;
    let mut row = 0u32;
    notes
        .write_string_with_format(row, 0, "Manifest", &bold)
        .map_err(e)?;
    row += 1;
    if let Some(m) = manifest.as_object() {
        for (k, v) in m {
            if k == "metrics" {
                continue;
            }
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            notes.write_string(row, 0, k).map_err(e)?;
            notes.write_string(row, 1, text).map_err(e)?;
            row += 1;
        }
    }
    row += 1;
    for (c, h) in ["Metric", "Definition", "Unit", "Better", "Weighted by"]
        .iter()
        .enumerate()
    {
        notes
            .write_string_with_format(row, c as u16, *h, &bold)
            .map_err(e)?;
    }
    row += 1;
    for m in METRICS {
        notes.write_string(row, 0, m.name).map_err(e)?;
        notes.write_string(row, 1, m.definition).map_err(e)?;
        notes.write_string(row, 2, m.unit).map_err(e)?;
        notes
            .write_string(
                row,
                3,
                if m.higher_is_better {
                    "higher"
                } else {
                    "lower"
                },
            )
            .map_err(e)?;
        notes.write_string(row, 4, m.weighted_by).map_err(e)?;
        row += 1;
    }
    book.save_to_buffer().map_err(e)
}
