//! Handlers: extract, call one service, encode.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use concordat_core::schema::DatasetLevel;
use concordat_core::{DatasetSchema, Role, Schemas};
use concordat_policy::{Access, ColumnRule, CombinedView, ReadGrant, RefusalReason, ScopeFilter};
use concordat_store::{Mode, StoreError, UploadRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audited;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use concordat_store::audit::DatasetVersion;

type AppResult<T> = Result<T, ApiError>;

/// `GET /healthz`: the process answers.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the data directory is writable and the policies are loaded.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let probe = state.config.data_dir.join("staging").join(".ready");
    match std::fs::write(&probe, b"ok").and_then(|()| std::fs::remove_file(&probe)) {
        Ok(()) => Json(json!({"status": "ready", "agreements": state.policies.agreements().len()}))
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "data directory not writable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable"})),
            )
                .into_response()
        }
    }
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /v1/me`: who the caller is and which agreements are in force for them.
pub async fn me(State(state): State<Arc<AppState>>, caller: Caller) -> Json<Value> {
    let p = &caller.partner;
    let force = p
        .pfa_code
        .as_ref()
        .and_then(|c| concordat_core::Reference::builtin().force(c.as_str()));
    let agreements: Vec<Value> = state
        .policies
        .in_force_for(p, state.today())
        .into_iter()
        .map(|a| {
            let provides = a.providers.contains(&p.id, p.kind);
            let receives = a.recipients.contains(&p.id, p.kind);
            json!({
                "id": a.id, "title": a.title, "purposes": a.purposes, "lawful_basis": a.lawful_basis,
                "valid_from": a.valid_from, "valid_until": a.valid_until,
                "upload": if provides { a.upload.keys().cloned().collect::<Vec<_>>() } else { vec![] },
                "read": if receives { a.read.iter().map(|(d, r)| json!({"dataset": d, "access": r.access, "scope": r.scope})).collect::<Vec<_>>() } else { vec![] },
            })
        })
        .collect();
    Json(json!({
        "subject": caller.subject,
        "partner": p.id,
        "name": p.name,
        "kind": p.kind,
        "force_area": force.map(|f| json!({"pfa_code": f.pfa_code, "force_name": f.force_name, "region": f.region})),
        "probation_region": p.probation_region(),
        "roles": caller.roles,
        "agreements": agreements,
    }))
}

/// What a caller may do with a dataset today.
struct View<'a> {
    /// Best read access over the agreements, if any.
    access: Option<Access>,
    can_upload: bool,
    purposes: BTreeSet<String>,
    /// Columns visible under at least one agreement, with the rule that applies.
    columns: Vec<(&'a concordat_core::ColumnSchema, Option<ColumnRule>)>,
    agreements: Vec<Value>,
}

fn view<'a>(state: &AppState, caller: &Caller, schema: &'a DatasetSchema) -> Option<View<'a>> {
    let today = state.today();
    let name = schema.name.as_str();
    let terms = state.policies.read_terms(&caller.partner, name, today);
    let can_upload = state
        .policies
        .upload_grant(&caller.partner, name, today)
        .is_ok();
    if terms.is_empty() && !can_upload {
        return None;
    }
    let access = terms
        .iter()
        .map(|(_, r)| r.access)
        .min_by_key(|a| matches!(a, Access::Aggregate));
    let purposes = terms
        .iter()
        .flat_map(|(a, _)| a.purposes.iter().cloned())
        .collect();
    // The same combination the query service applies: rows of any grant, the strictest
    // column rule of any grant.
    let grants: Vec<ReadGrant> = terms
        .iter()
        .map(|(a, r)| ReadGrant {
            agreement: a.id.clone(),
            terms: (*r).clone(),
            filter: ScopeFilter::resolve(r.scope, &caller.partner),
        })
        .collect();
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    let combined = CombinedView::of(&grants.iter().collect::<Vec<_>>(), &names);
    let columns = schema
        .columns
        .iter()
        .zip(names.iter())
        .filter_map(|(c, name)| {
            let rule = combined.as_ref().and_then(|v| {
                v.rules
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, r)| r.clone())
            });
            match rule {
                Some(ColumnRule::Hidden) => None,
                other => Some((c, other)),
            }
        })
        .collect();
    let agreements = terms
        .iter()
        .map(|(a, r)| {
            let mut v = json!({"id": a.id, "access": r.access, "scope": r.scope, "purposes": a.purposes, "valid_until": a.valid_until});
            if r.access == Access::Aggregate {
                v["min_count"] = r.min_count.into();
                v["round_to"] = r.round_to.into();
            }
            v
        })
        .collect();
    Some(View {
        access,
        can_upload,
        purposes,
        columns,
        agreements,
    })
}

fn column_json(
    c: &concordat_core::ColumnSchema,
    rule: &Option<ColumnRule>,
    access: Option<Access>,
) -> Value {
    let mut v = json!({"name": c.name, "type": c.data_type, "nullable": c.nullable, "description": c.description});
    if let Some(allowed) = &c.allowed {
        v["enum"] = json!(allowed);
    }
    if c.pseudonym && access == Some(Access::Aggregate) {
        v["join_only"] = true.into();
    }
    if let Some(ColumnRule::Generalised(g)) = rule {
        v["generalised"] = json!(g);
    }
    v
}

/// `GET /v1/datasets`: datasets the caller may see, with columns, access and latest version.
pub async fn datasets(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> AppResult<Json<Value>> {
    let mut out = Vec::new();
    for schema in Schemas::builtin().iter() {
        let Some(v) = view(&state, &caller, schema) else {
            continue;
        };
        let latest = latest_version(&state, schema).await?;
        out.push(json!({
            "name": schema.name, "title": schema.title, "level": schema.level,
            "access": v.access, "can_upload": v.can_upload, "purposes": v.purposes,
            "columns": v.columns.iter().map(|(c, _)| c.name.as_str()).collect::<Vec<_>>(),
            "latest_version": latest,
        }));
    }
    Ok(Json(json!({ "datasets": out })))
}

async fn latest_version(state: &AppState, schema: &DatasetSchema) -> AppResult<Option<u64>> {
    if schema.level == DatasetLevel::Reference {
        return Ok(None);
    }
    Ok(state.store.latest_version(schema.name.as_str()).await?)
}

/// The `{name}` of a dataset route. A path that is not UTF-8 text gets the JSON error
/// every other bad request gets, not the framework's plain text.
pub struct NameInPath(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for NameInPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(name)| NameInPath(name))
            .map_err(|_| {
                ApiError::bad_request(
                    "the dataset name in the path must be UTF-8 text naming a dataset",
                )
            })
    }
}

/// `GET /v1/datasets/{name}`: the schema as the caller sees it, and its versions.
pub async fn dataset(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    NameInPath(name): NameInPath,
) -> AppResult<Json<Value>> {
    let schema = Schemas::builtin()
        .get(&name)
        .ok_or_else(|| ApiError::unknown_dataset(&name))?;
    let v = view(&state, &caller, schema).ok_or_else(|| ApiError::unknown_dataset(&name))?;
    let versions: Vec<Value> = if schema.level == DatasetLevel::Reference {
        Vec::new()
    } else {
        state
            .store
            .versions(&name)
            .await?
            .into_iter()
            .map(|ver| {
                let own = ver.partner.as_deref() == Some(caller.partner.id.as_str());
                json!({
                    "version": ver.version, "committed_at": ver.committed_at, "operation": ver.operation,
                    "partner": ver.partner, "subject": if own { ver.subject } else { None },
                    "mode": ver.mode, "rows": ver.rows, "periods": ver.periods, "sha256": ver.sha256,
                    "agreements": ver.agreements,
                    "sources": if ver.sources.is_empty() { None } else { Some(ver.sources) },
                })
            })
            .collect()
    };
    Ok(Json(json!({
        "name": schema.name, "title": schema.title, "description": schema.description, "level": schema.level,
        "period_column": schema.period_column, "access": v.access, "can_upload": v.can_upload, "purposes": v.purposes,
        "agreements": v.agreements,
        "columns": v.columns.iter().map(|(c, r)| column_json(c, r, v.access)).collect::<Vec<_>>(),
        "versions": versions,
        "shipped": schema.level == DatasetLevel::Reference,
    })))
}

/// Query of an upload.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    mode: Option<String>,
}

/// `POST /v1/datasets/{name}/uploads`: a Parquet body, validated and committed
/// atomically; every outcome is audited.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    NameInPath(name): NameInPath,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Response> {
    let started = std::time::Instant::now();
    let mut ev = audited::event(&caller, "upload");
    ev.datasets = vec![DatasetVersion {
        dataset: name.chars().take(64).collect(),
        version: None,
    }];
    match upload_inner(&state, &caller, &name, q, headers, body).await {
        Ok(Accepted {
            response,
            out,
            mode,
            bytes,
            agreements,
        }) => {
            ev.agreements = agreements;
            ev.outcome = "ok".into();
            ev.status = response.status().as_u16();
            ev.datasets = vec![DatasetVersion {
                dataset: out.dataset.clone(),
                version: Some(out.version),
            }];
            ev.rows = Some(out.rows);
            ev.bytes = Some(bytes);
            ev.detail = Some(
                json!({"mode": mode.as_str(), "sha256": out.sha256, "duplicate": out.duplicate, "periods": out.periods}),
            );
            audited::record(&state, ev, started).await?;
            Ok(response)
        }
        Err(e) => Err(audited::refused(&state, ev, started, e).await),
    }
}

/// An upload that committed (or was a duplicate), with what its audit event records.
struct Accepted {
    response: Response,
    out: concordat_store::UploadOutcome,
    mode: Mode,
    bytes: u64,
    /// Agreements that granted the upload.
    agreements: Vec<String>,
}

async fn upload_inner(
    state: &Arc<AppState>,
    caller: &Caller,
    name: &str,
    q: UploadQuery,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Accepted> {
    let name = name.to_owned();
    let schema = Schemas::builtin()
        .get(&name)
        .ok_or_else(|| ApiError::unknown_dataset(&name))?;
    let today = state.today();
    let grant = match state.policies.upload_grant(&caller.partner, &name, today) {
        Ok(g) => g,
        Err(reason) if view(state, caller, schema).is_none() => {
            tracing::debug!(%reason, "upload to invisible dataset");
            return Err(ApiError::unknown_dataset(&name));
        }
        Err(RefusalReason::NoAgreement) => {
            return Err(ApiError::forbidden(format!(
                "no agreement lets {} upload {name}",
                caller.partner.id
            )));
        }
        Err(reason) => return Err(ApiError::forbidden(reason.to_string())),
    };
    if !caller.has_any(&[Role::Uploader]) {
        return Err(ApiError::forbidden("uploads need the uploader role"));
    }
    let mode: Mode = q
        .mode
        .as_deref()
        .unwrap_or("append")
        .parse()
        .map_err(ApiError::bad_request)?;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = media.split(';').next().unwrap_or("").trim();
    if !matches!(
        media,
        "application/vnd.apache.parquet" | "application/x-parquet" | "application/octet-stream"
    ) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be a Parquet file sent as application/vnd.apache.parquet",
        ));
    }
    let limit = state.config.limits.max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(StoreError::TooLarge { limit }.into());
    }
    let file = state.store.stage(body.into_data_stream()).await?;
    let bytes = file.bytes;
    state
        .metrics
        .upload_bytes
        .fetch_add(bytes, Ordering::Relaxed);
    let result = state
        .store
        .upload(UploadRequest {
            schema,
            mode,
            partner: caller.partner.id.to_string(),
            subject: caller.subject.clone(),
            agreements: grant.agreements.clone(),
            scope: grant.filter,
            file,
        })
        .await;
    match result {
        Ok(out) if out.duplicate => {
            state
                .metrics
                .uploads_duplicate
                .fetch_add(1, Ordering::Relaxed);
            Ok(Accepted {
                response: (StatusCode::OK, Json(json!(out))).into_response(),
                out,
                mode,
                bytes,
                agreements: grant.agreements,
            })
        }
        Ok(out) => {
            state
                .metrics
                .uploads_committed
                .fetch_add(1, Ordering::Relaxed);
            state
                .metrics
                .rows_committed
                .fetch_add(out.rows, Ordering::Relaxed);
            tracing::info!(dataset = %out.dataset, version = out.version, rows = out.rows, partner = %caller.partner.id, "upload committed");
            state.after_commit(&out.dataset);
            let mut body = json!(out);
            if let Some(o) = body.as_object_mut() {
                o.remove("duplicate");
            }
            Ok(Accepted {
                response: (StatusCode::CREATED, Json(body)).into_response(),
                out,
                mode,
                bytes,
                agreements: grant.agreements,
            })
        }
        Err(e) => {
            if matches!(e, StoreError::Validation(_)) {
                state
                    .metrics
                    .uploads_rejected
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e.into())
        }
    }
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /v1/audit`: events the caller's audit agreements show, oldest first, paged by
/// sequence number (`after`, `limit` up to 1000).
pub async fn audit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> AppResult<Json<Value>> {
    let started = std::time::Instant::now();
    let mut ev = audited::event(&caller, "audit_read");
    ev.purpose = Some("audit".into());
    if !caller.has_any(&[Role::Auditor, Role::Admin]) {
        return Err(audited::refused(
            &state,
            ev,
            started,
            ApiError::forbidden("the audit trail needs the auditor or admin role"),
        )
        .await);
    }
    let view = match state
        .policies
        .audit_view(&caller.partner, "audit", state.today())
    {
        Ok(v) => v,
        Err(RefusalReason::NoAgreement) => {
            let err = ApiError::forbidden(format!(
                "no agreement lets {} read the audit trail",
                caller.partner.id
            ));
            return Err(audited::refused(&state, ev, started, err).await);
        }
        Err(reason) => {
            return Err(audited::refused(
                &state,
                ev,
                started,
                ApiError::forbidden(reason.to_string()),
            )
            .await);
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let log = state.audit.clone();
    let after = q.after.unwrap_or(0);
    let events = tokio::task::spawn_blocking(move || {
        log.read(after, limit, &|e| view.allows(e.body.partner.as_deref()))
    })
    .await
    .map_err(ApiError::internal)??;
    let next = events.last().map(|e| e.seq);
    ev.outcome = "ok".into();
    ev.status = 200;
    ev.rows = Some(events.len() as u64);
    audited::record(&state, ev, started).await?;
    Ok(Json(json!({"events": events, "next_after": next})))
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
