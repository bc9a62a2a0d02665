//! The task of a directly written stream between deliveries: it waits for its client to close,
//! and when its shard took it off the live path (a write that would block) it catches up — the
//! rest of that write, then pages from the store after its position, then the shard's recent
//! events — and rejoins. The gapless invariant of [`crate::hub`] holds by the shard's single
//! thread: between two awaits nothing else runs, so rejoining (the position checked against the
//! shard's, then live) cannot interleave with a fan-out.

use std::rc::Rc;

use crate::hub::REPLAY_PAGE;
use crate::store::{HistoryQuery, Order};

use super::shard::{Rejoin, ShardInner};
use super::subscriber::{Subscriber, Wake};

/// Serves a registered subscriber until its stream ends, then takes it out of the shard and
/// closes the connection.
pub(super) async fn run(subscriber: Rc<Subscriber>, shard: Rc<ShardInner>) {
    loop {
        match subscriber.wait(false).await {
            Wake::Close => break,
            Wake::Readable | Wake::Writable => {
                if !subscriber.drain_input() {
                    break;
                }
            }
            Wake::CatchUp => {
                // Boxed: the store read's state exists only while catching up, not in every
                // idle stream's task.
                if !Box::pin(catch_up(&subscriber, &shard)).await {
                    break;
                }
            }
        }
    }
    shard.remove(&subscriber);
    let _ = socket2::SockRef::from(&subscriber.socket).shutdown(std::net::Shutdown::Write);
}

/// Brings a subscriber that left the live path up to date and back on it: its backlog, then
/// pages from the store, then the shard's recent events. `false` if the stream is to end.
async fn catch_up(subscriber: &Subscriber, shard: &ShardInner) -> bool {
    loop {
        if !subscriber.flush_backlog().await {
            return false;
        }
        if subscriber.closed.get() {
            return false;
        }
        match shard.rejoin(subscriber) {
            Rejoin::Live => return true,
            Rejoin::Blocked => continue,
            Rejoin::Closed => return false,
            Rejoin::NeedsStore => {}
        }
        // Every position up to `target` is committed: a complete read from here covers it.
        let target = shard.last_fanned();
        let page = shard
            .state
            .store
            .history(HistoryQuery {
                filter: subscriber.filter.clone(),
                since_ms: None,
                until_ms: None,
                after_position: Some(subscriber.last_position.get()),
                order: Order::Asc,
                limit: REPLAY_PAGE,
            })
            .await;
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "an SSE stream ends: it cannot catch up from the store");
                return false;
            }
        };
        if let Some((frames, count)) = subscriber.frames_for(&page.events) {
            metrics::counter!("cpod_events_replayed_total").increment(count as u64);
            shard.count_delivered(count);
            subscriber.backlog.set(frames);
        }
        if !page.has_more && subscriber.last_position.get() < target {
            subscriber.last_position.set(target);
        }
    }
}
