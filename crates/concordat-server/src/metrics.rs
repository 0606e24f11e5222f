//! What `/metrics` exports, in the Prometheus text format, through `prometheus-client`:
//! counters of uploads, queries and extracts, responses by status class, and duration
//! histograms per route, per door and per query phase (planning, execution, encoding,
//! audit).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type Count = Counter<u64, AtomicU64>;

fn seconds() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    responses: Family<Labels, Count>,
    route_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    phase_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Uploads committed as a new version.
    pub uploads_committed: Count,
    /// Uploads of bytes already committed.
    pub uploads_duplicate: Count,
    /// Uploads refused by validation.
    pub uploads_rejected: Count,
    /// Rows committed by uploads.
    pub rows_committed: Count,
    /// Bytes received in uploads.
    pub upload_bytes: Count,
    /// Queries answered in full.
    pub queries_ok: Count,
    /// Queries refused or failed.
    pub queries_refused: Count,
    /// Queries computed with the plan kept from an identical earlier one.
    pub plans_reused: Count,
    /// Rows returned by queries.
    pub query_rows: Count,
    /// New versions of `force_efficiency`.
    pub efficiency_rebuilds: Count,
    /// Extracts delivered.
    pub extracts: Count,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let responses = Family::<Labels, Count>::default();
        registry.register(
            "concordat_http_responses",
            "HTTP responses by status class.",
            responses.clone(),
        );
        let route_seconds: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(seconds);
        registry.register(
            "concordat_request_duration_seconds",
            "Time to answer a request, by door and route (for streamed answers, to the head).",
            route_seconds.clone(),
        );
        let phase_seconds: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(seconds);
        registry.register(
            "concordat_query_phase_duration_seconds",
            "Time a query spent in each phase (planning, execution, encoding, audit), by door.",
            phase_seconds.clone(),
        );
        let mut counter = |name: &str, help: &str| {
            let c = Count::default();
            registry.register(name, help, c.clone());
            c
        };
        let uploads_committed = counter(
            "concordat_uploads_committed",
            "Uploads committed as a new version.",
        );
        let uploads_duplicate = counter(
            "concordat_uploads_duplicate",
            "Uploads of bytes already committed.",
        );
        let uploads_rejected = counter(
            "concordat_uploads_rejected",
            "Uploads refused by validation.",
        );
        let rows_committed = counter("concordat_rows_committed", "Rows committed by uploads.");
        let upload_bytes = counter("concordat_upload_bytes", "Bytes received in uploads.");
        let queries_ok = counter("concordat_queries_ok", "Queries answered in full.");
        let queries_refused = counter("concordat_queries_refused", "Queries refused or failed.");
        let plans_reused = counter(
            "concordat_query_plans_reused",
            "Queries computed with the plan kept from an identical one over the same versions.",
        );
        let query_rows = counter("concordat_query_rows", "Rows returned by queries.");
        let efficiency_rebuilds = counter(
            "concordat_efficiency_rebuilds",
            "New versions of force_efficiency built after an input changed.",
        );
        let extracts = counter("concordat_extracts", "Efficiency extracts delivered.");
        Metrics {
            registry,
            responses,
            route_seconds,
            phase_seconds,
            uploads_committed,
            uploads_duplicate,
            uploads_rejected,
            rows_committed,
            upload_bytes,
            queries_ok,
            queries_refused,
            plans_reused,
            query_rows,
            efficiency_rebuilds,
            extracts,
        }
    }
}

impl Metrics {
    /// Counts a response and the time to it.
    pub fn response(&self, route: &str, status: u16, took: Duration) {
        let class = format!("{}xx", (status / 100).clamp(1, 5));
        self.responses.get_or_create(&vec![("class", class)]).inc();
        self.route_seconds
            .get_or_create(&vec![("door", "http".into()), ("route", route.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// Records the time a query spent in a phase.
    pub fn phase(&self, door: &str, phase: &'static str, took: Duration) {
        self.phase_seconds
            .get_or_create(&vec![("door", door.to_owned()), ("phase", phase.into())])
            .observe(took.as_secs_f64());
    }

    /// Counts a query that runs a kept plan, from any door.
    pub fn plan_used(&self, run: &concordat_query::QueryRun) {
        if run.plan_reused {
            self.plans_reused.inc();
        }
    }

    /// A new version of `force_efficiency`.
    pub fn efficiency_rebuilt(&self) {
        self.efficiency_rebuilds.inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        out
    }
}
