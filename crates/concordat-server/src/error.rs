//! Failures as HTTP answers: the status comes from the error's kind
//! ([`ErrorKind::status`], the one mapping every door shares), the body is
//! `{"error": {"code", "message", "details"?}}`. Internal details are logged, never
//! returned.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use concordat_core::ErrorKind;
use concordat_store::StoreError;

use crate::auth::AuthError;

/// An error as the caller sees it: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug)]
pub struct ApiError {
    kind: ErrorKind,
    code: &'static str,
    message: String,
    details: Option<serde_json::Value>,
}

impl ApiError {
    /// An error of a kind, with its code and message.
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        if kind == ErrorKind::Internal {
            return Self::internal(message.into());
        }
        ApiError {
            kind,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, "bad_request", message)
    }

    /// 404 for a dataset the caller may not know of, or that does not exist: the same answer.
    pub fn unknown_dataset(name: &str) -> Self {
        StoreError::unknown_dataset(name).into()
    }

    /// 500; the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        ApiError {
            kind: ErrorKind::Internal,
            code: "internal",
            message: "internal error; it has been logged".into(),
            details: None,
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The error code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(d) = self.details {
            error["details"] = d;
        }
        let mut response = (status, Json(serde_json::json!({ "error": error }))).into_response();
        if self.kind == ErrorKind::Busy {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(ErrorKind::Unauthenticated, "unauthorized", e.to_string())
    }
}

impl From<concordat_query::QueryError> for ApiError {
    fn from(e: concordat_query::QueryError) -> Self {
        match &e {
            concordat_query::QueryError::Internal(detail)
            | concordat_query::QueryError::Audit(detail) => ApiError::internal(detail),
            _ => ApiError::new(e.kind(), e.code(), e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Validation(v) => ApiError::new(e.kind(), e.code(), e.to_string())
                .with_details(serde_json::to_value(v).unwrap_or_default()),
            StoreError::Internal(detail) => ApiError::internal(detail),
            _ => ApiError::new(e.kind(), e.code(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_429_with_retry_after_and_limits_are_429_without() {
        let busy = ApiError::from(concordat_query::QueryError::Busy { limit: 4 }).into_response();
        assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            busy.headers().get(axum::http::header::RETRY_AFTER),
            Some(&axum::http::HeaderValue::from_static("1"))
        );
        let timeout =
            ApiError::from(concordat_query::QueryError::Timeout { seconds: 60 }).into_response();
        assert_eq!(timeout.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            timeout
                .headers()
                .get(axum::http::header::RETRY_AFTER)
                .is_none()
        );
    }
}
