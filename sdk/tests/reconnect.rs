//! The stream's own guarantees against a scripted SSE server (a raw TCP listener), so that each
//! can be provoked exactly: the `retry:` hint sets the first delay, a reconnection carries
//! `Last-Event-ID` (or, before any event, the `since` of the stream's acceptance), an event sent
//! again is not yielded again, a silent server is replaced, a server that accepts and closes at
//! once is backed off from, and failures that retrying cannot cure end the stream.

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
    serve_once_with(listener, "", body).await
}

/// [`serve_once`] with `headers` (each ending in CRLF) added to the response.
async fn serve_once_with(listener: &TcpListener, headers: &str, body: String) -> String {
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.ends_with(b"\r\n\r\n") {
        let n = socket.read(&mut buffer).await.unwrap();
        assert!(n > 0, "the client closed before its request ended");
        head.extend_from_slice(&buffer[..n]);
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
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
        delay >= Duration::from_millis(400) && delay <= Duration::from_millis(600),
        "the first delay is drawn from [400 ms, 600 ms] for `retry: 400`: {delay:?}"
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

#[tokio::test]
async fn before_any_event_a_reconnection_resumes_from_the_streams_acceptance() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = CpodClient::new(
        &format!("http://{}", listener.local_addr().unwrap()),
        "cpk_test",
    )
    .unwrap();
    let mut stream = client.events().stream(Filter::new());
    let server = tokio::spawn(async move {
        // A quiet stream that drops before its first event.
        let first = serve_once_with(
            &listener,
            "date: Sat, 28 Nov 2026 23:17:48 GMT\r\n",
            "retry: 100\n\n".into(),
        )
        .await;
        let second = serve_once_with(
            &listener,
            "date: Sat, 28 Nov 2026 23:17:55 GMT\r\n",
            format!("id: e1\ndata: {}\n\n", event("e1")),
        )
        .await;
        // The resume point is gone: live from this connection's acceptance.
        let third = serve_once_with(
            &listener,
            "date: Sat, 28 Nov 2026 23:18:30 GMT\r\n",
            "event: reset\ndata: {\"reason\":\"unknown_last_event_id\"}\n\n".into(),
        )
        .await;
        let fourth = serve_once(&listener, format!("id: e2\ndata: {}\n\n", event("e2"))).await;
        (first, second, third, fourth)
    });
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match next(&mut stream).await {
            StreamItem::Event(e) => seen.push(e.id),
            StreamItem::Reset { last_event_id, .. } => {
                seen.push(format!("reset after {}", last_event_id.unwrap()))
            }
            StreamItem::Reconnecting { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, ["e1", "reset after e1", "e2"]);
    let (first, second, third, fourth) = server.await.unwrap();
    assert!(
        !first.contains("since=") && !first.contains("last-event-id"),
        "{first}"
    );
    // The broker's Date less three seconds, whatever the local clock says.
    assert!(
        second.contains("since=2026-11-28t23%3a17%3a45.000z"),
        "{second}"
    );
    assert!(!second.contains("last-event-id"), "{second}");
    assert!(third.contains("last-event-id: e1"), "{third}");
    assert!(!third.contains("since="), "{third}");
    assert!(
        fourth.contains("since=2026-11-28t23%3a18%3a27.000z"),
        "{fourth}"
    );
    assert!(!fourth.contains("last-event-id"), "{fourth}");
}

#[tokio::test]
async fn a_server_that_accepts_and_closes_at_once_is_backed_off_from() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = CpodClient::new(
        &format!("http://{}", listener.local_addr().unwrap()),
        "cpk_test",
    )
    .unwrap();
    let mut stream = client.events().stream(Filter::new());
    tokio::spawn(async move {
        loop {
            serve_once(&listener, "retry: 100\n\n".into()).await;
        }
    });
    let mut delays = Vec::new();
    for expected in 1..=4u32 {
        match next(&mut stream).await {
            StreamItem::Reconnecting { attempt, delay, .. } => {
                assert_eq!(attempt, expected, "headers alone do not reset the backoff");
                delays.push(delay);
            }
            other => panic!("{other:?}"),
        }
    }
    for (i, delay) in delays.iter().enumerate() {
        let bound = Duration::from_millis(100 << i);
        assert!(
            *delay >= bound && *delay <= bound.mul_f64(1.5),
            "attempt {}: {delay:?} for a bound of {bound:?}",
            i + 1
        );
    }
}

/// Answers every connection with `response`, whatever was asked.
async fn answer_always(listener: TcpListener, response: &'static str) {
    loop {
        let (mut socket, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            let mut buffer = [0u8; 4096];
            let _ = socket.read(&mut buffer).await;
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

/// The first item of `stream` is an error (not a reconnection), and the stream ends with it.
async fn ends_at_once(mut stream: cpod_sdk::EventStream) -> cpod_sdk::Error {
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an item within 10 s")
        .expect("the stream yields its error");
    let error = match first {
        Err(error) => error,
        Ok(item) => panic!("the stream retried instead of ending: {item:?}"),
    };
    assert!(!error.is_transient(), "{error}");
    assert!(stream.next().await.is_none());
    error
}

#[tokio::test]
async fn a_redirect_loop_ends_the_stream_instead_of_retrying_forever() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = CpodClient::new(
        &format!("http://{}", listener.local_addr().unwrap()),
        "cpk_test",
    )
    .unwrap();
    tokio::spawn(answer_always(
        listener,
        "HTTP/1.1 302 Found\r\nlocation: /v1/events/stream\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    ));
    let error = ends_at_once(client.events().stream(Filter::new())).await;
    assert!(
        matches!(&error, cpod_sdk::Error::Http(e) if e.is_redirect()),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_tls_failure_ends_the_stream_instead_of_retrying_forever() {
    // A server that does not speak TLS: every handshake fails the same way, as an untrusted
    // certificate does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(answer_always(
        listener,
        "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    ));
    let client = CpodClient::new(&base, "cpk_test").unwrap();
    ends_at_once(client.events().stream(Filter::new())).await;
    ends_at_once(client.events().stream_ws(Filter::new())).await;
}

#[tokio::test]
async fn a_refused_connection_is_still_retried() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = CpodClient::new(&format!("http://127.0.0.1:{port}"), "cpk_test").unwrap();
    let options = StreamOptions::new().max_backoff(Duration::from_millis(20));
    for mut stream in [
        client.events().stream_with(Filter::new(), options.clone()),
        client.events().stream_ws_with(Filter::new(), options),
    ] {
        match next(&mut stream).await {
            StreamItem::Reconnecting { attempt, error, .. } => {
                assert_eq!(attempt, 1);
                // The notice says why, not only that the request failed.
                assert!(error.to_lowercase().contains("refused"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
}
