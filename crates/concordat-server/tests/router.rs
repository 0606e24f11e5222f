//! The router in process (`tower::ServiceExt::oneshot`: no binary, no port): every
//! route's success and each refusal code, and the one audit event each request leaves.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use concordat_core::Role;
use concordat_policy::ForPurpose;
use concordat_server::auth::{DevSigner, write_dev_keys};
use concordat_server::config::{AuthConfig, Limits, QuerySettings, StoreSettings};
use concordat_server::{AppState, Config};
use concordat_store::audit::AuditEvent;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Site {
    _dir: tempfile::TempDir,
    state: Arc<AppState>,
    signer: DevSigner,
}

fn site() -> Site {
    let dir = tempfile::tempdir().expect("tempdir");
    let kid = write_dev_keys(dir.path()).expect("keys");
    let auth = AuthConfig {
        issuer: "concordat-test".into(),
        audience: "concordat".into(),
        algorithms: vec!["EdDSA".into()],
        jwks_file: Some(dir.path().join("jwks.json")),
        dev_secret_file: None,
        dev_signing_key: Some(dir.path().join("dev-ed25519.pem")),
        dev_key_id: Some(kid),
        leeway_seconds: 0,
    };
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().join("data"),
        policies_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies"),
        auth: auth.clone(),
        limits: Limits {
            max_upload_bytes: 4 << 20,
            ..Limits::default()
        },
        store: StoreSettings::default(),
        query: QuerySettings {
            max_sql_bytes: 4096,
            record_key_file: dir.path().join("record-key.secret"),
            ..QuerySettings::default()
        },
        pg: None,
        flight: None,
    };
    let state = AppState::new(config, None).expect("state");
    Site {
        _dir: dir,
        state,
        signer: DevSigner::from_config(&auth).expect("signer"),
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Site {
    fn router(&self) -> Router {
        concordat_server::router(self.state.clone())
    }

    fn token(&self, partner: &str, roles: &[Role]) -> String {
        self.signer
            .issue(&format!("someone@{partner}"), partner, roles, 600)
            .expect("token")
    }

    fn events(&self) -> Vec<AuditEvent> {
        self.state
            .audit
            .read(0, usize::MAX, &|_| true)
            .expect("audit")
    }

    async fn send(&self, req: Request<Body>) -> Answer {
        let response = self.router().oneshot(req).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Sends a request and returns the answer with the audit events it left.
    async fn audited(&self, req: Request<Body>) -> (Answer, Vec<AuditEvent>) {
        let before = self.events().len();
        let a = self.send(req).await;
        let after = self.events();
        (a, after[before..].to_vec())
    }

    fn get(&self, uri: &str, token: Option<&str>) -> Request<Body> {
        let mut b = Request::get(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(Body::empty()).expect("request")
    }

    fn query(&self, token: &str, sql: &str, purpose: &str) -> Request<Body> {
        Request::post("/v1/query")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"sql": sql, "purpose": purpose}).to_string(),
            ))
            .expect("request")
    }

    fn upload(
        &self,
        token: &str,
        dataset: &str,
        mode: &str,
        media: &str,
        bytes: Vec<u8>,
    ) -> Request<Body> {
        Request::post(format!("/v1/datasets/{dataset}/uploads?mode={mode}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, media)
            .body(Body::from(bytes))
            .expect("request")
    }
}

fn parquet(dataset: &str, forces: &[&str]) -> Vec<u8> {
    let batches = concordat_synth::Synth::new(0.01, 7)
        .only(forces)
        .batches(dataset);
    concordat_synth::parquet_bytes(&batches).expect("parquet")
}

/// One event, of this action, outcome and code.
fn one(events: &[AuditEvent], action: &str, outcome: &str, code: Option<&str>) {
    assert_eq!(events.len(), 1, "one audit event, got {events:#?}");
    let e = &events[0].body;
    assert_eq!(
        (e.action.as_str(), e.outcome.as_str(), e.code.as_deref()),
        (action, outcome, code),
        "{e:#?}"
    );
}

const PARQUET: &str = "application/vnd.apache.parquet";

#[tokio::test]
async fn every_route_answers_and_each_request_leaves_one_audit_event() {
    let s = site();
    let force = s.token("force-kent", &[Role::Uploader]);
    let force_analyst = s.token("force-kent", &[Role::Analyst]);
    let kent = s.token("pcc-kent", &[Role::Analyst]);
    let kent_uploader = s.token("pcc-kent", &[Role::Uploader]);
    let operator = s.token("operator", &[Role::Auditor]);
    let probation = s.token("probation", &[Role::Uploader]);

    // Unauthenticated routes and refusals of credentials leave no event.
    for (uri, status) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        ("/nowhere", 404),
    ] {
        let (a, ev) = s.audited(s.get(uri, None)).await;
        assert_eq!(a.status.as_u16(), status, "{uri}");
        assert!(ev.is_empty(), "{uri}");
    }
    let (a, ev) = s.audited(s.get("/v1/me", None)).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (401, "unauthorized")
    );
    assert!(a.headers.contains_key(header::WWW_AUTHENTICATE));
    assert!(ev.is_empty());
    let (a, _) = s.audited(s.get("/v1/me", Some("not.a.token"))).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    // Reading the catalogue.
    let (a, ev) = s.audited(s.get("/v1/me", Some(&kent))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["partner"], "pcc-kent");
    assert!(ev.is_empty());
    let (a, _) = s.audited(s.get("/v1/datasets", Some(&kent))).await;
    assert_eq!(a.status, StatusCode::OK);
    let (a, _) = s
        .audited(s.get("/v1/datasets/force_performance", Some(&kent)))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let (a, _) = s
        .audited(s.get("/v1/datasets/reoffending_cohort", Some(&force_analyst)))
        .await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (404, "not_found"));
    let (a, _) = s
        .audited(s.get("/v1/datasets/no_such_thing", Some(&kent)))
        .await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (404, "not_found"));

    // Uploads: each outcome, one event.
    let kent_rows = parquet("force_performance", &["kent"]);
    let (a, ev) = s
        .audited(s.upload(
            &force,
            "force_performance",
            "append",
            PARQUET,
            kent_rows.clone(),
        ))
        .await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    one(&ev, "upload", "ok", None);
    assert_eq!(ev[0].body.datasets[0].version, a.json()["version"].as_u64());
    let (a, ev) = s
        .audited(s.upload(
            &force,
            "force_performance",
            "append",
            PARQUET,
            kent_rows.clone(),
        ))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["duplicate"], true);
    one(&ev, "upload", "ok", None);
    let essex_rows = parquet("force_performance", &["essex"]);
    let refusals: Vec<(&str, Request<Body>, u16, &str)> = vec![
        (
            "rows of another force",
            s.upload(&force, "force_performance", "append", PARQUET, essex_rows),
            422,
            "validation_failed",
        ),
        (
            "invisible dataset",
            s.upload(
                &force,
                "reoffending_cohort",
                "append",
                PARQUET,
                kent_rows.clone(),
            ),
            404,
            "not_found",
        ),
        (
            "no upload agreement",
            s.upload(
                &kent_uploader,
                "force_performance",
                "append",
                PARQUET,
                kent_rows.clone(),
            ),
            403,
            "forbidden",
        ),
        (
            "no uploader role",
            s.upload(
                &force_analyst,
                "force_performance",
                "append",
                PARQUET,
                kent_rows.clone(),
            ),
            403,
            "forbidden",
        ),
        (
            "media type",
            s.upload(
                &force,
                "force_performance",
                "append",
                "text/csv",
                kent_rows.clone(),
            ),
            415,
            "unsupported_media_type",
        ),
        (
            "mode",
            s.upload(
                &force,
                "force_performance",
                "overwrite",
                PARQUET,
                kent_rows.clone(),
            ),
            400,
            "bad_request",
        ),
        (
            "too large",
            s.upload(
                &force,
                "force_performance",
                "append",
                PARQUET,
                vec![0u8; 5 << 20],
            ),
            413,
            "too_large",
        ),
    ];
    for (what, req, status, code) in refusals {
        let (a, ev) = s.audited(req).await;
        assert_eq!(
            (a.status.as_u16(), a.code().as_str()),
            (status, code),
            "{what}"
        );
        one(&ev, "upload", "refused", Some(code));
    }
    let cohort = parquet("reoffending_cohort", &["kent"]);
    let (a, _) = s
        .audited(s.upload(&probation, "reoffending_cohort", "append", PARQUET, cohort))
        .await;
    assert_eq!(a.status, StatusCode::CREATED);

    // Queries: each outcome, one event.
    let (a, ev) = s
        .audited(s.query(
            &kent,
            "SELECT count(*) AS n FROM force_performance",
            "performance-scrutiny",
        ))
        .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    one(&ev, "query", "ok", None);
    assert!(ev[0].body.sql.is_some() && ev[0].body.rows == Some(1));
    let long = format!("SELECT 1 -- {}", "x".repeat(5000));
    let refusals: Vec<(&str, Request<Body>, u16, &str)> = vec![
        (
            "unknown table",
            s.query(&kent, "SELECT * FROM nothing_here", "performance-scrutiny"),
            400,
            "sql",
        ),
        (
            "DDL",
            s.query(
                &kent,
                "DROP TABLE force_performance",
                "performance-scrutiny",
            ),
            400,
            "not_allowed",
        ),
        (
            "unknown purpose",
            s.query(&kent, "SELECT 1", "curiosity"),
            400,
            "purpose",
        ),
        (
            "wrong purpose",
            s.query(&kent, "SELECT * FROM force_performance", "inspection"),
            403,
            "purpose_not_permitted",
        ),
        (
            "aggregate only",
            s.query(
                &kent,
                "SELECT person_id FROM reoffending_cohort",
                "reducing-reoffending",
            ),
            403,
            "aggregate_only",
        ),
        (
            "role",
            s.query(&kent_uploader, "SELECT 1", "performance-scrutiny"),
            403,
            "forbidden",
        ),
        (
            "too long",
            s.query(&kent, &long, "performance-scrutiny"),
            413,
            "too_large",
        ),
    ];
    for (what, req, status, code) in refusals {
        let (a, ev) = s.audited(req).await;
        assert_eq!(
            (a.status.as_u16(), a.code().as_str()),
            (status, code),
            "{what}"
        );
        one(&ev, "query", "refused", Some(code));
    }
    let bad_json = Request::post("/v1/query")
        .header(header::AUTHORIZATION, format!("Bearer {kent}"))
        .body(Body::from("{\"sql\": 1}"))
        .expect("request");
    let (a, ev) = s.audited(bad_json).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (400, "bad_request"));
    one(&ev, "query", "refused", Some("bad_request"));
    let mut csv_only = s.query(&kent, "SELECT 1", "performance-scrutiny");
    csv_only
        .headers_mut()
        .insert(header::ACCEPT, "application/xml".parse().expect("header"));
    let (a, ev) = s.audited(csv_only).await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (406, "not_acceptable")
    );
    one(&ev, "query", "refused", Some("not_acceptable"));

    // The audit trail.
    let (a, ev) = s.audited(s.get("/v1/audit?limit=5", Some(&operator))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["events"].as_array().map(Vec::len), Some(5));
    one(&ev, "audit_read", "ok", None);
    let (a, ev) = s.audited(s.get("/v1/audit", Some(&kent))).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (403, "forbidden"));
    one(&ev, "audit_read", "refused", Some("forbidden"));
    let kent_auditor = s.token("pcc-kent", &[Role::Auditor]);
    let (a, ev) = s.audited(s.get("/v1/audit", Some(&kent_auditor))).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (403, "forbidden"));
    one(&ev, "audit_read", "refused", Some("forbidden"));

    // Extracts.
    let (a, ev) = s
        .audited(s.get(
            "/v1/extracts/efficiency?financial_year=2023-24",
            Some(&kent),
        ))
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (404, "not_found"),
        "nothing built yet"
    );
    one(&ev, "extract", "refused", Some("not_found"));
    let (a, ev) = s
        .audited(s.get("/v1/extracts/efficiency?financial_year=2023", Some(&kent)))
        .await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (400, "bad_request"));
    one(&ev, "extract", "refused", Some("bad_request"));
    let (a, ev) = s
        .audited(s.get(
            "/v1/extracts/efficiency?financial_year=2023-24",
            Some(&kent_uploader),
        ))
        .await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (403, "forbidden"));
    one(&ev, "extract", "refused", Some("forbidden"));
    let built =
        concordat_efficiency::Rebuilder::once(&s.state.query, &s.state.store, &s.state.policies)
            .await
            .expect("rebuild");
    assert!(built.is_some());
    let (a, ev) = s
        .audited(s.get(
            "/v1/extracts/efficiency?financial_year=2023-24&format=json",
            Some(&kent),
        ))
        .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    one(&ev, "extract", "ok", None);
    assert!(a.json()["rows"].as_array().is_some_and(|r| !r.is_empty()));

    // The counters and histograms saw it all.
    let metrics = String::from_utf8(s.send(s.get("/metrics", None)).await.body).expect("text");
    assert!(
        metrics.contains("concordat_uploads_committed_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("concordat_queries_refused_total 9"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "concordat_request_duration_seconds_count{door=\"http\",route=\"/v1/query\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "concordat_query_phase_duration_seconds_count{door=\"http\",phase=\"planning\"} 1"
        ),
        "{metrics}"
    );
    // The trail still verifies.
    let v = concordat_store::audit::verify(s.state.audit.path()).expect("verify");
    assert!(v.broken.is_none(), "{v:?}");
}

/// The same (partner, dataset, purpose) gets the same answer from the catalogue, the
/// query service and the efficiency rebuild's terms.
#[tokio::test]
async fn the_catalogue_the_query_service_and_the_rebuild_agree() {
    let s = site();
    let policies = s.state.policies.clone();
    let today = s.state.today();
    let (mut records, mut aggregates) = (0, 0);
    for partner in [
        "pcc-kent",
        "force-kent",
        "hmicfrs",
        "home-office",
        "probation",
        "panel-kent",
    ] {
        let token = s.token(partner, &[Role::Analyst, Role::Inspector]);
        let listed = s.send(s.get("/v1/datasets", Some(&token))).await.json();
        let p = policies.partners().get(partner).expect("partner");
        for entry in listed["datasets"].as_array().expect("datasets") {
            let name = entry["name"].as_str().expect("name");
            let Some(access) = entry["access"].as_str() else {
                continue;
            };
            let schema = concordat_core::Schemas::builtin()
                .get(name)
                .expect("schema");
            let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
            let listed: Vec<&str> = entry["purposes"]
                .as_array()
                .expect("purposes")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(!listed.is_empty(), "{partner} {name}");
            for purpose in concordat_core::Purpose::KNOWN {
                let typed = concordat_core::Purpose::known(purpose).expect("purpose");
                let Ok(decided) = policies.effective_read(
                    p,
                    &schema.name,
                    &columns,
                    ForPurpose::One(&typed),
                    today,
                ) else {
                    assert!(
                        !listed.contains(&purpose),
                        "{partner} {name} {purpose} listed but refused"
                    );
                    continue;
                };
                let sql = if access == "record" {
                    format!("SELECT * FROM {name} LIMIT 0")
                } else {
                    format!("SELECT count(*) AS n FROM {name}")
                };
                let mut req = s.query(&token, &sql, purpose);
                req.headers_mut()
                    .insert(header::ACCEPT, "application/json".parse().expect("accept"));
                let a = s.send(req).await;
                assert_eq!(
                    a.status,
                    StatusCode::OK,
                    "{partner} {name} {purpose}: {}",
                    String::from_utf8_lossy(&a.body)
                );
                let body = a.json();
                if access == "record" {
                    assert_eq!(decided.access, concordat_policy::Access::Record);
                    let shown: Vec<&str> = body["columns"]
                        .as_array()
                        .expect("columns")
                        .iter()
                        .map(|c| c["name"].as_str().or(c.as_str()).unwrap_or_default())
                        .collect();
                    let listed: Vec<&str> = entry["columns"]
                        .as_array()
                        .expect("columns")
                        .iter()
                        .filter_map(Value::as_str)
                        .collect();
                    assert_eq!(shown, listed, "{partner} {name} {purpose}");
                    records += 1;
                } else {
                    let terms = decided.terms.expect("terms");
                    assert_eq!(
                        entry["disclosure"]["min_count"], terms.min_count,
                        "{partner} {name}"
                    );
                    assert_eq!(
                        body["disclosure"]["min_count"], terms.min_count,
                        "{partner} {name}"
                    );
                    assert_eq!(
                        body["disclosure"]["round_to"], terms.round_to,
                        "{partner} {name}"
                    );
                    let derived = s.state.derived_terms();
                    assert!(
                        derived.min_count >= terms.min_count && derived.round_to >= terms.round_to
                    );
                    aggregates += 1;
                }
            }
        }
    }
    assert!(
        records >= 10 && aggregates >= 2,
        "{records} record, {aggregates} aggregate"
    );
}

/// Personal access tokens: minted within the creator's roles, scoped to purposes,
/// usable in place of a JWT, revocable by their own partner only, each change audited.
#[tokio::test]
async fn personal_access_tokens_carry_their_scope_and_stop_when_revoked() {
    let s = site();
    let kent = s.token("pcc-kent", &[Role::Analyst]);
    let essex = s.token("pcc-essex", &[Role::Analyst]);
    let mint = |token: &str, body: Value| {
        Request::post("/v1/tokens")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("request")
    };
    let (a, ev) = s
        .audited(mint(
            &kent,
            json!({"name": "power bi", "roles": ["analyst"], "purposes": ["performance-scrutiny"], "days": 30}),
        ))
        .await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    one(&ev, "token_create", "ok", None);
    let pat = a.json()["token"].as_str().expect("token").to_owned();
    let id = a.json()["id"].as_str().expect("id").to_owned();
    assert!(pat.starts_with("cct_"));

    // Within its scope it answers like the JWT, and the event names the token.
    let (a, ev) = s
        .audited(s.query(
            &pat,
            "SELECT count(*) AS n FROM force_performance",
            "performance-scrutiny",
        ))
        .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    one(&ev, "query", "ok", None);
    assert!(
        ev[0]
            .body
            .subject
            .as_deref()
            .is_some_and(|s| s.contains(&id))
    );
    assert_eq!(ev[0].body.partner.as_deref(), Some("pcc-kent"));
    // A purpose Kent's agreements permit but the token does not: refused.
    let (a, ev) = s
        .audited(s.query(
            &pat,
            "SELECT count(*) FROM reoffending_cohort",
            "reducing-reoffending",
        ))
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (403, "purpose_not_permitted")
    );
    one(&ev, "query", "refused", Some("purpose_not_permitted"));
    // Not more than its creator: a role the creator lacks, or (from the token) a purpose
    // the token lacks.
    let (a, ev) = s
        .audited(mint(&kent, json!({"name": "x", "roles": ["uploader"]})))
        .await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (403, "forbidden"));
    one(&ev, "token_create", "refused", Some("forbidden"));
    let (a, _) = s
        .audited(mint(
            &pat,
            json!({"name": "x", "roles": ["analyst"], "purposes": ["reducing-reoffending"]}),
        ))
        .await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (403, "forbidden"));

    // Listed for its partner only, never with its secret.
    let listed = s.send(s.get("/v1/tokens", Some(&kent))).await;
    assert_eq!(listed.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&listed.body).to_string();
    assert!(text.contains(&id) && !text.contains(pat.rsplit('_').next().expect("secret")));
    assert!(!text.contains("sha256"));
    let theirs = s.send(s.get("/v1/tokens", Some(&essex))).await;
    assert!(!String::from_utf8_lossy(&theirs.body).contains(&id));

    // Revoked by Essex: not found (the same as a token that does not exist); by Kent: gone.
    let revoke = |token: &str| {
        Request::delete(format!("/v1/tokens/{id}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request")
    };
    let (a, ev) = s.audited(revoke(&essex)).await;
    assert_eq!((a.status.as_u16(), a.code().as_str()), (404, "not_found"));
    one(&ev, "token_revoke", "refused", Some("not_found"));
    let (a, ev) = s.audited(revoke(&kent)).await;
    assert_eq!(a.status, StatusCode::OK);
    one(&ev, "token_revoke", "ok", None);
    let (a, ev) = s
        .audited(s.query(&pat, "SELECT 1", "performance-scrutiny"))
        .await;
    assert_eq!(
        (a.status.as_u16(), a.code().as_str()),
        (401, "unauthorized")
    );
    assert!(ev.is_empty());
    let (a, _) = s
        .audited(s.query("cct_000000000000_00", "SELECT 1", "performance-scrutiny"))
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    // A token the CLI writes to the register works at once, without a restart.
    let register = concordat_store::tokens::Tokens::open(&s.state.config.data_dir);
    let (cli_token, _) = register
        .create(concordat_store::tokens::NewToken {
            name: "odbc".into(),
            partner: "force-kent".parse().expect("partner"),
            created_by: "cli".into(),
            roles: vec![Role::Analyst],
            purposes: Vec::new(),
            days: 1,
        })
        .expect("create");
    let a = s
        .send(s.query(
            &cli_token,
            "SELECT count(*) FROM force_performance",
            "performance-scrutiny",
        ))
        .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
}
