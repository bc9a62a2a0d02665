//! The error body every refusal carries (contract §7), `{"error": {"code", "message", "param"}}`,
//! the one table of its codes and the HTTP status each goes with, and [`FieldError`]: why one
//! field of a request was refused.

use serde::{Deserialize, Serialize};

/// The contract's error codes, each with its HTTP status. WebSocket `error` frames carry the
/// code without a status; [`ErrorCode::status`] recovers it.
///
/// ```
/// use cpod_proto::ErrorCode;
/// assert_eq!(ErrorCode::parse("rate_limited"), Some(ErrorCode::RateLimited));
/// assert_eq!(ErrorCode::RateLimited.status(), 429);
/// assert_eq!(ErrorCode::Forbidden.as_str(), "forbidden");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: a malformed request or a field that breaks a rule (`param` names it).
    InvalidRequest,
    /// 401: no key, an unknown or revoked key, or an expired ticket.
    Unauthorized,
    /// 403: the key's role or organization does not allow it.
    Forbidden,
    /// 404: no such resource, or one the key may not see.
    NotFound,
    /// 405: a known path with a method it does not take.
    MethodNotAllowed,
    /// 409: an idempotency key reused with another body, or a conflicting change.
    Conflict,
    /// 413: a body or batch over its limit.
    PayloadTooLarge,
    /// 415: a body that is not JSON.
    UnsupportedMediaType,
    /// 408: a request body that did not arrive in time (the connection is closed).
    RequestTimeout,
    /// 429: over the key's rate, or over its share of the memory for bodies in flight;
    /// `Retry-After` says when to come back.
    RateLimited,
    /// 431: a request head (request line and headers) over its limit, refused before it is
    /// read.
    RequestHeadersTooLarge,
    /// 503: the broker is shutting down, or has no memory left for one more body in flight.
    Unavailable,
    /// 507: the store's disk is full; writes are refused until space is freed (reads go on).
    StorageFull,
    /// 500: the broker failed; its log has the cause.
    Internal,
}

impl ErrorCode {
    const ALL: [ErrorCode; 14] = [
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RequestTimeout,
        ErrorCode::RateLimited,
        ErrorCode::RequestHeadersTooLarge,
        ErrorCode::Unavailable,
        ErrorCode::StorageFull,
        ErrorCode::Internal,
    ];

    /// The code as it travels, e.g. `invalid_request`.
    pub fn as_str(self) -> &'static str {
        self.entry().0
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        self.entry().1
    }

    /// The code named `raw`, if it is one of the contract's.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == raw)
    }

    /// The table: each code's name and status.
    fn entry(self) -> (&'static str, u16) {
        match self {
            ErrorCode::InvalidRequest => ("invalid_request", 400),
            ErrorCode::Unauthorized => ("unauthorized", 401),
            ErrorCode::Forbidden => ("forbidden", 403),
            ErrorCode::NotFound => ("not_found", 404),
            ErrorCode::MethodNotAllowed => ("method_not_allowed", 405),
            ErrorCode::Conflict => ("conflict", 409),
            ErrorCode::PayloadTooLarge => ("payload_too_large", 413),
            ErrorCode::UnsupportedMediaType => ("unsupported_media_type", 415),
            ErrorCode::RequestTimeout => ("request_timeout", 408),
            ErrorCode::RateLimited => ("rate_limited", 429),
            ErrorCode::RequestHeadersTooLarge => ("request_headers_too_large", 431),
            ErrorCode::Unavailable => ("unavailable", 503),
            ErrorCode::StorageFull => ("storage_full", 507),
            ErrorCode::Internal => ("internal", 500),
        }
    }
}

/// `{"error": {"code", "message", "param"}}`.
///
/// ```
/// let body: cpod_proto::ErrorBody = serde_json::from_str(
///     r#"{"error": {"code": "invalid_request", "message": "bad type", "param": "type"}}"#)?;
/// assert_eq!(body.error.param.as_deref(), Some("type"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(description = "`{\"error\": {\"code\", \"message\", \"param\"}}`.")
)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(description = "The error's code, message and, where one is at fault, parameter.")
)]
pub struct ErrorDetail {
    /// invalid_request, unauthorized, forbidden, not_found, method_not_allowed, conflict,
    /// payload_too_large, unsupported_media_type, request_timeout, rate_limited,
    /// request_headers_too_large, unavailable, storage_full, internal.
    pub code: String,
    /// The explanation, meant for people.
    pub message: String,
    /// The parameter at fault, where one is (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

impl ErrorBody {
    /// The body of an error with `code`.
    ///
    /// ```
    /// use cpod_proto::{ErrorBody, ErrorCode};
    /// let body = ErrorBody::new(ErrorCode::NotFound, "no such event", None);
    /// assert_eq!(serde_json::to_string(&body)?,
    ///     r#"{"error":{"code":"not_found","message":"no such event"}}"#);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn new(code: ErrorCode, message: impl Into<String>, param: Option<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.as_str().to_owned(),
                message: message.into(),
                param,
            },
        }
    }
}

/// Why a field was refused; `field` is the JSON name of the field at fault (`body` when the
/// request as a whole is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's JSON name, e.g. `resourceType`.
    pub field: &'static str,
    /// Why, for people.
    pub message: String,
}

impl FieldError {
    /// A refusal of `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_and_has_its_status() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert!((400..600).contains(&code.status()), "{code:?}");
        }
        assert_eq!(ErrorCode::parse("teapot"), None);
        assert_eq!(ErrorCode::InvalidRequest.status(), 400);
        assert_eq!(ErrorCode::Unavailable.status(), 503);
        assert_eq!(ErrorCode::RequestTimeout.status(), 408);
        assert_eq!(ErrorCode::RequestHeadersTooLarge.status(), 431);
        assert_eq!(ErrorCode::StorageFull.status(), 507);
    }

    #[test]
    fn a_param_travels_only_when_there_is_one() {
        let with = ErrorBody::new(ErrorCode::InvalidRequest, "bad", Some("type".into()));
        assert_eq!(
            serde_json::to_value(&with).unwrap(),
            serde_json::json!({"error": {"code": "invalid_request", "message": "bad", "param": "type"}})
        );
        let read: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"internal","message":"m"}}"#).unwrap();
        assert_eq!(read.error.param, None);
    }
}
