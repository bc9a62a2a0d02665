//! What can go wrong talking to the broker: its own JSON errors, kept whole ([`ApiError`]), and
//! the transport, decoding and configuration failures around them.

use std::time::Duration;

/// The SDK's result type.
///
/// ```
/// fn check() -> cpod_sdk::Result<()> { Ok(()) }
/// assert!(check().is_ok());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error answered by the broker: `{"error": {"code", "message", "param"}}` and its status.
///
/// ```
/// let error = cpod_sdk::ApiError {
///     status: 403,
///     code: "forbidden".into(),
///     message: "an app key may only emit custom.* events".into(),
///     param: None,
///     retry_after: None,
/// };
/// assert_eq!(error.to_string(), "an app key may only emit custom.* events (forbidden, HTTP 403)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code}, HTTP {status}{})", param.as_deref().map(|p| format!(", param {p}")).unwrap_or_default())]
pub struct ApiError {
    /// The HTTP status, e.g. 400.
    pub status: u16,
    /// The contract's code: `invalid_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `payload_too_large`, `unsupported_media_type`, `rate_limited`, `internal`.
    pub code: String,
    /// The broker's explanation, meant for people.
    pub message: String,
    /// The parameter at fault, where one is.
    pub param: Option<String>,
    /// `Retry-After` of a 429.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// Whether trying again later may succeed (429, 408 and 5xx), as opposed to a request the
    /// broker will refuse every time.
    ///
    /// ```
    /// # let mut error = cpod_sdk::ApiError { status: 503, code: "internal".into(),
    /// #     message: "m".into(), param: None, retry_after: None };
    /// assert!(error.is_transient());
    /// error.status = 401;
    /// assert!(!error.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        self.status == 429 || self.status == 408 || self.status >= 500
    }
}

/// Every failure of the SDK.
///
/// ```
/// let error = cpod_sdk::Error::Config("CPOD_API_KEY is not set".into());
/// assert_eq!(error.code(), None);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker refused the request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The broker could not be reached, or the connection broke.
    #[error("cannot reach the broker: {0}")]
    Http(#[from] reqwest::Error),
    /// The WebSocket failed.
    #[error("WebSocket: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// The broker did not answer in time.
    #[error("no answer from the broker within {0:?}")]
    Timeout(Duration),
    /// The broker answered something this SDK does not understand.
    #[error("unexpected answer from the broker: {0}")]
    Protocol(String),
    /// The client is configured wrongly (a missing variable, a bad URL or key).
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// The broker's error code, when the broker answered with one.
    ///
    /// ```
    /// # let error = cpod_sdk::Error::Api(cpod_sdk::ApiError { status: 404, code: "not_found".into(),
    /// #     message: "no such event".into(), param: None, retry_after: None });
    /// assert_eq!(error.code(), Some("not_found"));
    /// ```
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api(e) => Some(&e.code),
            _ => None,
        }
    }

    /// Whether a retry may succeed: a transient broker answer or a transport failure.
    ///
    /// ```
    /// assert!(!cpod_sdk::Error::Config("bad".into()).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Api(e) => e.is_transient(),
            // Bodies are decoded by this SDK (into `Protocol`): a reqwest decode error is a body
            // cut short, as when the broker goes away mid-stream.
            Error::Http(e) => !e.is_builder(),
            Error::WebSocket(_) | Error::Timeout(_) => true,
            Error::Protocol(_) | Error::Config(_) => false,
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(error: tokio_tungstenite::tungstenite::Error) -> Self {
        Error::WebSocket(Box::new(error))
    }
}
