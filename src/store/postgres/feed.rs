//! The commit feed on PostgreSQL: each node's sequencer turns its own commits and the other
//! nodes' into one contiguous run of positions for [`crate::store::FeedReader`].
//!
//! - A commit of this node is published at once when it follows on from what the sequencer has
//!   published; when it does not (another node committed the positions before it), those are
//!   read from the table first. Under the append lock, every position below a committed one is
//!   committed, so the read finds them all.
//! - Other nodes' commits are read from the table (`position > published`, in pages) when their
//!   `NOTIFY` rings the doorbell, after a reconnection, and on a short poll as a backstop.
//! - Control records (revoked keys, changed endpoints, queued deliveries) travel in the `NOTIFY`
//!   payload ([`Doorbell`]); a notification sent while this node was not listening is gone, so
//!   after a reconnection the sequencer publishes [`Change::Resync`] and consumers re-read what
//!   they cache.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{CHANNEL, Connections, Connector, events_after};
use crate::store::feed::CommitSender;
use crate::store::{Change, Commit, StoreError};

/// The backstop: how often the table is read when no doorbell rang.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Events read per page.
const PAGE: usize = 1000;
/// The longest wait between two attempts to listen again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// `NOTIFY` payloads must stay under 8000 bytes.
const MAX_PAYLOAD: usize = 7900;

/// What a commit tells the other nodes.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Doorbell {
    /// The node that committed.
    node: Uuid,
    /// Its last position, or 0 when it stored no events.
    last: i64,
    /// `key:<uuid>`, `webhooks`, `deliveries`, `resync`.
    changes: Vec<String>,
}

impl Doorbell {
    pub(super) fn payload(node: Uuid, last: i64, changes: &[Change]) -> String {
        let encoded = changes
            .iter()
            .map(|c| match c {
                Change::KeyRevoked(id) => format!("key:{id}"),
                Change::WebhooksChanged => "webhooks".to_owned(),
                Change::DeliveriesQueued => "deliveries".to_owned(),
                Change::Resync => "resync".to_owned(),
            })
            .collect();
        let bell = Doorbell {
            node,
            last,
            changes: encoded,
        };
        let payload = serde_json::to_string(&bell).expect("a doorbell serializes");
        if payload.len() <= MAX_PAYLOAD {
            return payload;
        }
        // Too many changes to carry: every node re-reads what it caches.
        serde_json::to_string(&Doorbell {
            changes: vec!["resync".to_owned()],
            ..bell
        })
        .expect("a doorbell serializes")
    }

    fn parse(payload: &str) -> Option<Self> {
        serde_json::from_str(payload).ok()
    }

    fn changes(&self) -> Vec<Change> {
        self.changes
            .iter()
            .map(|c| match c.as_str() {
                "webhooks" => Change::WebhooksChanged,
                "deliveries" => Change::DeliveriesQueued,
                other => other
                    .strip_prefix("key:")
                    .and_then(|id| Uuid::parse_str(id).ok())
                    .map_or(Change::Resync, Change::KeyRevoked),
            })
            .collect()
    }
}

/// A live `LISTEN` connection: its notifications' payloads, until it is lost.
pub(super) struct Listening {
    payloads: mpsc::UnboundedReceiver<String>,
    driver: JoinHandle<()>,
    /// Kept alive: dropping the client would end the session.
    _client: tokio_postgres::Client,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Connects and listens on the feed's channel.
pub(super) async fn listen(connector: &Connector) -> Result<Listening, StoreError> {
    let (client, mut connection) = connector.connect().await?;
    let (sender, payloads) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if sender.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the feed's LISTEN connection failed");
                    return;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    Ok(Listening {
        payloads,
        driver,
        _client: client,
    })
}

/// What the listener tells the sequencer.
enum Note {
    Rang(Doorbell),
    /// Listening again after a loss: notifications may have been missed.
    Reconnected,
}

/// Keeps a `LISTEN` connection up, reconnecting with backoff, until `stop`.
async fn keep_listening(
    connector: Connector,
    mut listening: Listening,
    notes: mpsc::UnboundedSender<Note>,
    stop: CancellationToken,
) {
    loop {
        loop {
            let payload = tokio::select! {
                _ = stop.cancelled() => return,
                payload = listening.payloads.recv() => payload,
            };
            let Some(payload) = payload else { break };
            match Doorbell::parse(&payload) {
                Some(bell) => {
                    let _ = notes.send(Note::Rang(bell));
                }
                None => tracing::warn!(payload, "an unreadable feed notification"),
            }
        }
        tracing::warn!("the feed lost its database connection; reconnecting");
        let mut failures = 0u32;
        listening = loop {
            let backoff = (Duration::from_millis(100) * 2u32.pow(failures.min(6))).min(MAX_BACKOFF);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            match listen(&connector).await {
                Ok(listening) => break listening,
                Err(e) => {
                    failures += 1;
                    tracing::debug!(error = %e, "the feed cannot listen yet");
                }
            }
        };
        tracing::info!("the feed is listening again");
        let _ = notes.send(Note::Reconnected);
    }
}

/// Publishes this node's commits and everyone else's, contiguously, in position order.
pub(super) struct Sequencer {
    pool: Connections,
    connector: Connector,
    node: Uuid,
    commits: CommitSender,
    /// The last position published.
    published: i64,
}

impl Sequencer {
    pub(super) fn new(
        pool: Connections,
        connector: Connector,
        node: Uuid,
        commits: CommitSender,
        published: i64,
    ) -> Self {
        Self {
            pool,
            connector,
            node,
            commits,
            published,
        }
    }

    /// Runs until `stop`; then publishes the own commits still queued and ends.
    pub(super) async fn run(
        mut self,
        listening: Listening,
        mut own: mpsc::UnboundedReceiver<Arc<Commit>>,
        stop: CancellationToken,
    ) {
        let (notes, mut rung) = mpsc::unbounded_channel();
        let listener = tokio::spawn(keep_listening(
            self.connector.clone(),
            listening,
            notes,
            stop.clone(),
        ));
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                commit = own.recv() => match commit {
                    Some(commit) => self.own_commit(commit).await,
                    None => break,
                },
                Some(note) = rung.recv() => match note {
                    Note::Rang(bell) if bell.node == self.node => {}
                    Note::Rang(bell) => self.catch_up(bell.changes()).await,
                    Note::Reconnected => self.catch_up(vec![Change::Resync]).await,
                },
                _ = poll.tick() => self.catch_up(Vec::new()).await,
                _ = stop.cancelled() => {
                    while let Ok(commit) = own.try_recv() {
                        self.own_commit(commit).await;
                    }
                    break;
                }
            }
        }
        let _ = listener.await;
    }

    fn publish(&mut self, commit: impl Into<Arc<Commit>>) {
        let commit = commit.into();
        if let Some(last) = commit.events.last() {
            if commit.events[0].position != self.published + 1 {
                // Only where retention pruned: the feed readers skip it from the store.
                tracing::debug!(
                    after = self.published,
                    next = commit.events[0].position,
                    "the feed passes over pruned positions"
                );
            }
            self.published = last.position;
        }
        // No receiver (nothing follows the feed yet) is not an error.
        let _ = self.commits.send(commit);
    }

    /// A commit of this node: at once when it follows on, else after the positions before it.
    async fn own_commit(&mut self, commit: Arc<Commit>) {
        if let Some(first) = commit.events.first().map(|e| e.position)
            && first > self.published + 1
            && !self.read_until(first).await
        {
            // The positions before it cannot be read now: its events wait for the poll, which
            // reads them from the table in order; its changes go out at once.
            if !commit.changes.is_empty() {
                self.publish(Commit {
                    events: Vec::new(),
                    changes: commit.changes.clone(),
                });
            }
            return;
        }
        let fresh: Vec<_> = commit
            .events
            .iter()
            .filter(|e| e.position > self.published)
            .cloned()
            .collect();
        if fresh.len() == commit.events.len() {
            if fresh.is_empty() && commit.changes.is_empty() {
                return;
            }
            self.publish(commit);
        } else if !fresh.is_empty() || !commit.changes.is_empty() {
            // Some of it was read from the table already (a doorbell or the poll got there
            // first).
            self.publish(Commit {
                events: fresh,
                changes: commit.changes.clone(),
            });
        }
    }

    /// Publishes every committed event before `until`; answers whether they were all read.
    async fn read_until(&mut self, until: i64) -> bool {
        while self.published + 1 < until {
            match self.read(until).await {
                Ok(events) if events.is_empty() => {
                    // Pruned (a node far behind): nothing is left to read below `until`.
                    return true;
                }
                Ok(events) => self.publish(Commit {
                    events,
                    changes: Vec::new(),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "the feed cannot read other nodes' commits");
                    return false;
                }
            }
        }
        true
    }

    /// Publishes every committed event after the last published, then `changes`.
    async fn catch_up(&mut self, changes: Vec<Change>) {
        loop {
            match self.read(i64::MAX).await {
                Ok(events) => {
                    let full = events.len() == PAGE;
                    if !events.is_empty() {
                        self.publish(Commit {
                            events,
                            changes: Vec::new(),
                        });
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the feed cannot read other nodes' commits");
                    break;
                }
            }
        }
        if !changes.is_empty() {
            self.publish(Commit {
                events: Vec::new(),
                changes,
            });
        }
    }

    async fn read(&self, before: i64) -> Result<Vec<Arc<crate::store::StoredEvent>>, StoreError> {
        let client = self.pool.get().await?;
        // With positions given under the append lock there is never a hole below a committed
        // position, except where retention pruned.
        events_after(&client, self.published, before, PAGE).await
    }
}
