//! One worker thread's share of the directly written streams: their registry, the fan-out that
//! writes each committed group's shared frames straight into their sockets, and the one timing
//! wheel that sends their heartbeats and ends them when their ticket expires.
//!
//! Every stream accepted on a worker is registered with that worker's shard and touched only on
//! its thread, so nothing here is locked. The shard follows the hub ([`Hub::subscribe_shard`]):
//! each group is written, in position order, to the live subscribers of its organization (and
//! to `organizationId=*` ones) with non-blocking writes — no task is woken per subscriber. A
//! subscriber whose socket would block leaves the live path and catches up by itself
//! ([`super::subscriber`]); the shard keeps its last [`RECENT_EVENTS`] events so that a
//! subscriber can rejoin without reading the store once it is close.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use bytes::Bytes;
use slab::Slab;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

use crate::cloudevents::EventFormat;
use crate::filter::OrgScope;
use crate::http::sse::{KEEP_ALIVE, frames};
use crate::http::state::AppState;
use crate::hub::{Fanout, Hub};
use crate::store::StoredEvent;

use super::subscriber::{Subscriber, Written};
use super::wheel::Wheel;

/// Events the shard keeps for subscribers rejoining the live path.
pub const RECENT_EVENTS: usize = 512;

/// A worker's shard (cheap to clone, not `Send`: it lives on its worker's thread).
#[derive(Clone)]
pub struct Shard(pub(super) Rc<ShardInner>);

pub struct ShardInner {
    pub(super) state: web::Data<AppState>,
    organizations: RefCell<HashMap<String, Slab<Rc<Subscriber>>>>,
    everything: RefCell<Slab<Rc<Subscriber>>>,
    /// The last position fanned out: every position up to it is committed.
    last_fanned: Cell<i64>,
    recent: RefCell<VecDeque<Arc<StoredEvent>>>,
    wheel: RefCell<Wheel<Weak<Subscriber>>>,
    /// Deliveries not yet added to the shared counter.
    delivered: Cell<u64>,
}

impl Shard {
    /// Starts the shard of the current worker thread: its fan-out and clock run as a task of
    /// that thread until shutdown.
    pub fn start(state: web::Data<AppState>) -> Self {
        let (receiver, last) = state.hub.subscribe_shard();
        let heartbeat = state.heartbeat;
        let tick = (heartbeat / 8).clamp(Duration::from_millis(10), Duration::from_millis(500));
        let inner = Rc::new(ShardInner {
            organizations: RefCell::new(HashMap::new()),
            everything: RefCell::new(Slab::new()),
            last_fanned: Cell::new(last),
            recent: RefCell::new(VecDeque::with_capacity(RECENT_EVENTS)),
            wheel: RefCell::new(Wheel::new(tick, heartbeat, Instant::now())),
            delivered: Cell::new(0),
            state,
        });
        actix_web::rt::spawn(follow(inner.clone(), receiver));
        Self(inner)
    }

    pub fn state(&self) -> &web::Data<AppState> {
        &self.0.state
    }
}

impl ShardInner {
    pub(super) fn last_fanned(&self) -> i64 {
        self.last_fanned.get()
    }

    pub(super) fn hub(&self) -> &Hub {
        &self.state.hub
    }

    /// Adds a subscriber. Must be called with no await between choosing its position and this.
    pub(super) fn insert(&self, subscriber: &Rc<Subscriber>) {
        let slot = match &subscriber.filter.organization {
            OrgScope::All => self.everything.borrow_mut().insert(subscriber.clone()),
            OrgScope::One(org) => self
                .organizations
                .borrow_mut()
                .entry(org.as_str().to_owned())
                .or_default()
                .insert(subscriber.clone()),
        };
        subscriber.slot.set(slot);
        self.schedule(subscriber, Instant::now());
    }

    pub(super) fn remove(&self, subscriber: &Subscriber) {
        let slot = subscriber.slot.replace(usize::MAX);
        if slot == usize::MAX {
            return;
        }
        match &subscriber.filter.organization {
            OrgScope::All => {
                self.everything.borrow_mut().try_remove(slot);
            }
            OrgScope::One(org) => {
                let mut organizations = self.organizations.borrow_mut();
                if let Some(subscribers) = organizations.get_mut(org.as_str()) {
                    subscribers.try_remove(slot);
                    if subscribers.is_empty() {
                        organizations.remove(org.as_str());
                    }
                }
            }
        }
    }

    /// Puts a subscriber on the wheel for its next heartbeat or its ticket's expiry.
    fn schedule(&self, subscriber: &Rc<Subscriber>, now: Instant) {
        let heartbeat = subscriber.last_write.get().max(now) + self.state.heartbeat;
        let due = subscriber.deadline.map_or(heartbeat, |d| d.min(heartbeat));
        self.wheel
            .borrow_mut()
            .schedule(Rc::downgrade(subscriber), due);
    }

    pub(super) fn count_delivered(&self, events: usize) {
        self.delivered.set(self.delivered.get() + events as u64);
    }

    /// Writes a committed group to every live subscriber it concerns.
    fn fan_out(&self, group: &[Arc<StoredEvent>]) {
        let Some(last) = group.last() else { return };
        if last.position <= self.last_fanned.get() {
            return;
        }
        self.last_fanned.set(last.position);
        {
            let mut recent = self.recent.borrow_mut();
            recent.extend(group.iter().cloned());
            let excess = recent.len().saturating_sub(RECENT_EVENTS);
            recent.drain(..excess);
        }
        let mut delivered = 0;
        // A group is almost always one organization's; runs of one organization each go to
        // that organization's subscribers.
        let organizations = self.organizations.borrow();
        let mut rest = group;
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .position(|e| e.organization_id != first.organization_id)
                .unwrap_or(rest.len());
            if let Some(subscribers) = organizations.get(&first.organization_id) {
                delivered += deliver(subscribers, &rest[..run]);
            }
            rest = &rest[run..];
        }
        drop(organizations);
        delivered += deliver(&self.everything.borrow(), group);
        self.count_delivered(delivered);
    }

    /// Brings a subscriber from its position to the shard's from the recent events, and puts
    /// it back on the live path if that write goes out whole.
    pub(super) fn rejoin(&self, subscriber: &Subscriber) -> Rejoin {
        if subscriber.closed.get() {
            return Rejoin::Closed;
        }
        let position = subscriber.last_position.get();
        let last = self.last_fanned.get();
        if position < last {
            let recent = self.recent.borrow();
            let Some(oldest) = recent.front() else {
                return Rejoin::NeedsStore;
            };
            if oldest.position > position + 1 {
                return Rejoin::NeedsStore;
            }
            let skip = usize::try_from(position + 1 - oldest.position).unwrap_or(0);
            let missed: Vec<Arc<StoredEvent>> = recent.iter().skip(skip).cloned().collect();
            drop(recent);
            let written = subscriber.frames_for(&missed).map(|(frames, count)| {
                self.count_delivered(count);
                subscriber.write_now(frames)
            });
            subscriber.last_position.set(last);
            match written {
                Some(Written::Blocked) => return Rejoin::Blocked,
                Some(Written::Failed) => return Rejoin::Closed,
                Some(Written::All) | None => {}
            }
        }
        subscriber.live.set(true);
        Rejoin::Live
    }

    /// The clock: heartbeats of idle live streams, ends of expired tickets.
    fn on_tick(&self) {
        let due = self.wheel.borrow_mut().advance();
        let now = Instant::now();
        let heartbeat = self.state.heartbeat;
        let early = self.wheel.borrow().tick() / 2;
        for entry in due {
            let Some(subscriber) = entry.upgrade() else {
                continue;
            };
            if subscriber.closed.get() {
                continue;
            }
            if subscriber.deadline.is_some_and(|d| d <= now) {
                subscriber.close();
                continue;
            }
            if subscriber.live.get() && subscriber.last_write.get() + heartbeat <= now + early {
                subscriber.write_now(Bytes::from_static(KEEP_ALIVE));
            }
            self.schedule(&subscriber, now);
        }
        let delivered = self.delivered.replace(0);
        if delivered > 0 {
            metrics::counter!("cpod_events_delivered_total", "transport" => "sse")
                .increment(delivered);
        }
    }

    fn each(&self, mut f: impl FnMut(&Rc<Subscriber>)) {
        for (_, subscriber) in self.everything.borrow().iter() {
            f(subscriber);
        }
        for subscribers in self.organizations.borrow().values() {
            for (_, subscriber) in subscribers.iter() {
                f(subscriber);
            }
        }
    }

    /// Ends the streams whose key was revoked (or everything, at shutdown).
    fn close_ended(&self) {
        self.each(|subscriber| {
            if subscriber.ended.is_cancelled() {
                subscriber.close();
            }
        });
    }

    /// The hub's messages overran this shard: every live subscriber catches up from the store,
    /// from where it was, to what the hub has published by now.
    fn lost_messages(&self) {
        tracing::warn!("a stream shard fell behind the hub; its streams catch up from the store");
        self.recent.borrow_mut().clear();
        self.last_fanned
            .set(self.last_fanned.get().max(self.hub().last_published()));
        self.each(|subscriber| {
            if subscriber.live.replace(false) {
                metrics::counter!("cpod_stream_catchups_total").increment(1);
                subscriber.wake();
            }
        });
        // A revocation may have been among the lost messages.
        self.close_ended();
    }
}

/// Writes a run of one organization's events to the live subscribers among `subscribers`.
fn deliver(subscribers: &Slab<Rc<Subscriber>>, events: &[Arc<StoredEvent>]) -> usize {
    let mut delivered = 0;
    // Subscribers without filters (most of them) share one chunk of every frame.
    let mut whole: Option<Bytes> = None;
    for (_, subscriber) in subscribers.iter() {
        if !subscriber.live.get() {
            continue;
        }
        // Only cPod-format subscribers share the one chunk; a CloudEvents one gets its own frames.
        let takes_all = subscriber.format == EventFormat::Cpod
            && subscriber.filter.types.is_empty()
            && subscriber.filter.resource_type.is_none()
            && subscriber.filter.resource_id.is_none()
            && subscriber.filter.workspace_id.is_none()
            && events.len() > 1
            && events[0].position > subscriber.last_position.get();
        let frames = if takes_all {
            subscriber
                .last_position
                .set(events[events.len() - 1].position);
            Some((
                whole
                    .get_or_insert_with(|| {
                        // cPod frames are pre-encoded: they cannot fail, and there are two or more.
                        frames(events.iter().map(|e| &**e), EventFormat::Cpod)
                            .ok()
                            .flatten()
                            .expect("a chunk of two or more cPod frames")
                            .0
                    })
                    .clone(),
                events.len(),
            ))
        } else {
            subscriber.frames_for(events)
        };
        if let Some((frames, count)) = frames {
            delivered += count;
            subscriber.write_now(frames);
        }
    }
    delivered
}

/// The shard's task: the hub's messages, the clock, and shutdown.
async fn follow(shard: Rc<ShardInner>, mut receiver: broadcast::Receiver<Fanout>) {
    let shutdown = shard.state.shutdown.clone();
    let mut next_tick = shard.wheel.borrow().next_tick_at();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                shard.each(|subscriber| subscriber.close());
                return;
            }
            _ = tokio::time::sleep_until(next_tick) => {
                shard.on_tick();
                next_tick = shard.wheel.borrow().next_tick_at();
                // After a stall (a busy worker), the wheel catches up one tick at a time
                // without sleeping.
            }
            message = receiver.recv() => match message {
                Ok(Fanout::Events(group)) => shard.fan_out(&group),
                Ok(Fanout::Revoked(_)) => shard.close_ended(),
                Err(RecvError::Lagged(_)) => shard.lost_messages(),
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Where a rejoin attempt left a subscriber.
pub(super) enum Rejoin {
    Live,
    /// Written from the recent events in part: the rest is in its backlog.
    Blocked,
    /// The recent events do not reach back to its position.
    NeedsStore,
    Closed,
}
