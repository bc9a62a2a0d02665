//! `serve --demo`: the banner names the dashboard and a reader key, every platform namespace
//! shows up within seconds, a restart keeps one set of demo keys, and SIGTERM stops it cleanly.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{ADMIN_KEY, BrokerProcess, json_of};

fn banner_value(broker: &BrokerProcess, label: &str) -> String {
    broker
        .banner
        .iter()
        .find_map(|line| line.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no `{label}` in {:?}", broker.banner))
}

/// The namespaces seen in the demo organization so far.
async fn namespaces(broker: &BrokerProcess, key: &str) -> HashSet<String> {
    let response = reqwest::Client::new()
        .get(broker.url("/v1/events?limit=1000"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let page = json_of(response, StatusCode::OK).await;
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["type"]
                .as_str()
                .unwrap()
                .split('.')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn demo_mode_shows_every_platform_namespace_within_seconds_and_restarts_cleanly() {
    let dir = tempfile::TempDir::new().unwrap();
    let envs = [
        ("CPOD_ADMIN_KEY", ADMIN_KEY),
        ("CPOD_DEMO", "true"),
        ("CPOD_DEMO_RATE", "20"),
    ];
    let broker = BrokerProcess::start(dir.path(), &envs);
    assert_eq!(
        banner_value(&broker, "dashboard:"),
        format!("{}/", broker.address)
    );
    let reader = banner_value(&broker, "demo reader key (dashboard, tail):");
    assert!(reader.starts_with("cpk_"), "{reader}");

    let started = Instant::now();
    let wanted: HashSet<String> = ["person", "pod", "job", "credential", "custom"]
        .map(String::from)
        .into();
    loop {
        let seen = namespaces(&broker, &reader).await;
        if wanted.is_subset(&seen) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "after 10 s only {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A reader key may read and stream, and nothing more.
    let refused = reqwest::Client::new()
        .post(broker.url("/v1/events"))
        .bearer_auth(&reader)
        .json(&serde_json::json!({"type": "custom.x.y", "resourceId": "r", "resourceType": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // SIGTERM stops the emitter and the broker cleanly.
    stop(broker).await;

    // A restart makes fresh keys and revokes the old ones: one demo reader, one demo service.
    let broker = BrokerProcess::start(dir.path(), &envs);
    let new_reader = banner_value(&broker, "demo reader key (dashboard, tail):");
    assert_ne!(new_reader, reader);
    let old = reqwest::Client::new()
        .get(broker.url("/v1/events"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    let keys: Value = json_of(
        reqwest::Client::new()
            .get(broker.url("/v1/keys?organizationId=demo"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let mut roles: Vec<&str> = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["role"].as_str().unwrap())
        .collect();
    roles.sort();
    assert_eq!(roles, ["reader", "service"]);
    assert!(!namespaces(&broker, &new_reader).await.is_empty());
    stop(broker).await;
}

async fn stop(mut broker: BrokerProcess) {
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
    assert!(status.success(), "{status:?}: {}", broker.stderr());
}
