//! The one error type every HTTP answer goes through: the contract's
//! `{"error": {"code", "message", "param"}}` (§7) with its code table.
//!
//! Handlers return `Result<_, ApiError>`; extractor failures (body too large, bad JSON, bad
//! query, bad path) and unknown routes are mapped here too, so no failure escapes as actix's
//! plain-text default. A 500 says nothing of internals: the cause is logged once, here.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::event::FieldError;

/// `Retry-After` of a 503: a restarting broker (or another node) is back within seconds.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

/// `Retry-After` of a 507: space is freed by an operator, not in a moment.
const STORAGE_FULL_RETRY_AFTER_SECS: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the broker is shutting down")]
    Unavailable,
    /// Not ready for the reason given (readiness): 503 `unavailable`.
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("the broker's storage is full: writes are refused until space is freed (reads go on)")]
    StorageFull,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    pub fn invalid_body(message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    /// A field error found inside the element `index` of a list parameter such as `events`.
    pub fn invalid_at(list: &str, index: usize, error: FieldError) -> Self {
        let param = if error.field == "body" {
            format!("{list}[{index}]")
        } else {
            format!("{list}[{index}].{}", error.field)
        };
        ApiError::InvalidRequest {
            message: format!("{list}[{index}]: {}", error.message),
            param: Some(param),
        }
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::NotFound(format!("no such {what}"))
    }

    /// The contract's error code (§7): the one table, also used by WebSocket error frames.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable | ApiError::NotReady(_) => "unavailable",
            ApiError::StorageFull => "storage_full",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        let param = (e.field != "body").then(|| e.field.to_owned());
        ApiError::InvalidRequest {
            message: e.message,
            param,
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<&'a str>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable | ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
        let param = match self {
            ApiError::InvalidRequest { param, .. } => param.as_deref(),
            _ => None,
        };
        let body = Body {
            error: Inner {
                code: self.code(),
                message: self.to_string(),
                param,
            },
        };
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::RateLimited { retry_after_secs } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            ApiError::Unavailable | ApiError::NotReady(_) => {
                response.insert_header((header::RETRY_AFTER, UNAVAILABLE_RETRY_AFTER_SECS));
            }
            ApiError::StorageFull => {
                response.insert_header((header::RETRY_AFTER, STORAGE_FULL_RETRY_AFTER_SECS));
            }
            _ => {}
        }
        if let ApiError::Unauthorized(_) = self {
            response.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"cpod-events\""),
            ));
        }
        response.json(body)
    }
}

/// Maps actix's body-size and payload errors to the contract's codes.
pub fn payload_error(error: actix_web::error::PayloadError) -> ApiError {
    use actix_web::error::PayloadError;
    match error {
        PayloadError::Overflow => ApiError::PayloadTooLarge("the request body is too large".into()),
        other => ApiError::invalid_body(format!("the request body could not be read: {other}")),
    }
}

/// The answer for a path no route serves.
pub async fn unknown_route() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such endpoint".into()))
}

/// The answer for a known path with a method it does not take.
pub async fn method_not_allowed(
    req: actix_web::HttpRequest,
) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.path()
    )))
}
