//! The OpenAPI 3.1 document served at `/openapi.json`, generated from the handlers'
//! `#[utoipa::path]` annotations and the body types of `http::wire` (the same types the
//! handlers deserialize and serialize), so the document cannot drift from what is accepted.
//!
//! It sits above the HTTP layer: it reads the handlers, no handler reads it.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::event::{Event, NewEventBody};
use crate::http::wire::{
    AttemptView, BatchBody, CreatedKey, CreatedWebhook, DeliveryPage, DeliveryView, EventList,
    EventPage, KeyList, KeyView, NewKeyBody, NewWebhookBody, RotatedSecret, TestResult, TicketBody,
    TicketRequest, WebhookList, WebhookPatchBody, WebhookView,
};

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

/// The document as JSON text.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
}
