//! Versioned storage of datasets and the validated upload path.
//!
//! Each dataset is a Delta Lake table under `<data_dir>/tables/<dataset>`: every commit
//! is atomic (data files first, then one log entry written with put-if-absent), so a
//! crash at any point leaves the last committed version intact and readable, and
//! earlier versions stay readable (time travel) until retention removes them.
//!
//! An upload is staged to a temporary file (with its SHA-256 and a hard byte cap),
//! inspected on its footer alone, decoded once and validated against the schema and the
//! uploader's row scope in a limited worker that also writes the data files to commit
//! ([`datafile`]), and only then committed: the server moves those files into the table
//! and commits the log entry that adds them. Nothing is committed unless every row
//! passes.
//!
//! Layout: [`Store`] (`store.rs`: tables, versions, staging, compaction), `check.rs`
//! (decode and validate one file; runs in the worker), `commit.rs` (move the worker's
//! files in and commit), [`worker`] (the sandboxed child process), [`Uploads`] (the
//! upload service every door calls: it asks `concordat-policy` for the grant, checks the
//! role and format, and records the request's one audit event), [`audit`] (the hash-
//! chained log), [`recorded`] (one event per request) and [`trail`] (reading the log as
//! the caller's audit agreements allow). The store itself never decides who may upload:
//! the upload service hands it the grant.

pub mod audit;
mod check;
mod cluster;
mod coded;
mod commit;
pub mod datafile;
pub mod fault;
pub mod inspect;
pub mod lease;
pub mod recorded;
pub mod shared;
mod store;
pub mod tokens;
pub mod trail;
mod uploads;
pub mod validate;
pub mod violation;
pub mod worker;

pub use check::Checked;
pub use inspect::{FileLimits, arrow_schema};
pub use shared::{Location, S3Settings, Shared};
pub use store::{Mode, StagedFile, Store, StoreConfig, UploadOutcome, UploadRequest, VersionInfo};
pub use uploads::{UploadCall, Uploaded, Uploads};
pub use violation::{Violation, Violations};
pub use worker::Validator;

use concordat_core::ErrorKind;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The upload broke the dataset's rules; nothing was committed.
    #[error("the upload failed validation ({} violations)", .0.count)]
    Validation(Violations),
    /// Over the configured upload size.
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// A concurrent commit won; retrying succeeds.
    #[error("another upload to {dataset} committed first; retry the upload")]
    Conflict { dataset: String },
    /// The dataset has no data yet, or no such version.
    #[error("{0}")]
    NotFound(String),
    /// The request body could not be read.
    #[error("the upload could not be received: {0}")]
    Receive(String),
    /// Refused before anything was read: a role, an agreement, a media type, a mode.
    /// The message names the rule or agreement, never a data value.
    #[error("{message}")]
    Refused {
        kind: ErrorKind,
        code: &'static str,
        message: String,
    },
    /// Storage failed; details are logged, not shown.
    #[error("storage error")]
    Internal(String),
}

impl StoreError {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Validation(_) => ErrorKind::Rejected,
            StoreError::Receive(_) => ErrorKind::InvalidInput,
            StoreError::Refused { kind, .. } => *kind,
            StoreError::TooLarge { .. } => ErrorKind::TooLarge,
            StoreError::Conflict { .. } => ErrorKind::Conflict,
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The stable code callers see.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Validation(_) => "validation_failed",
            StoreError::TooLarge { .. } => "too_large",
            StoreError::Conflict { .. } => "conflict",
            StoreError::NotFound(_) => "not_found",
            StoreError::Receive(_) => "bad_request",
            StoreError::Refused { code, .. } => code,
            StoreError::Internal(_) => "internal",
        }
    }

    /// The answer for a dataset the caller may not know of, or that does not exist:
    /// the same answer, so a refusal never tells which.
    pub fn unknown_dataset(name: &str) -> Self {
        let shown: String = name.chars().take(64).collect();
        Self::refused(
            ErrorKind::NotFound,
            "not_found",
            format!("no dataset `{shown}` is available to you"),
        )
    }

    /// A refusal of the given kind and code.
    pub fn refused(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        StoreError::Refused {
            kind,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> StoreError {
        StoreError::Internal(e.to_string())
    }
}
