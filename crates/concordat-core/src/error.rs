//! The one error type of the core crate, and the kinds every crate maps its errors to.

/// What sort of failure an error is; only the server turns kinds into status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller sent something malformed.
    InvalidInput,
    /// The thing does not exist, or the caller may not know it exists.
    NotFound,
    /// An agreement refuses it.
    Forbidden,
    /// Another writer got there first.
    Conflict,
    /// Over a size or rate limit.
    TooLarge,
    /// A dependency is not available right now.
    Unavailable,
    /// A bug or an environment failure; never shown in detail to callers.
    Internal,
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
