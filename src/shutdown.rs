//! Shutdown: one [`CancellationToken`] for the whole process, cancelled by SIGTERM or SIGINT
//! (or by whoever owns the application, e.g. a test). `startup::Application` makes it and hands
//! it to everything that runs — streams, workers, the hub, the feed followers — and joins them
//! all before it closes the store.
//!
//! [`Drain`] is the HTTP side of it: it counts the requests in flight, and once the token is
//! cancelled it admits no new one (the edge answers those 503 `unavailable`), so that the server
//! can wait for the admitted ones before it stops listening: a request is either answered or its
//! connection refused, never read and then dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Waits for SIGTERM or SIGINT, then cancels `token`.
pub async fn cancel_on_signal(token: Arc<CancellationToken>) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
    token.cancel();
}

/// Requests in flight, and whether new ones are still admitted (until the token is cancelled).
#[derive(Clone)]
pub struct Drain {
    shutdown: CancellationToken,
    in_flight: Arc<AtomicUsize>,
}

/// One admitted request; dropping it (the request is answered or abandoned) ends it.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drain {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Admits a request, or `None` once shutdown has begun.
    pub fn admit(&self) -> Option<InFlight> {
        // Counted before the check: a request that passes it is seen by `finished`, which
        // starts counting only after the cancellation.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let admitted = InFlight(self.in_flight.clone());
        (!self.shutdown.is_cancelled()).then_some(admitted)
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until every admitted request is answered, or `timeout` passes; answers whether
    /// they all were.
    pub async fn finished(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.in_flight() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_admits_until_cancelled_and_waits_for_what_it_admitted() {
        let token = CancellationToken::new();
        let drain = Drain::new(token.clone());
        let first = drain.admit().expect("admitted before shutdown");
        assert_eq!(drain.in_flight(), 1);
        token.cancel();
        assert!(drain.admit().is_none(), "admitted after shutdown");
        assert_eq!(drain.in_flight(), 1, "a refused request is not counted");
        assert!(!drain.finished(Duration::from_millis(30)).await);
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(first);
        });
        assert!(drain.finished(Duration::from_secs(5)).await);
        release.await.unwrap();
    }
}
