//! The durable store: the only place events, keys, webhooks and settings live, behind one seam.
//!
//! The rest of the broker uses [`Store`] through domain operations only (append a group of
//! events, history, reads after a position, keys, webhook endpoints and their delivery queue,
//! settings) and the [commit feed](feed); no SQL and no database type leaves this module. The
//! backend is chosen at start-up from the database URL: SQLite ([`sqlite`]: one writer thread
//! with group commit, a pool of read-only connections; one broker process), or PostgreSQL
//! ([`postgres`]: any number of broker nodes on one database, one cluster-wide order).
//!
//! Invariants the rest of the broker builds on, whatever the backend (the conformance suite,
//! `conformance.rs`, holds every backend to them):
//! - every event gets a **position**, strictly increasing in commit order and never reused,
//!   which orders history, cursors and streams;
//! - an event's **timestamp and id never decrease with its position** (the store clamps the
//!   clock to the last timestamp it gave, and makes each id greater than the last), so a time
//!   bound is a position bound and `since`/`until` and the retention horizon become range scans;
//! - an append is answered only after its transaction has committed, and every commit reaches
//!   the feed, in position order.

mod append;
pub mod feed;
mod postgres;
mod sqlite;
pub mod webhooks;

#[cfg(test)]
mod conformance;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use uuid::Uuid;

use crate::error::ApiError;
use crate::event::{NewEvent, OrganizationId, unix_now_ms};
use crate::filter::{Filter, OrgScope};
use crate::trace_context::TraceContext;
use webhooks::{
    AttemptOutcome, ClaimRequest, DeliveryRecord, DeliveryStatus, DueDelivery, WebhookPatch,
    WebhookRecord,
};

pub use crate::keys::{KeyRecord, NewKey};
pub use feed::{Change, Commit, FeedReader};

/// How hard SQLite works to make a commit durable (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// fsync the WAL on every commit: a 201 survives `kill -9` and power loss.
    Full,
    /// fsync only at checkpoints: a 201 survives `kill -9` but the last commits may be lost on
    /// power loss or an OS crash.
    Normal,
    /// never fsync: survives `kill -9` only; for throwaway data.
    Off,
}

/// Which database, and how to use it.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite {
        path: PathBuf,
        sync: SyncMode,
        /// Read-only connections for queries.
        readers: usize,
        /// Free space the database's filesystem keeps: below it, writes are refused (507) so
        /// that a checkpoint always has room to fold the WAL into the database.
        min_free_bytes: u64,
    },
    Postgres {
        url: PostgresUrl,
        /// Most pooled connections for reads and short writes (the writer and the feed's
        /// `LISTEN` have one each besides).
        pool_size: usize,
    },
}

/// A `postgres://` or `postgresql://` URL that the PostgreSQL client accepts. Its `Debug` and
/// [`PostgresUrl::redacted`] hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(String);

impl PostgresUrl {
    /// Checks the URL; the error says what is wrong with it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if !(raw.starts_with("postgres://") || raw.starts_with("postgresql://")) {
            return Err("expected postgres://user@host:port/database".into());
        }
        postgres::check_url(raw)?;
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`, for messages and logs.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                url.to_string()
            }
            Ok(url) => url.to_string(),
            Err(_) => "postgres://…".to_owned(),
        }
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Where and how to open the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: Backend,
    /// Events older than this are invisible and get pruned.
    pub retention_ms: i64,
    /// The wall clock the store stamps events and judges expiry with.
    pub clock: Clock,
}

/// The store's source of time in Unix milliseconds: the system clock, or one a test moves.
#[derive(Clone)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that reads `now` and moves only when the test stores into it.
    pub fn manual(now: Arc<AtomicI64>) -> Self {
        Self(Some(now))
    }

    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            None => unix_now_ms(),
            Some(now) => now.load(Ordering::Acquire),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Clock::manual"
        } else {
            "Clock::system"
        })
    }
}

/// A cheap-clone handle on the store, whichever backend is behind it.
#[derive(Clone)]
pub struct Store {
    backend: Arc<Open>,
}

/// The open backends (one variant per database kind).
enum Open {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PostgresStore),
}

/// Calls the same operation on whichever backend is open.
macro_rules! on_backend {
    ($store:expr, $backend:ident => $call:expr) => {
        match &*$store.backend {
            Open::Sqlite($backend) => $call,
            Open::Postgres($backend) => $call,
        }
    };
}

impl Store {
    /// Opens (creating and migrating if needed) the database.
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let open = match &config.backend {
            Backend::Sqlite { .. } => {
                let config = config.clone();
                let store = tokio::task::spawn_blocking(move || sqlite::SqliteStore::open(&config))
                    .await
                    .map_err(|e| {
                        StoreError::Internal(anyhow::anyhow!("opening the store: {e}"))
                    })??;
                Open::Sqlite(store)
            }
            Backend::Postgres { .. } => {
                Open::Postgres(postgres::PostgresStore::open(config).await?)
            }
        };
        Ok(Self {
            backend: Arc::new(open),
        })
    }

    /// The clock this store stamps events with.
    pub fn clock(&self) -> &Clock {
        on_backend!(self, b => b.clock())
    }

    // --- events -------------------------------------------------------------------------

    /// Stores a single event or an atomic batch, honouring its idempotency key, and queues the
    /// webhook deliveries its events match, all in one transaction.
    pub async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        on_backend!(self, b => b.append(request).await)
    }

    /// One page of history.
    pub async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        on_backend!(self, b => b.history(query).await)
    }

    /// Up to `limit` events (of every organization) after `position`, in position order,
    /// expired ones included: what the feed catches up with.
    pub async fn events_after(
        &self,
        position: i64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        on_backend!(self, b => b.events_after(position, limit).await)
    }

    /// The position of the newest event ever committed (0 when none): positions are never
    /// reused, so this survives the pruning of that event.
    pub async fn last_position(&self) -> Result<i64, StoreError> {
        on_backend!(self, b => b.last_position().await)
    }

    /// An event's JSON by id, if it exists, is in scope and has not expired.
    pub async fn event_json(&self, id: Uuid, scope: OrgScope) -> Result<Option<Bytes>, StoreError> {
        on_backend!(self, b => b.event_json(id, scope).await)
    }

    /// The position of an event that exists, is in `scope` and has not expired.
    pub async fn position_of(&self, id: Uuid, scope: OrgScope) -> Result<Option<i64>, StoreError> {
        on_backend!(self, b => b.position_of(id, scope).await)
    }

    /// The position after which every event is at or after `ts_ms`: replaying "after" it
    /// replays from that time.
    pub async fn position_before_time(&self, ts_ms: i64) -> Result<i64, StoreError> {
        on_backend!(self, b => b.position_before_time(ts_ms).await)
    }

    /// The oldest timestamp still visible: retention hides everything before it at once.
    pub fn retention_horizon_ms(&self) -> i64 {
        on_backend!(self, b => b.retention_horizon_ms())
    }

    /// Deletes at most `batch` expired events and idempotency records, oldest first.
    pub async fn prune(&self, batch: usize) -> Result<PruneReport, StoreError> {
        on_backend!(self, b => b.prune(batch).await)
    }

    /// The committed events and changes after `position`, in order; see [`FeedReader`].
    pub fn feed(&self, position: i64) -> FeedReader {
        let commits = on_backend!(self, b => b.commits());
        FeedReader::new(self.clone(), commits, position)
    }

    // --- keys ---------------------------------------------------------------------------

    /// Inserts a key and, in the same transaction, its `credential.created` event.
    pub async fn create_key(
        &self,
        key: NewKey,
        event: Option<NewEvent>,
    ) -> Result<Option<Arc<StoredEvent>>, StoreError> {
        on_backend!(self, b => b.create_key(key, event).await)
    }

    /// Revokes an active key and, in the same transaction, stores its `credential.revoked`
    /// event; the feed carries [`Change::KeyRevoked`]. `NotFound` when the key is unknown or
    /// already revoked.
    pub async fn revoke_key(
        &self,
        id: Uuid,
        event: Option<NewEvent>,
    ) -> Result<Option<Arc<StoredEvent>>, StoreError> {
        on_backend!(self, b => b.revoke_key(id, event).await)
    }

    /// Installs the admin key. With `configured` (from `CPOD_ADMIN_KEY`) the key is made active
    /// and any other configured or generated admin key is revoked; otherwise the key is inserted
    /// only when no admin key is active. Answers whether `key` was inserted.
    pub async fn bootstrap_admin(&self, key: NewKey, configured: bool) -> Result<bool, StoreError> {
        on_backend!(self, b => b.bootstrap_admin(key, configured).await)
    }

    /// The active key whose secret hashes to `secret_hash`.
    pub async fn active_key_by_hash(
        &self,
        secret_hash: [u8; 32],
    ) -> Result<Option<KeyRecord>, StoreError> {
        on_backend!(self, b => b.active_key_by_hash(secret_hash).await)
    }

    /// The active key with this id.
    pub async fn active_key(&self, id: Uuid) -> Result<Option<KeyRecord>, StoreError> {
        on_backend!(self, b => b.active_key(id).await)
    }

    /// Active keys, of one organization or (with `None`) all of them, oldest first.
    pub async fn active_keys(
        &self,
        organization: Option<OrganizationId>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        on_backend!(self, b => b.active_keys(organization).await)
    }

    // --- webhooks -----------------------------------------------------------------------

    /// Adds an endpoint, unless its organization already has `max_per_organization` of them
    /// ([`StoreError::LimitReached`]; checked in the same transaction as the insert, so that
    /// concurrent creations cannot pass the limit); new events are matched against it from the
    /// next commit on.
    pub async fn create_webhook(
        &self,
        webhook: WebhookRecord,
        max_per_organization: usize,
    ) -> Result<(), StoreError> {
        on_backend!(self, b => b.create_webhook(webhook, max_per_organization).await)
    }

    pub async fn webhook(&self, id: Uuid) -> Result<Option<WebhookRecord>, StoreError> {
        on_backend!(self, b => b.webhook(id).await)
    }

    /// Endpoints of one organization, or of all with `None`, oldest first.
    pub async fn webhooks(
        &self,
        organization: Option<OrganizationId>,
    ) -> Result<Vec<WebhookRecord>, StoreError> {
        on_backend!(self, b => b.webhooks(organization).await)
    }

    /// Applies a partial update; `NotFound` when the endpoint does not exist.
    pub async fn update_webhook(
        &self,
        id: Uuid,
        patch: WebhookPatch,
    ) -> Result<WebhookRecord, StoreError> {
        on_backend!(self, b => b.update_webhook(id, patch).await)
    }

    /// Deletes an endpoint with its deliveries and their attempts.
    pub async fn delete_webhook(&self, id: Uuid) -> Result<(), StoreError> {
        on_backend!(self, b => b.delete_webhook(id).await)
    }

    /// Makes `secret` current; the old one keeps signing until `previous_expires_ms`.
    pub async fn rotate_webhook_secret(
        &self,
        id: Uuid,
        secret: String,
        previous_expires_ms: i64,
    ) -> Result<WebhookRecord, StoreError> {
        on_backend!(self, b => b.rotate_webhook_secret(id, secret, previous_expires_ms).await)
    }

    /// Claims up to `request.limit` due deliveries on enabled endpoints, oldest due first, with
    /// a lease: none that another node holds an unexpired lease on.
    pub async fn claim_deliveries(
        &self,
        request: ClaimRequest,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        on_backend!(self, b => b.claim_deliveries(request).await)
    }

    /// Records attempts and moves their deliveries (and maybe endpoints) on. An attempt whose
    /// lease is no longer its maker's, or whose delivery has moved on meanwhile, is not
    /// recorded; answers how many were not.
    pub async fn record_attempts(
        &self,
        outcomes: Vec<AttemptOutcome>,
    ) -> Result<usize, StoreError> {
        on_backend!(self, b => b.record_attempts(outcomes).await)
    }

    /// Gives claims back unattempted (a worker shutting down), so others need not wait for
    /// their leases to run out.
    pub async fn release_deliveries(&self, owner: Uuid, ids: Vec<Uuid>) -> Result<(), StoreError> {
        on_backend!(self, b => b.release_deliveries(owner, ids).await)
    }

    /// Makes a delivery due now for one more attempt.
    pub async fn retry_delivery(
        &self,
        webhook_id: Uuid,
        delivery_id: Uuid,
    ) -> Result<(), StoreError> {
        on_backend!(self, b => b.retry_delivery(webhook_id, delivery_id).await)
    }

    /// One page of an endpoint's deliveries, newest first, before `before` (a delivery id).
    pub async fn deliveries(
        &self,
        webhook_id: Uuid,
        status: Option<DeliveryStatus>,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<(Vec<DeliveryRecord>, bool), StoreError> {
        on_backend!(self, b => b.deliveries(webhook_id, status, before, limit).await)
    }

    /// Pending deliveries and the age in milliseconds of the oldest (for metrics).
    pub async fn delivery_queue_state(&self) -> Result<(i64, Option<i64>), StoreError> {
        on_backend!(self, b => b.delivery_queue_state().await)
    }

    // --- settings and operations --------------------------------------------------------

    /// The secret that signs stream tickets: made once, kept in the database, so that tickets
    /// outlive a restart.
    pub fn ticket_secret(&self) -> [u8; 32] {
        on_backend!(self, b => b.ticket_secret())
    }

    /// The timestamp of the first event after `position`, if one is committed: how far a feed
    /// that has delivered up to `position` is behind.
    pub async fn timestamp_after(&self, position: i64) -> Result<Option<i64>, StoreError> {
        on_backend!(self, b => b.timestamp_after(position).await)
    }

    // --- the cluster --------------------------------------------------------------------

    /// Whether several broker processes may share this store (PostgreSQL): state every node
    /// must agree on (the rate limit's buckets, the node registry) then lives in the database.
    pub fn is_shared(&self) -> bool {
        matches!(&*self.backend, Open::Postgres(_))
    }

    /// Records that node `node` (started at `started_ms`) is alive, and answers how many nodes
    /// were seen alive in the last [`NODE_ALIVE_MS`], this one included. One process alone
    /// (SQLite) is the only node.
    pub async fn heartbeat(&self, node: &str, started_ms: i64) -> Result<usize, StoreError> {
        match &*self.backend {
            Open::Sqlite(_) => Ok(1),
            Open::Postgres(b) => b.heartbeat(node, started_ms).await,
        }
    }

    /// Takes node `node` out of the registry (a clean shutdown).
    pub async fn deregister(&self, node: &str) -> Result<(), StoreError> {
        match &*self.backend {
            Open::Sqlite(_) => Ok(()),
            Open::Postgres(b) => b.deregister(node).await,
        }
    }

    /// Takes up to `want` requests' worth of tokens from the cluster-wide bucket of `key`
    /// (refilled at `per_second`, holding one second's worth at most). `None` when the store
    /// is not shared ([`Store::is_shared`]): one process limits in memory.
    pub async fn take_rate_tokens(
        &self,
        key: Uuid,
        per_second: u32,
        want: u32,
    ) -> Result<Option<RateGrant>, StoreError> {
        match &*self.backend {
            Open::Sqlite(_) => Ok(None),
            Open::Postgres(b) => b.take_rate_tokens(key, per_second, want).await.map(Some),
        }
    }

    /// Whether the store answers a query and takes writes: readiness (`StorageFull` while the
    /// disk is full).
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_backend!(self, b => b.ping().await)
    }

    /// Finishes every queued write and closes: after this returns, everything acknowledged is
    /// durable, and the feed has ended.
    pub async fn close(&self) {
        on_backend!(self, b => b.close().await)
    }
}

/// Failures of the store that callers branch on; everything else is `Internal`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the idempotency key was used with a different request")]
    IdempotencyConflict,
    #[error("not found")]
    NotFound,
    /// A per-organization limit (of this many) is already reached.
    #[error("the limit of {0} is reached")]
    LimitReached(usize),
    #[error("the store is shut down")]
    Closed,
    /// The database cannot be reached now (a lost connection, a timeout); retrying may work.
    #[error("the database is unreachable")]
    Unavailable,
    /// The disk holding the store is full (or below its reserve): writes are refused until
    /// space is freed; reads go on.
    #[error("the storage is full")]
    StorageFull,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// An event as committed: its wire JSON plus the fields streams filter on.
#[derive(Debug)]
pub struct StoredEvent {
    pub position: i64,
    pub id: Uuid,
    pub organization_id: String,
    pub event_type: String,
    pub resource_type: String,
    pub resource_id: String,
    pub workspace_id: Option<String>,
    /// The W3C trace context it was stored with (also in its JSON), for the spans of its
    /// fan-out and webhook attempts.
    pub trace: Option<TraceContext>,
    /// The event's JSON, serialized once at commit.
    pub json: Bytes,
    /// Its Server-Sent Events message, encoded by the streams on first use and then shared by
    /// every subscriber.
    pub sse: std::sync::OnceLock<Bytes>,
}

impl StoredEvent {
    /// The fields a [`Filter`] looks at.
    pub fn key(&self) -> crate::filter::EventKey<'_> {
        crate::filter::EventKey {
            organization_id: &self.organization_id,
            event_type: &self.event_type,
            resource_type: &self.resource_type,
            resource_id: &self.resource_id,
            workspace_id: self.workspace_id.as_deref(),
        }
    }
}

/// Which endpoint an idempotency key belongs to: keys are scoped per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestEndpoint {
    Single,
    Batch,
}

impl IngestEndpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            IngestEndpoint::Single => "POST /v1/events",
            IngestEndpoint::Batch => "POST /v1/events/batch",
        }
    }
}

/// An `Idempotency-Key` with the request it guards.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    /// The organization (or `*admin` for admin keys) the key is scoped to.
    pub scope: String,
    pub key: String,
    /// SHA-256 of the request body: a repeat must carry the same bytes.
    pub request_hash: [u8; 32],
}

/// One ingestion request: a single event or an atomic batch.
#[derive(Debug)]
pub struct AppendRequest {
    pub endpoint: IngestEndpoint,
    pub events: Vec<NewEvent>,
    pub idempotency: Option<IdempotencyClaim>,
}

/// The answer to an append: the response body, built once by the writer so that an idempotent
/// replay answers byte for byte what the first request got.
#[derive(Debug, Clone)]
pub struct AppendOutcome {
    pub body: Bytes,
    pub replayed: bool,
    /// The events this request stored (empty for a replay).
    pub events: Vec<Arc<StoredEvent>>,
}

/// Direction of a history page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// A history query after parsing: every bound is already a number.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub filter: Filter,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Continue after (asc) or before (desc) this position: the cursor.
    pub after_position: Option<i64>,
    pub order: Order,
    pub limit: usize,
}

/// One page of history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub events: Vec<Arc<StoredEvent>>,
    /// Position of the last event on the page, for the next cursor.
    pub last_position: Option<i64>,
    pub has_more: bool,
}

/// What one pruning pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub events: usize,
    pub idempotency_records: usize,
}

/// A node whose last heartbeat is older than this is not counted as alive.
pub const NODE_ALIVE_MS: i64 = 30_000;

/// What a key's cluster-wide token bucket gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateGrant {
    /// Requests that may go ahead (0 to the number asked for).
    pub granted: u32,
    /// With none granted: how long until the bucket holds a whole token again.
    pub retry_after: std::time::Duration,
}

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// The edge's answer to a store failure: the one place store errors become API errors.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::IdempotencyConflict => ApiError::Conflict(
                "this Idempotency-Key was already used with a different request body".into(),
            ),
            StoreError::NotFound => ApiError::not_found("resource"),
            StoreError::LimitReached(limit) => {
                ApiError::Conflict(format!("the limit of {limit} is already reached"))
            }
            StoreError::Closed | StoreError::Unavailable => ApiError::Unavailable,
            StoreError::StorageFull => ApiError::StorageFull,
            StoreError::Internal(e) => ApiError::Internal(e),
        }
    }
}
