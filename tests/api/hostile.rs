//! What a hostile or broken client can try (issue 13): unbounded metric labels, huge filters,
//! stalled bodies, malformed HTTP, oversized and fragmented WebSocket frames, endpoint floods.
//! Several tests speak raw TCP, since a well-behaved client library would not send their bytes.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{ADMIN_KEY, BrokerProcess, assert_error, json_of, spawn_app, spawn_app_with};

/// The `host:port` of a broker's `http://` address.
fn authority(address: &str) -> &str {
    address.trim_start_matches("http://")
}

/// The broker's metrics text.
async fn metrics(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn request_metrics_label_unknown_methods_as_other_and_do_not_grow() {
    // A process of its own: the metrics recorder is process-wide.
    let dir = tempfile::TempDir::new().unwrap();
    let broker = BrokerProcess::start(
        dir.path(),
        &[("CPOD_ADMIN_KEY", ADMIN_KEY), ("RUST_LOG", "warn")],
    );
    let client = reqwest::Client::new();
    // Every label combination these requests can make exists once before measuring.
    for method in ["BREW", "PROPFIND"] {
        for path in ["/healthz", "/no/such/path"] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            client
                .request(method, broker.url(path))
                .send()
                .await
                .unwrap();
        }
    }
    // The first scrape is counted after it is answered: scrape twice.
    metrics(&broker.address).await;
    let before = metrics(&broker.address).await.len();
    for i in 0..200 {
        let method = format!("X{i:04}{}", "Y".repeat(2000));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let path = format!("/no/such/{i}/{}", "p".repeat(500));
        for path in [path.as_str(), "/healthz"] {
            let response = client
                .request(method.clone(), broker.url(path))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_client_error(), "{}", response.status());
        }
    }
    let after = metrics(&broker.address).await;
    assert!(
        !after.contains("YYYYYYYYYY") && !after.contains("pppppppppp"),
        "a raw method or path became a label"
    );
    assert!(
        after.len() < before + 512,
        "/metrics grew from {before} to {} bytes",
        after.len()
    );
    assert!(
        after.contains("method=\"other\""),
        "unknown methods are counted as `other`"
    );
}

#[tokio::test]
async fn an_organization_holds_at_most_100_webhook_endpoints_by_default() {
    let app = spawn_app_with(&["--webhook-allow-private", "true", "--sqlite-sync", "off"]).await;
    let app_key = app.key("org-a", "app").await;
    let endpoint = |i: usize| json!({"url": format!("http://127.0.0.1:9/{i}")});
    let mut ids = Vec::new();
    for i in 0..100 {
        let created = json_of(
            app.post_json(&app_key, "/v1/webhooks", &endpoint(i))
                .send()
                .await
                .unwrap(),
            StatusCode::CREATED,
        )
        .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let refused = assert_error(
        app.post_json(&app_key, "/v1/webhooks", &endpoint(100))
            .send()
            .await
            .unwrap(),
        StatusCode::CONFLICT,
        "conflict",
        None,
    )
    .await;
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("100"),
        "{refused}"
    );
    let listed = json_of(
        app.get(&app_key, "/v1/webhooks").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        100,
        "nothing was added"
    );
    // Another organization has its own allowance.
    let other = app.key("org-b", "app").await;
    json_of(
        app.post_json(&other, "/v1/webhooks", &endpoint(0))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    // Deleting one frees its place.
    let deleted = app
        .client
        .delete(app.url(&format!("/v1/webhooks/{}", ids[0])))
        .bearer_auth(&app_key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    json_of(
        app.post_json(&app_key, "/v1/webhooks", &endpoint(100))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
}

#[tokio::test]
async fn the_webhook_endpoint_cap_is_a_setting_and_holds_under_concurrent_creation() {
    let app = spawn_app_with(&[
        "--webhook-allow-private",
        "true",
        "--max-webhooks-per-organization",
        "5",
    ])
    .await;
    let app_key = app.key("org-a", "app").await;
    let attempts = (0..20).map(|i| {
        app.post_json(
            &app_key,
            "/v1/webhooks",
            &json!({"url": format!("http://127.0.0.1:9/{i}")}),
        )
        .send()
    });
    let statuses: Vec<StatusCode> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((created, refused), (5, 15), "{statuses:?}");
}

/// `count` distinct patterns, globs and exact types mixed, joined by commas.
fn many_patterns(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            if i % 2 == 0 {
                format!("custom.p{i}.*")
            } else {
                format!("custom.exact{i}")
            }
        })
        .collect()
}

#[tokio::test]
async fn history_takes_up_to_100_type_patterns_and_refuses_more_naming_types() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    app.emit(
        &service,
        &json!({"type": "custom.p98.x", "resourceId": "r", "resourceType": "t"}),
    )
    .await;
    app.emit(
        &service,
        &json!({"type": "custom.exact99", "resourceId": "r", "resourceType": "t"}),
    )
    .await;
    app.emit(&service, &crate::helpers::custom("other")).await;
    let patterns = many_patterns(100);
    let page = json_of(
        app.get(
            &service,
            &format!("/v1/events?types={}", patterns.join(",")),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    let types: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["custom.exact99", "custom.p98.x"]);
    for count in [101, 999] {
        let patterns = many_patterns(count);
        // Comma-separated and repeated count alike.
        let repeated: Vec<String> = patterns.iter().map(|p| format!("types={p}")).collect();
        for query in [format!("types={}", patterns.join(",")), repeated.join("&")] {
            for path in ["/v1/events", "/v1/events/stream"] {
                let response = app
                    .get(&service, &format!("{path}?{query}"))
                    .send()
                    .await
                    .unwrap();
                let body = assert_error(
                    response,
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    Some("types"),
                )
                .await;
                assert!(
                    body["error"]["message"].as_str().unwrap().contains("100"),
                    "{body}"
                );
            }
        }
    }
    // A pattern longer than an event type can be.
    let long = format!("custom.{}", "a".repeat(200));
    assert_error(
        app.get(&service, &format!("/v1/events?types={long}"))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("types"),
    )
    .await;
}

#[tokio::test]
async fn a_websocket_subscription_and_a_webhook_refuse_more_than_100_type_patterns() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let app = spawn_app_with(&["--webhook-allow-private", "true"]).await;
    let service = app.key("org-a", "service").await;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "{}/v1/events/ws",
            app.address.replace("http://", "ws://")
        ))
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {service}").parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    for (id, types) in [
        ("list", json!(many_patterns(101))),
        ("text", json!(many_patterns(999).join(","))),
    ] {
        let frame = json!({"op": "subscribe", "id": id, "filter": {"types": types}});
        socket.send(Message::text(frame.to_string())).await.unwrap();
        let answer = loop {
            match socket.next().await.unwrap().unwrap() {
                Message::Text(text) => {
                    break serde_json::from_str::<serde_json::Value>(&text).unwrap();
                }
                _ => continue,
            }
        };
        assert_eq!(answer["op"], "error", "{answer}");
        assert_eq!(answer["code"], "invalid_request", "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("100"),
            "{answer}"
        );
    }
    // 100 are fine.
    let frame = json!({"op": "subscribe", "id": "ok", "filter": {"types": many_patterns(100)}});
    socket.send(Message::text(frame.to_string())).await.unwrap();
    let answer = loop {
        match socket.next().await.unwrap().unwrap() {
            Message::Text(text) => break serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(answer, json!({"op": "subscribed", "id": "ok"}));

    assert_error(
        app.post_json(
            &service,
            "/v1/webhooks",
            &json!({"url": "http://127.0.0.1:9/", "types": many_patterns(101)}),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("types"),
    )
    .await;
}

type WebSocket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket on a plain TCP stream (so raw bytes can be written under it), with a key.
async fn raw_websocket(address: &str, key: &str) -> WebSocket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = tokio::net::TcpStream::connect(authority(address))
        .await
        .unwrap();
    let mut request = format!("{}/v1/events/ws", address.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    tokio_tungstenite::client_async(request, tcp)
        .await
        .unwrap()
        .0
}

/// The next text frame as JSON, or the close frame's code (`None` for a close without one).
async fn next_frame(socket: &mut WebSocket) -> Result<serde_json::Value, Option<u16>> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s");
        match message {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("the socket failed: {e}"),
            None => panic!("the socket ended without a close frame"),
        }
    }
}

#[tokio::test]
async fn a_websocket_frame_larger_than_the_limit_closes_the_socket_with_1009() {
    let app = spawn_app().await;
    let reader = app.key("org-a", "reader").await;
    let mut socket = raw_websocket(&app.address, &reader).await;
    // The head of a masked 10 MB text frame and its first 64 KiB; the broker must not wait
    // for (or buffer) the rest.
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(10u64 * 1024 * 1024).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend(std::iter::repeat_n(b'a' ^ 1, 64 * 1024));
    socket.get_mut().write_all(&frame).await.unwrap();
    assert_eq!(next_frame(&mut socket).await, Err(Some(1009)));
}

#[tokio::test]
async fn a_fragmented_text_message_is_assembled_and_an_oversized_one_closes_with_1009() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let mut socket = raw_websocket(&app.address, &service).await;
    let text = json!({"op": "subscribe", "id": "fragmented", "filter": {"types": ["custom.*"]}})
        .to_string();
    let (a, rest) = text.as_bytes().split_at(10);
    let (b, c) = rest.split_at(20);
    let fragment =
        |data: &[u8], opcode, last| Message::Frame(Frame::message(data.to_vec(), opcode, last));
    socket
        .send(fragment(a, OpCode::Data(Data::Text), false))
        .await
        .unwrap();
    socket
        .send(fragment(b, OpCode::Data(Data::Continue), false))
        .await
        .unwrap();
    // A ping may come between fragments (RFC 6455 §5.4).
    socket
        .send(Message::Ping(b"x".to_vec().into()))
        .await
        .unwrap();
    socket
        .send(fragment(c, OpCode::Data(Data::Continue), true))
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut socket).await,
        Ok(json!({"op": "subscribed", "id": "fragmented"}))
    );
    app.emit(&service, &crate::helpers::custom("after")).await;
    let event = next_frame(&mut socket).await.unwrap();
    assert_eq!(event["op"], "event", "{event}");
    assert_eq!(event["subscription"], "fragmented");

    // Fragments that together pass the message limit (64 KiB) end the socket with 1009.
    let chunk = vec![b' '; 40 * 1024];
    socket
        .send(fragment(&chunk, OpCode::Data(Data::Text), false))
        .await
        .unwrap();
    socket
        .send(fragment(&chunk, OpCode::Data(Data::Continue), false))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut socket).await, Err(Some(1009)));
}

/// Opens a connection and sends a request head announcing `content_length` bytes of JSON plus
/// the first `sent` of them, then stalls.
async fn stalled_body(address: &str, key: &str, content_length: usize, sent: usize) -> TcpStream {
    let mut tcp = TcpStream::connect(authority(address)).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&vec![b' '; sent]).await.unwrap();
    tcp
}

/// Reads one HTTP/1.1 answer from a raw connection: its status and body (read until the
/// connection closes or `Content-Length` is reached), or `None` if nothing came in `timeout`.
async fn raw_answer(tcp: &mut TcpStream, timeout: Duration) -> Option<(u16, String, String)> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                let body = String::from_utf8_lossy(&received[end + 4..end + 4 + length]);
                return Some((status, head, body.into_owned()));
            }
        }
        match tokio::time::timeout_at(deadline, tcp.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => {
                return (!received.is_empty()).then(|| {
                    let text = String::from_utf8_lossy(&received).into_owned();
                    let status = text.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
                    (status, text, String::new())
                });
            }
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Asserts a raw answer is the contract's JSON error with this status and code.
fn assert_raw_error(answer: Option<(u16, String, String)>, status: u16, code: &str) {
    let (got, head, body) = answer.expect("an answer");
    assert_eq!(got, status, "{head}\n\n{body}");
    let json: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {head}\n\n{body}"));
    assert_eq!(json["error"]["code"], code, "{json}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
}

#[tokio::test]
async fn a_body_that_stalls_gets_408_within_the_body_deadline() {
    let app = spawn_app_with(&["--body-timeout", "1s"]).await;
    let service = app.key("org-a", "service").await;
    let reader = app.key("org-a", "reader").await;
    let started = tokio::time::Instant::now();
    let mut stalled = Vec::new();
    for key in [&service, &reader] {
        for _ in 0..5 {
            stalled.push(stalled_body(&app.address, key, 4 * 1024 * 1024, 1000).await);
        }
    }
    for tcp in &mut stalled {
        assert_raw_error(
            raw_answer(tcp, Duration::from_secs(5)).await,
            408,
            "request_timeout",
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered after {:?}",
        started.elapsed()
    );
    // The broker is fine afterwards.
    app.emit(&service, &crate::helpers::custom("after")).await;
}

#[tokio::test]
async fn bodies_in_flight_are_bounded_per_key_and_overall() {
    // 16 MiB for bodies in flight, so 4 MiB (one largest body) per key.
    let app = spawn_app_with(&["--body-memory", "16777216", "--body-timeout", "60s"]).await;
    let small = |key: &str| {
        app.post_json(key, "/v1/events", &crate::helpers::custom("small"))
            .send()
    };
    let keys = [
        app.key("org-a", "service").await,
        app.key("org-b", "service").await,
        app.key("org-c", "app").await,
        app.key("org-d", "reader").await,
    ];
    let first = stalled_body(&app.address, &keys[0], 4 * 1024 * 1024, 10).await;
    // Once the stalled body has its share, the same key's next body is refused (429)...
    assert!(
        crate::helpers::eventually(Duration::from_secs(15), || async {
            small(&keys[0]).await.unwrap().status() == StatusCode::TOO_MANY_REQUESTS
        })
        .await,
        "a key could commit more than its share"
    );
    let refused = small(&keys[0]).await.unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
    // ...while other keys still get theirs.
    assert_eq!(small(&keys[1]).await.unwrap().status(), StatusCode::CREATED);
    let mut others = Vec::new();
    for key in &keys[1..] {
        others.push(stalled_body(&app.address, key, 4 * 1024 * 1024, 10).await);
    }
    // With every byte committed, anyone's body is refused with 503.
    let fifth = app.key("org-e", "service").await;
    assert!(
        crate::helpers::eventually(Duration::from_secs(15), || async {
            small(&fifth).await.unwrap().status() == StatusCode::SERVICE_UNAVAILABLE
        })
        .await,
        "more than the overall budget was committed"
    );
    let refused = small(&fifth).await.unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    assert_error(
        refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        None,
    )
    .await;
    // Clients that go away give their share back.
    drop(first);
    drop(others);
    assert!(
        crate::helpers::eventually(Duration::from_secs(15), || async {
            small(&fifth).await.unwrap().status() == StatusCode::CREATED
        })
        .await
    );
    assert_eq!(small(&keys[0]).await.unwrap().status(), StatusCode::CREATED);
}

/// Sends `request` on a fresh connection (writing and reading at once, so that a broker which
/// answers before the request is all sent is heard) and reads the answer.
async fn raw_exchange(address: &str, request: Vec<u8>) -> Option<(u16, String, String)> {
    let tcp = TcpStream::connect(authority(address)).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    let answer = loop {
        match tokio::time::timeout(Duration::from_secs(5), read.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => {
                received.extend_from_slice(&buffer[..n]);
                if let Some(answer) = parse_answer(&received) {
                    break Some(answer);
                }
            }
            _ => break parse_answer(&received),
        }
    };
    writer.abort();
    answer
}

/// A complete HTTP/1.1 answer at the start of `bytes`: status, head and body.
fn parse_answer(bytes: &[u8]) -> Option<(u16, String, String)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let body = bytes.get(end + 4..end + 4 + length)?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, head, String::from_utf8_lossy(body).into_owned()))
}

/// Requests actix-http refuses before any handler sees them, with the status each gets.
fn malformed_requests() -> Vec<(&'static str, Vec<u8>, u16)> {
    let get =
        |headers: &str| format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{headers}\r\n").into_bytes();
    let many_headers: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    vec![
        (
            "duplicate Content-Length",
            get("Content-Length: 1\r\nContent-Length: 2\r\n"),
            400,
        ),
        ("bad Content-Length", get("Content-Length: 1x\r\n"), 400),
        (
            "Transfer-Encoding with Content-Length",
            get("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"),
            400,
        ),
        (
            "unknown Transfer-Encoding",
            get("Transfer-Encoding: gzip, chunked, x\r\n"),
            400,
        ),
        ("NUL in a header", get("X-A: a\0b\r\n"), 400),
        (
            "100 KB URI",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000)).into_bytes(),
            400,
        ),
        (
            "1 MB header",
            get(&format!("X-Big: {}\r\n", "b".repeat(1 << 20))),
            431,
        ),
        ("300 headers", get(&many_headers), 431),
        ("not HTTP", b"HELLO\r\n\r\n".to_vec(), 400),
    ]
}

#[tokio::test]
async fn protocol_level_rejections_answer_the_contract_json_error_and_log_below_error() {
    let dir = tempfile::TempDir::new().unwrap();
    let broker = BrokerProcess::start(
        dir.path(),
        &[("CPOD_ADMIN_KEY", ADMIN_KEY), ("RUST_LOG", "info")],
    );
    for (name, request, status) in malformed_requests() {
        let answer = raw_exchange(&broker.address, request).await;
        let (got, head, body) = answer.unwrap_or_else(|| panic!("{name}: no answer"));
        assert_eq!(got, status, "{name}: {head}");
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {head}\n\n{body}"));
        let code = if status == 400 {
            "invalid_request"
        } else {
            "request_headers_too_large"
        };
        assert_eq!(json["error"]["code"], code, "{name}: {json}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{name}: {head}"
        );
    }
    // A refusal after a good request on the same connection is answered too.
    let mut pipelined = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    pipelined.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n");
    let tcp = TcpStream::connect(authority(&broker.address))
        .await
        .unwrap();
    let mut tcp = tcp;
    tcp.write_all(&pipelined).await.unwrap();
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut received)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("HTTP/1.1 400 Bad Request\r\n") && text.contains("\"invalid_request\""),
        "{text}"
    );

    let metrics = metrics(&broker.address).await;
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("cpod_http_protocol_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(counted >= 10.0, "counted {counted}:\n{metrics}");
    let log = broker.stderr();
    assert!(
        !log.contains("ERROR"),
        "protocol errors are logged at ERROR:\n{log}"
    );
}

/// The broker's gauge of open streams of one transport.
async fn open_streams(url: &str, transport: &str) -> f64 {
    let series = format!("cpod_subscribers{{transport=\"{transport}\"}} ");
    metrics(url)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Opens an SSE stream on a socket with a tiny receive buffer that is never read.
async fn unread_stream(address: &str, credential: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket
        .connect(authority(address).parse().unwrap())
        .await
        .unwrap();
    let request = if credential.starts_with("cpt_") {
        format!("GET /v1/events/stream?ticket={credential} HTTP/1.1\r\nHost: x\r\n\r\n")
    } else {
        format!(
            "GET /v1/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {credential}\r\n\r\n"
        )
    };
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

/// Stores about 7 MB of events in `org-a`: more than a socket's buffers hold.
async fn flood(address: &str, service: &str) {
    let client = reqwest::Client::new();
    let big = json!({"type": "custom.flood", "resourceId": "r", "resourceType": "t",
        "payload": {"text": "x".repeat(60_000)}});
    for _ in 0..2 {
        let batch = json!({"events": vec![big.clone(); 60]});
        let response = client
            .post(format!("{address}/v1/events/batch"))
            .bearer_auth(service)
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
}

/// Reads a raw connection to its end; `true` if the broker ended it within `timeout`.
async fn ends_within(tcp: &mut TcpStream, timeout: Duration) -> bool {
    let mut buffer = vec![0u8; 1 << 16];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn revocation_and_ticket_expiry_end_a_stream_whose_client_does_not_read() {
    let dir = tempfile::TempDir::new().unwrap();
    let broker = BrokerProcess::start(
        dir.path(),
        &[
            ("CPOD_ADMIN_KEY", ADMIN_KEY),
            ("CPOD_HEARTBEAT", "300s"),
            ("RUST_LOG", "warn"),
        ],
    );
    let client = reqwest::Client::new();
    let service = broker.key(ADMIN_KEY, "service").await;
    let reader = json_of(
        client
            .post(broker.url("/v1/keys"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"organizationId": "org-a", "role": "reader", "name": "slow"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let ticket = json_of(
        client
            .post(broker.url("/v1/stream-tickets"))
            .bearer_auth(&service)
            .json(&json!({"ttlSeconds": 3}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let mut by_key = unread_stream(&broker.address, reader["key"].as_str().unwrap()).await;
    let mut by_ticket = unread_stream(&broker.address, ticket["ticket"].as_str().unwrap()).await;
    assert!(
        crate::helpers::eventually(Duration::from_secs(5), || async {
            open_streams(&broker.address, "sse").await == 2.0
        })
        .await
    );
    flood(&broker.address, &service).await;

    let revoked = client
        .delete(broker.url(&format!("/v1/keys/{}", reader["id"].as_str().unwrap())))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    let started = tokio::time::Instant::now();
    assert!(
        crate::helpers::eventually(Duration::from_secs(3), || async {
            open_streams(&broker.address, "sse").await <= 1.0
        })
        .await,
        "the revoked key's stream is still open after {:?}",
        started.elapsed()
    );
    assert!(ends_within(&mut by_key, Duration::from_secs(5)).await);
    // The ticket expires 3 s after it was made.
    assert!(
        crate::helpers::eventually(Duration::from_secs(6), || async {
            open_streams(&broker.address, "sse").await == 0.0
        })
        .await,
        "the expired ticket's stream is still open"
    );
    assert!(ends_within(&mut by_ticket, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn shutdown_ends_a_stream_whose_client_does_not_read_at_once() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut broker = BrokerProcess::start(
        dir.path(),
        &[
            ("CPOD_ADMIN_KEY", ADMIN_KEY),
            ("CPOD_HEARTBEAT", "300s"),
            ("RUST_LOG", "warn"),
        ],
    );
    let service = broker.key(ADMIN_KEY, "service").await;
    let reader = broker.key(ADMIN_KEY, "reader").await;
    let _stream = unread_stream(&broker.address, &reader).await;
    assert!(
        crate::helpers::eventually(Duration::from_secs(5), || async {
            open_streams(&broker.address, "sse").await == 1.0
        })
        .await
    );
    flood(&broker.address, &service).await;
    let started = std::time::Instant::now();
    unsafe { libc::kill(broker.child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(status) = broker.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the broker took {:?} to stop",
        started.elapsed()
    );
}
