//! The SQLite store: one writer thread with group commit, a pool of read-only connections.
//!
//! The writer takes the first command off its queue, then every command already waiting (up
//! to [`MAX_GROUP`]), applies them all in one `BEGIN IMMEDIATE` transaction, commits once (one
//! fsync for the group), and only
//! then answers each caller. Idempotency is decided inside the writer, so two identical requests
//! racing each other are serialized here and can never both store events. After each commit the
//! writer sends the group's events and changes to the feed ([`super::feed`]), in position order.
//!
//! Positions come from `AUTOINCREMENT`, which never reuses a committed position (even after the
//! newest event is pruned); a rolled-back group's positions are given again, but nothing of it
//! was answered or published. Only one broker process uses a SQLite database.

mod migrations;
mod space;
mod webhooks;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use uuid::Uuid;

use super::append::{batch_body, next_event_id};
use super::feed::{CommitSender, FEED_CAPACITY};
use super::webhooks::{
    AttemptOutcome, ClaimRequest, DeliveryRecord, DeliveryStatus, DueDelivery, WebhookPatch,
    WebhookRecord,
};
use super::{
    AppendOutcome, AppendRequest, Backend, Change, Clock, Commit, HistoryPage, HistoryQuery,
    IDEMPOTENCY_WINDOW_MS, KeyRecord, NewKey, Order, PruneReport, StoreConfig, StoreError,
    StoredEvent, SyncMode,
};
use crate::event::{NewEvent, OrganizationId};
use crate::filter::{Filter, OrgScope};
use crate::trace_context::TraceContext;
use migrations::migrate;
use space::Space;
use webhooks::WebhookMatchers;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            return StoreError::StorageFull;
        }
        StoreError::Internal(e.into())
    }
}

/// Why a group's transaction was rolled back: what each of its commands is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupFailure {
    /// The disk is full: `StorageFull`, and writes are refused until space is back.
    Full,
    /// Anything else: an internal error (the cause is logged once, by the writer).
    Other,
}

impl GroupFailure {
    fn error(self) -> StoreError {
        match self {
            GroupFailure::Full => StoreError::StorageFull,
            GroupFailure::Other => StoreError::Internal(anyhow::anyhow!("the commit failed")),
        }
    }
}

/// Errors that roll back the whole group: the transaction may be gone with them.
fn fails_the_group(e: &StoreError) -> bool {
    matches!(e, StoreError::Internal(_) | StoreError::StorageFull)
}

/// The most commands one transaction takes, so one commit never grows without bound.
const MAX_GROUP: usize = 512;
/// Capacity of the writer's queue; callers wait (back-pressure) when it is full.
const QUEUE_CAPACITY: usize = 8192;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Command {
    Append(AppendRequest, Reply<AppendOutcome>),
    CreateKey(NewKey, Option<NewEvent>, Reply<Option<Arc<StoredEvent>>>),
    RevokeKey(Uuid, Option<NewEvent>, Reply<Option<Arc<StoredEvent>>>),
    BootstrapAdmin {
        key: NewKey,
        configured: bool,
        reply: Reply<bool>,
    },
    Prune {
        events_before_ms: i64,
        idempotency_before_ms: i64,
        batch: usize,
        reply: Reply<PruneReport>,
    },
    /// A write of another module (webhooks), run inside the group's transaction.
    Job(Job),
    Shutdown,
}

/// A write job: runs in the group's transaction; its answer is sent after the commit.
type Job = Box<dyn FnOnce(&mut WriteContext<'_>) -> (Finished, Option<StoreError>) + Send>;

/// What a write job sees: the connection, inside the group's transaction, and the changes the
/// job made that the feed must carry.
struct WriteContext<'a> {
    conn: &'a Connection,
    changes: Vec<Change>,
    clock: &'a Clock,
}

impl WriteContext<'_> {
    /// Says that webhook endpoints changed, so new events are matched against them at once and
    /// the feed tells every consumer.
    fn webhooks_changed(&mut self) {
        self.changes.push(Change::WebhooksChanged);
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

/// A cheap-clone handle on the SQLite store.
#[derive(Clone)]
pub(super) struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::Sender<Command>,
    readers: ReaderPool,
    retention_ms: i64,
    clock: Clock,
    ticket_secret: [u8; 32],
    commits: CommitSender,
    writer: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>>,
    /// Free space on the database's disk: writes are refused while it is low.
    space: Arc<Space>,
}

/// WAL size (in 4 KiB pages) at which the writer checkpoints and the WAL restarts: 16 MiB.
const WRITER_CHECKPOINT_PAGES: i32 = 4096;

/// WAL size (in pages) at which the checkpointer copies the WAL back into the database: 8 MiB.
const BACKGROUND_CHECKPOINT_PAGES: i32 = 2048;

/// How often the checkpointer looks at the WAL.
const CHECKPOINT_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// The longest a commit waits to be checkpointed when the WAL stays small.
const CHECKPOINT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(10);

/// The WAL as the writer leaves it after each commit (from SQLite's WAL hook).
#[derive(Default)]
struct WalState {
    /// Frames in the WAL.
    pages: std::sync::atomic::AtomicI32,
    /// Commits so far.
    commits: std::sync::atomic::AtomicU64,
}

/// Installs the writer's WAL hook: it records the WAL's size for the checkpointer and, as
/// `wal_autocheckpoint` would (the hook replaces it), checkpoints on the writer once the WAL
/// passes [`WRITER_CHECKPOINT_PAGES`], which bounds the WAL if the checkpointer falls behind.
fn watch_wal(conn: &mut Connection, wal: Arc<WalState>) -> rusqlite::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    conn.wal_hook(Some(move |log: &mut rusqlite::hooks::Wal, pages: i32| {
        wal.pages.store(pages, Relaxed);
        wal.commits.fetch_add(1, Relaxed);
        // Busy: the checkpointer is at it already, which is as good.
        if pages >= WRITER_CHECKPOINT_PAGES
            && let Err(e) = log.checkpoint()
            && e.sqlite_error_code() != Some(rusqlite::ErrorCode::DatabaseBusy)
            && e.sqlite_error_code() != Some(rusqlite::ErrorCode::DatabaseLocked)
        {
            tracing::warn!(error = %e, "WAL checkpoint by the writer failed");
        }
        Ok(())
    }))
}

/// Checkpoints the WAL from its own connection and thread, so that the writer seldom stalls on
/// copying pages and fsyncing the database file. A PASSIVE checkpoint never blocks the writer or
/// readers. It runs once the WAL holds [`BACKGROUND_CHECKPOINT_PAGES`], or once a commit has waited
/// [`CHECKPOINT_MAX_AGE`]: each checkpoint fsyncs the database file beside the writer's WAL
/// fsyncs, so at light load one every 10 s rather than two a second (the period this replaced).
/// Rare 30–250 ms commits at light load (`cpod_store_commit_seconds`) remained after the change:
/// the disk's own fsync latency (BENCHMARKS.md).
///
/// While the disk is low on space (writes refused, see [`space`]), it checkpoints and truncates
/// the WAL on every poll instead, giving the WAL's space back, and measures again: a checkpoint
/// that failed for want of space succeeds at the first poll after space is freed.
fn run_checkpointer(
    conn: Connection,
    wal: Arc<WalState>,
    space: Arc<Space>,
    stop: std::sync::mpsc::Receiver<()>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut checkpointed_commits = 0;
    let mut last = Instant::now();
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_POLL) {
        if space.is_low() {
            let done: rusqlite::Result<i64> =
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0));
            match done {
                Ok(0) => {
                    wal.pages.store(0, Relaxed);
                    tracing::debug!("disk low: the WAL is checkpointed and truncated");
                }
                Ok(_) => tracing::debug!("disk low: the WAL checkpoint was blocked; retrying"),
                Err(e) => {
                    tracing::debug!(error = %e, "disk low: the WAL checkpoint failed; retrying")
                }
            }
            space.measure();
            continue;
        }
        let commits = wal.commits.load(Relaxed);
        let due = wal.pages.load(Relaxed) >= BACKGROUND_CHECKPOINT_PAGES
            || last.elapsed() >= CHECKPOINT_MAX_AGE;
        if commits == checkpointed_commits || !due {
            continue;
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
            continue;
        }
        checkpointed_commits = commits;
        last = Instant::now();
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database, migrates it and starts the writer thread.
    /// Blocking: call it off the async threads.
    pub(super) fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let Backend::Sqlite {
            path,
            sync,
            readers,
            min_free_bytes,
        } = &config.backend
        else {
            unreachable!("opened with a SQLite backend");
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        }
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open the database {}", path.display()))?;
        let journal: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !journal.eq_ignore_ascii_case("wal") {
            return Err(anyhow::anyhow!("the database refused WAL mode (got {journal})").into());
        }
        let synchronous = match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
            SyncMode::Off => "OFF",
        };
        conn.pragma_update(None, "synchronous", synchronous)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // 8 MiB: appends touch few pages; a larger cache only grows the process.
        conn.pragma_update(None, "cache_size", -8_000)?;
        migrate(&mut conn).context("cannot migrate the database schema")?;
        // One process per database: a lease left in it is a dead process's, and its deliveries
        // are due again at once.
        webhooks::release_all_leases(&conn)?;
        // The checkpointer thread keeps the WAL backfilled; the writer checkpoints only when the
        // WAL passes WRITER_CHECKPOINT_PAGES, which then costs it little (most pages are already
        // copied) and lets the WAL restart from its beginning, bounding its size under load.
        let wal = Arc::new(WalState::default());
        watch_wal(&mut conn, wal.clone())?;

        let checkpoint_conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        checkpoint_conn.busy_timeout(std::time::Duration::from_secs(5))?;
        checkpoint_conn.pragma_update(None, "synchronous", synchronous)?;
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let space = Arc::new(Space::new(
            path,
            *min_free_bytes,
            wal.clone(),
            page_size.max(512) as u64,
        ));
        space.measure();
        let (stop_checkpoints, checkpoint_stop) = std::sync::mpsc::channel();
        let checkpointer = {
            let space = space.clone();
            std::thread::Builder::new()
                .name("cpod-store-checkpoint".into())
                .spawn(move || run_checkpointer(checkpoint_conn, wal, space, checkpoint_stop))
                .context("cannot start the checkpoint thread")?
        };

        let ticket_secret = ensure_secret(&conn, "stream_ticket_secret")?;
        let readers = ReaderPool::open(path, (*readers).max(1))?;
        let (commands, queue) = mpsc::channel(QUEUE_CAPACITY);
        let commits = broadcast::channel(FEED_CAPACITY).0;
        let writer = Writer::new(conn, commits.clone(), config, space.clone())?;
        let handle = std::thread::Builder::new()
            .name("cpod-store-writer".into())
            .spawn(move || writer.run(queue))
            .context("cannot start the store writer thread")?;
        Ok(Self {
            inner: Arc::new(Inner {
                commands,
                readers,
                retention_ms: config.retention_ms,
                clock: config.clock.clone(),
                ticket_secret,
                commits,
                writer: Mutex::new(Some(handle)),
                checkpointer: Mutex::new(Some((stop_checkpoints, checkpointer))),
                space,
            }),
        })
    }

    pub(super) fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// A new receiver of the commits published from now on.
    pub(super) fn commits(&self) -> broadcast::Receiver<Arc<Commit>> {
        self.inner.commits.subscribe()
    }

    /// Sends a write to the writer and waits for its answer; refused at once while the disk is
    /// low on space.
    async fn command<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        if self.inner.space.is_low() {
            return Err(StoreError::StorageFull);
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        // A command dropped unanswered: the writer stopped, or a group failed before reaching
        // it (the disk filled up).
        answer.await.map_err(|_| {
            if self.inner.space.is_low() {
                StoreError::StorageFull
            } else {
                StoreError::Closed
            }
        })?
    }

    /// Runs `work` in the writer, inside a group's transaction, and answers its result once
    /// committed. A `StoreError::Internal` from `work` undoes it alone (a savepoint), a
    /// `StorageFull` the whole group; the changes it reported reach the feed only if it
    /// succeeded.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteContext<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.command(|reply| {
            Command::Job(Box::new(move |context| {
                let result = work(context);
                let (result, failure) = match result {
                    Err(StoreError::Internal(e)) => (
                        Err(StoreError::Internal(anyhow::anyhow!("the commit failed"))),
                        Some(StoreError::Internal(e)),
                    ),
                    Err(StoreError::StorageFull) => {
                        (Err(StoreError::StorageFull), Some(StoreError::StorageFull))
                    }
                    other => (other, None),
                };
                let answer: Box<dyn FnOnce(Option<GroupFailure>) + Send> =
                    Box::new(move |failure: Option<GroupFailure>| {
                        let _ = reply.send(match failure {
                            Some(failure) => Err(failure.error()),
                            None => result,
                        });
                    });
                (Finished::Job(answer), failure)
            }))
        })
        .await
    }

    /// Runs `work` on a read-only connection.
    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.readers.read(work).await
    }

    pub(super) async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.command(|reply| Command::Append(request, reply)).await
    }

    pub(super) async fn create_key(
        &self,
        key: NewKey,
        event: Option<NewEvent>,
    ) -> Result<Option<Arc<StoredEvent>>, StoreError> {
        self.command(|reply| Command::CreateKey(key, event, reply))
            .await
    }

    pub(super) async fn revoke_key(
        &self,
        id: Uuid,
        event: Option<NewEvent>,
    ) -> Result<Option<Arc<StoredEvent>>, StoreError> {
        self.command(|reply| Command::RevokeKey(id, event, reply))
            .await
    }

    pub(super) async fn bootstrap_admin(
        &self,
        key: NewKey,
        configured: bool,
    ) -> Result<bool, StoreError> {
        self.command(|reply| Command::BootstrapAdmin {
            key,
            configured,
            reply,
        })
        .await
    }

    pub(super) async fn prune(&self, batch: usize) -> Result<PruneReport, StoreError> {
        let now_ms = self.inner.clock.now_ms();
        let events_before_ms = now_ms - self.inner.retention_ms;
        let idempotency_before_ms = now_ms - IDEMPOTENCY_WINDOW_MS;
        self.command(|reply| Command::Prune {
            events_before_ms,
            idempotency_before_ms,
            batch,
            reply,
        })
        .await
    }

    pub(super) fn ticket_secret(&self) -> [u8; 32] {
        self.inner.ticket_secret
    }

    pub(super) fn retention_horizon_ms(&self) -> i64 {
        self.inner
            .clock
            .now_ms()
            .saturating_sub(self.inner.retention_ms)
    }

    pub(super) async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        let horizon = self.retention_horizon_ms();
        self.read(move |conn| {
            // One snapshot for the bounds and the page, so that an event committed between
            // them cannot slip past `until`.
            let snapshot = conn.unchecked_transaction()?;
            let page = read_history(&snapshot, &query, horizon);
            snapshot.finish()?;
            page
        })
        .await
    }

    pub(super) async fn events_after(
        &self,
        position: i64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE pos > ?1 ORDER BY pos LIMIT ?2"
            ))?;
            let events = statement
                .query_map(params![position, limit as i64], event_from_row)?
                .map(|e| e.map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(events)
        })
        .await
    }

    pub(super) async fn last_position(&self) -> Result<i64, StoreError> {
        self.read(last_position).await
    }

    pub(super) async fn event_json(
        &self,
        id: Uuid,
        scope: OrgScope,
    ) -> Result<Option<Bytes>, StoreError> {
        let horizon = self.retention_horizon_ms();
        self.read(move |conn| {
            let row: Option<(String, String)> = conn
                .prepare_cached(
                    "SELECT organization_id, json FROM events WHERE id = ?1 AND ts_ms >= ?2",
                )?
                .query_row(params![id.as_bytes(), horizon], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            Ok(row
                .filter(|(org, _)| scope.includes(org))
                .map(|(_, json)| Bytes::from(json)))
        })
        .await
    }

    pub(super) async fn position_of(
        &self,
        id: Uuid,
        scope: OrgScope,
    ) -> Result<Option<i64>, StoreError> {
        let horizon = self.retention_horizon_ms();
        self.read(move |conn| {
            let row: Option<(i64, String)> = conn
                .prepare_cached(
                    "SELECT pos, organization_id FROM events WHERE id = ?1 AND ts_ms >= ?2",
                )?
                .query_row(params![id.as_bytes(), horizon], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            Ok(row
                .filter(|(_, org)| scope.includes(org))
                .map(|(pos, _)| pos))
        })
        .await
    }

    pub(super) async fn position_before_time(&self, ts_ms: i64) -> Result<i64, StoreError> {
        self.read(move |conn| {
            let first = first_position_at_or_after(conn, ts_ms)?;
            let last: Option<i64> =
                conn.query_row("SELECT max(pos) FROM events", [], |r| r.get(0))?;
            Ok(match first {
                Some(pos) => pos - 1,
                None => last.unwrap_or(0),
            })
        })
        .await
    }

    pub(super) async fn active_key_by_hash(
        &self,
        secret_hash: [u8; 32],
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = ?1 AND revoked_ms IS NULL"
                ))?
                .query_row([&secret_hash[..]], key_from_row)
                .optional()?)
        })
        .await
    }

    pub(super) async fn active_key(&self, id: Uuid) -> Result<Option<KeyRecord>, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1 AND revoked_ms IS NULL"
                ))?
                .query_row([id.as_bytes()], key_from_row)
                .optional()?)
        })
        .await
    }

    pub(super) async fn active_keys(
        &self,
        organization: Option<OrganizationId>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_ms IS NULL \
                 AND (?1 IS NULL OR organization_id = ?1) ORDER BY created_ms, id"
            );
            let org = organization.as_ref().map(OrganizationId::as_str);
            let keys = conn
                .prepare_cached(&sql)?
                .query_map([org], key_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(keys)
        })
        .await
    }

    pub(super) async fn create_webhook(
        &self,
        webhook: WebhookRecord,
        max_per_organization: usize,
    ) -> Result<(), StoreError> {
        self.write(move |context| {
            // The writer is the only one: counting and inserting in one job is atomic.
            let existing = webhooks::count_webhooks(context.conn, &webhook.organization_id)?;
            if existing >= max_per_organization {
                return Err(StoreError::LimitReached(max_per_organization));
            }
            webhooks::insert_webhook(context.conn, &webhook)?;
            context.webhooks_changed();
            Ok(())
        })
        .await
    }

    pub(super) async fn webhook(&self, id: Uuid) -> Result<Option<WebhookRecord>, StoreError> {
        self.read(move |conn| webhooks::get_webhook(conn, id)).await
    }

    pub(super) async fn webhooks(
        &self,
        organization: Option<OrganizationId>,
    ) -> Result<Vec<WebhookRecord>, StoreError> {
        self.read(move |conn| {
            webhooks::list_webhooks(conn, organization.as_ref().map(OrganizationId::as_str))
        })
        .await
    }

    pub(super) async fn update_webhook(
        &self,
        id: Uuid,
        patch: WebhookPatch,
    ) -> Result<WebhookRecord, StoreError> {
        self.write(move |context| {
            let updated = webhooks::update_webhook(context.conn, id, &patch)?;
            context.webhooks_changed();
            if patch.enabled == Some(true) {
                // Deliveries waiting on a disabled endpoint are due again.
                context.changes.push(Change::DeliveriesQueued);
            }
            Ok(updated)
        })
        .await
    }

    pub(super) async fn delete_webhook(&self, id: Uuid) -> Result<(), StoreError> {
        self.write(move |context| {
            webhooks::delete_webhook(context.conn, id)?;
            context.webhooks_changed();
            Ok(())
        })
        .await
    }

    pub(super) async fn rotate_webhook_secret(
        &self,
        id: Uuid,
        secret: String,
        previous_expires_ms: i64,
    ) -> Result<WebhookRecord, StoreError> {
        self.write(move |context| {
            let rotated = webhooks::rotate_secret(context.conn, id, &secret, previous_expires_ms)?;
            context.webhooks_changed();
            Ok(rotated)
        })
        .await
    }

    pub(super) async fn claim_deliveries(
        &self,
        request: ClaimRequest,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        self.write(move |context| webhooks::claim_deliveries(context.conn, &request))
            .await
    }

    pub(super) async fn record_attempts(
        &self,
        outcomes: Vec<AttemptOutcome>,
    ) -> Result<usize, StoreError> {
        self.write(move |context| {
            let mut stale = 0;
            let mut disabled = false;
            for outcome in &outcomes {
                if webhooks::record_attempt(context.conn, outcome)? {
                    disabled |= outcome.disable.is_some();
                } else {
                    stale += 1;
                }
            }
            if disabled {
                context.webhooks_changed();
            }
            Ok(stale)
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
        self.write(move |context| {
            webhooks::release_leases(context.conn, owner, &ids)?;
            context.changes.push(Change::DeliveriesQueued);
            Ok(())
        })
        .await
    }

    pub(super) async fn retry_delivery(
        &self,
        webhook_id: Uuid,
        delivery_id: Uuid,
    ) -> Result<(), StoreError> {
        self.write(move |context| {
            let now = context.now_ms();
            webhooks::retry_delivery(context.conn, webhook_id, delivery_id, now)?;
            context.changes.push(Change::DeliveriesQueued);
            Ok(())
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
        self.read(move |conn| webhooks::deliveries_page(conn, webhook_id, status, before, limit))
            .await
    }

    pub(super) async fn delivery_queue_state(&self) -> Result<(i64, Option<i64>), StoreError> {
        let now = self.inner.clock.now_ms();
        self.read(move |conn| webhooks::queue_state(conn, now))
            .await
    }

    pub(super) async fn timestamp_after(&self, position: i64) -> Result<Option<i64>, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT ts_ms FROM events WHERE pos > ?1 ORDER BY pos LIMIT 1")?
                .query_row([position], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await?;
        // Measured now, not the flag of the last commit or checkpoint: space another process
        // took since then counts at once.
        if self.inner.space.measure() {
            return Err(StoreError::StorageFull);
        }
        Ok(())
    }

    /// Finishes every queued write, stops the writer and waits for it: after this returns,
    /// everything acknowledged is on disk and the WAL is checkpointed.
    pub(super) async fn close(&self) {
        let checkpointer = self
            .inner
            .checkpointer
            .lock()
            .expect("checkpointer lock")
            .take();
        if let Some((stop, handle)) = checkpointer {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        let _ = self.inner.commands.send(Command::Shutdown).await;
        let handle = self.inner.writer.lock().expect("writer handle lock").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// AUTOINCREMENT's counter, not max(pos): it survives the pruning of the newest event.
fn last_position(conn: &Connection) -> Result<i64, StoreError> {
    let last: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(last.unwrap_or(0))
}

/// Reads a 32-byte secret setting, making and storing a random one the first time.
fn ensure_secret(conn: &Connection, name: &str) -> Result<[u8; 32], StoreError> {
    let existing: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(value) = existing {
        return <[u8; 32]>::try_from(value.as_slice())
            .map_err(|_| anyhow::anyhow!("the setting {name} is corrupt").into());
    }
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
    conn.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2)",
        params![name, &secret[..]],
    )?;
    Ok(secret)
}

const KEY_COLUMNS: &str = "id, organization_id, role, name, created_ms, revoked_ms";

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
    let id: Vec<u8> = row.get(0)?;
    let organization: Option<String> = row.get(1)?;
    let role: String = row.get(2)?;
    let corrupt = |what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("corrupt api_keys row: {what}").into(),
        )
    };
    Ok(KeyRecord {
        id: Uuid::from_slice(&id).map_err(|_| corrupt("id"))?,
        organization_id: organization
            .map(|o| OrganizationId::parse(&o).map_err(|_| corrupt("organization_id")))
            .transpose()?,
        role: role.parse().map_err(|_| corrupt("role"))?,
        name: row.get(3)?,
        created_ms: row.get(4)?,
        revoked_ms: row.get(5)?,
    })
}

const EVENT_COLUMNS: &str = "pos, id, organization_id, type, resource_type, resource_id, \
     workspace_id, json, traceparent, tracestate";

fn event_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    let id: Vec<u8> = row.get(1)?;
    let id = Uuid::from_slice(&id).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Blob, Box::new(e))
    })?;
    Ok(StoredEvent {
        position: row.get(0)?,
        id,
        organization_id: row.get(2)?,
        event_type: row.get(3)?,
        resource_type: row.get(4)?,
        resource_id: row.get(5)?,
        workspace_id: row.get(6)?,
        json: Bytes::from(row.get::<_, String>(7)?),
        trace: TraceContext::from_stored(
            row.get::<_, Option<String>>(8)?.as_deref(),
            row.get::<_, Option<String>>(9)?.as_deref(),
        ),
        sse: Default::default(),
    })
}

/// The first position whose timestamp is at or after `ts_ms` (timestamps never decrease with
/// position, so every later position qualifies too).
fn first_position_at_or_after(conn: &Connection, ts_ms: i64) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT pos FROM events WHERE ts_ms >= ?1 ORDER BY ts_ms, pos LIMIT 1")?
        .query_row([ts_ms], |r| r.get(0))
        .optional()
}

fn read_history(
    conn: &Connection,
    query: &HistoryQuery,
    horizon_ms: i64,
) -> Result<HistoryPage, StoreError> {
    let empty = HistoryPage {
        events: Vec::new(),
        last_position: None,
        has_more: false,
    };
    let floor_ms = query.since_ms.map_or(horizon_ms, |s| s.max(horizon_ms));
    let Some(mut low) = first_position_at_or_after(conn, floor_ms)? else {
        return Ok(empty);
    };
    let mut high = match query.until_ms {
        Some(until) => first_position_at_or_after(conn, until)?.unwrap_or(i64::MAX),
        None => i64::MAX,
    };
    match (query.order, query.after_position) {
        (Order::Asc, Some(cursor)) => low = low.max(cursor.saturating_add(1)),
        (Order::Desc, Some(cursor)) => high = high.min(cursor),
        (_, None) => {}
    }
    if low >= high {
        return Ok(empty);
    }

    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE pos >= ? AND pos < ?");
    let mut args: Vec<SqlValue> = vec![low.into(), high.into()];
    push_filter(&query.filter, &mut sql, &mut args);
    sql.push_str(match query.order {
        Order::Asc => " ORDER BY pos ASC LIMIT ?",
        Order::Desc => " ORDER BY pos DESC LIMIT ?",
    });
    args.push(((query.limit + 1) as i64).into());

    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query(rusqlite::params_from_iter(args))?;
    let mut events = Vec::with_capacity(query.limit.min(1000));
    let mut last_position = None;
    let mut has_more = false;
    while let Some(row) = rows.next()? {
        if events.len() == query.limit {
            has_more = true;
            break;
        }
        let event = event_from_row(row)?;
        last_position = Some(event.position);
        events.push(Arc::new(event));
    }
    Ok(HistoryPage {
        events,
        last_position,
        has_more,
    })
}

/// Appends the filter's conditions. Patterns are restricted to characters that SQLite's `GLOB`
/// treats literally (see `filter.rs`), so `GLOB` means exactly the contract's glob.
fn push_filter(filter: &Filter, sql: &mut String, args: &mut Vec<SqlValue>) {
    if let OrgScope::One(org) = &filter.organization {
        sql.push_str(" AND organization_id = ?");
        args.push(org.as_str().to_owned().into());
    }
    let match_all = filter
        .types
        .iter()
        .any(|p| p.as_str().bytes().all(|b| b == b'*'));
    if !filter.types.is_empty() && !match_all {
        // Exact types in one `IN` list, globs as a balanced tree of `OR`s: SQLite refuses an
        // expression deeper than 1000, and a flat chain of n `OR`s is n deep.
        let (globs, exact): (Vec<_>, Vec<_>) =
            filter.types.iter().partition(|p| p.as_str().contains('*'));
        let mut terms = Vec::with_capacity(globs.len() + 1);
        if !exact.is_empty() {
            terms.push(format!("type IN ({})", vec!["?"; exact.len()].join(", ")));
            args.extend(exact.iter().map(|p| p.as_str().to_owned().into()));
        }
        terms.extend(globs.iter().map(|_| "type GLOB ?".to_owned()));
        args.extend(globs.iter().map(|p| p.as_str().to_owned().into()));
        sql.push_str(" AND ");
        push_balanced_or(&terms, sql);
    }
    for (column, value) in [
        ("resource_type", &filter.resource_type),
        ("resource_id", &filter.resource_id),
        ("workspace_id", &filter.workspace_id),
    ] {
        if let Some(value) = value {
            sql.push_str(" AND ");
            sql.push_str(column);
            sql.push_str(" = ?");
            args.push(value.clone().into());
        }
    }
}

/// `terms` joined by `OR`, parenthesised as a balanced tree (depth log2 of their number).
fn push_balanced_or(terms: &[String], sql: &mut String) {
    match terms {
        [] => sql.push('0'),
        [one] => sql.push_str(one),
        _ => {
            let (left, right) = terms.split_at(terms.len() / 2);
            sql.push('(');
            push_balanced_or(left, sql);
            sql.push_str(" OR ");
            push_balanced_or(right, sql);
            sql.push(')');
        }
    }
}

/// Read-only connections lent to blocking threads, one query at a time each.
///
/// The connection goes back into the pool, and only then is the permit released, inside the
/// blocking task itself: a caller that gives up waiting (a dropped future: a client that went
/// away, a stream's `select!`) can never lose a connection or leave a permit without one.
struct ReaderPool {
    connections: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

impl ReaderPool {
    fn open(path: &Path, size: usize) -> Result<Self, StoreError> {
        let connections = (0..size)
            .map(|_| open_reader(path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            connections: Arc::new(Mutex::new(connections)),
            permits: Arc::new(Semaphore::new(size)),
        })
    }

    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let connections = self.connections.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let lock = || {
                connections
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            };
            let conn = lock().pop().expect("a permit guarantees a free connection");
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&conn)));
            lock().push(conn);
            drop(permit);
            result
        })
        .await;
        match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(anyhow::anyhow!("a store read panicked").into()),
            Err(e) => Err(anyhow::anyhow!("a store read failed: {e}").into()),
        }
    }
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    /// Where each commit goes once durable.
    commits: CommitSender,
    clock: Clock,
    /// Enabled webhook endpoints, matched against every new event.
    webhooks: WebhookMatchers,
    /// What the group being applied changed besides events (for the feed).
    changes: Vec<Change>,
    /// Counter handles by event type.
    ingested: std::collections::HashMap<String, metrics::Counter>,
    /// The last timestamp given: the clock is clamped to it so timestamps never go back.
    last_timestamp_ms: i64,
    /// The last event id given: each new id is greater, whatever the clock does.
    last_id: Uuid,
    /// Measured after every commit: a disk below its reserve stops the writes.
    space: Arc<Space>,
}

/// A command's result, held until its transaction commits.
enum Finished {
    Append(Reply<AppendOutcome>, Result<AppendOutcome, StoreError>),
    Key(
        Reply<Option<Arc<StoredEvent>>>,
        Result<Option<Arc<StoredEvent>>, StoreError>,
    ),
    Bootstrap(Reply<bool>, Result<bool, StoreError>),
    Prune(Reply<PruneReport>, Result<PruneReport, StoreError>),
    Job(Box<dyn FnOnce(Option<GroupFailure>) + Send>),
}

impl Finished {
    /// Answers the command: its own result, or the group's failure.
    fn answer(self, failure: Option<GroupFailure>) {
        fn send<T>(reply: Reply<T>, result: Result<T, StoreError>, failure: Option<GroupFailure>) {
            let result = match failure {
                Some(failure) => Err(failure.error()),
                None => result,
            };
            // The caller may have gone (client disconnected): its work is committed anyway.
            let _ = reply.send(result);
        }
        match self {
            Finished::Append(r, v) => send(r, v, failure),
            Finished::Key(r, v) => send(r, v, failure),
            Finished::Bootstrap(r, v) => send(r, v, failure),
            Finished::Prune(r, v) => send(r, v, failure),
            Finished::Job(answer) => answer(failure),
        }
    }

    fn stored_events(&self) -> &[Arc<StoredEvent>] {
        match self {
            Finished::Append(_, Ok(outcome)) => &outcome.events,
            Finished::Key(_, Ok(Some(event))) => std::slice::from_ref(event),
            _ => &[],
        }
    }
}

impl Writer {
    fn new(
        conn: Connection,
        commits: CommitSender,
        config: &StoreConfig,
        space: Arc<Space>,
    ) -> Result<Self, StoreError> {
        // The newest event is never pruned (see `prune`), so it always holds the high-water
        // marks of timestamps and ids.
        let last: Option<(i64, Vec<u8>)> = conn
            .query_row(
                "SELECT ts_ms, id FROM events ORDER BY pos DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (last_timestamp_ms, last_id) = match last {
            Some((ts, id)) => (
                ts,
                Uuid::from_slice(&id).map_err(|e| anyhow::anyhow!("corrupt event id: {e}"))?,
            ),
            None => (0, Uuid::nil()),
        };
        let webhooks = WebhookMatchers::load(&conn)?;
        Ok(Self {
            conn,
            commits,
            clock: config.clock.clone(),
            webhooks,
            changes: Vec::new(),
            ingested: Default::default(),
            last_timestamp_ms,
            last_id,
            space,
        })
    }

    fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut shutting_down = false;
        while !shutting_down {
            let Some(first) = queue.blocking_recv() else {
                break;
            };
            group.push(first);
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(command) => group.push(command),
                    Err(_) => break,
                }
            }
            if let Some(at) = group.iter().position(|c| matches!(c, Command::Shutdown)) {
                // Everything queued before the shutdown is written; anything after it is
                // refused when the queue is dropped.
                group.truncate(at);
                shutting_down = true;
            }
            if !group.is_empty() {
                self.commit_group(&mut group);
            }
        }
        queue.close();
        if let Err(e) = self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
            tracing::warn!(error = %e, "final WAL checkpoint failed");
        }
        tracing::debug!("store writer stopped");
    }

    /// Applies and commits a group. Any database error rolls the whole group back and every
    /// command in it is answered with an internal error (`StorageFull` when the disk is full):
    /// nothing is acknowledged that is not committed. (Per-command savepoints would confine the
    /// damage, but cost a sub-journal write per command on every append, for failures that mean
    /// a broken or full disk anyway.)
    fn commit_group(&mut self, group: &mut Vec<Command>) {
        let started = Instant::now();
        let mut finished = Vec::with_capacity(group.len());
        let saved = (self.last_timestamp_ms, self.last_id);
        let commit = (|| -> Result<(), StoreError> {
            self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            for command in group.drain(..) {
                let (done, error) = self.apply(command);
                finished.push(done);
                if let Some(error) = error {
                    return Err(error);
                }
            }
            self.conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(())
        })();
        let failure = if let Err(e) = commit {
            // A full disk may surface as another I/O error: low space after the failure says so.
            let failure = if matches!(e, StoreError::StorageFull) || self.space.measure() {
                self.space.mark_full();
                tracing::warn!("the disk is full: the store commit is rolled back");
                GroupFailure::Full
            } else {
                tracing::error!(error = %e, "store commit failed; the group is rolled back");
                GroupFailure::Other
            };
            let _ = self.conn.execute_batch("ROLLBACK");
            (self.last_timestamp_ms, self.last_id) = saved;
            self.changes.clear();
            // A webhook change in the failed group must not stay in the matchers.
            match WebhookMatchers::load(&self.conn) {
                Ok(matchers) => self.webhooks = matchers,
                Err(e) => tracing::error!(error = %e, "cannot reload webhook matchers"),
            }
            // Commands not reached are answered by being dropped (their callers see `Closed`,
            // or `StorageFull` while the disk is low).
            group.clear();
            Some(failure)
        } else {
            self.space.measure();
            None
        };
        if failure.is_none() {
            let committed: Vec<Arc<StoredEvent>> = finished
                .iter()
                .flat_map(|f| f.stored_events().iter().cloned())
                .collect();
            metrics::histogram!("cpod_store_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("cpod_store_commit_group_events").record(committed.len() as f64);
            for event in &committed {
                self.ingested_counter(&event.event_type).increment(1);
            }
            let mut changes = std::mem::take(&mut self.changes);
            changes.dedup();
            if !committed.is_empty() || !changes.is_empty() {
                // No receiver (nothing follows the feed yet) is not an error.
                let _ = self.commits.send(Arc::new(Commit {
                    events: committed,
                    changes,
                }));
            }
        }
        for done in finished {
            done.answer(failure);
        }
    }

    /// Applies a command. A refusal (`NotFound`, `IdempotencyConflict`) is decided before the
    /// command writes anything; a database error fails the whole group (see `commit_group`).
    /// `cpod_events_ingested_total{type}`, looked up once per type: a registry lookup and a
    /// label allocation per event would sit on the writer, the path every append waits on.
    fn ingested_counter(&mut self, event_type: &str) -> &metrics::Counter {
        if !self.ingested.contains_key(event_type) {
            let counter =
                metrics::counter!("cpod_events_ingested_total", "type" => event_type.to_owned());
            self.ingested.insert(event_type.to_owned(), counter);
        }
        &self.ingested[event_type]
    }

    fn apply(&mut self, command: Command) -> (Finished, Option<StoreError>) {
        fn done<T>(
            wrap: fn(Reply<T>, Result<T, StoreError>) -> Finished,
            reply: Reply<T>,
            result: Result<T, StoreError>,
        ) -> (Finished, Option<StoreError>) {
            match result {
                Err(e) if fails_the_group(&e) => (
                    wrap(
                        reply,
                        Err(StoreError::Internal(anyhow::anyhow!("the commit failed"))),
                    ),
                    Some(e),
                ),
                other => (wrap(reply, other), None),
            }
        }
        match command {
            Command::Append(request, reply) => done(Finished::Append, reply, self.append(request)),
            Command::CreateKey(key, event, reply) => {
                let result = self
                    .create_key(&key, "api")
                    .and_then(|()| self.insert_optional(event));
                done(Finished::Key, reply, result)
            }
            Command::RevokeKey(id, event, reply) => {
                let result = self
                    .revoke_key(id)
                    .and_then(|()| self.insert_optional(event));
                if result.is_ok() {
                    self.changes.push(Change::KeyRevoked(id));
                }
                done(Finished::Key, reply, result)
            }
            Command::BootstrapAdmin {
                key,
                configured,
                reply,
            } => done(
                Finished::Bootstrap,
                reply,
                self.bootstrap_admin(&key, configured),
            ),
            Command::Prune {
                events_before_ms,
                idempotency_before_ms,
                batch,
                reply,
            } => done(
                Finished::Prune,
                reply,
                self.prune(events_before_ms, idempotency_before_ms, batch),
            ),
            Command::Job(job) => {
                // Jobs run other modules' logic: a savepoint confines a failing one, so that
                // the appends sharing its group still commit.
                if let Err(e) = self.conn.execute_batch("SAVEPOINT job") {
                    return (Finished::Job(Box::new(|_| {})), Some(e.into()));
                }
                let mut context = WriteContext {
                    conn: &self.conn,
                    changes: Vec::new(),
                    clock: &self.clock,
                };
                let (finished, failure) = job(&mut context);
                let changes = context.changes;
                let end = if failure.is_some() {
                    "ROLLBACK TO job; RELEASE job"
                } else {
                    "RELEASE job"
                };
                if let Err(e) = self.conn.execute_batch(end) {
                    return (finished, Some(e.into()));
                }
                if let Some(e) = failure {
                    if matches!(e, StoreError::StorageFull) {
                        return (finished, Some(e));
                    }
                    tracing::error!(error = %e, "a store write failed; it alone is undone");
                    return (finished, None);
                }
                if changes.contains(&Change::WebhooksChanged) {
                    // Read inside the transaction: events later in this group see the change.
                    match WebhookMatchers::load(&self.conn) {
                        Ok(matchers) => self.webhooks = matchers,
                        Err(e) => return (finished, Some(e)),
                    }
                }
                self.changes.extend(changes);
                (finished, None)
            }
            Command::Shutdown => unreachable!("shutdown is taken out of the group before applying"),
        }
    }

    fn append(&mut self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        let now = self.clock.now_ms();
        if let Some(claim) = &request.idempotency {
            let previous: Option<(Vec<u8>, Vec<u8>, i64)> = self
                .conn
                .prepare_cached(
                    "SELECT request_hash, response, created_ms FROM idempotency \
                     WHERE scope = ?1 AND endpoint = ?2 AND key = ?3",
                )?
                .query_row(
                    params![claim.scope, request.endpoint.as_str(), claim.key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            if let Some((hash, response, created_ms)) = previous
                && created_ms > now - IDEMPOTENCY_WINDOW_MS
            {
                return if hash == claim.request_hash {
                    Ok(AppendOutcome {
                        body: Bytes::from(response),
                        replayed: true,
                        events: Vec::new(),
                    })
                } else {
                    Err(StoreError::IdempotencyConflict)
                };
            }
        }

        let events = request
            .events
            .iter()
            .map(|event| self.insert_event(event))
            .collect::<Result<Vec<_>, _>>()?;
        let body = match request.endpoint {
            super::IngestEndpoint::Single => events[0].json.clone(),
            super::IngestEndpoint::Batch => batch_body(&events),
        };
        if let Some(claim) = &request.idempotency {
            self.conn
                .prepare_cached(
                    "INSERT INTO idempotency (scope, endpoint, key, request_hash, response, created_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (scope, endpoint, key) DO UPDATE SET \
                     request_hash = excluded.request_hash, response = excluded.response, \
                     created_ms = excluded.created_ms",
                )?
                .execute(params![
                    claim.scope,
                    request.endpoint.as_str(),
                    claim.key,
                    &claim.request_hash[..],
                    &body[..],
                    now
                ])?;
        }
        Ok(AppendOutcome {
            body,
            replayed: false,
            events,
        })
    }

    fn insert_event(&mut self, event: &NewEvent) -> Result<Arc<StoredEvent>, StoreError> {
        let timestamp_ms = self.clock.now_ms().max(self.last_timestamp_ms);
        self.last_timestamp_ms = timestamp_ms;
        let id = next_event_id(self.last_id, timestamp_ms);
        self.last_id = id;
        let json = event.stamp(&id, timestamp_ms);
        let json_text = std::str::from_utf8(&json).expect("serde_json writes UTF-8");
        self.conn
            .prepare_cached(
                "INSERT INTO events (id, organization_id, type, resource_type, resource_id, \
                 workspace_id, ts_ms, json, traceparent, tracestate) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                id.as_bytes(),
                event.organization_id.as_str(),
                event.event_type.as_str(),
                event.resource_type.as_str(),
                event.resource_id.as_str(),
                event.workspace_id.as_ref().map(|w| w.as_str()),
                timestamp_ms,
                json_text,
                event.trace.as_ref().map(|t| t.parent.to_string()),
                event
                    .trace
                    .as_ref()
                    .and_then(|t| t.state.as_ref())
                    .map(|s| s.as_str()),
            ])?;
        let event = Arc::new(StoredEvent {
            position: self.conn.last_insert_rowid(),
            id,
            organization_id: event.organization_id.as_str().to_owned(),
            event_type: event.event_type.as_str().to_owned(),
            resource_type: event.resource_type.as_str().to_owned(),
            resource_id: event.resource_id.as_str().to_owned(),
            workspace_id: event.workspace_id.as_ref().map(|w| w.as_str().to_owned()),
            trace: event.trace.clone(),
            json: Bytes::from(json),
            sse: Default::default(),
        });
        if self
            .webhooks
            .create_deliveries(&self.conn, &event, timestamp_ms)?
            > 0
            && !self.changes.contains(&Change::DeliveriesQueued)
        {
            self.changes.push(Change::DeliveriesQueued);
        }
        Ok(event)
    }

    fn insert_optional(
        &mut self,
        event: Option<NewEvent>,
    ) -> Result<Option<Arc<StoredEvent>>, StoreError> {
        event.map(|e| self.insert_event(&e)).transpose()
    }

    fn create_key(&mut self, key: &NewKey, source: &str) -> Result<(), StoreError> {
        let record = &key.record;
        self.conn
            .prepare_cached(
                "INSERT INTO api_keys (id, organization_id, role, name, source, secret_hash, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                record.id.as_bytes(),
                record.organization_id.as_ref().map(OrganizationId::as_str),
                record.role.as_str(),
                record.name,
                source,
                &key.secret_hash[..],
                record.created_ms,
            ])?;
        Ok(())
    }

    fn revoke_key(&mut self, id: Uuid) -> Result<(), StoreError> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE api_keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
            )?
            .execute(params![id.as_bytes(), self.clock.now_ms()])?;
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    fn bootstrap_admin(&mut self, key: &NewKey, configured: bool) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        if configured {
            let revoked = self
                .conn
                .prepare(
                    "UPDATE api_keys SET revoked_ms = ?2 WHERE role = 'admin' AND source IN ('env', 'generated') \
                     AND revoked_ms IS NULL AND secret_hash != ?1 RETURNING id",
                )?
                .query_map(params![&key.secret_hash[..], now], |r| r.get::<_, Vec<u8>>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            for id in revoked {
                if let Ok(id) = Uuid::from_slice(&id) {
                    self.changes.push(Change::KeyRevoked(id));
                }
            }
            let active: bool = self.conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM api_keys WHERE secret_hash = ?1 AND revoked_ms IS NULL)",
                [&key.secret_hash[..]],
                |r| r.get(0),
            )?;
            if active {
                return Ok(false);
            }
            // A key revoked earlier and configured again comes back to life.
            self.conn.execute(
                "DELETE FROM api_keys WHERE secret_hash = ?1",
                [&key.secret_hash[..]],
            )?;
            self.create_key(key, "env")?;
            return Ok(true);
        }
        let any_admin: bool = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM api_keys WHERE role = 'admin' AND revoked_ms IS NULL)",
            [],
            |r| r.get(0),
        )?;
        if any_admin {
            return Ok(false);
        }
        self.create_key(key, "generated")?;
        Ok(true)
    }

    fn prune(
        &mut self,
        events_before_ms: i64,
        idempotency_before_ms: i64,
        batch: usize,
    ) -> Result<PruneReport, StoreError> {
        let events = self
            .conn
            .prepare_cached(
                // The newest event stays, expired or not (reads hide it): its timestamp and id
                // are where the next event's start after a restart.
                "DELETE FROM events WHERE pos IN \
                 (SELECT pos FROM events WHERE ts_ms < ?1 \
                  AND pos < (SELECT max(pos) FROM events) ORDER BY ts_ms LIMIT ?2)",
            )?
            .execute(params![events_before_ms, batch as i64])?;
        let idempotency_records = self
            .conn
            .prepare_cached(
                "DELETE FROM idempotency WHERE id IN \
                 (SELECT id FROM idempotency WHERE created_ms < ?1 ORDER BY created_ms LIMIT ?2)",
            )?
            .execute(params![idempotency_before_ms, batch as i64])?;
        Ok(PruneReport {
            events,
            idempotency_records,
        })
    }
}
