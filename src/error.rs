//! The one error type every HTTP answer goes through: the contract's
//! `{"error": {"code", "message", "param"}}` (§7). The body and the code table (each code's
//! status) are the wire crate's ([`cpod_proto::error`]), which the clients read them with and
//! which the OpenAPI document describes (its `openapi` feature).
//!
//! Handlers return `Result<_, ApiError>`; extractor failures (body too large, bad JSON, bad
//! query, bad path) and unknown routes are mapped here too, so no failure escapes as actix's
//! plain-text default. A 500 says nothing of internals: the cause is logged once, here.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
pub use cpod_proto::{ErrorBody, ErrorCode, ErrorDetail};

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
    #[error("{message}")]
    MethodNotAllowed {
        message: String,
        /// The methods the path takes, for the `Allow` header.
        allow: &'static str,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// `param` names the attribute at fault when it is one (a CloudEvent's `datacontenttype`).
    #[error("{message}")]
    UnsupportedMediaType {
        message: String,
        param: Option<String>,
    },
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("{0}")]
    RequestTimeout(String),
    #[error("the broker is shutting down")]
    Unavailable,
    /// Not ready for the reason given (readiness): 503 `unavailable`.
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("the broker's storage is full: writes are refused until space is freed (reads go on)")]
    StorageFull,
    /// 503 `unavailable` for want of capacity (not shutting down): worth retrying at once.
    #[error("{0}")]
    Overloaded(String),
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

    /// A 415, naming the parameter (or CloudEvents attribute) at fault.
    pub fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::UnsupportedMediaType {
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

    /// The contract's error code (§7), also used by WebSocket error frames.
    pub fn code(&self) -> &'static str {
        self.kind().as_str()
    }

    /// Which of the contract's codes this is; its status comes from the same table.
    pub fn kind(&self) -> ErrorCode {
        match self {
            ApiError::InvalidRequest { .. } => ErrorCode::InvalidRequest,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            ApiError::UnsupportedMediaType { .. } => ErrorCode::UnsupportedMediaType,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::RequestTimeout(_) => ErrorCode::RequestTimeout,
            ApiError::Unavailable | ApiError::NotReady(_) | ApiError::Overloaded(_) => {
                ErrorCode::Unavailable
            }
            ApiError::StorageFull => ErrorCode::StorageFull,
            ApiError::Internal(_) => ErrorCode::Internal,
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

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.kind().status()).expect("the code table holds valid statuses")
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
        let param = match self {
            ApiError::InvalidRequest { param, .. }
            | ApiError::UnsupportedMediaType { param, .. } => param.clone(),
            _ => None,
        };
        let body = ErrorBody::new(self.kind(), self.to_string(), param);
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
            ApiError::Overloaded(_) => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            _ => {}
        }
        if let ApiError::MethodNotAllowed { allow, .. } = self {
            response.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
        }
        if let ApiError::RequestTimeout(_) = self {
            // The rest of the body may still come: this connection cannot carry another request.
            response.force_close();
        }
        if let ApiError::Unavailable = self {
            // Shutting down or the store unreachable: another node, or this one shortly.
            response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
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

/// The route for the methods a known path does not take: 405 naming them in `Allow`
/// (`allow`: e.g. `"GET, POST"`).
pub fn method_not_allowed(allow: &'static str) -> actix_web::Route {
    actix_web::web::to(move |req: actix_web::HttpRequest| async move {
        Err::<actix_web::HttpResponse, _>(ApiError::MethodNotAllowed {
            message: format!(
                "{} is not allowed on {}; use {allow}",
                req.method(),
                req.path()
            ),
            allow,
        })
    })
}
