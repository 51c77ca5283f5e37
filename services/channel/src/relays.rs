//! Which media relay instance serves which channel.
//!
//! Relays announce themselves in shared state (`media-relay:<id>` records,
//! ids in the `media-relays` set). A channel is assigned one live relay on
//! first join (`chan-relay:<channel>`), so all its members' RTP meets in one
//! process; a channel whose relay died is reassigned on the next join. A
//! relay whose registration says `draining` keeps the channels it has but
//! is given no new ones.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prost::Message;
use relaymesh_proto::media_relay::v1::RelayRegistration;
use relaymesh_proto::media_relay::v1::media_relay_service_client::MediaRelayServiceClient;
use relaymesh_rpc::{RpcChannel, connect_lazy};
use relaymesh_state::SharedState;

use crate::error::{ChannelError, Result};

/// The key of the relay assigned to channel `channel_id`.
fn relay_key(channel_id: &str) -> String {
    format!("chan-relay:{channel_id}")
}

pub struct RelayDirectory {
    state: SharedState,
    clients: Mutex<HashMap<String, MediaRelayServiceClient<RpcChannel>>>,
}

impl RelayDirectory {
    pub fn new(state: SharedState) -> Self {
        Self {
            state,
            clients: Mutex::default(),
        }
    }

    async fn registration(&self, relay_id: &str) -> Result<Option<RelayRegistration>> {
        match self.state.get(&format!("media-relay:{relay_id}")).await? {
            None => Ok(None),
            Some(b) => RelayRegistration::decode(b.as_slice())
                .map(Some)
                .map_err(|e| ChannelError::Relay(format!("corrupt registration: {e}"))),
        }
    }

    /// The live relay serving `channel_id`, assigning one if needed; None
    /// when no relay is registered (chat still works, media does not).
    pub async fn for_channel(&self, channel_id: &str) -> Result<Option<RelayRegistration>> {
        let key = relay_key(channel_id);
        let current = self.state.get(&key).await?;
        if let Some(id) = &current
            && let Some(reg) = self.registration(&String::from_utf8_lossy(id)).await?
        {
            return Ok(Some(reg));
        }
        let (mut live, mut draining) = (Vec::new(), Vec::new());
        let mut ids = self.state.set_members("media-relays").await?;
        ids.sort();
        for id in ids {
            match self.registration(&id).await? {
                Some(reg) if reg.draining => draining.push(reg),
                Some(reg) => live.push(reg),
                None => self.state.set_remove("media-relays", &id).await?,
            }
        }
        if live.is_empty() {
            // Better a relay that will stop than no media at all.
            if draining.is_empty() {
                return Ok(None);
            }
            tracing::warn!(channel_id = %channel_id, "every media relay is draining; assigning one anyway");
            live = draining;
        }
        // Spread channels over relays by a stable hash of the channel id.
        let pick = channel_id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let reg = live.swap_remove((pick % live.len() as u64) as usize);
        // Joiners assign outside the channel lock: of racing ones, one
        // assignment wins and every joiner uses it. A dead relay's is replaced.
        if let Some(dead) = &current {
            self.state.delete_if_eq(&key, dead).await?;
        }
        if self.state.set_nx(&key, reg.relay_id.as_bytes(), None).await? {
            return Ok(Some(reg));
        }
        match self.assigned(channel_id).await? {
            Some(theirs) => Ok(Some(theirs)),
            None => Err(ChannelError::Relay(format!(
                "relay assignment of {channel_id} raced; retry"
            ))),
        }
    }

    /// The relay assigned to `channel_id`, without assigning one.
    pub async fn assigned(&self, channel_id: &str) -> Result<Option<RelayRegistration>> {
        match self.state.get(&relay_key(channel_id)).await? {
            Some(id) => self.registration(&String::from_utf8_lossy(&id)).await,
            None => Ok(None),
        }
    }

    pub async fn forget(&self, channel_id: &str) -> Result<()> {
        self.state.delete(&relay_key(channel_id)).await?;
        Ok(())
    }

    pub fn client(&self, reg: &RelayRegistration) -> Result<MediaRelayServiceClient<RpcChannel>> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&reg.grpc_url) {
            return Ok(c.clone());
        }
        let channel =
            connect_lazy(&reg.grpc_url, Duration::from_secs(3)).map_err(|e| ChannelError::Relay(e.to_string()))?;
        let client = MediaRelayServiceClient::new(channel);
        clients.insert(reg.grpc_url.clone(), client.clone());
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn register(state: &SharedState, relay_id: &str, draining: bool) {
        let reg = RelayRegistration {
            relay_id: relay_id.to_owned(),
            grpc_url: format!("http://{relay_id}:50051"),
            media_addr: format!("{relay_id}:5004"),
            refreshed_at_ms: 1,
            draining,
        };
        state
            .set(&format!("media-relay:{relay_id}"), &reg.encode_to_vec(), None)
            .await
            .unwrap();
        state.set_add("media-relays", relay_id, None).await.unwrap();
    }

    use relaymesh_state::testing::backends;

    #[tokio::test]
    async fn new_channels_skip_a_draining_relay() {
        for state in backends("relays-skip-draining").await {
            register(&state, "a", true).await;
            register(&state, "b", false).await;
            let dir = RelayDirectory::new(state.clone());
            for i in 0..20 {
                let reg = dir.for_channel(&format!("room-{i}")).await.unwrap().unwrap();
                assert_eq!(
                    reg.relay_id,
                    "b",
                    "{}: room-{i} went to a draining relay",
                    state.backend_name()
                );
            }
        }
    }

    #[tokio::test]
    async fn a_channel_keeps_its_relay_while_that_relay_drains() {
        for state in backends("relays-keep-draining").await {
            register(&state, "a", false).await;
            let dir = RelayDirectory::new(state.clone());
            assert_eq!(dir.for_channel("room").await.unwrap().unwrap().relay_id, "a");
            register(&state, "a", true).await;
            register(&state, "b", false).await;
            assert_eq!(dir.for_channel("room").await.unwrap().unwrap().relay_id, "a");
        }
    }

    #[tokio::test]
    async fn a_draining_relay_is_used_when_no_other_is_registered() {
        for state in backends("relays-only-draining").await {
            register(&state, "a", true).await;
            let dir = RelayDirectory::new(state);
            assert_eq!(dir.for_channel("room").await.unwrap().unwrap().relay_id, "a");
        }
    }
}
