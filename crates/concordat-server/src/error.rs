//! The one place where failures become HTTP statuses and JSON bodies.
//! Internal details are logged, never returned.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use concordat_core::ErrorKind;
use concordat_store::StoreError;

use crate::auth::AuthError;

/// An error as the caller sees it: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<serde_json::Value>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 403, naming the agreement or rule.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 for a dataset the caller may not know of, or that does not exist: the same answer.
    pub fn unknown_dataset(name: &str) -> Self {
        let shown: String = name.chars().take(64).collect();
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dataset `{shown}` is available to you"),
        )
    }

    /// 500; the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }

    /// Adds details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(d) = self.details {
            error["details"] = d;
        }
        let mut response =
            (self.status, Json(serde_json::json!({ "error": error }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
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
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
    }
}

impl From<concordat_query::QueryError> for ApiError {
    fn from(e: concordat_query::QueryError) -> Self {
        use concordat_query::QueryError as Q;
        let status = match &e {
            Q::Sql(_) | Q::NotAllowed(_) | Q::Purpose(_) | Q::Execution(_) => {
                StatusCode::BAD_REQUEST
            }
            Q::Refused { .. } => StatusCode::FORBIDDEN,
            Q::SqlTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Q::Busy { .. } | Q::Timeout { .. } | Q::Memory => StatusCode::TOO_MANY_REQUESTS,
            Q::Internal(detail) => return ApiError::internal(detail),
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match (&e, e.kind()) {
            (StoreError::Validation(v), _) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                e.to_string(),
            )
            .with_details(serde_json::to_value(v).unwrap_or_default()),
            (StoreError::Internal(detail), _) => ApiError::internal(detail),
            (_, ErrorKind::TooLarge) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            (_, ErrorKind::Conflict) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            (_, ErrorKind::NotFound) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            (_, ErrorKind::Forbidden) => ApiError::forbidden(e.to_string()),
            (_, ErrorKind::InvalidInput) => ApiError::bad_request(e.to_string()),
            (_, ErrorKind::Unavailable) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            (_, ErrorKind::Internal) => ApiError::internal(e),
        }
    }
}
