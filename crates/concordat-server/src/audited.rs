//! Writing audit events from handlers. An event is durable before the response it
//! describes completes; if it cannot be written, the request fails (closed).

use std::sync::Arc;
use std::time::Instant;

use concordat_store::audit::EventBody;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// An event for an authenticated caller's action.
pub fn event(caller: &Caller, action: &str) -> EventBody {
    EventBody {
        subject: Some(caller.subject.clone()),
        partner: Some(caller.partner.id.to_string()),
        roles: caller.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        action: action.to_owned(),
        ..EventBody::default()
    }
}

/// Appends the event (synced to disk) off the async runtime.
pub async fn record(
    state: &Arc<AppState>,
    mut body: EventBody,
    started: Instant,
) -> Result<(), ApiError> {
    body.duration_ms = started.elapsed().as_millis() as u64;
    let log = state.audit.clone();
    match tokio::task::spawn_blocking(move || log.append(body)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(ApiError::internal(format!("audit append failed: {e:?}"))),
        Err(e) => Err(ApiError::internal(format!("audit task failed: {e}"))),
    }
}

/// Records a refusal or failure and returns the error to answer with.
pub async fn refused(
    state: &Arc<AppState>,
    mut body: EventBody,
    started: Instant,
    err: ApiError,
) -> ApiError {
    if body.action == "query" {
        state
            .metrics
            .queries_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    body.outcome = if err.status().is_server_error() {
        "failed"
    } else {
        "refused"
    }
    .into();
    body.status = err.status().as_u16();
    body.code = Some(err.code().to_owned());
    match record(state, body, started).await {
        Ok(()) => err,
        Err(audit_failure) => audit_failure,
    }
}
