//! The payments API error type and its one mapping to `application/problem+json`.
//!
//! Handlers return [`ApiError`]; causes stay in logs, the client sees a stable `type`, a short title,
//! field-level details where the input was at fault, and the request id. The status table is one
//! exhaustive `match` with no wildcard arm, so a new variant forces a decision.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::domain::payment::PaymentStatus;
use super::store::StoreError;

tokio::task_local! {
    /// The request id of the request being served, so that error bodies can carry it.
    pub static REQUEST_ID: String;
}

/// One problem with one input field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON path of the offending field, e.g. `amount`.
    pub field: String,
    /// What is wrong, in plain words.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Body of every error response (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    pub request_id: String,
}

/// Everything that can go wrong in a payments request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed request body: {detail}")]
    MalformedBody {
        detail: String,
        field: Option<String>,
    },
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("missing Idempotency-Key header")]
    IdempotencyKeyMissing,
    #[error("Idempotency-Key reused with a different request")]
    IdempotencyKeyReused,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    #[error("missing bearer token")]
    MissingToken,
    #[error("invalid access token")]
    InvalidToken,
    #[error("role not allowed")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("illegal status transition from {from} to {to}")]
    IllegalTransition {
        from: PaymentStatus,
        to: PaymentStatus,
    },
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("webhook signature invalid")]
    WebhookSignatureInvalid,
    #[error("webhook timestamp outside the tolerance window")]
    WebhookStale,
    #[error("webhook delivery already processed")]
    WebhookReplayed,
    #[error("database unavailable")]
    Unavailable(#[source] StoreError),
    #[error("internal error")]
    Internal(#[source] StoreError),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            ApiError::Unavailable(e)
        } else {
            ApiError::Internal(e)
        }
    }
}

impl ApiError {
    /// Status, stable problem type and title. Exhaustive on purpose: no `_` arm.
    pub fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::MalformedBody { .. } => (
                StatusCode::BAD_REQUEST,
                "malformed-body",
                "Malformed request body",
            ),
            ApiError::Invalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-failed",
                "Invalid input",
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Content-Type must be application/json",
            ),
            ApiError::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
            ),
            ApiError::InvalidQuery(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-query",
                "Invalid query parameters",
            ),
            ApiError::IdempotencyKeyMissing => (
                StatusCode::BAD_REQUEST,
                "idempotency-key-missing",
                "Idempotency-Key header is required",
            ),
            ApiError::IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key was already used with a different request",
            ),
            ApiError::InvalidCredentials => (
                StatusCode::UNAUTHORIZED,
                "invalid-credentials",
                "Invalid credentials",
            ),
            ApiError::InvalidRefreshToken => (
                StatusCode::UNAUTHORIZED,
                "invalid-refresh-token",
                "Refresh token is invalid, expired or revoked",
            ),
            ApiError::MissingToken => (
                StatusCode::UNAUTHORIZED,
                "missing-token",
                "Bearer token required",
            ),
            ApiError::InvalidToken => (
                StatusCode::UNAUTHORIZED,
                "invalid-token",
                "Access token is invalid or revoked",
            ),
            ApiError::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "Your role may not do this",
            ),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::IllegalTransition { .. } => (
                StatusCode::CONFLICT,
                "illegal-transition",
                "The payment cannot move to that status",
            ),
            ApiError::AlreadyExists(_) => {
                (StatusCode::CONFLICT, "already-exists", "Already exists")
            }
            ApiError::WebhookSignatureInvalid => (
                StatusCode::UNAUTHORIZED,
                "webhook-signature-invalid",
                "Webhook signature is missing or invalid",
            ),
            ApiError::WebhookStale => (
                StatusCode::UNAUTHORIZED,
                "webhook-stale",
                "Webhook timestamp is outside the tolerance window",
            ),
            ApiError::WebhookReplayed => (
                StatusCode::CONFLICT,
                "webhook-replayed",
                "Webhook delivery already processed",
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The service is temporarily unavailable",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            ApiError::MalformedBody { detail, .. } | ApiError::InvalidQuery(detail) => {
                Some(detail.clone())
            }
            ApiError::IllegalTransition { from, to } => {
                Some(format!("cannot move from {from} to {to}"))
            }
            ApiError::AlreadyExists(what) => Some(format!("{what} already exists")),
            _ => None,
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, kind, title) = self.classify();
        let errors = match self {
            ApiError::Invalid(errors) => errors.clone(),
            ApiError::MalformedBody {
                detail,
                field: Some(field),
            } => vec![FieldError::new(field.clone(), detail.clone())],
            _ => Vec::new(),
        };
        Problem {
            kind: format!("urn:ward:problem:{kind}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: self.detail(),
            errors,
            request_id: REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default(),
        }
    }
}

/// Shorthand for a single-field validation failure.
pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid(vec![FieldError::new(field, message)])
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(e) | ApiError::Unavailable(e) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(e), "request failed");
            }
            _ => tracing::debug!(error = %self, "request rejected"),
        }
        let problem = self.problem();
        let status = StatusCode::from_u16(problem.status).expect("status codes come from classify");
        let body = serde_json::to_vec(&problem).expect("problem serializes");
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The unread body makes the connection unusable; tell the client not to reuse it.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
