//! Channel state in shared state, so every replica of the service sees the
//! same channels. Records are JSON (readable with `redis-cli`).
//!
//! Keys: `chan:<id>` record, `chan-members:<id>` hash session -> member,
//! `chan-floor:<id>` floor, `sess-chans:<session>` set of channel ids,
//! `chan-lock:<id>` the short lock that serialises changes to one channel,
//! `chan-fanout:<id>` the channel's fan-out bucket (GCRA).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use relaymesh_state::{Rate, SharedState};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio_util::sync::CancellationToken;

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
    /// Per-channel queues of this process: requests for one channel wait
    /// here in order, so only one of them at a time competes for the shared
    /// lock (no polling storm when a thousand users join at once).
    local: Arc<Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>>,
}

/// Held while one operation changes one channel; released by
/// [`ChannelStore::unlock`]. Its lease is renewed while held, so a slow
/// operation keeps it; if the holder dies the TTL frees it.
pub struct ChannelLock {
    key: String,
    token: String,
    renewal: tokio_util::sync::DropGuard,
    _queue: tokio::sync::OwnedMutexGuard<()>,
}

/// The lease: long enough to survive a stall, short enough that a dead
/// holder's channel recovers quickly. Renewed every third of it.
const LOCK_TTL: Duration = Duration::from_secs(5);
/// How long a request waits for the lock before it is refused as contended.
const LOCK_WAIT: Duration = Duration::from_secs(30);

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| ChannelError::State(relaymesh_state::StateError::Corrupt(e.to_string())))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl ChannelStore {
    pub fn new(state: SharedState) -> Self {
        Self {
            state,
            local: Arc::default(),
        }
    }

    fn local_queue(&self, channel_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = map.get(channel_id).and_then(Weak::upgrade) {
            return q;
        }
        if map.len() > 1024 {
            map.retain(|_, q| q.strong_count() > 0);
        }
        let q = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(channel_id.to_owned(), Arc::downgrade(&q));
        q
    }

    /// Takes the channel's lock: capacity checks and member changes must
    /// not interleave across replicas. Requests of this process queue in
    /// order; replicas compete for a shared lease with jittered backoff.
    pub async fn lock(&self, channel_id: &str) -> Result<ChannelLock> {
        let queue = self.local_queue(channel_id).lock_owned().await;
        let key = format!("chan-lock:{channel_id}");
        let token = uuid::Uuid::new_v4().simple().to_string();
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let mut backoff = Duration::from_millis(1);
        while !self.state.set_nx(&key, token.as_bytes(), Some(LOCK_TTL)).await? {
            if tokio::time::Instant::now() >= deadline {
                return Err(ChannelError::Contended(channel_id.to_owned()));
            }
            let jitter = Duration::from_micros(fastrand::u64(0..=backoff.as_micros() as u64));
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
        let stop = CancellationToken::new();
        tokio::spawn(renew(self.state.clone(), key.clone(), token.clone(), stop.clone()));
        Ok(ChannelLock {
            key,
            token,
            renewal: stop.drop_guard(),
            _queue: queue,
        })
    }

    pub async fn unlock(&self, lock: ChannelLock) {
        drop(lock.renewal);
        // Only our own token is removed (atomically), so a lease that
        // expired and passed to someone else stays theirs.
        if let Err(err) = self.state.delete_if_eq(&lock.key, lock.token.as_bytes()).await {
            tracing::warn!(key = %lock.key, error = %err, "channel lock not released; it expires");
        }
    }

    /// Charges `deliveries` to the channel's fan-out bucket (shared by every
    /// replica); refused when the channel is over its cap.
    pub async fn charge_fanout(&self, channel_id: &str, rate: Rate, deliveries: usize) -> Result<()> {
        let cost = u32::try_from(deliveries).unwrap_or(u32::MAX);
        let d = self
            .state
            .throttle(&format!("chan-fanout:{channel_id}"), rate, cost)
            .await?;
        if d.allowed {
            Ok(())
        } else {
            Err(ChannelError::RateLimited(d.reset_after))
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

/// Renews a held lease until `stop` (the lock's release or drop).
async fn renew(state: SharedState, key: String, token: String, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + LOCK_TTL / 3, LOCK_TTL / 3);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match state.renew_if(&key, token.as_bytes(), LOCK_TTL).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(key, "channel lock lost while held");
                return;
            }
            Err(err) => tracing::warn!(key, error = %err, "channel lock not renewed"),
        }
    }
}
