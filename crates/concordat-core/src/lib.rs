//! Concordat's vocabulary: validated names, dataset schemas, partners and the shipped
//! reference geography.
//!
//! This crate does no I/O beyond reading the files it is pointed at and knows nothing of
//! HTTP, storage or query engines; every other crate builds on it.

pub mod caller;
pub mod error;
pub mod msg;
pub mod names;
pub mod partners;
pub mod reference;
pub mod schema;

pub use caller::Caller;
pub use error::{CoreError, ErrorKind};
pub use names::{
    AgreementId, DatasetName, FinancialYear, PartnerId, PartnerKind, PfaCode, Purpose, Quarter,
    Role,
};
pub use partners::{Partner, Partners};
pub use reference::{Force, Reference};
pub use schema::{ColumnSchema, ColumnType, DatasetLevel, DatasetSchema, Schemas};
