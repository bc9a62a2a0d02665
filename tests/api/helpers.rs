//! Starting real brokers for tests: in-process on port 0 with a temporary database
//! ([`spawn_app`]), or as a separate `cpod-events` process ([`BrokerProcess`]) where a test must
//! kill or signal it.
//!
//! The same tests run on both backends: this file is compiled into the `api` target (SQLite: a
//! database file in the test's temporary directory) and the `api_postgres` target (a fresh
//! database on the local PostgreSQL server per test directory; see [`postgres`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use cpod_events::config::Cli;
use cpod_events::startup::Application;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub const ADMIN_KEY: &str = "cpk_test_admin_key_0123456789abcdefghijklmnop";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A broker with the default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// A broker with extra command-line settings, e.g. `["--retention", "2s"]`.
pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
    start_in(TempDir::new().expect("a temporary directory"), extra).await
}

/// Whether this test binary runs the suite on PostgreSQL.
pub fn on_postgres() -> bool {
    env!("CARGO_CRATE_NAME") == "api_postgres"
}

/// The database of a test directory: a file in it, or (on PostgreSQL) a database made for it.
pub fn database_url(dir: &Path) -> String {
    if on_postgres() {
        return postgres::database_for(dir);
    }
    format!("sqlite://{}", dir.join("events.db").display())
}

/// Whether the event with this id is still stored (expired or not).
pub async fn event_row_exists(dir: &Path, id: &str) -> bool {
    let uuid = uuid::Uuid::parse_str(id).unwrap();
    if on_postgres() {
        let (client, connection) =
            tokio_postgres::connect(&postgres::database_for(dir), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        let row = client
            .query_one("SELECT count(*) FROM events WHERE id = $1", &[&uuid])
            .await
            .unwrap();
        return row.get::<_, i64>(0) > 0;
    }
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("events.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let count: i64 = conn
        .query_row(
            "SELECT count(*) FROM events WHERE id = ?1",
            [uuid.as_bytes()],
            |r| r.get(0),
        )
        .unwrap();
    count > 0
}

/// Fresh PostgreSQL databases for test directories, on the local server
/// (`CPOD_TEST_POSTGRES`, by default `postgres://postgres@127.0.0.1:5432/postgres`).
///
/// A database belongs to a directory, so a test that restarts its broker on the same directory
/// finds its data again. It is dropped once its directory is gone (the test has ended; checked
/// whenever another database is made) or when the test process exits.
pub mod postgres {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, Once};

    static DATABASES: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);

    fn server() -> String {
        std::env::var("CPOD_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    /// Runs SQL on the server's maintenance database, from a thread of its own (callers may be
    /// inside a runtime, or in `atexit`).
    fn on_server(sql: String) {
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let (client, connection) =
                        tokio_postgres::connect(&server(), tokio_postgres::NoTls)
                            .await
                            .unwrap_or_else(|e| {
                                panic!("the test PostgreSQL server at {} answers: {e}", server())
                            });
                    tokio::spawn(connection);
                    client.batch_execute(&sql).await
                })
        })
        .join()
        .expect("the server thread ends")
        .expect("the server runs the statement");
    }

    fn drop_database(name: &str) {
        on_server(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    }

    extern "C" fn drop_all() {
        let names: Vec<String> = DATABASES
            .lock()
            .map(|mut d| d.take().unwrap_or_default().into_values().collect())
            .unwrap_or_default();
        for name in names {
            drop_database(&name);
        }
    }

    #[allow(dead_code)] // the api_postgres target's
    /// The name of the database of `dir`.
    fn name_for(dir: &Path) -> String {
        let url = url::Url::parse(&database_for(dir)).unwrap();
        url.path().trim_start_matches('/').to_owned()
    }

    #[allow(dead_code)] // the api_postgres target's
    /// Ends every session on the database of `dir` (a cut connection, as the brokers see it).
    pub fn terminate_sessions(dir: &Path) {
        on_server(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            name_for(dir)
        ));
    }

    #[allow(dead_code)] // the api_postgres target's
    /// Lets clients connect to the database of `dir`, or refuses them as an unreachable server
    /// would (with [`terminate_sessions`], every broker on it loses its database).
    pub fn allow_connections(dir: &Path, allow: bool) {
        on_server(format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
            name_for(dir)
        ));
    }

    /// The URL of the database of `dir`, made on first use.
    pub fn database_for(dir: &Path) -> String {
        static AT_EXIT: Once = Once::new();
        AT_EXIT.call_once(|| {
            // SAFETY: registers a plain function to run at process exit.
            unsafe { libc::atexit(drop_all) };
        });
        let (name, gone) = {
            let mut databases = DATABASES.lock().unwrap();
            let databases = databases.get_or_insert_with(HashMap::new);
            let gone: Vec<String> = databases
                .iter()
                .filter(|(path, _)| !path.exists())
                .map(|(_, name)| name.clone())
                .collect();
            databases.retain(|path, _| path.exists());
            match databases.get(dir) {
                Some(name) => (name.clone(), gone),
                None => {
                    let name = format!("cpod_test_{}", uuid::Uuid::new_v4().simple());
                    on_server(format!("CREATE DATABASE {name}"));
                    databases.insert(dir.to_owned(), name.clone());
                    (name, gone)
                }
            }
        };
        for name in gone {
            drop_database(&name);
        }
        let mut url = url::Url::parse(&server()).unwrap();
        url.set_path(&name);
        url.to_string()
    }
}

#[allow(dead_code)] // the api_postgres target's
/// Another node on the database of `database_dir` (PostgreSQL: several nodes may share it),
/// with a temporary directory of its own.
pub async fn spawn_node(database_dir: &Path, extra: &[&str]) -> TestApp {
    let url = database_url(database_dir);
    start_on(&url, TempDir::new().expect("a temporary directory"), extra).await
}

async fn start_in(dir: TempDir, extra: &[&str]) -> TestApp {
    let url = database_url(dir.path());
    start_on(&url, dir, extra).await
}

async fn start_on(url: &str, dir: TempDir, extra: &[&str]) -> TestApp {
    cpod_events::startup::raise_open_file_limit();
    let mut args = vec![
        "cpod-events",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        url,
        "--admin-key",
        ADMIN_KEY,
        "--workers",
        "2",
    ];
    args.extend_from_slice(extra);
    let config = Cli::try_parse_from(args)
        .expect("valid test settings")
        .into_serve();
    let app = Application::build(config).await.expect("the broker starts");
    let address = format!("http://{}", app.address());
    let shutdown = app.shutdown_token();
    let running = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        // A request that never ends fails the test instead of hanging it (streams are read
        // through their own clients).
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        dir,
        shutdown,
        running,
    }
}

impl TestApp {
    /// Stops the broker gracefully and starts a new one on the same database.
    pub async fn restart(self, extra: &[&str]) -> TestApp {
        let dir = self.stop().await;
        start_in(dir, extra).await
    }

    /// Stops the broker gracefully, keeping its database directory.
    pub async fn stop(self) -> TempDir {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.running)
            .await
            .expect("the broker stops within 30 s")
            .expect("the broker task ends")
            .expect("the broker stops cleanly");
        self.dir
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn get(&self, key: &str, path: &str) -> RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(key)
    }

    pub fn post_json(&self, key: &str, path: &str, body: &Value) -> RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(key).json(body)
    }

    /// Creates a key with the admin key and answers its secret.
    pub async fn key(&self, organization: &str, role: &str) -> String {
        let response = self
            .post_json(
                ADMIN_KEY,
                "/v1/keys",
                &json!({"organizationId": organization, "role": role, "name": format!("{role} key")}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        body["key"].as_str().unwrap().to_owned()
    }

    /// Creates a key of `role` with the key `creator` (its own organization); answers the
    /// whole answer: `id`, `key`, …
    pub async fn created_key(&self, creator: &str, role: &str, name: &str) -> Value {
        let body = json!({"role": role, "name": name});
        json_of(
            self.post_json(creator, "/v1/keys", &body)
                .send()
                .await
                .unwrap(),
            StatusCode::CREATED,
        )
        .await
    }

    /// Revokes a key made by [`TestApp::created_key`], with `by`.
    pub async fn revoke(&self, by: &str, created: &Value) {
        let path = format!("/v1/keys/{}", created["id"].as_str().unwrap());
        json_of(
            self.client
                .delete(self.url(&path))
                .bearer_auth(by)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
    }

    /// Posts one event and answers it as stored (asserting a 201).
    pub async fn emit(&self, key: &str, event: &Value) -> Value {
        let response = self
            .post_json(key, "/v1/events", event)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Every event of a history query, following cursors.
    pub async fn history_all(&self, key: &str, query: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/events?limit=1000&{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = json_of(self.get(key, &path).send().await.unwrap(), StatusCode::OK).await;
            events.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return events,
            }
        }
    }
}

/// A custom event body.
pub fn custom(resource_id: &str) -> Value {
    json!({"type": "custom.test.happened", "resourceId": resource_id, "resourceType": "thing"})
}

/// Asserts the status and answers the JSON body.
pub async fn json_of(response: Response, expected: StatusCode) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, expected, "body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts a contract error with this status, code and (when given) param.
pub async fn assert_error(
    response: Response,
    status: StatusCode,
    code: &str,
    param: Option<&str>,
) -> Value {
    let body = json_of(response, status).await;
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    if let Some(param) = param {
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    body
}

/// Polls `check` until it holds or `timeout` passes.
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

/// The broker as a separate process, for kill -9, signals and what it prints.
pub struct BrokerProcess {
    pub child: Child,
    pub address: String,
    /// Every line printed on stdout up to and including the "listening" line.
    pub banner: Vec<String>,
    pub stderr_path: PathBuf,
}

impl BrokerProcess {
    pub fn start(data_dir: &Path, envs: &[(&str, &str)]) -> BrokerProcess {
        cpod_events::startup::raise_open_file_limit();
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let stderr_path = data_dir.join(format!(
            "stderr-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_cpod-events"));
        command
            .env_clear()
            .env("CPOD_LISTEN", "127.0.0.1:0")
            .env("CPOD_DATABASE_URL", database_url(data_dir))
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the broker binary starts");
        let stdout = child.stdout.take().unwrap();
        // Lines are read on a thread of their own (which keeps draining stdout afterwards, so the
        // broker never blocks on a full pipe); a broker that never says where it listens fails
        // the test after 30 s instead of hanging it.
        let (lines_tx, lines_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let mut banner = Vec::new();
        let address = loop {
            let line = lines_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the broker prints its address within 30 s");
            banner.push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.trim().to_owned();
            }
        };
        BrokerProcess {
            child,
            address,
            banner,
            stderr_path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Creates a key of `role` in organization `org-a` with `admin`; answers its secret.
    pub async fn key(&self, admin: &str, role: &str) -> String {
        let response = reqwest::Client::new()
            .post(self.url("/v1/keys"))
            .bearer_auth(admin)
            .json(&json!({"organizationId": "org-a", "role": role, "name": format!("{role} key")}))
            .send()
            .await
            .unwrap();
        json_of(response, StatusCode::CREATED).await["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn kill_hard(&mut self) {
        self.child.kill().expect("SIGKILL is delivered");
        self.child.wait().unwrap();
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Server-Sent Events message (or comment) as a client sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comment: Option<String>,
}

impl SseMessage {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("a data line")).expect("JSON data")
    }
}

/// A minimal SSE client over reqwest: enough to check framing byte for byte.
pub struct SseClient {
    pub response_headers: reqwest::header::HeaderMap,
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl SseClient {
    /// Opens `path` (with its query) with a key, or with nothing when `key` is empty.
    pub async fn open(
        app_url: &str,
        key: &str,
        path: &str,
        last_event_id: Option<&str>,
    ) -> SseClient {
        let mut request = reqwest::Client::new().get(format!("{app_url}{path}"));
        if !key.is_empty() {
            request = request.bearer_auth(key);
        }
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        if status != StatusCode::OK {
            panic!(
                "stream refused: {status} {}",
                response.text().await.unwrap()
            );
        }
        SseClient {
            response_headers: response.headers().clone(),
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next message or comment, or `None` when the stream ends or `timeout` passes.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseMessage> {
        use futures_util::StreamExt;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return Some(parse_block(block.trim_end_matches('\n')));
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self
                    .buffer
                    .push_str(std::str::from_utf8(&chunk).expect("UTF-8 stream")),
                Ok(Some(Err(_))) | Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The next message that carries an event (skipping `retry:` and comments).
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseMessage> {
        loop {
            let message = self.next(timeout).await?;
            if message.data.is_some() {
                return Some(message);
            }
        }
    }

    /// Reads `count` event messages (panics on a timeout).
    pub async fn events(&mut self, count: usize) -> Vec<SseMessage> {
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            match self.next_event(Duration::from_secs(20)).await {
                Some(m) => events.push(m),
                None => panic!(
                    "the stream stopped after {} of {count} events",
                    events.len()
                ),
            }
        }
        events
    }
}

fn parse_block(block: &str) -> SseMessage {
    let mut message = SseMessage::default();
    for line in block.split('\n') {
        if let Some(comment) = line.strip_prefix(':') {
            message.comment = Some(comment.trim().to_owned());
        } else if let Some((field, value)) = line.split_once(": ") {
            match field {
                "id" => message.id = Some(value.to_owned()),
                "event" => message.event = Some(value.to_owned()),
                "data" => {
                    assert!(message.data.is_none(), "more than one data line: {block}");
                    message.data = Some(value.to_owned());
                }
                "retry" => message.retry = Some(value.parse().expect("retry is a number")),
                other => panic!("unexpected SSE field {other}: {block}"),
            }
        } else {
            panic!("unparseable SSE line {line:?} in {block:?}");
        }
    }
    message
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A virtual environment `target/<name>` with PyPI `packages`, made on first use: its `bin/`.
/// `installed` tells from `bin/` whether the packages are there (and the right ones). Where
/// they cannot be installed (no network) the answer says why: tests then skip, outside CI.
pub fn python_venv(
    name: &str,
    packages: &[&str],
    installed: impl Fn(&Path) -> bool,
) -> Result<PathBuf, String> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name);
    let bin = venv.join("bin");
    if installed(&bin) {
        return Ok(bin);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .map_err(|e| format!("python3 -m venv: {e}"))?;
    if !made.success() {
        return Err("python3 -m venv failed".into());
    }
    let output = Command::new(bin.join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(packages)
        .output()
        .map_err(|e| format!("pip: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "pip install {} failed:\n{}",
            packages.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    if !installed(&bin) {
        return Err(format!(
            "{} do not run after their installation",
            packages.join(" ")
        ));
    }
    Ok(bin)
}

/// Whether `python` imports `modules` (a comma-separated list).
pub fn python_imports(python: &Path, modules: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs a Python `script` with the JSON `input` on stdin; answers its JSON output (panics,
/// with Python's stderr, if it fails).
pub fn run_python(python: &Path, script: &str, input: &Value) -> Value {
    use std::io::Write;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// A Python with the `standardwebhooks` package (PyPI), in a virtual environment under
/// `target/`, made on first use (once per test process).
pub fn standardwebhooks_python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            python_venv(
                "pyenv-standardwebhooks",
                &["standardwebhooks==1.0.1"],
                |bin| python_imports(&bin.join("python"), "standardwebhooks"),
            )
            .expect("standardwebhooks from PyPI")
            .join("python")
        })
        .clone()
}
