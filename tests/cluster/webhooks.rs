//! Webhooks across nodes: each event delivered once by one node, endpoint changes applied by
//! every node within 5 seconds, and a dead node's delivery taken over by another.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::receiver::Receiver;
use crate::support::{Cluster, event, eventually, json_of, post_to};

async fn create_webhook(cluster: &Cluster, on: usize, key: &str, url: &str) -> Value {
    json_of(
        cluster
            .client
            .post(cluster.node(on).url("/v1/webhooks"))
            .bearer_auth(key)
            .json(&json!({"url": url, "types": ["custom.*"]}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await
}

/// Posts `per_node` events to every node at once; answers their ids.
async fn post_everywhere(cluster: &Cluster, key: &str, per_node: usize, tag: &str) -> Vec<String> {
    let tasks: Vec<_> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let (client, base, key, tag) = (
                cluster.client.clone(),
                node.address.clone(),
                key.to_owned(),
                tag.to_owned(),
            );
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..per_node {
                    let (status, _, body) = post_to(
                        &client,
                        &base,
                        &key,
                        &event(&format!("{tag}-n{n}-{i}")),
                        None,
                    )
                    .await
                    .unwrap();
                    assert_eq!(status, StatusCode::CREATED, "{body}");
                    ids.push(body["id"].as_str().unwrap().to_owned());
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    ids
}

/// The `webhook-id`s the receiver got, asserting each names the event in its body.
fn webhook_ids(receiver: &Receiver) -> Vec<String> {
    receiver
        .received()
        .iter()
        .map(|r| {
            let id = r.header("webhook-id").expect("a webhook-id").to_owned();
            assert_eq!(r.json()["id"], id.as_str(), "webhook-id is the event id");
            id
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_delivered_once_by_one_node_and_endpoint_changes_reach_every_node() {
    let cluster = Cluster::start(3).await;
    let key = cluster.key(0, "service").await;
    let receiver = Receiver::start().await;
    let webhook = create_webhook(&cluster, 1, &key, &receiver.url).await;

    let posted = post_everywhere(&cluster, &key, 30, "first").await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            receiver.received().len() >= posted.len()
        })
        .await,
        "the receiver got {} of {} deliveries\n{}",
        receiver.received().len(),
        posted.len(),
        cluster.logs()
    );
    // Every node's worker had time to claim a delivery twice, had it been able to.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let delivered = webhook_ids(&receiver);
    assert_eq!(
        delivered.len(),
        posted.len(),
        "an event was delivered twice"
    );
    assert_eq!(
        delivered.iter().collect::<HashSet<_>>(),
        posted.iter().collect::<HashSet<_>>()
    );

    // Disabled on node 2: within 5 s no node delivers to it any more.
    let path = format!("/v1/webhooks/{}", webhook["id"].as_str().unwrap());
    let patch = |on: usize, enabled: bool| {
        cluster
            .client
            .patch(cluster.node(on).url(&path))
            .bearer_auth(&key)
            .json(&json!({ "enabled": enabled }))
            .send()
    };
    json_of(patch(2, false).await.unwrap(), StatusCode::OK).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = receiver.received().len();
    post_everywhere(&cluster, &key, 5, "disabled").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.received().len(),
        before,
        "a node delivered to an endpoint disabled 5 s earlier on another node"
    );

    // Enabled again on node 0: every node delivers to it within 5 s.
    json_of(patch(0, true).await.unwrap(), StatusCode::OK).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let again = post_everywhere(&cluster, &key, 5, "enabled").await;
    let expected: HashSet<&String> = again.iter().collect();
    let arrived = crate::support::eventually(Duration::from_secs(20), || async {
        let delivered = webhook_ids(&receiver);
        expected.iter().all(|id| delivered.contains(id))
    })
    .await;
    assert!(
        arrived,
        "an endpoint enabled on node 0 is not delivered to by every node"
    );
    let delivered = webhook_ids(&receiver);
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "an event was delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_held_by_a_killed_node_is_taken_over_within_60_s() {
    // Node 0 alone claims the delivery; the others start while its attempt hangs.
    let mut cluster = Cluster::start(1).await;
    let key = cluster.key(0, "service").await;
    let receiver = Receiver::start().await;
    receiver.hold_next(1);
    create_webhook(&cluster, 0, &key, &receiver.url).await;
    let (status, _, first) = cluster.post(0, &key, &event("held"), None).await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    // Node 0 attempted the delivery (wait_for panics otherwise).
    receiver.wait_for(1, Duration::from_secs(15)).await;
    cluster.add_node(None, &[]);
    cluster.add_node(None, &[]);

    let killed_at = Instant::now();
    cluster.nodes[0].kill_hard();
    // An event after the kill, on a survivor: delivered too, once.
    let (status, _, second) = cluster.post(1, &key, &event("after"), None).await.unwrap();
    assert_eq!(status, StatusCode::CREATED);

    let taken_over = crate::support::eventually(Duration::from_secs(60), || async {
        webhook_ids(&receiver)
            .iter()
            .filter(|id| *id == first["id"].as_str().unwrap())
            .count()
            >= 2
    })
    .await;
    assert!(
        taken_over,
        "the killed node's delivery was not taken over within 60 s\n{}",
        cluster.logs()
    );
    eprintln!("taken over {:?} after the kill", killed_at.elapsed());
    assert!(
        crate::support::eventually(Duration::from_secs(15), || async {
            webhook_ids(&receiver).contains(&second["id"].as_str().unwrap().to_owned())
        })
        .await,
        "the event posted after the kill was not delivered"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let delivered = webhook_ids(&receiver);
    // The interrupted attempt is repeated once (same webhook-id); nothing else is sent twice.
    assert_eq!(delivered.len(), 3, "{delivered:?}");
}
