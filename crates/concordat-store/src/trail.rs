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

/// Which events one read asks for.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Page {
    /// Oldest first: events with `seq > after`.
    pub after: Option<u64>,
    /// Newest first: events with `seq < before` (or the newest, when `order` is `newest`).
    pub before: Option<u64>,
    /// `oldest` (the default) or `newest` first.
    pub order: Option<String>,
    /// How many (1 to [`MAX_EVENTS`], default 100).
    pub limit: Option<usize>,
    /// Only events of this partner.
    pub partner: Option<String>,
    /// Only events of this action (`query`, `upload`, ...).
    pub action: Option<String>,
    /// Only events with this outcome (`ok`, `refused`, `failed`, `cancelled`).
    pub outcome: Option<String>,
}

impl Page {
    /// Whether the page reads newest first (`order=newest`, or a `before`); an order
    /// other than `oldest` or `newest` is refused.
    pub fn newest_first(&self) -> Result<bool, StoreError> {
        match self.order.as_deref() {
            None | Some("oldest") => Ok(self.before.is_some()),
            Some("newest") => Ok(true),
            Some(_) => Err(StoreError::refused(
                ErrorKind::InvalidInput,
                "bad_request",
                "order must be oldest or newest",
            )),
        }
    }

    fn matches(&self, e: &AuditEvent) -> bool {
        let is = |want: &Option<String>, got: Option<&str>| {
            want.as_deref()
                .is_none_or(|w| w.is_empty() || Some(w) == got)
        };
        is(&self.partner, e.body.partner.as_deref())
            && is(&self.action, Some(&e.body.action))
            && is(&self.outcome, Some(&e.body.outcome))
    }
}

/// The chain's state, as an auditor is told it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChainCheck {
    /// True when every link from the first event to the head holds.
    pub verified: bool,
    /// The first broken link, when one is: which event and what is wrong.
    pub broken: Option<String>,
}

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

    /// The events of `page` that the caller's audit agreements show for the `audit`
    /// purpose: oldest first after `after`, or newest first before `before`.
    pub async fn read(
        &self,
        caller: &Caller,
        page: &Page,
        today: NaiveDate,
        door: &str,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let mut ev = Pending::new(self.log.clone(), caller, "audit_read", door);
        ev.event().purpose = Some("audit".into());
        match self.events(caller, page, today).await {
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

    /// Checks every link of the whole chain (`concordat audit verify`) for a caller who
    /// may read the trail; audited as `audit_verify`.
    pub async fn verify(
        &self,
        caller: &Caller,
        today: NaiveDate,
        door: &str,
    ) -> Result<ChainCheck, StoreError> {
        let mut ev = Pending::new(self.log.clone(), caller, "audit_verify", door);
        ev.event().purpose = Some("audit".into());
        let checked = match self.view(caller, today) {
            Ok(_) => self.log.verify().await,
            Err(e) => Err(e),
        };
        match checked {
            Ok(v) => {
                ev.ok(200).await?;
                Ok(ChainCheck {
                    verified: v.broken.is_none(),
                    broken: v.broken.map(|(line, why)| format!("line {line}: {why}")),
                })
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
        page: &Page,
        today: NaiveDate,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let view = self.view(caller, today)?;
        let newest = page.newest_first()?;
        let log = self.log.clone();
        let limit = page.limit.unwrap_or(100).clamp(1, MAX_EVENTS);
        let (before, after) = (page.before.unwrap_or(u64::MAX), page.after.unwrap_or(0));
        let page = page.clone();
        let keep = move |e: &AuditEvent| view.allows(e.body.partner.as_deref()) && page.matches(e);
        tokio::task::spawn_blocking(move || {
            if newest {
                log.read_newest(before, limit, &keep)
            } else {
                log.read(after, limit, &keep)
            }
        })
        .await
        .map_err(StoreError::internal)?
    }

    fn view(
        &self,
        caller: &Caller,
        today: NaiveDate,
    ) -> Result<concordat_policy::AuditView, StoreError> {
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
        match self.policies.audit_view(&caller.partner, &audit, today) {
            Ok(v) => Ok(v),
            Err(RefusalReason::NoAgreement) => Err(StoreError::refused(
                ErrorKind::Forbidden,
                "forbidden",
                format!(
                    "no agreement lets {} read the audit trail",
                    caller.partner.id
                ),
            )),
            Err(reason) => Err(StoreError::refused(
                reason.kind(),
                reason.code(),
                reason.to_string(),
            )),
        }
    }
}
