//! Several nodes in one process on one PostgreSQL database (contract §9): what only a shared
//! database can show — the rate limit of a key across nodes, the node registry and the feed lag,
//! a revocation on one node reaching the others — and a node losing its database connection.
//! The cluster of separate processes (kill -9, a TCP proxy) is `tests/cluster.rs`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    ADMIN_KEY, SseClient, assert_error, custom, eventually, json_of, postgres, spawn_app_with,
    spawn_node,
};

/// The value of a gauge or counter without labels in a Prometheus text page.
async fn metric(app: &crate::helpers::TestApp, name: &str) -> Option<f64> {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_rate_limit_holds_for_the_cluster_however_its_requests_are_spread() {
    const LIMIT: usize = 20;
    let a = spawn_app_with(&["--rate-limit", "20"]).await;
    let b = spawn_node(a.dir.path(), &["--rate-limit", "20"]).await;
    let reader = a.key("org-a", "reader").await;
    // Four clients, two per node, as fast as they can for 3 s.
    let started = Instant::now();
    let window = Duration::from_secs(3);
    let mut clients = Vec::new();
    for n in 0..4 {
        let url = if n % 2 == 0 { a.url("") } else { b.url("") };
        let reader = reader.clone();
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut accepted, mut limited) = (0usize, 0usize);
            while started.elapsed() < window {
                let response = client
                    .get(format!("{url}/v1/events?limit=1"))
                    .bearer_auth(&reader)
                    .send()
                    .await
                    .unwrap();
                match response.status() {
                    StatusCode::OK => accepted += 1,
                    StatusCode::TOO_MANY_REQUESTS => {
                        let wait: u64 = response.headers()["retry-after"]
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        assert!(wait >= 1);
                        limited += 1;
                    }
                    other => panic!("unexpected {other}"),
                }
            }
            (accepted, limited)
        }));
    }
    let (mut accepted, mut limited) = (0, 0);
    for client in clients {
        let (a, l) = client.await.unwrap();
        accepted += a;
        limited += l;
    }
    // A bucket of one second's worth, refilled at the limit: at most 20 + 3 × 20 across both
    // nodes (one limit per node would let up to twice that through), and no node starves the
    // other of its share.
    let most = LIMIT + LIMIT * window.as_secs() as usize;
    assert!(
        accepted <= most,
        "{accepted} accepted in {window:?}, more than {most}"
    );
    assert!(
        accepted * 10 >= most * 8 - LIMIT * 10,
        "only {accepted} accepted in {window:?} ({limited} limited)"
    );
    assert!(limited > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_and_report_the_cluster_and_their_feed_lag() {
    let a = spawn_app_with(&["--node-id", "node-a"]).await;
    let service = a.key("org-a", "service").await;
    let b = spawn_node(a.dir.path(), &["--node-id", "node-b"]).await;
    // Both nodes share this process's metrics registry: either one says two nodes.
    assert_eq!(metric(&b, "cpod_cluster_nodes").await, Some(2.0));
    let (client, connection) =
        tokio_postgres::connect(&postgres::database_for(a.dir.path()), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let names: Vec<String> = client
        .query("SELECT id FROM nodes ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["node-a", "node-b"]);
    // Events committed on B are published by A's feed at once: the lag stays small.
    for n in 0..5 {
        b.emit(&service, &custom(&format!("r{n}"))).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&a, "cpod_feed_lag_seconds")
                .await
                .is_some_and(|lag| lag < 1.0)
        })
        .await
    );
    // A node that stops leaves the registry; the other counts one node at its next heartbeat.
    b.stop().await;
    let remaining: i64 = client
        .query_one("SELECT count(*) FROM nodes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(remaining, 1);
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&a, "cpod_cluster_nodes").await == Some(1.0)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_node_is_refused_and_its_streams_end_on_another_within_5_s() {
    let a = spawn_app_with(&[]).await;
    let b = spawn_node(a.dir.path(), &[]).await;
    let service = a.key("org-a", "service").await;
    let created: Value = json_of(
        a.post_json(
            ADMIN_KEY,
            "/v1/keys",
            &serde_json::json!({"organizationId": "org-a", "role": "reader", "name": "doomed"}),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let doomed = created["key"].as_str().unwrap().to_owned();
    // Known (and cached) on B, with a stream open there.
    json_of(
        b.get(&doomed, "/v1/events").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    let mut stream = SseClient::open(&b.address, &doomed, "/v1/events/stream", None).await;
    a.emit(&service, &custom("before")).await;
    let first = stream.next_event(Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.json()["resourceId"], "before");
    let revoked_at = Instant::now();
    a.revoke(ADMIN_KEY, &created).await;
    // The stream on B ends (anything already on its way may arrive first).
    while stream.next(Duration::from_secs(6)).await.is_some() {
        assert!(revoked_at.elapsed() < Duration::from_secs(5), "still open");
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(5));
    // And B refuses the key.
    assert!(
        eventually(Duration::from_secs(5) - revoked_at.elapsed(), || async {
            b.get(&doomed, "/v1/events").send().await.unwrap().status() == StatusCode::UNAUTHORIZED
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_connections_are_cut_recovers_and_its_subscribers_miss_nothing() {
    let a = spawn_app_with(&[]).await;
    let b = spawn_node(a.dir.path(), &[]).await;
    let service = a.key("org-a", "service").await;
    let reader = a.key("org-a", "reader").await;
    let mut on_a = SseClient::open(&a.address, &reader, "/v1/events/stream", None).await;
    let mut on_b = SseClient::open(&b.address, &reader, "/v1/events/stream", None).await;
    a.emit(&service, &custom("r0")).await;
    // Every database session of both nodes is ended, three times over, while both nodes take
    // events; a request that fails meanwhile is answered 503 and retried, as a client would.
    let mut emitted = vec!["r0".to_owned()];
    for n in 1..=30 {
        if n % 10 == 5 {
            postgres::terminate_sessions(a.dir.path());
        }
        let node = if n % 2 == 0 { &a } else { &b };
        let id = format!("r{n}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let response = node
                .post_json(&service, "/v1/events", &custom(&id))
                .send()
                .await
                .unwrap();
            match response.status() {
                StatusCode::CREATED => break,
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert!(response.headers().contains_key("retry-after"));
                    assert!(Instant::now() < deadline, "no recovery");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => panic!("{other}: {}", response.text().await.unwrap()),
            }
        }
        emitted.push(id);
    }
    for stream in [&mut on_a, &mut on_b] {
        let seen: Vec<String> = stream
            .events(emitted.len())
            .await
            .iter()
            .map(|m| m.json()["resourceId"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(seen, emitted);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_its_database_answers_503_keeps_streams_alive_and_recovers_by_itself() {
    let app = spawn_app_with(&["--heartbeat", "500ms"]).await;
    let service = app.key("org-a", "service").await;
    let reader = app.key("org-a", "reader").await;
    let mut stream = SseClient::open(&app.address, &reader, "/v1/events/stream", None).await;
    app.emit(&service, &custom("before")).await;
    assert_eq!(
        stream
            .next_event(Duration::from_secs(5))
            .await
            .unwrap()
            .json()["resourceId"],
        "before"
    );
    postgres::allow_connections(app.dir.path(), false);
    postgres::terminate_sessions(app.dir.path());
    let cut = Instant::now();
    assert_error(
        app.post_json(&service, "/v1/events", &custom("refused"))
            .send()
            .await
            .unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        None,
    )
    .await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.headers().contains_key("retry-after"));
    // The stream stays open on heartbeats while the database is away.
    let mut heartbeats = 0;
    while cut.elapsed() < Duration::from_secs(3) {
        let message = stream
            .next(Duration::from_secs(2))
            .await
            .expect("the stream stays open");
        assert!(message.data.is_none(), "{message:?}");
        heartbeats += 1;
    }
    assert!(heartbeats >= 3, "{heartbeats} heartbeats in 3 s");
    postgres::allow_connections(app.dir.path(), true);
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.client
                .get(app.url("/readyz"))
                .send()
                .await
                .unwrap()
                .status()
                == StatusCode::OK
        })
        .await,
        "not ready again"
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.post_json(&service, "/v1/events", &custom("after"))
                .send()
                .await
                .unwrap()
                .status()
                == StatusCode::CREATED
        })
        .await,
        "writes do not recover"
    );
    // The subscriber gets what was stored after the outage, with nothing before it twice.
    let next = stream.next_event(Duration::from_secs(10)).await.unwrap();
    assert_eq!(next.json()["resourceId"], "after");
}
