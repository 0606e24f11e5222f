//! Policy-enforced SQL.
//!
//! Each query runs in a fresh DataFusion session that holds only the tables the caller's
//! agreements allow for the declared purpose today, each wrapped in a [`PolicyTable`]
//! that removes hidden columns, coarsens masked ones and filters rows to the caller's
//! scope beneath a pushdown boundary. Statements other than a single read query, plan
//! nodes other than relational reads, table functions, file and URL access, recursive
//! CTEs and unbounded joins are refused. Queries run on their own runtime, with a memory
//! pool, a capped spill directory, a deadline that cancels the work, a per-partner
//! concurrency limit, and errors that never carry a data value.
//!
//! Layout: [`QueryService`] (`service.rs`) owns a request from any door, with its limits,
//! runtime and audit event; `plan.rs` plans one query; `catalog.rs` provides the tables
//! a caller gets, from `concordat-policy`'s one decision ([`concordat_policy::Policies::effective_read`]);
//! [`policy_table`] enforces rows and columns beneath the plan; `guard` refuses what is
//! not a read; [`sdc`] is disclosure control for aggregate-only data; [`session`] is the
//! DataFusion session every query (and the efficiency rebuild) runs in.

mod cache;
mod catalog;
mod error;
mod guard;
mod pgcatalog;
mod plan;
pub mod policy_table;
pub mod sdc;
mod service;
pub mod session;
mod stored;

use std::time::Duration;

pub use catalog::AUDIT_TABLE;
pub use datafusion::scalar::ScalarValue;
pub use error::QueryError;
pub use policy_table::{PolicyBoundary, PolicyTable, TableView};
pub use sdc::{Disclosure, MARKER};
pub use service::{DatasetRead, Described, QueryRequest, QueryRun, QueryService};

/// How the SQL text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// DataFusion's own SQL (HTTP, Flight SQL, the console).
    #[default]
    Standard,
    /// What Postgres clients send: PostgreSQL syntax, and the catalog a client looks
    /// itself up in (`pg_catalog`, `information_schema`, `version()`), answered from the
    /// caller's own datasets and columns, never from data.
    Postgres,
}

/// Limits on queries.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Longest SQL text accepted, in bytes.
    pub max_sql_bytes: usize,
    /// Memory one query may reserve before spilling or failing.
    pub memory_bytes: usize,
    /// Disk one query may spill to.
    pub spill_bytes: u64,
    /// Wall-clock limit, planning included.
    pub timeout: Duration,
    /// Queries one partner may run at once; more wait their turn.
    pub per_partner: usize,
    /// Queries of one partner that may wait for a turn; beyond them, 429 (retry).
    pub queue: usize,
    /// Worker threads of the query runtime.
    pub threads: usize,
    /// Queries running at once across all partners; others wait (within their timeout).
    pub concurrent: usize,
    /// Most groups an aggregate over aggregate-only data may produce.
    pub max_groups: usize,
    /// Bytes of answers kept for reuse while their tables are unchanged (0: none).
    pub answer_cache_bytes: usize,
    /// Bytes of plans kept for reuse while their tables are unchanged (0: none).
    pub plan_cache_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_sql_bytes: 64 * 1024,
            memory_bytes: 512 << 20,
            spill_bytes: 4 << 30,
            timeout: Duration::from_secs(60),
            per_partner: 4,
            queue: 64,
            threads: 2,
            concurrent: 4,
            max_groups: 100_000,
            answer_cache_bytes: 256 << 20,
            plan_cache_bytes: 64 << 20,
        }
    }
}
