//! Shutdown: one [`CancellationToken`] for the whole process, cancelled by SIGTERM or SIGINT
//! (or by whoever owns the application, e.g. a test). `startup::Application` makes it and hands
//! it to everything that runs — streams, workers, the hub, the feed followers — and joins them
//! all before it closes the store.

use std::sync::Arc;

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
