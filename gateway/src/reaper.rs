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

use relaymesh_proto::channel::v1::DropSessionRequest;
use relaymesh_proto::client::v1::ClientProtocol;
use relaymesh_proto::r#match::v1::LeaveLobbyRequest;
use relaymesh_proto::scheduler::v1::NodeDisconnectedRequest;
use relaymesh_proto::signaling::v1::DropSessionRequest as CopilotDropSessionRequest;
use relaymesh_state::{GatewayLiveness, SessionEntry};
use tokio_util::sync::CancellationToken;

use crate::Shared;

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

/// What a closed socket of `session`'s protocol would have cleaned up.
async fn drop_session(gw: &Shared, session: &SessionEntry) {
    let conn = session.connection_id.clone();
    let outcome = match ClientProtocol::try_from(session.protocol).unwrap_or(ClientProtocol::Unspecified) {
        ClientProtocol::Livechat => gw
            .upstreams
            .channel
            .clone()
            .drop_session(DropSessionRequest {
                session_id: conn.clone(),
            })
            .await
            .map(|_| ()),
        ClientProtocol::Node => gw
            .upstreams
            .scheduler
            .clone()
            .node_disconnected(NodeDisconnectedRequest {
                node_id: session.user_id.clone(),
                connection_id: conn.clone(),
            })
            .await
            .map(|_| ()),
        // Callbacks still waiting for the dead connection fail at once with
        // CONNECTION_CLOSED instead of running into their timeout.
        ClientProtocol::Copilot => gw
            .upstreams
            .signaling
            .clone()
            .drop_session(CopilotDropSessionRequest {
                connection_id: conn.clone(),
            })
            .await
            .map(|_| ()),
        // As the socket's close would: leave the lobby, clear the pending
        // request, fail an open match.
        ClientProtocol::Signal => gw
            .upstreams
            .r#match
            .clone()
            .leave_lobby(LeaveLobbyRequest {
                player_id: session.user_id.clone(),
                connection_id: conn.clone(),
            })
            .await
            .map(|_| ()),
        ClientProtocol::Unspecified => Ok(()),
    };
    match outcome {
        Ok(()) => metrics::counter!("relaymesh_gateway_dead_sessions_dropped_total").increment(1),
        Err(status) => {
            tracing::warn!(connection_id = %conn, user_id = %session.user_id, error = %status.message(), "dead session not cleaned up")
        }
    }
}
