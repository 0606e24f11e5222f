//! `POST /v1/query`: the HTTP door of the query service. The body and the `Accept`
//! header are read here; the query service checks, plans, runs and opens the audit event;
//! the answer is encoded in the format asked for, streamed, and its event closed before
//! the last chunk goes (durable before the answer completes).

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use concordat_core::ErrorKind;
use concordat_query::{QueryError, QueryRequest};
use serde::Deserialize;
use serde_json::json;

use crate::encode::{Encoder, Format};
use crate::error::ApiError;
use crate::state::{AppState, Authed};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    sql: String,
    purpose: String,
}

/// The handler.
#[utoipa::path(post, path = "/v1/query", tag = "query",
    params(("Cache-Control" = Option<String>, Header, description = "`no-cache`: compute afresh rather than reuse an identical answer kept over the same table versions")),
    request_body(content = crate::api::QueryBody),
    responses(
        (status = 200, description = "The answer, in the format `Accept` asks for", content(
            (crate::api::QueryAnswer = "application/json"),
            (String = "application/x-ndjson"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.arrow.stream"),
            (Vec<u8> = "application/vnd.apache.parquet"))),
        (status = 400, description = "Bad body or SQL, or a statement that is not a read", body = crate::api::ErrorBody), (status = 401, description = "No or bad credential", body = crate::api::ErrorBody),
        (status = 403, description = "Refused by the agreements (the message names the agreement or rule)", body = crate::api::ErrorBody),
        (status = 404, description = "A table the caller may not see", body = crate::api::ErrorBody),
        (status = 406, description = "An `Accept` the gateway does not answer", body = crate::api::ErrorBody),
        (status = 413, description = "SQL too long", body = crate::api::ErrorBody),
        (status = 429, description = "Too many queries at once", body = crate::api::ErrorBody)))]
pub async fn query(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let limit = state.query.limits().max_sql_bytes + 4096;
    let parsed: Result<QueryBody, QueryError> = if body.len() > limit {
        Err(QueryError::door(
            ErrorKind::TooLarge,
            "too_large",
            format!("the request body is larger than {limit} bytes"),
        ))
    } else {
        serde_json::from_slice(&body).map_err(|_| {
            QueryError::door(
                ErrorKind::InvalidInput,
                "bad_request",
                "the body must be JSON: {\"sql\": \"...\", \"purpose\": \"...\"}",
            )
        })
    };
    let (parsed, failed) = match parsed {
        Ok(b) => (b, None),
        Err(e) => (
            QueryBody {
                sql: String::new(),
                purpose: String::new(),
            },
            Some(e),
        ),
    };
    let (sql, purpose) = (parsed.sql.as_str(), parsed.purpose.as_str());
    let req = QueryRequest {
        caller: &caller,
        purpose,
        sql,
        door: "http",
        today: state.today(),
        params: &[],
        dialect: concordat_query::Dialect::Standard,
        // `Cache-Control: no-cache`: compute afresh rather than reuse a kept answer.
        fresh: headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| {
                matches!(
                    d.trim().to_ascii_lowercase().as_str(),
                    "no-cache" | "no-store"
                )
            }),
    };
    let refused = |e: QueryError| {
        state.metrics.queries_refused.inc();
        ApiError::from(e)
    };
    if let Some(e) = failed {
        let mut ev = state.query.open_event(&req, "query");
        let body = ev.event();
        (body.sql, body.sql_sha256, body.purpose) = (None, None, None);
        return Err(refused(state.query.refuse_at_door(ev, e).await));
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let Some(format) = Format::from_accept(accept) else {
        let e = QueryError::door(
            ErrorKind::NotAcceptable,
            "not_acceptable",
            "answers come as application/json, application/x-ndjson, text/csv, application/vnd.apache.arrow.stream or application/vnd.apache.parquet",
        );
        let ev = state.query.open_event(&req, "query");
        return Err(refused(state.query.refuse_at_door(ev, e).await));
    };
    let mut run = state.query.query(req).await.map_err(refused)?;
    state.metrics.phase("http", "planning", run.planning);
    state.metrics.plan_used(&run);
    let executing = Instant::now();
    // The first batch decides the status: an error before any row is a proper error response.
    let first = match run.batches.recv().await {
        Some(Err(e)) => {
            let ev = run.close();
            return Err(refused(state.query.refuse_at_door(ev, e).await));
        }
        other => other,
    };
    let (mut encoder, prefix) =
        match Encoder::new(format, &run.schema, state.config.query.max_json_rows) {
            Ok(x) => x,
            Err(e) => {
                let ev = run.close();
                let e = QueryError::Internal(e.to_string());
                return Err(state.query.refuse_at_door(ev, e).await.into());
            }
        };
    let disclosure = match &run.disclosure {
        Some(d) => serde_json::to_value(d).map_err(ApiError::internal)?,
        None => {
            json!({"access": "record", "agreements": run.agreements, "suppressed_cells": 0, "rounding": null})
        }
    };
    let disclosure_header = run.disclosure.as_ref().map(|d| {
        format!(
            "suppressed_cells={}; min_count={}; round_to={}; agreements={}",
            d.suppressed_cells,
            d.min_count,
            d.round_to,
            d.agreements.join(",")
        )
    });
    let audit_disclosure = run.disclosure.is_some().then(|| disclosure.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let task_state = state.clone();
    tokio::spawn(async move {
        let m = &task_state.metrics;
        let mut encoding = std::time::Duration::ZERO;
        let mut bytes = prefix.len() as u64;
        let mut sent_ok = tx.send(Ok(prefix)).await.is_ok();
        let mut failure: Option<QueryError> = None;
        let mut next = first;
        while sent_ok {
            let Some(item) = next.take() else { break };
            match item {
                Ok(batch) => {
                    let t = Instant::now();
                    let chunk = encoder.batch(&batch);
                    encoding += t.elapsed();
                    match chunk {
                        Ok(chunk) => {
                            bytes += chunk.len() as u64;
                            sent_ok = tx.send(Ok(chunk)).await.is_ok();
                        }
                        Err(e) => failure = Some(QueryError::Internal(e.to_string())),
                    }
                }
                Err(e) => failure = Some(e),
            }
            if failure.is_some() || !encoder.wants_more() {
                break;
            }
            next = run.batches.recv().await;
        }
        m.phase(
            "http",
            "execution",
            executing.elapsed().saturating_sub(encoding),
        );
        m.phase("http", "encoding", encoding);
        let rows_sent = encoder.rows;
        let truncated = encoder.truncated;
        let tail = if failure.is_none() && sent_ok {
            encoder.finish(&disclosure).ok()
        } else {
            None
        };
        if let Some(t) = &tail {
            bytes += t.len() as u64;
        }
        {
            let ev = run.event();
            ev.rows = Some(rows_sent);
            ev.bytes = Some(bytes);
            ev.detail = Some(json!({
                "format": format!("{format:?}").to_lowercase(),
                "truncated": truncated,
                "disclosure": audit_disclosure,
            }));
        }
        // Dropping the receiver cancels the query if it is still running.
        let ev = run.close();
        let auditing = Instant::now();
        let recorded = match (&failure, sent_ok) {
            (Some(err), _) => {
                m.queries_refused.inc();
                ev.refused(err.kind(), err.code()).await
            }
            (None, false) => ev.cancelled(200).await,
            (None, true) => {
                m.queries_ok.inc();
                m.query_rows.inc_by(rows_sent);
                ev.ok(200).await
            }
        };
        m.phase("http", "audit", auditing.elapsed());
        // Durable before the answer completes: the last chunk goes only after the event.
        match (recorded, failure, tail) {
            (Ok(()), None, Some(tail)) => {
                let _ = tx.send(Ok(tail)).await;
            }
            (_, Some(err), _) => {
                let _ = tx.send(Err(std::io::Error::other(err.code()))).await;
            }
            _ => {
                let _ = tx.send(Err(std::io::Error::other("audit"))).await;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, format.content_type());
    if let Some(h) = disclosure_header {
        response = response.header("concordat-disclosure", h);
    }
    response
        .body(Body::from_stream(stream))
        .map_err(ApiError::internal)
}
