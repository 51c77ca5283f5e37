//! The generic cell rate algorithm (GCRA): a token bucket kept as one
//! number, the bucket's "theoretical arrival time" (TAT). An event of cost
//! `n` moves the TAT `n` emission intervals ahead; it is allowed when the new
//! TAT lies at most a burst ahead of now. One timestamp per key, O(1), so
//! it suits a check on every frame.
//!
//! [`decide`] is the one implementation in Rust: the memory backend and the
//! gateway's per-connection limiter call it; the Redis backend's script
//! (`redis_store::THROTTLE_LUA`) is the same arithmetic on Redis's clock.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crate::RateDecision;

/// An average rate with a burst: `per_sec` events a second, up to `burst`
/// at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_sec: f64,
    burst: u32,
}

impl Rate {
    /// None (no limit) when either is zero or the rate is not a positive
    /// finite number: configuration says 0 to turn a limit off.
    pub fn new(per_sec: f64, burst: u32) -> Option<Self> {
        (per_sec.is_finite() && per_sec > 0.0 && burst > 0).then_some(Self { per_sec, burst })
    }

    pub fn per_sec(&self) -> f64 {
        self.per_sec
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Microseconds between two events at the average rate.
    pub(crate) fn interval_us(&self) -> f64 {
        1e6 / self.per_sec
    }

    /// The cost actually charged: at least 1, and at most a burst (a larger
    /// event could never pass; it passes alone, once the bucket is full).
    pub(crate) fn charge(&self, cost: u32) -> u32 {
        cost.clamp(1, self.burst)
    }
}

/// Decides one event of `cost` at `now_us` against a bucket whose TAT is
/// `tat_us` (None: a full bucket). Returns the decision and the TAT to
/// keep (unchanged when refused: refused events do not count).
pub fn decide(rate: Rate, tat_us: Option<f64>, now_us: f64, cost: u32) -> (RateDecision, f64) {
    let interval = rate.interval_us();
    let tat = tat_us.unwrap_or(now_us).max(now_us);
    let charge = f64::from(rate.charge(cost));
    // Offsets from now, not absolute instants: `now + c - c` need not be
    // `now` in floating point, and a full bucket must take a full burst.
    let until_tat = tat - now_us;
    let ahead = until_tat + (charge - f64::from(rate.burst)) * interval;
    if ahead > 0.0 {
        let decision = RateDecision {
            allowed: false,
            remaining: 0,
            reset_after: micros(ahead),
        };
        return (decision, tat);
    }
    let decision = RateDecision {
        allowed: true,
        remaining: (-ahead / interval) as u32,
        reset_after: micros(until_tat + charge * interval),
    };
    let new_tat = tat + charge * interval;
    (decision, new_tat)
}

fn micros(us: f64) -> Duration {
    Duration::from_micros(us.ceil().max(0.0) as u64)
}

/// Microseconds of `at` on this process's monotonic clock (from an anchor
/// taken at first use), the time base of in-process buckets.
pub fn monotonic_us(at: Instant) -> f64 {
    static ANCHOR: LazyLock<Instant> = LazyLock::new(Instant::now);
    at.saturating_duration_since(*ANCHOR).as_secs_f64() * 1e6
}

/// A bucket this process alone uses (one connection's frames): no lock, no
/// shared state, one float.
#[derive(Debug, Clone)]
pub struct LocalBucket {
    rate: Rate,
    tat_us: Option<f64>,
}

impl LocalBucket {
    pub fn new(rate: Rate) -> Self {
        Self { rate, tat_us: None }
    }

    /// Counts one event of `cost` now, if the bucket allows it.
    pub fn check(&mut self, cost: u32) -> RateDecision {
        let (decision, tat) = decide(self.rate, self.tat_us, monotonic_us(Instant::now()), cost);
        self.tat_us = Some(tat);
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_average_rate() {
        let rate = Rate::new(10.0, 3).unwrap();
        let mut tat = None;
        let mut at = |now: f64| {
            let (d, t) = decide(rate, tat, now, 1);
            tat = Some(t);
            d
        };
        let burst: Vec<bool> = (0..4).map(|_| at(0.0).allowed).collect();
        assert_eq!(burst, [true, true, true, false]);
        let refused = at(0.0);
        assert_eq!(refused.reset_after, Duration::from_millis(100), "one interval");
        assert!(!at(99_999.0).allowed);
        assert!(at(100_000.0).allowed, "one token back after 100 ms");
        assert!(!at(100_000.0).allowed);
    }

    #[test]
    fn remaining_counts_down_and_refusals_do_not_count() {
        let rate = Rate::new(1.0, 5).unwrap();
        let (d, tat) = decide(rate, None, 0.0, 2);
        assert_eq!((d.allowed, d.remaining), (true, 3));
        let (d, tat) = decide(rate, Some(tat), 0.0, 4);
        assert!(!d.allowed);
        let (d, _) = decide(rate, Some(tat), 0.0, 3);
        assert_eq!((d.allowed, d.remaining), (true, 0), "the refusal took nothing");
    }

    #[test]
    fn a_cost_above_the_burst_passes_alone_with_a_full_bucket() {
        let rate = Rate::new(100.0, 10).unwrap();
        let (d, tat) = decide(rate, None, 0.0, 50);
        assert!(d.allowed);
        assert!(!decide(rate, Some(tat), 0.0, 1).0.allowed);
    }

    #[test]
    fn zero_turns_a_limit_off() {
        assert!(Rate::new(0.0, 10).is_none());
        assert!(Rate::new(5.0, 0).is_none());
        assert!(Rate::new(f64::NAN, 1).is_none());
    }
}
