//! Fresh databases on the local PostgreSQL server, one per test, dropped afterwards. The server
//! is `CPOD_TEST_POSTGRES` (a URL to its maintenance database), by default
//! `postgres://postgres@127.0.0.1:5432/postgres`.

use tokio_postgres::NoTls;

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
