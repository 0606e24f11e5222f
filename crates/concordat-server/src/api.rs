//! The `/v1` API as one table: every route is registered here through `utoipa-axum`'s
//! `routes!`, which adds the handler to the router and its `#[utoipa::path]` description
//! to the OpenAPI document in the same step, so a route cannot be served undocumented.
//!
//! The types below are the answers' shapes as the document states them. Handlers build
//! their answers with `serde_json`; the black-box suite checks every answer it reads
//! against these schemas (`tests/e2e/console.rs`), and each schema refuses fields it does
//! not name, so a new field must be documented before it can be answered.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;
use crate::{extract, query, routes};

/// An error: `{"error": {"code", "message", "details"?}}`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong; `code` is stable, `message` is for people.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Stable code: `unauthorized`, `forbidden`, `unknown_dataset`, `validation_failed`...
    code: String,
    /// What was wrong, naming the agreement, rule, file, row or column; never a data value.
    message: String,
    /// More, where useful (an upload's violations, a refused purpose's choices).
    details: Option<Value>,
}

/// A force area.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForceArea {
    /// ONS police force area code (`E23000032` is Kent).
    pfa_code: String,
    force_name: String,
    region: String,
}

/// One read right an agreement gives.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadRight {
    dataset: String,
    /// `record` or `aggregate`.
    access: String,
    /// `all`, `own_force_area`, `own_probation_region`...
    scope: String,
}

/// An agreement in force for the caller today.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgreementInForce {
    id: String,
    title: String,
    purposes: Vec<String>,
    lawful_basis: Vec<String>,
    /// `YYYY-MM-DD`.
    valid_from: String,
    /// `YYYY-MM-DD`.
    valid_until: String,
    /// Datasets the caller's partner may upload under it.
    upload: Vec<String>,
    /// What the caller's partner may read under it.
    read: Vec<ReadRight>,
}

/// `GET /v1/me`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Me {
    /// The credential's subject.
    subject: String,
    /// The partner id (`pcc-kent`), from the credential; the partner record gives the rest.
    partner: String,
    name: String,
    /// `pcc`, `police_force`, `probation`, `cps`, `hmcts`, `inspectorate`...
    kind: String,
    /// The partner's force area, if it has one.
    force_area: Option<ForceArea>,
    probation_region: Option<String>,
    roles: Vec<String>,
    agreements: Vec<AgreementInForce>,
}

/// Disclosure terms of an aggregate-only read.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Terms {
    /// Persons a released cell needs.
    min_count: u64,
    /// Released values are rounded to a multiple of this.
    round_to: u64,
}

/// One dataset as the caller sees it.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetEntry {
    name: String,
    title: String,
    /// `record`, `aggregate`, `derived`, `reference`.
    level: String,
    /// `record` or `aggregate`; null when the caller may only upload.
    access: Option<String>,
    can_upload: bool,
    /// Purposes under which the caller may read it.
    purposes: Vec<String>,
    /// Columns the caller's read shows.
    columns: Vec<String>,
    /// Latest table version; null for shipped reference data.
    latest_version: Option<u64>,
    /// Present when reads are aggregate-only.
    disclosure: Option<Terms>,
}

/// `GET /v1/datasets`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetList {
    datasets: Vec<DatasetEntry>,
    /// Every dataset of the gateway's contract, seen or not: each can be explained.
    contract: Vec<String>,
}

/// An agreement that grants the caller's read of a dataset.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetGrant {
    id: String,
    access: String,
    scope: String,
    purposes: Vec<String>,
    valid_until: String,
    min_count: Option<u64>,
    round_to: Option<u64>,
}

/// A column as the caller sees it.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Column {
    name: String,
    /// Arrow type (`Utf8`, `Int64`, `Float64`, `Date32`, `Boolean`...).
    #[serde(rename = "type")]
    data_type: String,
    nullable: bool,
    description: String,
    /// The values the column may hold, when it is an enumeration.
    #[serde(rename = "enum")]
    allowed: Option<Vec<String>>,
    /// A pseudonym that aggregate-only readers may join on but never see.
    join_only: Option<bool>,
    /// How the agreement generalises the column for this caller.
    generalised: Option<String>,
}

/// One version of a dataset, with its provenance.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Version {
    version: u64,
    committed_at: Option<String>,
    operation: Option<String>,
    /// The partner that uploaded it.
    partner: Option<String>,
    /// The uploader's subject: shown only to its own partner.
    subject: Option<String>,
    /// `append` or `replace_periods`.
    mode: Option<String>,
    rows: Option<u64>,
    periods: Option<Vec<String>>,
    sha256: Option<String>,
    agreements: Option<Vec<String>>,
    /// For derived datasets: the input versions it was built from.
    sources: Option<Value>,
}

/// `GET /v1/datasets/{name}`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetDetail {
    name: String,
    title: String,
    description: String,
    level: String,
    period_column: Option<String>,
    access: Option<String>,
    can_upload: bool,
    purposes: Vec<String>,
    agreements: Vec<DatasetGrant>,
    columns: Vec<Column>,
    disclosure: Option<Terms>,
    /// Newest last.
    versions: Vec<Version>,
    /// True for reference data shipped with the gateway.
    shipped: bool,
}

/// The verdict for one purpose, and the reasons.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Explanation {
    purpose: String,
    allowed: bool,
    /// One line per agreement considered, then the verdict.
    lines: Vec<String>,
}

/// `GET /v1/datasets/{name}/explain`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Explanations {
    dataset: String,
    partner: String,
    /// The day the agreements were read for, `YYYY-MM-DD`.
    on: String,
    explanations: Vec<Explanation>,
}

/// A committed upload (201), or the same bytes again (200, `duplicate: true`).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadDone {
    dataset: String,
    version: u64,
    rows: u64,
    periods: Vec<String>,
    sha256: String,
    /// Present (true) only when the same bytes were already committed.
    duplicate: Option<bool>,
}

/// `POST /v1/query` body.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    /// One read-only SQL statement.
    sql: String,
    /// A purpose the caller's agreements permit.
    purpose: String,
}

/// A column of an answer.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerColumn {
    name: String,
    /// Arrow type.
    #[serde(rename = "type")]
    data_type: String,
}

/// `POST /v1/query` as JSON.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryAnswer {
    columns: Vec<AnswerColumn>,
    /// One array per row, in column order.
    rows: Vec<Vec<Value>>,
    row_count: u64,
    /// True when the answer was cut at the row limit.
    truncated: bool,
    /// The disclosure record of an aggregate-only answer: agreements, rules, which cells
    /// were withheld (`marker_column`), rounded and perturbed.
    disclosure: Option<Value>,
}

/// The HMICFRS extract as JSON.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EfficiencyExtract {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    /// Source versions, agreements, metric definitions and the disclosure rule.
    manifest: Value,
}

/// A dataset version an event read or wrote.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventDataset {
    dataset: String,
    version: Option<u64>,
}

/// One audit event.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    seq: u64,
    time: String,
    subject: Option<String>,
    partner: Option<String>,
    roles: Vec<String>,
    /// `query`, `upload`, `extract`, `catalog`, `audit_read`, `audit_verify`, `token_create`...
    action: String,
    /// `ok`, `refused`, `failed`, `cancelled`.
    outcome: String,
    status: u16,
    code: Option<String>,
    datasets: Vec<EventDataset>,
    agreements: Vec<String>,
    purpose: Option<String>,
    sql: Option<String>,
    sql_sha256: Option<String>,
    rows: Option<u64>,
    bytes: Option<u64>,
    duration_ms: u64,
    detail: Option<Value>,
    /// `pg` or `flight` when not HTTP.
    door: Option<String>,
    /// True when the answer was reused from an identical query over the same versions.
    cached: Option<bool>,
    prev_hash: String,
    hash: String,
}

/// `GET /v1/audit`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditPage {
    events: Vec<AuditEvent>,
    /// Oldest first: pass as `after` for the next page.
    next_after: Option<u64>,
    /// Newest first: pass as `before` for the next page.
    next_before: Option<u64>,
}

/// `GET /v1/audit/verify`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainCheck {
    verified: bool,
    /// The first broken link, if any.
    broken: Option<String>,
}

/// `POST /v1/tokens` body.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenMint {
    name: String,
    /// A subset of the caller's roles.
    roles: Vec<String>,
    /// Empty: any purpose the partner's agreements permit.
    purposes: Option<Vec<String>>,
    /// Days until it expires (default 90).
    days: Option<u32>,
}

/// A new personal access token: the secret is shown once.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreated {
    id: String,
    /// `cct_...`: keep it like a password.
    token: String,
    expires: String,
    roles: Vec<String>,
    purposes: Vec<String>,
    name: String,
}

/// A personal access token, without its secret.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenInfo {
    id: String,
    name: String,
    partner: String,
    created_by: String,
    roles: Vec<String>,
    purposes: Vec<String>,
    created: String,
    expires: String,
    revoked: Option<String>,
}

/// `GET /v1/tokens`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenList {
    tokens: Vec<TokenInfo>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Concordat",
        description = "The criminal-justice data-sharing gateway: uploads, agreement-checked SQL, the police efficiency extract and the audit trail. Every route needs `Authorization: Bearer` with a JWT or a `cct_` personal access token; the partner record, never the token, gives the force area.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&Bearer),
    security(("bearer" = [])),
    tags(
        (name = "who", description = "The caller and its agreements"),
        (name = "datasets", description = "Datasets, versions and uploads"),
        (name = "query", description = "SQL under the agreements"),
        (name = "extracts", description = "The HMICFRS efficiency comparison"),
        (name = "audit", description = "The tamper-evident trail"),
        (name = "tokens", description = "Personal access tokens"),
    )
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("a JWT or a `cct_` personal access token"))
                    .build(),
            ),
        );
    }
}

/// Every `/v1` route, with its description.
pub fn v1() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::me))
        .routes(routes!(routes::datasets))
        .routes(routes!(routes::dataset))
        .routes(routes!(routes::explain))
        .routes(routes!(routes::upload))
        .routes(routes!(query::query))
        .routes(routes!(extract::efficiency))
        .routes(routes!(routes::audit))
        .routes(routes!(routes::audit_verify))
        .routes(routes!(routes::token_list, routes::token_create))
        .routes(routes!(routes::token_revoke))
}

/// The OpenAPI document, as `GET /v1/openapi.json` serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = v1().split_for_parts();
    doc.paths.add_path_operation(
        "/v1/openapi.json",
        vec![utoipa::openapi::HttpMethod::Get],
        utoipa::openapi::path::OperationBuilder::new()
            .summary(Some("This document"))
            .operation_id(Some("openapi"))
            .security(utoipa::openapi::security::SecurityRequirement::default())
            .response(
                "200",
                utoipa::openapi::ResponseBuilder::new()
                    .description("The OpenAPI 3.1 description of every /v1 route")
                    .content(
                        "application/json",
                        utoipa::openapi::content::ContentBuilder::new().build(),
                    ),
            )
            .build(),
    );
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_router_registers_v1_routes_only_through_the_documented_table() {
        // Any `/v1` route added beside `api::v1` would be served undocumented.
        let lib = include_str!("lib.rs");
        for (i, line) in lib.lines().enumerate() {
            let registers = line.contains(".route(") || line.contains(".nest(");
            let next = lib.lines().nth(i + 1).unwrap_or_default();
            let path = if line.contains('"') { line } else { next };
            if registers && path.contains("\"/v1") {
                assert!(
                    path.contains("\"/v1/openapi.json\""),
                    "lib.rs line {}: a /v1 route outside api::v1: {line}",
                    i + 1
                );
            }
        }
        assert!(lib.contains("api::v1().split_for_parts()"));
    }

    #[test]
    fn every_operation_is_described_with_its_refusals_and_every_answer_is_closed() {
        let doc = serde_json::to_value(document()).expect("document");
        let paths = doc["paths"].as_object().expect("paths");
        for (path, item) in paths {
            assert!(path.starts_with("/v1/"), "{path}");
            for (method, op) in item.as_object().expect("item") {
                let responses = op["responses"].as_object().expect("responses");
                assert!(
                    responses.keys().any(|s| s.starts_with('2')),
                    "{method} {path}"
                );
                if path != "/v1/openapi.json" {
                    assert!(responses.contains_key("401"), "{method} {path}");
                }
            }
        }
        for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
            assert_eq!(
                schema["additionalProperties"],
                serde_json::Value::Bool(false),
                "{name} must name every field it may carry"
            );
        }
    }
}
