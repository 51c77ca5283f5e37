//! Channel state in shared state, so every replica of the service sees the
//! same channels. Records are JSON (readable with `redis-cli`).
//!
//! Keys: `chan:<id>` record, `chan-members:<id>` hash session -> member,
//! `chan-floor:<id>` floor, `sess-chans:<session>` set of channel ids,
//! `chan-lock:<id>` the short lock that serialises changes to one channel.

use std::time::Duration;

use relaymesh_state::SharedState;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{ChannelError, Result};
use crate::floor::{Floor, FloorPolicy};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChannelRecord {
    pub channel_id: String,
    pub name: String,
    pub creator_id: String,
    pub capacity: u32,
    pub floor: FloorPolicy,
    pub max_talk_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberRecord {
    pub user_id: String,
    pub session_id: String,
    pub ssrc: u32,
}

#[derive(Clone, Debug)]
pub struct ChannelStore {
    state: SharedState,
}

/// Held while one operation changes one channel. Released explicitly; if
/// the holder dies the TTL frees it.
pub struct ChannelLock {
    key: String,
    token: String,
}

const LOCK_TTL: Duration = Duration::from_secs(5);
const LOCK_TRIES: u32 = 400;

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| ChannelError::State(relaymesh_state::StateError::Corrupt(e.to_string())))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl ChannelStore {
    pub fn new(state: SharedState) -> Self {
        Self { state }
    }

    /// Waits (bounded) for the channel's lock: capacity checks and member
    /// changes must not interleave across replicas.
    pub async fn lock(&self, channel_id: &str) -> Result<ChannelLock> {
        let key = format!("chan-lock:{channel_id}");
        let token = uuid::Uuid::new_v4().simple().to_string();
        for _ in 0..LOCK_TRIES {
            if self.state.set_nx(&key, token.as_bytes(), Some(LOCK_TTL)).await? {
                return Ok(ChannelLock { key, token });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(ChannelError::Contended(channel_id.to_owned()))
    }

    pub async fn unlock(&self, lock: ChannelLock) {
        // Only our own token is removed, so an expired lock re-taken by
        // someone else stays theirs.
        if let Ok(Some(v)) = self.state.get(&lock.key).await
            && v == lock.token.as_bytes()
        {
            let _ = self.state.delete(&lock.key).await;
        }
    }

    pub async fn channel(&self, id: &str) -> Result<Option<ChannelRecord>> {
        match self.state.get(&format!("chan:{id}")).await? {
            Some(b) => Ok(Some(decode(&b)?)),
            None => Ok(None),
        }
    }

    pub async fn require(&self, id: &str) -> Result<ChannelRecord> {
        self.channel(id)
            .await?
            .ok_or_else(|| ChannelError::NotFound(id.to_owned()))
    }

    /// Creates the channel; false when the id is taken.
    pub async fn create(&self, rec: &ChannelRecord) -> Result<bool> {
        // No TTL: a channel lives until deleted.
        Ok(self
            .state
            .set_nx(&format!("chan:{}", rec.channel_id), &encode(rec), None)
            .await?)
    }

    pub async fn put(&self, rec: &ChannelRecord) -> Result<()> {
        Ok(self
            .state
            .set(&format!("chan:{}", rec.channel_id), &encode(rec), None)
            .await?)
    }

    pub async fn delete(&self, id: &str) -> Result<()> {
        for key in [
            format!("chan:{id}"),
            format!("chan-members:{id}"),
            format!("chan-floor:{id}"),
        ] {
            self.state.delete(&key).await?;
        }
        Ok(())
    }

    pub async fn members(&self, id: &str) -> Result<Vec<MemberRecord>> {
        let mut out = Vec::new();
        for (_, v) in self.state.hash_all(&format!("chan-members:{id}")).await? {
            out.push(decode::<MemberRecord>(&v)?);
        }
        out.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        Ok(out)
    }

    pub async fn member(&self, id: &str, session_id: &str) -> Result<Option<MemberRecord>> {
        match self.state.hash_get(&format!("chan-members:{id}"), session_id).await? {
            Some(b) => Ok(Some(decode(&b)?)),
            None => Ok(None),
        }
    }

    pub async fn add_member(&self, id: &str, m: &MemberRecord) -> Result<()> {
        self.state
            .hash_set(&format!("chan-members:{id}"), &m.session_id, &encode(m))
            .await?;
        self.state
            .set_add(&format!("sess-chans:{}", m.session_id), id, None)
            .await?;
        Ok(())
    }

    pub async fn remove_member(&self, id: &str, session_id: &str) -> Result<bool> {
        self.state.set_remove(&format!("sess-chans:{session_id}"), id).await?;
        Ok(self
            .state
            .hash_delete(&format!("chan-members:{id}"), session_id)
            .await?)
    }

    pub async fn session_channels(&self, session_id: &str) -> Result<Vec<String>> {
        Ok(self.state.set_members(&format!("sess-chans:{session_id}")).await?)
    }

    pub async fn floor(&self, id: &str) -> Result<Floor> {
        match self.state.get(&format!("chan-floor:{id}")).await? {
            Some(b) => decode(&b),
            None => Ok(Floor::default()),
        }
    }

    pub async fn put_floor(&self, id: &str, floor: &Floor) -> Result<()> {
        Ok(self
            .state
            .set(&format!("chan-floor:{id}"), &encode(floor), None)
            .await?)
    }
}
