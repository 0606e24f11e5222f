//! One audit event per request, recorded by the service that owns the request.
//!
//! A service opens a [`Pending`] event when a request arrives and closes it with the
//! outcome ([`Pending::ok`], [`Pending::refused`]); a request dropped on the way (the
//! client went away, a door forgot) is still recorded, as `cancelled`, when the event is
//! dropped. The append is synced to disk before `ok` returns, so the answer it describes
//! completes only after its event is durable (fail closed).

use std::sync::Arc;
use std::time::Instant;

use concordat_core::{Caller, ErrorKind};

use crate::StoreError;
use crate::audit::{AuditLog, EventBody};

/// An audit event being filled in while a request runs.
pub struct Pending {
    log: Arc<AuditLog>,
    body: Option<EventBody>,
    started: Instant,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("action", &self.body.as_ref().map(|b| b.action.as_str()))
            .finish()
    }
}

impl Pending {
    /// Opens the event of an authenticated caller's action, at the door named.
    pub fn new(log: Arc<AuditLog>, caller: &Caller, action: &str, door: &str) -> Pending {
        let mut body = EventBody {
            subject: Some(caller.subject.clone()),
            partner: Some(caller.partner.id.to_string()),
            roles: caller.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            action: action.to_owned(),
            ..EventBody::default()
        };
        if door != "http" {
            body.door = Some(door.to_owned());
        }
        Pending {
            log,
            body: Some(body),
            started: Instant::now(),
        }
    }

    /// The event, to fill in.
    pub fn event(&mut self) -> &mut EventBody {
        self.body.get_or_insert_with(EventBody::default)
    }

    /// Records the request as answered.
    pub async fn ok(mut self, status: u16) -> Result<(), StoreError> {
        let mut body = self.take();
        body.outcome = "ok".into();
        body.status = status;
        self.append(body).await
    }

    /// Records the request as refused (or failed, for internal kinds) with its code.
    pub async fn refused(mut self, kind: ErrorKind, code: &str) -> Result<(), StoreError> {
        let mut body = self.take();
        body.outcome = kind.outcome().into();
        body.status = kind.status();
        body.code = Some(code.to_owned());
        self.append(body).await
    }

    /// Records the request as given up by the caller after `status` was sent.
    pub async fn cancelled(mut self, status: u16) -> Result<(), StoreError> {
        let mut body = self.take();
        body.outcome = "cancelled".into();
        body.status = status;
        self.append(body).await
    }

    fn take(&mut self) -> EventBody {
        let mut body = self.body.take().unwrap_or_default();
        body.duration_ms = self.started.elapsed().as_millis() as u64;
        body
    }

    async fn append(&self, body: EventBody) -> Result<(), StoreError> {
        let log = self.log.clone();
        match tokio::task::spawn_blocking(move || log.append(body)).await {
            Ok(r) => r.map(|_| ()),
            Err(e) => Err(StoreError::internal(e)),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.body.is_none() {
            return;
        }
        let mut body = self.take();
        body.outcome = "cancelled".into();
        if body.status == 0 {
            body.status = 200;
        }
        let log = self.log.clone();
        let append = move || {
            if let Err(e) = log.append(body) {
                tracing::error!(error = %e, "audit append of a cancelled request failed");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(append);
            }
            Err(_) => append(),
        }
    }
}
