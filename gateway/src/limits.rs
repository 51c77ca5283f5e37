//! Rate limits on client frames: one per connection, checked locally (a
//! GCRA bucket the connection task owns: no lock, no I/O), and one per user
//! of each protocol, shared by every gateway replica (a GCRA bucket in
//! shared state, decided atomically by one Redis script). A refused frame
//! is not handled; the protocol answers it with its own error frame
//! ([`crate::protocols::Protocol::on_rate_limited`]) and the connection
//! stays open.

use std::time::Duration;

use relaymesh_proto::client::v1::ClientProtocol;
use relaymesh_state::{LocalBucket, Rate, SharedState};

use crate::protocols::protocol_name;

/// Flags of the frame rate limits (0 turns a limit off).
#[derive(Debug, Clone, clap::Args)]
pub struct RateLimitArgs {
    /// Frames one connection may send per second, on average.
    #[arg(long, env = "RATE_LIMIT_CONN_PER_SEC", default_value_t = DEFAULT_CONN_PER_SEC)]
    pub rate_limit_conn_per_sec: f64,

    /// Frames one connection may send at once after a quiet spell.
    #[arg(long, env = "RATE_LIMIT_CONN_BURST", default_value_t = DEFAULT_CONN_BURST)]
    pub rate_limit_conn_burst: u32,

    /// Frames one user (node, on `/ws/node`) may send per second, on
    /// average, over all their connections of one protocol on every replica.
    #[arg(long, env = "RATE_LIMIT_USER_PER_SEC", default_value_t = DEFAULT_USER_PER_SEC)]
    pub rate_limit_user_per_sec: f64,

    /// Frames one user may send at once after a quiet spell.
    #[arg(long, env = "RATE_LIMIT_USER_BURST", default_value_t = DEFAULT_USER_BURST)]
    pub rate_limit_user_burst: u32,

    /// On `/ws/node`, instead of the two above: frames one node may send per
    /// second, on average, per connection and over every replica. A node
    /// speaks for all its devices, so its budget is a machine's, not a
    /// person's.
    #[arg(long, env = "RATE_LIMIT_NODE_PER_SEC", default_value_t = DEFAULT_NODE_PER_SEC)]
    pub rate_limit_node_per_sec: f64,

    /// Frames one node may send at once after a quiet spell.
    #[arg(long, env = "RATE_LIMIT_NODE_BURST", default_value_t = DEFAULT_NODE_BURST)]
    pub rate_limit_node_burst: u32,
}

/// Generous for people and devices (a chat client sends a few frames a
/// second; a node a few per command), far below a flood (10,000 frames in
/// half a second were accepted before these limits). A user's limit is
/// twice a connection's, so two tabs of one user are not refused for
/// being two.
pub const DEFAULT_CONN_PER_SEC: f64 = 100.0;
pub const DEFAULT_CONN_BURST: u32 = 200;
pub const DEFAULT_USER_PER_SEC: f64 = 200.0;
pub const DEFAULT_USER_BURST: u32 = 400;
/// A node with a hundred devices finishing a task each every 100 ms sends
/// about 2,000 frames a second (RESULT, then ACK of the next COMMAND).
pub const DEFAULT_NODE_PER_SEC: f64 = 2_000.0;
pub const DEFAULT_NODE_BURST: u32 = 4_000;

impl RateLimitArgs {
    /// The (connection, user) rates of `protocol`'s frames; None is no limit.
    pub fn rates(&self, protocol: ClientProtocol) -> (Option<Rate>, Option<Rate>) {
        if protocol == ClientProtocol::Node {
            let node = Rate::new(self.rate_limit_node_per_sec, self.rate_limit_node_burst);
            return (node, node);
        }
        (
            Rate::new(self.rate_limit_conn_per_sec, self.rate_limit_conn_burst),
            Rate::new(self.rate_limit_user_per_sec, self.rate_limit_user_burst),
        )
    }
}

/// Which limit refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Connection,
    User,
}

impl Scope {
    fn label(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::User => "user",
        }
    }
}

/// A frame refused by a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub scope: Scope,
    /// When a frame is accepted again.
    pub retry_after: Duration,
}

/// One connection's limits: its own bucket, and where its user's is.
#[derive(Debug)]
pub struct FrameLimiter {
    connection: Option<LocalBucket>,
    user: Option<Rate>,
    /// (user, its shared bucket's key), for the connection's user.
    user_key: Option<(String, String)>,
    /// The first refusal is logged; the rest are counted only.
    logged: bool,
}

impl FrameLimiter {
    pub fn new(args: &RateLimitArgs, protocol: ClientProtocol) -> Self {
        let (connection, user) = args.rates(protocol);
        Self {
            connection: connection.map(LocalBucket::new),
            user,
            user_key: None,
            logged: false,
        }
    }

    /// Counts one frame of `user` (None before the connection is
    /// identified: only its own limit applies). The connection's bucket is
    /// checked first, so a flooding socket costs no shared-state call.
    ///
    /// Shared state that cannot be reached lets the frame through (and
    /// counts it): a limit must not turn a Redis hiccup into an outage.
    pub async fn admit(
        &mut self,
        state: &SharedState,
        protocol: ClientProtocol,
        user: Option<&str>,
        connection_id: &str,
    ) -> Result<(), Limited> {
        let name = protocol_name(protocol);
        let mut refused = None;
        if let Some(bucket) = &mut self.connection {
            let d = bucket.check(1);
            if !d.allowed {
                refused = Some(Limited {
                    scope: Scope::Connection,
                    retry_after: d.reset_after,
                });
            }
        }
        if refused.is_none()
            && let (Some(rate), Some(user)) = (self.user, user)
        {
            // The key is built once per user, not once per frame.
            if self.user_key.as_ref().is_none_or(|(of, _)| of != user) {
                self.user_key = Some((user.to_owned(), user_key(name, user)));
            }
            let key = self.user_key.as_ref().map_or("", |(_, key)| key.as_str());
            match state.throttle(key, rate, 1).await {
                Ok(d) if !d.allowed => {
                    refused = Some(Limited {
                        scope: Scope::User,
                        retry_after: d.reset_after,
                    });
                }
                Ok(_) => {}
                Err(err) => {
                    metrics::counter!("relaymesh_gateway_rate_limit_errors_total", "protocol" => name).increment(1);
                    tracing::debug!(connection_id, error = %err, "user rate limit not checked; frame let through");
                }
            }
        }
        let Some(limited) = refused else { return Ok(()) };
        metrics::counter!("relaymesh_gateway_frames_rate_limited_total", "protocol" => name, "scope" => limited.scope.label())
            .increment(1);
        if !self.logged {
            self.logged = true;
            tracing::info!(
                connection_id,
                protocol = name,
                user_id = user.unwrap_or(""),
                scope = limited.scope.label(),
                "frames rate limited"
            );
        }
        Err(limited)
    }
}

/// The shared bucket of one user of one protocol.
fn user_key(protocol: &str, user: &str) -> String {
    format!("ratelimit:{protocol}:{user}")
}
