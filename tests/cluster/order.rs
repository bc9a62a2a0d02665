//! One cluster-wide order: what every subscriber on every node sees while every node ingests,
//! resuming on another node, and idempotency decided once for the cluster.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Cluster, Subscriber, assert_distinct, event, ids, post_to};

/// Posts from `tasks_per_node` concurrent tasks on every node: each task posts `singles` single
/// events and `batches` batches of 10; answers the acknowledged events' ids.
async fn ingest_everywhere(
    cluster: &Cluster,
    key: &str,
    tasks_per_node: usize,
    singles: usize,
    batches: usize,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for (n, node) in cluster.nodes.iter().enumerate() {
        for t in 0..tasks_per_node {
            let (client, base, key) =
                (cluster.client.clone(), node.address.clone(), key.to_owned());
            tasks.push(tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in 0..singles.max(batches) {
                    if i < singles {
                        let (status, _, body) = post_to(
                            &client,
                            &base,
                            &key,
                            &event(&format!("n{n}-t{t}-{i}")),
                            None,
                        )
                        .await
                        .unwrap();
                        assert_eq!(status, StatusCode::CREATED, "{body}");
                        acknowledged.push(body["id"].as_str().unwrap().to_owned());
                    }
                    if i < batches {
                        let events: Vec<Value> = (0..10)
                            .map(|j| event(&format!("n{n}-t{t}-b{i}-{j}")))
                            .collect();
                        let (status, _, body) =
                            post_to(&client, &base, &key, &json!({ "events": events }), None)
                                .await
                                .unwrap();
                        assert_eq!(status, StatusCode::CREATED, "{body}");
                        acknowledged.extend(ids(body["data"].as_array().unwrap()));
                    }
                }
                acknowledged
            }));
        }
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    acknowledged
}

/// Asserts the timestamps never decrease along `events`.
fn assert_timestamps_never_decrease(events: &[Value]) {
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = events
        .iter()
        .map(|e| chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap())
        .collect();
    for pair in times.windows(2) {
        assert!(pair[0] <= pair[1], "a timestamp decreases: {pair:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_every_node_see_one_order_while_every_node_ingests() {
    let cluster = Cluster::start(3).await;
    let key = cluster.key(0, "service").await;
    let mut subscribers = Vec::new();
    for node in &cluster.nodes {
        subscribers.push((
            format!("SSE on {}", node.name),
            Subscriber::sse(&node.address, &key, None).await,
        ));
        subscribers.push((
            format!("WebSocket on {}", node.name),
            Subscriber::ws(&node.address, &key, None).await,
        ));
    }

    let acknowledged = ingest_everywhere(&cluster, &key, 4, 20, 2).await;
    assert_eq!(acknowledged.len(), 3 * 4 * (20 + 20));
    assert_distinct(&acknowledged, "acknowledged ids");

    let history = cluster.history(0, &key).await;
    let order = ids(&history);
    assert_eq!(
        order.iter().collect::<HashSet<_>>(),
        acknowledged.iter().collect::<HashSet<_>>(),
        "history holds exactly the acknowledged events"
    );
    assert_timestamps_never_decrease(&history);
    for other in 1..3 {
        assert_eq!(
            ids(&cluster.history(other, &key).await),
            order,
            "history differs on node {other}"
        );
    }
    for (name, subscriber) in &subscribers {
        let complete = subscriber
            .wait_for(order.len(), Duration::from_secs(30))
            .await;
        let seen = subscriber.ids();
        assert!(
            complete,
            "{name} got {} of {} events\n{}",
            seen.len(),
            order.len(),
            cluster.logs()
        );
        assert_eq!(
            seen, order,
            "{name} saw another order (or a gap or a duplicate)"
        );
        assert!(
            subscriber.oddities().is_empty(),
            "{name}: {:?}",
            subscriber.oddities()
        );
    }
    // Nothing more arrives: no duplicate after the last event.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (name, subscriber) in &subscribers {
        assert_eq!(
            subscriber.ids().len(),
            order.len(),
            "{name} got more than every event"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_from_one_node_resumes_on_another_with_no_gap_or_duplicate() {
    let cluster = Cluster::start(3).await;
    let key = cluster.key(1, "service").await;
    // The first leg is open before the first event: it must see them all.
    let mut first = Some(Subscriber::sse(&cluster.node(0).address, &key, None).await);
    // Events keep coming from every node while subscribers move from node to node.
    let writing = {
        let (client, bases, key) = (
            cluster.client.clone(),
            cluster
                .nodes
                .iter()
                .map(|n| n.address.clone())
                .collect::<Vec<_>>(),
            key.clone(),
        );
        tokio::spawn(async move {
            for i in 0..300 {
                let base = &bases[i % 3];
                let (status, _, _) = post_to(&client, base, &key, &event(&format!("e{i}")), None)
                    .await
                    .unwrap();
                assert_eq!(status, StatusCode::CREATED);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // SSE on node 0 → SSE on node 1 (Last-Event-ID) → WebSocket on node 2 (lastEventId) →
    // SSE on node 0 again; each leg stops after some events, mid-stream.
    let mut seen: Vec<String> = Vec::new();
    let legs: [(usize, bool, usize); 4] =
        [(0, false, 40), (1, false, 60), (2, true, 60), (0, false, 0)];
    for (leg, &(node, websocket, take)) in legs.iter().enumerate() {
        let base = &cluster.node(node).address;
        let last = seen.last().map(String::as_str);
        let subscriber = if let Some(first) = first.take() {
            first
        } else if websocket {
            Subscriber::ws(base, &key, last).await
        } else {
            Subscriber::sse(base, &key, last).await
        };
        // The last leg (take 0) reads on until every event of the run has arrived.
        let want = if take > 0 { take } else { 300 - seen.len() };
        let arrived = subscriber.wait_for(want, Duration::from_secs(40)).await;
        // Whatever arrived before the stream is dropped counts: the next leg resumes after it.
        let events = subscriber.ids();
        assert!(
            arrived,
            "leg {leg} on node {node} got {} of {want} events\n{}",
            events.len(),
            cluster.logs()
        );
        assert!(
            subscriber.oddities().is_empty(),
            "{:?}",
            subscriber.oddities()
        );
        drop(subscriber);
        seen.extend(events);
    }
    writing.await.unwrap();
    let order = ids(&cluster.history(2, &key).await);
    assert_eq!(order.len(), 300);
    assert_distinct(&seen, "events seen over the four legs");
    assert_eq!(
        seen, order,
        "resuming across nodes skipped or repeated events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_posted_to_three_nodes_at_once_stores_one_event() {
    let cluster = Cluster::start(3).await;
    let key = cluster.key(0, "service").await;
    let rounds = 25;
    for round in 0..rounds {
        let idempotency_key = format!("race-{round}");
        // Singles on even rounds, batches on odd ones; the same body everywhere.
        let body = if round % 2 == 0 {
            event(&format!("r{round}"))
        } else {
            json!({"events": [event(&format!("r{round}-a")), event(&format!("r{round}-b"))]})
        };
        let barrier = Arc::new(tokio::sync::Barrier::new(3));
        let answers = futures_util::future::join_all(cluster.nodes.iter().map(|node| {
            let (client, base, key, body, idem, barrier) = (
                cluster.client.clone(),
                node.address.clone(),
                key.clone(),
                body.clone(),
                idempotency_key.clone(),
                barrier.clone(),
            );
            async move {
                barrier.wait().await;
                post_to(&client, &base, &key, &body, Some(&idem))
                    .await
                    .unwrap()
            }
        }))
        .await;
        let firsts = answers.iter().filter(|(_, replayed, _)| !replayed).count();
        assert_eq!(firsts, 1, "round {round}: {answers:?}");
        for (status, _, answer) in &answers {
            assert_eq!(*status, StatusCode::CREATED, "round {round}: {answer}");
            assert_eq!(answer, &answers[0].2, "round {round}: the answers differ");
        }
        // A different body with the same key (on the same endpoint), on any node, is a
        // conflict.
        let different = if round % 2 == 0 {
            event("different")
        } else {
            json!({"events": [event("different")]})
        };
        let (status, _, _) = cluster
            .post(round % 3, &key, &different, Some(&idempotency_key))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CONFLICT, "round {round}");
    }
    let history = cluster.history(2, &key).await;
    assert_eq!(
        history.len(),
        rounds / 2 + 1 + (rounds / 2) * 2,
        "each round stored its events once"
    );
}
