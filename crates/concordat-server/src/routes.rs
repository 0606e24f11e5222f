//! Handlers: extract, call one service, encode.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use concordat_core::schema::DatasetLevel;
use concordat_core::{DatasetSchema, Schemas};
use concordat_policy::{Access, ColumnRule, EffectiveRead, ForPurpose};
use concordat_store::{StoreError, UploadCall};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::{AppState, Authed};

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
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /v1/me`: who the caller is and which agreements are in force for them.
pub async fn me(State(state): State<Arc<AppState>>, Authed(caller): Authed) -> Json<Value> {
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

/// What a caller may do with a dataset today, for any purpose: the one decision of
/// `concordat-policy`, as the catalogue shows it.
struct View<'a> {
    /// The read decision, if any agreement in force grants a read.
    read: Option<EffectiveRead>,
    can_upload: bool,
    purposes: Vec<String>,
    /// Columns the read shows, with the rule that applies.
    columns: Vec<(&'a concordat_core::ColumnSchema, Option<ColumnRule>)>,
    agreements: Vec<Value>,
}

impl View<'_> {
    fn access(&self) -> Option<Access> {
        self.read.as_ref().map(|r| r.access)
    }
}

fn view<'a>(state: &AppState, caller: &Caller, schema: &'a DatasetSchema) -> Option<View<'a>> {
    let today = state.today();
    let name = &schema.name;
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    let read = state
        .policies
        .effective_read(&caller.partner, name, &names, ForPurpose::Any, today)
        .ok();
    let can_upload = state
        .policies
        .upload_grant(&caller.partner, name, today)
        .is_ok();
    if read.is_none() && !can_upload {
        return None;
    }
    let columns = match &read {
        Some(r) => schema
            .columns
            .iter()
            .filter_map(|c| match r.column_rule(&c.name) {
                Some(ColumnRule::Hidden) => None,
                other => Some((c, other.cloned())),
            })
            .collect(),
        None => schema.columns.iter().map(|c| (c, None)).collect(),
    };
    let purposes = read
        .as_ref()
        .map(|r| {
            r.purposes(&state.policies)
                .into_iter()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let agreements = read
        .iter()
        .flat_map(|r| r.grants.iter())
        .filter_map(|g| {
            let a = state
                .policies
                .agreements()
                .iter()
                .find(|a| a.id == g.agreement)?;
            let r = &g.terms;
            let mut v = json!({"id": a.id, "access": r.access, "scope": r.scope, "purposes": a.purposes, "valid_until": a.valid_until});
            if r.access == Access::Aggregate {
                v["min_count"] = r.min_count.into();
                v["round_to"] = r.round_to.into();
            }
            Some(v)
        })
        .collect();
    Some(View {
        read,
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
    Authed(caller): Authed,
) -> AppResult<Json<Value>> {
    let mut out = Vec::new();
    for schema in Schemas::builtin().iter() {
        let Some(v) = view(&state, &caller, schema) else {
            continue;
        };
        let latest = latest_version(&state, schema).await?;
        let mut entry = json!({
            "name": schema.name, "title": schema.title, "level": schema.level,
            "access": v.access(), "can_upload": v.can_upload, "purposes": v.purposes,
            "columns": v.columns.iter().map(|(c, _)| c.name.as_str()).collect::<Vec<_>>(),
            "latest_version": latest,
        });
        if let Some(t) = v.read.as_ref().and_then(|r| r.terms) {
            entry["disclosure"] = json!(t);
        }
        out.push(entry);
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
    Authed(caller): Authed,
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
        "period_column": schema.period_column, "access": v.access(), "can_upload": v.can_upload, "purposes": v.purposes,
        "agreements": v.agreements,
        "columns": v.columns.iter().map(|(c, r)| column_json(c, r, v.access())).collect::<Vec<_>>(),
        "disclosure": v.read.as_ref().and_then(|r| r.terms),
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
/// atomically by the upload service, which audits every outcome.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    NameInPath(name): NameInPath,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Response> {
    let text = |h| {
        headers
            .get(h)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    let call = UploadCall {
        caller: &caller,
        dataset: &name,
        mode: q.mode.as_deref(),
        media_type: Some(text(header::CONTENT_TYPE).unwrap_or("")),
        declared_bytes: text(header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
        body: body.into_data_stream(),
        door: "http",
    };
    let m = &state.metrics;
    match state.uploads.upload(call, state.today()).await {
        Ok(done) => {
            let out = done.outcome;
            m.upload_bytes.inc_by(done.bytes);
            if out.duplicate {
                m.uploads_duplicate.inc();
                return Ok((StatusCode::OK, Json(json!(out))).into_response());
            }
            m.uploads_committed.inc();
            m.rows_committed.inc_by(out.rows);
            tracing::info!(dataset = %out.dataset, version = out.version, rows = out.rows, partner = %caller.partner.id, "upload committed");
            state.after_commit(&out.dataset);
            let mut body = json!(out);
            if let Some(o) = body.as_object_mut() {
                o.remove("duplicate");
            }
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        Err(e) => {
            if matches!(e, StoreError::Validation(_)) {
                m.uploads_rejected.inc();
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
    Authed(caller): Authed,
    Query(q): Query<AuditQuery>,
) -> AppResult<Json<Value>> {
    let events = state
        .trail
        .read(
            &caller,
            q.after.unwrap_or(0),
            q.limit.unwrap_or(100),
            state.today(),
            "http",
        )
        .await?;
    let next = events.last().map(|e| e.seq);
    Ok(Json(json!({"events": events, "next_after": next})))
}

/// `POST /v1/tokens`: a personal access token for the caller's own partner, within the
/// caller's roles (and purposes); the token is shown once.
pub async fn token_create(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    body: axum::body::Bytes,
) -> AppResult<Response> {
    let mint: concordat_store::tokens::Mint = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            let shown = e.to_string().chars().take(200).collect::<String>();
            let err = StoreError::refused(
                concordat_core::ErrorKind::InvalidInput,
                "bad_request",
                format!("the body must be JSON {{name, roles, purposes, days}}: {shown}"),
            );
            let ev = concordat_store::recorded::Pending::new(
                state.audit.clone(),
                &caller,
                "token_create",
                "http",
            );
            ev.refused(err.kind(), err.code()).await?;
            return Err(err.into());
        }
    };
    let (token, info) = state.tokens.mint(&caller, mint, "http").await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": info.id, "token": token, "expires": info.expires, "roles": info.roles, "purposes": info.purposes, "name": info.name})),
    )
        .into_response())
}

/// `GET /v1/tokens`: the caller's partner's tokens (never their secrets).
pub async fn token_list(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
) -> AppResult<Json<Value>> {
    Ok(Json(json!({"tokens": state.tokens.list(&caller)?})))
}

/// `DELETE /v1/tokens/{id}`: revokes one of the caller's partner's tokens.
pub async fn token_revoke(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    let t = state.tokens.revoke(&caller, &id, "http").await?;
    Ok(Json(json!(t)))
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::new(
        concordat_core::ErrorKind::NotFound,
        "not_found",
        "no such route",
    )
}
