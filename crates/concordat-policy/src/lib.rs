//! Data-sharing agreements (MoUs) and the decisions they make.
//!
//! Everything here is pure: given the partners, the agreements and a date, say who may
//! upload or read which rows and columns of which dataset, and which agreement says so.
//! Default deny: anything no agreement in force grants is refused.

mod agreement;
mod decide;
mod effective;
mod explain;

pub use agreement::{
    Access, Agreement, AuditGrant, AuditScope, ColumnRule, DatasetRead, DatasetUpload, Generalise,
    PartySet, RowScope,
};
pub use decide::{
    AuditView, CombinedView, Policies, ReadGrant, RefusalReason, ScopeFilter, UploadGrant,
};
pub use effective::{DisclosureTerms, EffectiveRead, ForPurpose};
pub use explain::Explanation;

/// Agreement ids as text, for audit events and messages.
pub fn ids(agreements: &[concordat_core::AgreementId]) -> Vec<String> {
    agreements.iter().map(|a| a.as_str().to_owned()).collect()
}

/// Errors raised while loading policies.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A policy file did not parse or validate.
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}
