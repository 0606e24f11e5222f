//! `POST /v1/query`: policy-enforced SQL, answered in the format `Accept` asks for,
//! streamed, and audited before the answer completes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use concordat_core::Role;
use concordat_store::audit::DatasetVersion;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audited;
use crate::auth::Caller;
use crate::encode::{Encoder, Format};
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    sql: String,
    purpose: String,
}

/// The handler.
pub async fn query(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let mut ev = audited::event(&caller, "query");
    if !caller.has_any(&[Role::Analyst, Role::Inspector]) {
        return Err(audited::refused(
            &state,
            ev,
            started,
            ApiError::forbidden("queries need the analyst or inspector role"),
        )
        .await);
    }
    let limit = state.config.query.max_sql_bytes + 4096;
    if body.len() > limit {
        let err = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is larger than {limit} bytes"),
        );
        return Err(audited::refused(&state, ev, started, err).await);
    }
    let req: QueryBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            let err = ApiError::bad_request(
                "the body must be JSON: {\"sql\": \"...\", \"purpose\": \"...\"}",
            );
            return Err(audited::refused(&state, ev, started, err).await);
        }
    };
    ev.sql_sha256 = Some(hex::encode(Sha256::digest(req.sql.as_bytes())));
    ev.sql = Some(req.sql.clone());
    ev.purpose = Some(req.purpose.clone());
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let Some(format) = Format::from_accept(accept) else {
        let err = ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "answers come as application/json, application/x-ndjson, text/csv, application/vnd.apache.arrow.stream or application/vnd.apache.parquet",
        );
        return Err(audited::refused(&state, ev, started, err).await);
    };
    let mut run = match state
        .query
        .query(&caller.partner, &req.sql, &req.purpose, state.today())
        .await
    {
        Ok(run) => run,
        Err(e) => return Err(audited::refused(&state, ev, started, e.into()).await),
    };
    ev.datasets = run
        .datasets
        .iter()
        .map(|d| DatasetVersion {
            dataset: d.dataset.clone(),
            version: d.version,
        })
        .collect();
    ev.agreements = run.agreements.clone();
    // The first batch decides the status: an error before any row is a proper error response.
    let first = match run.batches.recv().await {
        Some(Err(e)) => return Err(audited::refused(&state, ev, started, e.into()).await),
        other => other,
    };
    let (mut encoder, prefix) =
        match Encoder::new(format, &run.schema, state.config.query.max_json_rows) {
            Ok(x) => x,
            Err(e) => {
                return Err(audited::refused(&state, ev, started, ApiError::internal(e)).await);
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
        let mut bytes = prefix.len() as u64;
        let mut sent_ok = tx.send(Ok(prefix)).await.is_ok();
        let mut failure: Option<ApiError> = None;
        let mut next = first;
        while sent_ok {
            let Some(item) = next.take() else { break };
            match item {
                Ok(batch) => match encoder.batch(&batch) {
                    Ok(chunk) => {
                        bytes += chunk.len() as u64;
                        sent_ok = tx.send(Ok(chunk)).await.is_ok();
                    }
                    Err(e) => failure = Some(ApiError::internal(e)),
                },
                Err(e) => failure = Some(e.into()),
            }
            if failure.is_some() || !encoder.wants_more() {
                break;
            }
            next = run.batches.recv().await;
        }
        // Dropping the receiver cancels the query if it is still running.
        drop(run);
        let rows_sent = encoder.rows;
        ev.rows = Some(rows_sent);
        let truncated = encoder.truncated;
        let tail = if failure.is_none() && sent_ok {
            encoder.finish(&disclosure).ok()
        } else {
            None
        };
        if let Some(t) = &tail {
            bytes += t.len() as u64;
        }
        ev.bytes = Some(bytes);
        ev.detail = Some(json!({
            "format": format!("{format:?}").to_lowercase(),
            "truncated": truncated,
            "disclosure": audit_disclosure,
        }));
        match (&failure, sent_ok) {
            (Some(err), _) => {
                ev.outcome = "failed".into();
                task_state
                    .metrics
                    .queries_refused
                    .fetch_add(1, Ordering::Relaxed);
                ev.status = err.status().as_u16();
                ev.code = Some(err.code().to_owned());
            }
            (None, false) => {
                ev.outcome = "cancelled".into();
                ev.status = 200;
            }
            (None, true) => {
                ev.outcome = "ok".into();
                task_state
                    .metrics
                    .queries_ok
                    .fetch_add(1, Ordering::Relaxed);
                task_state
                    .metrics
                    .query_rows
                    .fetch_add(rows_sent, Ordering::Relaxed);
                ev.status = 200;
            }
        }
        // Durable before the answer completes: the last chunk goes only after the event.
        let recorded = audited::record(&task_state, ev, started).await;
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
