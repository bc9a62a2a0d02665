//! Webhooks: checking that a delivery comes from the broker ([`verify`], the Standard Webhooks
//! scheme, no client needed) and managing endpoints (`client.webhooks()`, `/v1/webhooks`).
//!
//! A delivery carries `webhook-id`, `webhook-timestamp` and `webhook-signature` (`v1,<base64>`,
//! several space-separated during a secret rotation). The signature is HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64-decoded part of the secret
//! after `whsec_`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::CpodClient;
use crate::error::Result;
use crate::keys::path_segment;
use crate::model::Page;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How far a delivery's timestamp may be from now, either way.
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// How many entries of `webhook-signature` are looked at; those after are ignored (the broker
/// sends one per active secret, so a handful at most).
///
/// ```
/// assert_eq!(cpod_sdk::webhooks::MAX_SIGNATURES, 32);
/// ```
pub const MAX_SIGNATURES: usize = 32;

/// Why a delivery was refused.
///
/// ```
/// let error = cpod_sdk::webhooks::VerifyError::MissingHeader("webhook-id");
/// assert_eq!(error.to_string(), "the webhook-id header is missing");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("the {0} header is missing")]
    /// A required header is absent.
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a Unix time in seconds")]
    /// `webhook-timestamp` is not an integer.
    BadTimestamp,
    #[error("the delivery's timestamp is more than 5 minutes old")]
    /// Sent more than 5 minutes before now (a replay, or a clock far off).
    TooOld,
    #[error("the delivery's timestamp is more than 5 minutes in the future")]
    /// Sent more than 5 minutes after now.
    TooNew,
    #[error("no secret given, or a secret that is not `whsec_` + base64")]
    /// No usable secret was given.
    BadSecret,
    #[error("no signature matches")]
    /// No signature was made with any of the secrets over this body.
    NoMatch,
}

/// Headers, however the web framework at hand keeps them: implemented for `http`'s `HeaderMap`
/// (reqwest, axum, hyper), a `HashMap<String, String>` and a slice of pairs. Names compare
/// case-insensitively.
///
/// ```
/// use cpod_sdk::webhooks::Headers;
/// let pairs = [("Webhook-Id", "msg_1")];
/// assert_eq!(pairs[..].header("webhook-id"), Some("msg_1"));
/// ```
pub trait Headers {
    /// The value of header `name` (lowercase).
    fn header(&self, name: &str) -> Option<&str>;
}

impl Headers for reqwest::header::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

impl<S: std::hash::BuildHasher> Headers for HashMap<String, String, S> {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Headers for [(K, V)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

/// Checks a delivery: its timestamp is within 5 minutes of now and one of its signatures was
/// made with one of `secrets` (pass the old and the new secret during a rotation). Compare the
/// raw body bytes, before any JSON parsing.
///
/// ```
/// use cpod_sdk::webhooks::{verify, VerifyError};
/// let headers = [
///     ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
///     ("webhook-timestamp", "1614265330"),
///     ("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
/// ];
/// let body = br#"{"test": 2432232314}"#;
/// // That delivery is from 2021: correctly signed, but far too old today.
/// assert_eq!(verify(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], &headers[..], body), Err(VerifyError::TooOld));
/// ```
pub fn verify<H: Headers + ?Sized>(
    secrets: &[&str],
    headers: &H,
    body: &[u8],
) -> Result<(), VerifyError> {
    verify_at(secrets, headers, body, SystemTime::now())
}

/// [`verify`] as if the time were `now` (for tests and replays of recorded deliveries).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let headers = [
///     ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
///     ("webhook-timestamp", "1614265330"),
///     ("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
/// ];
/// let now = UNIX_EPOCH + Duration::from_secs(1614265330);
/// cpod_sdk::webhooks::verify_at(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], &headers[..],
///     br#"{"test": 2432232314}"#, now)?;
/// # Ok::<(), cpod_sdk::webhooks::VerifyError>(())
/// ```
pub fn verify_at<H: Headers + ?Sized>(
    secrets: &[&str],
    headers: &H,
    body: &[u8],
    now: SystemTime,
) -> Result<(), VerifyError> {
    let id = headers
        .header("webhook-id")
        .ok_or(VerifyError::MissingHeader("webhook-id"))?;
    let timestamp = headers
        .header("webhook-timestamp")
        .ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
    let signatures = headers
        .header("webhook-signature")
        .ok_or(VerifyError::MissingHeader("webhook-signature"))?;
    let sent: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    let tolerance = TOLERANCE.as_secs() as i64;
    if now.saturating_sub(sent) > tolerance {
        return Err(VerifyError::TooOld);
    }
    if sent.saturating_sub(now) > tolerance {
        return Err(VerifyError::TooNew);
    }
    let keys = secrets
        .iter()
        .map(|s| secret_key(s))
        .collect::<Option<Vec<_>>>()
        .filter(|k| !k.is_empty())
        .ok_or(VerifyError::BadSecret)?;
    // Only well-formed `v1,<base64>` entries count: a bare `v1,` or another version never matches.
    // At most MAX_SIGNATURES entries are read, so a forged header cannot buy unbounded work.
    let candidates: Vec<Vec<u8>> = signatures
        .split(' ')
        .filter(|entry| !entry.is_empty())
        .take(MAX_SIGNATURES)
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, sig)| *version == "v1" && !sig.is_empty())
        .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
        .collect();
    if candidates.is_empty() {
        return Err(VerifyError::NoMatch);
    }
    for key in &keys {
        // The body is hashed once per secret; each candidate only finishes a copy of the state.
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        for candidate in &candidates {
            // `verify_slice` compares in constant time.
            if mac.clone().verify_slice(candidate).is_ok() {
                return Ok(());
            }
        }
    }
    Err(VerifyError::NoMatch)
}

/// The HMAC key of a `whsec_` secret; `None` when it is not base64 or empty.
fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.trim();
    let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
    STANDARD.decode(encoded).ok().filter(|k| !k.is_empty())
}

/// Webhook endpoints of one broker. Get it with [`CpodClient::webhooks`].
///
/// ```
/// # let client = cpod_sdk::CpodClient::new("http://127.0.0.1:8080", "cpk_x")?;
/// let webhooks: cpod_sdk::Webhooks = client.webhooks();
/// # Ok::<(), cpod_sdk::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Webhooks {
    pub(crate) client: CpodClient,
}

/// An endpoint as listed (no secret).
///
/// ```
/// let webhook: cpod_sdk::webhooks::Webhook = serde_json::from_str(r#"{"id": "w1",
///     "organizationId": "org-1", "url": "https://example.com/cpod", "types": ["*"],
///     "resourceType": null, "description": null, "enabled": true,
///     "createdAt": "2026-05-01T12:00:00.000Z"}"#)?;
/// assert!(webhook.enabled);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// The endpoint's id.
    pub id: String,
    /// The organization whose events it receives.
    pub organization_id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Type patterns it receives.
    pub types: Vec<String>,
    /// Only events about this resource type, when set.
    pub resource_type: Option<String>,
    /// A note for people.
    pub description: Option<String>,
    /// Whether deliveries are made.
    pub enabled: bool,
    #[serde(default)]
    /// Why the broker disabled it (e.g. a `410 Gone`).
    pub disabled_reason: Option<String>,
    /// ISO 8601 UTC.
    pub created_at: String,
}

/// A new endpoint and its signing secret, shown this once.
///
/// ```
/// # fn show(created: cpod_sdk::webhooks::CreatedWebhook) {
/// println!("{}: keep {}", created.webhook.id, created.secret);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    /// The endpoint.
    pub webhook: Webhook,
    /// `whsec_…`
    pub secret: String,
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
}

/// The outcome of [`Webhooks::test`].
///
/// ```
/// let result: cpod_sdk::webhooks::TestResult = serde_json::from_str(
///     r#"{"success": false, "responseStatus": 500, "error": null, "durationMs": 12}"#)?;
/// assert_eq!(result.response_status, Some(500));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestResult {
    /// The endpoint answered 2xx within 15 seconds.
    pub success: bool,
    /// The endpoint's HTTP status, if it answered.
    pub response_status: Option<u16>,
    /// What went wrong before an answer (timeout, refused connection, …).
    pub error: Option<String>,
    /// How long the attempt took.
    pub duration_ms: u64,
}

/// One event's delivery to one endpoint, with its attempts.
///
/// ```
/// let delivery: cpod_sdk::webhooks::Delivery = serde_json::from_str(r#"{"id": "d1",
///     "eventId": "e1", "eventType": "pod.failed", "status": "succeeded", "nextAttemptAt": null,
///     "attempts": [{"attempt": 1, "responseStatus": 200, "error": null, "durationMs": 8,
///                   "attemptedAt": "2026-05-01T12:00:00.000Z"}]}"#)?;
/// assert_eq!(delivery.attempts[0].response_status, Some(200));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The delivery's id.
    pub id: String,
    /// The delivered event.
    pub event_id: String,
    /// The delivered event's type.
    pub event_type: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<String>,
    #[serde(default)]
    /// When the delivery was queued.
    pub created_at: Option<String>,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<Attempt>,
}

/// One attempt of a [`Delivery`].
///
/// ```
/// let attempt: cpod_sdk::webhooks::Attempt = serde_json::from_str(r#"{"attempt": 2,
///     "responseStatus": null, "error": "timed out", "durationMs": 15000,
///     "attemptedAt": "2026-05-01T12:00:05.000Z"}"#)?;
/// assert_eq!(attempt.error.as_deref(), Some("timed out"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The endpoint's HTTP status, if it answered.
    pub response_status: Option<u16>,
    /// What went wrong before an answer.
    pub error: Option<String>,
    /// How long the attempt took.
    pub duration_ms: u64,
    /// ISO 8601 UTC.
    pub attempted_at: String,
    #[serde(default)]
    /// The start of the answer (at most 20,000 bytes).
    pub response_body: Option<String>,
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
        let request = self.client.request(Method::GET, "/v1/webhooks");
        Ok(self.client.send::<List>(request).await?.data)
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
            .client
            .request(Method::GET, &format!("/v1/webhooks/{}", path_segment(id)));
        self.client.send(request).await
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
        let request = self.client.request(Method::POST, "/v1/webhooks").json(new);
        self.client.send(request).await
    }

    /// Deletes an endpoint and its queued deliveries.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// client.webhooks().delete("0193…").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, id: &str) -> Result<()> {
        let request = self.client.request(
            Method::DELETE,
            &format!("/v1/webhooks/{}", path_segment(id)),
        );
        crate::client::check(request.send().await?).await?;
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
        let request = self.client.request(
            Method::POST,
            &format!("/v1/webhooks/{}/test", path_segment(id)),
        );
        self.client.send(request).await
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
            .client
            .request(
                Method::GET,
                &format!("/v1/webhooks/{}/deliveries", path_segment(id)),
            )
            .query(&query);
        self.client.send(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SENT: u64 = 1614265330;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn headers(signature: &str) -> Vec<(&'static str, String)> {
        vec![
            ("webhook-id", ID.to_owned()),
            ("webhook-timestamp", SENT.to_string()),
            ("webhook-signature", signature.to_owned()),
        ]
    }

    /// The Standard Webhooks specification's published example.
    #[test]
    fn the_published_test_vector_verifies() {
        assert_eq!(
            verify_at(&[SECRET], &headers(SIGNATURE)[..], BODY, at(SENT)),
            Ok(())
        );
    }

    #[test]
    fn any_of_several_signatures_and_secrets_may_match() {
        let rotated = format!("v1,bm90IGEgc2lnbmF0dXJl {SIGNATURE} v2,xyz");
        assert_eq!(
            verify_at(&[SECRET], &headers(&rotated)[..], BODY, at(SENT)),
            Ok(())
        );
        let other = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(
            verify_at(&[other, SECRET], &headers(SIGNATURE)[..], BODY, at(SENT)),
            Ok(())
        );
        assert_eq!(
            verify_at(&[other], &headers(SIGNATURE)[..], BODY, at(SENT)),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn many_signatures_are_read_only_up_to_the_cap() {
        let junk = "v1,bm90IGEgc2lnbmF0dXJlIGF0IGFsbCwgYnV0IDMyIGJ5dGVzIQ==";
        let with_valid_at = |position: usize| {
            let mut entries = vec![junk; position];
            entries.push(SIGNATURE);
            entries.join(" ")
        };
        let secrets = [
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "whsec_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
            SECRET,
        ];
        // The last entry the cap allows still matches, with any of several secrets.
        let last = with_valid_at(MAX_SIGNATURES - 1);
        assert_eq!(
            verify_at(&secrets, &headers(&last)[..], BODY, at(SENT)),
            Ok(())
        );
        // Past the cap, entries are not even decoded: a header of thousands costs no more.
        let past = with_valid_at(MAX_SIGNATURES);
        assert_eq!(
            verify_at(&secrets, &headers(&past)[..], BODY, at(SENT)),
            Err(VerifyError::NoMatch)
        );
        let flood = with_valid_at(10_000);
        assert_eq!(
            verify_at(&secrets, &headers(&flood)[..], BODY, at(SENT)),
            Err(VerifyError::NoMatch)
        );
        // Extra spaces between entries are not entries.
        let spaced = format!("{}  {SIGNATURE}", [junk; 10].join("   "));
        assert_eq!(
            verify_at(&[SECRET], &headers(&spaced)[..], BODY, at(SENT)),
            Ok(())
        );
    }

    #[test]
    fn a_changed_body_id_or_timestamp_fails() {
        assert_eq!(
            verify_at(
                &[SECRET],
                &headers(SIGNATURE)[..],
                br#"{"test": 2432232315}"#,
                at(SENT)
            ),
            Err(VerifyError::NoMatch)
        );
        let mut changed = headers(SIGNATURE);
        changed[0].1 = "msg_other".into();
        assert_eq!(
            verify_at(&[SECRET], &changed[..], BODY, at(SENT)),
            Err(VerifyError::NoMatch)
        );
        let mut later = headers(SIGNATURE);
        later[1].1 = (SENT + 1).to_string();
        assert_eq!(
            verify_at(&[SECRET], &later[..], BODY, at(SENT)),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn a_bare_or_foreign_signature_never_matches() {
        for signature in [
            "v1,",
            "v1",
            "",
            "v1,,",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1,g0hM9SsE",
        ] {
            assert_eq!(
                verify_at(&[SECRET], &headers(signature)[..], BODY, at(SENT)),
                Err(VerifyError::NoMatch),
                "{signature:?}"
            );
        }
    }

    #[test]
    fn the_timestamp_must_be_within_five_minutes() {
        let h = headers(SIGNATURE);
        assert_eq!(verify_at(&[SECRET], &h[..], BODY, at(SENT + 300)), Ok(()));
        assert_eq!(verify_at(&[SECRET], &h[..], BODY, at(SENT - 300)), Ok(()));
        assert_eq!(
            verify_at(&[SECRET], &h[..], BODY, at(SENT + 301)),
            Err(VerifyError::TooOld)
        );
        assert_eq!(
            verify_at(&[SECRET], &h[..], BODY, at(SENT - 301)),
            Err(VerifyError::TooNew)
        );
        let mut bad = headers(SIGNATURE);
        bad[1].1 = "soon".into();
        assert_eq!(
            verify_at(&[SECRET], &bad[..], BODY, at(SENT)),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn missing_headers_and_bad_secrets_are_named() {
        let h = headers(SIGNATURE);
        assert_eq!(
            verify_at(&[SECRET], &h[1..], BODY, at(SENT)),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            verify_at(&[], &h[..], BODY, at(SENT)),
            Err(VerifyError::BadSecret)
        );
        assert_eq!(
            verify_at(&["whsec_!!!"], &h[..], BODY, at(SENT)),
            Err(VerifyError::BadSecret)
        );
    }

    #[test]
    fn header_maps_of_every_kind_are_read_case_insensitively() {
        let mut map = reqwest::header::HeaderMap::new();
        map.insert("Webhook-Id", ID.parse().unwrap());
        assert_eq!(map.header("webhook-id"), Some(ID));
        let hash: HashMap<String, String> = [("WEBHOOK-ID".to_owned(), ID.to_owned())].into();
        assert_eq!(hash.header("webhook-id"), Some(ID));
    }
}
