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

    /// Whether a retry may succeed: a transient broker answer or a transport failure. Failures
    /// that come back on every attempt are not: a request that cannot be built (a bad URL or
    /// header), too many redirects, a TLS failure (an untrusted or wrong certificate, a peer
    /// that does not speak TLS), a WebSocket URL or handshake that is malformed.
    ///
    /// ```
    /// assert!(!cpod_sdk::Error::Config("bad".into()).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        use tokio_tungstenite::tungstenite::Error as Ws;
        match self {
            Error::Api(e) => e.is_transient(),
            // Bodies are decoded by this SDK (into `Protocol`): a reqwest decode error is a body
            // cut short, as when the broker goes away mid-stream.
            Error::Http(e) => !(e.is_builder() || e.is_redirect() || is_tls_failure(e)),
            Error::WebSocket(e) => match &**e {
                Ws::Tls(_) | Ws::Url(_) | Ws::HttpFormat(_) | Ws::Http(_) => false,
                Ws::Io(io) => !is_tls_failure(io),
                _ => true,
            },
            Error::Timeout(_) => true,
            Error::Protocol(_) | Error::Config(_) => false,
        }
    }
}

/// `error`'s message followed by each cause in its chain that the message does not already
/// show, so that "cannot reach the broker" says why (e.g. `Connection refused`). The SDK's
/// streams report their reconnections with it; an application can describe any error so.
///
/// ```
/// #[derive(Debug)]
/// struct Unreachable(std::io::Error);
/// impl std::fmt::Display for Unreachable {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("cannot reach the broker")
///     }
/// }
/// impl std::error::Error for Unreachable {
///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
///         Some(&self.0)
///     }
/// }
/// let error = Unreachable(std::io::Error::other("Connection refused"));
/// assert_eq!(cpod_sdk::error::with_causes(&error), "cannot reach the broker: Connection refused");
/// let plain = cpod_sdk::Error::Config("no API key".into());
/// assert_eq!(cpod_sdk::error::with_causes(&plain), "no API key");
/// ```
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let message = error.to_string();
        if !message.is_empty() && !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = error.source();
    }
    text
}

/// Whether a TLS error (rustls's) is anywhere in `error`'s chain, including inside the
/// `io::Error`s that carry it (whose `source()` skips the error they wrap).
fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && is_tls_failure(inner)
        {
            return true;
        }
        next = error.source();
    }
    false
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(error: tokio_tungstenite::tungstenite::Error) -> Self {
        Error::WebSocket(Box::new(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::error::{TlsError, UrlError};

    #[test]
    fn websocket_failures_that_come_back_every_time_are_permanent() {
        use tokio_tungstenite::tungstenite::Error as Ws;
        let permanent = [
            Error::from(Ws::Url(UrlError::NoHostName)),
            Error::from(Ws::Tls(TlsError::InvalidDnsName)),
            Error::from(Ws::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            ))),
        ];
        for error in permanent {
            assert!(!error.is_transient(), "{error:?}");
        }
        let transient = [
            Error::from(Ws::Io(std::io::ErrorKind::ConnectionRefused.into())),
            Error::from(Ws::ConnectionClosed),
            Error::Timeout(Duration::from_secs(1)),
        ];
        for error in transient {
            assert!(error.is_transient(), "{error:?}");
        }
    }

    #[test]
    fn causes_are_listed_once_each() {
        let io = std::io::Error::other(rustls::Error::General("bad record".into()));
        let error = Error::from(tokio_tungstenite::tungstenite::Error::Io(io));
        let text = with_causes(&error);
        assert_eq!(text.matches("bad record").count(), 1, "{text}");
        assert!(text.starts_with("WebSocket: "), "{text}");
    }
}
