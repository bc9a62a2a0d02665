//! The OpenAPI 3.1 document served at `/openapi.json`, generated from the handlers'
//! `#[utoipa::path]` annotations and the body types of `http::wire` (the same types the
//! handlers deserialize and serialize), so the document cannot drift from what is accepted.
//!
//! It sits above the HTTP layer: it reads the handlers, no handler reads it.

use utoipa::openapi::header::Header;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail};
use crate::event::{Event, NewEventBody};
use crate::http::wire::frames::{ClientFrame, ServerFrame, SseReset};
use crate::http::wire::{
    AttemptView, BatchBody, CreatedKey, CreatedWebhook, DeletedWebhook, DeliveryPage, DeliveryView,
    EventList, EventPage, Health, HistoryItem, HistoryPageSchema, KeyList, KeyView, NewKeyBody,
    NewWebhookBody, QueuedDelivery, RotatedSecret, TestResult, TicketBody, TicketRequest, TypeGlob,
    WebhookList, WebhookPatchBody, WebhookView,
};
use cpod_proto::CloudEvent;

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
        crate::http::ops::asyncapi_json,
        crate::http::dashboard::index,
        crate::http::dashboard::sdk,
    ),
    components(schemas(Event, CloudEvent, ClientFrame, ServerFrame, SseReset, ErrorBody, ErrorDetail, NewEventBody, BatchBody, EventList, EventPage, NewKeyBody, KeyList, KeyView, CreatedKey, TicketRequest, TicketBody, WebhookView, CreatedWebhook, NewWebhookBody, WebhookPatchBody, WebhookList, RotatedSecret, TestResult, DeliveryPage, DeliveryView, AttemptView, Health, DeletedWebhook, QueuedDelivery, TypeGlob, HistoryItem, HistoryPageSchema, cpod_proto::cloudevents::EventFormat, cpod_proto::cloudevents::ContentMode)),
    modifiers(&BearerAuth, &CommonResponses, &Links),
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

/// The answers that come from what an operation is rather than from its handler, added to
/// every operation they apply to (an operation's own entry for the same status wins):
///
/// | the operation | answers |
/// |---|---|
/// | takes a credential | 401 (none, unknown or revoked), 429 (`CPOD_RATE_LIMIT`), 503 (shutting down) |
/// | takes a body | 400 (bad JSON, unknown field, broken rule), 413, 415 |
/// | takes query or header parameters | 400 (malformed, unknown or repeated parameter, bad value) |
/// | has an id in its path | 404 (no such id in the caller's organization, or not a UUID) |
///
/// Each is a `#/components/responses/…` entry, so the document says each thing once. Any
/// path also answers 405 with `Allow` to a method it does not take; that is no operation's
/// answer, so it is described once, as the `MethodNotAllowed` response, and not on operations.
/// Every response gets a description (OpenAPI requires one). A request body is never `null`
/// (the broker reads only JSON objects), so an optional body is described as absent-or-object,
/// not as nullable.
struct CommonResponses;

/// A reusable answer: its name under `#/components/responses`, status, description and the
/// header it carries (name, description).
struct CommonResponse {
    name: &'static str,
    status: u16,
    description: &'static str,
    header: Option<(&'static str, &'static str)>,
}

/// The reusable answers.
const COMMON: &[CommonResponse] = &[
    CommonResponse {
        name: "InvalidRequest",
        status: 400,
        description: "The request is invalid: bad JSON, an unknown or missing field or parameter, a broken rule; `param` names the field or parameter at fault",
        header: None,
    },
    CommonResponse {
        name: "Unauthorized",
        status: 401,
        description: "No credential, or an unknown, expired or revoked one",
        header: Some(("WWW-Authenticate", "`Bearer realm=\"cpod-events\"`")),
    },
    CommonResponse {
        name: "NotFound",
        status: 404,
        description: "Nothing with this id in the caller's organization (also for an id that is not a UUID)",
        header: None,
    },
    CommonResponse {
        name: "MethodNotAllowed",
        status: 405,
        description: "The path does not take this method; `Allow` lists the ones it takes",
        header: Some(("Allow", "The methods the path takes, e.g. `GET, POST`")),
    },
    CommonResponse {
        name: "RequestTimeout",
        status: 408,
        description: "The body did not arrive within `CPOD_BODY_TIMEOUT`; the connection is closed",
        header: None,
    },
    CommonResponse {
        name: "PayloadTooLarge",
        status: 413,
        description: "The body (or an event in it) is larger than the broker takes",
        header: None,
    },
    CommonResponse {
        name: "UnsupportedMediaType",
        status: 415,
        description: "The body is not in a content type the endpoint takes (`application/json`; for events also CloudEvents), or a CloudEvent's data is not JSON (`param` names `datacontenttype` or `data_base64`)",
        header: None,
    },
    CommonResponse {
        name: "RateLimited",
        status: 429,
        description: "This key is over its rate limit (`CPOD_RATE_LIMIT`)",
        header: Some(("Retry-After", "Seconds to wait before retrying")),
    },
    CommonResponse {
        name: "RequestHeadersTooLarge",
        status: 431,
        description: "The request's headers are larger or more numerous than the broker reads",
        header: None,
    },
    CommonResponse {
        name: "Unavailable",
        status: 503,
        description: "The broker is shutting down, its store does not answer, or bodies in flight already hold the memory budget (`CPOD_BODY_MEMORY`)",
        header: Some(("Retry-After", "Seconds to wait before retrying")),
    },
];

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for common in COMMON {
            let mut response = ResponseBuilder::new()
                .description(common.description)
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                );
            if let Some((header, about)) = common.header {
                let string = ObjectBuilder::new().schema_type(Type::String).build();
                let mut header_object = Header::new(string);
                header_object.description = Some(about.to_owned());
                response = response.header(header, header_object);
            }
            components
                .responses
                .insert(common.name.to_owned(), RefOr::T(response.build()));
        }
        for item in openapi.paths.paths.values_mut() {
            for operation in operations(item) {
                add_common_responses(operation);
                describe_every_response(operation);
                if let Some(RefOr::T(body)) = operation.request_body.as_mut() {
                    never_null(body);
                }
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn add_common_responses(operation: &mut Operation) {
    let takes = |place: ParameterIn| {
        operation.parameters.iter().flatten().any(|p| match p {
            RefOr::T(p) => p.parameter_in == place,
            RefOr::Ref(_) => false,
        })
    };
    let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_body = operation.request_body.is_some();
    let mut wanted = vec!["RequestHeadersTooLarge"];
    if secured {
        wanted.extend(["Unauthorized", "RateLimited", "Unavailable"]);
    }
    if has_body {
        wanted.extend([
            "InvalidRequest",
            "RequestTimeout",
            "PayloadTooLarge",
            "UnsupportedMediaType",
        ]);
    }
    if takes(ParameterIn::Query) || takes(ParameterIn::Header) {
        wanted.push("InvalidRequest");
    }
    if takes(ParameterIn::Path) {
        wanted.push("NotFound");
    }
    for name in wanted {
        let status = COMMON
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.status.to_string())
            .expect("every common response is in the table");
        operation
            .responses
            .responses
            .entry(status)
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
    }
}

/// OpenAPI requires a description on every response: an annotation without one gets the
/// status's reason phrase (`Created`, `Not Found`).
fn describe_every_response(operation: &mut Operation) {
    for (status, response) in &mut operation.responses.responses {
        if let RefOr::T(response) = response
            && response.description.is_empty()
        {
            response.description = status
                .parse::<actix_web::http::StatusCode>()
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("The answer")
                .to_owned();
        }
    }
}

/// An optional body (`Option<T>` in an annotation) is described by utoipa as `T` or `null`;
/// the broker reads an absent body as the defaults and refuses a `null` one, so the body is
/// `T`, not required.
fn never_null(body: &mut RequestBody) {
    for content in body.content.values_mut() {
        let RefOr::T(content) = content else { continue };
        let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema else {
            continue;
        };
        let is_null = |s: &RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null));
        let mut rest = one_of.items.iter().filter(|s| !is_null(s));
        if let (Some(only), None) = (rest.next(), rest.next()) {
            content.schema = Some(only.clone());
        }
    }
}

/// OpenAPI links: where the id a creation answers is used next, so that clients and tools that
/// follow links (schemathesis' stateful phase) reach existing resources.
struct Links;

/// (operation, status, link name, target operation, the target's `id` from the answer).
const LINKS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "post_event",
        "201",
        "GetEvent",
        "get_event",
        "$response.body#/id",
    ),
    (
        "post_batch",
        "201",
        "GetFirstEvent",
        "get_event",
        "$response.body#/data/0/id",
    ),
    (
        "create_key",
        "201",
        "RevokeKey",
        "revoke_key",
        "$response.body#/id",
    ),
    (
        "create_webhook",
        "201",
        "GetWebhook",
        "get_webhook",
        "$response.body#/id",
    ),
    (
        "create_webhook",
        "201",
        "UpdateWebhook",
        "update_webhook",
        "$response.body#/id",
    ),
    (
        "create_webhook",
        "201",
        "RotateSecret",
        "rotate_secret",
        "$response.body#/id",
    ),
    (
        "create_webhook",
        "201",
        "TestWebhook",
        "test_webhook",
        "$response.body#/id",
    ),
    (
        "create_webhook",
        "201",
        "ListDeliveries",
        "list_deliveries",
        "$response.body#/id",
    ),
    (
        "create_webhook",
        "201",
        "DeleteWebhook",
        "delete_webhook",
        "$response.body#/id",
    ),
];

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in operations(item) {
                let Some(id) = operation.operation_id.clone() else {
                    continue;
                };
                for (_, status, name, target, expression) in
                    LINKS.iter().filter(|(from, ..)| *from == id)
                {
                    let Some(RefOr::T(response)) = operation.responses.responses.get_mut(*status)
                    else {
                        panic!("{id} has no inline {status} answer to link from");
                    };
                    let link = LinkBuilder::new()
                        .operation_id(*target)
                        .parameter("id", *expression)
                        .build();
                    response.links.insert((*name).to_owned(), RefOr::T(link));
                }
            }
        }
    }
}

/// The document as JSON text.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
}
