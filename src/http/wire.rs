//! The JSON shapes of the HTTP API's request and response bodies, which are also its OpenAPI
//! schemas, and the strict reader of request bodies.
//!
//! A request body is deserialized straight into one of these types ([`parse_body`]): unknown
//! fields, wrong JSON types and missing fields are refused by serde, and the error names the
//! field by its path (`events[3].resourceId`). The handlers then apply the domain's rules. The
//! document at `/openapi.json` is generated from the same types, so it cannot describe a body
//! the broker does not accept.

pub mod frames;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::event::format_timestamp;
use crate::event::{Event, NewEventBody};
use crate::keys::{KeyRecord, Role};
use crate::store::webhooks::WebhookRecord;
use uuid::Uuid;

/// Parses a JSON body into `T`, naming the field at fault in the 400.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_body(
            "the request body is empty; send a JSON object",
        ));
    }
    // Every body is an object; serde would otherwise read `[…]` as a struct's fields in order.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid_body(
            "the request body must be a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| body_error(&e))?;
    deserializer
        .end()
        .map_err(|e| ApiError::invalid_body(format!("invalid JSON: {e}")))?;
    Ok(value)
}

/// Maps a deserialization error to the contract's 400: `param` is the path of the field at
/// fault (for a missing or an unknown field, the field itself).
fn body_error(error: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = error.inner();
    if inner.is_syntax() || inner.is_eof() || inner.is_io() {
        return ApiError::invalid_body(format!("invalid JSON: {inner}"));
    }
    let path = match error.path().to_string() {
        p if p == "." => String::new(),
        p => p,
    };
    let message = inner.to_string();
    // serde's messages end with " at line L column C": the path says where, in JSON terms.
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m)
        .to_owned();
    let join = |field: &str| {
        if path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        }
    };
    if let Some(field) = quoted_after(&message, "missing field `") {
        let param = join(field);
        return ApiError::invalid(param.clone(), format!("{param} is required"));
    }
    if quoted_after(&message, "unknown field `").is_some() {
        // The path already ends with the unknown field's name.
        let expected = message
            .split_once(", expected ")
            .map(|(_, e)| format!("; expected {e}"))
            .unwrap_or_default();
        return ApiError::invalid(path.clone(), format!("unknown field `{path}`{expected}"));
    }
    if path.is_empty() {
        return ApiError::invalid_body(format!("the request body is not accepted: {message}"));
    }
    ApiError::invalid(path.clone(), format!("{path}: {message}"))
}

fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split_once('`').map(|(field, _)| field)
}

/// For fields where `null` means something else than absent: absent is `None`, `null` is
/// `Some(None)`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// An integer field that JSON Schema's `integer` describes: a JSON number whose value is a
/// whole number, written `60` or `60.0` (both are integers to JSON Schema, and clients such as
/// JavaScript's `JSON.stringify` of a computed value may send either).
fn whole_number<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: Deserializer<'de>,
{
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if let Some(n) = number.as_u64() {
        return Ok(Some(n));
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) => Ok(Some(f as u64)),
        _ => Err(serde::de::Error::custom(format!(
            "expected a whole number of at least 0, got {number}"
        ))),
    }
}

/// The body of `POST /v1/events/batch`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to 1000 events, stored all or none, in this order.
    #[schema(min_items = 1, max_items = 1000)]
    pub events: Vec<NewEventBody>,
}

/// The body of `POST /v1/keys`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewKeyBody {
    /// Required for admin keys; service keys may only name their own.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[\x21-\x29\x2B\x2D-\x7E]+$"
    )]
    pub organization_id: Option<String>,
    /// `service`, `app` or `reader` (admin keys come only from `CPOD_ADMIN_KEY`).
    #[schema(pattern = "^(service|app|reader)$")]
    pub role: String,
    /// Not blank; at most 200 characters.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
}

/// The optional body of `POST /v1/stream-tickets`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TicketRequest {
    /// 1 to 86400, default 3600.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 86400)]
    pub ttl_seconds: Option<u64>,
}

// Only a schema: the handlers read patterns as strings and parse them as `TypePattern`s.
/// A type pattern (glob) in a list of `types`: `[a-z0-9_.-]` and `*`, at most 128 characters.
#[derive(ToSchema)]
#[schema(value_type = String, min_length = 1, max_length = 128, pattern = r"^[a-z0-9_.*-]+$")]
pub struct TypeGlob(#[allow(dead_code)] String);

/// The body of `POST /v1/webhooks`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewWebhookBody {
    /// http or https; must resolve to a public address unless CPOD_WEBHOOK_ALLOW_PRIVATE.
    #[schema(
        min_length = 1,
        max_length = 2048,
        format = "uri",
        pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+([/?#]\S*)?$"
    )]
    pub url: String,
    /// Type patterns, default `["*"]`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<TypeGlob>>, min_items = 1, max_items = 100)]
    pub types: Option<Vec<String>>,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = r"^[a-z0-9_-]+$")]
    pub resource_type: Option<String>,
    #[serde(default)]
    #[schema(max_length = 500)]
    pub description: Option<String>,
    /// Admin keys only (and required there).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[\x21-\x29\x2B\x2D-\x7E]+$"
    )]
    pub organization_id: Option<String>,
    /// How deliveries are written: `cpod` (the event's JSON, the default) or `cloudevents`.
    #[serde(default)]
    #[schema(inline)]
    pub format: Option<cpod_proto::cloudevents::EventFormat>,
    /// With `format: cloudevents` only: `structured` (the default) or `binary`.
    #[serde(default)]
    #[schema(inline)]
    pub content_mode: Option<cpod_proto::cloudevents::ContentMode>,
}

/// The body of `PATCH /v1/webhooks/{id}`: absent fields are left as they are; `null` clears
/// `resourceType` and `description`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookPatchBody {
    /// http or https; must resolve to a public address unless CPOD_WEBHOOK_ALLOW_PRIVATE.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 2048,
        format = "uri",
        pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+([/?#]\S*)?$"
    )]
    pub url: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<TypeGlob>>, min_items = 1, max_items = 100)]
    pub types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 64, pattern = r"^[a-z0-9_-]+$")]
    pub resource_type: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 500)]
    pub description: Option<Option<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `cpod` or `cloudevents`; switching to `cpod` drops the content mode.
    #[serde(default)]
    #[schema(inline)]
    pub format: Option<cpod_proto::cloudevents::EventFormat>,
    /// `structured` or `binary`; only with `format: cloudevents` (given here or already set).
    #[serde(default)]
    #[schema(inline)]
    pub content_mode: Option<cpod_proto::cloudevents::ContentMode>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub data: Vec<Event>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    pub data: Vec<Event>,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub data: Vec<KeyView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketBody {
    /// `cpt_…`: pass as `?ticket=` to the stream endpoints.
    pub ticket: String,
    pub expires_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub data: Vec<WebhookView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotatedSecret {
    pub secret: String,
    pub previous_secret_expires_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPage {
    pub data: Vec<DeliveryView>,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

/// The history filters (read one by one by the handler, which refuses unknown parameters).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct HistoryParams {
    /// Required for admin keys (`*`: every organization).
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = r"^(\*|[\x21-\x29\x2B\x2D-\x7E]+)$"
    )]
    organization_id: Option<String>,
    /// Type globs, comma-separated or repeated: `pod.*,job.failed`.
    #[param(
        min_length = 1,
        pattern = r"^[a-z0-9_.*-]{1,128}(,[a-z0-9_.*-]{1,128})*$"
    )]
    types: Option<String>,
    #[param(min_length = 1, max_length = 64, pattern = r"^[a-z0-9_-]+$")]
    resource_type: Option<String>,
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    resource_id: Option<String>,
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    workspace_id: Option<String>,
    /// ISO 8601, inclusive.
    #[param(format = DateTime)]
    since: Option<String>,
    /// ISO 8601, exclusive.
    #[param(format = DateTime)]
    until: Option<String>,
    /// 1 to 1000, default 50.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `desc` (default) or `asc`.
    #[param(pattern = "^(asc|desc)$")]
    order: Option<String>,
    /// The previous page's `nextCursor`.
    cursor: Option<String>,
    /// `cpod` (default) or `cloudevents`: each event of the page as a structured CloudEvent.
    #[param(inline)]
    format: Option<cpod_proto::cloudevents::EventFormat>,
}

/// The parameters of `GET /v1/events/{id}` beside the id.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventFormatParam {
    /// `cpod` (default) or `cloudevents`: the event as a structured CloudEvent
    /// (`application/cloudevents+json`).
    #[param(inline)]
    format: Option<cpod_proto::cloudevents::EventFormat>,
}

/// One item of a history page: an event, or (`format=cloudevents`) a CloudEvent. The two
/// schemas exclude each other (an event has no `specversion`; it allows no other field).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum HistoryItem {
    Event(Event),
    CloudEvent(cpod_proto::CloudEvent),
}

/// A page of history: events (the default) or CloudEvents (`format=cloudevents`).
#[derive(Serialize, ToSchema)]
#[schema(as = HistoryPage)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPageSchema {
    data: Vec<HistoryItem>,
    has_more: bool,
    next_cursor: Option<String>,
}

/// The stream filters and start (SSE).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct StreamParams {
    /// Required for admin keys (`*`: every organization).
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = r"^(\*|[\x21-\x29\x2B\x2D-\x7E]+)$"
    )]
    organization_id: Option<String>,
    /// Type globs, comma-separated or repeated.
    #[param(
        min_length = 1,
        pattern = r"^[a-z0-9_.*-]{1,128}(,[a-z0-9_.*-]{1,128})*$"
    )]
    types: Option<String>,
    #[param(min_length = 1, max_length = 64, pattern = r"^[a-z0-9_-]+$")]
    resource_type: Option<String>,
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    resource_id: Option<String>,
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    workspace_id: Option<String>,
    /// Replay after this event id, then go live (the Last-Event-ID header wins).
    last_event_id: Option<String>,
    /// Replay from this time (ISO 8601), then go live.
    #[param(format = DateTime)]
    since: Option<String>,
    /// A stream ticket, for clients that cannot send headers.
    ticket: Option<String>,
    /// `cpod` (default) or `cloudevents`: each `data:` line a structured CloudEvent (`id:`
    /// stays the event's id, so `Last-Event-ID` resumes as ever).
    #[param(inline)]
    format: Option<cpod_proto::cloudevents::EventFormat>,
}

/// The answer of `/healthz` (`ok`) and `/readyz` (`ready`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(pattern = "^(ok|ready)$")]
    pub status: &'static str,
}

/// The answer of `DELETE /v1/webhooks/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedWebhook {
    pub id: Uuid,
    /// Always `true`.
    pub deleted: bool,
}

/// The answer of `POST /v1/webhooks/{id}/deliveries/{deliveryId}/retry`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedDelivery {
    pub id: Uuid,
    /// Always `pending`.
    #[schema(pattern = "^pending$")]
    pub status: &'static str,
}

/// A key as listed: never its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub id: Uuid,
    pub organization_id: Option<String>,
    pub role: Role,
    pub name: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl From<&KeyRecord> for KeyView {
    fn from(record: &KeyRecord) -> Self {
        Self {
            id: record.id,
            organization_id: record
                .organization_id
                .as_ref()
                .map(|o| o.as_str().to_owned()),
            role: record.role,
            name: record.name.clone(),
            created_at: format_timestamp(record.created_ms),
            revoked_at: record.revoked_ms.map(format_timestamp),
        }
    }
}

/// A new key: the view plus the secret, shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    #[serde(flatten)]
    pub view: KeyView,
    pub key: String,
}

/// An endpoint as shown (never its secret), a new one with its secret, a test send's outcome and
/// a delivery with its attempts: the wire crate's records (the SDK and the CLI read the same
/// types), described here through its `openapi` feature.
pub use cpod_proto::webhooks::{
    Attempt as AttemptView, CreatedWebhook, Delivery as DeliveryView, TestResult,
    Webhook as WebhookView,
};

impl From<&WebhookRecord> for WebhookView {
    fn from(w: &WebhookRecord) -> Self {
        Self {
            id: w.id.to_string(),
            organization_id: w.organization_id.clone(),
            url: w.url.clone(),
            types: w.types.clone(),
            resource_type: w.resource_type.clone(),
            description: w.description.clone(),
            enabled: w.enabled,
            disabled_reason: w.disabled_reason.clone(),
            created_at: format_timestamp(w.created_ms),
            format: w.format.event_format(),
            content_mode: w.format.content_mode(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(body: &str) -> Option<String> {
        match parse_body::<BatchBody>(body.as_bytes()).unwrap_err() {
            ApiError::InvalidRequest { param, .. } => param,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refused_body_names_the_field_by_its_path() {
        let ok = r#"{"type":"custom.a","resourceId":"r","resourceType":"r"}"#;
        assert!(parse_body::<BatchBody>(format!(r#"{{"events":[{ok}]}}"#).as_bytes()).is_ok());
        let cases = [
            (
                r#"{"events":[{"resourceId":"r","resourceType":"r"}]}"#.to_owned(),
                Some("events[0].type"),
            ),
            (
                format!(r#"{{"events":[{ok},{{"type":5,"resourceId":"r","resourceType":"r"}}]}}"#),
                Some("events[1].type"),
            ),
            (
                format!(
                    r#"{{"events":[{ok},{{"type":"custom.a","resourceId":"r","resourceType":"r","x":1}}]}}"#
                ),
                Some("events[1].x"),
            ),
            (
                r#"{"events":[{"type":"custom.a","resourceId":"r","resourceType":"r","payload":[1]}]}"#.to_owned(),
                Some("events[0].payload"),
            ),
            (r#"{"events":[],"extra":1}"#.to_owned(), Some("extra")),
            (r#"{}"#.to_owned(), Some("events")),
            (r#"{"events":"no"}"#.to_owned(), Some("events")),
            (r#"[1]"#.to_owned(), None),
            (r#"{"events":[] "#.to_owned(), None),
            (r#"{"events":[]} x"#.to_owned(), None),
        ];
        for (body, param) in cases {
            assert_eq!(param_of(&body).as_deref(), param, "{body}");
        }
    }

    #[test]
    fn null_clears_and_absent_keeps_in_a_patch() {
        let patch: WebhookPatchBody =
            parse_body(br#"{"description":null,"enabled":false}"#).unwrap();
        assert_eq!(patch.description, Some(None));
        assert_eq!(patch.resource_type, None);
        assert_eq!(patch.enabled, Some(false));
    }

    #[test]
    fn a_whole_number_may_be_written_with_a_fraction_of_zero() {
        for (body, ttl) in [
            (r#"{"ttlSeconds":60}"#, Some(60)),
            (r#"{"ttlSeconds":2009.0}"#, Some(2009)),
            (r#"{"ttlSeconds":6e1}"#, Some(60)),
            (r#"{"ttlSeconds":null}"#, None),
            (r#"{}"#, None),
        ] {
            let request: TicketRequest = parse_body(body.as_bytes()).unwrap();
            assert_eq!(request.ttl_seconds, ttl, "{body}");
        }
        for body in [
            r#"{"ttlSeconds":1.5}"#,
            r#"{"ttlSeconds":-1}"#,
            r#"{"ttlSeconds":"60"}"#,
            r#"{"ttlSeconds":1e30}"#,
        ] {
            match parse_body::<TicketRequest>(body.as_bytes()) {
                Err(ApiError::InvalidRequest { param, .. }) => {
                    assert_eq!(param.as_deref(), Some("ttlSeconds"), "{body}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_empty_body_is_named_as_such() {
        let err = parse_body::<TicketRequest>(b"  ").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
