//! Webhooks (contract §6) against a real receiver: delivery and signatures, filters, retries,
//! the queue across a restart and a kill -9, 410, redirects, rotation, disabling, the SSRF table,
//! manual retry, the test endpoint — and a third-party verifier (Python `standardwebhooks`).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{
    ADMIN_KEY, BrokerProcess, TestApp, assert_error, custom, json_of, spawn_app_with,
};
use crate::receiver::{Answer, Received, Receiver};

const WAIT: Duration = Duration::from_secs(10);

async fn broker(extra: &[&str]) -> TestApp {
    let mut args = vec!["--webhook-allow-private", "true"];
    args.extend_from_slice(extra);
    spawn_app_with(&args).await
}

/// GETs `path` until `done` holds for the answer (panics after a while); answers it.
async fn poll_json(app: &TestApp, key: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = json_of(app.get(key, path).send().await.unwrap(), StatusCode::OK).await;
        if done(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never got there: {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create(app: &TestApp, key: &str, body: Value) -> Value {
    json_of(
        app.post_json(key, "/v1/webhooks", &body)
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await
}

/// Checks a delivery's signatures independently of the broker's own signing code; answers how
/// many of the `webhook-signature` entries `secret` verifies.
pub fn verify(received: &Received, secret: &str) -> usize {
    let id = received.header("webhook-id").expect("webhook-id");
    let timestamp = received
        .header("webhook-timestamp")
        .expect("webhook-timestamp");
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&received.body);
    let tag = mac.finalize().into_bytes();
    let expected = format!("v1,{}", STANDARD.encode(tag));
    let standard = received
        .header("webhook-signature")
        .expect("webhook-signature");
    let matches = standard.split(' ').filter(|s| *s == expected).count();
    let cpod = received
        .header("x-cpod-signature")
        .expect("x-cpod-signature");
    assert!(cpod.starts_with(&format!("t={timestamp},")), "{cpod}");
    assert_eq!(
        cpod.split(',')
            .filter(|p| *p == format!("v1={}", hex::encode(tag)))
            .count(),
        matches,
        "X-Cpod-Signature disagrees with webhook-signature"
    );
    matches
}

#[tokio::test]
async fn an_event_is_delivered_signed_with_the_contract_headers() {
    let app = broker(&[]).await;
    let service = app.key("org-a", "service").await;
    let receiver = Receiver::start().await;
    let webhook = create(
        &app,
        &service,
        json!({"url": format!("{}/hook", receiver.url), "description": "ops"}),
    )
    .await;
    let secret = webhook["secret"].as_str().unwrap();
    assert_eq!(webhook["types"], json!(["*"]));
    assert_eq!(webhook["enabled"], true);
    let event = app.emit(&service, &json!({"type": "pod.failed", "resourceId": "p", "resourceType": "pod", "payload": {"exitCode": 137}})).await;
    let got = receiver.wait_for(1, WAIT).await.remove(0);
    assert_eq!(got.path, "/hook");
    assert_eq!(got.json(), event);
    assert_eq!(got.header("webhook-id"), event["id"].as_str());
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-cpod-event-type"), Some("pod.failed"));
    let timestamp: i64 = got.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!((timestamp - chrono::Utc::now().timestamp()).abs() < 30);
    assert_eq!(verify(&got, secret), 1);
    assert_eq!(
        verify(&got, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        0,
        "a wrong secret verifies"
    );
}

#[tokio::test]
async fn only_events_matching_types_and_resource_type_are_delivered() {
    let app = broker(&[]).await;
    let service = app.key("org-a", "service").await;
    let other_org = app.key("org-b", "service").await;
    let receiver = Receiver::start().await;
    create(
        &app,
        &service,
        json!({"url": receiver.url, "types": ["pod.*", "*.failed"], "resourceType": "pod"}),
    )
    .await;
    app.emit(
        &service,
        &json!({"type": "job.failed", "resourceId": "j", "resourceType": "job"}),
    )
    .await;
    app.emit(&service, &custom("c")).await;
    app.emit(
        &other_org,
        &json!({"type": "pod.failed", "resourceId": "p", "resourceType": "pod"}),
    )
    .await;
    let wanted = app
        .emit(
            &service,
            &json!({"type": "pod.started", "resourceId": "p", "resourceType": "pod"}),
        )
        .await;
    let got = receiver.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let got_later = receiver.received();
    assert_eq!(
        got_later.len(),
        1,
        "{:?}",
        got_later.iter().map(Received::json).collect::<Vec<_>>()
    );
    assert_eq!(got[0].json(), wanted);
}

#[tokio::test]
async fn failures_are_retried_on_schedule_and_every_attempt_is_logged() {
    let app = broker(&["--webhook-retry-schedule", "0s,1s,1s,1s"]).await;
    let service = app.key("org-a", "service").await;
    let receiver = Receiver::start().await;
    receiver.script([
        Answer {
            status: 500,
            headers: vec![],
            body: "boom".into(),
        },
        Answer::status(503),
    ]);
    let webhook = create(&app, &service, json!({"url": receiver.url})).await;
    let event = app.emit(&service, &custom("r")).await;
    let got = receiver.wait_for(3, WAIT).await;
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "the body changed between attempts"
    );
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == event["id"].as_str())
    );
    assert_ne!(
        got[0].header("webhook-timestamp"),
        got[2].header("webhook-timestamp"),
        "timestamps are fresh on each attempt"
    );
    for attempt in &got {
        assert_eq!(verify(attempt, webhook["secret"].as_str().unwrap()), 1);
    }
    let id = webhook["id"].as_str().unwrap();
    let log = poll_json(
        &app,
        &service,
        &format!("/v1/webhooks/{id}/deliveries"),
        |log| log["data"][0]["status"] == "succeeded",
    )
    .await;
    let delivery = &log["data"][0];
    assert_eq!(delivery["eventId"], event["id"]);
    assert_eq!(delivery["eventType"], "custom.test.happened");
    assert_eq!(delivery["nextAttemptAt"], Value::Null);
    let attempts = delivery["attempts"].as_array().unwrap();
    let statuses: Vec<&Value> = attempts.iter().map(|a| &a["responseStatus"]).collect();
    assert_eq!(statuses, [&json!(500), &json!(503), &json!(200)]);
    assert_eq!(attempts[0]["responseBody"], "boom");
    assert!(attempts[0]["error"].is_string() && attempts[2]["error"].is_null());
    assert!(
        attempts
            .iter()
            .all(|a| a["durationMs"].is_i64() && a["attemptedAt"].is_string())
    );
    let pending = json_of(
        app.get(
            &service,
            &format!("/v1/webhooks/{id}/deliveries?status=pending"),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(pending["data"], json!([]));
}

#[tokio::test]
async fn retry_after_holds_the_next_attempt_back() {
    let app = broker(&["--webhook-retry-schedule", "0s,0s"]).await;
    let service = app.key("org-a", "service").await;
    let receiver = Receiver::start().await;
    receiver.script([Answer {
        status: 429,
        headers: vec![("retry-after", "2".into())],
        body: String::new(),
    }]);
    create(&app, &service, json!({"url": receiver.url})).await;
    app.emit(&service, &custom("r")).await;
    receiver.wait_for(1, WAIT).await;
    let first = std::time::Instant::now();
    receiver.wait_for(2, WAIT).await;
    assert!(
        first.elapsed() >= Duration::from_millis(1700),
        "retried after {:?}",
        first.elapsed()
    );
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_redirects_are_not_followed() {
    let app = broker(&["--webhook-retry-schedule", "0s,0s"]).await;
    let service = app.key("org-a", "service").await;
    let gone = Receiver::start().await;
    gone.answer_always(Answer::status(410));
    let webhook = create(&app, &service, json!({"url": gone.url})).await;
    app.emit(&service, &custom("r")).await;
    gone.wait_for(1, WAIT).await;
    let id = webhook["id"].as_str().unwrap();
    let disabled =
        crate::helpers::eventually(WAIT, || {
            let request = app.get(&service, &format!("/v1/webhooks/{id}"));
            async move {
                request.send().await.unwrap().json::<Value>().await.unwrap()["enabled"] == false
            }
        })
        .await;
    assert!(disabled);
    app.emit(&service, &custom("after")).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gone.received().len(), 1, "a disabled endpoint got more");

    let target = Receiver::start().await;
    let redirecting = Receiver::start().await;
    redirecting.answer_always(Answer {
        status: 302,
        headers: vec![("location", target.url.clone())],
        body: String::new(),
    });
    let webhook = create(
        &app,
        &service,
        json!({"url": redirecting.url, "types": ["custom.*"]}),
    )
    .await;
    app.emit(&service, &custom("redirected")).await;
    redirecting.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(target.received().is_empty(), "the redirect was followed");
    let id = webhook["id"].as_str().unwrap();
    let log = json_of(
        app.get(&service, &format!("/v1/webhooks/{id}/deliveries"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(log["data"][0]["attempts"][0]["responseStatus"], 302);
}

#[tokio::test]
async fn an_endpoint_silent_too_long_is_disabled_when_a_delivery_exhausts_its_retries() {
    let app = broker(&[
        "--webhook-retry-schedule",
        "0s,0s",
        "--webhook-disable-after",
        "1s",
    ])
    .await;
    let service = app.key("org-a", "service").await;
    let receiver = Receiver::start().await;
    receiver.answer_always(Answer::status(500));
    let webhook = create(&app, &service, json!({"url": receiver.url})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.emit(&service, &custom("r")).await;
    receiver.wait_for(2, WAIT).await;
    let id = webhook["id"].as_str().unwrap();
    let done = crate::helpers::eventually(WAIT, || {
        let (hook, log) = (
            app.get(&service, &format!("/v1/webhooks/{id}")),
            app.get(&service, &format!("/v1/webhooks/{id}/deliveries")),
        );
        async move {
            let hook: Value = hook.send().await.unwrap().json().await.unwrap();
            let log: Value = log.send().await.unwrap().json().await.unwrap();
            hook["enabled"] == false && log["data"][0]["status"] == "failed"
        }
    })
    .await;
    assert!(done);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 2, "ten attempts are not two");
}

#[tokio::test]
async fn a_failed_delivery_can_be_retried_by_hand() {
    let app = broker(&["--webhook-retry-schedule", "0s"]).await;
    let service = app.key("org-a", "service").await;
    let receiver = Receiver::start().await;
    receiver.script([Answer::status(500)]);
    let webhook = create(&app, &service, json!({"url": receiver.url})).await;
    app.emit(&service, &custom("r")).await;
    receiver.wait_for(1, WAIT).await;
    let id = webhook["id"].as_str().unwrap();
    let log = poll_json(
        &app,
        &service,
        &format!("/v1/webhooks/{id}/deliveries?status=failed"),
        |log| !log["data"][0].is_null(),
    )
    .await;
    let delivery = &log["data"][0];
    let delivery_id = delivery["id"].as_str().unwrap();
    let response = app
        .client
        .post(app.url(&format!("/v1/webhooks/{id}/deliveries/{delivery_id}/retry")))
        .bearer_auth(&service)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    receiver.wait_for(2, WAIT).await;
    assert!(
        crate::helpers::eventually(WAIT, || {
            let request = app.get(
                &service,
                &format!("/v1/webhooks/{id}/deliveries?status=succeeded"),
            );
            async move {
                request.send().await.unwrap().json::<Value>().await.unwrap()["data"][0]["attempts"]
                    .as_array()
                    .map(Vec::len)
                    == Some(2)
            }
        })
        .await
    );
    let missing = app
        .client
        .post(app.url(&format!(
            "/v1/webhooks/{id}/deliveries/00000000-0000-0000-0000-000000000000/retry"
        )))
        .bearer_auth(&service)
        .send()
        .await
        .unwrap();
    assert_error(missing, StatusCode::NOT_FOUND, "not_found", None).await;
}

#[tokio::test]
async fn rotation_signs_with_both_secrets_for_the_overlap() {
    let app = broker(&[]).await;
    let service = app.key("org-a", "service").await;
    let receiver = Receiver::start().await;
    let webhook = create(&app, &service, json!({"url": receiver.url})).await;
    let old = webhook["secret"].as_str().unwrap().to_owned();
    let id = webhook["id"].as_str().unwrap();
    let rotated = json_of(
        app.client
            .post(app.url(&format!("/v1/webhooks/{id}/rotate-secret")))
            .bearer_auth(&service)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let new = rotated["secret"].as_str().unwrap();
    assert_ne!(new, old);
    let overlap_end =
        chrono::DateTime::parse_from_rfc3339(rotated["previousSecretExpiresAt"].as_str().unwrap())
            .unwrap();
    let hours = (overlap_end.timestamp() - chrono::Utc::now().timestamp()) / 3600;
    assert!((23..=24).contains(&hours));
    app.emit(&service, &custom("r")).await;
    let got = receiver.wait_for(1, WAIT).await.remove(0);
    assert_eq!(
        got.header("webhook-signature").unwrap().split(' ').count(),
        2
    );
    assert_eq!(verify(&got, &old), 1);
    assert_eq!(verify(&got, new), 1);
    python_verifies(&got, &old);
    python_verifies(&got, new);
}

/// An endpoint that accepts connections and never answers, until released.
struct Silent {
    url: String,
    held: std::sync::Arc<std::sync::Mutex<Vec<tokio::net::TcpStream>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Silent {
    async fn start() -> Silent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/slow", listener.local_addr().unwrap());
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let held = held.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    held.lock().unwrap().push(stream);
                }
            }
        });
        Silent { url, held, accept }
    }

    fn connections(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    /// Closes every connection and stops listening.
    fn release(self) {
        self.accept.abort();
        self.held.lock().unwrap().clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_changed_while_deliveries_wait_their_turn_applies_to_them() {
    // One attempt a minute after a failure: only first attempts happen during the test.
    let app = broker(&["--webhook-retry-schedule", "0s,60s"]).await;
    let service = app.key("org-a", "service").await;
    let silent = Silent::start().await;
    let webhook = create(&app, &service, json!({"url": silent.url})).await;
    let id = webhook["id"].as_str().unwrap();
    // Eight attempts hang on the silent endpoint (its limit in flight); four more are claimed
    // and wait for a slot.
    let mut events = Vec::new();
    for n in 0..12 {
        events.push(app.emit(&service, &custom(&format!("r{n}"))).await);
    }
    assert!(
        crate::helpers::eventually(WAIT, || async { silent.connections() == 8 }).await,
        "{} attempts in flight",
        silent.connections()
    );
    let receiver = Receiver::start().await;
    json_of(
        app.client
            .patch(app.url(&format!("/v1/webhooks/{id}")))
            .bearer_auth(&service)
            .json(&json!({"url": format!("{}/moved", receiver.url)}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    silent.release();
    // The four that waited go to the endpoint as it is now.
    let moved = receiver.wait_for(4, WAIT).await;
    assert!(moved.iter().all(|r| r.path == "/moved"));
    let ids: std::collections::BTreeSet<String> = moved
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(
        ids.iter()
            .all(|id| events.iter().any(|e| e["id"].as_str() == Some(id.as_str())))
    );
}

#[tokio::test]
async fn the_test_endpoint_sends_a_signed_unstored_event_and_reports() {
    let app = broker(&[]).await;
    let service = app.key("org-a", "service").await;
    let receiver = Receiver::start().await;
    let webhook = create(
        &app,
        &service,
        json!({"url": receiver.url, "types": ["pod.*"]}),
    )
    .await;
    let id = webhook["id"].as_str().unwrap();
    let test = |_: ()| {
        app.client
            .post(app.url(&format!("/v1/webhooks/{id}/test")))
            .bearer_auth(&service)
            .send()
    };
    let ok = json_of(test(()).await.unwrap(), StatusCode::OK).await;
    assert_eq!(ok["success"], true);
    assert_eq!(ok["responseStatus"], 200);
    assert!(ok["durationMs"].is_i64());
    let got = receiver.wait_for(1, WAIT).await.remove(0);
    assert_eq!(got.json()["type"], "webhook.test");
    assert_eq!(verify(&got, webhook["secret"].as_str().unwrap()), 1);
    let test_id = got.json()["id"].as_str().unwrap().to_owned();
    let stored = app
        .get(&service, &format!("/v1/events/{test_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stored.status(),
        StatusCode::NOT_FOUND,
        "the test event was stored"
    );
    receiver.script([Answer::status(500)]);
    let failed = json_of(test(()).await.unwrap(), StatusCode::OK).await;
    assert_eq!(
        (failed["success"].clone(), failed["responseStatus"].clone()),
        (json!(false), json!(500))
    );
    assert!(failed["error"].is_string());
}

#[tokio::test]
async fn the_management_api_validates_isolates_and_hides_secrets() {
    let app = broker(&[]).await;
    let service = app.key("org-a", "service").await;
    let app_key = app.key("org-a", "app").await;
    let reader = app.key("org-a", "reader").await;
    let other = app.key("org-b", "service").await;
    let receiver = Receiver::start().await;
    let webhook = create(
        &app,
        &app_key,
        json!({"url": receiver.url, "types": ["custom.*"], "description": "mine"}),
    )
    .await;
    let secret = webhook["secret"].as_str().unwrap();
    assert!(
        secret.starts_with("whsec_") && secret.len() == 38,
        "{secret}"
    );
    assert_eq!(STANDARD.decode(&secret[6..]).unwrap().len(), 24);
    let id = webhook["id"].as_str().unwrap();

    let listed = json_of(
        app.get(&service, "/v1/webhooks").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(secret));
    let one = json_of(
        app.get(&service, &format!("/v1/webhooks/{id}"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(one.get("secret").is_none());
    assert_eq!(one["description"], "mine");

    for (key, path) in [
        (&other, format!("/v1/webhooks/{id}")),
        (&other, format!("/v1/webhooks/{id}/deliveries")),
    ] {
        assert_error(
            app.get(key, &path).send().await.unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
    }
    assert_eq!(
        json_of(
            app.get(&other, "/v1/webhooks").send().await.unwrap(),
            StatusCode::OK
        )
        .await["data"],
        json!([])
    );
    assert_error(
        app.get(&reader, "/v1/webhooks").send().await.unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    )
    .await;
    assert_error(
        app.post_json(&reader, "/v1/webhooks", &json!({"url": receiver.url}))
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    )
    .await;
    assert_error(
        app.get(ADMIN_KEY, "/v1/webhooks").send().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("organizationId"),
    )
    .await;
    assert_eq!(
        json_of(
            app.get(ADMIN_KEY, "/v1/webhooks?organizationId=org-a")
                .send()
                .await
                .unwrap(),
            StatusCode::OK
        )
        .await["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    for (body, param) in [
        (json!({}), Some("url")),
        (json!({"url": "ftp://example.com/"}), Some("url")),
        (json!({"url": "not a url"}), Some("url")),
        (json!({"url": receiver.url, "types": []}), Some("types")),
        (
            json!({"url": receiver.url, "types": ["Pod"]}),
            Some("types"),
        ),
        (
            json!({"url": receiver.url, "resourceType": "Pod"}),
            Some("resourceType"),
        ),
        (json!({"url": receiver.url, "enabled": false}), None),
        (json!({"url": receiver.url, "secret": "mine"}), None),
    ] {
        let response = app
            .post_json(&service, "/v1/webhooks", &body)
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request", param).await;
    }

    // Disabled: nothing is delivered; enabled again: deliveries resume.
    let patched = json_of(
        app.client
            .patch(app.url(&format!("/v1/webhooks/{id}")))
            .bearer_auth(&service)
            .json(&json!({"enabled": false, "description": null}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (patched["enabled"].clone(), patched["description"].clone()),
        (json!(false), Value::Null)
    );
    app.emit(&service, &custom("while-disabled")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.received().is_empty());
    let response = app
        .client
        .patch(app.url(&format!("/v1/webhooks/{id}")))
        .bearer_auth(&service)
        .json(&json!({"enabled": "yes"}))
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("enabled"),
    )
    .await;
    json_of(
        app.client
            .patch(app.url(&format!("/v1/webhooks/{id}")))
            .bearer_auth(&service)
            .json(&json!({"enabled": true, "types": ["custom.*"]}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let after = app.emit(&service, &custom("after")).await;
    assert_eq!(receiver.wait_for(1, WAIT).await[0].json(), after);

    json_of(
        app.client
            .delete(app.url(&format!("/v1/webhooks/{id}")))
            .bearer_auth(&service)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_error(
        app.get(&service, &format!("/v1/webhooks/{id}"))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    assert_error(
        app.client
            .delete(app.url(&format!("/v1/webhooks/{id}")))
            .bearer_auth(&service)
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
}

#[tokio::test]
async fn urls_on_non_public_addresses_are_refused_unless_allowed() {
    let app = spawn_app_with(&[]).await;
    let service = app.key("org-a", "service").await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:8080/",
        "http://10.0.0.5/",
        "http://172.16.3.4/",
        "http://192.168.0.10/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://192.0.2.1/",
        "http://0.0.0.0/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:7f00:1::]/",
        "http://2130706433/",
        "gopher://example.com/",
    ] {
        let response = app
            .post_json(&service, "/v1/webhooks", &json!({"url": url}))
            .send()
            .await
            .unwrap();
        assert_error(
            response,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("url"),
        )
        .await;
    }
    assert_eq!(
        json_of(
            app.get(&service, "/v1/webhooks").send().await.unwrap(),
            StatusCode::OK
        )
        .await["data"],
        json!([])
    );
}

#[tokio::test]
async fn the_queue_survives_a_restart_and_a_kill_9_between_storing_and_delivering() {
    // Graceful restart: the endpoint is down, the broker stops, the endpoint comes back.
    let app = broker(&["--webhook-retry-schedule", "0s,1s,1s,1s,1s,1s,1s,1s,1s,1s"]).await;
    let service = app.key("org-a", "service").await;
    let receiver = Receiver::start().await;
    receiver.answer_always(Answer::status(503));
    create(&app, &service, json!({"url": receiver.url})).await;
    let event = app.emit(&service, &custom("across-restart")).await;
    receiver.wait_for(1, WAIT).await;
    let app = app
        .restart(&[
            "--webhook-allow-private",
            "true",
            "--webhook-retry-schedule",
            "0s,1s,1s,1s,1s,1s,1s,1s,1s,1s",
        ])
        .await;
    receiver.answer_always(Answer::status(200));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if receiver
            .received()
            .iter()
            .any(|r| r.header("webhook-id") == event["id"].as_str() && r.json() == event)
            && receiver.received().len() >= 2
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(app);

    // kill -9 right after the 201, with the endpoint not even listening yet.
    let dir = TempDir::new().unwrap();
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    drop(reserved);
    let client = reqwest::Client::new();
    let envs = [
        ("CPOD_ADMIN_KEY", ADMIN_KEY),
        ("CPOD_WEBHOOK_ALLOW_PRIVATE", "true"),
        (
            "CPOD_WEBHOOK_RETRY_SCHEDULE",
            "0s,1s,1s,1s,1s,1s,1s,1s,1s,1s",
        ),
    ];
    let mut process = BrokerProcess::start(dir.path(), &envs);
    let key = process.key(ADMIN_KEY, "service").await;
    json_of(
        client
            .post(process.url("/v1/webhooks"))
            .bearer_auth(&key)
            .json(&json!({"url": format!("http://127.0.0.1:{port}/late")}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let event = json_of(
        client
            .post(process.url("/v1/events"))
            .bearer_auth(&key)
            .json(&custom("kill-9"))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    process.kill_hard();
    let late = Receiver::start_on(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap()).await;
    let _process = BrokerProcess::start(dir.path(), &envs);
    // SQLite has one process per database, so a restarted broker ends the dead one's leases at
    // once. On PostgreSQL a dead node's lease (twice the 15 s request timeout plus 10 s) must
    // run out first, if the killed node claimed the delivery before it died.
    let wait = if crate::helpers::on_postgres() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(15)
    };
    let got = late.wait_for(1, wait).await;
    assert_eq!(got[0].json(), event);
}

#[tokio::test]
async fn the_standard_webhooks_python_library_verifies_a_delivery() {
    let app = broker(&[]).await;
    let service = app.key("org-a", "service").await;
    let receiver = Receiver::start().await;
    let webhook = create(&app, &service, json!({"url": receiver.url})).await;
    app.emit(&service, &json!({"type": "pod.started", "resourceId": "p", "resourceType": "pod", "payload": {"unicode": "é ☃", "n": 1.5}})).await;
    let got = receiver.wait_for(1, WAIT).await.remove(0);
    python_verifies(&got, webhook["secret"].as_str().unwrap());
}

/// Runs the `standardwebhooks` package (PyPI), installed on first use into a virtual
/// environment under `target/`, on one delivery.
fn python_verifies(received: &Received, secret: &str) {
    let python = crate::helpers::standardwebhooks_python();
    let headers: serde_json::Map<String, Value> =
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .into_iter()
            .map(|h| (h.to_owned(), json!(received.header(h).unwrap())))
            .collect();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
data = json.load(sys.stdin)
payload = Webhook(data["secret"]).verify(data["body"], data["headers"])
print(json.dumps(payload))
"#;
    let input = json!({"secret": secret, "headers": headers, "body": String::from_utf8(received.body.clone()).unwrap()});
    let verified = crate::helpers::run_python(&python, script, &input);
    assert_eq!(verified, received.json());
}
