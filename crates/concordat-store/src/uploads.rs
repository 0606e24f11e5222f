//! The upload service: one upload, from any door, from the caller's credential to the
//! committed version and its audit event.
//!
//! It asks `concordat-policy` whether the partner may upload the dataset today and
//! which rows, checks the role and the declared format, stages the bytes (with their
//! hash and the size cap), has them validated and committed by the [`Store`], and records
//! exactly one audit event, for success and refusal alike.

use std::sync::Arc;

use bytes::Bytes;
use chrono::NaiveDate;
use concordat_core::{Caller, ErrorKind, Role, Schemas};
use concordat_policy::{ForPurpose, Policies, RefusalReason};
use futures::Stream;
use serde_json::json;

use crate::audit::{AuditLog, DatasetVersion};
use crate::recorded::Pending;
use crate::{Mode, Store, StoreError, UploadOutcome, UploadRequest};

/// Media types an upload body may be declared as.
pub const PARQUET_MEDIA_TYPES: [&str; 3] = [
    "application/vnd.apache.parquet",
    "application/x-parquet",
    "application/octet-stream",
];

/// One upload as a door received it.
#[derive(Debug)]
pub struct UploadCall<'a, S> {
    /// Who is uploading.
    pub caller: &'a Caller,
    /// The dataset named, as received (checked here).
    pub dataset: &'a str,
    /// `append` (the default) or `replace_periods`.
    pub mode: Option<&'a str>,
    /// The declared media type, if the door has one.
    pub media_type: Option<&'a str>,
    /// The declared length, if the door has one: refused early when over the cap.
    pub declared_bytes: Option<u64>,
    /// The bytes.
    pub body: S,
    /// The door, recorded in the audit event (`http`, `console`...).
    pub door: &'a str,
}

/// An upload that committed, or was a duplicate of a committed one.
#[derive(Debug)]
pub struct Uploaded {
    /// The version and what it holds.
    pub outcome: UploadOutcome,
    /// Bytes received.
    pub bytes: u64,
}

/// Uploads, checked against the agreements and audited.
#[derive(Debug, Clone)]
pub struct Uploads {
    store: Arc<Store>,
    policies: Arc<Policies>,
    audit: Arc<AuditLog>,
}

impl Uploads {
    /// The service over a store, the policies and the audit trail.
    pub fn new(store: Arc<Store>, policies: Arc<Policies>, audit: Arc<AuditLog>) -> Uploads {
        Uploads {
            store,
            policies,
            audit,
        }
    }

    /// Receives, validates and commits one upload; records its audit event.
    pub async fn upload<S, E>(
        &self,
        call: UploadCall<'_, S>,
        today: NaiveDate,
    ) -> Result<Uploaded, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut ev = Pending::new(self.audit.clone(), call.caller, "upload", call.door);
        ev.event().datasets = vec![DatasetVersion {
            dataset: call.dataset.chars().take(64).collect(),
            version: None,
        }];
        match self.run(call, today, &mut ev).await {
            Ok(done) => {
                let out = &done.outcome;
                let e = ev.event();
                e.datasets = vec![DatasetVersion {
                    dataset: out.dataset.clone(),
                    version: Some(out.version),
                }];
                e.rows = Some(out.rows);
                e.bytes = Some(done.bytes);
                let status = if out.duplicate { 200 } else { 201 };
                ev.ok(status).await?;
                Ok(done)
            }
            Err(err) => {
                ev.refused(err.kind(), err.code()).await?;
                Err(err)
            }
        }
    }

    async fn run<S, E>(
        &self,
        call: UploadCall<'_, S>,
        today: NaiveDate,
        ev: &mut Pending,
    ) -> Result<Uploaded, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let name = call.dataset;
        let partner = &call.caller.partner;
        let unknown = || StoreError::unknown_dataset(name);
        let schema = Schemas::builtin().get(name).ok_or_else(unknown)?;
        let dataset = &schema.name;
        let grant = match self.policies.upload_grant(partner, dataset, today) {
            Ok(g) => g,
            Err(reason) => {
                let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
                let visible = self
                    .policies
                    .effective_read(partner, dataset, &columns, ForPurpose::Any, today)
                    .is_ok();
                return Err(match reason {
                    _ if !visible => unknown(),
                    RefusalReason::NoAgreement => StoreError::refused(
                        ErrorKind::Forbidden,
                        "forbidden",
                        format!("no agreement lets {} upload {name}", partner.id),
                    ),
                    other => StoreError::refused(other.kind(), other.code(), other.to_string()),
                });
            }
        };
        let agreements = concordat_policy::ids(&grant.agreements);
        ev.event().agreements = agreements.clone();
        if !call.caller.has_any(&[Role::Uploader]) {
            return Err(StoreError::refused(
                ErrorKind::Forbidden,
                "forbidden",
                "uploads need the uploader role",
            ));
        }
        let mode: Mode = call.mode.unwrap_or("append").parse()?;
        let media = call
            .media_type
            .and_then(|m| m.split(';').next())
            .map(str::trim)
            .unwrap_or("");
        if !PARQUET_MEDIA_TYPES.contains(&media) {
            return Err(StoreError::refused(
                ErrorKind::UnsupportedMedia,
                "unsupported_media_type",
                "the body must be a Parquet file sent as application/vnd.apache.parquet",
            ));
        }
        let limit = self.store.config().max_upload_bytes;
        if call.declared_bytes.is_some_and(|n| n > limit) {
            return Err(StoreError::TooLarge { limit });
        }
        let receiving = std::time::Instant::now();
        let file = self.store.stage(call.body).await?;
        let bytes = file.bytes;
        tracing::info!(
            dataset = %dataset,
            bytes,
            receive_ms = receiving.elapsed().as_millis() as u64,
            "upload received"
        );
        ev.event().bytes = Some(bytes);
        let outcome = self
            .store
            .upload(UploadRequest {
                schema,
                mode,
                partner: partner.id.to_string(),
                subject: call.caller.subject.clone(),
                agreements,
                scope: grant.filter,
                file,
            })
            .await?;
        ev.event().detail = Some(json!({
            "mode": mode.as_str(),
            "sha256": outcome.sha256,
            "duplicate": outcome.duplicate,
            "periods": outcome.periods,
        }));
        Ok(Uploaded { outcome, bytes })
    }
}
