//! W3C trace context (issue 15): a `traceparent` on an ingest request is kept with the event
//! (its JSON everywhere: the answer, history, SSE, WebSocket, webhook bodies), continued by every
//! webhook attempt's headers, ignored when invalid; and with `CPOD_OTLP_ENDPOINT`, an OTLP
//! collector (a local HTTP server in this test) gets the broker's spans of one event, from
//! ingest to webhook attempt, in one trace.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{
    ADMIN_KEY, BrokerProcess, SseClient, TestApp, custom, json_of, spawn_app_with,
};
use crate::receiver::{Received, Receiver};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const WAIT: Duration = Duration::from_secs(10);

/// The parts of a `traceparent`: trace-id, parent-id, flags (asserting version 00's shape).
fn parts(traceparent: &str) -> (String, String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[0], "00", "{traceparent}");
    assert_eq!(
        (fields[1].len(), fields[2].len()),
        (32, 16),
        "{traceparent}"
    );
    (fields[1].into(), fields[2].into(), fields[3].into())
}

async fn traced_emit(app: &TestApp, key: &str, body: &Value, headers: &[(&str, &str)]) -> Value {
    let mut request = app.post_json(key, "/v1/events", body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    json_of(request.send().await.unwrap(), StatusCode::CREATED).await
}

async fn webhook_to(app: &TestApp, key: &str, receiver: &Receiver) {
    json_of(
        app.post_json(key, "/v1/webhooks", &json!({"url": receiver.url}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
}

fn delivery_of<'a>(received: &'a [Received], id: &str) -> &'a Received {
    received
        .iter()
        .find(|r| r.header("webhook-id") == Some(id))
        .unwrap_or_else(|| panic!("no delivery of {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingested_trace_context_travels_with_the_event_and_each_webhook_attempt_continues_it() {
    let app = spawn_app_with(&["--webhook-allow-private", "true"]).await;
    let service = app.key("org-t", "service").await;
    let receiver = Receiver::start().await;
    webhook_to(&app, &service, &receiver).await;
    let mut sse = SseClient::open(&app.address, &service, "/v1/events/stream", None).await;
    let ws_url = format!("{}/v1/events/ws", app.address.replace("http://", "ws://"));
    let mut ws_request = ws_url.into_client_request().unwrap();
    ws_request.headers_mut().insert(
        "authorization",
        format!("Bearer {service}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request).await.unwrap();
    ws.send(Message::text(
        json!({"op": "subscribe", "id": "s1", "filter": {}}).to_string(),
    ))
    .await
    .unwrap();

    let stored = traced_emit(
        &app,
        &service,
        &custom("traced"),
        &[
            ("traceparent", TRACEPARENT),
            ("tracestate", "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"),
        ],
    )
    .await;
    let (trace_id, broker_span, flags) = parts(stored["traceparent"].as_str().unwrap());
    assert_eq!(trace_id, TRACE_ID);
    assert_ne!(
        broker_span, CLIENT_SPAN,
        "the parent-id is the broker's ingest span"
    );
    assert_eq!(flags, "01");
    assert_eq!(
        stored["tracestate"],
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    );
    let id = stored["id"].as_str().unwrap();

    // The same JSON from history, both streams and the webhook body.
    let by_id = json_of(
        app.get(&service, &format!("/v1/events/{id}"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(by_id, stored);
    assert_eq!(app.history_all(&service, "").await[0], stored);
    let message = sse.next_event(WAIT).await.expect("an SSE message");
    assert_eq!(message.json(), stored);
    let frame = loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["op"] == "event" {
                break frame;
            }
        }
    };
    assert_eq!(frame["event"], stored);

    // An untraced event: no trace fields, no traceparent header.
    let untraced = app.emit(&service, &custom("untraced")).await;
    assert!(untraced.get("traceparent").is_none() && untraced.get("tracestate").is_none());

    let received = receiver.wait_for(2, WAIT).await;
    let delivery = delivery_of(&received, id);
    assert_eq!(delivery.json(), stored);
    let (sent_trace, attempt_span, sent_flags) = parts(
        delivery
            .header("traceparent")
            .expect("a traceparent header"),
    );
    assert_eq!(sent_trace, TRACE_ID);
    assert_eq!(sent_flags, "01");
    assert_ne!(
        attempt_span, broker_span,
        "the parent-id is the attempt's own span"
    );
    assert_ne!(attempt_span, CLIENT_SPAN);
    assert_eq!(
        delivery.header("tracestate"),
        Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    );
    let plain = delivery_of(&received, untraced["id"].as_str().unwrap());
    assert_eq!(plain.header("traceparent"), None);
    assert_eq!(plain.header("tracestate"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_shares_its_requests_trace_and_an_idempotent_replay_answers_the_first_events() {
    let app = spawn_app_with(&[]).await;
    let service = app.key("org-t", "service").await;
    let batch = json!({"events": [custom("a"), custom("b")]});
    let send = |traceparent: &'static str| {
        app.post_json(&service, "/v1/events/batch", &batch)
            .header("traceparent", traceparent)
            .header("Idempotency-Key", "batch-1")
            .send()
    };
    let first = json_of(send(TRACEPARENT).await.unwrap(), StatusCode::CREATED).await;
    let events = first["data"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        parts(events[0]["traceparent"].as_str().unwrap()).0,
        TRACE_ID
    );
    assert_eq!(events[0]["traceparent"], events[1]["traceparent"]);
    assert!(events[0].get("tracestate").is_none());

    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let replay = send(other).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(replay, StatusCode::CREATED).await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_trace_context_is_ignored_as_the_spec_says_and_never_refused() {
    let app = spawn_app_with(&[]).await;
    let service = app.key("org-t", "service").await;
    let invalid = [
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "not a traceparent",
    ];
    for traceparent in invalid {
        let stored = traced_emit(
            &app,
            &service,
            &custom("x"),
            &[("traceparent", traceparent), ("tracestate", "a=1")],
        )
        .await;
        assert!(
            stored.get("traceparent").is_none(),
            "{traceparent}: {stored}"
        );
        assert!(
            stored.get("tracestate").is_none(),
            "{traceparent}: {stored}"
        );
    }
    // Two traceparent headers are invalid too.
    let twice = app
        .post_json(&service, "/v1/events", &custom("x"))
        .header("traceparent", TRACEPARENT)
        .header("traceparent", TRACEPARENT)
        .send()
        .await
        .unwrap();
    assert!(
        json_of(twice, StatusCode::CREATED)
            .await
            .get("traceparent")
            .is_none()
    );
    // A bad tracestate alone is dropped; the traceparent stays.
    let stored = traced_emit(
        &app,
        &service,
        &custom("x"),
        &[("traceparent", TRACEPARENT), ("tracestate", "Upper=1")],
    )
    .await;
    assert_eq!(parts(stored["traceparent"].as_str().unwrap()).0, TRACE_ID);
    assert!(stored.get("tracestate").is_none());
    // A future version is read as version 00 and stored as one.
    let future = format!("{}-more", TRACEPARENT.replacen("00", "cc", 1));
    let stored = traced_emit(&app, &service, &custom("x"), &[("traceparent", &future)]).await;
    assert_eq!(parts(stored["traceparent"].as_str().unwrap()).0, TRACE_ID);
}

/// A span as the collector got it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

fn spans_in(requests: &[Received]) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for request in requests {
        assert_eq!(request.path, "/v1/traces");
        assert_eq!(
            request.header("content-type"),
            Some("application/x-protobuf")
        );
        let export = ExportTraceServiceRequest::decode(request.body.as_slice())
            .expect("an OTLP protobuf export");
        for resource in export.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value));
            assert!(service.is_some_and(|s| s.contains("cpod-events")));
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        name: span.name,
                        trace_id: hex::encode(span.trace_id),
                        span_id: hex::encode(span.span_id),
                        parent_span_id: hex::encode(span.parent_span_id),
                    });
                }
            }
        }
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_collector_gets_one_events_spans_from_ingest_to_webhook_attempt_in_one_trace() {
    let collector = Receiver::start().await;
    let endpoint = Receiver::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let mut broker = BrokerProcess::start(
        dir.path(),
        &[
            ("CPOD_ADMIN_KEY", ADMIN_KEY),
            ("CPOD_WEBHOOK_ALLOW_PRIVATE", "true"),
            ("CPOD_OTLP_ENDPOINT", &collector.url),
        ],
    );
    let service = broker.key(ADMIN_KEY, "service").await;
    let client = reqwest::Client::new();
    json_of(
        client
            .post(broker.url("/v1/webhooks"))
            .bearer_auth(&service)
            .json(&json!({"url": endpoint.url}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let stored = json_of(
        client
            .post(broker.url("/v1/events"))
            .bearer_auth(&service)
            .header("traceparent", TRACEPARENT)
            .json(&custom("collected"))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let delivery = endpoint.wait_for(1, WAIT).await.remove(0);
    let (_, stored_parent, _) = parts(stored["traceparent"].as_str().unwrap());
    let (_, attempt_parent, _) = parts(delivery.header("traceparent").unwrap());

    // SIGTERM: the exporter is flushed at shutdown, so every span is there once it exits.
    unsafe { libc::kill(broker.child.id() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(status) = broker.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the broker exits within 20 s of SIGTERM");
    assert!(status.success(), "{status:?}: {}", broker.stderr());

    let spans = spans_in(&collector.received());
    let ours: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == TRACE_ID).collect();
    let by_name: HashMap<&str, &ReceivedSpan> =
        ours.iter().map(|s| (s.name.as_str(), *s)).collect();
    assert_eq!(ours.len(), 4, "one span each: {ours:#?}");
    let ingest = by_name["ingest"];
    let commit = by_name["commit"];
    let fan_out = by_name["fan_out"];
    let attempt = by_name["webhook_attempt"];
    // The client's span → ingest → commit; ingest → fan-out and webhook attempt (through the
    // context stored with the event).
    assert_eq!(ingest.parent_span_id, CLIENT_SPAN);
    assert_eq!(commit.parent_span_id, ingest.span_id);
    assert_eq!(fan_out.parent_span_id, ingest.span_id);
    assert_eq!(attempt.parent_span_id, ingest.span_id);
    // What the event and the webhook request carry are these spans' ids.
    assert_eq!(stored_parent, ingest.span_id);
    assert_eq!(attempt_parent, attempt.span_id);

    // The log lines of each step carry the trace id.
    let log = broker.stderr();
    for step in [
        "committed",
        "published to the live streams",
        "webhook attempt made",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(step) && l.contains(TRACE_ID)),
            "no `{step}` line with the trace id in:\n{log}"
        );
    }
}

#[tokio::test]
async fn the_sdk_emits_with_a_trace_context_and_reads_the_events_trace_fields() {
    use cpod_sdk::{CpodClient, EmitOptions, NewEvent};
    let app = spawn_app_with(&[]).await;
    let client = CpodClient::new(&app.address, &app.key("org-t", "service").await).unwrap();
    let options = EmitOptions::new()
        .traceparent(TRACEPARENT)
        .tracestate("rojo=1");
    let new = NewEvent::new("custom.sdk.traced", "thing", "t-1");
    let single = client.events().emit_with(&new, &options).await.unwrap();
    assert_eq!(
        parts(single.event.traceparent.as_deref().unwrap()).0,
        TRACE_ID
    );
    assert_eq!(single.event.tracestate.as_deref(), Some("rojo=1"));
    let batch = client
        .events()
        .emit_batch_with(&[new.clone(), new], &options)
        .await
        .unwrap();
    assert!(batch.events.iter().all(|e| {
        e.traceparent
            .as_deref()
            .is_some_and(|t| t.contains(TRACE_ID))
    }));
    let plain = client
        .events()
        .emit(&NewEvent::new("custom.sdk.plain", "thing", "t-2"))
        .await
        .unwrap();
    assert_eq!((plain.traceparent, plain.tracestate), (None, None));
}
