//! The hub: live fan-out of committed events, and the gapless [`Subscription`] every stream
//! (SSE, WebSocket) reads from.
//!
//! The hub follows the store's commit feed ([`run`]) and publishes each commit's events, in
//! position order, to one `tokio::sync::broadcast` channel per organization (and to one for admin
//! `*` subscribers), so a subscriber only ever looks at its own organization's events. An event
//! is shared as an `Arc<StoredEvent>` whose JSON and SSE frame are encoded once, never per
//! subscriber. The feed also carries revocations: the hub ends the streams of a revoked key,
//! whichever node revoked it.
//!
//! ## The gapless invariant
//!
//! A subscription delivers every matching event with a position greater than its start, exactly
//! once, in position order:
//!
//! 1. it reads the hub's last published position `L`, subscribes to the channel, and reads `L`
//!    again. The writer advances `L` *before* sending a group, so if `L` did not move, nothing
//!    after it was sent before the subscription listened: everything will arrive on the channel
//!    and there is nothing to replay (a live-only subscriber never touches the store). If `L`
//!    moved, or the start is an earlier position (`Last-Event-ID`, `since`), it replays. (`L` is
//!    advanced before sending a commit; the feed hands the hub contiguous positions, so every
//!    position up to `L` is committed);
//! 2. it replays from the store, in pages, every matching event after its last delivered position
//!    — this covers events sent before the subscription listened, since an event is committed
//!    before `L` covers it;
//! 3. it goes live on the channel, dropping anything at or below its last delivered position
//!    (events both replayed and received);
//! 4. on `RecvError::Lagged` (the channel overwrote events this subscriber had not read) it goes
//!    back to step 2 from its last delivered position.
//!
//! So a slow subscriber never loses an event, never slows the writer or the other subscribers
//! (broadcast never waits for a receiver), and costs bounded memory: at most one channel's
//! capacity is retained, however far behind it falls; the rest is read back from the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use dashmap::DashMap;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::filter::{Filter, OrgScope};
use crate::store::{Change, FeedReader, HistoryQuery, Order, Store, StoreError, StoredEvent};

/// Events retained per channel for subscribers that are momentarily behind.
pub const CHANNEL_CAPACITY: usize = 1024;
/// Events read from the store per replay page.
pub const REPLAY_PAGE: usize = 500;
/// At most this many live events are handed to a transport at once (one socket write).
pub const LIVE_BATCH: usize = 64;
/// Messages retained for the worker shards of the direct-write stream path
/// (`crate::http::owned`), each a commit group or a revocation.
pub const SHARD_CHANNEL_CAPACITY: usize = 1024;

/// What the hub tells the worker shards that write streams directly (`crate::http::owned`):
/// every committed group, in position order, and every revoked key.
#[derive(Clone)]
pub enum Fanout {
    Events(Arc<[Arc<StoredEvent>]>),
    Revoked(Uuid),
}

/// A cheap-clone handle on the fan-out.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    organizations: DashMap<String, broadcast::Sender<Arc<StoredEvent>>>,
    everything: broadcast::Sender<Arc<StoredEvent>>,
    last_published: AtomicI64,
    /// Every group and revocation, for the direct-write shards.
    shards: broadcast::Sender<Fanout>,
    /// The broker's shutdown token: the parent of every key's token.
    shutdown: CancellationToken,
    /// One token per key that has opened a stream, cancelled when the key is revoked. Revoked
    /// keys keep their cancelled token, so a stream that authenticated just before the
    /// revocation still ends at once.
    keys: DashMap<Uuid, CancellationToken>,
}

impl Hub {
    /// A hub whose streams end when `shutdown` is cancelled, starting after `position` (the
    /// position its feed starts after).
    pub fn new(shutdown: CancellationToken, position: i64) -> Self {
        Self::with_capacity(CHANNEL_CAPACITY, shutdown, position)
    }

    /// A hub whose channels retain `capacity` events (tests use tiny ones to force lag).
    pub fn with_capacity(capacity: usize, shutdown: CancellationToken, position: i64) -> Self {
        Self {
            inner: Arc::new(Inner {
                capacity,
                organizations: DashMap::new(),
                everything: broadcast::channel(capacity).0,
                last_published: AtomicI64::new(position),
                shards: broadcast::channel(SHARD_CHANNEL_CAPACITY).0,
                shutdown,
                keys: DashMap::new(),
            }),
        }
    }

    /// Sends committed events to their subscribers, in position order; positions follow on
    /// from the last published one.
    fn publish(&self, events: &[Arc<StoredEvent>]) {
        let Some(last) = events.last() else {
            return;
        };
        debug_assert!(
            events
                .windows(2)
                .all(|w| w[1].position == w[0].position + 1)
                && events[0].position > self.last_published(),
            "the hub was handed positions out of order"
        );
        // Advanced before sending: see step 1 of the invariant.
        self.inner
            .last_published
            .store(last.position, Ordering::Release);
        if self.inner.shards.receiver_count() > 0 {
            let _ = self.inner.shards.send(Fanout::Events(events.into()));
        }
        let everyone = self.inner.everything.receiver_count() > 0;
        for event in events {
            if let Some(channel) = self.inner.organizations.get(&event.organization_id) {
                // No receivers left is not an error: the channel is removed on the next drop.
                let _ = channel.send(event.clone());
            }
            if everyone {
                let _ = self.inner.everything.send(event.clone());
            }
        }
    }

    /// The token a stream opened with this key ends with: cancelled when the key is revoked or
    /// the broker shuts down. One persistent future per stream, no shared lock per event.
    pub fn key_token(&self, key_id: Uuid) -> CancellationToken {
        self.inner
            .keys
            .entry(key_id)
            .or_insert_with(|| self.inner.shutdown.child_token())
            .clone()
    }

    /// Ends every stream opened with this key.
    pub fn revoke(&self, key_id: Uuid) {
        // Cancelled before the shards hear of it: a shard stream that checked the token before
        // this is registered before the shard reads the message.
        self.key_token(key_id).cancel();
        let _ = self.inner.shards.send(Fanout::Revoked(key_id));
    }

    /// A receiver of every group and revocation from now on, and the last position published
    /// before it listened: every position after that one arrives on the receiver (the writer
    /// advances the position before sending, see the invariant).
    pub fn subscribe_shard(&self) -> (broadcast::Receiver<Fanout>, i64) {
        let receiver = self.inner.shards.subscribe();
        (receiver, self.last_published())
    }

    /// The last position published so far.
    pub fn last_published(&self) -> i64 {
        self.inner.last_published.load(Ordering::Acquire)
    }

    /// Ends the streams of keys that are no longer active (after the feed lost changes).
    async fn recheck_keys(&self, store: &Store) {
        let live: Vec<Uuid> = self
            .inner
            .keys
            .iter()
            .filter(|entry| !entry.value().is_cancelled())
            .map(|entry| *entry.key())
            .collect();
        for key in live {
            match store.active_key(key).await {
                Ok(None) => self.revoke(key),
                Ok(Some(_)) => {}
                Err(e) => tracing::warn!(error = %e, "cannot check a streaming key"),
            }
        }
    }

    fn subscribe_channel(&self, scope: &OrgScope) -> broadcast::Receiver<Arc<StoredEvent>> {
        match scope {
            OrgScope::All => self.inner.everything.subscribe(),
            OrgScope::One(org) => self
                .inner
                .organizations
                .entry(org.as_str().to_owned())
                .or_insert_with(|| broadcast::channel(self.inner.capacity).0)
                .subscribe(),
        }
    }

    /// Forgets an organization's channel once nobody listens to it.
    fn release_channel(&self, scope: &OrgScope) {
        if let OrgScope::One(org) = scope {
            self.inner
                .organizations
                .remove_if(org.as_str(), |_, channel| channel.receiver_count() == 0);
        }
    }

    /// Number of organization channels (for tests and metrics).
    pub fn channel_count(&self) -> usize {
        self.inner.organizations.len()
    }
}

/// Follows the commit feed until it ends or `shutdown` is cancelled: publishes each commit's
/// events and ends the streams of revoked keys.
pub async fn run(hub: Hub, mut feed: FeedReader, store: Store, shutdown: CancellationToken) {
    loop {
        let commit = tokio::select! {
            _ = shutdown.cancelled() => return,
            commit = feed.next() => commit,
        };
        let commit = match commit {
            Ok(commit) => commit,
            Err(StoreError::Closed) => return,
            Err(e) => {
                // The store is failing: try again shortly, from the same position.
                tracing::warn!(error = %e, "the hub cannot read the feed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => continue,
                }
            }
        };
        crate::spans::fan_out(&commit.events, |events| hub.publish(events));
        for change in &commit.changes {
            match change {
                Change::KeyRevoked(key) => hub.revoke(*key),
                Change::Resync => hub.recheck_keys(&store).await,
                Change::WebhooksChanged | Change::DeliveriesQueued => {}
            }
        }
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Events stored from now on.
    Now,
    /// Events stored after this position (from `Last-Event-ID` or `since`).
    After(i64),
}

/// One subscriber's gapless view of the stream; see the module documentation.
pub struct Subscription {
    hub: Hub,
    store: Store,
    filter: Filter,
    receiver: broadcast::Receiver<Arc<StoredEvent>>,
    /// The last position delivered (or, before any delivery, the start).
    last_position: i64,
    replaying: bool,
    /// Counts of what this subscription delivered, for metrics.
    pub replayed: u64,
}

impl Subscription {
    pub fn new(hub: &Hub, store: &Store, filter: Filter, start: Start) -> Self {
        let now = hub.last_published();
        let receiver = hub.subscribe_channel(&filter.organization);
        let (last_position, replaying) = match start {
            Start::Now => (now, hub.last_published() != now),
            Start::After(position) => (position, true),
        };
        Self {
            hub: hub.clone(),
            store: store.clone(),
            filter,
            receiver,
            last_position,
            replaying,
            replayed: 0,
        }
    }

    /// The next events to deliver, in position order; waits until there is at least one.
    ///
    /// Cancel-safe: state changes only after the awaited read has completed, so dropping the
    /// future (e.g. in a `select!` with a heartbeat) loses nothing.
    pub async fn next(&mut self) -> Result<Vec<Arc<StoredEvent>>, StoreError> {
        loop {
            if self.replaying {
                let page = self
                    .store
                    .history(HistoryQuery {
                        filter: self.filter.clone(),
                        since_ms: None,
                        until_ms: None,
                        after_position: Some(self.last_position),
                        order: Order::Asc,
                        limit: REPLAY_PAGE,
                    })
                    .await?;
                self.replaying = page.has_more;
                if let Some(last) = page.events.last() {
                    self.last_position = last.position;
                    self.replayed += page.events.len() as u64;
                    metrics::counter!("cpod_events_replayed_total")
                        .increment(page.events.len() as u64);
                    return Ok(page.events);
                }
                continue;
            }
            let first = match self.receiver.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(_)) => {
                    metrics::counter!("cpod_stream_catchups_total").increment(1);
                    self.replaying = true;
                    continue;
                }
                Err(RecvError::Closed) => return Err(StoreError::Closed),
            };
            let mut batch = Vec::new();
            self.accept(first, &mut batch);
            while batch.len() < LIVE_BATCH {
                match self.receiver.try_recv() {
                    Ok(event) => self.accept(event, &mut batch),
                    Err(TryRecvError::Lagged(_)) => {
                        metrics::counter!("cpod_stream_catchups_total").increment(1);
                        self.replaying = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }

    fn accept(&mut self, event: Arc<StoredEvent>, batch: &mut Vec<Arc<StoredEvent>>) {
        if event.position <= self.last_position {
            return; // already replayed, or from before the start
        }
        // Non-matching events still move the position: nothing before them can arrive later.
        self.last_position = event.position;
        if self.filter.matches(&event.key()) {
            batch.push(event);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let scope = self.filter.organization.clone();
        // The receiver must be gone before the channel's receiver count is checked.
        let placeholder = broadcast::channel(1).1;
        drop(std::mem::replace(&mut self.receiver, placeholder));
        self.hub.release_channel(&scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventType, NewEvent, OrganizationId, ResourceId, ResourceType};
    use crate::store::{AppendRequest, Backend, Clock, IngestEndpoint, StoreConfig, SyncMode};

    /// A store, and a hub following its feed.
    async fn open(capacity: usize) -> (tempfile::TempDir, Hub, Store) {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(&StoreConfig {
            backend: Backend::Sqlite {
                path: dir.path().join("hub.db"),
                sync: SyncMode::Off,
                readers: 2,
                min_free_bytes: 0,
            },
            retention_ms: i64::MAX / 2,
            clock: Clock::system(),
        })
        .await
        .unwrap();
        let position = store.last_position().await.unwrap();
        let shutdown = CancellationToken::new();
        let hub = Hub::with_capacity(capacity, shutdown.clone(), position);
        tokio::spawn(run(
            hub.clone(),
            store.feed(position),
            store.clone(),
            shutdown,
        ));
        (dir, hub, store)
    }

    fn org() -> OrganizationId {
        OrganizationId::parse("org-1").unwrap()
    }

    async fn append(store: &Store, from: usize, count: usize) {
        let events = (from..from + count)
            .map(|i| {
                NewEvent::new(
                    EventType::parse("custom.n").unwrap(),
                    ResourceId::parse(&i.to_string()).unwrap(),
                    ResourceType::parse("n").unwrap(),
                    org(),
                    None,
                    &Default::default(),
                )
            })
            .collect();
        store
            .append(AppendRequest {
                endpoint: IngestEndpoint::Batch,
                events,
                idempotency: None,
            })
            .await
            .unwrap();
    }

    async fn read(subscription: &mut Subscription, count: usize) -> Vec<usize> {
        let mut seen = Vec::new();
        while seen.len() < count {
            let batch =
                tokio::time::timeout(std::time::Duration::from_secs(10), subscription.next())
                    .await
                    .expect("events keep coming")
                    .unwrap();
            seen.extend(
                batch
                    .iter()
                    .map(|e| e.resource_id.parse::<usize>().unwrap()),
            );
        }
        seen
    }

    #[tokio::test]
    async fn a_lagging_subscriber_catches_up_from_the_store_without_loss() {
        let (_dir, hub, store) = open(4).await;
        let mut subscription = Subscription::new(
            &hub,
            &store,
            Filter::for_scope(OrgScope::One(org())),
            Start::Now,
        );
        // 300 events through a channel that keeps 4, in batches of 10, while nobody reads.
        for batch in 0..30 {
            append(&store, batch * 10, 10).await;
        }
        assert_eq!(
            read(&mut subscription, 300).await,
            (0..300).collect::<Vec<_>>()
        );
        assert!(
            subscription.replayed > 250,
            "the catch-up did not go through the store"
        );
        // And then it is live again.
        append(&store, 300, 1).await;
        assert_eq!(read(&mut subscription, 1).await, vec![300]);
    }

    #[tokio::test]
    async fn events_published_during_a_replay_arrive_once_and_in_order() {
        let (_dir, hub, store) = open(CHANNEL_CAPACITY).await;
        append(&store, 0, 1200).await;
        let mut subscription = Subscription::new(
            &hub,
            &store,
            Filter::for_scope(OrgScope::One(org())),
            Start::After(0),
        );
        let first_page = read(&mut subscription, REPLAY_PAGE).await;
        assert_eq!(first_page, (0..REPLAY_PAGE).collect::<Vec<_>>());
        // Mid-replay: more events are committed and published.
        append(&store, 1200, 100).await;
        let rest = read(&mut subscription, 800).await;
        assert_eq!(rest, (REPLAY_PAGE..1300).collect::<Vec<_>>());
        // The replay was still going when the 100 arrived, so they came from the store too, and
        // their live copies were dropped as duplicates.
        assert_eq!(subscription.replayed, 1300);
    }

    #[test]
    fn revoking_a_key_cancels_its_token_now_and_later_and_shutdown_cancels_all() {
        let shutdown = CancellationToken::new();
        let hub = Hub::new(shutdown.clone(), 0);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let before = hub.key_token(a);
        hub.revoke(a);
        assert!(before.is_cancelled());
        assert!(
            hub.key_token(a).is_cancelled(),
            "a stream opened just after revocation ends too"
        );
        let other = hub.key_token(b);
        assert!(!other.is_cancelled());
        shutdown.cancel();
        assert!(other.is_cancelled());
    }

    #[tokio::test]
    async fn reads_given_up_half_way_never_lose_a_reader_connection() {
        let (_dir, _hub, store) = open(8).await;
        append(&store, 0, 10).await;
        for _ in 0..300 {
            // Polled once, then dropped while the blocking read may be running.
            let _ = tokio::time::timeout(std::time::Duration::ZERO, store.ping()).await;
        }
        let reads = (0..16).map(|_| store.ping());
        for read in futures_util::future::join_all(reads).await {
            read.unwrap();
        }
    }

    #[tokio::test]
    async fn a_channel_is_dropped_with_its_last_subscriber() {
        let (_dir, hub, store) = open(8).await;
        let subscription = Subscription::new(
            &hub,
            &store,
            Filter::for_scope(OrgScope::One(org())),
            Start::Now,
        );
        assert_eq!(hub.channel_count(), 1);
        drop(subscription);
        assert_eq!(hub.channel_count(), 0);
    }
}
