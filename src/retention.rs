//! The pruning task: deletes expired events and idempotency records in small batches.
//!
//! Expired events are already invisible (every read filters by the retention horizon); this
//! only reclaims space. Each batch is one small writer command, so ingestion waiting in the
//! writer's queue is never held up behind a large delete.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Rows deleted per writer command.
pub const PRUNE_BATCH: usize = 500;

/// How often to prune: a tenth of the retention, between one second and one minute.
pub fn prune_interval(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Runs until `shutdown` is cancelled.
pub async fn run(store: Store, interval: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        loop {
            match store.prune(PRUNE_BATCH).await {
                Ok(report) => {
                    if report.events > 0 || report.idempotency_records > 0 {
                        tracing::debug!(
                            events = report.events,
                            idempotency = report.idempotency_records,
                            "pruned"
                        );
                        metrics::counter!("cpod_pruned_events_total")
                            .increment(report.events as u64);
                    }
                    if report.events < PRUNE_BATCH && report.idempotency_records < PRUNE_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning failed; retrying at the next tick");
                    break;
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            tokio::task::yield_now().await;
        }
    }
}
