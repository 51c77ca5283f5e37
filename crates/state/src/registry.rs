//! The session registry: connection -> (gateway, protocol, user), and
//! (protocol, user) -> connections. Entries carry a TTL that the holding
//! gateway refreshes on each heartbeat, so a replica that dies without
//! cleaning up stops being routed to once its entries expire; and each
//! gateway's entries are also listed under that gateway
//! ([`crate::GatewayLiveness`]), so a replica that dies is cleaned up at once.
//!
//! A registry also remembers the entries registered through it and not yet
//! unregistered (the live sessions of this process), so it can write them
//! all again when the backend lost them ([`SessionRegistry::reassert`]).
//!
//! Keys: `{sNN}:sess:<conn>`, where `NN` is one of [`SESSION_BUCKETS`]
//! buckets of the connection id, so that on a cluster one `MGET` over many
//! connections is split into at most that many parts;
//! `user:<protocol>:<user>`; `{gw:<gateway>}:sessions`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use prost::Message;
use relaymesh_proto::client::v1::ClientProtocol;

use crate::{ConnectionId, Result, SessionEntry, SharedState, StateError, hash_tag, liveness};

/// Hash-tag buckets of session keys.
pub const SESSION_BUCKETS: u32 = 16;

/// How many registrations [`SessionRegistry::reassert`] has in flight.
const REASSERT_CONCURRENCY: usize = 64;

type Held = Arc<Mutex<HashMap<String, SessionEntry>>>;

#[derive(Clone, Debug)]
pub struct SessionRegistry {
    state: SharedState,
    ttl: Duration,
    held: Held,
}

/// FNV-1a: stable across builds and processes, unlike `DefaultHasher`.
fn bucket(conn: &str) -> u32 {
    let hash = conn
        .bytes()
        .fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    hash % SESSION_BUCKETS
}

pub(crate) fn session_key(conn: &str) -> String {
    hash_tag(&format!("s{}", bucket(conn)), &format!("sess:{conn}"))
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

fn entry_protocol(entry: &SessionEntry) -> ClientProtocol {
    ClientProtocol::try_from(entry.protocol).unwrap_or(ClientProtocol::Unspecified)
}

fn decode_entry(bytes: &[u8]) -> Result<SessionEntry> {
    SessionEntry::decode(bytes).map_err(|e| StateError::Corrupt(e.to_string()))
}

impl SessionRegistry {
    /// `ttl` should exceed the refresh period by a few heartbeats.
    pub fn new(state: SharedState, ttl: Duration) -> Self {
        Self {
            state,
            ttl,
            held: Held::default(),
        }
    }

    pub fn state(&self) -> &SharedState {
        &self.state
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionEntry>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records (or refreshes) `entry`. A refresh that fails stays remembered
    /// for [`Self::reassert`]; a first registration that fails does not.
    pub async fn register(&self, entry: &SessionEntry) -> Result<()> {
        let refresh = self.held().insert(entry.connection_id.clone(), entry.clone()).is_some();
        let written = self.write(entry).await;
        if written.is_err() && !refresh {
            self.held().remove(&entry.connection_id);
        }
        written
    }

    /// The entry's three records, written at once (one round trip).
    async fn write(&self, entry: &SessionEntry) -> Result<()> {
        let (key, bytes) = (session_key(&entry.connection_id), entry.encode_to_vec());
        let session = self.state.set(&key, &bytes, Some(self.ttl));
        let user = async {
            if entry.user_id.is_empty() {
                return Ok(());
            }
            self.state
                .set_add(
                    &user_key(entry_protocol(entry), &entry.user_id),
                    &entry.connection_id,
                    Some(self.ttl),
                )
                .await
        };
        let gateway = async {
            if entry.gateway_id.is_empty() {
                return Ok(());
            }
            self.state
                .hash_set(&liveness::sessions_key(&entry.gateway_id), &entry.connection_id, &bytes)
                .await
        };
        tokio::try_join!(session, user, gateway)?;
        Ok(())
    }

    pub async fn unregister(&self, entry: &SessionEntry) -> Result<()> {
        self.held().remove(&entry.connection_id);
        let key = session_key(&entry.connection_id);
        let session = self.state.delete(&key);
        let user = async {
            if entry.user_id.is_empty() {
                return Ok(());
            }
            self.state
                .set_remove(&user_key(entry_protocol(entry), &entry.user_id), &entry.connection_id)
                .await
        };
        let gateway = async {
            if entry.gateway_id.is_empty() {
                return Ok(false);
            }
            self.state
                .hash_delete(&liveness::sessions_key(&entry.gateway_id), &entry.connection_id)
                .await
        };
        tokio::try_join!(session, user, gateway)?;
        Ok(())
    }

    /// The sessions registered through this registry and not unregistered:
    /// on a gateway, its live sockets' sessions.
    pub fn held_sessions(&self) -> Vec<SessionEntry> {
        self.held().values().cloned().collect()
    }

    /// Writes every held session again (after the backend lost them, e.g. a
    /// Redis restart). Returns how many were written; tries them all and
    /// then reports the first failure.
    pub async fn reassert(&self) -> Result<usize> {
        let entries = self.held_sessions();
        let writes: Vec<_> = entries.iter().map(|e| self.write(e)).collect();
        let results: Vec<Result<()>> = futures_util::stream::iter(writes)
            .buffer_unordered(REASSERT_CONCURRENCY)
            .collect()
            .await;
        let written = results.iter().filter(|r| r.is_ok()).count();
        match results.into_iter().find_map(Result::err) {
            Some(err) => Err(err),
            None => Ok(written),
        }
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
    pub async fn sessions_of(&self, protocol: ClientProtocol, user: &str) -> Result<Vec<SessionEntry>> {
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
