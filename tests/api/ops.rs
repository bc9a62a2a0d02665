//! Operations (contract §7, §8): health, readiness, metrics, OpenAPI, JSON errors everywhere.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{assert_error, json_of, spawn_app};

#[tokio::test]
async fn health_and_readiness_answer_without_a_key() {
    let app = spawn_app().await;
    json_of(
        app.client.get(app.url("/healthz")).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    json_of(
        app.client.get(app.url("/readyz")).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn metrics_count_ingestion_requests_commits_streams_and_webhooks() {
    let app = crate::helpers::spawn_app_with(&["--webhook-allow-private", "true"]).await;
    let service = app.key("org-a", "service").await;
    let receiver = crate::receiver::Receiver::start().await;
    let created = app
        .post_json(
            &service,
            "/v1/webhooks",
            &serde_json::json!({"url": receiver.url}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let mut stream =
        crate::helpers::SseClient::open(&app.address, &service, "/v1/events/stream", None).await;
    // A type no other test emits: the recorder is shared by every broker in this process, so
    // only this series is known to come from this test (the others are checked for presence).
    let probe = |id: &str| serde_json::json!({"type": "custom.metrics.probe", "resourceId": id, "resourceType": "probe"});
    app.emit(&service, &probe("r")).await;
    app.post_json(
        &service,
        "/v1/events/batch",
        &serde_json::json!({"events": [probe("a"), probe("b")]}),
    )
    .send()
    .await
    .unwrap();
    stream.events(3).await;
    receiver
        .wait_for(3, std::time::Duration::from_secs(10))
        .await;
    // Outcomes are counted just after the answers arrive; queue gauges refresh about each second.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for needle in [
        "cpod_events_ingested_total{type=\"custom.metrics.probe\"} 3",
        "cpod_http_requests_total{method=\"POST\",route=\"/v1/events\",status=\"201\"}",
        "cpod_store_commit_seconds_bucket",
        "cpod_store_commit_group_events_bucket",
        "cpod_ingest_batch_events_bucket",
        "cpod_subscribers{transport=\"sse\"}",
        "cpod_events_delivered_total{transport=\"sse\"}",
        "cpod_webhook_deliveries_total{outcome=\"succeeded\"}",
        "cpod_webhook_queue_depth",
        "cpod_cluster_nodes ",
        "cpod_feed_lag_seconds ",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test]
async fn the_openapi_document_covers_every_endpoint() {
    let app = spawn_app().await;
    let doc = json_of(
        app.client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/events", "post"),
        ("/v1/events", "get"),
        ("/v1/events/batch", "post"),
        ("/v1/events/{id}", "get"),
        ("/v1/keys", "post"),
        ("/v1/keys", "get"),
        ("/v1/keys/{id}", "delete"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/asyncapi.json", "get"),
        ("/v1/events/stream", "get"),
        ("/v1/events/ws", "get"),
        ("/v1/stream-tickets", "post"),
        ("/v1/webhooks", "post"),
        ("/v1/webhooks", "get"),
        ("/v1/webhooks/{id}", "get"),
        ("/v1/webhooks/{id}", "patch"),
        ("/v1/webhooks/{id}", "delete"),
        ("/v1/webhooks/{id}/rotate-secret", "post"),
        ("/v1/webhooks/{id}/test", "post"),
        ("/v1/webhooks/{id}/deliveries", "get"),
        ("/v1/webhooks/{id}/deliveries/{deliveryId}/retry", "post"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is missing"
        );
    }
    assert!(doc["components"]["schemas"]["Event"].is_object());
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_odd_inputs_get_json_errors_never_500() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    assert_error(
        app.get(&service, "/v2/nothing").send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    let put = app
        .client
        .put(app.url("/v1/events"))
        .bearer_auth(&service)
        .send()
        .await
        .unwrap();
    assert_error(
        put,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
    let odd_paths = [
        "/v1/events?%zz=1",
        "/v1/events?types=%00",
        "/v1/events?since=%E2%98%83",
        "/v1/events/%00",
        "/v1/events/..%2F..%2Fetc",
        "/v1/events?limit=99999999999999999999999",
        "/v1/keys/not-a-key",
    ];
    for path in odd_paths {
        let request = if path.starts_with("/v1/keys") {
            app.client.delete(app.url(path))
        } else {
            app.client.get(app.url(path))
        };
        let response = request.bearer_auth(&service).send().await.unwrap();
        let status = response.status();
        assert!(status.is_client_error(), "{path}: {status}");
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|_| panic!("{path}: not JSON"));
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
    }
}

/// The operations of the OpenAPI document: (method, path template, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations.push((method.clone(), path.clone(), operation.clone()));
        }
    }
    operations
}

/// The statuses an operation documents, `$ref`s to shared responses included.
fn documented(operation: &Value) -> Vec<u16> {
    operation["responses"]
        .as_object()
        .unwrap()
        .keys()
        .map(|s| s.parse().unwrap())
        .collect()
}

async fn openapi(app: &crate::helpers::TestApp) -> Value {
    json_of(
        app.client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await
}

/// Sends hostile and ordinary requests to every documented operation (no key, a reader key, an
/// unknown id, an unknown parameter, a wrong content type, an oversized body, past the rate
/// limit) and checks that each status the broker answers is one the document lists for that
/// operation (before: 401 undocumented on every webhook route, 415 on keys and webhooks, 400
/// on the WebSocket route without an upgrade, …).
#[tokio::test]
async fn every_status_the_broker_answers_is_documented() {
    let app = spawn_app().await;
    let limited = crate::helpers::spawn_app_with(&["--rate-limit", "1"]).await;
    let doc = openapi(&app).await;
    let reader = app.key("org-a", "reader").await;
    let limited_reader = limited.key("org-a", "reader").await;
    let admin = crate::helpers::ADMIN_KEY;
    let huge = vec![b' '; 5 * 1024 * 1024];
    let mut undocumented = Vec::new();
    let mut seen: std::collections::BTreeMap<u16, usize> = Default::default();
    for (method, template, operation) in operations(&doc) {
        let path = template
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{deliveryId}", &uuid::Uuid::now_v7().to_string());
        let method: reqwest::Method = method.to_uppercase().parse().unwrap();
        let secured = operation["security"].is_array();
        let has_body = operation["requestBody"].is_object();
        let has_query = operation["parameters"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
        let mut probes: Vec<(&str, reqwest::RequestBuilder)> = vec![
            ("no key", app.client.request(method.clone(), app.url(&path))),
            (
                "a reader key",
                app.client
                    .request(method.clone(), app.url(&path))
                    .bearer_auth(&reader)
                    .json(&serde_json::json!({})),
            ),
            (
                "a wrong key",
                app.client
                    .request(method.clone(), app.url(&path))
                    .bearer_auth("cpk_not_a_key_0123456789abcdefghijklmnopq"),
            ),
            (
                "the admin key",
                app.client
                    .request(method.clone(), app.url(&path))
                    .bearer_auth(admin),
            ),
        ];
        if has_query {
            probes.push((
                "an unknown parameter",
                app.client
                    .request(method.clone(), app.url(&format!("{path}?unknown=1")))
                    .bearer_auth(admin),
            ));
        }
        if has_body {
            probes.push((
                "a text body",
                app.client
                    .request(method.clone(), app.url(&path))
                    .bearer_auth(admin)
                    .header("content-type", "text/plain")
                    .body("{}"),
            ));
            probes.push((
                "a 5 MiB body",
                app.client
                    .request(method.clone(), app.url(&path))
                    .bearer_auth(admin)
                    .header("content-type", "application/json")
                    .body(huge.clone()),
            ));
        }
        if secured {
            for _ in 0..3 {
                probes.push((
                    "a key past its rate limit",
                    limited
                        .client
                        .request(method.clone(), limited.url(&path))
                        .bearer_auth(&limited_reader),
                ));
            }
        }
        for (probe, request) in probes {
            // Only the status matters: a stream that opens is dropped once its head arrived.
            let status = request.send().await.unwrap().status().as_u16();
            *seen.entry(status).or_default() += 1;
            if !documented(&operation).contains(&status) {
                undocumented.push(format!("{method} {template} with {probe}: {status}"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "undocumented answers:\n{}",
        undocumented.join("\n")
    );
    // The probes reached every kind of refusal the document must list.
    for status in [200, 400, 401, 403, 404, 413, 415, 429] {
        assert!(
            seen.contains_key(&status),
            "no probe got {status}: {seen:?}"
        );
    }
}

/// The shape rules of the document itself: every secured operation lists 401, 429 and 503,
/// every body 400, 413 and 415, every id in a path 404; request bodies refuse unknown fields
/// (`additionalProperties: false`, as `deny_unknown_fields` does); the optional body of
/// `POST /v1/stream-tickets` is neither required nor `null`; every response is described.
#[tokio::test]
async fn the_openapi_document_lists_the_common_answers_and_the_body_rules() {
    let app = spawn_app().await;
    let doc = openapi(&app).await;
    let schemas = &doc["components"]["schemas"];
    for (method, path, operation) in operations(&doc) {
        let statuses = documented(&operation);
        let has = |s: u16| statuses.contains(&s);
        let at = format!("{method} {path}: {statuses:?}");
        if operation["security"].is_array() {
            assert!(has(401) && has(429) && has(503), "{at}");
        }
        if let Some(body) = operation["requestBody"].as_object() {
            assert!(has(400) && has(413) && has(415), "{at}");
            let schema = &body["content"]["application/json"]["schema"];
            let name = schema["$ref"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: the body is not a named schema: {schema}"))
                .trim_start_matches("#/components/schemas/");
            assert_eq!(
                schemas[name]["additionalProperties"],
                Value::Bool(false),
                "{name}"
            );
        }
        if path.contains('{') {
            assert!(has(404), "{at}");
        }
        for (status, response) in operation["responses"].as_object().unwrap() {
            let described = match response["$ref"].as_str() {
                Some(reference) => {
                    let name = reference.trim_start_matches("#/components/responses/");
                    &doc["components"]["responses"][name]["description"]
                }
                None => &response["description"],
            };
            assert!(
                described.as_str().is_some_and(|d| !d.is_empty()),
                "{at}: {status} has no description"
            );
        }
    }
    let ws = &doc["paths"]["/v1/events/ws"]["get"]["responses"];
    assert!(ws["400"].is_object(), "a request that is not an upgrade");
    let tickets = &doc["paths"]["/v1/stream-tickets"]["post"]["requestBody"];
    assert_ne!(tickets["required"], Value::Bool(true), "{tickets}");
    assert_eq!(
        tickets["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/TicketRequest"
    );
    let too_many = &doc["components"]["responses"]["RateLimited"];
    assert!(too_many["headers"]["Retry-After"].is_object(), "{too_many}");
    let unauthorized = &doc["components"]["responses"]["Unauthorized"];
    assert!(
        unauthorized["headers"]["WWW-Authenticate"].is_object(),
        "{unauthorized}"
    );
}
