//! The AsyncAPI 3.0 document served at `/asyncapi.json`: the Server-Sent Events stream, the
//! WebSocket protocol (every client operation with the frames that answer it, every frame the
//! broker writes) and webhook deliveries, as channels, operations and messages.
//!
//! Nothing in it is written twice. Its schemas are the OpenAPI document's component schemas
//! (`crate::openapi`, from the same Rust types, under the same names); the socket's messages
//! are the variants of `http::wire::frames::ClientFrame` and `ServerFrame`, read from their
//! schemas (one message per variant, named by the variant's title); the query parameters and
//! headers of the two stream routes are the OpenAPI operations' parameters. What is written
//! here is what no Rust type carries: the SSE framing of each message, which frames answer
//! which operation, and the webhook headers.
//!
//! It sits above the HTTP layer beside `openapi`: it reads the handlers' types, no handler reads
//! it (the text is built once at start-up and handed to `http::ops` in `AppState`).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use crate::http::sse::{KEEP_ALIVE, RETRY_MS};
use crate::openapi::ApiDoc;

/// The AsyncAPI version the document follows.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// The channel names.
const SSE_CHANNEL: &str = "eventStream";
const WS_CHANNEL: &str = "socket";
const WEBHOOK_CHANNEL: &str = "webhookDeliveries";

/// The schema of the frames a WebSocket client sends, and of those the broker writes.
const CLIENT_FRAMES: &str = "ClientFrame";
const SERVER_FRAMES: &str = "ServerFrame";

/// Which frames answer each client operation (by the titles of the frame variants); `Error`
/// answers any of them. Checked against the frame types by the unit tests, and against the
/// running broker (each operation's example sent, its answer one of these) by
/// `tests/api/asyncapi.rs`.
const REPLIES: &[(&str, &[&str])] = &[
    ("Auth", &["Authenticated", "Error"]),
    ("Subscribe", &["Subscribed", "Reset", "Error"]),
    ("Unsubscribe", &["Unsubscribed", "Error"]),
    ("Ping", &["Pong", "Error"]),
];

/// One message of the SSE stream: its name, how it travels (the `x-sse` extension: SSE field →
/// what it holds), its content type, payload and description.
struct SseMessage {
    name: &'static str,
    title: &'static str,
    fields: &'static [(&'static str, &'static str)],
    content_type: &'static str,
    payload: fn() -> Value,
    description: &'static str,
}

const SSE_MESSAGES: &[SseMessage] = &[
    SseMessage {
        name: "SseRetry",
        title: "retry",
        fields: &[("retry", "the payload")],
        content_type: "text/plain",
        payload: retry_schema,
        description: "The first bytes of every stream, sent at once: how long (milliseconds) a client waits before reconnecting, jittered so that a restart does not bring every client back in the same second.",
    },
    SseMessage {
        name: "SseEvent",
        title: "event",
        fields: &[
            (
                "id",
                "the event's id (send it back as Last-Event-ID to resume)",
            ),
            ("data", "the payload, JSON on one line"),
        ],
        content_type: "application/json",
        payload: || schema_ref("Event"),
        description: "One stored event that matches the filters, in store order: replay first (after `Last-Event-ID`, `lastEventId` or `since`), then live, with no gap and no duplicate at the seam. No `event:` field, so a browser's `onmessage` sees every event.",
    },
    SseMessage {
        name: "SseCloudEvent",
        title: "cloudEvent",
        fields: &[
            (
                "id",
                "the event's id (send it back as Last-Event-ID to resume)",
            ),
            ("data", "the payload, JSON on one line"),
        ],
        content_type: "application/cloudevents+json",
        payload: || schema_ref("CloudEvent"),
        description: "The `event` message on a stream opened with `format=cloudevents`: the same event in CloudEvents 1.0 structured JSON form.",
    },
    SseMessage {
        name: "SseReset",
        title: "reset",
        fields: &[
            ("event", "`reset`"),
            ("data", "the payload, JSON on one line"),
        ],
        content_type: "application/json",
        payload: || schema_ref("SseReset"),
        description: "After `retry`, when the given `Last-Event-ID` (or `lastEventId`) is unknown, belongs to another organization or has expired: the stream goes on live without replay, so the client should re-read history.",
    },
    SseMessage {
        name: "SseKeepAlive",
        title: "keep-alive",
        fields: &[("comment", "the payload")],
        content_type: "text/plain",
        payload: keep_alive_schema,
        description: "A comment line after each idle heartbeat interval (`CPOD_HEARTBEAT`, 15 s by default), so that proxies keep the connection open. Clients ignore it.",
    },
];

fn retry_schema() -> Value {
    json!({"type": "integer", "minimum": RETRY_MS.start, "maximum": RETRY_MS.end - 1})
}

fn keep_alive_schema() -> Value {
    let comment = std::str::from_utf8(KEEP_ALIVE)
        .expect("the keep-alive is ASCII")
        .trim_start_matches(':')
        .trim();
    json!({"type": "string", "const": comment})
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn message_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/messages/{name}")})
}

/// A channel's `messages`: each name refers to the component message of that name.
fn channel_messages<'a>(names: impl IntoIterator<Item = &'a str>) -> Map<String, Value> {
    names
        .into_iter()
        .map(|n| (n.to_owned(), message_ref(n)))
        .collect()
}

fn channel_message_ref(channel: &str, name: &str) -> Value {
    json!({"$ref": format!("#/channels/{channel}/messages/{name}")})
}

/// A message per variant of a tagged frame enum: (title, the variant's schema).
fn frame_variants(schemas: &Map<String, Value>, name: &str) -> Vec<(String, Value)> {
    schemas[name]["oneOf"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} is a tagged enum: its schema is a oneOf"))
        .iter()
        .map(|variant| {
            let title = variant["title"]
                .as_str()
                .unwrap_or_else(|| panic!("every variant of {name} has a title: {variant}"))
                .to_owned();
            (title, variant.clone())
        })
        .collect()
}

/// The `op` a frame variant's schema fixes.
fn op_of(variant: &Value) -> Option<&str> {
    variant["properties"]["op"]["enum"][0].as_str()
}

/// The parameters of an OpenAPI operation that are `in` this place, as one object schema
/// (what the AsyncAPI HTTP and WebSocket bindings take): each parameter a property, with its
/// schema and description.
fn parameters_schema(openapi: &Value, path: &str, place: &str) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for parameter in openapi["paths"][path]["get"]["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == place)
    {
        let name = parameter["name"].as_str().expect("a parameter has a name");
        let mut schema = parameter["schema"].clone();
        if let (Some(schema), Some(description)) =
            (schema.as_object_mut(), parameter.get("description"))
        {
            schema.insert("description".into(), description.clone());
        }
        if parameter["required"] == true {
            required.push(name.to_owned());
        }
        properties.insert(name.to_owned(), schema);
    }
    json!({"type": "object", "properties": properties, "required": required})
}

/// Every schema name `value` refers to, and those they refer to, in turn.
fn referenced_schemas(roots: &Value, schemas: &Map<String, Value>) -> BTreeSet<String> {
    fn collect(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref")
                    && let Some(name) = target.strip_prefix("#/components/schemas/")
                {
                    found.push(name.to_owned());
                }
                map.values().for_each(|v| collect(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, found)),
            _ => {}
        }
    }
    let mut seen = BTreeSet::new();
    let mut pending = Vec::new();
    collect(roots, &mut pending);
    while let Some(name) = pending.pop() {
        if seen.insert(name.clone()) {
            let schema = schemas
                .get(&name)
                .unwrap_or_else(|| panic!("schema {name} is referred to but not defined"));
            collect(schema, &mut pending);
        }
    }
    seen
}

/// The headers of every webhook delivery (contract §6: Standard Webhooks, and the broker's own).
fn webhook_headers(content_type: &str) -> Value {
    json!({
        "type": "object",
        "required": ["webhook-id", "webhook-timestamp", "webhook-signature", "X-Cpod-Signature", "X-Cpod-Event-Type", "Content-Type"],
        "properties": {
            "webhook-id": {"type": "string", "format": "uuid", "description": "The event's id: the same on every attempt (deduplicate on it)."},
            "webhook-timestamp": {"type": "string", "pattern": "^[0-9]+$", "description": "This attempt's time, Unix seconds."},
            "webhook-signature": {"type": "string", "pattern": "^v1,[A-Za-z0-9+/]+={0,2}( v1,[A-Za-z0-9+/]+={0,2})*$", "description": "Standard Webhooks: `v1,` + base64 of HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64-decoded part of the secret after `whsec_`; one per active secret, space-separated, while a rotation is under way."},
            "X-Cpod-Signature": {"type": "string", "pattern": "^t=[0-9]+(,v1=[0-9a-f]{64})+$", "description": "`t=<webhook-timestamp>,v1=<lowercase hex of the same HMAC>`, one `v1=` per active secret."},
            "X-Cpod-Event-Type": {"type": "string", "description": "The event's type."},
            "Content-Type": {"type": "string", "const": content_type}
        }
    })
}

/// The document as a JSON value.
pub fn document_value() -> Value {
    let openapi = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document is JSON");
    let all_schemas = openapi["components"]["schemas"]
        .as_object()
        .expect("the OpenAPI document has component schemas")
        .clone();
    let client_frames = frame_variants(&all_schemas, CLIENT_FRAMES);
    let server_frames = frame_variants(&all_schemas, SERVER_FRAMES);

    let mut messages = Map::new();
    for sse in SSE_MESSAGES {
        let fields: Map<String, Value> = sse
            .fields
            .iter()
            .map(|(field, holds)| ((*field).to_owned(), Value::from(*holds)))
            .collect();
        messages.insert(
            sse.name.to_owned(),
            json!({
                "name": sse.title,
                "title": sse.title,
                "contentType": sse.content_type,
                "description": sse.description,
                "payload": (sse.payload)(),
                "x-sse": fields,
            }),
        );
    }
    messages.insert(
        "StreamRefused".into(),
        json!({
            "name": "refused",
            "title": "refused",
            "summary": "The stream is refused before it opens",
            "description": "An error answer instead of the stream or the upgrade: 400 (a bad parameter, not a WebSocket upgrade), 401 (no credential, or an unknown, expired or revoked one), 403 (another organization, or `*` without an admin key), 429, 503. The contract's error body; `param` names the parameter at fault.",
            "contentType": "application/json",
            "payload": schema_ref("ErrorBody"),
        }),
    );
    // The broker's frames are serialized from `ServerFrame`, so they hold exactly the fields of
    // their variant: closed, so that a drift shows (utoipa leaves enum variants open). Client
    // frames stay open: the socket ignores fields it does not read.
    let closed = server_frames.iter().map(|(title, variant)| {
        let mut variant = variant.clone();
        variant["additionalProperties"] = Value::Bool(false);
        (title.clone(), variant)
    });
    let socket_frames: Vec<(String, Value)> = client_frames.iter().cloned().chain(closed).collect();
    for (title, variant) in &socket_frames {
        let mut message = json!({
            "name": op_of(variant).unwrap_or(title),
            "title": title,
            "contentType": "application/json",
            "payload": variant,
        });
        if let Some(description) = variant.get("description") {
            message["description"] = description.clone();
        }
        if let Some(example) = variant
            .get("example")
            .or_else(|| variant["examples"].get(0))
        {
            message["examples"] = json!([{"payload": example}]);
        }
        messages.insert(format!("Ws{title}"), message);
    }
    for (name, title, schema, content_type, description) in [
        (
            "WebhookEvent",
            "event",
            "Event",
            "application/json",
            "One event for one endpoint whose filters it matches, at least once: a 2xx within 15 seconds is success; anything else (a redirect included) is retried with ±20% jitter after 0 s, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h (`CPOD_WEBHOOK_RETRY_SCHEDULE`; `Retry-After` is honoured), then the delivery is marked failed. `410 Gone` disables the endpoint. The body bytes are the same on every attempt; the timestamp and signatures are fresh on each.",
        ),
        (
            "WebhookCloudEvent",
            "cloudEvent",
            "CloudEvent",
            "application/cloudevents+json",
            "The delivery to an endpoint made with `format: \"cloudevents\"`: the event in CloudEvents 1.0 structured JSON form, signed and retried exactly as the `event` delivery.",
        ),
    ] {
        messages.insert(
            name.into(),
            json!({
                "name": title,
                "title": title,
                "contentType": content_type,
                "description": description,
                "headers": webhook_headers(content_type),
                "payload": schema_ref(schema),
                "bindings": {"http": {"bindingVersion": "0.3.0"}},
            }),
        );
    }

    let sse_names: Vec<&str> = SSE_MESSAGES
        .iter()
        .map(|m| m.name)
        .chain(["StreamRefused"])
        .collect();
    let ws_names: Vec<String> = client_frames
        .iter()
        .chain(&server_frames)
        .map(|(title, _)| format!("Ws{title}"))
        .chain(["StreamRefused".to_owned()])
        .collect();

    let stream_path = "/v1/events/stream";
    let socket_path = "/v1/events/ws";
    let channels = json!({
        SSE_CHANNEL: {
            "address": stream_path,
            "title": "Server-Sent Events",
            "description": "`GET /v1/events/stream` answers `text/event-stream` (`Cache-Control: no-cache`, `X-Accel-Buffering: no`): every matching event stored after the stream starts, in store order (replay first when asked), and nothing else. A subscriber that falls behind is served from the store, never dropped. Each message's `x-sse` says the SSE fields it is written with. The stream ends on shutdown, when its key is revoked, or when the ticket that opened it expires; reconnect with `Last-Event-ID`.",
            "servers": [{"$ref": "#/servers/http"}],
            "messages": channel_messages(sse_names.iter().copied()),
        },
        WS_CHANNEL: {
            "address": socket_path,
            "title": "WebSocket",
            "description": "`GET /v1/events/ws`: JSON text frames, many subscriptions per socket. A socket opened without an `Authorization` header or `ticket` must send `auth` first: any other frame gets an `unauthorized` error, and a socket with no valid `auth` after 10 seconds is closed with code 4401. The broker sends a WebSocket ping every heartbeat interval (`CPOD_HEARTBEAT`) while idle and closes a socket that misses two (1008). A revoked key or an expired ticket closes the socket with 4403; shutdown with 1001; a message over 64 KiB with 1009. A binary frame, bad JSON, an unknown op or a refused filter gets an `error` frame, and the socket stays open.",
            "servers": [{"$ref": "#/servers/ws"}],
            "messages": channel_messages(ws_names.iter().map(String::as_str)),
            "bindings": {"ws": {
                "method": "GET",
                "query": parameters_schema(&openapi, socket_path, "query"),
                "headers": {"type": "object", "properties": {"Authorization": {"type": "string", "pattern": "^Bearer ", "description": "`Bearer <key>` (or use `ticket`, or an `auth` frame)"}}},
                "bindingVersion": "0.1.0",
            }},
        },
        WEBHOOK_CHANNEL: {
            "address": null,
            "title": "Webhook deliveries",
            "description": "`POST <url>` of each webhook endpoint (`POST /v1/webhooks`): its address is the URL it was registered with. Signed after the Standard Webhooks specification, so that its reference verifiers accept the deliveries.",
            "servers": [{"$ref": "#/servers/webhookReceiver"}],
            "messages": channel_messages(["WebhookEvent", "WebhookCloudEvent"]),
        },
    });

    let mut operations = Map::new();
    operations.insert(
        "streamEvents".into(),
        json!({
            "action": "send",
            "title": "Stream events",
            "summary": "The broker sends matching events as Server-Sent Events",
            "description": "Open with `GET`; the query takes the history filters and the start (`Last-Event-ID` header, `lastEventId` or `since`). The `cloudEvent` message replaces `event` where `format=cloudevents` is asked for.",
            "channel": {"$ref": format!("#/channels/{SSE_CHANNEL}")},
            "messages": sse_names.iter().map(|n| channel_message_ref(SSE_CHANNEL, n)).collect::<Vec<_>>(),
            "bindings": {"http": {
                "method": "GET",
                "query": parameters_schema(&openapi, stream_path, "query"),
                "bindingVersion": "0.3.0",
            }},
            "x-request-headers": parameters_schema(&openapi, stream_path, "header"),
        }),
    );
    for (title, variant) in &client_frames {
        let replies = REPLIES
            .iter()
            .find(|(op, _)| op == title)
            .map(|(_, replies)| *replies)
            .unwrap_or_else(|| panic!("REPLIES says which frames answer {title}"));
        let mut operation = json!({
            "action": "receive",
            "title": title,
            "channel": {"$ref": format!("#/channels/{WS_CHANNEL}")},
            "messages": [channel_message_ref(WS_CHANNEL, &format!("Ws{title}"))],
            "reply": {
                "channel": {"$ref": format!("#/channels/{WS_CHANNEL}")},
                "messages": replies.iter().map(|r| channel_message_ref(WS_CHANNEL, &format!("Ws{r}"))).collect::<Vec<_>>(),
            },
        });
        if let Some(description) = variant.get("description") {
            operation["description"] = description.clone();
        }
        let op = op_of(variant).expect("every client frame has an op");
        operations.insert(op.to_owned(), operation);
    }
    operations.insert(
        "sendFrames".into(),
        json!({
            "action": "send",
            "title": "Server frames",
            "summary": "Every frame the broker writes on a socket",
            "description": "The answers to the client's operations, and per subscription its `event` frames (`CloudEventFrame` for a subscription asked with `format=cloudevents`), a `reset` when it cannot resume, and an `error` if it fails.",
            "channel": {"$ref": format!("#/channels/{WS_CHANNEL}")},
            "messages": server_frames.iter().map(|(t, _)| channel_message_ref(WS_CHANNEL, &format!("Ws{t}"))).collect::<Vec<_>>(),
        }),
    );
    operations.insert(
        "deliverWebhook".into(),
        json!({
            "action": "send",
            "title": "Deliver a webhook",
            "summary": "The broker POSTs each matching event to each enabled endpoint",
            "channel": {"$ref": format!("#/channels/{WEBHOOK_CHANNEL}")},
            "messages": [
                channel_message_ref(WEBHOOK_CHANNEL, "WebhookEvent"),
                channel_message_ref(WEBHOOK_CHANNEL, "WebhookCloudEvent"),
            ],
            "bindings": {"http": {"method": "POST", "bindingVersion": "0.3.0"}},
        }),
    );

    let roots = json!([messages, channels]);
    let schemas: Map<String, Value> = referenced_schemas(&roots, &all_schemas)
        .into_iter()
        .map(|name| {
            let schema = all_schemas[&name].clone();
            (name, schema)
        })
        .collect();
    let info = &openapi["info"];
    let host = json!({"host": {"default": "127.0.0.1:8080", "description": "The broker's address (`CPOD_LISTEN`), or the proxy's in front of it"}});
    let security = json!([
        {"$ref": "#/components/securitySchemes/bearer"},
        {"$ref": "#/components/securitySchemes/ticket"},
    ]);
    json!({
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": info["title"],
            "version": info["version"],
            "description": "The live side of cPod Events: the Server-Sent Events stream, the WebSocket protocol and webhook deliveries. The HTTP API (ingestion, history, keys, webhook endpoints) is described by the OpenAPI document at `/openapi.json`, whose schemas these are.",
            "license": {"name": info["license"]["name"]},
        },
        "defaultContentType": "application/json",
        "servers": {
            "http": {
                "host": "{host}",
                "protocol": "http",
                "description": "The broker (`https` behind a TLS proxy).",
                "variables": host,
                "security": security,
            },
            "ws": {
                "host": "{host}",
                "protocol": "ws",
                "description": "The broker's WebSocket endpoint (`wss` behind a TLS proxy). Besides a header or ticket, a socket may authenticate with an `auth` frame.",
                "variables": host,
                "security": security,
            },
            "webhookReceiver": {
                "host": "{receiver}",
                "protocol": "https",
                "description": "A webhook endpoint's receiver: the host of the URL the endpoint was registered with (`http` too).",
                "variables": {"receiver": {"default": "example.com", "description": "The host (and port) of the endpoint's URL"}},
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"},
                "ticket": {"type": "httpApiKey", "name": "ticket", "in": "query", "description": "A stream ticket (`POST /v1/stream-tickets`), for clients that cannot send headers"},
            },
        },
    })
}

/// The document as JSON text.
pub fn document() -> String {
    serde_json::to_string(&document_value()).expect("the AsyncAPI document serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::wire::frames::{ClientFrame, ServerFrame};

    fn document() -> Value {
        document_value()
    }

    /// Resolves a local `$ref`.
    fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
        match value["$ref"].as_str() {
            Some(target) => {
                let pointer = target.strip_prefix('#').expect("a local reference");
                let resolved = document
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("{target} resolves"));
                resolve(document, resolved)
            }
            None => value,
        }
    }

    #[test]
    fn every_reference_resolves_and_every_schema_is_the_openapi_one() {
        let document = document();
        let openapi = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut references = Vec::new();
        fn walk(value: &Value, found: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        found.push(r.clone());
                    }
                    map.values().for_each(|v| walk(v, found));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
                _ => {}
            }
        }
        walk(&document, &mut references);
        assert!(references.len() > 50, "{}", references.len());
        for reference in &references {
            let pointer = reference.strip_prefix('#').unwrap();
            assert!(document.pointer(pointer).is_some(), "{reference}");
        }
        let schemas = document["components"]["schemas"].as_object().unwrap();
        for name in [
            "Event",
            "CloudEvent",
            "ErrorBody",
            "SseReset",
            "StreamFilter",
        ] {
            assert!(schemas.contains_key(name), "{name}");
        }
        for (name, schema) in schemas {
            assert_eq!(
                schema, &openapi["components"]["schemas"][name],
                "{name} is the OpenAPI document's schema"
            );
        }
    }

    #[test]
    fn the_socket_has_a_message_per_frame_variant_and_an_operation_per_client_op() {
        let document = document();
        let channel = &document["channels"][WS_CHANNEL];
        assert_eq!(channel["address"], "/v1/events/ws");
        let names: BTreeSet<String> = channel["messages"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let mut schemas = Vec::new();
        let client = <ClientFrame as utoipa::PartialSchema>::schema();
        let server = <ServerFrame as utoipa::PartialSchema>::schema();
        let mut expected = BTreeSet::from(["StreamRefused".to_owned()]);
        for schema in [client, server] {
            let schema = serde_json::to_value(schema).unwrap();
            for variant in schema["oneOf"].as_array().unwrap() {
                expected.insert(format!("Ws{}", variant["title"].as_str().unwrap()));
            }
            schemas.push(schema);
        }
        assert_eq!(names, expected);
        // Seven kinds of server frame (two of them `event`) and four client operations.
        assert_eq!(schemas[1]["oneOf"].as_array().unwrap().len(), 8);
        for (title, _) in frame_variants(&openapi_schemas(), SERVER_FRAMES) {
            let payload = &document["components"]["messages"][format!("Ws{title}")]["payload"];
            assert_eq!(payload["additionalProperties"], false, "{title} is closed");
        }
        for variant in schemas[0]["oneOf"].as_array().unwrap() {
            let op = op_of(variant).unwrap();
            let operation = &document["operations"][op];
            assert_eq!(operation["action"], "receive", "{op}");
            let replies = operation["reply"]["messages"].as_array().unwrap();
            assert!(!replies.is_empty(), "{op}");
            for reply in replies {
                let message = resolve(&document, reply);
                assert!(
                    server_ops(&schemas[1]).contains(op_of(&message["payload"]).unwrap()),
                    "{op} is answered by a server frame: {message}"
                );
            }
        }
        assert_eq!(REPLIES.len(), schemas[0]["oneOf"].as_array().unwrap().len());
    }

    fn openapi_schemas() -> Map<String, Value> {
        let openapi = serde_json::to_value(ApiDoc::openapi()).unwrap();
        openapi["components"]["schemas"]
            .as_object()
            .unwrap()
            .clone()
    }

    fn server_ops(schema: &Value) -> BTreeSet<&str> {
        schema["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(op_of)
            .collect()
    }

    #[test]
    fn every_operation_sends_or_receives_only_messages_of_its_channel() {
        let document = document();
        let operations = document["operations"].as_object().unwrap();
        assert!(operations.len() >= 7);
        for (name, operation) in operations {
            let channel = resolve(&document, &operation["channel"]);
            let channel_ref = operation["channel"]["$ref"].as_str().unwrap();
            for message in operation["messages"].as_array().unwrap() {
                let reference = message["$ref"].as_str().unwrap();
                assert!(
                    reference.starts_with(&format!("{channel_ref}/messages/")),
                    "{name}: {reference}"
                );
                let key = reference.rsplit('/').next().unwrap();
                assert!(channel["messages"].get(key).is_some(), "{name}: {key}");
            }
        }
    }

    #[test]
    fn the_stream_takes_the_openapi_operations_parameters() {
        let document = document();
        let query = &document["operations"]["streamEvents"]["bindings"]["http"]["query"];
        for name in [
            "organizationId",
            "types",
            "resourceType",
            "resourceId",
            "workspaceId",
            "lastEventId",
            "since",
            "ticket",
        ] {
            assert!(query["properties"][name].is_object(), "{name}");
        }
        let headers = &document["operations"]["streamEvents"]["x-request-headers"];
        assert!(headers["properties"]["Last-Event-ID"].is_object());
        let socket = &document["channels"][WS_CHANNEL]["bindings"]["ws"]["query"];
        assert!(socket["properties"]["ticket"].is_object());
    }

    #[test]
    fn the_sse_messages_say_how_they_are_framed() {
        let document = document();
        let messages = &document["components"]["messages"];
        assert_eq!(
            messages["SseEvent"]["payload"]["$ref"],
            "#/components/schemas/Event"
        );
        assert_eq!(
            messages["SseCloudEvent"]["payload"]["$ref"],
            "#/components/schemas/CloudEvent"
        );
        assert_eq!(messages["SseReset"]["x-sse"]["event"], "`reset`");
        assert_eq!(messages["SseRetry"]["payload"]["minimum"], 2000);
        assert_eq!(messages["SseKeepAlive"]["payload"]["const"], "keep-alive");
        let webhook = &messages["WebhookEvent"]["headers"]["required"];
        for header in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            assert!(webhook.as_array().unwrap().contains(&json!(header)));
        }
    }
}
