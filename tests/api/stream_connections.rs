//! Stream connections at the socket (issue 14): a stream that opens a connection is served by
//! the broker itself and written directly by its worker's shard; one asked for later on a
//! keep-alive connection is served by actix-web. Raw TCP clients here, to see the bytes and to
//! hold thousands of connections cheaply.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{ADMIN_KEY, BrokerProcess, custom, spawn_app};

/// A stream read off a raw socket: its response head, then `id:` lines.
struct RawStream {
    tcp: TcpStream,
    buffer: Vec<u8>,
}

impl RawStream {
    /// Sends a stream request on `tcp` (which may already have carried other requests) and
    /// reads its response head.
    async fn request(tcp: TcpStream, key: &str) -> (Self, String) {
        Self::request_path(tcp, key, "/v1/events/stream").await
    }

    /// [`RawStream::request`] for `path` (the stream's path and query).
    async fn request_path(mut tcp: TcpStream, key: &str, path: &str) -> (Self, String) {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer {key}\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut stream = RawStream {
            tcp,
            buffer: Vec::new(),
        };
        let head = stream
            .read_until(b"\r\n\r\n")
            .await
            .expect("a response head");
        (stream, String::from_utf8(head).unwrap())
    }

    async fn connect(address: &str) -> TcpStream {
        TcpStream::connect(address.trim_start_matches("http://"))
            .await
            .unwrap()
    }

    /// The bytes up to and including `delimiter`, or `None` if the connection ends first.
    async fn read_until(&mut self, delimiter: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = self
                .buffer
                .windows(delimiter.len())
                .position(|w| w == delimiter)
            {
                return Some(self.buffer.drain(..at + delimiter.len()).collect());
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout(Duration::from_secs(20), self.tcp.read(&mut chunk))
                .await
                .expect("the stream stalled")
                .unwrap();
            if n == 0 {
                return None;
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// The ids of the next `count` events (skipping `retry:`, comments and chunk sizes).
    async fn event_ids(&mut self, count: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(count);
        while ids.len() < count {
            let line = self
                .read_until(b"\n")
                .await
                .expect("the stream ended early");
            let line = String::from_utf8(line).unwrap();
            if let Some(id) = line.strip_prefix("id: ") {
                ids.push(id.trim_end().to_owned());
            }
        }
        ids
    }

    /// The next `count` events as (`id:`, parsed `data:`) pairs.
    async fn events(&mut self, count: usize) -> Vec<(String, Value)> {
        let mut events = Vec::with_capacity(count);
        let mut id = None;
        while events.len() < count {
            let line = self
                .read_until(b"\n")
                .await
                .expect("the stream ended early");
            let line = String::from_utf8(line).unwrap();
            if let Some(value) = line.strip_prefix("id: ") {
                id = Some(value.trim_end().to_owned());
            } else if let Some(data) = line.strip_prefix("data: ") {
                let data = serde_json::from_str(data.trim_end()).unwrap();
                events.push((id.take().expect("id: before data:"), data));
            }
        }
        events
    }
}

/// Reads the response to a `GET /healthz` sent on `tcp`, leaving the connection ready for its
/// next request.
async fn after_an_api_request(mut tcp: TcpStream) -> TcpStream {
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
        .await
        .unwrap();
    let mut first = RawStream {
        tcp,
        buffer: Vec::new(),
    };
    let head = String::from_utf8(first.read_until(b"\r\n\r\n").await.unwrap()).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    while first.buffer.len() < length {
        let mut chunk = [0u8; 1024];
        let n = first.tcp.read(&mut chunk).await.unwrap();
        first.buffer.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(first.buffer.len(), length, "nothing after the answer");
    first.tcp
}

async fn metric(address: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| rest.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum()
}

async fn publish_batch(address: &str, key: &str, events: Vec<Value>) -> Vec<String> {
    let response = reqwest::Client::new()
        .post(format!("{address}/v1/events/batch"))
        .bearer_auth(key)
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_stream_opening_a_connection_is_served_directly_and_ends_with_the_connection() {
    let app = spawn_app().await;
    let reader = app.key("org-a", "reader").await;
    let service = app.key("org-a", "service").await;
    let tcp = RawStream::connect(&app.address).await;
    let (mut stream, head) = RawStream::request(tcp, &reader).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    // Delimited by the connection's end: every subscriber gets an event's frame as the same
    // bytes, with no chunk sizes around it.
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert!(!head.to_lowercase().contains("transfer-encoding"), "{head}");
    let retry = String::from_utf8(stream.read_until(b"\n\n").await.unwrap()).unwrap();
    assert!(retry.starts_with("retry: "), "{retry}");
    let event = app.emit(&service, &custom("direct")).await;
    let frame = String::from_utf8(stream.read_until(b"\n\n").await.unwrap()).unwrap();
    assert_eq!(
        frame,
        format!(
            "id: {}\ndata: {}\n\n",
            event["id"].as_str().unwrap(),
            serde_json::to_string(&event).unwrap()
        )
    );

    // A refusal on this path is the contract's JSON, as on actix's.
    let tcp = RawStream::connect(&app.address).await;
    let (mut refused, head) =
        RawStream::request(tcp, "cpk_wrong_key_0123456789abcdefghijklmnop").await;
    assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
    assert!(
        head.to_lowercase().contains("www-authenticate: bearer"),
        "{head}"
    );
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = std::mem::take(&mut refused.buffer);
    while body.len() < length {
        let mut chunk = [0u8; 1024];
        let n = refused.tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the answer was cut");
        body.extend_from_slice(&chunk[..n]);
    }
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["code"], "unauthorized");
    // A bad parameter names it.
    let response = reqwest::Client::new()
        .get(app.url("/v1/events/stream?types=Nope"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["param"], "types");
}

#[tokio::test]
async fn a_stream_asked_for_on_a_keep_alive_connection_after_an_api_request_works() {
    let app = spawn_app().await;
    let reader = app.key("org-a", "reader").await;
    let service = app.key("org-a", "service").await;
    let tcp = after_an_api_request(RawStream::connect(&app.address).await).await;
    let first = RawStream {
        tcp,
        buffer: Vec::new(),
    };
    // The same connection now asks for a stream.
    let (mut stream, head) = RawStream::request(first.tcp, &reader).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let mut published = Vec::new();
    for i in 0..3 {
        published.push(
            app.emit(&service, &custom(&format!("k{i}"))).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(stream.event_ids(3).await, published);
}

#[tokio::test]
async fn a_slow_subscriber_leaves_the_live_path_and_rejoins_it_without_gap_or_duplicate() {
    let dir = TempDir::new().unwrap();
    let broker = BrokerProcess::start(
        dir.path(),
        &[("CPOD_ADMIN_KEY", ADMIN_KEY), ("RUST_LOG", "warn")],
    );
    let service = broker.key(ADMIN_KEY, "service").await;
    let reader = broker.key(ADMIN_KEY, "reader").await;
    // A small receive window: the broker's writes block after a few events.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address: std::net::SocketAddr = broker
        .address
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let tcp = socket.connect(address).await.unwrap();
    let (mut slow, head) = RawStream::request(tcp, &reader).await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let catchups_before = metric(&broker.address, "cpod_stream_catchups_total").await;
    // 3,000 events of ~2 KB, more than the shard keeps (512), while the subscriber reads
    // nothing.
    let blob = "x".repeat(2000);
    let mut published = Vec::new();
    for round in 0..6 {
        let events = (0..500)
            .map(|i| {
                json!({"type": "custom.slow", "resourceId": format!("r{round}-{i}"),
                       "resourceType": "r", "payload": {"blob": blob}})
            })
            .collect();
        published.extend(publish_batch(&broker.address, &service, events).await);
    }
    assert!(
        metric(&broker.address, "cpod_stream_catchups_total").await > catchups_before,
        "the blocked subscriber never left the live path"
    );
    assert_eq!(slow.event_ids(published.len()).await, published);
    assert!(
        metric(&broker.address, "cpod_events_replayed_total").await > 0.0,
        "the catch-up did not read the store"
    );
    // Back on the live path: the next events arrive as they are published.
    for i in 0..5 {
        let id = publish_batch(
            &broker.address,
            &service,
            vec![custom(&format!("after{i}"))],
        )
        .await
        .remove(0);
        assert_eq!(slow.event_ids(1).await, vec![id]);
    }
}

#[tokio::test]
async fn ten_thousand_subscribers_each_get_every_event_once_and_in_order() {
    const SUBSCRIBERS: usize = 10_000;
    let dir = TempDir::new().unwrap();
    let broker = BrokerProcess::start(
        dir.path(),
        &[("CPOD_ADMIN_KEY", ADMIN_KEY), ("RUST_LOG", "warn")],
    );
    let service = broker.key(ADMIN_KEY, "service").await;
    let reader = broker.key(ADMIN_KEY, "reader").await;
    let mut streams = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS / 500 {
        let opened = futures_util::future::join_all((0..500).map(|_| async {
            let tcp = RawStream::connect(&broker.address).await;
            let (mut stream, head) = RawStream::request(tcp, &reader).await;
            assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
            stream.read_until(b"\n\n").await.expect("the retry frame");
            stream
        }))
        .await;
        streams.extend(opened);
    }
    let mut published = publish_batch(
        &broker.address,
        &service,
        (0..5).map(|i| custom(&format!("batch{i}"))).collect(),
    )
    .await;
    for i in 0..5 {
        published.extend(
            publish_batch(
                &broker.address,
                &service,
                vec![custom(&format!("single{i}"))],
            )
            .await,
        );
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let count = published.len();
            tokio::spawn(async move { stream.event_ids(count).await })
        })
        .collect();
    let mut outcomes: HashMap<bool, usize> = HashMap::new();
    for reader in readers {
        let ids = reader.await.unwrap();
        *outcomes.entry(ids == published).or_default() += 1;
    }
    assert_eq!(
        outcomes.get(&true).copied().unwrap_or(0),
        SUBSCRIBERS,
        "subscribers with a gap, a duplicate or a wrong order: {:?}",
        outcomes.get(&false)
    );
}

#[tokio::test]
async fn format_cloudevents_is_written_on_both_stream_paths_and_beside_shared_frames() {
    let app = spawn_app().await;
    let reader = app.key("org-a", "reader").await;
    let service = app.key("org-a", "service").await;
    let path = "/v1/events/stream?format=cloudevents";
    // A fresh connection (served by the shard), an unfiltered cPod one beside it (which takes
    // the shard's shared chunk), and one after an API request on a keep-alive connection
    // (served by actix-web).
    let (mut owned, head) =
        RawStream::request_path(RawStream::connect(&app.address).await, &reader, path).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let (mut cpod, _) = RawStream::request(RawStream::connect(&app.address).await, &reader).await;
    let tcp = after_an_api_request(RawStream::connect(&app.address).await).await;
    let (mut actix, head) = RawStream::request_path(tcp, &reader, path).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    // A batch is one committed group: several events in one fan-out.
    let published = publish_batch(
        &app.address,
        &service,
        (0..3).map(|i| custom(&format!("ce-{i}"))).collect(),
    )
    .await;
    for stream in [&mut owned, &mut actix] {
        let events = stream.events(3).await;
        for ((id, data), expected) in events.iter().zip(&published) {
            assert_eq!(id, expected);
            assert_eq!(data["specversion"], "1.0", "{data}");
            assert_eq!(&data["id"], expected);
            assert_eq!(data["source"], "/organizations/org-a");
        }
        let subjects: Vec<&str> = events
            .iter()
            .map(|(_, data)| data["subject"].as_str().unwrap())
            .collect();
        assert_eq!(subjects, ["thing/ce-0", "thing/ce-1", "thing/ce-2"]);
    }
    let events = cpod.events(3).await;
    for ((id, data), expected) in events.iter().zip(&published) {
        assert_eq!(id, expected);
        assert!(data.get("specversion").is_none(), "{data}");
        assert_eq!(&data["id"], expected);
    }
    // A bad format is refused on the direct path as on actix.
    let (_, head) = RawStream::request_path(
        RawStream::connect(&app.address).await,
        &reader,
        "/v1/events/stream?format=xml",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
}
