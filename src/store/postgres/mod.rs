//! The PostgreSQL store: several broker nodes on one database, one cluster-wide gapless order.
//!
//! - [`writer`]: each node's appends go through one task with group commit; every group is one
//!   READ COMMITTED transaction that takes the cluster-wide append lock (a transaction-scoped
//!   advisory lock), gives its events the positions after the last one, clamps timestamps and
//!   ids to never decrease, decides idempotency under the lock, inserts, `NOTIFY`s and commits.
//!   A commit becomes visible before its lock is released, so once position `p` is visible every
//!   position below it is committed: a reader tailing `position > last` never skips an event.
//! - [`feed`]: each node's sequencer publishes its own commits at once when they follow on from
//!   what it has published, and otherwise (other nodes' commits) reads `position > last` in pages
//!   on each `LISTEN` doorbell, on reconnect and on a short poll; control records (revocations,
//!   endpoint changes, queued deliveries) travel in the `NOTIFY` payload.
//! - Reads use a pool of connections (deadpool-postgres); writes other than appends and key
//!   changes (webhooks, leases, settings) are short transactions on a pooled connection, which
//!   `NOTIFY` what they changed in the same transaction.
//!
//! Several nodes share everything here: migrations run under a session advisory lock, the ticket
//! secret is created once (`INSERT … ON CONFLICT DO NOTHING`, then read), the bootstrap admin key
//! is installed under its own lock, and retention is pruned by one node at a time.

mod feed;
mod schema;
mod webhooks;
mod writer;

#[cfg(test)]
pub(super) mod testing;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::feed::{CommitSender, FEED_CAPACITY};
use super::webhooks::{
    AttemptOutcome, ClaimRequest, DeliveryRecord, DeliveryStatus, DueDelivery, WebhookPatch,
    WebhookRecord,
};
use super::{
    AppendOutcome, AppendRequest, Backend, Change, Clock, Commit, HistoryPage, HistoryQuery,
    IDEMPOTENCY_WINDOW_MS, KeyRecord, NewKey, Order, PostgresUrl, PruneReport, StoreConfig,
    StoreError, StoredEvent,
};
use crate::event::{NewEvent, OrganizationId};
use crate::filter::{Filter, OrgScope};
use crate::trace_context::TraceContext;

/// The advisory lock keys (per database). Arbitrary constants, spelled "cpod" + a number.
pub(super) mod locks {
    /// Held (transaction-scoped) by every transaction that gives out positions.
    pub const APPEND: i64 = 0x6370_6f64_0000_0001;
    /// Held (session-scoped) while the schema is migrated.
    pub const MIGRATE: i64 = 0x6370_6f64_0000_0002;
    /// Tried (transaction-scoped) by a pruning pass: one node prunes at a time.
    pub const PRUNE: i64 = 0x6370_6f64_0000_0003;
    /// Held (transaction-scoped) while the admin key is installed.
    pub const BOOTSTRAP: i64 = 0x6370_6f64_0000_0004;
    /// With the organization's hash (the two-key lock space): one webhook creation at a time
    /// per organization, so the per-organization limit holds across nodes.
    pub const WEBHOOK_CREATION: i32 = 0x6370_6f01;
}

/// The longest a readiness check waits for the database.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// The channel every node `LISTEN`s on; see [`feed`].
const CHANNEL: &str = "cpod_feed";

/// Session settings of every connection: a frozen node cannot hold the append lock (or any row
/// lock) for long, and a waiting one gives up instead of queueing forever.
const SESSION_OPTIONS: &str = "-c statement_timeout=30s -c lock_timeout=10s \
     -c idle_in_transaction_session_timeout=5s";

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if unreachable(&e) {
            tracing::warn!(error = %e, "the database is unreachable");
            StoreError::Unavailable
        } else {
            StoreError::Internal(e.into())
        }
    }
}

/// Whether an error means the database cannot be reached (now), rather than a bad statement.
fn unreachable(e: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // 08: connection exception, 57: operator intervention (shutdown, statement timeout),
        // 53: insufficient resources, 55P03: lock timeout, 25P03: idle-in-transaction timeout.
        return code.starts_with("08")
            || code.starts_with("57")
            || code.starts_with("53")
            || code == "55P03"
            || code == "25P03";
    }
    e.source().is_some_and(|s| s.is::<std::io::Error>())
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Closed => StoreError::Closed,
            other => {
                tracing::warn!(error = %other, "no database connection");
                StoreError::Unavailable
            }
        }
    }
}

/// Checks a `postgres://` or `postgresql://` URL as tokio-postgres reads it; answers why not.
pub(super) fn check_url(raw: &str) -> Result<(), String> {
    let config: tokio_postgres::Config = raw.parse().map_err(|e| {
        if raw.contains("sslmode=verify") {
            "sslmode=verify-ca and verify-full need TLS, which this build does not speak to \
             PostgreSQL; use sslmode=disable or prefer"
                .to_owned()
        } else {
            format!("not a PostgreSQL URL: {e}")
        }
    })?;
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(
            "sslmode=require needs TLS, which this build does not speak to PostgreSQL; \
             use sslmode=disable or prefer"
                .into(),
        );
    }
    if config.get_hosts().is_empty() {
        return Err("the URL names no host".into());
    }
    Ok(())
}

/// Connection settings, and new connections made with them.
#[derive(Clone)]
pub(super) struct Connector {
    config: tokio_postgres::Config,
}

type Connection =
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>;

impl Connector {
    fn new(url: &PostgresUrl) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url
            .as_str()
            .parse()
            .map_err(|e| anyhow::anyhow!("bad PostgreSQL URL: {e}"))?;
        let options = match config.get_options() {
            Some(own) => format!("{SESSION_OPTIONS} {own}"),
            None => SESSION_OPTIONS.to_owned(),
        };
        config.options(options);
        if config.get_application_name().is_none() {
            config.application_name("cpod-events");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A peer that vanished (a cut cable, a frozen VM) is noticed within about 20 s, whether
        // the connection is idle (keepalives) or has data in flight (the user timeout).
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(2)
            .tcp_user_timeout(Duration::from_secs(20));
        Ok(Self { config })
    }

    /// A new connection; any failure to make one means the database is unreachable now.
    async fn connect(&self) -> Result<(tokio_postgres::Client, Connection), StoreError> {
        self.config.connect(NoTls).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot connect to the database");
            StoreError::Unavailable
        })
    }

    /// A connection whose messages are driven by a task of its own (notifications dropped).
    async fn spawn(&self) -> Result<tokio_postgres::Client, StoreError> {
        let (client, connection) = self.connect().await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a database connection ended");
            }
        });
        Ok(client)
    }
}

/// The pool of connections, with a backoff on making new ones: after a failure to connect,
/// requests for a connection are answered `Unavailable` at once for a while (100 ms, doubling
/// to [`MAX_CONNECT_BACKOFF`]) instead of each trying to connect, so that a node does not storm
/// a database that is down or just coming back.
#[derive(Clone)]
pub(super) struct Connections {
    pool: Pool,
    backoff: Arc<Mutex<ConnectBackoff>>,
}

#[derive(Default)]
struct ConnectBackoff {
    failures: u32,
    until: Option<std::time::Instant>,
}

/// The longest a node waits before trying to connect again: also how long readiness may lag
/// behind a database that came back.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(2);

impl Connections {
    fn new(pool: Pool) -> Self {
        Self {
            pool,
            backoff: Arc::default(),
        }
    }

    pub(super) async fn get(&self) -> Result<deadpool_postgres::Client, StoreError> {
        if let Some(until) = self.backoff.lock().expect("backoff lock").until
            && std::time::Instant::now() < until
        {
            return Err(StoreError::Unavailable);
        }
        match self.pool.get().await {
            Ok(client) => {
                let mut backoff = self.backoff.lock().expect("backoff lock");
                if backoff.failures > 0 {
                    tracing::info!("connected to the database again");
                    *backoff = ConnectBackoff::default();
                }
                Ok(client)
            }
            Err(e) => {
                use deadpool_postgres::{PoolError, TimeoutType};
                if matches!(
                    e,
                    PoolError::Backend(_) | PoolError::Timeout(TimeoutType::Create)
                ) {
                    let mut backoff = self.backoff.lock().expect("backoff lock");
                    backoff.failures += 1;
                    let wait = (Duration::from_millis(100) * 2u32.pow(backoff.failures.min(6) - 1))
                        .min(MAX_CONNECT_BACKOFF);
                    backoff.until = Some(std::time::Instant::now() + wait);
                }
                Err(e.into())
            }
        }
    }
}

/// A cheap-clone handle on the PostgreSQL store.
#[derive(Clone)]
pub(super) struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Connections,
    /// This process, as other nodes see it in `NOTIFY` payloads.
    node: Uuid,
    writer: mpsc::Sender<writer::Command>,
    /// Commits made by this node, to the sequencer, in commit order.
    own: mpsc::UnboundedSender<Arc<Commit>>,
    commits: CommitSender,
    retention_ms: i64,
    clock: Clock,
    ticket_secret: [u8; 32],
    tasks: Mutex<Option<(JoinHandle<()>, JoinHandle<()>)>>,
    stop_feed: CancellationToken,
}

impl PostgresStore {
    pub(super) async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let Backend::Postgres { url, pool_size } = &config.backend else {
            unreachable!("opened with a PostgreSQL backend");
        };
        let connector = Connector::new(url)?;
        let mut setup = connector.spawn().await?;
        schema::migrate(&mut setup)
            .await
            .context("cannot migrate the database schema")?;
        let ticket_secret = ensure_secret(&setup, "stream_ticket_secret").await?;
        let last_position: i64 = setup
            .query_one("SELECT coalesce(max(position), 0) FROM events", &[])
            .await?
            .get(0);
        drop(setup);

        let manager = Manager::from_config(
            connector.config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size((*pool_size).max(2))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(5)))
            .wait_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .context("cannot make the connection pool")?;
        let pool = Connections::new(pool);

        let node = Uuid::now_v7();
        let commits = broadcast::channel(FEED_CAPACITY).0;
        let (own, own_commits) = mpsc::unbounded_channel();
        let stop_feed = CancellationToken::new();
        let sequencer = feed::Sequencer::new(
            pool.clone(),
            connector.clone(),
            node,
            commits.clone(),
            last_position,
        );
        let listening = feed::listen(&connector).await?;
        let sequencer = tokio::spawn(sequencer.run(listening, own_commits, stop_feed.clone()));
        let (commands, queue) = mpsc::channel(writer::QUEUE_CAPACITY);
        let writer = writer::Writer::new(connector, node, config.clock.clone(), own.clone());
        let writer = tokio::spawn(writer.run(queue));
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                node,
                writer: commands,
                own,
                commits,
                retention_ms: config.retention_ms,
                clock: config.clock.clone(),
                ticket_secret,
                tasks: Mutex::new(Some((writer, sequencer))),
                stop_feed,
            }),
        })
    }

    pub(super) fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub(super) fn commits(&self) -> broadcast::Receiver<Arc<Commit>> {
        self.inner.commits.subscribe()
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.inner.pool.get().await
    }

    async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> writer::Command,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `work` in a transaction on a pooled connection; what it says it changed is
    /// `NOTIFY`ed in the same transaction and published to this node's feed once committed.
    async fn write<T>(
        &self,
        work: impl AsyncFnOnce(
            &deadpool_postgres::Transaction<'_>,
        ) -> Result<(T, Vec<Change>), StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (value, changes) = work(&tx).await?;
        if !changes.is_empty() {
            let payload = feed::Doorbell::payload(self.inner.node, 0, &changes);
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
                .await?;
        }
        tx.commit().await?;
        if !changes.is_empty() {
            let _ = self.inner.own.send(Arc::new(Commit {
                events: Vec::new(),
                changes,
            }));
        }
        Ok(value)
    }

    // --- events -------------------------------------------------------------------------

    pub(super) async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.command(|reply| writer::Command::Append(request, reply))
            .await
    }

    pub(super) async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        let horizon = self.retention_horizon_ms();
        let client = self.client().await?;
        let floor_ms = query.since_ms.map_or(horizon, |s| s.max(horizon));
        let (low, high) = match (query.order, query.after_position) {
            (Order::Asc, Some(cursor)) => (cursor.saturating_add(1), i64::MAX),
            (Order::Desc, Some(cursor)) => (i64::MIN, cursor),
            (_, None) => (i64::MIN, i64::MAX),
        };
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
            Box::new(floor_ms),
            Box::new(query.until_ms),
            Box::new(low),
            Box::new(high),
            Box::new((query.limit + 1) as i64),
        ];
        // One statement, so one snapshot for the bounds and the page: an event committed
        // between them cannot slip past `until`. Timestamps never decrease with positions, so
        // the first position at or after a time bounds the range (InitPlans: index bounds).
        let mut sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE \
             position >= greatest(coalesce((SELECT position FROM events WHERE ts_ms >= $1 \
               ORDER BY ts_ms, position LIMIT 1), {max}), $3) \
             AND position < least(coalesce((SELECT position FROM events WHERE ts_ms >= $2 \
               ORDER BY ts_ms, position LIMIT 1), {max}), $4)",
            max = i64::MAX
        );
        push_filter(&query.filter, &mut sql, &mut params);
        sql.push_str(match query.order {
            Order::Asc => " ORDER BY position ASC LIMIT $5",
            Order::Desc => " ORDER BY position DESC LIMIT $5",
        });
        let statement = client.prepare_cached(&sql).await?;
        let args: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = client.query(&statement, &args).await?;
        let has_more = rows.len() > query.limit;
        let events = rows
            .iter()
            .take(query.limit)
            .map(|r| event_from_row(r).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HistoryPage {
            last_position: events.last().map(|e| e.position),
            events,
            has_more,
        })
    }

    pub(super) async fn events_after(
        &self,
        position: i64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        let client = self.client().await?;
        events_after(&client, position, i64::MAX, limit).await
    }

    pub(super) async fn last_position(&self) -> Result<i64, StoreError> {
        last_position(&self.client().await?).await
    }

    pub(super) async fn event_json(
        &self,
        id: Uuid,
        scope: OrgScope,
    ) -> Result<Option<Bytes>, StoreError> {
        let horizon = self.retention_horizon_ms();
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT organization_id, json FROM events WHERE id = $1 AND ts_ms >= $2",
            )
            .await?;
        let row = client.query_opt(&statement, &[&id, &horizon]).await?;
        Ok(row
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .filter(|(org, _)| scope.includes(org))
            .map(|(_, json)| Bytes::from(json)))
    }

    pub(super) async fn position_of(
        &self,
        id: Uuid,
        scope: OrgScope,
    ) -> Result<Option<i64>, StoreError> {
        let horizon = self.retention_horizon_ms();
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT position, organization_id FROM events WHERE id = $1 AND ts_ms >= $2",
            )
            .await?;
        let row = client.query_opt(&statement, &[&id, &horizon]).await?;
        Ok(row
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
            .filter(|(_, org)| scope.includes(org))
            .map(|(position, _)| position))
    }

    pub(super) async fn position_before_time(&self, ts_ms: i64) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT coalesce((SELECT position - 1 FROM events WHERE ts_ms >= $1 \
                 ORDER BY ts_ms, position LIMIT 1), (SELECT max(position) FROM events), 0)",
            )
            .await?;
        Ok(client.query_one(&statement, &[&ts_ms]).await?.get(0))
    }

    pub(super) fn retention_horizon_ms(&self) -> i64 {
        self.inner
            .clock
            .now_ms()
            .saturating_sub(self.inner.retention_ms)
    }

    /// One node prunes at a time: a pass that cannot take the prune lock removes nothing.
    pub(super) async fn prune(&self, batch: usize) -> Result<PruneReport, StoreError> {
        let now_ms = self.inner.clock.now_ms();
        let events_before_ms = now_ms - self.inner.retention_ms;
        let idempotency_before_ms = now_ms - IDEMPOTENCY_WINDOW_MS;
        let batch = batch as i64;
        self.write(async |tx| {
            let locked: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&locks::PRUNE])
                .await?
                .get(0);
            if !locked {
                return Ok((PruneReport::default(), Vec::new()));
            }
            // The newest event stays, expired or not (reads hide it): its position, timestamp
            // and id are where the next append starts.
            let events = tx
                .execute(
                    "DELETE FROM events WHERE position IN (SELECT position FROM events \
                     WHERE ts_ms < $1 AND position < (SELECT max(position) FROM events) \
                     ORDER BY ts_ms, position LIMIT $2)",
                    &[&events_before_ms, &batch],
                )
                .await?;
            let idempotency_records = tx
                .execute(
                    "DELETE FROM idempotency WHERE (scope, endpoint, key) IN \
                     (SELECT scope, endpoint, key FROM idempotency WHERE created_ms < $1 \
                      ORDER BY created_ms LIMIT $2)",
                    &[&idempotency_before_ms, &batch],
                )
                .await?;
            // A bucket idle for a second is full again, the same as no bucket.
            tx.execute(
                &format!("DELETE FROM rate_buckets WHERE updated_ms < {DB_NOW_MS} - 60000"),
                &[],
            )
            .await?;
            Ok((
                PruneReport {
                    events: events as usize,
                    idempotency_records: idempotency_records as usize,
                },
                Vec::new(),
            ))
        })
        .await
    }

    // --- keys ---------------------------------------------------------------------------

    pub(super) async fn create_key(
        &self,
        key: NewKey,
        event: Option<NewEvent>,
    ) -> Result<Option<Arc<StoredEvent>>, StoreError> {
        self.command(|reply| writer::Command::CreateKey(key, event, reply))
            .await
    }

    pub(super) async fn revoke_key(
        &self,
        id: Uuid,
        event: Option<NewEvent>,
    ) -> Result<Option<Arc<StoredEvent>>, StoreError> {
        self.command(|reply| writer::Command::RevokeKey(id, event, reply))
            .await
    }

    /// Under the bootstrap lock, so that nodes starting together with the same
    /// `CPOD_ADMIN_KEY` install one key, and nodes starting without one generate one between
    /// them.
    pub(super) async fn bootstrap_admin(
        &self,
        key: NewKey,
        configured: bool,
    ) -> Result<bool, StoreError> {
        let now = self.inner.clock.now_ms();
        self.write(async |tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&locks::BOOTSTRAP])
                .await?;
            let hash = &key.secret_hash[..];
            if configured {
                let revoked = tx
                    .query(
                        "UPDATE api_keys SET revoked_ms = $2 WHERE role = 'admin' \
                         AND source IN ('env', 'generated') AND revoked_ms IS NULL \
                         AND secret_hash <> $1 RETURNING id",
                        &[&hash, &now],
                    )
                    .await?;
                let changes: Vec<Change> = revoked
                    .iter()
                    .map(|r| Change::KeyRevoked(r.get(0)))
                    .collect();
                let active: bool = tx
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM api_keys WHERE secret_hash = $1 \
                         AND revoked_ms IS NULL)",
                        &[&hash],
                    )
                    .await?
                    .get(0);
                if active {
                    return Ok((false, changes));
                }
                // A key revoked earlier and configured again comes back to life.
                tx.execute("DELETE FROM api_keys WHERE secret_hash = $1", &[&hash])
                    .await?;
                insert_key(&**tx, &key, "env").await?;
                return Ok((true, changes));
            }
            let any_admin: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM api_keys WHERE role = 'admin' \
                     AND revoked_ms IS NULL)",
                    &[],
                )
                .await?
                .get(0);
            if any_admin {
                return Ok((false, Vec::new()));
            }
            insert_key(&**tx, &key, "generated").await?;
            Ok((true, Vec::new()))
        })
        .await
    }

    pub(super) async fn active_key_by_hash(
        &self,
        secret_hash: [u8; 32],
    ) -> Result<Option<KeyRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = $1 AND revoked_ms IS NULL"
            ))
            .await?;
        client
            .query_opt(&statement, &[&&secret_hash[..]])
            .await?
            .map(|r| key_from_row(&r))
            .transpose()
    }

    pub(super) async fn active_key(&self, id: Uuid) -> Result<Option<KeyRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND revoked_ms IS NULL"
            ))
            .await?;
        client
            .query_opt(&statement, &[&id])
            .await?
            .map(|r| key_from_row(&r))
            .transpose()
    }

    pub(super) async fn active_keys(
        &self,
        organization: Option<OrganizationId>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_ms IS NULL \
                 AND ($1::text IS NULL OR organization_id = $1) ORDER BY created_ms, id"
            ))
            .await?;
        let org = organization.as_ref().map(OrganizationId::as_str);
        client
            .query(&statement, &[&org])
            .await?
            .iter()
            .map(key_from_row)
            .collect()
    }

    // --- webhooks -----------------------------------------------------------------------

    pub(super) async fn create_webhook(
        &self,
        webhook: WebhookRecord,
        max_per_organization: usize,
    ) -> Result<(), StoreError> {
        self.write(async |tx| {
            // Creations for one organization, on any node, count and insert one at a time.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&locks::WEBHOOK_CREATION, &webhook.organization_id],
            )
            .await?;
            let existing: i64 = tx
                .query_one(
                    "SELECT count(*) FROM webhooks WHERE organization_id = $1",
                    &[&webhook.organization_id],
                )
                .await?
                .get(0);
            if usize::try_from(existing).unwrap_or(usize::MAX) >= max_per_organization {
                return Err(StoreError::LimitReached(max_per_organization));
            }
            webhooks::insert_webhook(tx, &webhook).await?;
            Ok(((), vec![Change::WebhooksChanged]))
        })
        .await
    }

    pub(super) async fn webhook(&self, id: Uuid) -> Result<Option<WebhookRecord>, StoreError> {
        webhooks::get_webhook(&self.client().await?, id, false).await
    }

    pub(super) async fn webhooks(
        &self,
        organization: Option<OrganizationId>,
    ) -> Result<Vec<WebhookRecord>, StoreError> {
        let client = self.client().await?;
        webhooks::list_webhooks(&client, organization.as_ref().map(OrganizationId::as_str)).await
    }

    pub(super) async fn update_webhook(
        &self,
        id: Uuid,
        patch: WebhookPatch,
    ) -> Result<WebhookRecord, StoreError> {
        self.write(async |tx| {
            let updated = webhooks::update_webhook(tx, id, &patch).await?;
            let mut changes = vec![Change::WebhooksChanged];
            if patch.enabled == Some(true) {
                // Deliveries waiting on a disabled endpoint are due again.
                changes.push(Change::DeliveriesQueued);
            }
            Ok((updated, changes))
        })
        .await
    }

    /// Takes the append lock: no append can be between reading the endpoint (to queue a
    /// delivery for it) and committing, so none leaves a delivery behind for a deleted endpoint.
    pub(super) async fn delete_webhook(&self, id: Uuid) -> Result<(), StoreError> {
        self.write(async |tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&locks::APPEND])
                .await?;
            webhooks::delete_webhook(tx, id).await?;
            Ok(((), vec![Change::WebhooksChanged]))
        })
        .await
    }

    pub(super) async fn rotate_webhook_secret(
        &self,
        id: Uuid,
        secret: String,
        previous_expires_ms: i64,
    ) -> Result<WebhookRecord, StoreError> {
        self.write(async |tx| {
            let rotated = webhooks::rotate_secret(tx, id, &secret, previous_expires_ms).await?;
            Ok((rotated, vec![Change::WebhooksChanged]))
        })
        .await
    }

    pub(super) async fn claim_deliveries(
        &self,
        request: ClaimRequest,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        webhooks::claim_deliveries(&self.client().await?, &request).await
    }

    pub(super) async fn record_attempts(
        &self,
        outcomes: Vec<AttemptOutcome>,
    ) -> Result<usize, StoreError> {
        self.write(async |tx| {
            let mut stale = 0;
            let mut disabled = false;
            for outcome in &outcomes {
                if webhooks::record_attempt(tx, outcome).await? {
                    disabled |= outcome.disable.is_some();
                } else {
                    stale += 1;
                }
            }
            let changes = if disabled {
                vec![Change::WebhooksChanged]
            } else {
                Vec::new()
            };
            Ok((stale, changes))
        })
        .await
    }

    pub(super) async fn release_deliveries(
        &self,
        owner: Uuid,
        ids: Vec<Uuid>,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write(async |tx| {
            webhooks::release_leases(tx, owner, &ids).await?;
            Ok(((), vec![Change::DeliveriesQueued]))
        })
        .await
    }

    pub(super) async fn retry_delivery(
        &self,
        webhook_id: Uuid,
        delivery_id: Uuid,
    ) -> Result<(), StoreError> {
        let now = self.inner.clock.now_ms();
        self.write(async |tx| {
            webhooks::retry_delivery(tx, webhook_id, delivery_id, now).await?;
            Ok(((), vec![Change::DeliveriesQueued]))
        })
        .await
    }

    pub(super) async fn deliveries(
        &self,
        webhook_id: Uuid,
        status: Option<DeliveryStatus>,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<(Vec<DeliveryRecord>, bool), StoreError> {
        webhooks::deliveries_page(&self.client().await?, webhook_id, status, before, limit).await
    }

    pub(super) async fn delivery_queue_state(&self) -> Result<(i64, Option<i64>), StoreError> {
        let now = self.inner.clock.now_ms();
        webhooks::queue_state(&self.client().await?, now).await
    }

    // --- settings and operations --------------------------------------------------------

    pub(super) fn ticket_secret(&self) -> [u8; 32] {
        self.inner.ticket_secret
    }

    pub(super) async fn timestamp_after(&self, position: i64) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT ts_ms FROM events WHERE position > $1 ORDER BY position LIMIT 1",
            )
            .await?;
        Ok(client
            .query_opt(&statement, &[&position])
            .await?
            .map(|r| r.get(0)))
    }

    // --- the cluster --------------------------------------------------------------------

    /// Upserts this node's heartbeat and counts the nodes alive, all in the database's clock
    /// (the nodes' clocks may disagree); forgets nodes silent for a day.
    pub(super) async fn heartbeat(&self, node: &str, started_ms: i64) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "WITH now AS (SELECT {DB_NOW_MS} AS ms), \
                 beat AS (INSERT INTO nodes (id, started_ms, heartbeat_ms) \
                   SELECT $1, $2, ms FROM now \
                   ON CONFLICT (id) DO UPDATE SET heartbeat_ms = EXCLUDED.heartbeat_ms), \
                 gone AS (DELETE FROM nodes WHERE heartbeat_ms < (SELECT ms FROM now) - 86400000) \
                 SELECT 1 + count(*) FROM nodes, now \
                 WHERE id <> $1 AND heartbeat_ms > now.ms - $3"
            ))
            .await?;
        let alive: i64 = client
            .query_one(&statement, &[&node, &started_ms, &super::NODE_ALIVE_MS])
            .await?
            .get(0);
        Ok(alive as usize)
    }

    pub(super) async fn deregister(&self, node: &str) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute("DELETE FROM nodes WHERE id = $1", &[&node])
            .await?;
        Ok(())
    }

    /// One statement on the key's bucket row (its lock orders the nodes taking from it):
    /// refill for the time since the last take, in the database's clock, then grant whole
    /// tokens. A new bucket starts full.
    pub(super) async fn take_rate_tokens(
        &self,
        key: Uuid,
        per_second: u32,
        want: u32,
    ) -> Result<super::RateGrant, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "INSERT INTO rate_buckets AS b (key_id, tokens, granted, updated_ms) \
                 SELECT $1, $2::float8 - least($3::int, $2::float8), least($3::int, $2::float8), \
                   {DB_NOW_MS} \
                 ON CONFLICT (key_id) DO UPDATE SET \
                   tokens = {refilled} - least($3::int, floor({refilled})), \
                   granted = least($3::int, floor({refilled}))::int, \
                   updated_ms = greatest(b.updated_ms, EXCLUDED.updated_ms) \
                 RETURNING granted, tokens",
                refilled = "least($2::float8, b.tokens + \
                   greatest(EXCLUDED.updated_ms - b.updated_ms, 0) * $2::float8 / 1000.0)"
            ))
            .await?;
        let row = client
            .query_one(&statement, &[&key, &f64::from(per_second), &(want as i32)])
            .await?;
        let granted: i32 = row.get(0);
        let tokens: f64 = row.get(1);
        let missing = (1.0 - tokens).max(0.0);
        Ok(super::RateGrant {
            granted: granted.max(0) as u32,
            retry_after: Duration::from_secs_f64(missing / f64::from(per_second.max(1))),
        })
    }

    /// Unavailable when the database does not answer within [`PING_TIMEOUT`] (a connection
    /// that went silent is not ready either).
    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        let ping = async {
            let client = self.client().await?;
            client.query_one("SELECT 1", &[]).await?;
            Ok(())
        };
        tokio::time::timeout(PING_TIMEOUT, ping)
            .await
            .unwrap_or(Err(StoreError::Unavailable))
    }

    /// Finishes every queued write, then stops the feed (after publishing what was written).
    pub(super) async fn close(&self) {
        let _ = self.inner.writer.send(writer::Command::Shutdown).await;
        let tasks = self.inner.tasks.lock().expect("tasks lock").take();
        if let Some((writer, sequencer)) = tasks {
            let _ = writer.await;
            self.inner.stop_feed.cancel();
            let _ = sequencer.await;
        }
        self.inner.pool.pool.close();
    }
}

/// The position of the newest event ever committed. The newest event is never pruned, so its
/// position is the high-water mark.
async fn last_position(client: &impl GenericClient) -> Result<i64, StoreError> {
    let statement = client
        .prepare_cached("SELECT coalesce(max(position), 0) FROM events")
        .await?;
    Ok(client.query_one(&statement, &[]).await?.get(0))
}

/// Events with `after < position < before`, oldest first, at most `limit`.
async fn events_after(
    client: &impl GenericClient,
    after: i64,
    before: i64,
    limit: usize,
) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 AND position < $2 \
             ORDER BY position LIMIT $3"
        ))
        .await?;
    client
        .query(&statement, &[&after, &before, &(limit as i64)])
        .await?
        .iter()
        .map(|r| event_from_row(r).map(Arc::new))
        .collect()
}

/// Reads a 32-byte secret setting, made once by whichever node gets there first.
async fn ensure_secret(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<[u8; 32], StoreError> {
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
    client
        .execute(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &&secret[..]],
        )
        .await?;
    let value: Vec<u8> = client
        .query_one("SELECT value FROM settings WHERE name = $1", &[&name])
        .await?
        .get(0);
    <[u8; 32]>::try_from(value.as_slice())
        .map_err(|_| anyhow::anyhow!("the setting {name} is corrupt").into())
}

async fn insert_key(
    client: &impl tokio_postgres::GenericClient,
    key: &NewKey,
    source: &str,
) -> Result<(), StoreError> {
    let record = &key.record;
    client
        .execute(
            "INSERT INTO api_keys (id, organization_id, role, name, source, secret_hash, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &record.id,
                &record.organization_id.as_ref().map(OrganizationId::as_str),
                &record.role.as_str(),
                &record.name,
                &source,
                &&key.secret_hash[..],
                &record.created_ms,
            ],
        )
        .await?;
    Ok(())
}

/// The database's clock in Unix milliseconds, as SQL: one clock for every node.
const DB_NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

const KEY_COLUMNS: &str = "id, organization_id, role, name, created_ms, revoked_ms";

fn key_from_row(row: &tokio_postgres::Row) -> Result<KeyRecord, StoreError> {
    let corrupt =
        |what: &str| StoreError::Internal(anyhow::anyhow!("corrupt api_keys row: {what}"));
    let organization: Option<String> = row.try_get(1)?;
    let role: String = row.try_get(2)?;
    Ok(KeyRecord {
        id: row.try_get(0)?,
        organization_id: organization
            .map(|o| OrganizationId::parse(&o).map_err(|_| corrupt("organization_id")))
            .transpose()?,
        role: role.parse().map_err(|_| corrupt("role"))?,
        name: row.try_get(3)?,
        created_ms: row.try_get(4)?,
        revoked_ms: row.try_get(5)?,
    })
}

const EVENT_COLUMNS: &str = "position, id, organization_id, type, resource_type, resource_id, \
     workspace_id, json, traceparent, tracestate";

fn event_from_row(row: &tokio_postgres::Row) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        position: row.try_get(0)?,
        id: row.try_get(1)?,
        organization_id: row.try_get(2)?,
        event_type: row.try_get(3)?,
        resource_type: row.try_get(4)?,
        resource_id: row.try_get(5)?,
        workspace_id: row.try_get(6)?,
        json: Bytes::from(row.try_get::<_, String>(7)?),
        trace: TraceContext::from_stored(row.try_get(8)?, row.try_get(9)?),
        sse: Default::default(),
    })
}

/// Appends the filter's conditions with their parameters. A glob becomes a `LIKE` pattern:
/// patterns hold only `[a-z0-9_.-]` and `*` (see `filter.rs`), so escaping `_` and mapping `*`
/// to `%` means exactly the contract's glob.
fn push_filter(filter: &Filter, sql: &mut String, params: &mut Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut param = |sql: &mut String, value: Box<dyn ToSql + Sync + Send>| {
        params.push(value);
        sql.push_str(&format!("${}", params.len()));
    };
    if let OrgScope::One(org) = &filter.organization {
        sql.push_str(" AND organization_id = ");
        param(sql, Box::new(org.as_str().to_owned()));
    }
    let match_all = filter
        .types
        .iter()
        .any(|p| p.as_str().bytes().all(|b| b == b'*'));
    if !filter.types.is_empty() && !match_all {
        let (globs, exact): (Vec<&str>, Vec<&str>) = filter
            .types
            .iter()
            .map(|p| p.as_str())
            .partition(|p| p.contains('*'));
        let exact: Vec<String> = exact.into_iter().map(str::to_owned).collect();
        let globs: Vec<String> = globs
            .into_iter()
            .map(|g| g.replace('_', "\\_").replace('*', "%"))
            .collect();
        sql.push_str(" AND (type = ANY(");
        param(sql, Box::new(exact));
        sql.push_str(") OR type LIKE ANY(");
        param(sql, Box::new(globs));
        sql.push_str("))");
    }
    for (column, value) in [
        ("resource_type", &filter.resource_type),
        ("resource_id", &filter.resource_id),
        ("workspace_id", &filter.workspace_id),
    ] {
        if let Some(value) = value {
            sql.push_str(" AND ");
            sql.push_str(column);
            sql.push_str(" = ");
            param(sql, Box::new(value.clone()));
        }
    }
}
