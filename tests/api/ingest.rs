//! Ingestion (contract §1, §3): what is accepted, what is refused, and that a refusal stores
//! nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, assert_error, custom, json_of, spawn_app};

#[tokio::test]
async fn an_accepted_event_is_answered_as_stored_with_broker_fields() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let event = app
        .emit(
            &service,
            &json!({"type": "pod.failed", "resourceId": "pod-7f9c", "resourceType": "pod",
                    "workspaceId": "ws-42", "payload": {"exitCode": 137, "reason": "OOMKilled"}}),
        )
        .await;
    let keys: Vec<&str> = event
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "type",
            "resourceId",
            "resourceType",
            "organizationId",
            "workspaceId",
            "payload",
            "timestamp"
        ]
    );
    let id = uuid::Uuid::parse_str(event["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(event["organizationId"], "org-a");
    assert_eq!(
        event["payload"],
        json!({"exitCode": 137, "reason": "OOMKilled"})
    );
    let timestamp = event["timestamp"].as_str().unwrap();
    assert_eq!(timestamp.len(), 24, "{timestamp}");
    assert!(
        timestamp.ends_with('Z') && timestamp.as_bytes()[19] == b'.',
        "{timestamp}"
    );

    let fetched = json_of(
        app.get(&service, &format!("/v1/events/{id}"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(fetched, event);
}

#[tokio::test]
async fn every_accepted_input_class_is_stored() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let app_key = app.key("org-a", "app").await;
    let (service, app_key) = (service.as_str(), app_key.as_str());
    let accepted = [
        (
            service,
            json!({"type": "person.created", "resourceId": "p", "resourceType": "person"}),
        ),
        (
            service,
            json!({"type": "job.completed", "resourceId": "j", "resourceType": "job", "payload": null}),
        ),
        (
            service,
            json!({"type": "pod.started", "resourceId": "p", "resourceType": "pod", "workspaceId": null}),
        ),
        (
            service,
            json!({"type": "custom.report.generated", "resourceId": "r", "resourceType": "report", "organizationId": "org-a"}),
        ),
        (
            app_key,
            json!({"type": "custom.a", "resourceId": "r", "resourceType": "r", "payload": {"nested": {"list": [1, 2]}}}),
        ),
        (
            app_key,
            json!({"type": "custom.x-y_z.9", "resourceId": "ü ☃", "resourceType": "a_b-c"}),
        ),
    ];
    for (key, body) in &accepted {
        let stored = app.emit(key, body).await;
        assert_eq!(stored["type"], body["type"]);
        let expected_payload = match &body["payload"] {
            Value::Null => json!({}),
            other => other.clone(),
        };
        assert_eq!(stored["payload"], expected_payload);
        assert_eq!(
            stored["workspaceId"],
            body.get("workspaceId").cloned().unwrap_or(Value::Null)
        );
    }
    let admin_event = app
        .emit(ADMIN_KEY, &json!({"type": "pod.created", "resourceId": "p", "resourceType": "pod", "organizationId": "org-b"}))
        .await;
    assert_eq!(admin_event["organizationId"], "org-b");
    assert_eq!(
        app.history_all(service, "").await.len(),
        accepted.len() + 2,
        "two credential events too"
    );
}

#[tokio::test]
async fn every_rejected_input_class_gets_its_error_and_stores_nothing() {
    let app = spawn_app().await;
    let service = &app.key("org-a", "service").await;
    let app_key = &app.key("org-a", "app").await;
    let reader = &app.key("org-a", "reader").await;
    let before = app.history_all(service, "").await.len();
    let ok = || json!({"type": "custom.a", "resourceId": "r", "resourceType": "r"});
    let with = |field: &str, value: Value| {
        let mut body = ok();
        body[field] = value;
        body
    };
    let big_payload = json!({"blob": "x".repeat(70 * 1024)});
    let (service, app_key, reader): (&str, &str, &str) = (service, app_key, reader);
    let json_cases: Vec<(&str, Value, StatusCode, &str, Option<&str>)> = vec![
        (
            service,
            json!([ok()]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        ),
        (
            service,
            json!("event"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        ),
        (
            service,
            with("extra", json!(1)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        ),
        (
            service,
            with("id", json!("x")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        ),
        (
            service,
            with("timestamp", json!("2026-01-01T00:00:00.000Z")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        ),
        (
            service,
            with("type", Value::Null),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("type"),
        ),
        (
            service,
            with("type", json!(7)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("type"),
        ),
        (
            service,
            with("type", json!("custom")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("type"),
        ),
        (
            service,
            with("type", json!("Custom.A")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("type"),
        ),
        (
            service,
            with("type", json!("custom..a")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("type"),
        ),
        (
            service,
            with("type", json!(format!("custom.{}", "a".repeat(130)))),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("type"),
        ),
        (
            service,
            with("type", json!("billing.paid")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("type"),
        ),
        (
            service,
            with("type", json!("pod.exploded")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("type"),
        ),
        (
            app_key,
            with("type", json!("pod.exploded")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("type"),
        ),
        (
            reader,
            with("type", json!("nope.nope")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("type"),
        ),
        (
            service,
            with("resourceId", json!("")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("resourceId"),
        ),
        (
            service,
            with("resourceId", json!("x".repeat(257))),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("resourceId"),
        ),
        (
            service,
            with("resourceId", json!(5)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("resourceId"),
        ),
        (
            service,
            with("resourceType", json!("Pod")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("resourceType"),
        ),
        (
            service,
            with("resourceType", json!("a".repeat(65))),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("resourceType"),
        ),
        (
            service,
            with("workspaceId", json!(42)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("workspaceId"),
        ),
        (
            service,
            with("payload", json!([1, 2])),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("payload"),
        ),
        (
            service,
            with("payload", json!("text")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("payload"),
        ),
        (
            service,
            with("payload", json!(3)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("payload"),
        ),
        (
            service,
            with("payload", json!(true)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("payload"),
        ),
        (
            service,
            with("type", json!("credential.created")),
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        ),
        (
            ADMIN_KEY,
            json!({"type": "credential.revoked", "resourceId": "r", "resourceType": "r", "organizationId": "org-a"}),
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        ),
        (
            app_key,
            with("type", json!("pod.failed")),
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        ),
        (
            app_key,
            with("type", json!("person.created")),
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        ),
        (reader, ok(), StatusCode::FORBIDDEN, "forbidden", None),
        (
            service,
            with("organizationId", json!("org-b")),
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        ),
        (
            ADMIN_KEY,
            ok(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("organizationId"),
        ),
        (
            service,
            with("payload", big_payload),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        ),
    ];
    for (key, body, status, code, param) in json_cases {
        let response = app
            .post_json(key, "/v1/events", &body)
            .send()
            .await
            .unwrap();
        let got = response.status();
        let error = json_of(response, got).await;
        assert_eq!(
            (got, error["error"]["code"].as_str().unwrap()),
            (status, code),
            "{body}: {error}"
        );
        if let Some(param) = param {
            assert_eq!(error["error"]["param"], param, "{body}: {error}");
        }
    }

    let raw_cases: Vec<(Option<&str>, Vec<u8>, StatusCode, &str)> = vec![
        (
            Some("application/json"),
            b"{\"type\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some("application/json"),
            b"".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some("application/json"),
            b"\xff\xfe".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some("application/json"),
            b"{\"type\":\"custom.a\",\"resourceId\":\"r\",\"resourceType\":\"r\"} trailing"
                .to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Some("text/plain"),
            ok().to_string().into_bytes(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Some("application/x-www-form-urlencoded"),
            b"type=custom.a".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            None,
            ok().to_string().into_bytes(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Some("application/json"),
            vec![b' '; 5 * 1024 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for (content_type, body, status, code) in raw_cases {
        let mut request = app
            .client
            .post(app.url("/v1/events"))
            .bearer_auth(service)
            .body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        assert_error(request.send().await.unwrap(), status, code, None).await;
    }
    assert_eq!(
        app.history_all(service, "").await.len(),
        before,
        "a refused request stored something"
    );
}

#[tokio::test]
async fn a_json_content_type_with_a_charset_is_accepted() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let response = app
        .client
        .post(app.url("/v1/events"))
        .bearer_auth(&service)
        .header("content-type", "application/json; charset=utf-8")
        .body(custom("r").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_batch_is_stored_whole_and_in_order() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let events: Vec<Value> = (0..250).map(|i| custom(&format!("r{i}"))).collect();
    let stored = json_of(
        app.post_json(&service, "/v1/events/batch", &json!({"events": events}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let stored = stored["data"].as_array().unwrap();
    assert_eq!(stored.len(), 250);
    for (i, event) in stored.iter().enumerate() {
        assert_eq!(event["resourceId"], format!("r{i}"));
    }
    let history = app.history_all(&service, "order=asc&types=custom.*").await;
    assert_eq!(&history, stored);
}

#[tokio::test]
async fn one_bad_event_rejects_the_whole_batch_and_names_its_index() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let app_key = app.key("org-a", "app").await;
    let before = app.history_all(&service, "").await.len();
    let mut events: Vec<Value> = (0..5).map(|i| custom(&format!("r{i}"))).collect();
    events[3]["type"] = json!("nope.nope");
    let body = assert_error(
        app.post_json(&service, "/v1/events/batch", &json!({"events": events}))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("events[3].type"),
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("events[3]"),
        "{body}"
    );

    let mut events: Vec<Value> = (0..5).map(|i| custom(&format!("r{i}"))).collect();
    events[2]["payload"] = json!([1]);
    assert_error(
        app.post_json(&service, "/v1/events/batch", &json!({"events": events}))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("events[2].payload"),
    )
    .await;

    let mut events: Vec<Value> = (0..5).map(|i| custom(&format!("r{i}"))).collect();
    events[4]["type"] = json!("pod.failed");
    let body = assert_error(
        app.post_json(&app_key, "/v1/events/batch", &json!({"events": events}))
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("events[4]"),
        "{body}"
    );

    let mut events: Vec<Value> = (0..3).map(|i| custom(&format!("r{i}"))).collect();
    events[1]["payload"] = json!({"blob": "x".repeat(70_000)});
    assert_error(
        app.post_json(&service, "/v1/events/batch", &json!({"events": events}))
            .send()
            .await
            .unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    )
    .await;

    for bad in [
        json!({"events": []}),
        json!({"events": (0..1001).map(|i| custom(&format!("r{i}"))).collect::<Vec<_>>()}),
        json!({"events": custom("r")}),
        json!({}),
        json!({"events": [custom("r")], "more": true}),
        json!([custom("r")]),
    ] {
        assert_error(
            app.post_json(&service, "/v1/events/batch", &bad)
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        )
        .await;
    }
    assert_eq!(app.history_all(&service, "").await.len(), before);
}

#[tokio::test]
async fn an_idempotent_repeat_answers_the_first_result_and_stores_nothing_new() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let send = |body: Value, key: &'static str, path: &'static str| {
        app.post_json(&service, path, &body)
            .header("Idempotency-Key", key)
            .send()
    };
    let first = send(custom("r1"), "k1", "/v1/events").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let again = send(custom("r1"), "k1", "/v1/events").await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);

    assert_error(
        send(custom("r2"), "k1", "/v1/events").await.unwrap(),
        StatusCode::CONFLICT,
        "conflict",
        None,
    )
    .await;

    // The same key on the other endpoint, or in another organization, is another key.
    let batch = send(json!({"events": [custom("r1")]}), "k1", "/v1/events/batch")
        .await
        .unwrap();
    assert_eq!(batch.status(), StatusCode::CREATED);
    assert!(batch.headers().get("idempotent-replayed").is_none());
    let other_org = app.key("org-b", "service").await;
    let response = app
        .post_json(&other_org, "/v1/events", &custom("r1"))
        .header("Idempotency-Key", "k1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().get("idempotent-replayed").is_none());

    let stored = app.history_all(&service, "types=custom.*").await;
    assert_eq!(stored.len(), 2, "one single and one batch event");

    // A tab passes HTTP's header rules but is not printable (schemathesis found it accepted).
    for bad in ["", &"k".repeat(256), "a\tb"] {
        let response = app
            .post_json(&service, "/v1/events", &custom("r"))
            .header("Idempotency-Key", bad)
            .send()
            .await
            .unwrap();
        assert_error(
            response,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("Idempotency-Key"),
        )
        .await;
    }
    let response = app
        .post_json(&service, "/v1/events", &custom("r"))
        .header("Idempotency-Key", "k".repeat(255))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn identical_requests_racing_with_one_idempotency_key_store_one_event() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    for round in 0..5 {
        let key = format!("race-{round}");
        let requests = (0..32).map(|_| {
            app.post_json(
                &service,
                "/v1/events/batch",
                &json!({"events": [custom("a"), custom("b")]}),
            )
            .header("Idempotency-Key", &key)
            .send()
        });
        let responses = futures_util::future::join_all(requests).await;
        let mut bodies = Vec::new();
        let mut replayed = 0;
        for response in responses {
            let response = response.unwrap();
            assert_eq!(response.status(), StatusCode::CREATED);
            replayed += usize::from(response.headers().get("idempotent-replayed").is_some());
            bodies.push(response.json::<Value>().await.unwrap());
        }
        assert_eq!(replayed, 31);
        assert!(bodies.iter().all(|b| b == &bodies[0]));
    }
    assert_eq!(app.history_all(&service, "types=custom.*").await.len(), 10);
}
