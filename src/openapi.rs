//! The OpenAPI 3.1 document served at `/openapi.json`, generated from the handlers'
//! `#[utoipa::path]` annotations, plus the schema-only types that describe bodies the handlers
//! read by hand (strictly, to name the field at fault).

use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::event::Event;
use crate::http::keys::{CreatedKey, KeyView};
use crate::http::webhooks::{CreatedWebhook, WebhookView};

/// The error body and the webhook records are the wire crate's (`cpod-proto`, feature `openapi`).
pub use cpod_proto::webhooks::{Attempt as AttemptView, Delivery as DeliveryView, TestResult};
pub use cpod_proto::{ErrorBody, ErrorDetail};

#[derive(OpenApi)]
#[openapi(
    info(title = "cPod Events", description = "A real-time event broker: durable ingestion, history, keys, live streams, webhooks. The dashboard is served at `/` and the browser SDK at `/sdk.js`."),
    paths(
        crate::http::ingest::post_event,
        crate::http::ingest::post_batch,
        crate::http::history::list_events,
        crate::http::history::get_event,
        crate::http::keys::create_key,
        crate::http::keys::list_keys,
        crate::http::keys::current_key,
        crate::http::keys::revoke_key,
        crate::http::sse::stream_events,
        crate::http::ws::open_socket,
        crate::http::streams::create_ticket,
        crate::http::webhooks::create_webhook,
        crate::http::webhooks::list_webhooks,
        crate::http::webhooks::get_webhook,
        crate::http::webhooks::update_webhook,
        crate::http::webhooks::delete_webhook,
        crate::http::webhooks::rotate_secret,
        crate::http::webhooks::test_webhook,
        crate::http::webhooks::list_deliveries,
        crate::http::webhooks::retry_delivery,
        crate::http::ops::healthz,
        crate::http::ops::readyz,
        crate::http::ops::metrics,
        crate::http::ops::openapi_json,
        crate::http::dashboard::index,
        crate::http::dashboard::sdk,
    ),
    components(schemas(Event, ErrorBody, ErrorDetail, NewEventBody, BatchBody, EventList, EventPage, NewKeyBody, KeyList, KeyView, CreatedKey, TicketRequest, TicketBody, WebhookView, CreatedWebhook, NewWebhookBody, WebhookPatchBody, WebhookList, RotatedSecret, TestResult, DeliveryPage, DeliveryView, AttemptView)),
    modifiers(&BearerAuth),
    tags((name = "events"), (name = "streams"), (name = "webhooks"), (name = "keys"), (name = "operations"), (name = "dashboard"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "ticket",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("ticket"))),
        );
    }
}

/// The body of `POST /v1/events`; unknown fields are refused.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewEventBody {
    /// e.g. `pod.failed`, `custom.report.generated`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub resource_id: String,
    pub resource_type: String,
    /// Admin keys only (and required there); other keys may only name their own.
    pub organization_id: Option<String>,
    pub workspace_id: Option<String>,
    /// A JSON object; absent or null means `{}`.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BatchBody {
    /// 1 to 1000 events, stored all or none.
    pub events: Vec<NewEventBody>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub data: Vec<Event>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    pub data: Vec<Event>,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewKeyBody {
    /// Required for admin keys; service keys may only name their own.
    pub organization_id: Option<String>,
    /// service, app or reader.
    pub role: String,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub data: Vec<KeyView>,
}

/// The history filters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct HistoryParams {
    /// Required for admin keys (`*`: every organization).
    organization_id: Option<String>,
    /// Type globs, comma-separated or repeated: `pod.*,job.failed`.
    types: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    workspace_id: Option<String>,
    /// ISO 8601, inclusive.
    since: Option<String>,
    /// ISO 8601, exclusive.
    until: Option<String>,
    /// 1 to 1000, default 50.
    limit: Option<u32>,
    /// `desc` (default) or `asc`.
    order: Option<String>,
    /// The previous page's `nextCursor`.
    cursor: Option<String>,
}

/// The stream filters and start (SSE).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct StreamParams {
    /// Required for admin keys (`*`: every organization).
    organization_id: Option<String>,
    /// Type globs, comma-separated or repeated.
    types: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    workspace_id: Option<String>,
    /// Replay after this event id, then go live (the Last-Event-ID header wins).
    last_event_id: Option<String>,
    /// Replay from this time (ISO 8601), then go live.
    since: Option<String>,
    /// A stream ticket, for clients that cannot send headers.
    ticket: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketRequest {
    /// 1 to 86400, default 3600.
    pub ttl_seconds: Option<u64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketBody {
    /// `cpt_…`: pass as `?ticket=` to the stream endpoints.
    pub ticket: String,
    pub expires_at: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewWebhookBody {
    /// http or https; must resolve to a public address unless CPOD_WEBHOOK_ALLOW_PRIVATE.
    pub url: String,
    /// Type patterns, default `["*"]`.
    pub types: Option<Vec<String>>,
    pub resource_type: Option<String>,
    pub description: Option<String>,
    /// Admin keys only (and required there).
    pub organization_id: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPatchBody {
    pub url: Option<String>,
    pub types: Option<Vec<String>>,
    pub resource_type: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub data: Vec<WebhookView>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotatedSecret {
    pub secret: String,
    pub previous_secret_expires_at: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPage {
    pub data: Vec<DeliveryView>,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

/// The document as JSON text.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
}
