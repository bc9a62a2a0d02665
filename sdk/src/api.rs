//! The broker's HTTP API as every part of the SDK calls it: where the broker is, the key it is
//! spoken to with, one pooled HTTP client and the request timeout; requests that carry the key,
//! and the decoding of every answer into a value or an [`Error`].
//!
//! [`CpodClient`](crate::CpodClient) holds one and hands it to [`Events`](crate::Events),
//! [`Keys`](crate::Keys), [`Webhooks`](crate::Webhooks) and the live streams, which know nothing
//! of the client itself.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use url::Url;

use crate::error::{ApiError, Error, Result};

/// One broker and one key; cloning is cheap and clones share the HTTP client's pool.
#[derive(Clone)]
pub(crate) struct Api {
    inner: Arc<Settings>,
}

struct Settings {
    base_url: Url,
    api_key: String,
    http: reqwest::Client,
    timeout: Duration,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Api")
            .field("base_url", &self.inner.base_url.as_str())
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// An API handle; the caller has checked `base_url` and `api_key`.
    pub(crate) fn new(
        base_url: Url,
        api_key: String,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Settings {
                base_url,
                api_key,
                http,
                timeout,
            }),
        }
    }

    /// The broker's base URL.
    pub(crate) fn base_url(&self) -> &Url {
        &self.inner.base_url
    }

    /// The API key, for a request made without reqwest (the WebSocket upgrade).
    pub(crate) fn api_key(&self) -> &str {
        &self.inner.api_key
    }

    /// `base_url` joined with an absolute API path such as `/v1/events`.
    pub(crate) fn url(&self, path: &str) -> Url {
        let mut url = self.inner.base_url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}{path}"));
        url
    }

    /// A request with the key and the default timeout.
    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.request_url(method, self.url(path))
    }

    /// [`Api::request`] to a URL built by the caller (one with an escaped path segment).
    pub(crate) fn request_url(&self, method: Method, url: Url) -> RequestBuilder {
        self.inner
            .http
            .request(method, url)
            .bearer_auth(&self.inner.api_key)
            .timeout(self.inner.timeout)
    }

    /// A request with the key and no overall timeout (for streams).
    pub(crate) fn stream_request(&self, path: &str) -> RequestBuilder {
        self.inner
            .http
            .get(self.url(path))
            .bearer_auth(&self.inner.api_key)
    }

    /// Sends `request` and decodes a success as `T`, a failure as the broker's error.
    pub(crate) async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T> {
        let response = check(request.send().await?).await?;
        let bytes = response.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Protocol(format!(
                "{e} in {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })
    }
}

/// Passes a 2xx answer through and turns anything else into [`Error::Api`].
pub(crate) async fn check(response: Response) -> Result<Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = response.text().await.unwrap_or_default();
    Err(Error::Api(decode_error(status, &text, retry_after)))
}

/// The broker's `{"error": {...}}`, or a description of whatever came instead (a proxy's page).
pub(crate) fn decode_error(status: u16, text: &str, retry_after: Option<Duration>) -> ApiError {
    match serde_json::from_str::<cpod_proto::ErrorBody>(text) {
        Ok(cpod_proto::ErrorBody { error }) => ApiError {
            status,
            code: error.code,
            message: error.message,
            param: error.param,
            retry_after,
        },
        Err(_) => ApiError {
            status,
            code: format!("http_{status}"),
            message: format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>().trim()
            ),
            param: None,
            retry_after,
        },
    }
}

/// `value` made safe for one path segment.
pub(crate) fn path_segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(base: &str) -> Api {
        Api::new(
            Url::parse(base).unwrap(),
            "cpk_x".into(),
            reqwest::Client::new(),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn paths_join_onto_a_base_with_or_without_a_prefix() {
        assert_eq!(
            api("http://h:1").url("/v1/events").as_str(),
            "http://h:1/v1/events"
        );
        assert_eq!(
            api("http://h:1/events/").url("/v1/events").as_str(),
            "http://h:1/events/v1/events"
        );
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let shown = format!("{:?}", api("http://h:1"));
        assert!(
            shown.contains("http://h:1/") && !shown.contains("cpk_x"),
            "{shown}"
        );
    }

    #[test]
    fn broker_errors_keep_code_message_and_param() {
        let error = decode_error(
            400,
            r#"{"error":{"code":"invalid_request","message":"bad type","param":"type"}}"#,
            None,
        );
        assert_eq!(error.code, "invalid_request");
        assert_eq!(error.param.as_deref(), Some("type"));
        assert_eq!(
            error.to_string(),
            "bad type (invalid_request, HTTP 400, param type)"
        );
        let proxy = decode_error(502, "<html>Bad gateway</html>", None);
        assert_eq!(proxy.code, "http_502");
        assert!(proxy.is_transient());
    }

    #[test]
    fn path_segments_are_escaped_whole() {
        assert_eq!(path_segment("a b/c?d"), "a%20b%2Fc%3Fd");
    }
}
