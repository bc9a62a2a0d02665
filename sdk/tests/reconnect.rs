//! The stream's own guarantees against a scripted SSE server (a raw TCP listener), so that each
//! can be provoked exactly: the `retry:` hint sets the first delay, a reconnection carries
//! `Last-Event-ID`, an event sent again is not yielded again, and a silent server is replaced.

use std::time::{Duration, Instant};

use cpod_sdk::{CpodClient, Filter, StreamItem, StreamOptions};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn event(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","type":"custom.a.b","resourceId":"r","resourceType":"t","organizationId":"o","workspaceId":null,"payload":{{}},"timestamp":"2026-05-01T12:00:00.000Z"}}"#
    )
}

/// Accepts one connection, answers `body` as an SSE response, closes, and answers the request
/// head it received.
async fn serve_once(listener: &TcpListener, body: String) -> String {
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.ends_with(b"\r\n\r\n") {
        let n = socket.read(&mut buffer).await.unwrap();
        assert!(n > 0, "the client closed before its request ended");
        head.extend_from_slice(&buffer[..n]);
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await.unwrap();
    socket.shutdown().await.unwrap();
    String::from_utf8(head).unwrap().to_lowercase()
}

async fn next(stream: &mut cpod_sdk::EventStream) -> StreamItem {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an item within 10 s")
        .expect("the stream goes on")
        .expect("no error")
}

#[tokio::test]
async fn reconnects_after_the_retry_hint_with_last_event_id_and_drops_repeats() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = CpodClient::new(
        &format!("http://{}", listener.local_addr().unwrap()),
        "cpk_test",
    )
    .unwrap();
    let mut stream = client.events().stream(Filter::new().types(["custom.*"]));
    let server = tokio::spawn(async move {
        let first = serve_once(
            &listener,
            format!(
                "retry: 400\n\nid: e1\ndata: {}\n\nid: e2\ndata: {}\n\n",
                event("e1"),
                event("e2")
            ),
        )
        .await;
        // A misbehaving broker repeats e2 after the seam.
        let second = serve_once(
            &listener,
            format!(
                "id: e2\ndata: {}\n\nid: e3\ndata: {}\n\n",
                event("e2"),
                event("e3")
            ),
        )
        .await;
        (first, second)
    });
    let mut ids = Vec::new();
    let mut reconnect_delay = None;
    let started = Instant::now();
    while ids.len() < 3 {
        match next(&mut stream).await {
            StreamItem::Event(e) => ids.push(e.id),
            StreamItem::Reconnecting { attempt, delay, .. } => {
                assert_eq!(attempt, 1);
                reconnect_delay = Some(delay);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ids, ["e1", "e2", "e3"]);
    let delay = reconnect_delay.expect("one reconnection");
    assert!(
        delay >= Duration::from_millis(200) && delay <= Duration::from_millis(400),
        "the first delay is drawn from the upper half of `retry: 400`: {delay:?}"
    );
    assert!(started.elapsed() >= delay);
    let (first, second) = server.await.unwrap();
    assert!(first.contains("authorization: bearer cpk_test"), "{first}");
    assert!(
        first.contains("types=custom.*") || first.contains("types=custom.%2a"),
        "{first}"
    );
    assert!(!first.contains("last-event-id"), "{first}");
    assert!(second.contains("last-event-id: e2"), "{second}");
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_failed_attempt_and_is_retried() {
    // Connections queue in the backlog, and nothing ever answers them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client =
        CpodClient::new(&format!("http://{}", silent.local_addr().unwrap()), "cpk_x").unwrap();
    let options = StreamOptions::new()
        .idle_timeout(Duration::from_millis(200))
        .max_backoff(Duration::from_millis(20));
    let mut stream = client.events().stream_with(Filter::new(), options);
    for expected in 1..=2 {
        match next(&mut stream).await {
            StreamItem::Reconnecting { attempt, error, .. } => {
                assert_eq!(attempt, expected);
                assert!(error.contains("no answer"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_refusal_that_retrying_cannot_cure_ends_the_stream_with_the_brokers_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = CpodClient::new(
        &format!("http://{}", listener.local_addr().unwrap()),
        "cpk_x",
    )
    .unwrap();
    let mut stream = client.events().stream(Filter::new());
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buffer = [0u8; 4096];
        let _ = socket.read(&mut buffer).await;
        let body = r#"{"error":{"code":"unauthorized","message":"unknown or revoked API key"}}"#;
        let response = format!(
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(response.as_bytes()).await.unwrap();
    });
    let error = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code(), Some("unauthorized"));
    assert!(error.to_string().contains("unknown or revoked API key"));
    assert!(stream.next().await.is_none());
}
