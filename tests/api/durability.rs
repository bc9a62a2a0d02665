//! Durability and process life: what survives a restart and a `kill -9`, the admin key's first
//! start, SIGTERM, configuration errors, and logs that never show a key.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{ADMIN_KEY, BrokerProcess, custom, json_of, spawn_app};

async fn all_ids(client: &reqwest::Client, broker: &BrokerProcess, key: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let url = broker.url(&format!(
            "/v1/events?order=asc&limit=1000&types=custom.*{cursor}"
        ));
        let page = json_of(
            client.get(url).bearer_auth(key).send().await.unwrap(),
            StatusCode::OK,
        )
        .await;
        ids.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned()),
        );
        match page["nextCursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn every_acknowledged_event_survives_kill_9_in_order() {
    let dir = TempDir::new().unwrap();
    let client = reqwest::Client::new();
    let mut broker = BrokerProcess::start(dir.path(), &[("CPOD_ADMIN_KEY", ADMIN_KEY)]);
    let service = broker.key(ADMIN_KEY, "service").await;
    let mut acknowledged = Vec::new();
    for i in 0..200 {
        let response = client
            .post(broker.url("/v1/events"))
            .bearer_auth(&service)
            .json(&custom(&format!("seq-{i}")))
            .send()
            .await
            .unwrap();
        acknowledged.push(
            json_of(response, StatusCode::CREATED).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Concurrent writers share group commits; each answer still means "on disk".
    let concurrent = futures_util::future::join_all((0..64).map(|w| {
        let client = client.clone();
        let url = broker.url("/v1/events");
        let key = service.clone();
        async move {
            let mut ids = Vec::new();
            for i in 0..10 {
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&custom(&format!("w{w}-{i}")))
                    .send()
                    .await
                    .unwrap();
                ids.push(
                    json_of(response, StatusCode::CREATED).await["id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            ids
        }
    }))
    .await;
    broker.kill_hard();

    let broker = BrokerProcess::start(dir.path(), &[("CPOD_ADMIN_KEY", ADMIN_KEY)]);
    let stored = all_ids(&client, &broker, &service).await;
    assert_eq!(
        stored[..200].to_vec(),
        acknowledged,
        "sequential events lost or reordered"
    );
    let rest: std::collections::HashSet<&String> = stored[200..].iter().collect();
    assert_eq!(stored.len(), 200 + 640);
    for ids in &concurrent {
        // Each writer's events are in its own order, and all of them are there.
        let positions: Vec<usize> = ids
            .iter()
            .map(|id| {
                stored
                    .iter()
                    .position(|s| s == id)
                    .expect("an acknowledged event was lost")
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "a writer's events were reordered"
        );
        assert!(ids.iter().all(|id| rest.contains(id)));
    }
}

#[tokio::test]
async fn a_restart_keeps_events_keys_and_idempotency_and_positions_go_on() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let first = app
        .post_json(&service, "/v1/events", &custom("before"))
        .header("Idempotency-Key", "restart")
        .send()
        .await
        .unwrap();
    let first = json_of(first, StatusCode::CREATED).await;

    let app = app.restart(&[]).await;
    let replay = app
        .post_json(&service, "/v1/events", &custom("before"))
        .header("Idempotency-Key", "restart")
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(replay, StatusCode::CREATED).await, first);
    let after = app.emit(&service, &custom("after")).await;
    let history = app.history_all(&service, "order=asc&types=custom.*").await;
    assert_eq!(history, vec![first, after]);
}

#[tokio::test]
async fn the_first_start_prints_a_working_admin_key_once() {
    let dir = TempDir::new().unwrap();
    let client = reqwest::Client::new();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let banner = broker.banner.join("\n");
    let line = broker
        .banner
        .iter()
        .find(|l| l.contains("admin key"))
        .expect("an admin key line");
    let key = line
        .split_whitespace()
        .find(|w| w.starts_with("cpk_"))
        .expect("the key is printed")
        .to_owned();
    let created = broker.key(&key, "reader").await;
    assert!(created.starts_with("cpk_"));
    assert!(
        !broker.stderr().contains(&key),
        "the admin key reached the log"
    );
    drop(broker);

    let broker = BrokerProcess::start(dir.path(), &[]);
    let again = broker.banner.join("\n");
    assert!(
        !again.contains("cpk_"),
        "printed a key on the second start:\n{again}"
    );
    assert!(!banner.is_empty());
    // The generated key still works after the restart.
    broker.key(&key, "reader").await;
    drop(broker);

    // The node id it registers: generated on each start, or CPOD_NODE_ID.
    let node_id = |broker: &BrokerProcess| {
        broker
            .banner
            .iter()
            .find_map(|l| l.trim().strip_prefix("node id: ").map(str::to_owned))
            .expect("a node id line")
    };
    assert!(uuid::Uuid::parse_str(&node_id(&BrokerProcess::start(dir.path(), &[]))).is_ok());
    let named = BrokerProcess::start(dir.path(), &[("CPOD_NODE_ID", "node-7")]);
    assert_eq!(node_id(&named), "node-7");
    drop(named);

    // Configuring CPOD_ADMIN_KEY replaces the generated one.
    let broker = BrokerProcess::start(dir.path(), &[("CPOD_ADMIN_KEY", ADMIN_KEY)]);
    broker.key(ADMIN_KEY, "reader").await;
    let response = client
        .get(broker.url("/v1/keys"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sigterm_stops_the_broker_cleanly_and_quickly() {
    let dir = TempDir::new().unwrap();
    let client = reqwest::Client::new();
    let mut broker = BrokerProcess::start(dir.path(), &[("CPOD_ADMIN_KEY", ADMIN_KEY)]);
    let service = broker.key(ADMIN_KEY, "service").await;
    let body: Value =
        json!({"events": (0..100).map(|i| custom(&format!("r{i}"))).collect::<Vec<_>>()});
    json_of(
        client
            .post(broker.url("/v1/events/batch"))
            .bearer_auth(&service)
            .json(&body)
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let started = Instant::now();
    unsafe { libc::kill(broker.child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(status) = broker.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    if !crate::helpers::on_postgres() {
        // The WAL was checkpointed into the database on the way out.
        let wal = dir.path().join("events.db-wal");
        assert!(
            std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
            "the WAL was not flushed"
        );
    }
    let broker = BrokerProcess::start(dir.path(), &[("CPOD_ADMIN_KEY", ADMIN_KEY)]);
    assert_eq!(all_ids(&client, &broker, &service).await.len(), 100);
}

#[tokio::test]
async fn logs_never_contain_a_key() {
    let dir = TempDir::new().unwrap();
    let client = reqwest::Client::new();
    let broker = BrokerProcess::start(dir.path(), &[("CPOD_ADMIN_KEY", ADMIN_KEY)]);
    let service = broker.key(ADMIN_KEY, "service").await;
    client
        .post(broker.url("/v1/events"))
        .bearer_auth(&service)
        .json(&custom("r"))
        .send()
        .await
        .unwrap();
    client
        .get(broker.url("/v1/events"))
        .bearer_auth("cpk_wrong_key_that_should_not_be_logged_0000")
        .send()
        .await
        .unwrap();
    let log = broker.stderr();
    assert!(
        log.contains("key created"),
        "the log was not captured:\n{log}"
    );
    assert!(!log.contains("cpk_"), "a key reached the log:\n{log}");
}

#[test]
fn bad_configuration_fails_at_start_naming_the_setting() {
    for (name, value, expected) in [
        ("CPOD_RETENTION", "forever", "--retention"),
        ("CPOD_LISTEN", "not-an-address", "--listen"),
        ("CPOD_DATABASE_URL", "mysql://localhost/x", "--database-url"),
        ("CPOD_ADMIN_KEY", "short", "--admin-key"),
        ("CPOD_RATE_LIMIT", "-3", "--rate-limit"),
        ("CPOD_NODE_ID", "no spaces allowed", "--node-id"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_cpod-events"))
            .env_clear()
            .env(name, value)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{name}={value} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected) && stderr.contains(name),
            "{name}={value}: {stderr}"
        );
    }
}
