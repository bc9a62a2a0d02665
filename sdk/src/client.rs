//! The client handle: where the broker is, the key it is spoken to with, one pooled HTTP client,
//! and the decoding of every answer into a value or an [`Error`].

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use url::Url;

use crate::error::{ApiError, Error, Result};
use crate::events::{Events, LocalSubscriptions};
use crate::keys::Keys;
use crate::webhooks::Webhooks;

/// How long a request (not a stream) may take unless the builder says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle on one broker with one API key. Cloning is cheap and clones share everything,
/// local subscriptions included.
///
/// ```
/// let client = cpod_sdk::CpodClient::new("http://127.0.0.1:8080", "cpk_0123456789abcdefghijklmnopqrstuv")?;
/// assert_eq!(client.base_url().as_str(), "http://127.0.0.1:8080/");
/// # Ok::<(), cpod_sdk::Error>(())
/// ```
#[derive(Clone)]
pub struct CpodClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) base_url: Url,
    pub(crate) api_key: String,
    pub(crate) http: reqwest::Client,
    pub(crate) timeout: Duration,
    pub(crate) subscriptions: LocalSubscriptions,
}

impl std::fmt::Debug for CpodClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CpodClient")
            .field("base_url", &self.inner.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl CpodClient {
    /// A client for the broker at `base_url` (e.g. `http://127.0.0.1:8080`) with `api_key`.
    ///
    /// ```
    /// let error = cpod_sdk::CpodClient::new("not a url", "cpk_x").unwrap_err();
    /// assert!(error.to_string().contains("base URL"));
    /// ```
    pub fn new(base_url: &str, api_key: &str) -> Result<Self> {
        Self::builder().base_url(base_url).api_key(api_key).build()
    }

    /// A client from `CPOD_BASE_URL` and `CPOD_API_KEY`, as cPod's own SDKs read them.
    ///
    /// ```no_run
    /// let client = cpod_sdk::CpodClient::from_env()?;
    /// # Ok::<(), cpod_sdk::Error>(())
    /// ```
    pub fn from_env() -> Result<Self> {
        let read = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| Error::Config(format!("{name} is not set")))
        };
        Self::new(&read("CPOD_BASE_URL")?, &read("CPOD_API_KEY")?)
    }

    /// A builder, for a request timeout or an HTTP client of your own.
    ///
    /// ```
    /// let client = cpod_sdk::CpodClient::builder()
    ///     .base_url("http://127.0.0.1:8080")
    ///     .api_key("cpk_0123456789abcdefghijklmnopqrstuv")
    ///     .timeout(std::time::Duration::from_secs(5))
    ///     .build()?;
    /// # Ok::<(), cpod_sdk::Error>(())
    /// ```
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Events: history, emit, subscriptions and live streams.
    ///
    /// ```
    /// # let client = cpod_sdk::CpodClient::new("http://127.0.0.1:8080", "cpk_x")?;
    /// let events = client.events();
    /// # Ok::<(), cpod_sdk::Error>(())
    /// ```
    pub fn events(&self) -> Events {
        Events {
            client: self.clone(),
        }
    }

    /// API keys: create, list, revoke.
    ///
    /// ```
    /// # let client = cpod_sdk::CpodClient::new("http://127.0.0.1:8080", "cpk_x")?;
    /// let keys = client.keys();
    /// # Ok::<(), cpod_sdk::Error>(())
    /// ```
    pub fn keys(&self) -> Keys {
        Keys {
            client: self.clone(),
        }
    }

    /// Webhook endpoints and their deliveries.
    ///
    /// ```
    /// # let client = cpod_sdk::CpodClient::new("http://127.0.0.1:8080", "cpk_x")?;
    /// let webhooks = client.webhooks();
    /// # Ok::<(), cpod_sdk::Error>(())
    /// ```
    pub fn webhooks(&self) -> Webhooks {
        Webhooks {
            client: self.clone(),
        }
    }

    /// The broker's base URL.
    ///
    /// ```
    /// # let client = cpod_sdk::CpodClient::new("https://events.example.com/", "cpk_x")?;
    /// assert_eq!(client.base_url().host_str(), Some("events.example.com"));
    /// # Ok::<(), cpod_sdk::Error>(())
    /// ```
    pub fn base_url(&self) -> &Url {
        &self.inner.base_url
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
        self.inner
            .http
            .request(method, self.url(path))
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

/// Builds a [`CpodClient`].
///
/// ```
/// let client = cpod_sdk::ClientBuilder::default()
///     .base_url("http://127.0.0.1:8080")
///     .api_key("cpk_0123456789abcdefghijklmnopqrstuv")
///     .build()?;
/// # Ok::<(), cpod_sdk::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct ClientBuilder {
    base_url: Option<String>,
    api_key: Option<String>,
    timeout: Option<Duration>,
    http: Option<reqwest::Client>,
}

impl ClientBuilder {
    /// The broker, e.g. `http://127.0.0.1:8080` (a path prefix is kept).
    ///
    /// ```
    /// let builder = cpod_sdk::CpodClient::builder().base_url("http://127.0.0.1:8080");
    /// ```
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = Some(base_url.into());
        self
    }

    /// The API key (`cpk_…`).
    ///
    /// ```
    /// let builder = cpod_sdk::CpodClient::builder().api_key("cpk_0123456789abcdefghijklmnopqrstuv");
    /// ```
    pub fn api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }

    /// How long one request may take (default 30 s). Streams are not limited by it.
    ///
    /// ```
    /// let builder = cpod_sdk::CpodClient::builder().timeout(std::time::Duration::from_secs(5));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Use this HTTP client (its proxy, TLS and pool settings). Give it no overall timeout, or
    /// streams will end at it.
    ///
    /// ```
    /// let builder = cpod_sdk::CpodClient::builder().http_client(reqwest::Client::new());
    /// ```
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// The client, or [`Error::Config`] naming what is missing or wrong.
    ///
    /// ```
    /// let error = cpod_sdk::CpodClient::builder().base_url("http://127.0.0.1:8080").build().unwrap_err();
    /// assert!(error.to_string().contains("API key"));
    /// ```
    pub fn build(self) -> Result<CpodClient> {
        let raw = self
            .base_url
            .ok_or_else(|| Error::Config("no base URL: set CPOD_BASE_URL".into()))?;
        let base_url = Url::parse(raw.trim())
            .map_err(|e| Error::Config(format!("bad base URL `{raw}`: {e}")))?;
        if !matches!(base_url.scheme(), "http" | "https") {
            return Err(Error::Config(format!(
                "bad base URL `{raw}`: use http:// or https://"
            )));
        }
        let api_key = self
            .api_key
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| Error::Config("no API key: set CPOD_API_KEY".into()))?;
        let api_key = api_key.trim().to_owned();
        if HeaderValue::from_str(&format!("Bearer {api_key}")).is_err() {
            return Err(Error::Config(
                "the API key holds characters a header cannot carry".into(),
            ));
        }
        let http = match self.http {
            Some(http) => http,
            None => {
                let mut headers = HeaderMap::new();
                headers.insert(
                    reqwest::header::USER_AGENT,
                    HeaderValue::from_static(concat!("cpod-sdk-rust/", env!("CARGO_PKG_VERSION"))),
                );
                reqwest::Client::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .default_headers(headers)
                    .build()?
            }
        };
        Ok(CpodClient {
            inner: Arc::new(Inner {
                base_url,
                api_key,
                http,
                timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
                subscriptions: LocalSubscriptions::default(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_onto_a_base_with_or_without_a_prefix() {
        let client = CpodClient::new("http://h:1", "cpk_x").unwrap();
        assert_eq!(client.url("/v1/events").as_str(), "http://h:1/v1/events");
        let client = CpodClient::new("http://h:1/events/", "cpk_x").unwrap();
        assert_eq!(
            client.url("/v1/events").as_str(),
            "http://h:1/events/v1/events"
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
    fn a_missing_or_bad_setting_is_named() {
        assert!(
            CpodClient::new("ftp://h", "cpk_x")
                .unwrap_err()
                .to_string()
                .contains("http://")
        );
        assert!(
            CpodClient::new("http://h", " ")
                .unwrap_err()
                .to_string()
                .contains("CPOD_API_KEY")
        );
    }
}
