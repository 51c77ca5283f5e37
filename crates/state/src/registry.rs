//! The session registry: connection -> (gateway, protocol, user), and
//! (protocol, user) -> connections, and protocol -> connections (for
//! operators' listings). Entries carry a TTL that the holding
//! gateway refreshes on each heartbeat, so a replica that dies without
//! cleaning up stops being routed to once its entries expire.

use std::time::Duration;

use prost::Message;

use relaymesh_proto::client::v1::ClientProtocol;

use crate::{ConnectionId, Result, SessionEntry, SharedState, StateError};

#[derive(Clone, Debug)]
pub struct SessionRegistry {
    state: SharedState,
    ttl: Duration,
}

fn session_key(conn: &str) -> String {
    format!("sess:{conn}")
}

/// The registry's short name of a protocol, as used in its keys.
pub fn protocol_key(protocol: ClientProtocol) -> &'static str {
    match protocol {
        ClientProtocol::Node => "node",
        ClientProtocol::Copilot => "copilot",
        ClientProtocol::Livechat => "livechat",
        ClientProtocol::Signal => "signal",
        ClientProtocol::Unspecified => "unspecified",
    }
}

fn user_key(protocol: ClientProtocol, user: &str) -> String {
    format!("user:{}:{user}", protocol_key(protocol))
}

fn protocol_index_key(protocol: ClientProtocol) -> String {
    format!("conns:{}", protocol_key(protocol))
}

fn entry_protocol(entry: &SessionEntry) -> ClientProtocol {
    ClientProtocol::try_from(entry.protocol).unwrap_or(ClientProtocol::Unspecified)
}

impl SessionRegistry {
    /// `ttl` should exceed the refresh period by a few heartbeats.
    pub fn new(state: SharedState, ttl: Duration) -> Self {
        Self { state, ttl }
    }

    /// Records (or refreshes) `entry`.
    pub async fn register(&self, entry: &SessionEntry) -> Result<()> {
        self.state
            .set(
                &session_key(&entry.connection_id),
                &entry.encode_to_vec(),
                Some(self.ttl),
            )
            .await?;
        if !entry.user_id.is_empty() {
            self.state
                .set_add(
                    &user_key(entry_protocol(entry), &entry.user_id),
                    &entry.connection_id,
                    Some(self.ttl),
                )
                .await?;
        }
        self.state
            .set_add(
                &protocol_index_key(entry_protocol(entry)),
                &entry.connection_id,
                Some(self.ttl),
            )
            .await?;
        Ok(())
    }

    pub async fn unregister(&self, entry: &SessionEntry) -> Result<()> {
        self.state.delete(&session_key(&entry.connection_id)).await?;
        if !entry.user_id.is_empty() {
            self.state
                .set_remove(&user_key(entry_protocol(entry), &entry.user_id), &entry.connection_id)
                .await?;
        }
        self.state
            .set_remove(&protocol_index_key(entry_protocol(entry)), &entry.connection_id)
            .await?;
        Ok(())
    }

    pub async fn lookup(&self, conn: &ConnectionId) -> Result<Option<SessionEntry>> {
        match self.state.get(&session_key(conn.as_str())).await? {
            None => Ok(None),
            Some(bytes) => SessionEntry::decode(bytes.as_slice())
                .map(Some)
                .map_err(|e| StateError::Corrupt(e.to_string())),
        }
    }

    /// The entries of `conns`, in order (None where no replica holds one).
    pub async fn lookup_many(&self, conns: &[ConnectionId]) -> Result<Vec<Option<SessionEntry>>> {
        let mut out = Vec::with_capacity(conns.len());
        for conn in conns {
            out.push(self.lookup(conn).await?);
        }
        Ok(out)
    }

    /// Every live connection of `user` on `protocol`, on any replica.
    /// Connections whose entry expired are pruned from the user's set.
    pub async fn sessions_of(&self, protocol: ClientProtocol, user: &str) -> Result<Vec<SessionEntry>> {
        let key = user_key(protocol, user);
        let mut out = Vec::new();
        for conn in self.state.set_members(&key).await? {
            match self.lookup(&ConnectionId::new(conn.clone())).await? {
                Some(entry) => out.push(entry),
                None => self.state.set_remove(&key, &conn).await?,
            }
        }
        out.sort_by_key(|e| e.connected_at_ms);
        Ok(out)
    }

    /// Every live connection on `protocol`, on any replica, oldest first.
    /// Connections whose entry expired (their replica died) are pruned.
    pub async fn sessions(&self, protocol: ClientProtocol) -> Result<Vec<SessionEntry>> {
        let key = protocol_index_key(protocol);
        let conns: Vec<ConnectionId> = self
            .state
            .set_members(&key)
            .await?
            .into_iter()
            .map(ConnectionId::new)
            .collect();
        let mut out = Vec::with_capacity(conns.len());
        for (conn, entry) in conns.iter().zip(self.lookup_many(&conns).await?) {
            match entry {
                Some(entry) => out.push(entry),
                None => self.state.set_remove(&key, conn.as_str()).await?,
            }
        }
        out.sort_by(|a, b| (a.connected_at_ms, &a.connection_id).cmp(&(b.connected_at_ms, &b.connection_id)));
        Ok(out)
    }
}
