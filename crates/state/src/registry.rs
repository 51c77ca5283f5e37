//! The session registry: connection -> (gateway, protocol, user), and
//! (protocol, user) -> connections. Entries carry a TTL that the holding
//! gateway refreshes on each heartbeat, so a replica that dies without
//! cleaning up stops being routed to once its entries expire.

use std::time::Duration;

use prost::Message;

use crate::{ConnectionId, Result, SessionEntry, SharedState, StateError};

#[derive(Clone, Debug)]
pub struct SessionRegistry {
    state: SharedState,
    ttl: Duration,
}

fn session_key(conn: &str) -> String {
    format!("sess:{conn}")
}

fn user_key(protocol: &str, user: &str) -> String {
    format!("user:{protocol}:{user}")
}

fn decode_entry(bytes: &[u8]) -> Result<SessionEntry> {
    SessionEntry::decode(bytes).map_err(|e| StateError::Corrupt(e.to_string()))
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
                    &user_key(&entry.protocol, &entry.user_id),
                    &entry.connection_id,
                    Some(self.ttl),
                )
                .await?;
        }
        Ok(())
    }

    pub async fn unregister(&self, entry: &SessionEntry) -> Result<()> {
        self.state.delete(&session_key(&entry.connection_id)).await?;
        if !entry.user_id.is_empty() {
            self.state
                .set_remove(&user_key(&entry.protocol, &entry.user_id), &entry.connection_id)
                .await?;
        }
        Ok(())
    }

    pub async fn lookup(&self, conn: &ConnectionId) -> Result<Option<SessionEntry>> {
        self.state
            .get(&session_key(conn.as_str()))
            .await?
            .map(|bytes| decode_entry(&bytes))
            .transpose()
    }

    /// The entries of `conns`, in order (None where a connection is not
    /// registered), in one round trip to the backend: the fan-out path.
    pub async fn lookup_many(&self, conns: &[ConnectionId]) -> Result<Vec<Option<SessionEntry>>> {
        let keys: Vec<String> = conns.iter().map(|c| session_key(c.as_str())).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.state
            .get_many(&keys)
            .await?
            .into_iter()
            .map(|v| v.map(|bytes| decode_entry(&bytes)).transpose())
            .collect()
    }

    /// Every live connection of `user` on `protocol`, on any replica.
    /// Connections whose entry expired are pruned from the user's set.
    pub async fn sessions_of(&self, protocol: &str, user: &str) -> Result<Vec<SessionEntry>> {
        let key = user_key(protocol, user);
        let conns: Vec<ConnectionId> = self
            .state
            .set_members(&key)
            .await?
            .into_iter()
            .map(ConnectionId::new)
            .collect();
        let mut out = Vec::new();
        for (conn, entry) in conns.iter().zip(self.lookup_many(&conns).await?) {
            match entry {
                Some(entry) => out.push(entry),
                None => self.state.set_remove(&key, conn.as_str()).await?,
            }
        }
        out.sort_by_key(|e| e.connected_at_ms);
        Ok(out)
    }
}
