//! CloudEvents 1.0 in and out (README, "CloudEvents"): structured, binary-mode and batch
//! ingestion with the agreed mapping, every refusal naming the attribute and storing nothing,
//! repeats keyed by source and id, `format=cloudevents` on history, SSE and WebSocket, webhook
//! deliveries in structured and binary mode signed over the body sent — and the real peer: the
//! Python `cloudevents` package (PyPI) reads what the broker writes and writes what it accepts.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_KEY, SseClient, TestApp, assert_error, custom, json_of, python_imports, python_venv,
    run_python, spawn_app, spawn_app_with,
};
use crate::receiver::{Received, Receiver};
use crate::webhooks::verify;
use crate::ws::{connect, recv, send};

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";
const WAIT: Duration = Duration::from_secs(10);

fn cloudevent(id: &str, source: &str, subject: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": source, "type": "custom.build.finished",
        "subject": subject, "time": "2020-01-01T00:00:00Z", "datacontenttype": "application/json",
        "data": {"ok": true}, "buildext": "ignored"
    })
}

/// POSTs `body` to `path` as `content_type`.
async fn post_as(
    app: &TestApp,
    key: &str,
    path: &str,
    content_type: &str,
    body: String,
) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn post_structured(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    post_as(app, key, "/v1/events", STRUCTURED, body.to_string()).await
}

async fn post_batch(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    post_as(app, key, "/v1/events/batch", BATCH, body.to_string()).await
}

fn binary(
    app: &TestApp,
    key: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> reqwest::RequestBuilder {
    let mut request = app
        .client
        .post(app.url("/v1/events"))
        .bearer_auth(key)
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

const BINARY_HEADERS: [(&str, &str); 6] = [
    ("ce-specversion", "1.0"),
    ("ce-id", "bin-1"),
    ("ce-source", "/organizations/org-a/workspaces/ws-9"),
    ("ce-type", "pod.failed"),
    ("ce-subject", "pod/pod%207f9c"),
    ("content-type", "application/json"),
];

/// The organization's events, oldest first, but the broker's own `credential.*` ones.
async fn stored(app: &TestApp, key: &str) -> Vec<Value> {
    app.history_all(key, "order=asc&types=custom.*,pod.*,job.*")
        .await
}

#[tokio::test]
async fn a_structured_cloudevent_is_stored_with_the_agreed_mapping() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let event = json_of(
        post_structured(
            &app,
            &service,
            &cloudevent(
                "ce-1",
                "/organizations/org-a/workspaces/ws-1",
                "build/b-1/step",
            ),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(event["type"], "custom.build.finished");
    assert_eq!(event["organizationId"], "org-a");
    assert_eq!(event["workspaceId"], "ws-1");
    assert_eq!(event["resourceType"], "build");
    assert_eq!(event["resourceId"], "b-1/step");
    assert_eq!(event["payload"], json!({"ok": true}));
    // The broker's own id and time; the producer's are not kept, nor is the extension.
    assert_ne!(event["id"], "ce-1");
    assert!(!event["timestamp"].as_str().unwrap().starts_with("2020"));
    assert!(event.get("buildext").is_none());
    assert_eq!(stored(&app, &service).await, vec![event]);

    // No data: an empty payload; an org key with a source that names no organization: its own.
    let mut bare = cloudevent("ce-2", "https://ci.example.com/pipelines/7", "build/b-2");
    bare.as_object_mut().unwrap().remove("data");
    bare.as_object_mut().unwrap().remove("datacontenttype");
    let event = json_of(
        post_structured(&app, &service, &bare).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(event["organizationId"], "org-a");
    assert_eq!(event["workspaceId"], Value::Null);
    assert_eq!(event["payload"], json!({}));

    // An admin key takes the organization from the source.
    let event = json_of(
        post_structured(
            &app,
            ADMIN_KEY,
            &cloudevent("ce-3", "/organizations/org-b", "build/b-3"),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(event["organizationId"], "org-b");
}

#[tokio::test]
async fn a_binary_mode_cloudevent_is_stored_and_answered_as_a_cloudevent_when_asked() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let response = binary(&app, &service, &BINARY_HEADERS, r#"{"exitCode":137}"#)
        .header("accept", STRUCTURED)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        STRUCTURED
    );
    let answer = json_of(response, StatusCode::CREATED).await;
    assert_eq!(answer["specversion"], "1.0");
    assert_eq!(answer["source"], "/organizations/org-a/workspaces/ws-9");
    assert_eq!(answer["subject"], "pod/pod 7f9c", "percent-decoded");
    assert_eq!(answer["type"], "pod.failed");
    assert_eq!(answer["datacontenttype"], "application/json");
    assert_eq!(answer["data"], json!({"exitCode": 137}));
    let events = stored(&app, &service).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], answer["id"]);
    assert_eq!(events[0]["resourceId"], "pod 7f9c");
    assert_eq!(answer["time"], events[0]["timestamp"]);
}

#[tokio::test]
async fn a_cloudevents_batch_is_stored_in_order_and_answered_as_cloudevents_when_asked() {
    let app = spawn_app().await;
    let app_key = app.key("org-a", "app").await;
    let batch = json!([
        cloudevent("b-1", "/organizations/org-a", "build/one"),
        cloudevent("b-2", "/organizations/org-a/workspaces/w", "build/two"),
    ]);
    let answer = json_of(
        post_batch(&app, &app_key, &batch).await,
        StatusCode::CREATED,
    )
    .await;
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["workspaceId"], "w");
    let batch = json!([cloudevent("b-3", "/organizations/org-a", "build/three")]);
    let response = app
        .client
        .post(app.url("/v1/events/batch"))
        .bearer_auth(&app_key)
        .header("content-type", BATCH)
        .header("accept", BATCH)
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"].to_str().unwrap(), BATCH);
    let answer = json_of(response, StatusCode::CREATED).await;
    assert_eq!(answer[0]["subject"], "build/three");
    assert_eq!(answer[0]["specversion"], "1.0");
    let ids: Vec<Value> = stored(&app, &app_key)
        .await
        .into_iter()
        .map(|e| e["resourceId"].clone())
        .collect();
    assert_eq!(ids, vec![json!("one"), json!("two"), json!("three")]);
}

#[tokio::test]
async fn bad_cloudevents_are_refused_naming_the_attribute_and_store_nothing() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let app_key = app.key("org-a", "app").await;
    let good = cloudevent("x-1", "/organizations/org-a", "build/b");
    let with = |name: &str, value: Value| {
        let mut event = good.clone();
        event[name] = value;
        event
    };
    let without = |name: &str| {
        let mut event = good.clone();
        event.as_object_mut().unwrap().remove(name);
        event
    };
    // (body, status, the attribute named: none for a 403)
    let cases: Vec<(Value, u16, Option<&str>)> = vec![
        (without("specversion"), 400, Some("specversion")),
        (with("specversion", json!("0.3")), 400, Some("specversion")),
        (without("id"), 400, Some("id")),
        (with("id", json!("")), 400, Some("id")),
        (without("source"), 400, Some("source")),
        (without("type"), 400, Some("type")),
        (with("type", json!("billing.paid")), 400, Some("type")),
        (without("subject"), 400, Some("subject")),
        (with("subject", json!("build")), 400, Some("subject")),
        (with("subject", json!("Build/x")), 400, Some("subject")),
        (with("subject", json!("build/")), 400, Some("subject")),
        (
            with("source", json!("/organizations/org-a/x")),
            400,
            Some("source"),
        ),
        (with("time", json!("yesterday")), 400, Some("time")),
        (with("data", json!([1, 2])), 400, Some("data")),
        (
            with("datacontenttype", json!("text/plain")),
            415,
            Some("datacontenttype"),
        ),
        (with("data_base64", json!("aGk=")), 415, Some("data_base64")),
        (with("type", json!("pod.failed")), 403, None),
        (with("source", json!("/organizations/org-b")), 403, None),
    ];
    for (body, status, param) in cases {
        let code = match status {
            400 => "invalid_request",
            415 => "unsupported_media_type",
            _ => "forbidden",
        };
        let status = StatusCode::from_u16(status).unwrap();
        assert_error(
            post_structured(&app, &app_key, &body).await,
            status,
            code,
            param,
        )
        .await;
    }
    // An admin key must name the organization in the source.
    let foreign = with("source", json!("urn:ci"));
    assert_error(
        post_structured(&app, ADMIN_KEY, &foreign).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("source"),
    )
    .await;
    // Binary mode: a missing header, a non-JSON body type.
    // Binary mode: a missing header, a non-JSON body type, another specversion.
    let mut missing = BINARY_HEADERS.to_vec();
    missing.retain(|(name, _)| *name != "ce-subject");
    let mut text = BINARY_HEADERS.to_vec();
    text[5] = ("content-type", "text/plain");
    let mut old = BINARY_HEADERS.to_vec();
    old[0] = ("ce-specversion", "0.3");
    for (headers, status, code, param) in [
        (missing, 400, "invalid_request", "subject"),
        (text, 415, "unsupported_media_type", "datacontenttype"),
        (old, 400, "invalid_request", "specversion"),
    ] {
        let response = binary(&app, &service, &headers, "{}").send().await.unwrap();
        let status = StatusCode::from_u16(status).unwrap();
        assert_error(response, status, code, Some(param)).await;
    }
    // A batch names the event by its index; one bad event stores none.
    let batch = json!([good.clone(), without("subject")]);
    assert_error(
        post_batch(&app, &service, &batch).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("events[1].subject"),
    )
    .await;
    let batch = json!([good.clone(), with("type", json!("pod.failed"))]);
    assert_error(
        post_batch(&app, &app_key, &batch).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    )
    .await;
    assert_error(
        post_batch(&app, &service, &json!([])).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("events"),
    )
    .await;
    // Each media type to its endpoint.
    for (path, content_type, body) in [
        ("/v1/events", BATCH, json!([good.clone()])),
        ("/v1/events/batch", STRUCTURED, good.clone()),
    ] {
        let wrong = post_as(&app, &service, path, content_type, body.to_string()).await;
        let status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        assert_error(wrong, status, "unsupported_media_type", None).await;
    }
    assert!(stored(&app, &service).await.is_empty());
    assert!(
        app.history_all(ADMIN_KEY, "organizationId=*")
            .await
            .iter()
            .all(|e| e["type"] != "custom.build.finished" && e["type"] != "pod.failed")
    );
}

#[tokio::test]
async fn a_repeated_cloudevent_is_stored_once_and_a_changed_one_conflicts() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let event = cloudevent("same-id", "/organizations/org-a", "build/b");
    let first = json_of(
        post_structured(&app, &service, &event).await,
        StatusCode::CREATED,
    )
    .await;
    // The same event again, in binary mode this time: the same source and id, the same content.
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", "same-id"),
        ("ce-source", "/organizations/org-a"),
        ("ce-type", "custom.build.finished"),
        ("ce-subject", "build/b"),
        ("content-type", "application/json"),
    ];
    let again = binary(&app, &service, &headers, r#"{"ok":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(again, StatusCode::CREATED).await, first);
    let mut changed = event.clone();
    changed["data"] = json!({"ok": false});
    assert_error(
        post_structured(&app, &service, &changed).await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    )
    .await;
    // Another source with the same id is another event.
    let other = cloudevent("same-id", "/organizations/org-a/workspaces/w", "build/b");
    json_of(
        post_structured(&app, &service, &other).await,
        StatusCode::CREATED,
    )
    .await;
    // A batch is keyed by its events' sources and ids.
    let batch = json!([
        cloudevent("b-1", "/organizations/org-a", "build/x"),
        cloudevent("b-2", "/organizations/org-a", "build/y")
    ]);
    let first = json_of(
        post_batch(&app, &service, &batch).await,
        StatusCode::CREATED,
    )
    .await;
    let again = post_batch(&app, &service, &batch).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(again, StatusCode::CREATED).await, first);
    assert_eq!(stored(&app, &service).await.len(), 4);
}

#[tokio::test]
async fn history_and_one_event_are_written_as_cloudevents_with_format() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let event = app
        .emit(&service, &json!({"type": "pod.failed", "resourceType": "pod", "resourceId": "p-1", "workspaceId": "ws-1", "payload": {"exitCode": 137}}))
        .await;
    let page = json_of(
        app.get(&service, "/v1/events?format=cloudevents")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let expected = json!({
        "specversion": "1.0", "id": event["id"], "source": "/organizations/org-a/workspaces/ws-1",
        "type": "pod.failed", "subject": "pod/p-1", "time": event["timestamp"],
        "datacontenttype": "application/json", "data": {"exitCode": 137}
    });
    assert_eq!(page["data"][0], expected);
    assert_eq!(page["hasMore"], false);
    let path = format!(
        "/v1/events/{}?format=cloudevents",
        event["id"].as_str().unwrap()
    );
    let response = app.get(&service, &path).send().await.unwrap();
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        STRUCTURED
    );
    assert_eq!(json_of(response, StatusCode::OK).await, expected);
    let plain = format!("/v1/events/{}?format=cpod", event["id"].as_str().unwrap());
    assert_eq!(
        json_of(
            app.get(&service, &plain).send().await.unwrap(),
            StatusCode::OK
        )
        .await,
        event
    );
    for path in [
        "/v1/events?format=xml",
        "/v1/events/stream?format=CloudEvents",
    ] {
        assert_error(
            app.get(&service, path).send().await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("format"),
        )
        .await;
    }
    let path = format!("/v1/events/{}?format=json", event["id"].as_str().unwrap());
    assert_error(
        app.get(&service, &path).send().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("format"),
    )
    .await;
}

#[tokio::test]
async fn the_sse_stream_writes_cloudevents_and_resumes_by_the_event_id() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let mut stream = SseClient::open(
        &app.address,
        &service,
        "/v1/events/stream?format=cloudevents",
        None,
    )
    .await;
    assert!(stream.next(WAIT).await.unwrap().retry.is_some());
    let first = app
        .emit(
            &service,
            &json!({"type": "custom.a.b", "resourceType": "r", "resourceId": "1"}),
        )
        .await;
    let message = stream.next_event(WAIT).await.unwrap();
    assert_eq!(message.id.as_deref(), first["id"].as_str());
    let data = message.json();
    assert_eq!(data["specversion"], "1.0");
    assert_eq!(data["id"], first["id"]);
    assert_eq!(data["subject"], "r/1");
    drop(stream);
    let second = app
        .emit(
            &service,
            &json!({"type": "custom.a.b", "resourceType": "r", "resourceId": "2"}),
        )
        .await;
    let mut resumed = SseClient::open(
        &app.address,
        &service,
        "/v1/events/stream?format=cloudevents",
        first["id"].as_str(),
    )
    .await;
    let message = resumed.next_event(WAIT).await.unwrap();
    assert_eq!(message.id.as_deref(), second["id"].as_str());
    assert_eq!(message.json()["subject"], "r/2");
}

#[tokio::test]
async fn a_websocket_subscription_takes_a_format() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let mut socket = connect(&app, Some(&service), "").await;
    send(
        &mut socket,
        json!({"op": "subscribe", "id": "ce", "format": "cloudevents"}),
    )
    .await;
    assert_eq!(
        recv(&mut socket).await,
        json!({"op": "subscribed", "id": "ce"})
    );
    send(&mut socket, json!({"op": "subscribe", "id": "plain"})).await;
    assert_eq!(
        recv(&mut socket).await,
        json!({"op": "subscribed", "id": "plain"})
    );
    send(
        &mut socket,
        json!({"op": "subscribe", "id": "bad", "format": "xml"}),
    )
    .await;
    let error = recv(&mut socket).await;
    assert_eq!(error["op"], "error");
    assert_eq!(error["code"], "invalid_request");
    assert!(
        error["message"].as_str().unwrap().contains("format"),
        "{error}"
    );
    let event = app
        .emit(
            &service,
            &json!({"type": "custom.a.b", "resourceType": "r", "resourceId": "1"}),
        )
        .await;
    let mut frames = [recv(&mut socket).await, recv(&mut socket).await];
    frames.sort_by_key(|f| f["subscription"].as_str().unwrap().to_owned());
    assert_eq!(frames[0]["subscription"], "ce");
    assert_eq!(frames[0]["event"]["specversion"], "1.0");
    assert_eq!(frames[0]["event"]["id"], event["id"]);
    assert_eq!(frames[0]["event"]["source"], "/organizations/org-a");
    assert_eq!(frames[1]["event"], event);
}

async fn webhook(app: &TestApp, key: &str, url: &str, body: Value) -> Value {
    let mut body = body;
    body["url"] = json!(url);
    json_of(
        app.post_json(key, "/v1/webhooks", &body)
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await
}

fn received_for<'a>(received: &'a [Received], path: &str) -> &'a Received {
    received
        .iter()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("nothing at {path}"))
}

#[tokio::test]
async fn webhooks_deliver_structured_and_binary_cloudevents_signed_over_the_body_sent() {
    let app = spawn_app_with(&["--webhook-allow-private", "true"]).await;
    let service = app.key("org-a", "service").await;
    let receiver = Receiver::start().await;
    let structured = webhook(
        &app,
        &service,
        &format!("{}/structured", receiver.url),
        json!({"format": "cloudevents"}),
    )
    .await;
    assert_eq!(structured["format"], "cloudevents");
    assert_eq!(structured["contentMode"], "structured");
    let binary = webhook(
        &app,
        &service,
        &format!("{}/binary", receiver.url),
        json!({"format": "cloudevents", "contentMode": "binary"}),
    )
    .await;
    assert_eq!(binary["contentMode"], "binary");
    let plain = webhook(
        &app,
        &service,
        &format!("{}/plain", receiver.url),
        json!({}),
    )
    .await;
    assert_eq!(plain["format"], "cpod");
    assert_eq!(plain["contentMode"], Value::Null);
    let event = app.emit(&service, &json!({"type": "pod.failed", "resourceType": "pod", "resourceId": "p-1", "workspaceId": "ws-1", "payload": {"exitCode": 137}})).await;
    let received = receiver.wait_for(3, WAIT).await;

    let body = received_for(&received, "/structured");
    assert_eq!(body.header("content-type"), Some(STRUCTURED));
    assert_eq!(verify(body, structured["secret"].as_str().unwrap()), 1);
    assert_eq!(body.header("webhook-id"), event["id"].as_str());
    let ce = body.json();
    assert_eq!(ce["source"], "/organizations/org-a/workspaces/ws-1");
    assert_eq!(ce["subject"], "pod/p-1");
    assert_eq!(ce["data"], json!({"exitCode": 137}));

    let body = received_for(&received, "/binary");
    assert_eq!(verify(body, binary["secret"].as_str().unwrap()), 1);
    assert_eq!(body.header("content-type"), Some("application/json"));
    assert_eq!(body.header("ce-specversion"), Some("1.0"));
    assert_eq!(body.header("ce-id"), event["id"].as_str());
    assert_eq!(body.header("ce-type"), Some("pod.failed"));
    assert_eq!(
        body.header("ce-source"),
        Some("/organizations/org-a/workspaces/ws-1")
    );
    assert_eq!(body.header("ce-subject"), Some("pod/p-1"));
    assert_eq!(body.header("ce-time"), event["timestamp"].as_str());
    assert_eq!(body.json(), json!({"exitCode": 137}));

    let body = received_for(&received, "/plain");
    assert_eq!(body.json(), event);

    // The format changes with PATCH, is shown on GET, and is checked.
    let path = format!("/v1/webhooks/{}", binary["id"].as_str().unwrap());
    let patch = |body: Value| {
        app.client
            .patch(app.url(&path))
            .bearer_auth(&service)
            .json(&body)
            .send()
    };
    for (body, format, mode) in [
        (
            json!({"contentMode": "structured"}),
            "cloudevents",
            Some("structured"),
        ),
        (json!({"format": "cpod"}), "cpod", None),
    ] {
        let patched = json_of(patch(body).await.unwrap(), StatusCode::OK).await;
        assert_eq!(patched["format"], format);
        assert_eq!(patched["contentMode"].as_str(), mode);
    }
    let shown = json_of(
        app.get(&service, &path).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(shown["format"], "cpod");
    for (body, param) in [
        (json!({"format": "xml"}), "format"),
        (json!({"contentMode": "binary"}), "contentMode"),
        (
            json!({"format": "cpod", "contentMode": "structured"}),
            "contentMode",
        ),
    ] {
        let response = patch(body).await.unwrap();
        assert_error(
            response,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(param),
        )
        .await;
    }
    let response = app
        .post_json(
            &service,
            "/v1/webhooks",
            &json!({"url": format!("{}/x", receiver.url), "contentMode": "binary"}),
        )
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("contentMode"),
    )
    .await;
    assert_eq!(
        json_of(
            app.get(&service, "/v1/webhooks").send().await.unwrap(),
            StatusCode::OK
        )
        .await["data"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

/// A Python with the `cloudevents` package (PyPI, the CNCF SDK), in a virtual environment
/// under `target/` made on first use; `None` (after saying why) where it cannot be installed
/// outside CI. In CI it must run.
fn cloudevents_python() -> Option<PathBuf> {
    static PYTHON: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let python = PYTHON.get_or_init(|| {
        python_venv("pyenv-cloudevents", &["cloudevents==1.13.0"], |bin| {
            python_imports(
                &bin.join("python"),
                "cloudevents.http, cloudevents.conversion",
            )
        })
        .map(|bin| bin.join("python"))
    });
    match python {
        Ok(python) => Some(python.clone()),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("CI must run Python's cloudevents: {why}")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED (CI is not set): Python's cloudevents package is not available: {why}"
            );
            None
        }
    }
}

/// Python's `from_http` on each message (`headers`, `body`): its attributes and data.
const PARSE: &str = r#"
import json, sys
from cloudevents.http import from_http
out = []
for message in json.load(sys.stdin):
    event = from_http(message["headers"], message["body"].encode())
    attributes = {k: str(v).replace(" ", "T") for k, v in event.get_attributes().items()}
    out.append({"attributes": attributes, "data": event.data})
print(json.dumps(out))
"#;

/// Python's `to_structured` and `to_binary` of one CloudEvent each: (headers, body).
const PRODUCE: &str = r#"
import json, sys
from cloudevents.http import CloudEvent
from cloudevents.conversion import to_binary, to_structured
spec = json.load(sys.stdin)
out = []
for mode, attributes in (("structured", spec["structured"]), ("binary", spec["binary"])):
    event = CloudEvent(attributes, spec["data"])
    headers, body = (to_structured if mode == "structured" else to_binary)(event)
    out.append({"mode": mode, "headers": dict(headers), "body": body.decode()})
print(json.dumps(out))
"#;

#[tokio::test]
async fn python_cloudevents_reads_what_the_broker_writes_and_writes_what_it_accepts() {
    let Some(python) = cloudevents_python() else {
        return;
    };
    let app = spawn_app_with(&["--webhook-allow-private", "true"]).await;
    let service = app.key("org-a", "service").await;
    let receiver = Receiver::start().await;
    webhook(
        &app,
        &service,
        &format!("{}/structured", receiver.url),
        json!({"format": "cloudevents"}),
    )
    .await;
    webhook(
        &app,
        &service,
        &format!("{}/binary", receiver.url),
        json!({"format": "cloudevents", "contentMode": "binary"}),
    )
    .await;
    let mut stream = SseClient::open(
        &app.address,
        &service,
        "/v1/events/stream?format=cloudevents",
        None,
    )
    .await;
    let event = app.emit(&service, &json!({"type": "job.completed", "resourceType": "job", "resourceId": "j-7", "workspaceId": "ws-3", "payload": {"rows": 1240, "name": "nightly"}})).await;

    // What the broker writes: one history item, the SSE data line, both webhook bodies.
    let page = json_of(
        app.get(&service, "/v1/events?format=cloudevents")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let sse = stream.next_event(WAIT).await.unwrap();
    let received = receiver.wait_for(2, WAIT).await;
    let structured_headers = json!({"content-type": STRUCTURED});
    let binary_delivery = received_for(&received, "/binary");
    let binary_headers: serde_json::Map<String, Value> = binary_delivery
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), json!(v)))
        .collect();
    let messages = json!([
        {"headers": structured_headers, "body": page["data"][0].to_string()},
        {"headers": structured_headers, "body": sse.data.clone().unwrap()},
        {"headers": structured_headers, "body": String::from_utf8(received_for(&received, "/structured").body.clone()).unwrap()},
        {"headers": binary_headers, "body": String::from_utf8(binary_delivery.body.clone()).unwrap()},
    ]);
    let parsed = run_python(&python, PARSE, &messages);
    for (i, read) in parsed.as_array().unwrap().iter().enumerate() {
        let attributes = &read["attributes"];
        assert_eq!(attributes["specversion"], "1.0", "{i}: {read}");
        assert_eq!(attributes["id"], event["id"], "{i}: {read}");
        assert_eq!(attributes["type"], "job.completed", "{i}: {read}");
        assert_eq!(
            attributes["source"], "/organizations/org-a/workspaces/ws-3",
            "{i}: {read}"
        );
        assert_eq!(attributes["subject"], "job/j-7", "{i}: {read}");
        assert_eq!(
            attributes["datacontenttype"], "application/json",
            "{i}: {read}"
        );
        assert!(
            attributes["time"]
                .as_str()
                .unwrap()
                .starts_with(&event["timestamp"].as_str().unwrap()[..19]),
            "{i}: {read}"
        );
        assert_eq!(
            read["data"],
            json!({"rows": 1240, "name": "nightly"}),
            "{i}: {read}"
        );
    }

    // What Python writes, the broker takes: structured and binary.
    let spec = json!({
        "structured": {"type": "custom.py.structured", "source": "/organizations/org-a/workspaces/py", "subject": "script/s-1", "id": "py-1"},
        "binary": {"type": "custom.py.binary", "source": "urn:python", "subject": "script/s-2", "id": "py-2"},
        "data": {"from": "python"},
    });
    let requests = run_python(&python, PRODUCE, &spec);
    for request in requests.as_array().unwrap() {
        let mut builder = app
            .client
            .post(app.url("/v1/events"))
            .bearer_auth(&service)
            .body(request["body"].as_str().unwrap().to_owned());
        for (name, value) in request["headers"].as_object().unwrap() {
            builder = builder.header(name.as_str(), value.as_str().unwrap());
        }
        let stored = json_of(builder.send().await.unwrap(), StatusCode::CREATED).await;
        assert_eq!(stored["payload"], json!({"from": "python"}), "{request}");
        assert_eq!(stored["organizationId"], "org-a");
        match request["mode"].as_str().unwrap() {
            "structured" => {
                assert_eq!(stored["type"], "custom.py.structured");
                assert_eq!(stored["workspaceId"], "py");
                assert_eq!(
                    (
                        stored["resourceType"].as_str(),
                        stored["resourceId"].as_str()
                    ),
                    (Some("script"), Some("s-1"))
                );
            }
            _ => {
                assert_eq!(stored["type"], "custom.py.binary");
                assert_eq!(stored["workspaceId"], Value::Null);
                assert_eq!(stored["resourceId"], "s-2");
            }
        }
    }
}

/// The next event of an SDK stream, skipping reconnection notices.
async fn next_event(stream: &mut cpod_sdk::EventStream) -> cpod_sdk::Event {
    use futures_util::StreamExt;
    loop {
        let item = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("no stream error");
        match item {
            cpod_sdk::StreamItem::Event(event) => return event,
            cpod_sdk::StreamItem::Reconnecting { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_rust_sdk_sends_and_reads_cloudevents() {
    use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
    use cpod_sdk::webhooks::{ContentMode, NewWebhook};
    use cpod_sdk::{CpodClient, EventFormat, Filter, HistoryQuery, StreamOptions};

    let app = spawn_app_with(&["--webhook-allow-private", "true"]).await;
    let client = CpodClient::new(&app.address, &app.key("org-a", "service").await).unwrap();
    // From the beginning of time, so that nothing is missed before the streams connect.
    let options = || {
        StreamOptions::new()
            .since("2000-01-01T00:00:00Z")
            .format(EventFormat::CloudEvents)
    };
    let filter = || Filter::new().types(["custom.*"]);
    let mut sse = client.events().stream_with(filter(), options());
    let mut ws = client.events().stream_ws_with(filter(), options());
    let cloudevent = EventBuilderV10::new()
        .id("sdk-1")
        .source("/organizations/org-a/workspaces/ws-sdk")
        .ty("custom.sdk.sent")
        .subject("report/r-1")
        .data("application/json", json!({"rows": 3}))
        .build()
        .unwrap();
    let emitted = client
        .events()
        .emit_cloudevent(&cloudevent, None)
        .await
        .unwrap();
    assert!(!emitted.replayed);
    let event = emitted.event;
    assert_eq!(
        (event.workspace_id.as_deref(), event.resource_id.as_str()),
        (Some("ws-sdk"), "r-1")
    );
    let again = client
        .events()
        .emit_cloudevent(&cloudevent, None)
        .await
        .unwrap();
    assert!(again.replayed, "the same source and id is a repeat");
    assert_eq!(next_event(&mut sse).await, event);
    assert_eq!(next_event(&mut ws).await, event);

    let page = client
        .events()
        .get_history_cloudevents(&HistoryQuery::new().types(["custom.*"]))
        .await
        .unwrap();
    assert_eq!(page.data.len(), 1);
    assert_eq!(page.data[0].subject(), Some("report/r-1"));
    assert_eq!(
        cpod_proto::cloudevents::from_cloudevent(&page.data[0]).unwrap(),
        event
    );
    let one = client.events().get_cloudevent(&event.id).await.unwrap();
    assert_eq!(one.source(), "/organizations/org-a/workspaces/ws-sdk");

    let receiver = Receiver::start().await;
    let created = client
        .webhooks()
        .create(&NewWebhook::new(format!("{}/ce", receiver.url)).cloudevents(ContentMode::Binary))
        .await
        .unwrap();
    assert_eq!(created.webhook.format, EventFormat::CloudEvents);
    assert_eq!(created.webhook.content_mode, Some(ContentMode::Binary));
}

#[tokio::test]
async fn the_cli_emits_a_cloudevent_and_prints_history_and_tail_as_cloudevents() {
    use crate::cli::{cli, run, stdout_json_lines};

    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let output = run(cli(
        &app.address,
        &service,
        &[
            "emit",
            "--cloudevent",
            "--json",
            "custom.cli.sent",
            "report/r-7",
            r#"{"rows":5}"#,
        ],
    ))
    .await;
    assert!(output.status.success(), "{output:?}");
    let printed = stdout_json_lines(&output);
    assert_eq!(printed[0]["specversion"], "1.0");
    assert_eq!(printed[0]["subject"], "report/r-7");
    assert_eq!(printed[0]["source"], "/organizations/org-a");
    let events = stored(&app, &service).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["payload"], json!({"rows": 5}));
    assert_eq!(printed[0]["id"], events[0]["id"]);

    let output = run(cli(
        &app.address,
        &service,
        &[
            "history",
            "--format",
            "cloudevents",
            "--types",
            "custom.*",
            "--json",
        ],
    ))
    .await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout_json_lines(&output), printed);
    let output = run(cli(
        &app.address,
        &service,
        &["history", "--format", "cloudevents", "--types", "custom.*"],
    ))
    .await;
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("custom.cli.sent") && text.contains("report/r-7"),
        "{text}"
    );
    // A workspace needs the organization: the source names both.
    let output = run(cli(
        &app.address,
        &service,
        &[
            "emit",
            "--cloudevent",
            "--workspace-id",
            "w",
            "custom.cli.sent",
            "report/r-8",
        ],
    ))
    .await;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

/// The trace-id of a `traceparent` (its second field).
fn trace_id(traceparent: &Value) -> String {
    let text = traceparent.as_str().expect("a traceparent");
    text.split('-').nth(1).expect("a trace-id").to_owned()
}

/// `GET /v1/events/{id}?format=cloudevents` of a stored `event`.
async fn one_as_cloudevent(app: &TestApp, key: &str, event: &Value) -> Value {
    let path = format!(
        "/v1/events/{}?format=cloudevents",
        event["id"].as_str().unwrap()
    );
    json_of(app.get(key, &path).send().await.unwrap(), StatusCode::OK).await
}

#[tokio::test]
async fn cloudevents_carry_the_trace_context_both_ways() {
    const HEADER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const ATTRIBUTE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;

    // Out: a traced event's CloudEvent carries its traceparent and tracestate.
    let traced = json_of(
        app.client
            .post(app.url("/v1/events"))
            .bearer_auth(&service)
            .header("traceparent", HEADER)
            .header("tracestate", "rojo=00f067aa0ba902b7")
            .json(&json!({"type": "pod.failed", "resourceType": "pod", "resourceId": "p-1"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let one = one_as_cloudevent(&app, &service, &traced).await;
    assert_eq!(one["traceparent"], traced["traceparent"]);
    assert_eq!(
        trace_id(&one["traceparent"]),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(one["tracestate"], "rojo=00f067aa0ba902b7");
    let page = json_of(
        app.get(&service, "/v1/events?format=cloudevents")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["data"][0]["traceparent"], traced["traceparent"]);
    // An untraced event's CloudEvent has no trace attributes.
    let plain = app.emit(&service, &custom("untraced")).await;
    let one = one_as_cloudevent(&app, &service, &plain).await;
    assert!(
        one.get("traceparent").is_none() && one.get("tracestate").is_none(),
        "{one}"
    );

    // In: a structured CloudEvent's traceparent extension is the event's trace context.
    let mut with_attribute = cloudevent("ce-t1", "/organizations/org-a", "build/b-1");
    with_attribute["traceparent"] = json!(ATTRIBUTE);
    with_attribute["tracestate"] = json!("congo=t61rcWkgMzE");
    let event = json_of(
        post_structured(&app, &service, &with_attribute).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        trace_id(&event["traceparent"]),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(event["tracestate"], "congo=t61rcWkgMzE");
    let kept = app
        .history_all(&service, "order=asc&types=custom.build.*")
        .await;
    assert_eq!(kept.last().unwrap()["traceparent"], event["traceparent"]);

    // The request's traceparent header wins over the attribute.
    let mut both = cloudevent("ce-t2", "/organizations/org-a", "build/b-2");
    both["traceparent"] = json!(ATTRIBUTE);
    let event = json_of(
        app.client
            .post(app.url("/v1/events"))
            .bearer_auth(&service)
            .header("content-type", STRUCTURED)
            .header("traceparent", HEADER)
            .body(both.to_string())
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        trace_id(&event["traceparent"]),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );

    // Binary mode: the traceparent HTTP header carries it.
    let event = json_of(
        binary(&app, &service, &BINARY_HEADERS, r#"{"exitCode":1}"#)
            .header("traceparent", ATTRIBUTE)
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        trace_id(&event["traceparent"]),
        "0af7651916cd43dd8448eb211c80319c"
    );

    // An invalid traceparent attribute is ignored, as an invalid header is; one that is not a
    // string is refused naming it.
    let mut invalid = cloudevent("ce-t3", "/organizations/org-a", "build/b-3");
    invalid["traceparent"] = json!("not-a-traceparent");
    let event = json_of(
        post_structured(&app, &service, &invalid).await,
        StatusCode::CREATED,
    )
    .await;
    assert!(event.get("traceparent").is_none(), "{event}");
    let mut typed = cloudevent("ce-t4", "/organizations/org-a", "build/b-4");
    typed["traceparent"] = json!(7);
    assert_error(
        post_structured(&app, &service, &typed).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("traceparent"),
    )
    .await;
}
