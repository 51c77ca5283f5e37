//! Zombie detection: peers that have sent nothing for the idle timeout are
//! evicted, so a client that vanished without RemovePeer frees its SSRC and
//! stops costing fan-out.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::table::RelayTable;

/// How often to sweep for a given timeout: often enough that a peer is gone
/// within ~1.25 timeouts, never busier than every 10 ms nor lazier than 1 s.
pub fn sweep_period(idle_timeout_ms: u64) -> Duration {
    Duration::from_millis((idle_timeout_ms / 4).clamp(10, 1_000))
}

/// Evicts idle peers from `table` until `shutdown`.
pub async fn evict_idle_peers(table: &RelayTable, idle_timeout_ms: u64, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(sweep_period(idle_timeout_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for (channel_id, ssrc) in table.evict_idle(table.now_ms(), idle_timeout_ms) {
                    tracing::info!(channel_id = %channel_id, ssrc = %ssrc, "idle media peer evicted");
                }
            }
            () = shutdown.cancelled() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_period_is_a_quarter_timeout_within_bounds() {
        assert_eq!(sweep_period(200), Duration::from_millis(50));
        assert_eq!(sweep_period(1), Duration::from_millis(10));
        assert_eq!(sweep_period(30_000), Duration::from_secs(1));
    }
}
