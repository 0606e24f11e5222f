//! The HTTP face of Concordat: bearer-token authentication, routes, JSON errors.
//!
//! Handlers are thin: they extract the caller and the request, call one service (the
//! query service of `concordat-query`, the upload service and audit trail of
//! `concordat-store`), and encode the answer. The services decide (through
//! `concordat-policy`'s one decision per question) and record the request's one audit
//! event; this crate never decides what an agreement allows, and turns error kinds into
//! statuses only through [`concordat_core::ErrorKind::status`].

pub mod api;
pub mod auth;
pub mod config;
pub mod console;
pub mod encode;
pub mod error;
pub mod extract;
pub mod flight;
pub mod metrics;
pub mod pg;
pub mod query;
pub mod routes;
pub mod state;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::middleware::{self, Next};
use axum::routing::get;

pub use config::Config;
pub use state::{AppState, StartError};

/// The application's routes.
pub fn router(state: Arc<AppState>) -> Router {
    let counted = state.clone();
    // Every `/v1` route comes from `api::v1`, which documents it as it registers it.
    let (v1, _) = api::v1().split_for_parts();
    let document = bytes::Bytes::from(api::document().to_json().unwrap_or_default());
    v1.route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route(
            "/v1/openapi.json",
            get(move || {
                let document = document.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        document,
                    )
                }
            }),
        )
        .merge(console::router())
        .fallback(routes::not_found)
        .layer(middleware::from_fn(
            move |req: axum::extract::Request, next: Next| {
                let state = counted.clone();
                async move {
                    let started = std::time::Instant::now();
                    let route = req
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map_or("other", |p| p.as_str())
                        .to_owned();
                    let response = next.run(req).await;
                    state
                        .metrics
                        .response(&route, response.status().as_u16(), started.elapsed());
                    response
                }
            },
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The addresses the doors listen on.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// HTTP.
    pub http: SocketAddr,
    /// Postgres wire, when configured.
    pub pg: Option<SocketAddr>,
    /// Flight SQL, when configured.
    pub flight: Option<SocketAddr>,
}

/// Serves every configured door until SIGINT or SIGTERM; calls `ready` with the bound
/// addresses first. `worker` is the command that validates one upload in a child
/// process (see `concordat_store::worker`).
pub async fn serve(
    config: Config,
    worker: Option<(std::path::PathBuf, Vec<String>)>,
    ready: impl FnOnce(Bound),
) -> Result<(), StartError> {
    let listen = config.listen;
    let pg = match &config.pg {
        Some(settings) => Some(pg::PgListener::bind(settings).await?),
        None => None,
    };
    let flight = match &config.flight {
        Some(settings) => Some(flight::FlightListener::bind(settings).await?),
        None => None,
    };
    let state = AppState::new(config, worker)?;
    state.spawn_efficiency_rebuilder();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| StartError::new(&format!("listen on {listen}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::new("listen", e))?;
    let stop = tokio_util::sync::CancellationToken::new();
    let pg_addr = match pg {
        Some(pg) => {
            let at = pg.local_addr()?;
            let stopped = stop.clone();
            let state = state.clone();
            tokio::spawn(async move { pg.serve(state, stopped.cancelled_owned()).await });
            Some(at)
        }
        None => None,
    };
    let flight_addr = match flight {
        Some(flight) => {
            let at = flight.local_addr()?;
            let stopped = stop.clone();
            let state = state.clone();
            tokio::spawn(async move { flight.serve(state, stopped.cancelled_owned()).await });
            Some(at)
        }
        None => None,
    };
    ready(Bound {
        http: addr,
        pg: pg_addr,
        flight: flight_addr,
    });
    // Answers stream in several writes (head, batches, the tail after the audit event);
    // without TCP_NODELAY a small write waits for the client's delayed ACK (40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let stopping = stop.clone();
    let served = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            stopping.cancel();
        })
        .await
        .map_err(|e| StartError::new("serve", e));
    stop.cancel();
    state
        .stop_background(std::time::Duration::from_secs(60))
        .await;
    tracing::info!("stopped");
    served
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
