//! The durable store: the only place events, keys and idempotency records live.
//!
//! Writes go through one writer thread ([`sqlite`]) that applies every command waiting in its
//! queue inside one transaction and one fsync (group commit), so concurrent appends share the
//! cost of durability. Reads use a small pool of read-only connections on blocking threads.
//!
//! Invariants the rest of the broker builds on:
//! - every event gets a **position**, strictly increasing in commit order and never reused
//!   (`AUTOINCREMENT`), which orders history, cursors and (later) streams;
//! - an event's **timestamp never decreases with its position** (the writer clamps the clock to
//!   the last timestamp it gave), so a time bound is a position bound and `since`/`until` and
//!   the retention horizon become index range scans on position;
//! - an append is answered only after its transaction has committed.

mod migrations;
mod sqlite;
pub mod webhooks;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use crate::auth::Role;
use crate::event::{NewEvent, OrganizationId};
use crate::filter::Filter;

pub use sqlite::{Store, WriteContext};

/// How hard SQLite works to make a commit durable (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// fsync the WAL on every commit: a 201 survives `kill -9` and power loss.
    Full,
    /// fsync only at checkpoints: a 201 survives `kill -9` but the last commits may be lost on
    /// power loss or an OS crash.
    Normal,
    /// never fsync: survives `kill -9` only; for throwaway data.
    Off,
}

/// Where and how to open the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub sync: SyncMode,
    /// Events older than this are invisible and get pruned.
    pub retention_ms: i64,
    pub readers: usize,
}

/// Failures of the store that callers branch on; everything else is `Internal`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the idempotency key was used with a different request")]
    IdempotencyConflict,
    #[error("not found")]
    NotFound,
    #[error("the store is shut down")]
    Closed,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Internal(e.into())
    }
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
    /// The event's JSON, serialized once at commit.
    pub json: Bytes,
    /// Its Server-Sent Events message, encoded on first use and then shared by every
    /// subscriber (see [`StoredEvent::sse_frame`]).
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

    /// `id: <id>\ndata: <json>\n\n`, encoded once.
    pub fn sse_frame(&self) -> &Bytes {
        self.sse
            .get_or_init(|| crate::http::sse::event_frame(&self.id, &self.json))
    }
}

/// Which endpoint an idempotency key belongs to: keys are scoped per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestEndpoint {
    Single,
    Batch,
}

impl IngestEndpoint {
    fn as_str(self) -> &'static str {
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

/// An API key as stored (the secret only as a hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: Uuid,
    pub organization_id: Option<OrganizationId>,
    pub role: Role,
    pub name: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// A key to insert: the record and the hash of its secret.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub record: KeyRecord,
    pub secret_hash: [u8; 32],
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

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;
