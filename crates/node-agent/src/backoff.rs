//! Reconnect delays: `min` doubling to `max`, each drawn with "equal
//! jitter" (half fixed, half random) so a fleet of nodes dropped by one
//! hub restart does not reconnect in lockstep.

use std::time::Duration;

#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            current: min,
            rng: fastrand::Rng::new(),
        }
    }

    /// The delay before the next attempt; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = base / 2;
        let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(self.rng.u64(0..=spread))
    }

    /// After a successful HELLO_ACK: start again from `min`.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let bases = [1, 2, 4, 8, 16, 30, 30];
        for base in bases {
            let d = b.next_delay();
            let base = Duration::from_secs(base);
            assert!(d >= base / 2 && d <= base, "{d:?} for {base:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
