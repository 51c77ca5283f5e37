//! Cleanup after gateway replicas that died without closing their sockets
//! (`kill -9`, a lost node): every session a dead replica held leaves its
//! channels, lobbies and matches with the normal events, as if its socket
//! had closed, exactly once across the surviving replicas; copilot
//! callbacks waiting for its users are released at once.
//!
//! Liveness (`relaymesh_state::GatewayLiveness`): each replica renews a key
//! with a short TTL; a replica whose key expired is dead, and the first
//! survivor to claim it gets its sessions.

use std::sync::Arc;
use std::time::Duration;

use relaymesh_proto::client::v1::ClientProtocol;
use relaymesh_state::{GatewayLiveness, SessionEntry};
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::protocols::{CopilotProtocol, Ended, LivechatProtocol, NodeProtocol, Protocol, SignalProtocol};

/// How often the survivors look for dead replicas.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Looks for dead replicas every `PERIOD` until `stop`.
pub async fn run(gw: Arc<Shared>, liveness: GatewayLiveness, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let dead = match liveness.dead_gateways().await {
            Ok(dead) => dead,
            Err(err) => {
                tracing::debug!(error = %err, "liveness check failed");
                continue;
            }
        };
        for gateway in dead {
            match liveness.claim_cleanup(&gateway).await {
                Ok(Some(sessions)) => {
                    tracing::info!(dead_gateway = %gateway, sessions = sessions.len(), "cleaning up after a dead gateway");
                    metrics::counter!("relaymesh_gateway_dead_replicas_total").increment(1);
                    for session in &sessions {
                        drop_session(&gw, session).await;
                    }
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(dead_gateway = %gateway, error = %err, "cleanup claim failed"),
            }
        }
    }
}

/// What a closed socket of `session`'s protocol would have cleaned up
/// (each protocol's [`Protocol::release`]).
async fn drop_session(gw: &Shared, session: &SessionEntry) {
    let ended = Ended {
        connection_id: &session.connection_id,
        user_id: &session.user_id,
    };
    let outcome = match ClientProtocol::try_from(session.protocol).unwrap_or(ClientProtocol::Unspecified) {
        ClientProtocol::Livechat => LivechatProtocol::release(gw, ended).await,
        ClientProtocol::Node => NodeProtocol::release(gw, ended).await,
        ClientProtocol::Copilot => CopilotProtocol::release(gw, ended).await,
        ClientProtocol::Signal => SignalProtocol::release(gw, ended).await,
        ClientProtocol::Unspecified => Ok(()),
    };
    match outcome {
        Ok(()) => metrics::counter!("relaymesh_gateway_dead_sessions_dropped_total").increment(1),
        Err(status) => {
            tracing::warn!(connection_id = %session.connection_id, user_id = %session.user_id, error = %status.message(), "dead session not cleaned up")
        }
    }
}
