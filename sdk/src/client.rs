//! The client handle: one broker, one key, and the resource handles made from them
//! ([`Events`], [`Keys`], [`Webhooks`]). Requests and the decoding of answers are
//! the internal `api` module's, which the resource modules use directly.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use url::Url;

use crate::api::Api;
use crate::error::{Error, Result};
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
    api: Api,
    subscriptions: Arc<LocalSubscriptions>,
}

impl std::fmt::Debug for CpodClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CpodClient")
            .field("base_url", &self.api.base_url().as_str())
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
            api: self.api.clone(),
            subscriptions: self.subscriptions.clone(),
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
            api: self.api.clone(),
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
            api: self.api.clone(),
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
        self.api.base_url()
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
            api: Api::new(
                base_url,
                api_key,
                http,
                self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            ),
            subscriptions: Arc::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_local_subscriptions_and_never_show_the_key() {
        let client = CpodClient::new("http://h:1/events/", "cpk_secret").unwrap();
        assert_eq!(client.base_url().as_str(), "http://h:1/events/");
        assert!(!format!("{client:?}").contains("cpk_secret"));
        let subscription = client
            .clone()
            .events()
            .subscribe(crate::Filter::new(), |_| {});
        let event: crate::Event = serde_json::from_str(
            r#"{"id": "x", "type": "pod.failed", "resourceId": "p1", "resourceType": "pod",
                "organizationId": "org-1", "workspaceId": null, "payload": {},
                "timestamp": "2026-05-01T12:00:00.000Z"}"#,
        )
        .unwrap();
        assert_eq!(client.events().dispatch(&event), 1);
        subscription.unsubscribe();
        assert_eq!(client.events().dispatch(&event), 0);
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
