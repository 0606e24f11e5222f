//! What every handler shares: configuration, policies, storage, the token verifier.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use concordat_efficiency::Rebuilder;
use concordat_policy::Policies;
use concordat_query::{QueryLimits, QueryService};
use concordat_store::audit::AuditLog;
use concordat_store::tokens::{TokenService, Tokens};
use concordat_store::trail::AuditTrail;
use concordat_store::{Store, StoreConfig, Uploads};

use crate::auth::{AuthError, Caller, Verifier};
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Shared state: the services every door calls, and what the HTTP door itself needs.
#[derive(Debug)]
pub struct AppState {
    /// Configuration.
    pub config: Config,
    /// Partners and agreements.
    pub policies: Arc<Policies>,
    /// Datasets.
    pub store: Arc<Store>,
    /// The audit trail.
    pub audit: Arc<AuditLog>,
    /// Queries, from every door.
    pub query: Arc<QueryService>,
    /// Uploads, from every door.
    pub uploads: Uploads,
    /// Reading the audit trail, from every door.
    pub trail: AuditTrail,
    /// Personal access tokens.
    pub tokens: TokenService,
    /// Token verification.
    pub verifier: Verifier,
    /// Counters and histograms.
    pub metrics: Metrics,
    /// The `force_efficiency` rebuilder, once started.
    efficiency: std::sync::OnceLock<Rebuilder>,
    /// Set when the server stops: background work ends after what it is doing.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Background work (compaction, the efficiency rebuilder), awaited at shutdown.
    background: tokio_util::task::TaskTracker,
}

impl AppState {
    /// Loads policies (failing closed on any invalid file), keys and the store. With a
    /// `worker` command, uploads are validated in child processes under memory limits.
    pub fn new(
        config: Config,
        worker: Option<(PathBuf, Vec<String>)>,
    ) -> Result<Arc<AppState>, StartError> {
        let policies =
            Policies::load(&config.policies_dir).map_err(|e| StartError::new("policies", e))?;
        let verifier =
            Verifier::from_config(&config.auth).map_err(|e| StartError::new("auth", e))?;
        let location = config.location().map_err(|e| StartError::new("store", e))?;
        let mut store_cfg = StoreConfig::new(&config.data_dir).on(&location);
        store_cfg.max_upload_bytes = config.limits.max_upload_bytes;
        store_cfg.concurrent_validations = config.limits.concurrent_validations;
        store_cfg.log_retention_days = config.store.log_retention_days;
        if let Some((program, args)) = worker {
            store_cfg.validator = concordat_store::Validator::Worker {
                program,
                args,
                memory_bytes: config.limits.validation_memory_mb << 20,
                timeout: std::time::Duration::from_secs(config.limits.validation_timeout_seconds),
            };
        }
        store_cfg.abort_in_commit =
            std::env::var("CONCORDAT_FAULT").is_ok_and(|v| v == "abort_in_commit");
        let data_dir = config.data_dir.display().to_string();
        let store = Arc::new(Store::open(store_cfg).map_err(|e| StartError::new(&data_dir, e))?);
        store
            .discard_staged()
            .map_err(|e| StartError::new(&data_dir, e))?;
        let audit = Arc::new(
            match &location {
                concordat_store::Location::Local(dir) => {
                    AuditLog::open(&dir.join("audit").join("audit.log"))
                }
                concordat_store::Location::Shared(shared) => AuditLog::open_shared(
                    shared.clone(),
                    &config.data_dir.join("audit").join("shared-copy.log"),
                ),
            }
            .map_err(|e| StartError::new("audit log", e))?,
        );
        let policies = Arc::new(policies);
        let q = &config.query;
        let limits = QueryLimits {
            max_sql_bytes: q.max_sql_bytes,
            memory_bytes: q.memory_mb << 20,
            spill_bytes: q.spill_mb << 20,
            timeout: std::time::Duration::from_secs(q.timeout_seconds),
            per_partner: q.per_partner,
            queue: q.queue,
            threads: q.threads,
            concurrent: q.concurrent,
            max_groups: q.max_groups,
            answer_cache_bytes: q.answer_cache_mb << 20,
            plan_cache_bytes: q.plan_cache_mb << 20,
        };
        let record_key = match &location {
            concordat_store::Location::Local(_) => {
                concordat_query::sdc::cellkey::RecordKey::load_or_create(&q.record_key_file)
                    .map_err(|e| StartError::new("record key", e))?
            }
            // One secret for every replica, so each gives the same perturbed answers: the
            // first replica to start writes it (if absent), the others read it.
            concordat_store::Location::Shared(shared) => {
                let secret = shared
                    .block_on(|store| async move {
                        store
                            .get_or_create(RECORD_KEY_OBJECT, || {
                                bytes::Bytes::from(rand::random::<[u8; 32]>().to_vec())
                            })
                            .await
                    })
                    .map_err(|e| StartError::new("record key", e))?;
                if secret.len() < 32 {
                    return Err(StartError::new(
                        "record key",
                        format!("{RECORD_KEY_OBJECT} on the store holds less than 32 bytes"),
                    ));
                }
                concordat_query::sdc::cellkey::RecordKey::from_secret(&secret)
            }
        };
        let query = QueryService::new(store.clone(), audit.clone(), policies.clone(), limits)
            .map_err(|e| StartError::new("query service", format!("{e:?}")))?
            .with_record_key(Arc::new(record_key));
        Ok(Arc::new(AppState {
            uploads: Uploads::new(store.clone(), policies.clone(), audit.clone()),
            trail: AuditTrail::new(policies.clone(), audit.clone()),
            tokens: TokenService::new(Arc::new(Tokens::at(&location)), audit.clone()),
            config,
            policies,
            store,
            audit,
            query: Arc::new(query),
            verifier,
            metrics: Metrics::default(),
            efficiency: std::sync::OnceLock::new(),
            stopping: tokio::sync::watch::channel(false).0,
            background: tokio_util::task::TaskTracker::new(),
        }))
    }

    /// Today's date, for agreement validity.
    pub fn today(&self) -> chrono::NaiveDate {
        chrono::Utc::now().date_naive()
    }
}

/// Where the record-key secret lives on a shared store.
const RECORD_KEY_OBJECT: &str = "keys/record-key.secret";

/// Why the server could not start: what failed, and how.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct StartError {
    what: String,
    message: String,
}

impl StartError {
    /// A failure of `what`.
    pub fn new(what: &str, e: impl std::fmt::Display) -> StartError {
        StartError {
            what: what.to_owned(),
            message: e.to_string(),
        }
    }
}

/// The verified caller of an HTTP request (its bearer token checked against the keys and
/// `partners.toml`).
#[derive(Debug, Clone)]
pub struct Authed(pub Caller);

impl FromRequestParts<Arc<AppState>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?;
        Ok(Authed(state.authenticate(token)?))
    }
}

impl AppState {
    /// The caller a credential stands for, at any door: a personal access token (`cct_`)
    /// from the register, or a JWT from the configured issuer. The partner record, never
    /// the credential, gives the force area.
    pub fn authenticate(&self, credential: &str) -> Result<Caller, AuthError> {
        let credential = credential.trim();
        let partners = self.policies.partners();
        if credential.starts_with(concordat_store::tokens::PREFIX) {
            let found = self
                .tokens
                .tokens()
                .verify(credential)
                .ok_or(AuthError::Invalid("unknown, expired or revoked token"))?;
            return crate::auth::token_caller(&found, partners);
        }
        self.verifier.verify(credential, partners)
    }

    /// Work after a committed upload, off the request: compact the dataset's small files
    /// once there are enough of them, then wake the efficiency rebuilder if the dataset is
    /// one of its inputs.
    pub fn after_commit(self: &Arc<Self>, dataset: &str) {
        // Not fewer: each compaction is a version of its own, and a partner's first
        // uploads should list as versions 0, 1, 2, ... (a national query pays about
        // 0.15 ms for each small file it opens: 12 files 5.3 ms, one file 3.4 ms).
        const COMPACT_AT_FILES: usize = 16;
        let state = self.clone();
        let dataset = dataset.to_owned();
        self.background.spawn(async move {
            let store = state.store.clone();
            let name = dataset.clone();
            let compacted = state
                .query
                .run(async move { store.compact(&name, COMPACT_AT_FILES).await })
                .await;
            match compacted {
                Ok(Ok(Some((version, files)))) => {
                    tracing::info!(dataset, version, files, "small files compacted");
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(dataset, error = %e, "compaction failed"),
                Err(e) => tracing::warn!(dataset, error = %e, "compaction failed"),
            }
            if let Some(r) = state.efficiency.get() {
                r.after_commit(&dataset);
            }
        });
    }

    /// Starts the `force_efficiency` rebuilder (once).
    pub fn spawn_efficiency_rebuilder(self: &Arc<Self>) {
        let metrics = self.clone();
        self.efficiency.get_or_init(|| {
            Rebuilder::spawn(
                &self.background,
                self.stopping.subscribe(),
                self.query.clone(),
                self.store.clone(),
                self.policies.clone(),
                move |version| {
                    metrics.metrics.efficiency_rebuilt();
                    tracing::info!(version, "force_efficiency rebuilt");
                },
            )
        });
    }

    /// The disclosure terms of the efficiency dataset's record-level figures.
    pub fn derived_terms(&self) -> concordat_policy::DisclosureTerms {
        self.policies
            .derived_terms(&concordat_efficiency::rebuild::RECORD_LEVEL_INPUTS)
    }

    /// Stops background work: no rebuild starts any more, and work under way (a
    /// compaction, a rebuild) is let finish, up to `limit`, before the query runtime it
    /// runs on is shut down, so a stop during a rebuild is clean and the last committed
    /// version stands.
    pub async fn stop_background(&self, limit: std::time::Duration) {
        let _ = self.stopping.send(true);
        self.background.close();
        if tokio::time::timeout(limit, self.background.wait())
            .await
            .is_err()
        {
            tracing::warn!("background work did not finish in time; stopping anyway");
        }
    }
}
