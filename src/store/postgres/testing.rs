//! Fresh databases on the local PostgreSQL server, one per test, dropped afterwards. The server
//! is `CPOD_TEST_POSTGRES` (a URL to its maintenance database), by default
//! `postgres://postgres@127.0.0.1:5432/postgres`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::store::PostgresUrl;

/// A database made for one test; dropped (connections and all) when this is.
pub(crate) struct TestDatabase {
    name: String,
    server: String,
}

fn server() -> String {
    std::env::var("CPOD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

async fn admin(server: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(server, NoTls)
        .await
        .unwrap_or_else(|e| panic!("the test PostgreSQL server at {server} answers: {e}"));
    tokio::spawn(connection);
    client
}

impl TestDatabase {
    pub(crate) async fn create() -> Self {
        let server = server();
        let name = format!("cpod_test_{}", uuid::Uuid::new_v4().simple());
        admin(&server)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("a test database is created");
        Self { name, server }
    }

    /// The URL of this database.
    pub(crate) fn url(&self) -> PostgresUrl {
        let mut url = url::Url::parse(&self.server).expect("a server URL");
        url.set_path(&self.name);
        PostgresUrl::parse(url.as_str()).expect("a PostgreSQL URL")
    }

    /// Lets clients connect to this database, or refuses them (as an unreachable server
    /// would, once their sessions are ended).
    pub(crate) async fn allow_connections(&self, allow: bool) {
        admin(&self.server)
            .await
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
                self.name
            ))
            .await
            .expect("the test database's connections are switched");
    }

    /// Ends every session on this database (a cut connection, as the clients see it).
    pub(crate) async fn terminate_sessions(&self) {
        admin(&self.server)
            .await
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .await
            .expect("the test database's sessions are ended");
    }

    /// A connection to this database, for tests that look under the store.
    pub(crate) async fn connect(&self) -> tokio_postgres::Client {
        admin(self.url().as_str()).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs inside the test's runtime: a thread of its own may block on another.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(async {
                    admin(&server)
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

impl TestDatabase {
    /// The URL of this database through `proxy`.
    pub(crate) fn url_via(&self, proxy: &Proxy) -> PostgresUrl {
        let mut url = url::Url::parse(self.url().as_str()).expect("a database URL");
        url.set_host(Some("127.0.0.1")).expect("a host");
        url.set_port(Some(proxy.port)).expect("a port");
        PostgresUrl::parse(url.as_str()).expect("a PostgreSQL URL")
    }
}

/// A TCP proxy in front of the test server that can go silent (pass no bytes while keeping
/// every socket open, as a network dropping packets looks to a client whose kernel still has
/// buffer space) and cut every connection it carries.
pub(crate) struct Proxy {
    port: u16,
    silent: Arc<AtomicBool>,
    cut: Arc<Mutex<CancellationToken>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub(crate) async fn start() -> Self {
        let server = url::Url::parse(&server()).expect("a server URL");
        let upstream = format!(
            "{}:{}",
            server.host_str().unwrap_or("127.0.0.1"),
            server.port().unwrap_or(5432)
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the proxy");
        let port = listener.local_addr().expect("an address").port();
        let silent = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accept = tokio::spawn({
            let (silent, cut, accepted) = (silent.clone(), cut.clone(), accepted.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::AcqRel);
                    let token = cut.lock().expect("cut lock").clone();
                    tokio::spawn(pipe(client, upstream.clone(), silent.clone(), token));
                }
            }
        });
        Self {
            port,
            silent,
            cut,
            accepted,
            accept,
        }
    }

    /// Connections made through the proxy so far.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }

    /// Stops (or resumes) passing bytes either way.
    pub(crate) fn silence(&self, silent: bool) {
        self.silent.store(silent, Ordering::Release);
    }

    /// Closes every connection made so far.
    pub(crate) fn cut(&self) {
        let mut token = self.cut.lock().expect("cut lock");
        token.cancel();
        *token = CancellationToken::new();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn pipe(
    client: tokio::net::TcpStream,
    upstream: String,
    silent: Arc<AtomicBool>,
    cut: CancellationToken,
) {
    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
        return;
    };
    let (from_client, to_client) = client.into_split();
    let (from_server, to_server) = server.into_split();
    tokio::select! {
        _ = cut.cancelled() => {}
        _ = forward(from_client, to_server, &silent) => {}
        _ = forward(from_server, to_client, &silent) => {}
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: &AtomicBool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    let wait_while_silent = || async {
        while silent.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    loop {
        wait_while_silent().await;
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        wait_while_silent().await;
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
