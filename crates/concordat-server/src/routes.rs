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

/// `GET /readyz`: the data directory is writable, the shared store (if any) answers, and
/// the policies are loaded.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let probe = state.config.data_dir.join("staging").join(".ready");
    let mut ready = std::fs::write(&probe, b"ok")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("data directory not writable: {e}"));
    if ready.is_ok()
        && let Some(shared) = &state.store.config().shared
    {
        ready = shared
            .any("tables")
            .await
            .map(|_| ())
            .map_err(|e| format!("shared store unreachable: {e}"));
    }
    match ready {
        Ok(()) => Json(json!({"status": "ready", "agreements": state.policies.agreements().len()}))
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
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
#[utoipa::path(get, path = "/v1/me", tag = "who",
    responses((status = 200, description = "The caller, its partner and the agreements in force", body = crate::api::Me), (status = 401, description = "No or bad credential", body = crate::api::ErrorBody)))]
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
#[utoipa::path(get, path = "/v1/datasets", tag = "datasets",
    responses((status = 200, description = "Datasets the caller may read or upload", body = crate::api::DatasetList), (status = 401, description = "No or bad credential", body = crate::api::ErrorBody)))]
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
    let contract: Vec<&str> = Schemas::builtin().iter().map(|s| s.name.as_str()).collect();
    Ok(Json(json!({ "datasets": out, "contract": contract })))
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
#[utoipa::path(get, path = "/v1/datasets/{name}", tag = "datasets",
    params(("name" = String, Path, description = "A dataset name")),
    responses((status = 200, description = "The schema as the caller sees it, and every version with its provenance", body = crate::api::DatasetDetail), (status = 401, description = "No or bad credential", body = crate::api::ErrorBody),
        (status = 404, description = "Unknown, or not visible to the caller", body = crate::api::ErrorBody)))]
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
#[utoipa::path(post, path = "/v1/datasets/{name}/uploads", tag = "datasets",
    params(("name" = String, Path, description = "The dataset"),
        ("mode" = Option<String>, Query, description = "`append` (default) or `replace_periods`")),
    request_body(content = Vec<u8>, content_type = "application/vnd.apache.parquet", description = "One Parquet file"),
    responses((status = 201, description = "Committed as a new version", body = crate::api::UploadDone),
        (status = 200, description = "The same bytes were already committed: nothing changed", body = crate::api::UploadDone),
        (status = 400, description = "Bad mode or unreadable file", body = crate::api::ErrorBody), (status = 401, description = "No or bad credential", body = crate::api::ErrorBody),
        (status = 403, description = "No agreement lets the caller upload it, or not the uploader role", body = crate::api::ErrorBody),
        (status = 404, description = "Unknown dataset", body = crate::api::ErrorBody),
        (status = 409, description = "Another upload committed first: send it again", body = crate::api::ErrorBody),
        (status = 413, description = "Larger than the upload limit", body = crate::api::ErrorBody),
        (status = 415, description = "Not application/vnd.apache.parquet", body = crate::api::ErrorBody),
        (status = 422, description = "Failed validation: `details.violations` [{row, column, rule, message}], nothing committed", body = crate::api::ErrorBody),
        (status = 429, description = "Too many uploads at once", body = crate::api::ErrorBody)))]
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

/// `GET /v1/audit`: events the caller's audit agreements show: oldest first after
/// `after`, or newest first (`order=newest`, paged by `before`), filtered by partner,
/// action and outcome; `limit` up to 1000.
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(("after" = Option<u64>, Query, description = "Oldest first: events after this sequence number"),
        ("before" = Option<u64>, Query, description = "Newest first: events before this sequence number"),
        ("order" = Option<String>, Query, description = "`oldest` (default) or `newest`"),
        ("limit" = Option<u64>, Query, description = "1 to 1000, default 100"),
        ("partner" = Option<String>, Query, description = "Only this partner's events"),
        ("action" = Option<String>, Query, description = "Only this action"),
        ("outcome" = Option<String>, Query, description = "Only this outcome")),
    responses((status = 200, description = "Events the caller's audit agreements show", body = crate::api::AuditPage),
        (status = 400, description = "Bad order", body = crate::api::ErrorBody), (status = 401, description = "No or bad credential", body = crate::api::ErrorBody),
        (status = 403, description = "Not an auditor or admin, or no audit agreement", body = crate::api::ErrorBody)))]
pub async fn audit(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    Query(page): Query<concordat_store::trail::Page>,
) -> AppResult<Json<Value>> {
    let events = state
        .trail
        .read(&caller, &page, state.today(), "http")
        .await?;
    // The read above refused an unknown order, so this is the order it read in.
    let newest = page.newest_first()?;
    let last = events.last().map(|e| e.seq);
    let mut out = json!({"events": events});
    if newest {
        out["next_before"] = json!(last);
    } else {
        out["next_after"] = json!(last);
    }
    Ok(Json(out))
}

/// `GET /v1/audit/verify`: whether every link of the hash chain holds.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, description = "Whether every link of the hash chain holds", body = crate::api::ChainCheck), (status = 401, description = "No or bad credential", body = crate::api::ErrorBody),
        (status = 403, description = "Not an auditor or admin, or no audit agreement", body = crate::api::ErrorBody)))]
pub async fn audit_verify(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
) -> AppResult<Json<concordat_store::trail::ChainCheck>> {
    Ok(Json(
        state.trail.verify(&caller, state.today(), "http").await?,
    ))
}

/// Query of `GET /v1/datasets/{name}/explain`.
#[derive(Debug, Deserialize)]
pub struct ExplainQuery {
    purpose: Option<String>,
}

/// `GET /v1/datasets/{name}/explain`: "why can't I see this?": for any dataset of the
/// contract, which of the caller's own agreements allow or refuse it, per purpose.
#[utoipa::path(get, path = "/v1/datasets/{name}/explain", tag = "datasets",
    params(("name" = String, Path, description = "Any dataset of the contract"),
        ("purpose" = Option<String>, Query, description = "One purpose; all five when absent")),
    responses((status = 200, description = "Why the caller may or may not read it: each agreement considered and the verdict", body = crate::api::Explanations),
        (status = 400, description = "Unknown purpose", body = crate::api::ErrorBody), (status = 401, description = "No or bad credential", body = crate::api::ErrorBody),
        (status = 404, description = "No such dataset in the contract", body = crate::api::ErrorBody)))]
pub async fn explain(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
    NameInPath(name): NameInPath,
    Query(q): Query<ExplainQuery>,
) -> AppResult<Json<Value>> {
    let schema = Schemas::builtin()
        .get(&name)
        .ok_or_else(|| ApiError::unknown_dataset(&name))?;
    let purposes: Vec<&str> = match q.purpose.as_deref() {
        Some(p) => {
            if concordat_core::Purpose::known(p).is_err() {
                return Err(ApiError::bad_request(format!(
                    "unknown purpose: the purposes are {}",
                    concordat_core::Purpose::KNOWN.join(", ")
                )));
            }
            vec![p]
        }
        None => concordat_core::Purpose::KNOWN.to_vec(),
    };
    let today = state.today();
    let explanations: Vec<Value> = purposes
        .into_iter()
        .map(|purpose| {
            let mut e = state
                .policies
                .explain(caller.partner.id.as_str(), schema.name.as_str(), purpose, today);
            let declarable = concordat_core::Purpose::known(purpose)
                .is_ok_and(|p| caller.may_declare(&p));
            if e.allowed && !declarable {
                e.allowed = false;
                e.lines.push(format!(
                    "REFUSED: this credential is limited to other purposes and may not be used for {purpose}"
                ));
            }
            json!({"purpose": purpose, "allowed": e.allowed, "lines": e.lines})
        })
        .collect();
    Ok(Json(json!({
        "dataset": schema.name,
        "partner": caller.partner.id,
        "on": today,
        "explanations": explanations,
    })))
}

/// `POST /v1/tokens`: a personal access token for the caller's own partner, within the
/// caller's roles (and purposes); the token is shown once.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens",
    request_body(content = crate::api::TokenMint, description = "Roles and purposes within the caller's own"),
    responses((status = 201, description = "The token, shown once", body = crate::api::TokenCreated),
        (status = 400, description = "Bad body", body = crate::api::ErrorBody), (status = 401, description = "No or bad credential", body = crate::api::ErrorBody),
        (status = 403, description = "Roles or purposes beyond the caller's", body = crate::api::ErrorBody)))]
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
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, description = "The partner's tokens, never their secrets", body = crate::api::TokenList), (status = 401, description = "No or bad credential", body = crate::api::ErrorBody)))]
pub async fn token_list(
    State(state): State<Arc<AppState>>,
    Authed(caller): Authed,
) -> AppResult<Json<Value>> {
    Ok(Json(json!({"tokens": state.tokens.list(&caller)?})))
}

/// `DELETE /v1/tokens/{id}`: revokes one of the caller's partner's tokens.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "The token id")),
    responses((status = 200, description = "Revoked", body = crate::api::TokenInfo), (status = 401, description = "No or bad credential", body = crate::api::ErrorBody),
        (status = 404, description = "No such token of the caller's partner", body = crate::api::ErrorBody)))]
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
