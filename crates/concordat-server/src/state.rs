//! What every handler shares: configuration, policies, storage, the token verifier.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use concordat_policy::Policies;
use concordat_query::{QueryLimits, QueryService};
use concordat_store::audit::AuditLog;
use concordat_store::{Store, StoreConfig};

use crate::auth::{AuthError, Caller, Verifier};
use crate::config::Config;
use crate::error::ApiError;

/// Counters exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Responses by status class (2xx, 4xx, 5xx).
    pub responses: [AtomicU64; 6],
    /// Uploads committed.
    pub uploads_committed: AtomicU64,
    /// Uploads that were duplicates.
    pub uploads_duplicate: AtomicU64,
    /// Uploads refused by validation.
    pub uploads_rejected: AtomicU64,
    /// Rows committed.
    pub rows_committed: AtomicU64,
    /// Bytes received in uploads.
    pub upload_bytes: AtomicU64,
    /// Queries answered in full.
    pub queries_ok: AtomicU64,
    /// Queries refused or failed.
    pub queries_refused: AtomicU64,
    /// Rows returned by queries.
    pub query_rows: AtomicU64,
    /// New versions of `force_efficiency`.
    pub efficiency_rebuilds: AtomicU64,
    /// Extracts delivered.
    pub extracts: AtomicU64,
}

impl Metrics {
    /// Counts a response.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP concordat_http_responses_total HTTP responses by status class.\n# TYPE concordat_http_responses_total counter\n",
        );
        for (class, n) in self.responses.iter().enumerate().skip(1) {
            out.push_str(&format!(
                "concordat_http_responses_total{{class=\"{class}xx\"}} {}\n",
                n.load(Ordering::Relaxed)
            ));
        }
        for (name, help, v) in [
            (
                "concordat_uploads_committed_total",
                "Uploads committed as a new version.",
                &self.uploads_committed,
            ),
            (
                "concordat_uploads_duplicate_total",
                "Uploads of bytes already committed.",
                &self.uploads_duplicate,
            ),
            (
                "concordat_uploads_rejected_total",
                "Uploads refused by validation.",
                &self.uploads_rejected,
            ),
            (
                "concordat_rows_committed_total",
                "Rows committed by uploads.",
                &self.rows_committed,
            ),
            (
                "concordat_upload_bytes_total",
                "Bytes received in uploads.",
                &self.upload_bytes,
            ),
            (
                "concordat_queries_ok_total",
                "Queries answered in full.",
                &self.queries_ok,
            ),
            (
                "concordat_queries_refused_total",
                "Queries refused or failed.",
                &self.queries_refused,
            ),
            (
                "concordat_query_rows_total",
                "Rows returned by queries.",
                &self.query_rows,
            ),
            (
                "concordat_efficiency_rebuilds_total",
                "New versions of force_efficiency built after an input changed.",
                &self.efficiency_rebuilds,
            ),
            (
                "concordat_extracts_total",
                "Efficiency extracts delivered.",
                &self.extracts,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

/// Shared state.
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
    /// Policy-enforced SQL.
    pub query: QueryService,
    /// Token verification.
    pub verifier: Verifier,
    /// Counters.
    pub metrics: Metrics,
    /// Wakes the `force_efficiency` rebuilder (after an input commits).
    pub efficiency: Arc<tokio::sync::Notify>,
    /// Set when the server stops: background work ends after what it is doing.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Background work (compaction, the efficiency rebuilder), awaited at shutdown.
    background: tokio_util::task::TaskTracker,
    /// The secret behind disclosure control's record keys.
    pub record_key: Arc<concordat_query::sdc::cellkey::RecordKey>,
}

impl AppState {
    /// Loads policies (failing closed on any invalid file), keys and the store. With a
    /// `worker` command, uploads are validated in child processes under memory limits.
    pub fn new(
        config: Config,
        worker: Option<(PathBuf, Vec<String>)>,
    ) -> Result<Arc<AppState>, String> {
        let policies = Policies::load(&config.policies_dir).map_err(|e| e.to_string())?;
        let verifier = Verifier::from_config(&config.auth)?;
        let mut store_cfg = StoreConfig::new(&config.data_dir);
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
        let store = Arc::new(
            Store::open(store_cfg).map_err(|e| format!("{}: {e:?}", config.data_dir.display()))?,
        );
        store
            .discard_staged()
            .map_err(|e| format!("{}: {e:?}", config.data_dir.display()))?;
        let audit = Arc::new(
            AuditLog::open(&config.data_dir.join("audit").join("audit.log"))
                .map_err(|e| format!("audit log: {e:?}"))?,
        );
        let policies = Arc::new(policies);
        let q = &config.query;
        let limits = QueryLimits {
            max_sql_bytes: q.max_sql_bytes,
            memory_bytes: q.memory_mb << 20,
            spill_bytes: q.spill_mb << 20,
            timeout: std::time::Duration::from_secs(q.timeout_seconds),
            per_partner: q.per_partner,
            threads: q.threads,
            concurrent: q.concurrent,
            max_groups: q.max_groups,
        };
        let record_key =
            concordat_query::sdc::cellkey::RecordKey::load_or_create(&q.record_key_file)
                .map_err(|e| e.to_string())?;
        let query =
            QueryService::with_audit(store.clone(), Some(audit.clone()), policies.clone(), limits)
                .map_err(|e| format!("query service: {e:?}"))?
                .with_record_key(record_key.clone());
        Ok(Arc::new(AppState {
            config,
            policies,
            store,
            audit,
            query,
            verifier,
            record_key: Arc::new(record_key),
            metrics: Metrics::default(),
            efficiency: Arc::new(tokio::sync::Notify::new()),
            stopping: tokio::sync::watch::channel(false).0,
            background: tokio_util::task::TaskTracker::new(),
        }))
    }

    /// Today's date, for agreement validity.
    pub fn today(&self) -> chrono::NaiveDate {
        chrono::Utc::now().date_naive()
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
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
        Ok(state
            .verifier
            .verify(token.trim(), state.policies.partners())?)
    }
}

impl AppState {
    /// The strictest `min_count` of any aggregate-only grant on record-level data: the
    /// threshold the derived efficiency dataset applies to its record-level inputs.
    pub fn derived_min_count(&self) -> u64 {
        self.derived_terms().min_count
    }

    /// The strictest disclosure terms of any aggregate-only grant: those the derived
    /// efficiency dataset's record-level inputs are released under.
    pub fn derived_terms(&self) -> concordat_query::sdc::rules::Terms {
        let aggregate = || {
            self.policies
                .agreements()
                .iter()
                .flat_map(|a| a.read.values())
                .filter(|r| r.access == concordat_policy::Access::Aggregate)
        };
        concordat_query::sdc::rules::Terms {
            min_count: aggregate()
                .map(|r| u64::from(r.min_count))
                .max()
                .unwrap_or(10),
            round_to: aggregate()
                .map(|r| u64::from(r.round_to))
                .max()
                .unwrap_or(5),
        }
    }

    /// Work after a committed upload, off the request: compact the dataset's small files
    /// once there are enough of them, then wake the efficiency rebuilder if the dataset is
    /// one of its inputs.
    pub fn after_commit(self: &Arc<Self>, dataset: &str) {
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
            if concordat_query::efficiency::INPUTS.contains(&dataset.as_str()) {
                state.efficiency.notify_one();
            }
        });
    }

    /// Rebuilds `force_efficiency` whenever woken, and once at start (which catches up
    /// after a crash between an input's commit and its rebuild). Wake-ups that arrive
    /// during a rebuild coalesce into one more.
    pub fn spawn_efficiency_rebuilder(self: &Arc<Self>) {
        let state = self.clone();
        state.efficiency.notify_one();
        let mut stopping = self.stopping.subscribe();
        self.background.spawn(async move {
            loop {
                tokio::select! {
                    () = state.efficiency.notified() => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
                if *stopping.borrow() {
                    break;
                }
                let store = state.store.clone();
                let terms = state.derived_terms();
                let key = state.record_key.clone();
                let built = state
                    .query
                    .run(async move {
                        let release = concordat_query::efficiency::Release { terms, key: &key };
                        concordat_query::efficiency::rebuild(&store, release).await
                    })
                    .await;
                match built {
                    Ok(Ok(Some(version))) => {
                        state
                            .metrics
                            .efficiency_rebuilds
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::info!(version, "force_efficiency rebuilt");
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "force_efficiency rebuild failed"),
                    Err(e) => tracing::error!(error = %e, "force_efficiency rebuild failed"),
                }
            }
        });
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
