//! This node among the others: its heartbeat in the store's node registry, and the gauges that
//! say how the cluster looks from here.
//!
//! - `cpod_cluster_nodes`: nodes whose heartbeat the store saw in the last 30 s (1 on SQLite,
//!   where one process is the whole broker);
//! - `cpod_feed_lag_seconds`: how far this node's live feed (what the hub has published) is
//!   behind the newest committed event: the age of the oldest committed event not published
//!   yet, 0 when the feed is level.
//!
//! The same task forgets rate-limit state that no longer matters.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::hub::Hub;
use crate::store::Store;

/// How often the feed lag is measured.
const LAG_INTERVAL: Duration = Duration::from_secs(1);
/// How often (in lag intervals) the node's heartbeat is written: well inside the 30 s after
/// which a node no longer counts as alive.
const HEARTBEAT_EVERY: u32 = 5;

/// This node as the registry knows it.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub started_ms: i64,
}

/// Registers the node (its first heartbeat) and sets `cpod_cluster_nodes`.
pub async fn register(store: &Store, node: &Node) -> Result<(), crate::store::StoreError> {
    let alive = store.heartbeat(&node.id, node.started_ms).await?;
    metrics::gauge!("cpod_cluster_nodes").set(alive as f64);
    Ok(())
}

/// Runs until `shutdown` is cancelled, then takes the node out of the registry.
pub async fn run(
    store: Store,
    hub: Hub,
    auth: Arc<Authenticator>,
    node: Node,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(LAG_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        ticks = ticks.wrapping_add(1);
        match feed_lag_ms(&store, &hub).await {
            Ok(lag) => metrics::gauge!("cpod_feed_lag_seconds").set(lag as f64 / 1000.0),
            Err(e) => tracing::debug!(error = %e, "cannot measure the feed lag"),
        }
        if ticks.is_multiple_of(HEARTBEAT_EVERY) {
            if let Err(e) = register(&store, &node).await {
                tracing::warn!(error = %e, "cannot write this node's heartbeat");
            }
            auth.sweep_rate_limits();
        }
    }
    if let Err(e) = store.deregister(&node.id).await {
        tracing::debug!(error = %e, "cannot take this node out of the registry");
    }
}

/// The age of the oldest committed event the hub has not published, 0 when there is none.
pub async fn feed_lag_ms(store: &Store, hub: &Hub) -> Result<i64, crate::store::StoreError> {
    let published = hub.last_published();
    Ok(match store.timestamp_after(published).await? {
        Some(ts_ms) => (store.clock().now_ms() - ts_ms).max(0),
        None => 0,
    })
}
