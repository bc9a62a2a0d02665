//! The webhook records of `/v1/webhooks` (contract §6), as the broker answers them and clients
//! read them: an endpoint (never its secret but once, at creation), a test send's outcome, and a
//! delivery with its attempts.

use serde::{Deserialize, Serialize};

use crate::cloudevents::{ContentMode, EventFormat};

/// An endpoint as listed (no secret).
///
/// ```
/// let webhook: cpod_proto::webhooks::Webhook = serde_json::from_str(r#"{"id": "w1",
///     "organizationId": "org-1", "url": "https://example.com/cpod", "types": ["*"],
///     "resourceType": null, "description": null, "enabled": true, "disabledReason": null,
///     "createdAt": "2026-05-01T12:00:00.000Z"}"#)?;
/// assert!(webhook.enabled);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(as = WebhookView, description = "An endpoint as shown: never its secret.")
)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// The endpoint's id (a UUID).
    #[cfg_attr(feature = "openapi", schema(format = Uuid))]
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
    /// Why the broker disabled it (410 Gone, or days without success).
    pub disabled_reason: Option<String>,
    /// ISO 8601 UTC.
    pub created_at: String,
    /// How deliveries are written: `cpod` (the event's JSON) or `cloudevents`.
    #[serde(default)]
    pub format: EventFormat,
    /// With `format: cloudevents`: `structured` or `binary`; `null` otherwise.
    #[serde(default)]
    pub content_mode: Option<ContentMode>,
}

/// A new endpoint and its signing secret, shown this once.
///
/// ```
/// # fn show(created: cpod_proto::webhooks::CreatedWebhook) {
/// println!("{}: keep {}", created.webhook.id, created.secret);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(description = "A new endpoint: the view and its secret, shown this once.")
)]
pub struct CreatedWebhook {
    /// The endpoint.
    #[serde(flatten)]
    pub webhook: Webhook,
    /// `whsec_…`: verify signatures with it.
    pub secret: String,
}

/// The outcome of a test send (`POST /v1/webhooks/{id}/test`).
///
/// ```
/// let result: cpod_proto::webhooks::TestResult = serde_json::from_str(
///     r#"{"success": false, "responseStatus": 500, "error": null, "durationMs": 12}"#)?;
/// assert_eq!(result.response_status, Some(500));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(description = "The outcome of a test send.")
)]
#[serde(rename_all = "camelCase")]
pub struct TestResult {
    /// The endpoint answered 2xx in time.
    pub success: bool,
    /// The endpoint's HTTP status, if it answered.
    pub response_status: Option<u16>,
    /// What went wrong before an answer (timeout, refused connection, …).
    pub error: Option<String>,
    /// How long the attempt took.
    pub duration_ms: i64,
}

/// One event's delivery to one endpoint, with its attempts.
///
/// ```
/// let delivery: cpod_proto::webhooks::Delivery = serde_json::from_str(r#"{"id": "d1",
///     "eventId": "e1", "eventType": "pod.failed", "status": "succeeded", "nextAttemptAt": null,
///     "createdAt": "2026-05-01T12:00:00.000Z",
///     "attempts": [{"attempt": 1, "responseStatus": 200, "error": null, "durationMs": 8,
///                   "attemptedAt": "2026-05-01T12:00:00.000Z", "responseBody": "ok"}]}"#)?;
/// assert_eq!(delivery.attempts[0].response_status, Some(200));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        as = DeliveryView,
        description = "One event's delivery to one endpoint, with its attempts."
    )
)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The delivery's id.
    pub id: String,
    /// The delivered event.
    pub event_id: String,
    /// The delivered event's type.
    pub event_type: String,
    /// pending, succeeded or failed.
    pub status: String,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<String>,
    /// When the delivery was queued.
    pub created_at: String,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<Attempt>,
}

/// One attempt of a [`Delivery`].
///
/// ```
/// let attempt: cpod_proto::webhooks::Attempt = serde_json::from_str(r#"{"attempt": 2,
///     "responseStatus": null, "error": "timed out", "durationMs": 15000,
///     "attemptedAt": "2026-05-01T12:00:05.000Z", "responseBody": null}"#)?;
/// assert_eq!(attempt.error.as_deref(), Some("timed out"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(as = AttemptView, description = "One attempt of a delivery.")
)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// 1 for the first attempt.
    pub attempt: i64,
    /// The endpoint's HTTP status, if it answered.
    pub response_status: Option<u16>,
    /// What went wrong before an answer.
    pub error: Option<String>,
    /// How long the attempt took.
    pub duration_ms: i64,
    /// ISO 8601 UTC.
    pub attempted_at: String,
    /// The first 20,000 bytes of the answer.
    pub response_body: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_webhook_is_the_endpoint_and_its_secret_side_by_side() {
        let created = CreatedWebhook {
            webhook: Webhook {
                id: "0193".into(),
                organization_id: "org-1".into(),
                url: "https://example.com/cpod".into(),
                types: vec!["*".into()],
                resource_type: None,
                description: None,
                enabled: true,
                disabled_reason: None,
                created_at: "2026-05-01T12:00:00.000Z".into(),
                format: EventFormat::CloudEvents,
                content_mode: Some(ContentMode::Binary),
            },
            secret: "whsec_x".into(),
        };
        let json = serde_json::to_value(&created).unwrap();
        assert_eq!(json["secret"], "whsec_x");
        assert_eq!(json["organizationId"], "org-1");
        assert!(json["disabledReason"].is_null());
        assert_eq!(json["format"], "cloudevents");
        assert_eq!(json["contentMode"], "binary");
        let back: CreatedWebhook = serde_json::from_value(json).unwrap();
        assert_eq!(back, created);
    }
}
