//! The AsyncAPI document at `/asyncapi.json`, checked by AsyncAPI's own parser
//! (`@asyncapi/parser`, from npm: structure, references, bindings, examples, its rules) and
//! against the broker that serves it: every channel's address answers as a stream or an upgrade,
//! every WebSocket operation's example gets one of its documented replies, every message the
//! broker is seen sending validates against the schema of the message it is documented as
//! (validated by the parser's own Ajv), and every message the document lists is seen.
//!
//! The parser is installed with `npm ci` (pinned by `tests/api/asyncapi/package-lock.json`) into
//! `target/asyncapi-parser` on first use. Where that is impossible the tests say so and pass,
//! unless `CI` is set: in CI they must run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{SseClient, TestApp, json_of, spawn_app, spawn_app_with};
use crate::receiver::Receiver;
use crate::ws::recv;

/// `node_modules` with `@asyncapi/parser`, or `None` (after saying why) where it cannot be
/// installed outside CI.
fn parser_modules() -> Option<PathBuf> {
    static MODULES: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let modules = MODULES.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api/asyncapi");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("asyncapi-parser");
        let lock = std::fs::read(source.join("package-lock.json")).map_err(|e| e.to_string())?;
        let installed = dir
            .join("node_modules/@asyncapi/parser/package.json")
            .exists()
            && std::fs::read(dir.join("package-lock.json")).is_ok_and(|l| l == lock);
        if !installed {
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            for file in ["package.json", "package-lock.json"] {
                std::fs::copy(source.join(file), dir.join(file)).map_err(|e| e.to_string())?;
            }
            // --ignore-scripts: the parser's tree has an analytics post-install script.
            let output = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
                .current_dir(&dir)
                .output()
                .map_err(|e| format!("npm: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "npm ci of @asyncapi/parser failed:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
        }
        Ok(dir)
    });
    match modules {
        Ok(dir) => Some(dir.clone()),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("CI must run @asyncapi/parser: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED (CI is not set): @asyncapi/parser is not available: {why}");
            None
        }
    }
}

/// What the parser says of a document, and of the samples checked against its messages.
struct Findings {
    /// (severity: 0 error, 1 warning, 2 info, 3 hint; code; message; path)
    diagnostics: Vec<(u64, String, String, String)>,
    /// (message, index, errors)
    samples: Vec<(String, i64, Vec<String>)>,
}

/// Runs `validate.cjs` on the document, with `samples` (message id → payloads; `id:headers` →
/// header objects).
fn parse(modules: &Path, work: &Path, document: &str, samples: &Value) -> Findings {
    let document_path = work.join("asyncapi.json");
    let samples_path = work.join("samples.json");
    std::fs::write(&document_path, document).unwrap();
    std::fs::write(&samples_path, samples.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api/asyncapi/validate.cjs");
    let output = Command::new("node")
        .arg(script)
        .arg(modules)
        .arg(&document_path)
        .arg(&samples_path)
        .output()
        .expect("node runs");
    assert!(
        output.status.success(),
        "validate.cjs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    Findings {
        diagnostics: out["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["severity"].as_u64().unwrap(),
                    d["code"].to_string(),
                    d["message"].as_str().unwrap_or("").to_owned(),
                    d["path"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect(),
        samples: out["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["message"].as_str().unwrap().to_owned(),
                    s["index"].as_i64().unwrap(),
                    s["errors"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e.as_str().unwrap().to_owned())
                        .collect(),
                )
            })
            .collect(),
    }
}

async fn fetch_document(app: &TestApp) -> (String, Value) {
    let response = app
        .client
        .get(app.url("/asyncapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap();
    (text, value)
}

#[tokio::test]
async fn asyncapis_own_parser_finds_no_error_in_the_served_document() {
    let Some(modules) = parser_modules() else {
        return;
    };
    let app = spawn_app().await;
    let (text, document) = fetch_document(&app).await;
    assert_eq!(document["asyncapi"], "3.0.0");
    // The parser does not hold a message's examples to its payload schema: its Ajv does, here.
    let mut examples = Map::new();
    for (id, message) in document["components"]["messages"].as_object().unwrap() {
        let payloads: Vec<Value> = message["examples"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["payload"].clone())
            .collect();
        if !payloads.is_empty() {
            examples.insert(id.clone(), Value::Array(payloads));
        }
    }
    assert!(examples.len() >= 11, "{:?}", examples.keys());
    let findings = parse(&modules, app.dir.path(), &text, &Value::Object(examples));
    let invalid: Vec<_> = findings
        .samples
        .iter()
        .filter(|(_, _, errors)| !errors.is_empty())
        .collect();
    assert!(
        invalid.is_empty(),
        "examples that break their schema: {invalid:?}"
    );
    let listed: Vec<String> = findings
        .diagnostics
        .iter()
        .map(|(severity, code, message, path)| {
            let level = ["error", "warning", "info", "hint"][*severity as usize];
            format!("{level} {code} at {path}: {message}")
        })
        .collect();
    eprintln!(
        "@asyncapi/parser on /asyncapi.json: {} finding(s)\n{}",
        listed.len(),
        listed.join("\n")
    );
    assert!(
        findings
            .diagnostics
            .iter()
            .all(|(severity, ..)| *severity > 0),
        "errors:\n{}",
        listed.join("\n")
    );
}

/// The messages a channel lists: id → the message (resolved).
fn channel_messages(document: &Value, channel: &str) -> BTreeMap<String, Value> {
    document["channels"][channel]["messages"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, reference)| {
            let pointer = reference["$ref"].as_str().unwrap().trim_start_matches('#');
            (id.clone(), document.pointer(pointer).unwrap().clone())
        })
        .collect()
}

/// The messages of a channel that carry the event as a CloudEvent (by their content type).
fn cloud_event_messages(messages: &BTreeMap<String, Value>) -> Vec<String> {
    messages
        .iter()
        .filter(|(_, m)| m["contentType"] == "application/cloudevents+json")
        .map(|(id, _)| id.clone())
        .collect()
}

fn message_id(reference: &Value) -> String {
    reference["$ref"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned()
}

/// The messages the test exchanged with the broker (what it saw sent, and the client frames
/// the broker took), by the message each is documented as.
#[derive(Default)]
struct Seen {
    samples: BTreeMap<String, Vec<Value>>,
}

impl Seen {
    fn add(&mut self, message: &str, payload: Value) {
        self.samples
            .entry(message.to_owned())
            .or_default()
            .push(payload);
    }
}

/// The socket's messages that a frame with this `op` may be (by the `op` their payloads fix).
fn frames_with_op(messages: &BTreeMap<String, Value>, op: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|(_, m)| m["payload"]["properties"]["op"]["enum"][0] == op)
        .map(|(id, _)| id.clone())
        .collect()
}

/// Every channel of the document on a running broker: the SSE stream (each documented message
/// seen: retry, reset, event, keep-alive; the refusal), the WebSocket (each receive operation's
/// example answered with a documented reply; each server frame seen) and a webhook delivery
/// (its headers and body). Everything seen is validated against its message's schema by the
/// parser's Ajv, and the socket's server frames are the `ServerFrame` type's variants.
#[tokio::test]
async fn every_channel_and_message_of_the_asyncapi_document_is_what_the_broker_serves() {
    let Some(modules) = parser_modules() else {
        return;
    };
    let app = spawn_app_with(&["--heartbeat", "1s", "--webhook-allow-private", "true"]).await;
    let (text, document) = fetch_document(&app).await;
    let openapi = json_of(
        app.client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let service = app.key("org-a", "service").await;
    let mut seen = Seen::default();
    let mut expected_unseen = BTreeSet::new();

    // Each channel with an address, by its server's protocol.
    let channels = document["channels"].as_object().unwrap();
    let mut protocols = BTreeSet::new();
    for (name, channel) in channels {
        let Some(address) = channel["address"].as_str() else {
            continue;
        };
        let server = &channel["servers"][0]["$ref"];
        let protocol = document
            .pointer(server.as_str().unwrap().trim_start_matches('#'))
            .unwrap()["protocol"]
            .as_str()
            .unwrap()
            .to_owned();
        protocols.insert(protocol.clone());
        let messages = channel_messages(&document, name);
        match protocol.as_str() {
            "http" => {
                check_sse(
                    &app,
                    &service,
                    address,
                    &messages,
                    &openapi,
                    &mut seen,
                    &mut expected_unseen,
                )
                .await
            }
            "ws" => {
                check_socket(
                    &app,
                    &service,
                    &document,
                    name,
                    address,
                    &mut seen,
                    &mut expected_unseen,
                )
                .await
            }
            other => panic!("channel {name}: no check for protocol {other}"),
        }
    }
    assert_eq!(protocols, BTreeSet::from(["http".into(), "ws".into()]));

    // The webhook channel has no fixed address: an endpoint is made for a receiver, per format
    // the endpoint body takes (the CloudEvent delivery once the OpenAPI document offers
    // `format`).
    let webhook_channel = channels
        .iter()
        .find(|(_, c)| c["address"].is_null())
        .map(|(name, _)| name.clone())
        .expect("the webhook channel");
    let messages = channel_messages(&document, &webhook_channel);
    let mut endpoints = vec![json!({})];
    let offers_format =
        openapi["components"]["schemas"]["NewWebhookBody"]["properties"]["format"].is_object();
    if offers_format {
        endpoints.push(json!({"format": "cloudevents"}));
    }
    for mut endpoint in endpoints {
        let receiver = Receiver::start().await;
        endpoint["url"] = json!(receiver.url);
        json_of(
            app.post_json(&service, "/v1/webhooks", &endpoint)
                .send()
                .await
                .unwrap(),
            StatusCode::CREATED,
        )
        .await;
        app.emit(&service, &crate::helpers::custom("hooked")).await;
        let delivery = receiver
            .wait_for(1, Duration::from_secs(10))
            .await
            .remove(0);
        let content_type = delivery.header("content-type").unwrap().to_owned();
        let (id, message) = messages
            .iter()
            .find(|(_, m)| m["contentType"] == content_type.as_str())
            .unwrap_or_else(|| panic!("no webhook message is sent as {content_type}"));
        let mut headers = Map::new();
        for (name, value) in &delivery.headers {
            if let Some(documented) = message["headers"]["properties"]
                .as_object()
                .unwrap()
                .keys()
                .find(|k| k.eq_ignore_ascii_case(name))
            {
                headers.insert(documented.clone(), Value::from(value.as_str()));
            }
        }
        seen.add(id, delivery.json());
        seen.add(&format!("{id}:headers"), Value::Object(headers));
    }
    if !offers_format {
        expected_unseen.extend(cloud_event_messages(&messages));
    }

    // Everything seen validates against its message; every message was seen.
    let samples = serde_json::to_value(&seen.samples).unwrap();
    let findings = parse(&modules, app.dir.path(), &text, &samples);
    let failures: Vec<String> = findings
        .samples
        .iter()
        .filter(|(_, _, errors)| !errors.is_empty())
        .map(|(message, index, errors)| {
            format!(
                "{message}[{index}] {}: {}",
                seen.samples
                    .get(message)
                    .and_then(|s| s.get(*index as usize))
                    .map(Value::to_string)
                    .unwrap_or_default(),
                errors.join("; ")
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "what the broker sent does not match the document:\n{}",
        failures.join("\n")
    );
    let listed: BTreeSet<String> = document["components"]["messages"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let observed: BTreeSet<String> = seen
        .samples
        .keys()
        .filter(|k| !k.ends_with(":headers"))
        .cloned()
        .collect();
    let missing: Vec<_> = listed
        .difference(&observed)
        .filter(|m| !expected_unseen.contains(*m))
        .collect();
    assert!(missing.is_empty(), "documented but never seen: {missing:?}");
    eprintln!(
        "seen and valid: {observed:?}; not produced by this build, by what the OpenAPI document offers: {expected_unseen:?}"
    );
}

/// The SSE channel: the refusal, then one stream that shows `retry`, `reset`, an event and a
/// keep-alive; with `format=cloudevents` where the route takes it.
async fn check_sse(
    app: &TestApp,
    key: &str,
    address: &str,
    messages: &BTreeMap<String, Value>,
    openapi: &Value,
    seen: &mut Seen,
    expected_unseen: &mut BTreeSet<String>,
) {
    let refused = app.client.get(app.url(address)).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    seen.add("StreamRefused", refused.json().await.unwrap());

    let takes_format = openapi["paths"][address]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "format");
    let mut formats = vec![("", "application/json")];
    if takes_format {
        formats.push(("&format=cloudevents", "application/cloudevents+json"));
    }
    for (query, content_type) in formats {
        let unknown = uuid::Uuid::now_v7().to_string();
        let path = format!("{address}?lastEventId={unknown}{query}");
        let mut stream = SseClient::open(&app.address, key, &path, None).await;
        assert_eq!(stream.response_headers["content-type"], "text/event-stream");
        app.emit(key, &crate::helpers::custom("streamed")).await;
        let mut kinds = BTreeSet::new();
        while kinds.len() < 4 {
            let block = stream
                .next(Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("the stream stalled after {kinds:?}"));
            let mut fields = BTreeSet::new();
            let payload = {
                let mut payload = None;
                if block.id.is_some() {
                    fields.insert("id");
                }
                if block.event.is_some() {
                    fields.insert("event");
                }
                if let Some(data) = &block.data {
                    fields.insert("data");
                    payload = Some(serde_json::from_str::<Value>(data).unwrap());
                }
                if let Some(retry) = block.retry {
                    fields.insert("retry");
                    payload = Some(json!(retry));
                }
                if let Some(comment) = &block.comment {
                    fields.insert("comment");
                    payload = Some(json!(comment));
                }
                payload.unwrap()
            };
            // The message with exactly these SSE fields (and this content type, where two share
            // them).
            let candidates: Vec<&String> = messages
                .iter()
                .filter(|(_, m)| {
                    m["x-sse"].as_object().is_some_and(|x| {
                        x.keys().map(String::as_str).collect::<BTreeSet<_>>() == fields
                    })
                })
                .filter(|(_, m)| !(fields.contains("id") && m["contentType"] != content_type))
                .map(|(id, _)| id)
                .collect();
            assert_eq!(
                candidates.len(),
                1,
                "{fields:?} ({content_type}) is one documented message: {candidates:?}"
            );
            seen.add(candidates[0], payload);
            kinds.insert(candidates[0].clone());
        }
    }
    if !takes_format {
        expected_unseen.extend(cloud_event_messages(messages));
    }
}

/// The WebSocket channel: the refused upgrade, then on one socket opened without a credential,
/// each receive operation's example (`auth` first, with a real key) and its reply; a reset, an
/// event and an error frame.
async fn check_socket(
    app: &TestApp,
    key: &str,
    document: &Value,
    channel: &str,
    address: &str,
    seen: &mut Seen,
    expected_unseen: &mut BTreeSet<String>,
) {
    let refused = app
        .client
        .get(app.url(address))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "not an upgrade");
    seen.add("StreamRefused", refused.json().await.unwrap());

    let messages = channel_messages(document, channel);
    // The server frames the document lists are the variants of the type ws.rs writes.
    let server_schema = serde_json::to_value(
        <cpod_events::http::wire::frames::ServerFrame as utoipa::PartialSchema>::schema(),
    )
    .unwrap();
    let typed: BTreeSet<String> = server_schema["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("Ws{}", v["title"].as_str().unwrap()))
        .collect();
    let send_operation = document["operations"]
        .as_object()
        .unwrap()
        .values()
        .find(|o| o["action"] == "send" && o["channel"]["$ref"] == format!("#/channels/{channel}"))
        .expect("an operation sends the server frames");
    let documented: BTreeSet<String> = send_operation["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(message_id)
        .collect();
    assert_eq!(documented, typed);

    let url = format!("{}{address}", app.address.replace("http://", "ws://"));
    let (mut socket, response) =
        tokio_tungstenite::connect_async(url.into_client_request().unwrap())
            .await
            .expect("the upgrade succeeds");
    assert_eq!(response.status(), 101);

    let mut receives: Vec<(&String, &Value)> = document["operations"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, o)| {
            o["action"] == "receive" && o["channel"]["$ref"] == format!("#/channels/{channel}")
        })
        .collect();
    assert!(receives.len() >= 4, "{receives:?}");
    // `auth` (the operation whose message takes a token) first: the socket has no credential.
    receives.sort_by_key(|(_, o)| {
        let message = &messages[&message_id(&o["messages"][0])];
        !message["payload"]["properties"]["token"].is_object()
    });
    for (name, operation) in receives {
        let request_id = message_id(&operation["messages"][0]);
        let mut example = messages[&request_id]["examples"][0]["payload"].clone();
        assert!(example.is_object(), "{request_id} has an example");
        if example.get("token").is_some() {
            example["token"] = json!(key);
        }
        socket
            .send(Message::text(example.to_string()))
            .await
            .unwrap();
        let reply = recv(&mut socket).await;
        let op = reply["op"].as_str().unwrap();
        assert_ne!(op, "error", "{name}'s example is refused: {reply}");
        let candidates = frames_with_op(&messages, op);
        let replies: Vec<String> = operation["reply"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(message_id)
            .collect();
        let documented: Vec<&String> = candidates.iter().filter(|c| replies.contains(c)).collect();
        assert_eq!(
            documented.len(),
            1,
            "{name} is answered by {reply}, one of its documented replies {replies:?}"
        );
        seen.add(documented[0], reply);
        // The example the broker took (with the real key) is a message exchanged too.
        seen.add(&request_id, example);
    }

    // A subscription that cannot resume: subscribed, reset, then an event.
    socket
        .send(Message::text(
            json!({"op": "subscribe", "id": "resume", "lastEventId": uuid::Uuid::now_v7().to_string()})
                .to_string(),
        ))
        .await
        .unwrap();
    app.emit(key, &crate::helpers::custom("socketed")).await;
    let mut kinds = BTreeSet::new();
    while !(kinds.contains("reset") && kinds.contains("event")) {
        let frame = recv(&mut socket).await;
        let op = frame["op"].as_str().unwrap().to_owned();
        let candidates: Vec<String> = frames_with_op(&messages, &op)
            .into_iter()
            .filter(|c| {
                // Two messages are `event`: the cPod event and the CloudEvent; this
                // subscription asked for no format.
                op != "event"
                    || messages[c]["payload"]["properties"]["event"]["$ref"]
                        == "#/components/schemas/Event"
            })
            .collect();
        assert_eq!(candidates.len(), 1, "{frame}: {candidates:?}");
        seen.add(&candidates[0], frame);
        kinds.insert(op);
    }
    socket
        .send(Message::text(json!({"op": "no-such-op"}).to_string()))
        .await
        .unwrap();
    let error = recv(&mut socket).await;
    let candidates = frames_with_op(&messages, "error");
    assert_eq!(candidates.len(), 1);
    seen.add(&candidates[0], error);

    // The CloudEvent frame, where the subscribe frame takes a format.
    let cloud_frames: Vec<String> = frames_with_op(&messages, "event")
        .into_iter()
        .filter(|c| {
            messages[c]["payload"]["properties"]["event"]["$ref"] != "#/components/schemas/Event"
        })
        .collect();
    let subscribe = &messages[&frames_with_op(&messages, "subscribe")[0]];
    if subscribe["payload"]["properties"]["format"].is_object() {
        socket
            .send(Message::text(
                json!({"op": "subscribe", "id": "ce", "format": "cloudevents"}).to_string(),
            ))
            .await
            .unwrap();
        assert_eq!(recv(&mut socket).await["op"], "subscribed");
        app.emit(key, &crate::helpers::custom("clouded")).await;
        loop {
            let frame = recv(&mut socket).await;
            if frame["subscription"] == "ce" {
                assert_eq!(cloud_frames.len(), 1, "{cloud_frames:?}");
                seen.add(&cloud_frames[0], frame);
                break;
            }
        }
    } else {
        expected_unseen.extend(cloud_frames);
    }
}
