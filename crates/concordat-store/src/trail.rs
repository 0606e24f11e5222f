//! Reading the audit trail, from any door: the events the caller's audit agreements show,
//! and one audit event for the reading itself.

use std::sync::Arc;

use chrono::NaiveDate;
use concordat_core::{Caller, ErrorKind, Role};
use concordat_policy::{Policies, RefusalReason};

use crate::StoreError;
use crate::audit::{AuditEvent, AuditLog};
use crate::recorded::Pending;

/// Most events one read returns.
pub const MAX_EVENTS: usize = 1000;

/// The audit trail as partners may read it.
#[derive(Debug, Clone)]
pub struct AuditTrail {
    policies: Arc<Policies>,
    log: Arc<AuditLog>,
}

impl AuditTrail {
    /// The service over the policies and the log.
    pub fn new(policies: Arc<Policies>, log: Arc<AuditLog>) -> AuditTrail {
        AuditTrail { policies, log }
    }

    /// Events with `seq > after`, oldest first, up to `limit` (1 to [`MAX_EVENTS`]), that
    /// the caller's audit agreements show for the `audit` purpose.
    pub async fn read(
        &self,
        caller: &Caller,
        after: u64,
        limit: usize,
        today: NaiveDate,
        door: &str,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let mut ev = Pending::new(self.log.clone(), caller, "audit_read", door);
        ev.event().purpose = Some("audit".into());
        match self.events(caller, after, limit, today).await {
            Ok(events) => {
                ev.event().rows = Some(events.len() as u64);
                ev.ok(200).await?;
                Ok(events)
            }
            Err(err) => {
                ev.refused(err.kind(), err.code()).await?;
                Err(err)
            }
        }
    }

    async fn events(
        &self,
        caller: &Caller,
        after: u64,
        limit: usize,
        today: NaiveDate,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        if !caller.has_any(&[Role::Auditor, Role::Admin]) {
            return Err(StoreError::refused(
                ErrorKind::Forbidden,
                "forbidden",
                "the audit trail needs the auditor or admin role",
            ));
        }
        let audit: concordat_core::Purpose = "audit".parse().map_err(StoreError::internal)?;
        if !caller.may_declare(&audit) {
            return Err(StoreError::refused(
                ErrorKind::Forbidden,
                "purpose_not_permitted",
                "this credential may not be used for audit",
            ));
        }
        let view = match self.policies.audit_view(&caller.partner, &audit, today) {
            Ok(v) => v,
            Err(RefusalReason::NoAgreement) => {
                return Err(StoreError::refused(
                    ErrorKind::Forbidden,
                    "forbidden",
                    format!(
                        "no agreement lets {} read the audit trail",
                        caller.partner.id
                    ),
                ));
            }
            Err(reason) => {
                return Err(StoreError::refused(
                    reason.kind(),
                    reason.code(),
                    reason.to_string(),
                ));
            }
        };
        let log = self.log.clone();
        let limit = limit.clamp(1, MAX_EVENTS);
        tokio::task::spawn_blocking(move || {
            log.read(after, limit, &|e| view.allows(e.body.partner.as_deref()))
        })
        .await
        .map_err(StoreError::internal)?
    }
}
