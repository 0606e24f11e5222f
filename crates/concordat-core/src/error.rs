//! The one error type of the core crate, and the kinds every crate maps its errors to.

/// What sort of failure an error is. Every error of every crate has one, and
/// [`ErrorKind::status`] is the one place a kind becomes a status code (HTTP, and the
/// status every door records in the audit event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller sent something malformed.
    InvalidInput,
    /// No credential, or one that does not verify.
    Unauthenticated,
    /// The thing does not exist, or the caller may not know it exists.
    NotFound,
    /// An agreement or a role refuses it.
    Forbidden,
    /// Another writer got there first.
    Conflict,
    /// Over a size limit.
    TooLarge,
    /// The body is not in a format the request accepts.
    UnsupportedMedia,
    /// None of the answer formats the caller accepts can be produced.
    NotAcceptable,
    /// Well-formed data that breaks the dataset's rules.
    Rejected,
    /// The caller already has as much running as it may; retrying later succeeds.
    Busy,
    /// The request ran into a time or memory limit.
    Limit,
    /// A dependency is not available right now.
    Unavailable,
    /// A bug or an environment failure; never shown in detail to callers.
    Internal,
}

impl ErrorKind {
    /// The status code for this kind.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidInput => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::NotAcceptable => 406,
            ErrorKind::Conflict => 409,
            ErrorKind::TooLarge => 413,
            ErrorKind::UnsupportedMedia => 415,
            ErrorKind::Rejected => 422,
            ErrorKind::Busy | ErrorKind::Limit => 429,
            ErrorKind::Internal => 500,
            ErrorKind::Unavailable => 503,
        }
    }

    /// What the audit trail records as the outcome of a request that ended so.
    pub fn outcome(self) -> &'static str {
        if self.status() >= 500 {
            "failed"
        } else {
            "refused"
        }
    }
}

/// Errors raised while loading or checking Concordat's own definitions.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A name did not have the required form.
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A definition file could not be read or did not validate.
    #[error("{file}: {message}")]
    Definition { file: String, message: String },
}

impl CoreError {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }

    pub(crate) fn definition(file: impl Into<String>, message: impl Into<String>) -> Self {
        CoreError::Definition {
            file: file.into(),
            message: message.into(),
        }
    }
}
