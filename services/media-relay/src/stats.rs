//! Relay counters: atomics the forwarding loop adds to and GetStats reads,
//! mirrored into `metrics` counters and gauges by a once-a-second task.
//!
//! The hot path never calls into the metrics recorder (a registry lookup
//! per call); it counts into a [`LocalCounts`] and flushes that into the
//! shared atomics whenever its socket runs dry, or every few hundred packets
//! under sustained load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use relaymesh_proto::media_relay::v1::GetStatsResponse;
use tokio_util::sync::CancellationToken;

use crate::table::RelayTable;

/// Process-wide totals since start.
#[derive(Debug, Default)]
pub struct RelayCounters {
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_out: AtomicU64,
    dropped_malformed: AtomicU64,
    dropped_unknown_ssrc: AtomicU64,
    dropped_no_floor: AtomicU64,
    send_errors: AtomicU64,
}

/// Why a packet was not forwarded; the `reason` label of
/// `media_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Malformed,
    UnknownSsrc,
    NoFloor,
}

/// One forwarding loop's counts since its last flush.
#[derive(Debug, Default)]
pub struct LocalCounts {
    packets_in: u64,
    bytes_in: u64,
    packets_out: u64,
    bytes_out: u64,
    dropped_malformed: u64,
    dropped_unknown_ssrc: u64,
    dropped_no_floor: u64,
    send_errors: u64,
}

impl LocalCounts {
    pub fn received(&mut self, bytes: usize) {
        self.packets_in += 1;
        self.bytes_in += bytes as u64;
    }

    pub fn sent(&mut self, bytes: usize) {
        self.packets_out += 1;
        self.bytes_out += bytes as u64;
    }

    pub fn dropped(&mut self, reason: DropReason) {
        match reason {
            DropReason::Malformed => self.dropped_malformed += 1,
            DropReason::UnknownSsrc => self.dropped_unknown_ssrc += 1,
            DropReason::NoFloor => self.dropped_no_floor += 1,
        }
    }

    pub fn send_failed(&mut self) {
        self.send_errors += 1;
    }

    /// Packets received since the last flush.
    pub fn pending_packets(&self) -> u64 {
        self.packets_in
    }

    /// Adds these counts to `shared` and starts again from zero.
    pub fn flush(&mut self, shared: &RelayCounters) {
        let add = |a: &AtomicU64, v: u64| {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&shared.packets_in, self.packets_in);
        add(&shared.bytes_in, self.bytes_in);
        add(&shared.packets_out, self.packets_out);
        add(&shared.bytes_out, self.bytes_out);
        add(&shared.dropped_malformed, self.dropped_malformed);
        add(&shared.dropped_unknown_ssrc, self.dropped_unknown_ssrc);
        add(&shared.dropped_no_floor, self.dropped_no_floor);
        add(&shared.send_errors, self.send_errors);
        *self = Self::default();
    }
}

impl RelayCounters {
    /// The GetStats answer: these totals plus the table's current size.
    pub fn snapshot(&self, table: &RelayTable) -> GetStatsResponse {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (peers, channels) = table.counts();
        GetStatsResponse {
            packets_in: get(&self.packets_in),
            packets_out: get(&self.packets_out),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            dropped_malformed: get(&self.dropped_malformed),
            dropped_unknown_ssrc: get(&self.dropped_unknown_ssrc),
            dropped_no_floor: get(&self.dropped_no_floor),
            peers: u32::try_from(peers).unwrap_or(u32::MAX),
            channels: u32::try_from(channels).unwrap_or(u32::MAX),
        }
    }

    fn publish(&self, table: &RelayTable) {
        let s = self.snapshot(table);
        metrics::counter!("relaymesh_media_packets_in_total").absolute(s.packets_in);
        metrics::counter!("relaymesh_media_bytes_in_total").absolute(s.bytes_in);
        metrics::counter!("relaymesh_media_packets_out_total").absolute(s.packets_out);
        metrics::counter!("relaymesh_media_bytes_out_total").absolute(s.bytes_out);
        metrics::counter!("relaymesh_media_dropped_total", "reason" => "malformed").absolute(s.dropped_malformed);
        metrics::counter!("relaymesh_media_dropped_total", "reason" => "unknown_ssrc").absolute(s.dropped_unknown_ssrc);
        metrics::counter!("relaymesh_media_dropped_total", "reason" => "no_floor").absolute(s.dropped_no_floor);
        metrics::counter!("relaymesh_media_send_errors_total").absolute(self.send_errors.load(Ordering::Relaxed));
        metrics::gauge!("relaymesh_media_peers").set(f64::from(s.peers));
        metrics::gauge!("relaymesh_media_channels").set(f64::from(s.channels));
    }
}

/// Mirrors the counters into `metrics` every second until `shutdown`, and
/// once more on the way out.
pub async fn publish_metrics(counters: &RelayCounters, table: &RelayTable, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => counters.publish(table),
            () = shutdown.cancelled() => break,
        }
    }
    counters.publish(table);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_adds_local_counts_and_resets_them() {
        let shared = RelayCounters::default();
        let mut local = LocalCounts::default();
        local.received(100);
        local.received(50);
        local.sent(100);
        local.dropped(DropReason::Malformed);
        local.dropped(DropReason::UnknownSsrc);
        local.dropped(DropReason::NoFloor);
        local.flush(&shared);
        local.received(1);
        local.flush(&shared);

        let s = shared.snapshot(&RelayTable::new());
        assert_eq!((s.packets_in, s.bytes_in, s.packets_out, s.bytes_out), (3, 151, 1, 100));
        assert_eq!(
            (s.dropped_malformed, s.dropped_unknown_ssrc, s.dropped_no_floor),
            (1, 1, 1)
        );
        assert_eq!(local.pending_packets(), 0);
    }
}
