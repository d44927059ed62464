//! The shutdown signal every task shares: a `watch` channel that turns true once.

use tokio::sync::watch;

/// Resolves once shutdown has been signalled (or the sender is gone).
pub async fn signalled(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, so callers' futures stay Send.
    let _ = rx.wait_for(|s| *s).await;
}
