//! Lobby membership and its coalesced snapshots.
//!
//! A change marks the lobby dirty; one task per replica sends a snapshot at
//! most `LOBBY_UPDATES_PER_SEC` times a second, however many changes came in
//! between, so 1,000 joins cost a few snapshots, not 1,000. Each snapshot is
//! one registry read and one publish per gateway replica, and travels as a
//! droppable envelope: a slow connection loses stale snapshots, never a
//! match or SDP/ICE message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use relaymesh_proto::client::v1::{LobbyPlayer, LobbyUpdate, PlayerStatus, SignalResponse, signal_response::Event};
use relaymesh_proto::r#match::v1::LobbyMember;
use relaymesh_state::{ConnectionId, Delivery, SharedState, event_envelope};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::Result;

const MEMBERS: &str = "lobby:members";
/// player id -> session id of their accepted match (status `in_match`).
const BUSY: &str = "lobby:busy";

#[derive(Clone)]
pub struct Lobby {
    state: SharedState,
    dirty: Arc<Notify>,
}

impl Lobby {
    pub fn new(state: SharedState) -> Self {
        Self {
            state,
            dirty: Arc::default(),
        }
    }

    /// Asks for a snapshot soon (coalesced with other changes).
    pub fn changed(&self) {
        self.dirty.notify_one();
    }

    pub async fn join(&self, member: &LobbyMember) -> Result<()> {
        self.state
            .hash_set(MEMBERS, &member.player_id, &member.encode_to_vec())
            .await?;
        self.changed();
        Ok(())
    }

    pub async fn member(&self, player: &str) -> Result<Option<LobbyMember>> {
        match self.state.hash_get(MEMBERS, player).await? {
            Some(bytes) => Ok(Some(LobbyMember::decode(bytes.as_slice())?)),
            None => Ok(None),
        }
    }

    /// Removes `player` when it joined from `connection_id` (any, if empty);
    /// true when removed.
    pub async fn leave(&self, player: &str, connection_id: &str) -> Result<bool> {
        match self.member(player).await? {
            Some(m) if connection_id.is_empty() || m.connection_id == connection_id => {
                self.state.hash_delete(MEMBERS, player).await?;
                self.changed();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub async fn set_busy(&self, player: &str, session_id: &str) -> Result<()> {
        self.state.hash_set(BUSY, player, session_id.as_bytes()).await?;
        self.changed();
        Ok(())
    }

    pub async fn clear_busy(&self, player: &str) -> Result<()> {
        if self.state.hash_delete(BUSY, player).await? {
            self.changed();
        }
        Ok(())
    }

    async fn members(&self) -> Result<Vec<LobbyMember>> {
        let mut out = Vec::new();
        for (_, bytes) in self.state.hash_all(MEMBERS).await? {
            out.push(LobbyMember::decode(bytes.as_slice())?);
        }
        Ok(out)
    }

    /// The lobby now, and the connections that should see it.
    pub async fn snapshot(&self) -> Result<(Vec<LobbyPlayer>, Vec<ConnectionId>)> {
        let members = self.members().await?;
        let busy: HashMap<String, Vec<u8>> = self.state.hash_all(BUSY).await?.into_iter().collect();
        let mut players: Vec<LobbyPlayer> = members
            .iter()
            .map(|m| LobbyPlayer {
                player_id: m.player_id.clone(),
                player_name: m.player_name.clone(),
                status: if busy.contains_key(&m.player_id) {
                    PlayerStatus::InMatch
                } else {
                    PlayerStatus::Available
                } as i32,
            })
            .collect();
        players.sort_by(|a, b| a.player_id.cmp(&b.player_id));
        let conns = members
            .into_iter()
            .map(|m| ConnectionId::new(m.connection_id))
            .collect();
        Ok((players, conns))
    }

    /// Sends a snapshot whenever the lobby changed, at most once per `gap`,
    /// until `shutdown`.
    pub async fn broadcast_loop(self, delivery: Delivery, gap: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.dirty.notified() => {}
            }
            if let Err(err) = self.broadcast(&delivery).await {
                tracing::warn!(error = %err, "lobby snapshot not sent");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(gap) => {}
            }
        }
    }

    async fn broadcast(&self, delivery: &Delivery) -> Result<()> {
        let (players, conns) = self.snapshot().await?;
        if conns.is_empty() {
            return Ok(());
        }
        let event = SignalResponse {
            event: Some(Event::LobbyUpdate(LobbyUpdate { players })),
        };
        let gone = delivery
            .send_to_connections(&conns, event_envelope(event, true))
            .await?;
        metrics::counter!("relaymesh_match_lobby_snapshots_total").increment(1);
        // Members whose gateway is gone without a leave (a crashed replica).
        for conn in gone {
            for m in self.members().await? {
                if m.connection_id == conn.as_str() {
                    self.leave(&m.player_id, &m.connection_id).await?;
                }
            }
        }
        Ok(())
    }
}
