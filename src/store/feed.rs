//! The commit feed: every committed transaction, in position order, for the parts of the broker
//! that must act on what any writer committed — the hub (live fan-out, stream revocation), the
//! authenticator (its key cache) and the webhook worker (deliveries to make).
//!
//! The store publishes each commit once, after it is durable, on an in-process channel; a
//! [`FeedReader`] turns that channel into a stream a consumer can start after any position:
//!
//! - it delivers every event after its start exactly once, in position order, and positions on
//!   the live path are contiguous (a commit that does not follow on from the last position seen
//!   is held back until the missing positions have been read from the store);
//! - when the reader falls behind the channel (`Lagged`), it reads the events it missed from the
//!   store in pages and then rejoins the channel, dropping what it has already delivered. The
//!   changes it may have missed cannot be read back, so it says [`Change::Resync`]: consumers
//!   drop what they cache and read it again.
//!
//! A consumer that never lags pays one channel receive per commit and no store read after the
//! first.

use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};
use uuid::Uuid;

use super::{Store, StoreError, StoredEvent};

/// Commits retained for readers that are momentarily behind.
pub const FEED_CAPACITY: usize = 4096;
/// Events read from the store per catch-up page.
const CATCH_UP_PAGE: usize = 1000;

/// One committed transaction, as the feed carries it.
#[derive(Debug, Default)]
pub struct Commit {
    /// The events it stored, in position order (maybe none).
    pub events: Vec<Arc<StoredEvent>>,
    /// What else it changed that every node must act on.
    pub changes: Vec<Change>,
}

/// A change other than new events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The key can no longer be used: evict it, end its streams.
    KeyRevoked(Uuid),
    /// A webhook endpoint was created, changed, disabled or deleted.
    WebhooksChanged,
    /// Webhook deliveries became due.
    DeliveriesQueued,
    /// Changes may have been missed: drop every cache built from them.
    Resync,
}

/// The sending side, owned by the backend.
pub(super) type CommitSender = broadcast::Sender<Arc<Commit>>;

/// A consumer's gapless view of the feed; see the module documentation.
pub struct FeedReader {
    store: Store,
    commits: broadcast::Receiver<Arc<Commit>>,
    /// The last position delivered (or the start).
    last_position: i64,
    /// Reading missed events from the store rather than the channel.
    catching_up: bool,
    /// A commit received ahead of a gap, delivered once the gap is filled.
    held: Option<Arc<Commit>>,
    /// Changes were missed: the next delivery says so.
    resync: bool,
}

impl FeedReader {
    pub(super) fn new(
        store: Store,
        commits: broadcast::Receiver<Arc<Commit>>,
        position: i64,
    ) -> Self {
        Self {
            store,
            commits,
            last_position: position,
            // Commits made between `position` and this subscription are read from the store.
            catching_up: true,
            held: None,
            resync: false,
        }
    }

    /// The last position delivered.
    pub fn position(&self) -> i64 {
        self.last_position
    }

    /// The next commit, waiting for one. Not cancel-safe while catching up (a store read is
    /// dropped half way and made again): consumers `select!` it only against shutdown.
    pub async fn next(&mut self) -> Result<Arc<Commit>, StoreError> {
        loop {
            if self.catching_up {
                if let Some(commit) = self.catch_up().await? {
                    return Ok(commit);
                }
                continue;
            }
            if let Some(held) = self.held.take() {
                if let Some(commit) = self.pass(held, false) {
                    return Ok(commit);
                }
                continue;
            }
            match self.commits.recv().await {
                Ok(commit) => {
                    let first_new = commit
                        .events
                        .iter()
                        .find(|e| e.position > self.last_position);
                    if first_new.is_some_and(|e| e.position > self.last_position + 1) {
                        // A gap before this commit: fill it from the store first.
                        self.held = Some(commit);
                        self.catching_up = true;
                        continue;
                    }
                    if let Some(commit) = self.pass(commit, true) {
                        return Ok(commit);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    metrics::counter!("cpod_feed_catchups_total").increment(1);
                    tracing::debug!(missed, "the feed reader fell behind; catching up");
                    self.catching_up = true;
                    self.resync = true;
                }
                Err(RecvError::Closed) => return Err(StoreError::Closed),
            }
        }
    }

    /// One page of missed events from the store; `None` when there was nothing to deliver.
    async fn catch_up(&mut self) -> Result<Option<Arc<Commit>>, StoreError> {
        let until = self
            .held
            .as_ref()
            .and_then(|c| c.events.iter().find(|e| e.position > self.last_position))
            .map(|e| e.position);
        let mut events = self
            .store
            .events_after(self.last_position, CATCH_UP_PAGE)
            .await?;
        let more = events.len() == CATCH_UP_PAGE;
        let read = events.len();
        if let Some(until) = until {
            events.retain(|e| e.position < until);
        }
        if !more || events.len() < read {
            self.catching_up = false;
        }
        let changes = if std::mem::take(&mut self.resync) {
            vec![Change::Resync]
        } else {
            Vec::new()
        };
        if let Some(last) = events.last() {
            self.last_position = last.position;
        } else if changes.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Commit { events, changes })))
    }

    /// A received commit without what was already delivered; `None` when nothing is left.
    /// `live`: straight from the channel, so it must follow on from the last position (after a
    /// gap was filled from the store, positions the store no longer has may be missing).
    fn pass(&mut self, commit: Arc<Commit>, live: bool) -> Option<Arc<Commit>> {
        let fresh = commit
            .events
            .iter()
            .position(|e| e.position > self.last_position)
            .unwrap_or(commit.events.len());
        let commit = if fresh == 0 {
            commit
        } else if fresh == commit.events.len() && commit.changes.is_empty() {
            return None;
        } else {
            Arc::new(Commit {
                events: commit.events[fresh..].to_vec(),
                changes: commit.changes.clone(),
            })
        };
        if let Some(last) = commit.events.last() {
            debug_assert!(
                !live || commit.events[0].position == self.last_position + 1,
                "the live feed skipped a position"
            );
            self.last_position = last.position;
        }
        Some(commit)
    }
}
