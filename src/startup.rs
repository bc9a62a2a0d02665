//! Builds the broker from its configuration and runs it until told to stop.
//!
//! [`Application::build`] opens the store, installs the admin key, binds the listener (port 0
//! works) and wires the routes; [`Application::run_until_stopped`] serves until the shutdown
//! token is cancelled, then stops accepting, lets in-flight requests finish, flushes the store
//! and the span exporter (when there is one), and returns.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, web};
use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::Authenticator;
use crate::config::{DatabaseUrl, ServeConfig};
use crate::http::bodies::BodyBudget;
use crate::http::state::{AppState, Limits};
use crate::hub::Hub;
use crate::keys::{KeyRecord, NewKey, Role, generate_key, hash_secret};
use crate::shutdown::Drain;
use crate::spans::SpanExport;
use crate::store::{Backend, Clock, Store, StoreConfig};
use crate::webhooks::WebhookSettings;
use crate::webhooks::worker::Deliverer;

/// How long requests in flight at a shutdown signal get to finish; new ones are answered 503
/// meanwhile, and the listener stays open so that none is refused with its request half sent.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long responses still being written after the drain (bodies to slow clients, streams
/// saying goodbye) get before their connections are closed.
const RESPONSE_TIMEOUT_SECS: u64 = 2;
/// Pooled PostgreSQL connections per node for reads and short writes.
const POSTGRES_POOL_SIZE: usize = 16;

pub struct Application {
    server: Server,
    handle: ServerHandle,
    drain: Drain,
    /// Cancelled when the drain is over: connections then take no more requests.
    stopping: CancellationToken,
    address: SocketAddr,
    store: Store,
    shutdown: CancellationToken,
    generated_admin_key: Option<String>,
    node: crate::cluster::Node,
    /// Everything spawned that runs until shutdown: joined before the store closes.
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// The span exporter, flushed last.
    spans: Option<SpanExport>,
}

impl Application {
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        disable_transparent_huge_pages();
        let (backend, location) = match &config.database_url {
            DatabaseUrl::Sqlite(path) => (
                Backend::Sqlite {
                    path: path.clone(),
                    sync: config.sqlite_sync.into(),
                    readers: 4,
                    min_free_bytes: config.sqlite_min_free_bytes,
                },
                path.display().to_string(),
            ),
            DatabaseUrl::Postgres(url) => (
                Backend::Postgres {
                    url: url.clone(),
                    pool_size: POSTGRES_POOL_SIZE,
                },
                url.redacted(),
            ),
        };
        let store = Store::open(&StoreConfig {
            backend,
            retention_ms: i64::try_from(config.retention.as_millis()).unwrap_or(i64::MAX),
            clock: Clock::system(),
        })
        .await
        .with_context(|| format!("cannot open the store at {location} (CPOD_DATABASE_URL)"))?;
        let generated_admin_key = install_admin_key(&store, config.admin_key.as_deref()).await?;
        let node = crate::cluster::Node {
            id: config
                .node_id
                .clone()
                .unwrap_or_else(|| Uuid::now_v7().to_string()),
            started_ms: store.clock().now_ms(),
        };

        crate::telemetry::prometheus();
        crate::cluster::register(&store, &node)
            .await
            .context("cannot register this node")?;
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        // The feed's followers start where the store is now; the hub publishes from there on.
        let position = store.last_position().await?;
        let hub = Hub::new(shutdown.clone(), position);
        tasks.push((
            "hub",
            tokio::spawn(crate::hub::run(
                hub.clone(),
                store.feed(position),
                store.clone(),
                shutdown.clone(),
            )),
        ));
        let auth = Arc::new(Authenticator::new(store.clone(), config.rate_limit));
        tasks.push((
            "revocations",
            tokio::spawn(crate::auth::follow_revocations(
                auth.clone(),
                store.feed(position),
                shutdown.clone(),
            )),
        ));
        let deliverer = Arc::new(Deliverer::new(WebhookSettings::new(
            config.webhook_retry_schedule.0.clone(),
            config.webhook_allow_private,
            config.webhook_disable_after,
        ))?);
        tasks.push((
            "webhook worker",
            tokio::spawn(crate::webhooks::worker::run(
                store.clone(),
                store.feed(position),
                deliverer.clone(),
                shutdown.clone(),
            )),
        ));
        let drain = Drain::new(shutdown.clone());
        let body_memory = usize::try_from(config.body_memory).unwrap_or(usize::MAX);
        if body_memory < config.max_body_bytes as usize {
            anyhow::bail!(
                "CPOD_BODY_MEMORY ({}) must be at least CPOD_MAX_BODY_BYTES ({})",
                config.body_memory,
                config.max_body_bytes
            );
        }
        tasks.push((
            "cluster",
            tokio::spawn(crate::cluster::run(
                store.clone(),
                hub.clone(),
                auth.clone(),
                node.clone(),
                shutdown.clone(),
            )),
        ));
        let state = web::Data::new(AppState {
            store: store.clone(),
            hub,
            shutdown: shutdown.clone(),
            drain: drain.clone(),
            heartbeat: config.heartbeat,
            auth,
            limits: Limits {
                max_event_bytes: config.max_event_bytes as usize,
                max_body_bytes: config.max_body_bytes as usize,
                max_webhooks_per_organization: config.max_webhooks_per_organization as usize,
                body_timeout: config.body_timeout,
            },
            bodies: BodyBudget::new(
                body_memory,
                BodyBudget::per_key_share(body_memory, config.max_body_bytes as usize),
            ),
            openapi: crate::openapi::document(),
            asyncapi: crate::asyncapi::document(),
            deliverer,
        });

        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("cannot listen on {} (CPOD_LISTEN)", config.listen))?;
        let address = listener.local_addr()?;
        let workers = config
            .workers
            .map(|n| n.get() as usize)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        // Connections stop taking requests only once the drain is over (`stopping`): until
        // then, a request read after the signal gets its 503 (refuse_while_draining).
        let stopping = CancellationToken::new();
        let server = crate::http::connection::serve(
            listener,
            crate::http::connection::ServerSettings {
                workers,
                shutdown_timeout: Duration::from_secs(RESPONSE_TIMEOUT_SECS),
                shutdown: stopping.clone(),
                streams: Some(state.clone()),
            },
            move || {
                App::new()
                    .app_data(state.clone())
                    .wrap(from_fn(crate::http::drain::refuse_while_draining))
                    .wrap(from_fn(crate::telemetry::record_request))
                    .configure(crate::http::configure)
                    .default_service(web::to(crate::error::unknown_route))
            },
        )?;

        tasks.push((
            "retention",
            tokio::spawn(crate::retention::run(
                store.clone(),
                crate::retention::prune_interval(config.retention),
                shutdown.clone(),
            )),
        ));
        let upkeep = shutdown.clone();
        tasks.push((
            "metrics upkeep",
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = upkeep.cancelled() => return,
                        _ = ticker.tick() => crate::telemetry::prometheus().run_upkeep(),
                    }
                }
            }),
        ));
        Ok(Self {
            handle: server.handle(),
            drain,
            stopping,
            server,
            address,
            store,
            shutdown,
            generated_admin_key,
            node,
            tasks,
            spans: None,
        })
    }

    /// Hands the span exporter (made with the log subscriber, whose layer it is) to the
    /// application, which flushes and stops it after everything else has stopped, so that the
    /// spans of the last requests and webhook attempts are exported.
    pub fn exporting_spans(mut self, spans: Option<SpanExport>) -> Self {
        self.spans = spans;
        self
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The admin key made on this start, when `CPOD_ADMIN_KEY` was unset and none existed.
    pub fn generated_admin_key(&self) -> Option<&str> {
        self.generated_admin_key.as_deref()
    }

    /// This node's id in the cluster's registry (`CPOD_NODE_ID`, or generated).
    pub fn node_id(&self) -> &str {
        &self.node.id
    }

    /// The store (demo mode makes its keys through it before serving).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Cancelling this token stops the broker gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled; then answers new requests 503 while the
    /// ones in flight finish, stops accepting, joins every task, and closes the store
    /// (everything acknowledged is durable when this returns).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            server,
            handle,
            drain,
            stopping,
            store,
            shutdown,
            tasks,
            spans,
            ..
        } = self;
        let stopper = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                if !drain.finished(DRAIN_TIMEOUT).await {
                    tracing::warn!(
                        requests = drain.in_flight(),
                        "requests still in flight at the end of the drain"
                    );
                }
                stopping.cancel();
                handle.stop(true).await;
            })
        };
        let served = server.await;
        shutdown.cancel();
        let _ = stopper.await;
        for (name, task) in tasks {
            if let Err(e) = task.await {
                tracing::error!(task = name, error = %e, "a task failed");
            }
        }
        store.close().await;
        if let Some(spans) = spans {
            // Blocks while it exports: off the async threads.
            let _ = tokio::task::spawn_blocking(move || spans.shutdown()).await;
        }
        served.context("the HTTP server failed")
    }
}

/// Installs `CPOD_ADMIN_KEY`, or on a first start without one makes an admin key and returns
/// it so that it can be printed once.
async fn install_admin_key(
    store: &Store,
    configured: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let (secret, hash) = match configured {
        Some(secret) => (secret.to_owned(), hash_secret(secret)),
        None => {
            let generated = generate_key();
            (generated.secret, generated.hash)
        }
    };
    let key = NewKey {
        record: KeyRecord {
            id: Uuid::now_v7(),
            organization_id: None,
            role: Role::Admin,
            name: if configured.is_some() {
                "admin (CPOD_ADMIN_KEY)"
            } else {
                "admin (generated)"
            }
            .into(),
            created_ms: store.clock().now_ms(),
            revoked_ms: None,
        },
        secret_hash: hash,
    };
    let inserted = store
        .bootstrap_admin(key, configured.is_some())
        .await
        .context("cannot install the admin key")?;
    Ok((inserted && configured.is_none()).then_some(secret))
}

/// Raises the open-file limit to its hard maximum: every stream is a socket.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Turns transparent huge pages off for this process. The allocator asks for them on its
/// arenas, and a 2 MiB page is resident as soon as one byte of it is touched: each idle stream's
/// connection buffers, mostly unwritten, then counted in full (measured with `cpod-bench
/// compare --only idle`: 18.2 → 11.8 KB per idle SSE subscriber, 32 → 16 MiB at start; see
/// BENCHMARKS.md). Memory already faulted in keeps its pages.
pub fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes a flag of this process.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if result != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot turn transparent huge pages off"
        );
    }
}
