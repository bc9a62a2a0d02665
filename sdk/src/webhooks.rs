//! Webhooks: checking that a delivery comes from the broker ([`verify`], the Standard Webhooks
//! scheme, no client needed) and managing endpoints (`client.webhooks()`, `/v1/webhooks`).
//!
//! A delivery carries `webhook-id`, `webhook-timestamp` and `webhook-signature` (`v1,<base64>`,
//! several space-separated during a secret rotation). The signature is HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64-decoded part of the secret
//! after `whsec_`.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::api::Api;
use crate::api::path_segment;
use crate::error::Result;
use crate::model::Page;

/// How an endpoint's deliveries are written.
pub use cpod_proto::cloudevents::{ContentMode, EventFormat};
/// The check of a delivery, shared with the broker's signing (`cpod-proto`): [`verify`] takes
/// `http`'s `HeaderMap` (reqwest's), a `HashMap<String, String>` or a slice of pairs.
pub use cpod_proto::signing::{Headers, MAX_SIGNATURES, TOLERANCE, VerifyError, verify, verify_at};
/// The records `/v1/webhooks` answers, as the broker writes them.
pub use cpod_proto::webhooks::{Attempt, CreatedWebhook, Delivery, TestResult, Webhook};

/// Webhook endpoints of one broker. Get it with [`CpodClient::webhooks`](crate::CpodClient::webhooks).
///
/// ```
/// # let client = cpod_sdk::CpodClient::new("http://127.0.0.1:8080", "cpk_x")?;
/// let webhooks: cpod_sdk::Webhooks = client.webhooks();
/// # Ok::<(), cpod_sdk::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Webhooks {
    pub(crate) api: Api,
}

/// What [`Webhooks::create`] asks for.
///
/// ```
/// let new = cpod_sdk::webhooks::NewWebhook::new("https://example.com/cpod")
///     .types(["pod.*", "*.failed"])
///     .description("on-call");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewWebhook {
    /// An http(s) URL (a public address unless the broker allows private ones).
    pub url: String,
    /// Type patterns; unset means `["*"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Only events about this resource type.
    pub resource_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// A note for people.
    pub description: Option<String>,
    /// How deliveries are written; unset means the event's own JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<EventFormat>,
    /// With CloudEvents: structured (the default) or binary content mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_mode: Option<ContentMode>,
}

impl NewWebhook {
    /// An endpoint at `url` for every event.
    ///
    /// ```
    /// let new = cpod_sdk::webhooks::NewWebhook::new("https://example.com/cpod");
    /// ```
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Only events of these type patterns.
    ///
    /// ```
    /// let new = cpod_sdk::webhooks::NewWebhook::new("https://example.com/cpod").types(["job.*"]);
    /// ```
    pub fn types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Only events about this resource type.
    ///
    /// ```
    /// let new = cpod_sdk::webhooks::NewWebhook::new("https://example.com/cpod").resource_type("pod");
    /// ```
    pub fn resource_type(mut self, resource_type: impl Into<String>) -> Self {
        self.resource_type = Some(resource_type.into());
        self
    }

    /// A note for people.
    ///
    /// ```
    /// let new = cpod_sdk::webhooks::NewWebhook::new("https://example.com/cpod").description("on-call");
    /// ```
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Deliveries as CloudEvents, in this content mode.
    ///
    /// ```
    /// use cpod_sdk::webhooks::{ContentMode, NewWebhook};
    /// let new = NewWebhook::new("https://example.com/knative").cloudevents(ContentMode::Binary);
    /// ```
    pub fn cloudevents(mut self, content_mode: ContentMode) -> Self {
        self.format = Some(EventFormat::CloudEvents);
        self.content_mode = Some(content_mode);
        self
    }
}

#[derive(Deserialize)]
struct List {
    data: Vec<Webhook>,
}

impl Webhooks {
    /// The organization's endpoints.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// for webhook in client.webhooks().list().await? {
    ///     println!("{} {} {:?}", webhook.id, webhook.url, webhook.types);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list(&self) -> Result<Vec<Webhook>> {
        let request = self.api.request(Method::GET, "/v1/webhooks");
        Ok(self.api.send::<List>(request).await?.data)
    }

    /// One endpoint.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let webhook = client.webhooks().get("0193…").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, id: &str) -> Result<Webhook> {
        let request = self
            .api
            .request(Method::GET, &format!("/v1/webhooks/{}", path_segment(id)));
        self.api.send(request).await
    }

    /// A new endpoint; keep its `secret` to [`verify`] deliveries.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let created = client.webhooks()
    ///     .create(&cpod_sdk::webhooks::NewWebhook::new("https://example.com/cpod").types(["pod.*"]))
    ///     .await?;
    /// println!("secret: {}", created.secret);
    /// # Ok(()) }
    /// ```
    pub async fn create(&self, new: &NewWebhook) -> Result<CreatedWebhook> {
        let request = self.api.request(Method::POST, "/v1/webhooks").json(new);
        self.api.send(request).await
    }

    /// Deletes an endpoint and its queued deliveries.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// client.webhooks().delete("0193…").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, id: &str) -> Result<()> {
        let request = self.api.request(
            Method::DELETE,
            &format!("/v1/webhooks/{}", path_segment(id)),
        );
        crate::api::check(request.send().await?).await?;
        Ok(())
    }

    /// Sends a signed, unstored `webhook.test` event now.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let result = client.webhooks().test("0193…").await?;
    /// println!("success: {}, status {:?}", result.success, result.response_status);
    /// # Ok(()) }
    /// ```
    pub async fn test(&self, id: &str) -> Result<TestResult> {
        let request = self.api.request(
            Method::POST,
            &format!("/v1/webhooks/{}/test", path_segment(id)),
        );
        self.api.send(request).await
    }

    /// One page of an endpoint's deliveries, newest first; `status` is `pending`, `succeeded`
    /// or `failed`; `cursor` is the previous page's `next_cursor`.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let page = client.webhooks().deliveries("0193…", Some("failed"), None).await?;
    /// for delivery in page.data {
    ///     println!("{} {} {} attempts", delivery.event_type, delivery.status, delivery.attempts.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn deliveries(
        &self,
        id: &str,
        status: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<Page<Delivery>> {
        let mut query = Vec::new();
        if let Some(status) = status {
            query.push(("status", status));
        }
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor));
        }
        let request = self
            .api
            .request(
                Method::GET,
                &format!("/v1/webhooks/{}/deliveries", path_segment(id)),
            )
            .query(&query);
        self.api.send(request).await
    }
}
