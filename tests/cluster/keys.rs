//! Keys across nodes: a key made on one node works on every node at once; its revocation on one
//! node ends its streams and is refused on every node within 5 seconds.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{ADMIN_KEY, Cluster, Subscriber, eventually, json_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_on_one_node_ends_its_streams_and_refuses_it_on_the_others_within_5_s() {
    let cluster = Cluster::start(3).await;
    let created = cluster.create_key(0, "reader").await;
    let key = created["key"].as_str().unwrap().to_owned();
    let status_on = |node: usize, key: String| {
        let request = cluster
            .client
            .get(cluster.node(node).url("/v1/keys/me"))
            .bearer_auth(key);
        async move { request.send().await.unwrap().status() }
    };
    // Made on node 0, it works on the others at once (and sits in their caches now).
    for node in 1..3 {
        assert_eq!(
            status_on(node, key.clone()).await,
            StatusCode::OK,
            "node {node}"
        );
    }
    let ticket = json_of(
        cluster
            .client
            .post(cluster.node(1).url("/v1/stream-tickets"))
            .bearer_auth(&key)
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let ticket_stream_url = |node: usize| {
        cluster
            .node(node)
            .url(&format!("/v1/events/stream?ticket={ticket}"))
    };
    let streams = [
        (
            "SSE on node-1",
            Subscriber::sse(&cluster.node(1).address, &key, None).await,
        ),
        (
            "WebSocket on node-2",
            Subscriber::ws(&cluster.node(2).address, &key, None).await,
        ),
        (
            "ticket SSE on node-2",
            Subscriber::sse_at(ticket_stream_url(2), None, None).await,
        ),
    ];

    let revoked_at = Instant::now();
    let path = format!("/v1/keys/{}", created["id"].as_str().unwrap());
    json_of(
        cluster
            .client
            .delete(cluster.node(0).url(&path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;

    for (name, stream) in &streams {
        let ended = eventually(
            Duration::from_secs(5) - revoked_at.elapsed().min(Duration::from_secs(5)),
            || async { stream.ended() },
        )
        .await;
        assert!(ended, "{name} outlived its key by 5 s\n{}", cluster.logs());
    }
    for node in 1..3 {
        let refused = eventually(
            Duration::from_secs(5) - revoked_at.elapsed().min(Duration::from_secs(5)),
            || {
                let status = status_on(node, key.clone());
                async move { status.await == StatusCode::UNAUTHORIZED }
            },
        )
        .await;
        assert!(
            refused,
            "node {node} still takes the key 5 s after its revocation"
        );
        let by_ticket = cluster
            .client
            .get(ticket_stream_url(node))
            .send()
            .await
            .unwrap();
        assert_eq!(
            by_ticket.status(),
            StatusCode::UNAUTHORIZED,
            "node {node} takes the ticket"
        );
    }
    eprintln!(
        "every node refused the key {:?} after its revocation",
        revoked_at.elapsed()
    );
}
