//! Draining on shutdown: a relay asked to stop keeps forwarding for the
//! channels it serves (its registration says `draining`, so the channel
//! service gives it no new ones) until the last peer is gone or the drain
//! timeout ends, then stops its gRPC server.
//!
//! Peers go away as members leave (the channel service removes them) or
//! fall silent (the idle sweep evicts them).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::table::RelayTable;

/// How often the table is looked at while draining.
const POLL: Duration = Duration::from_millis(100);

/// Waits for `shutdown`, then for the table to empty or `timeout`, then
/// cancels `drained`. Returns early, doing nothing, if `stop` fires first
/// (the server failed on its own).
pub(crate) async fn drain_then_stop(
    table: &RelayTable,
    timeout: Duration,
    shutdown: CancellationToken,
    drained: CancellationToken,
    stop: CancellationToken,
) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = stop.cancelled() => return,
    }
    let (peers, channels) = table.counts();
    tracing::info!(
        peers,
        channels,
        timeout_ms = timeout.as_millis() as u64,
        "media relay draining"
    );
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (peers, channels) = table.counts();
        if peers == 0 {
            tracing::info!("media relay drained");
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(peers, channels, "media relay drain timeout: cutting remaining channels");
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL.min(timeout)) => {}
            () = stop.cancelled() => return,
        }
    }
    drained.cancel();
}
