//! The REST error type: every failure becomes `{"error": "<snake_case_code>", "message": "<sentence>"}` with the
//! right status. 5xx bodies carry a fixed message; the cause goes to the log.

use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use serde::Serialize;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{message}")]
    InvalidParams { field: String, message: String },
    #[error("unknown command `{0}`")]
    UnknownCommand(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotConnected(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    QueueFull(String),
    #[error("{0}")]
    DeviceTimeout(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Forbidden(String),
    /// 401 asking for HTTP Basic credentials (charge point handshakes).
    #[error("{0}")]
    BasicAuthRequired(String),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// 429 from a rate limit or the wrong-token back-off; the seconds to wait go in `Retry-After`.
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    #[error("internal error")]
    Internal(String),
    /// 402: the room's balance does not cover the price (billing).
    #[error("{0}")]
    PaymentRequired(String),
    /// 401 for an endpoint's billing JWT or TOTP code (not the admin bearer token).
    #[error("{0}")]
    InvalidToken(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// Stable machine-readable code; scripts match on it, so never rename one.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::InvalidParams { .. } => "invalid_params",
            ApiError::UnknownCommand(_) => "unknown_command",
            ApiError::NotFound(_) => "not_found",
            ApiError::NotConnected(_) => "not_connected",
            ApiError::Conflict(_) => "conflict",
            ApiError::QueueFull(_) => "queue_full",
            ApiError::DeviceTimeout(_) => "device_timeout",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::BasicAuthRequired(_) => "unauthorized",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Internal(_) => "internal_error",
            ApiError::PaymentRequired(_) => "payment_required",
            ApiError::InvalidToken(_) => "invalid_token",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_)
            | ApiError::InvalidParams { .. }
            | ApiError::UnknownCommand(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::NotConnected(_) | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::QueueFull(_) | ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::DeviceTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BasicAuthRequired(_) => StatusCode::UNAUTHORIZED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::PaymentRequired(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (status, body) = self.parts();
        let mut response = HttpResponse::build(status);
        match self {
            ApiError::Unauthorized => {
                response.insert_header(("WWW-Authenticate", "Bearer"));
            }
            ApiError::BasicAuthRequired(_) => {
                response.insert_header(("WWW-Authenticate", "Basic realm=\"gatehouse\""));
            }
            ApiError::RateLimited { retry_after, .. } => {
                response.insert_header(("Retry-After", retry_after.to_string()));
            }
            _ => {}
        }
        response.json(body)
    }
}

impl ApiError {
    /// Status and JSON body, as sent to the client (also carried verbatim across the cluster).
    pub fn parts(&self) -> (StatusCode, serde_json::Value) {
        let message = match self {
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error answering a REST call");
                "the server could not complete the request; see its log".to_string()
            }
            other => other.to_string(),
        };
        let field = match self {
            ApiError::InvalidParams { field, .. } => Some(field.as_str()),
            _ => None,
        };
        let body = ErrorBody {
            error: self.code(),
            message,
            field,
        };
        (
            self.status_code(),
            serde_json::to_value(body).unwrap_or(serde_json::Value::Null),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        ApiError::Internal(err.to_string())
    }
}

/// Routes malformed JSON bodies through [`ApiError`] instead of actix's plain-text answer.
pub fn json_error_handler(
    err: actix_web::error::JsonPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    match err {
        E::Overflow { limit } | E::OverflowKnownLength { limit, .. } => {
            ApiError::PayloadTooLarge(format!("request body is larger than {limit} bytes")).into()
        }
        E::ContentType => {
            ApiError::BadRequest("send the body as JSON with Content-Type: application/json".into())
                .into()
        }
        other => ApiError::BadRequest(format!("request body is not valid JSON: {other}")).into(),
    }
}

/// Routes malformed query strings through [`ApiError`].
pub fn query_error_handler(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::BadRequest(format!("invalid query string: {err}")).into()
}

/// Routes malformed path segments through [`ApiError`].
pub fn path_error_handler(
    err: actix_web::error::PathError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::BadRequest(format!("invalid path: {err}")).into()
}
