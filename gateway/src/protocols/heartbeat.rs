//! The heartbeat policy of one connection, the same on every transport.
//!
//! Each heartbeat period the connection refreshes its session in the
//! registry, and, by the protocol's [`Liveness`]:
//! - [`Liveness::ClientBeats`] (LiveChat, node, signal on a WebSocket): a
//!   period without any frame from the client is a miss;
//! - [`Liveness::PongDeadline`] (copilot, seed 001): the server pings and
//!   each ping must be answered within `PONG_TIMEOUT_MS`; an unanswered
//!   ping is a miss;
//! - [`Liveness::Unchecked`]: nothing is counted (a gRPC stream of a
//!   protocol whose client heartbeats: HTTP/2 keeps the stream alive).
//!
//! `HEARTBEAT_MAX_MISSED` misses in a row close the connection with 4003.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::config::GatewayConfig;

/// How a connection shows it is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    ClientBeats,
    PongDeadline,
    Unchecked,
}

/// What a connection does when its heartbeat fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// A new period: note activity if the client was `heard`, send the
    /// protocol's ping if it has one, refresh the session.
    Period { heard: bool },
    /// Too many misses: close with 4003 and this reason.
    Lost(&'static str),
    /// A pong deadline passed, not yet too many misses.
    Missed,
}

const PONGS_MISSED: &str = "heartbeat lost: pongs missed";
const SILENT: &str = "heartbeat lost";

/// One connection's heartbeat state.
#[derive(Debug)]
pub struct Heartbeat {
    liveness: Liveness,
    period: Interval,
    max_missed: u32,
    pong_timeout: Duration,
    /// A frame arrived in this period.
    heard: bool,
    /// Misses in a row.
    missed: u32,
    /// With [`Liveness::PongDeadline`]: when the pong to the last ping is due.
    pong_due: Option<Instant>,
}

impl Heartbeat {
    pub fn new(cfg: &GatewayConfig, liveness: Liveness) -> Self {
        let mut period = tokio::time::interval_at(Instant::now() + cfg.heartbeat_interval(), cfg.heartbeat_interval());
        period.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            liveness,
            period,
            max_missed: cfg.heartbeat_max_missed,
            pong_timeout: cfg.pong_timeout(),
            heard: false,
            missed: 0,
            pong_due: None,
        }
    }

    /// The client sent a frame.
    pub fn heard(&mut self) {
        self.heard = true;
    }

    /// The client answered the server's ping ([`Liveness::PongDeadline`]).
    pub fn answered(&mut self) {
        (self.missed, self.pong_due) = (0, None);
    }

    /// Waits for the next pong deadline or period, and applies the policy.
    pub async fn next(&mut self) -> Beat {
        tokio::select! {
            () = crate::ws::sleep_until(self.pong_due), if self.pong_due.is_some() => {
                self.pong_due = None;
                self.miss(PONGS_MISSED).unwrap_or(Beat::Missed)
            }
            _ = self.period.tick() => self.period_ended(),
        }
    }

    fn period_ended(&mut self) -> Beat {
        let heard = std::mem::take(&mut self.heard);
        match self.liveness {
            Liveness::PongDeadline => {
                // A deadline that falls on this tick counts here, before the
                // next ping.
                if self.pong_due.take().is_some()
                    && let Some(lost) = self.miss(PONGS_MISSED)
                {
                    return lost;
                }
                if self.missed >= self.max_missed {
                    return Beat::Lost(PONGS_MISSED);
                }
                self.pong_due = Some(Instant::now() + self.pong_timeout);
            }
            Liveness::ClientBeats => {
                if heard {
                    self.missed = 0;
                } else if let Some(lost) = self.miss(SILENT) {
                    return lost;
                }
            }
            Liveness::Unchecked => {}
        }
        Beat::Period { heard }
    }

    /// Counts a miss; the close when it is one too many.
    fn miss(&mut self, why: &'static str) -> Option<Beat> {
        self.missed += 1;
        (self.missed >= self.max_missed).then_some(Beat::Lost(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_missed: u32) -> GatewayConfig {
        use clap::Parser;
        #[derive(Parser)]
        struct Args {
            #[command(flatten)]
            gateway: GatewayConfig,
        }
        let mut cfg = Args::parse_from(["test"]).gateway;
        cfg.heartbeat_interval_ms = 1_000;
        cfg.pong_timeout_ms = 300;
        cfg.heartbeat_max_missed = max_missed;
        cfg
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_lost_after_the_last_allowed_period() {
        let mut hb = Heartbeat::new(&config(3), Liveness::ClientBeats);
        assert_eq!(hb.next().await, Beat::Period { heard: false });
        hb.heard();
        assert_eq!(hb.next().await, Beat::Period { heard: true });
        assert_eq!(hb.next().await, Beat::Period { heard: false });
        assert_eq!(hb.next().await, Beat::Period { heard: false });
        assert_eq!(hb.next().await, Beat::Lost(SILENT));
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_pings_are_lost_after_the_last_allowed_deadline() {
        let mut hb = Heartbeat::new(&config(2), Liveness::PongDeadline);
        let start = Instant::now();
        assert_eq!(hb.next().await, Beat::Period { heard: false });
        // The first ping's deadline, 300 ms after it.
        assert_eq!(hb.next().await, Beat::Missed);
        assert_eq!(start.elapsed(), Duration::from_millis(1_300));
        assert_eq!(hb.next().await, Beat::Period { heard: false });
        assert_eq!(hb.next().await, Beat::Lost(PONGS_MISSED));
        assert_eq!(start.elapsed(), Duration::from_millis(2_300));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_ping_clears_the_misses_and_frames_alone_do_not() {
        let mut hb = Heartbeat::new(&config(2), Liveness::PongDeadline);
        assert_eq!(hb.next().await, Beat::Period { heard: false });
        assert_eq!(hb.next().await, Beat::Missed);
        assert_eq!(hb.next().await, Beat::Period { heard: false });
        hb.answered();
        hb.heard();
        assert_eq!(hb.next().await, Beat::Period { heard: true });
        // Another frame, but no pong: the deadline still counts.
        hb.heard();
        assert_eq!(hb.next().await, Beat::Missed);
        assert_eq!(hb.next().await, Beat::Period { heard: true });
        assert_eq!(hb.next().await, Beat::Lost(PONGS_MISSED));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchecked_connection_only_refreshes() {
        let mut hb = Heartbeat::new(&config(1), Liveness::Unchecked);
        for _ in 0..5 {
            assert_eq!(hb.next().await, Beat::Period { heard: false });
        }
    }
}
