//! What the cluster tests stand on: a fresh PostgreSQL database per test, broker processes (the
//! built `cpod-events` binary on port 0) started on it, stream subscribers (SSE and WebSocket)
//! that record what they receive, a TCP proxy between a node and PostgreSQL that a test can cut,
//! and a webhook receiver that can hold requests open.
//!
//! Each test runs three broker processes; on a 2-core machine several such tests at once would
//! measure the machine, not the broker, so a test holds [`Cluster::slot`] for its whole run.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;
use tokio_postgres::NoTls;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

pub const ADMIN_KEY: &str = "cpk_cluster_admin_key_0123456789abcdefghijk";
pub const ORG: &str = "org-cluster";

/// One cluster test at a time (see the module comment).
static SLOT: Semaphore = Semaphore::const_new(1);

fn server() -> String {
    std::env::var("CPOD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("the test PostgreSQL server at {url} answers: {e}"));
    tokio::spawn(connection);
    client
}

/// A database made for one test, dropped (sessions and all) with it.
pub struct Database {
    name: String,
}

impl Database {
    pub async fn create() -> Database {
        let name = format!("cpod_cluster_{}", uuid::Uuid::new_v4().simple());
        connect(&server())
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("a test database is created");
        Database { name }
    }

    /// Its URL, on the server itself or through a proxy listening on `port`.
    pub fn url(&self, port: Option<u16>) -> String {
        let mut url = url::Url::parse(&server()).expect("a server URL");
        url.set_path(&self.name);
        if let Some(port) = port {
            url.set_host(Some("127.0.0.1")).unwrap();
            url.set_port(Some(port)).unwrap();
        }
        url.to_string()
    }

    /// Ends every session on this database (`pg_terminate_backend`): every node loses its
    /// connections at once, as in a database restart or failover.
    pub async fn terminate_sessions(&self) -> u64 {
        connect(&server())
            .await
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .await
            .expect("the test database's sessions are ended")
            .len() as u64
    }

    /// `host:port` of the PostgreSQL server, for a proxy in front of it.
    pub fn server_address(&self) -> String {
        let url = url::Url::parse(&server()).expect("a server URL");
        format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(5432)
        )
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: block on a runtime of its own, on a thread.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(async {
                    connect(&server())
                        .await
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("cannot drop the test database {}", self.name);
        }
    }
}

/// One broker process.
pub struct Node {
    pub name: String,
    pub address: String,
    child: Child,
    stderr: PathBuf,
}

impl Node {
    /// Starts `cpod-events` on `database_url` with the cluster's admin key and `extra` settings;
    /// answers once it prints where it listens.
    pub fn start(
        name: &str,
        database_url: &str,
        logs: &tempfile::TempDir,
        extra: &[(&str, &str)],
    ) -> Node {
        cpod_events::startup::raise_open_file_limit();
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let stderr = logs.path().join(format!(
            "{name}-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut command = Command::new(env!("CARGO_BIN_EXE_cpod-events"));
        command
            .env_clear()
            .env("CPOD_LISTEN", "127.0.0.1:0")
            .env("CPOD_DATABASE_URL", database_url)
            .env("CPOD_ADMIN_KEY", ADMIN_KEY)
            .env("CPOD_WORKERS", "2")
            .env("CPOD_HEARTBEAT", "1s")
            .env("CPOD_WEBHOOK_ALLOW_PRIVATE", "true")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in extra {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the broker binary starts");
        let stdout = child.stdout.take().unwrap();
        // A thread of its own keeps draining stdout, so the broker never blocks on the pipe.
        let (lines_tx, lines_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let address = loop {
            let line = lines_rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| {
                    panic!(
                        "node {name} did not say where it listens within 60 s:\n{}",
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    )
                });
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.trim().to_owned();
            }
        };
        Node {
            name: name.to_owned(),
            address,
            child,
            stderr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// SIGKILL: no shutdown, no goodbye to the database.
    pub fn kill_hard(&mut self) {
        self.child.kill().expect("SIGKILL is delivered");
        self.child.wait().unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three nodes (or more) on one database, with an HTTP client and the test's slot.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub client: reqwest::Client,
    pub database: Database,
    pub logs: tempfile::TempDir,
    _slot: SemaphorePermit<'static>,
}

impl Cluster {
    /// A fresh database and `count` nodes on it (started one after another, the first one
    /// migrating).
    pub async fn start(count: usize) -> Cluster {
        Self::start_with(count, &[]).await
    }

    pub async fn start_with(count: usize, extra: &[(&str, &str)]) -> Cluster {
        let slot = SLOT.acquire().await.expect("the slot semaphore is open");
        let database = Database::create().await;
        let logs = tempfile::TempDir::new().unwrap();
        let url = database.url(None);
        let nodes = (0..count)
            .map(|i| Node::start(&format!("node-{i}"), &url, &logs, extra))
            .collect();
        Cluster {
            nodes,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            database,
            logs,
            _slot: slot,
        }
    }

    /// Starts one more node on the same database (through `database_url` when given).
    pub fn add_node(&mut self, database_url: Option<&str>, extra: &[(&str, &str)]) -> usize {
        let url = database_url.map_or_else(|| self.database.url(None), str::to_owned);
        let name = format!("node-{}", self.nodes.len());
        self.nodes.push(Node::start(&name, &url, &self.logs, extra));
        self.nodes.len() - 1
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Every node's log, for a failing assertion's message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, tail(&n.log(), 60)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A key of `role` in [`ORG`], made on node `on`; answers the whole answer (`id`, `key`).
    pub async fn create_key(&self, on: usize, role: &str) -> Value {
        let response = self
            .client
            .post(self.node(on).url("/v1/keys"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"organizationId": ORG, "role": role, "name": format!("{role} key")}))
            .send()
            .await
            .unwrap();
        json_of(response, StatusCode::CREATED).await
    }

    pub async fn key(&self, on: usize, role: &str) -> String {
        self.create_key(on, role).await["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Posts one event to node `on`; answers the status, the `Idempotent-Replayed` header and
    /// the body, or the transport error.
    pub async fn post(
        &self,
        on: usize,
        key: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<(StatusCode, bool, Value), reqwest::Error> {
        post_to(
            &self.client,
            &self.node(on).address,
            key,
            body,
            idempotency_key,
        )
        .await
    }

    /// Every test event (`custom.*`: not the broker's own `credential.*`) in history, asked of
    /// node `on`, in the cluster's order (oldest first).
    pub async fn history(&self, on: usize, key: &str) -> Vec<Value> {
        history_of(&self.client, &self.node(on).address, key).await
    }
}

/// The last `lines` lines of a text.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub async fn post_to(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    body: &Value,
    idempotency_key: Option<&str>,
) -> Result<(StatusCode, bool, Value), reqwest::Error> {
    let path = if body.get("events").is_some() {
        "/v1/events/batch"
    } else {
        "/v1/events"
    };
    let mut request = client
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .json(body);
    if let Some(k) = idempotency_key {
        request = request.header("Idempotency-Key", k);
    }
    let response = request.send().await?;
    let status = response.status();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, replayed, body))
}

pub async fn history_of(client: &reqwest::Client, base: &str, key: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/events?limit=1000&types=custom.*");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = json_of(
            client.get(url).bearer_auth(key).send().await.unwrap(),
            StatusCode::OK,
        )
        .await;
        events.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    events.reverse();
    events
}

/// Asserts the status and answers the JSON body.
pub async fn json_of(response: reqwest::Response, expected: StatusCode) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, expected, "body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// An event body; `tag` goes in the resource id so a test can tell events apart.
pub fn event(tag: &str) -> Value {
    json!({"type": "custom.cluster.tested", "resourceId": tag, "resourceType": "thing"})
}

pub fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().expect("an event id").to_owned())
        .collect()
}

/// Asserts that `ids` has no repeat.
pub fn assert_distinct(ids: &[String], what: &str) {
    let mut seen = HashSet::new();
    for id in ids {
        assert!(seen.insert(id), "{what}: {id} appears twice");
    }
}

/// Polls `check` every 50 ms until it holds (true) or `timeout` passes (false).
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a stream subscriber has seen so far.
#[derive(Default)]
struct Seen {
    events: Mutex<Vec<Value>>,
    /// Resets, errors and anything else that is not an event or a heartbeat.
    oddities: Mutex<Vec<String>>,
    heartbeats: AtomicUsize,
    ended: AtomicBool,
}

/// A live stream (SSE or WebSocket) read by a task of its own into a list.
pub struct Subscriber {
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// `GET /v1/events/stream?types=custom.*` (the test events) on `base` with `key` (and
    /// `Last-Event-ID`); answers once the broker answered 200.
    pub async fn sse(base: &str, key: &str, last_event_id: Option<&str>) -> Subscriber {
        Self::sse_at(
            format!("{base}/v1/events/stream?types=custom.*"),
            Some(key),
            last_event_id,
        )
        .await
    }

    /// An SSE stream at `url` (which may carry a `ticket`), with a key or none.
    pub async fn sse_at(url: String, key: Option<&str>, last_event_id: Option<&str>) -> Subscriber {
        let mut request = reqwest::Client::new().get(url);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "the stream opens");
        let seen = Arc::new(Seen::default());
        let task = tokio::spawn(read_sse(response, seen.clone()));
        Subscriber { seen, task }
    }

    /// A WebSocket on `base` authenticated with `key`, with one subscription to
    /// `custom.*` (after `lastEventId`); answers once the broker said `subscribed`.
    pub async fn ws(base: &str, key: &str, last_event_id: Option<&str>) -> Subscriber {
        let mut request = format!("{}/v1/events/ws", base.replacen("http://", "ws://", 1))
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("the upgrade succeeds");
        let mut subscribe =
            json!({"op": "subscribe", "id": "all", "filter": {"types": ["custom.*"]}});
        if let Some(id) = last_event_id {
            subscribe["lastEventId"] = json!(id);
        }
        socket
            .send(Message::text(subscribe.to_string()))
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("an answer to subscribe within 10 s")
                .expect("the socket is open")
                .unwrap();
            if let Message::Text(text) = frame {
                let answer: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(answer, json!({"op": "subscribed", "id": "all"}));
                break;
            }
        }
        let seen = Arc::new(Seen::default());
        let task = tokio::spawn(read_ws(socket, seen.clone()));
        Subscriber { seen, task }
    }

    pub fn events(&self) -> Vec<Value> {
        self.seen.events.lock().unwrap().clone()
    }

    pub fn ids(&self) -> Vec<String> {
        ids(&self.events())
    }

    pub fn oddities(&self) -> Vec<String> {
        self.seen.oddities.lock().unwrap().clone()
    }

    pub fn heartbeats(&self) -> usize {
        self.seen.heartbeats.load(Ordering::Relaxed)
    }

    /// The stream was ended (by the broker or the connection).
    pub fn ended(&self) -> bool {
        self.seen.ended.load(Ordering::Relaxed)
    }

    /// Waits until `count` events arrived; answers whether they did within `timeout`.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> bool {
        eventually(timeout, || async {
            self.seen.events.lock().unwrap().len() >= count
        })
        .await
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_sse(response: reqwest::Response, seen: Arc<Seen>) {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(Ok(chunk)) = body.next().await {
        buffer.push_str(std::str::from_utf8(&chunk).expect("a UTF-8 stream"));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut data, mut kind, mut comment) = (None, None, None, false);
            for line in block.trim_end_matches('\n').split('\n') {
                if line.starts_with(':') {
                    comment = true;
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    kind = Some(v.to_owned());
                }
            }
            match (kind, data) {
                (None, Some(data)) => {
                    let event: Value = serde_json::from_str(&data).expect("JSON data");
                    assert_eq!(event["id"].as_str(), id.as_deref(), "id: is the event's id");
                    seen.events.lock().unwrap().push(event);
                }
                (Some(kind), data) => seen
                    .oddities
                    .lock()
                    .unwrap()
                    .push(format!("event: {kind} {data:?}")),
                (None, None) if comment => {
                    seen.heartbeats.fetch_add(1, Ordering::Relaxed);
                }
                (None, None) => {}
            }
        }
    }
    seen.ended.store(true, Ordering::Relaxed);
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn read_ws(mut socket: Socket, seen: Arc<Seen>) {
    while let Some(Ok(message)) = socket.next().await {
        match message {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["op"] == "event" {
                    seen.events.lock().unwrap().push(frame["event"].clone());
                } else {
                    seen.oddities.lock().unwrap().push(text.to_string());
                }
            }
            Message::Ping(_) => {
                seen.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    seen.ended.store(true, Ordering::Relaxed);
}

/// A TCP proxy in front of PostgreSQL that a test can cut: [`Proxy::cut`] closes every
/// connection through it and refuses new ones (closes them at once) until [`Proxy::restore`].
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    generation: Arc<Mutex<CancellationToken>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let task = tokio::spawn({
            let (cut, generation) = (cut.clone(), generation.clone());
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if cut.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let stop = generation.lock().unwrap().clone();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        }
                    });
                }
            }
        });
        Proxy {
            port,
            cut,
            generation,
            task,
        }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let mut generation = self.generation.lock().unwrap();
        generation.cancel();
        *generation = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.generation.lock().unwrap().cancel();
        self.task.abort();
    }
}
