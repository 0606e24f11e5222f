//! Why a query did not run or did not finish. Messages never carry a data value.

use concordat_core::ErrorKind;
use datafusion::common::DataFusionError;

/// Why a query did not run or did not finish.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    /// The SQL does not parse or plan (unknown table or column, syntax, types).
    #[error("{0}")]
    Sql(String),
    /// Not a read query, or a refused construct.
    #[error("{0}")]
    NotAllowed(String),
    /// An agreement or a role refuses it; the message names the agreement or rule.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// The request is malformed at the door (a body, a header, a format).
    #[error("{message}")]
    Door {
        kind: ErrorKind,
        code: &'static str,
        message: String,
    },
    /// The purpose is not one agreements can name.
    #[error(
        "unknown purpose `{0}`; purposes are: reducing-reoffending, performance-scrutiny, efficiency-comparison, inspection, audit"
    )]
    Purpose(String),
    /// The SQL text is too long.
    #[error("the SQL text is longer than {limit} bytes")]
    SqlTooLarge { limit: usize },
    /// The partner already runs as many queries as allowed, and as many wait.
    #[error(
        "your organisation already has {limit} queries running and as many waiting as may wait; retry in a moment"
    )]
    Busy { limit: usize },
    /// Over the time limit; the work was cancelled.
    #[error("the query ran longer than {seconds} seconds and was cancelled")]
    Timeout { seconds: u64 },
    /// Over the memory limit.
    #[error(
        "the query needed more memory (or spill space) than one query may use; aggregate more, or select fewer columns"
    )]
    Memory,
    /// Evaluating an expression failed; no value is named.
    #[error("the query failed while evaluating data: {0}")]
    Execution(&'static str),
    /// The audit event could not be recorded, so the answer is withheld (fail closed).
    #[error("internal error")]
    Audit(String),
    /// A bug or storage failure; logged, not shown.
    #[error("internal error")]
    Internal(String),
}

impl QueryError {
    /// The kind, which decides the status at every door.
    pub fn kind(&self) -> ErrorKind {
        match self {
            QueryError::Sql(_)
            | QueryError::NotAllowed(_)
            | QueryError::Purpose(_)
            | QueryError::Execution(_) => ErrorKind::InvalidInput,
            QueryError::Refused { code, .. } if *code == "not_found" => ErrorKind::NotFound,
            QueryError::Refused { .. } => ErrorKind::Forbidden,
            QueryError::Door { kind, .. } => *kind,
            QueryError::SqlTooLarge { .. } => ErrorKind::TooLarge,
            QueryError::Busy { .. } => ErrorKind::Busy,
            QueryError::Timeout { .. } | QueryError::Memory => ErrorKind::Limit,
            QueryError::Audit(_) | QueryError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::Sql(_) => "sql",
            QueryError::NotAllowed(_) => "not_allowed",
            QueryError::Refused { code, .. } | QueryError::Door { code, .. } => code,
            QueryError::Purpose(_) => "purpose",
            QueryError::SqlTooLarge { .. } => "too_large",
            QueryError::Busy { .. } => "too_many_queries",
            QueryError::Timeout { .. } => "timeout",
            QueryError::Memory => "memory_limit",
            QueryError::Execution(_) => "query_failed",
            QueryError::Audit(_) | QueryError::Internal(_) => "internal",
        }
    }

    /// A refusal at the door, before the query service saw the SQL.
    pub fn door(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> QueryError {
        QueryError::Door {
            kind,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> QueryError {
        QueryError::Internal(e.to_string())
    }
}

/// A planning error as the caller may see it.
pub(crate) fn sql_error(e: DataFusionError) -> QueryError {
    let text = e.strip_backtrace();
    let text = text
        .trim_start_matches("Error during planning: ")
        .trim_start_matches("SQL error: ")
        .trim_start_matches("Schema error: ")
        .trim_start_matches("This feature is not implemented: ");
    QueryError::Sql(text.chars().take(500).collect())
}

/// Maps an error raised while evaluating data to a message that names no value.
pub(crate) fn classify(e: &DataFusionError) -> QueryError {
    tracing::debug!(error = %e, "query execution error");
    use arrow::error::ArrowError as A;
    match e.find_root() {
        DataFusionError::ResourcesExhausted(_) => QueryError::Memory,
        DataFusionError::ArrowError(a, _) => match a.as_ref() {
            A::DivideByZero => QueryError::Execution("division by zero"),
            // Spilling past the disk cap surfaces as an I/O error from the spill writer.
            A::IoError(..) => QueryError::Memory,
            A::CastError(_) | A::ParseError(_) => {
                QueryError::Execution("a value could not be converted to the requested type")
            }
            A::ArithmeticOverflow(_) | A::ComputeError(_) => {
                QueryError::Execution("arithmetic overflow")
            }
            _ => QueryError::Execution("an expression could not be evaluated"),
        },
        _ => QueryError::Execution("an expression could not be evaluated"),
    }
}
