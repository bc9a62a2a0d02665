//! The Rust SDK (`cpod-sdk`) against a real broker: history paging, emit and idempotency,
//! local dispatch rules, live streams across a broker crash (SSE and WebSocket), resets, typed
//! errors, and webhook verification of a real delivery.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cpod_sdk::webhooks::{NewWebhook, VerifyError};
use cpod_sdk::{
    CpodClient, Event, EventStream, Filter, HistoryQuery, NewEvent, Order, StreamItem,
    StreamOptions,
};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;

use crate::helpers::{ADMIN_KEY, BrokerProcess, spawn_app, spawn_app_with};
use crate::receiver::Receiver;

fn custom(id: impl Into<String>) -> NewEvent {
    NewEvent::new("custom.sdk.tested", "thing", id)
}

/// The next event of a stream, skipping reconnection notices (panics after 30 s).
async fn next_event(stream: &mut EventStream) -> Event {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("an event within 30 s")
            .expect("the stream goes on")
            .expect("no stream error");
        match item {
            StreamItem::Event(event) => return event,
            StreamItem::Reconnecting { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn history_pages_and_the_all_pages_stream_never_repeat_or_skip() {
    let app = spawn_app().await;
    let client = CpodClient::new(&app.address, &app.key("org-a", "service").await).unwrap();
    let batch: Vec<NewEvent> = (0..25).map(|i| custom(format!("r{i}"))).collect();
    let stored = client.events().emit_batch(&batch).await.unwrap();
    assert_eq!(stored.len(), 25);

    let query = HistoryQuery::new().types(["custom.*"]).limit(10);
    let first = client.events().get_history(&query).await.unwrap();
    assert_eq!(first.data.len(), 10);
    assert!(first.has_more);
    assert_eq!(first.data[0].id, stored[24].id, "newest first");
    let second = client
        .events()
        .get_history(&query.clone().cursor(first.next_cursor.clone().unwrap()))
        .await
        .unwrap();
    assert_eq!(second.data[0].id, stored[14].id);

    let all: Vec<Event> = client
        .events()
        .history(query.clone())
        .try_collect()
        .await
        .unwrap();
    let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
    let expected: Vec<&str> = stored.iter().rev().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, expected);

    let ascending: Vec<Event> = client
        .events()
        .history(
            HistoryQuery::new()
                .types(["custom.*"])
                .order(Order::Asc)
                .limit(7),
        )
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ascending, stored);
}

#[tokio::test]
async fn emit_answers_the_stored_event_and_an_idempotency_key_replays_it() {
    let app = spawn_app().await;
    let client = CpodClient::new(&app.address, &app.key("org-a", "service").await).unwrap();
    let new = NewEvent::new("pod.failed", "pod", "pod-7f9c")
        .workspace_id("ws-42")
        .payload(json!({"exitCode": 137, "reason": "OOMKilled"}));
    let event = client.events().emit(&new).await.unwrap();
    assert_eq!(event.event_type, "pod.failed");
    assert_eq!(event.organization_id, "org-a");
    assert_eq!(event.workspace_id.as_deref(), Some("ws-42"));
    assert_eq!(event.payload["exitCode"], 137);
    assert_eq!(client.events().get(&event.id).await.unwrap(), event);

    let first = client
        .events()
        .emit_idempotent(&new, "oom-1")
        .await
        .unwrap();
    assert!(!first.replayed);
    let again = client
        .events()
        .emit_idempotent(&new, "oom-1")
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.event, first.event);
    let conflict = client
        .events()
        .emit_idempotent(&new.clone().payload(json!({"exitCode": 1})), "oom-1")
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Some("conflict"));

    let batch = [custom("b1"), custom("b2")];
    let stored = client
        .events()
        .emit_batch_idempotent(&batch, "batch-1")
        .await
        .unwrap();
    let replayed = client
        .events()
        .emit_batch_idempotent(&batch, "batch-1")
        .await
        .unwrap();
    assert!(!stored.replayed && replayed.replayed);
    assert_eq!(stored.events, replayed.events);
    let history = app
        .history_all(ADMIN_KEY, "organizationId=org-a&types=custom.*")
        .await;
    assert_eq!(history.len(), 2, "a replay stores nothing");
}

#[tokio::test]
async fn refusals_are_typed_errors_carrying_the_brokers_code_message_and_param() {
    let app = spawn_app().await;
    let reader = CpodClient::new(&app.address, &app.key("org-a", "reader").await).unwrap();
    let error = reader.events().emit(&custom("x")).await.unwrap_err();
    let cpod_sdk::Error::Api(api) = &error else {
        panic!("{error:?}")
    };
    assert_eq!((api.status, api.code.as_str()), (403, "forbidden"));
    assert!(!api.message.is_empty());

    let service = CpodClient::new(&app.address, &app.key("org-a", "service").await).unwrap();
    let error = service
        .events()
        .emit(&NewEvent::new("pod.exploded", "pod", "p"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("invalid_request"));
    let cpod_sdk::Error::Api(api) = &error else {
        panic!("{error:?}")
    };
    assert_eq!(api.param.as_deref(), Some("type"));

    let error = service
        .events()
        .emit_batch(&[custom("ok"), NewEvent::new("custom.x", "Bad Type", "p")])
        .await
        .unwrap_err();
    let cpod_sdk::Error::Api(api) = &error else {
        panic!("{error:?}")
    };
    assert!(
        api.param
            .as_deref()
            .is_some_and(|p| p.starts_with("events[1]")),
        "{api:?}"
    );
    assert!(
        app.history_all(ADMIN_KEY, "organizationId=org-a&types=custom.*")
            .await
            .is_empty()
    );

    let wrong = CpodClient::new(&app.address, "cpk_not_a_real_key_0123456789abcdefghij").unwrap();
    let error = wrong
        .events()
        .get_history(&HistoryQuery::new())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("unauthorized"));
    assert!(!error.is_transient());
    let error = service.events().get("not-a-uuid").await.unwrap_err();
    assert_eq!(error.code(), Some("not_found"));
}

#[tokio::test]
async fn dispatch_reaches_every_matching_local_subscription_by_the_brokers_glob_rules() {
    let app = spawn_app().await;
    let client = CpodClient::new(&app.address, &app.key("org-a", "service").await).unwrap();
    let events = [
        client
            .events()
            .emit(&NewEvent::new("pod.failed", "pod", "p1").workspace_id("ws"))
            .await
            .unwrap(),
        client
            .events()
            .emit(&NewEvent::new("job.failed", "job", "j1"))
            .await
            .unwrap(),
        client
            .events()
            .emit(&NewEvent::new("custom.report.generated", "report", "r1"))
            .await
            .unwrap(),
    ];
    let seen: Arc<Mutex<Vec<(&str, String)>>> = Arc::default();
    let record = |name: &'static str| {
        let seen = seen.clone();
        move |event: &Event| seen.lock().unwrap().push((name, event.event_type.clone()))
    };
    let failures = client
        .events()
        .subscribe(Filter::new().types(["*.failed"]), record("failures"));
    let pods = client.events().subscribe(
        Filter::new().types(["pod.*"]).workspace_id("ws"),
        record("pods"),
    );
    let custom = client
        .events()
        .subscribe(Filter::new().types(["custom.*"]), record("custom"));
    let other_org = client
        .events()
        .subscribe(Filter::new().organization_id("org-b"), record("org-b"));
    // A clone of the client shares the subscriptions.
    let delivered: Vec<usize> = events
        .iter()
        .map(|e| client.clone().events().dispatch(e))
        .collect();
    assert_eq!(delivered, [2, 1, 1]);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("failures", "pod.failed".to_owned()),
            ("pods", "pod.failed".to_owned()),
            ("failures", "job.failed".to_owned()),
            ("custom", "custom.report.generated".to_owned()),
        ]
    );
    failures.unsubscribe();
    assert_eq!(
        client.events().dispatch(&events[1]),
        0,
        "job.failed had only `failures`"
    );
    assert_eq!(
        client.events().dispatch(&events[0]),
        1,
        "pod.failed still reaches `pods`"
    );
    assert!(pods.is_active());
    for subscription in [pods, custom, other_org] {
        subscription.unsubscribe();
    }
    assert_eq!(client.events().dispatch(&events[0]), 0);
}

/// Streams events across a broker crash and restart on the same port and database: every event
/// arrives once, in order.
async fn stream_survives_a_crash(websocket: bool) {
    let dir = tempfile::TempDir::new().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let envs = [
        ("CPOD_ADMIN_KEY", ADMIN_KEY),
        ("CPOD_LISTEN", listen.as_str()),
    ];
    let mut broker = BrokerProcess::start(dir.path(), &envs);
    let service = broker.key(ADMIN_KEY, "service").await;
    let client = CpodClient::new(&broker.address, &service).unwrap();
    let filter = Filter::new().types(["custom.*"]);
    // Resuming after r0 makes the stream's start independent of when it connects.
    let r0 = client.events().emit(&custom("r0")).await.unwrap();
    let options = StreamOptions::new()
        .last_event_id(&r0.id)
        .max_backoff(Duration::from_secs(2));
    let mut stream = if websocket {
        client.events().stream_ws_with(filter, options)
    } else {
        client.events().stream_with(filter, options)
    };
    let mut expected = vec![];
    let mut got = vec![];
    for i in 1..=5 {
        expected.push(
            client
                .events()
                .emit(&custom(format!("r{i}")))
                .await
                .unwrap()
                .id,
        );
    }
    while got.len() < expected.len() {
        got.push(next_event(&mut stream).await.id);
    }

    broker.kill_hard();
    let broker = BrokerProcess::start(dir.path(), &envs);
    assert_eq!(broker.address, format!("http://{listen}"));
    // The old client's pooled connections died with the broker; emit with a fresh one (the
    // stream keeps its own client and reconnects by itself).
    let client = CpodClient::new(&broker.address, &service).unwrap();
    // Stored while the stream is still waiting to reconnect: it must replay them.
    for i in 6..=15 {
        expected.push(
            client
                .events()
                .emit(&custom(format!("r{i}")))
                .await
                .unwrap()
                .id,
        );
    }
    while got.len() < expected.len() {
        got.push(next_event(&mut stream).await.id);
    }
    // And live again after the seam.
    expected.push(client.events().emit(&custom("r16")).await.unwrap().id);
    got.push(next_event(&mut stream).await.id);
    assert_eq!(got, expected);
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), got.len());
    // Nothing more: no duplicate arrives late.
    let extra = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
    assert!(
        !matches!(extra, Ok(Some(Ok(StreamItem::Event(_))))),
        "{extra:?}"
    );
    drop(broker);
}

#[tokio::test]
async fn an_sse_stream_survives_a_broker_crash_without_loss_or_duplicates() {
    stream_survives_a_crash(false).await;
}

#[tokio::test]
async fn a_websocket_stream_survives_a_broker_crash_without_loss_or_duplicates() {
    stream_survives_a_crash(true).await;
}

/// The broker's gauge of open streams of one transport (`sse` or `ws`), from its metrics.
async fn open_streams(broker: &BrokerProcess, transport: &str) -> f64 {
    let text = reqwest::get(broker.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("cpod_subscribers{{transport=\"{transport}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// A stream started live (no resume point) that drops before its first event: what is stored
/// while it reconnects is yielded, once.
async fn quiet_stream_survives_a_crash(websocket: bool) {
    let dir = tempfile::TempDir::new().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let envs = [
        ("CPOD_ADMIN_KEY", ADMIN_KEY),
        ("CPOD_LISTEN", listen.as_str()),
    ];
    let mut broker = BrokerProcess::start(dir.path(), &envs);
    let service = broker.key(ADMIN_KEY, "service").await;
    let client = CpodClient::new(&broker.address, &service).unwrap();
    let filter = Filter::new().types(["custom.*"]);
    let options = StreamOptions::new().max_backoff(Duration::from_secs(2));
    let mut stream = if websocket {
        client.events().stream_ws_with(filter, options)
    } else {
        client.events().stream_with(filter, options)
    };
    // The first poll connects; wait until the broker holds the stream.
    let started = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
    assert!(started.is_err(), "nothing to yield yet: {started:?}");
    let transport = if websocket { "ws" } else { "sse" };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while open_streams(&broker, transport).await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the stream connects");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    broker.kill_hard();
    let broker = BrokerProcess::start(dir.path(), &envs);
    let client = CpodClient::new(&broker.address, &service).unwrap();
    // Stored while the stream waits to reconnect (its first delay is at least a second).
    let missed = client.events().emit(&custom("missed")).await.unwrap();
    assert_eq!(next_event(&mut stream).await.id, missed.id);
    let live = client.events().emit(&custom("live")).await.unwrap();
    assert_eq!(next_event(&mut stream).await.id, live.id);
    let extra = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
    assert!(
        !matches!(extra, Ok(Some(Ok(StreamItem::Event(_))))),
        "{extra:?}"
    );
    drop(broker);
}

#[tokio::test]
async fn a_quiet_sse_stream_yields_what_was_stored_while_it_reconnected() {
    quiet_stream_survives_a_crash(false).await;
}

#[tokio::test]
async fn a_quiet_websocket_stream_yields_what_was_stored_while_it_reconnected() {
    quiet_stream_survives_a_crash(true).await;
}

#[tokio::test]
async fn a_stream_resumes_after_a_given_id_and_yields_a_reset_for_an_unknown_one() {
    let app = spawn_app().await;
    let client = CpodClient::new(&app.address, &app.key("org-a", "service").await).unwrap();
    let stored = client
        .events()
        .emit_batch(&[custom("a"), custom("b"), custom("c")])
        .await
        .unwrap();
    for websocket in [false, true] {
        let options = StreamOptions::new().last_event_id(&stored[0].id);
        let filter = Filter::new().types(["custom.*"]);
        let mut stream = if websocket {
            client.events().stream_ws_with(filter, options)
        } else {
            client.events().stream_with(filter, options)
        };
        assert_eq!(next_event(&mut stream).await.id, stored[1].id);
        assert_eq!(next_event(&mut stream).await.id, stored[2].id);

        let unknown = "01936f0e-8c1a-7b3e-9a51-3f1c2d4e5f60";
        let options = StreamOptions::new().last_event_id(unknown);
        let mut stream = if websocket {
            client.events().stream_ws_with(Filter::new(), options)
        } else {
            client.events().stream_with(Filter::new(), options)
        };
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            item,
            StreamItem::Reset {
                reason: "unknown_last_event_id".into(),
                last_event_id: Some(unknown.into()),
            },
            "websocket: {websocket}"
        );
        let live = client.events().emit(&custom("live")).await.unwrap();
        assert_eq!(next_event(&mut stream).await.id, live.id);
    }
}

#[tokio::test]
async fn a_stream_whose_key_is_revoked_ends_with_an_unauthorized_error() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let reader = app.created_key(&service, "reader", "doomed reader").await;
    let client = CpodClient::new(&app.address, reader["key"].as_str().unwrap()).unwrap();
    let emitter = CpodClient::new(&app.address, &service).unwrap();
    let event = emitter.events().emit(&custom("x")).await.unwrap();
    // Replayed from a time before it: the first item proves the stream is open.
    let mut stream = client.events().stream_with(
        Filter::new().types(["custom.*"]),
        StreamOptions::new()
            .since("2000-01-01T00:00:00Z")
            .max_backoff(Duration::from_millis(500)),
    );
    assert_eq!(next_event(&mut stream).await.id, event.id);
    app.revoke(&service, &reader).await;
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.next().await {
                Some(Err(error)) => return error,
                Some(Ok(_)) => continue,
                None => panic!("the stream ended without an error"),
            }
        }
    })
    .await
    .expect("the stream ends within 30 s");
    assert_eq!(end.code(), Some("unauthorized"));
    assert!(
        stream.next().await.is_none(),
        "nothing after the final error"
    );
}

#[tokio::test]
async fn verify_accepts_a_real_delivery_and_refuses_a_tampered_one() {
    let app = spawn_app_with(&["--webhook-allow-private", "true"]).await;
    let receiver = Receiver::start().await;
    let client = CpodClient::new(&app.address, &app.key("org-a", "service").await).unwrap();
    let created = client
        .webhooks()
        .create(&NewWebhook::new(format!("{}/hook", receiver.url)).types(["custom.*"]))
        .await
        .unwrap();
    assert!(created.secret.starts_with("whsec_"));
    let listed = client.webhooks().list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0], created.webhook);
    let event = client.events().emit(&custom("w1")).await.unwrap();
    let delivery = receiver
        .wait_for(1, Duration::from_secs(20))
        .await
        .remove(0);
    let headers: Vec<(String, String)> = delivery.headers.clone();
    let secret = created.secret.as_str();
    assert_eq!(
        cpod_sdk::webhooks::verify(&[secret], &headers[..], &delivery.body),
        Ok(())
    );
    let parsed: Event = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(parsed, event);

    let mut tampered = delivery.body.clone();
    tampered.push(b' ');
    assert_eq!(
        cpod_sdk::webhooks::verify(&[secret], &headers[..], &tampered),
        Err(VerifyError::NoMatch)
    );
    let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    assert_eq!(
        cpod_sdk::webhooks::verify(&[other], &headers[..], &delivery.body),
        Err(VerifyError::NoMatch)
    );
    assert_eq!(
        cpod_sdk::webhooks::verify(&[other, secret], &headers[..], &delivery.body),
        Ok(())
    );

    let test = client.webhooks().test(&created.webhook.id).await.unwrap();
    assert!(test.success, "{test:?}");
    let page = client
        .webhooks()
        .deliveries(&created.webhook.id, Some("succeeded"), None)
        .await
        .unwrap();
    assert_eq!(page.data.len(), 1);
    assert_eq!(page.data[0].event_id, event.id);
    client.webhooks().delete(&created.webhook.id).await.unwrap();
    let gone = client
        .webhooks()
        .get(&created.webhook.id)
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Some("not_found"));
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked_through_the_sdk() {
    let app = spawn_app().await;
    let admin = CpodClient::new(&app.address, ADMIN_KEY).unwrap();
    let created = admin
        .keys()
        .create(&cpod_sdk::keys::NewKey::new("reader", "dashboard").organization_id("org-k"))
        .await
        .unwrap();
    assert!(created.key.starts_with("cpk_"));
    let listed = admin.keys().list(Some("org-k")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0], created.info);
    let revoked = admin.keys().revoke(&created.info.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(admin.keys().list(Some("org-k")).await.unwrap().is_empty());
    let reader = CpodClient::new(&app.address, &created.key).unwrap();
    let error = reader
        .events()
        .get_history(&HistoryQuery::new())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("unauthorized"));
}

#[test]
fn the_readme_shows_the_compiled_subscriber_example_word_for_word() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("sdk/examples/subscriber.rs")).unwrap();
    let code = &example[example.find("use cpod_sdk").unwrap()..];
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("```rust\n{code}```")),
        "README.md must show sdk/examples/subscriber.rs from its first `use` on"
    );
}

#[test]
fn the_sdk_depends_on_neither_actix_nor_sqlite() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--offline",
            "-p",
            "cpod-sdk",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "{output:?}");
    let tree = String::from_utf8(output.stdout).unwrap();
    assert!(tree.contains("reqwest"), "{tree}");
    for banned in ["actix", "rusqlite", "libsqlite3", "cpod-events"] {
        assert!(!tree.contains(banned), "cpod-sdk pulls in {banned}");
    }
}
