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
