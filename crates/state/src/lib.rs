//! Shared session state: one interface, two backends.
//!
//! [`SharedState`] is Redis when `REDIS_URL` is set (several replicas share
//! it), a Redis Cluster when `REDIS_CLUSTER_URLS` is, and in-memory otherwise
//! (one process, `relaymesh up`). All offer the same small set of
//! operations: keys with TTL, sets, hashes, windowed counters, and topic
//! pub/sub. On top of it:
//!
//! - [`SessionRegistry`]: which gateway replica holds which connection of
//!   which user;
//! - [`Delivery`]: how an event raised anywhere reaches that connection;
//! - [`GatewayLiveness`]: which gateway replicas are alive, and the sessions
//!   a dead one held, handed to exactly one cleaner.
//!
//! On a cluster every operation touches one key, or keys that share a hash
//! tag (see [`hash_tag`]), so it stays in one slot; an `MGET` over many slots
//! is split by the client. This crate never holds a lock across an `.await`.

mod delivery;
pub mod gcra;
mod ids;
mod liveness;
mod memory;
mod redis_store;
mod registry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

pub use delivery::{Delivery, GatewayInbox, InboxServer, close_envelope, event_envelope, nudge_envelope, traced};
pub use gcra::{LocalBucket, Rate};
pub use ids::{ConnectionId, GatewayId};
pub use liveness::{Beat, GatewayLiveness};
pub use memory::MemoryStore;
pub use redis_store::RedisStore;
pub use registry::{SessionRegistry, protocol_key};
pub use relaymesh_proto::delivery::v1::{Close, Envelope, Nudge, SessionEntry, envelope::Body};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    #[error("key {0:?} holds another kind of value")]
    WrongType(String),
    #[error("REDIS_URL and REDIS_CLUSTER_URLS are both set; give one")]
    TwoBackends,
}

/// Where shared state lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backend {
    /// In this process only.
    #[default]
    Memory,
    /// One Redis server (`REDIS_URL`).
    Redis(String),
    /// A Redis Cluster, found through any of these seed nodes
    /// (`REDIS_CLUSTER_URLS`, comma-separated).
    Cluster(Vec<String>),
}

impl Backend {
    /// The backend the two settings name: neither is memory, both is an
    /// error. `cluster_urls` is a comma-separated list; blanks are ignored.
    pub fn from_settings(redis_url: Option<&str>, cluster_urls: Option<&str>) -> Result<Self> {
        let redis_url = redis_url.map(str::trim).filter(|u| !u.is_empty());
        let seeds: Vec<String> = cluster_urls
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        match (redis_url, seeds.is_empty()) {
            (Some(_), false) => Err(StateError::TwoBackends),
            (Some(url), true) => Ok(Self::Redis(url.to_owned())),
            (None, false) => Ok(Self::Cluster(seeds)),
            (None, true) => Ok(Self::Memory),
        }
    }
}

/// `{tag}:rest`: keys built with the same `tag` share a Redis Cluster slot,
/// so one atomic operation (a `MULTI`, a script) may touch all of them.
/// Tags spread keys over the cluster; a tag on everything would put
/// everything on one node.
pub fn hash_tag(tag: &str, rest: &str) -> String {
    format!("{{{tag}}}:{rest}")
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// What [`SharedState::rate_limit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// The event was counted.
    pub allowed: bool,
    /// Events still allowed in the window (after this one, if allowed).
    pub remaining: u32,
    /// Until the oldest counted event leaves the window: when refused, how
    /// long until an event is allowed again.
    pub reset_after: Duration,
}

/// Messages published on a topic, in order, for one subscriber.
///
/// Bounded: a subscriber that falls `SUBSCRIPTION_BUFFER` messages behind
/// loses the newest ones (counted in `relaymesh_state_pubsub_dropped_total`) rather than
/// stalling the publisher or the shared connection.
pub struct Subscription {
    rx: mpsc::Receiver<Bytes>,
}

pub(crate) const SUBSCRIPTION_BUFFER: usize = 8192;

impl Subscription {
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }
}

/// Shared state, cheap to clone.
#[derive(Clone)]
pub enum SharedState {
    Memory(Arc<MemoryStore>),
    Redis(RedisStore),
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.backend_name())
    }
}

impl SharedState {
    /// Redis when `redis_url` is given, in-memory otherwise. `prefix` is put
    /// before every key and topic, so several deployments (or tests) can share
    /// one Redis without seeing each other.
    pub async fn connect(redis_url: Option<&str>, prefix: &str) -> Result<Self> {
        match redis_url {
            Some(url) => Self::open(&Backend::Redis(url.to_owned()), prefix).await,
            None => Ok(Self::memory()),
        }
    }

    /// Connects to what `REDIS_URL` and `REDIS_CLUSTER_URLS` name (see
    /// [`Backend::from_settings`]).
    pub async fn connect_settings(
        redis_url: Option<&str>,
        redis_cluster_urls: Option<&str>,
        prefix: &str,
    ) -> Result<Self> {
        Self::open(&Backend::from_settings(redis_url, redis_cluster_urls)?, prefix).await
    }

    /// Connects to `backend`. `prefix` is put before every key and topic; on
    /// a cluster it must not contain `{`, or every key would share one slot.
    pub async fn open(backend: &Backend, prefix: &str) -> Result<Self> {
        match backend {
            Backend::Memory => Ok(Self::memory()),
            Backend::Redis(url) => Ok(Self::Redis(RedisStore::connect(url, prefix).await?)),
            Backend::Cluster(seeds) => Ok(Self::Redis(RedisStore::connect_cluster(seeds, prefix).await?)),
        }
    }

    pub fn memory() -> Self {
        Self::Memory(Arc::new(MemoryStore::default()))
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(r) if r.is_cluster() => "redis-cluster",
            Self::Redis(_) => "redis",
        }
    }

    /// Changes each time the backend's connections came back after a drop
    /// (a Redis restart, a network cut): whoever keeps state in it that a
    /// restarted Redis may have lost (live sessions, liveness) writes it
    /// again on each change. Never changes in memory.
    pub fn reconnected(&self) -> watch::Receiver<u64> {
        match self {
            Self::Memory(m) => m.reconnected(),
            Self::Redis(r) => r.reconnected(),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Memory(m) => m.get(key),
            Self::Redis(r) => r.get(key).await,
        }
    }

    /// The values at `keys`, in order, in one round trip.
    pub async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Self::Memory(m) => keys.iter().map(|k| m.get(k)).collect(),
            Self::Redis(r) => r.get_many(keys).await,
        }
    }

    /// Sets `key`, replacing any value, expiring after `ttl` when given.
    pub async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        match self {
            Self::Memory(m) => m.set(key, value, ttl),
            Self::Redis(r) => r.set(key, value, ttl).await,
        }
    }

    /// Sets `key` only if absent; true when it was set. The primitive behind
    /// one-time tokens and replay detection.
    pub async fn set_nx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        match self {
            Self::Memory(m) => m.set_nx(key, value, ttl),
            Self::Redis(r) => r.set_nx(key, value, ttl).await,
        }
    }

    /// Extends `key`'s expiry to `ttl` only while it still holds `value`
    /// (compare and extend, atomically); true when extended. With
    /// [`SharedState::set_nx`] it makes a lease that only its holder renews.
    pub async fn renew_if(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool> {
        match self {
            Self::Memory(m) => m.renew_if(key, value, ttl),
            Self::Redis(r) => r.renew_if(key, value, ttl).await,
        }
    }

    /// Replaces the value at `key` with `new` (or removes it, for None) only
    /// if it is exactly `expected`, atomically; true when it was replaced. Of
    /// two racing callers holding the same `expected`, exactly one wins.
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: &[u8],
        new: Option<&[u8]>,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        match self {
            Self::Memory(m) => m.compare_and_swap(key, expected, new, ttl),
            Self::Redis(r) => r.compare_and_swap(key, expected, new, ttl).await,
        }
    }

    /// Removes `key`; true when it existed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        match self {
            Self::Memory(m) => m.delete(key),
            Self::Redis(r) => r.delete(key).await,
        }
    }

    /// Removes `key` and returns its value, atomically: of two racing
    /// callers exactly one gets the value.
    pub async fn take(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Memory(m) => m.take(key),
            Self::Redis(r) => r.take(key).await,
        }
    }

    /// Increments the counter at `key`, starting a window of `window` on the
    /// first increment; returns the count and the time left in the window.
    pub async fn incr_window(&self, key: &str, window: Duration) -> Result<(u64, Duration)> {
        match self {
            Self::Memory(m) => m.incr_window(key, window),
            Self::Redis(r) => r.incr_window(key, window).await,
        }
    }

    /// Counts one event against a sliding window of `window` at `key` when
    /// fewer than `limit` events fall in it, atomically (one Lua script on
    /// Redis, one lock in memory): of many racing callers on any replicas,
    /// exactly `limit` per window are allowed. Refused events do not count.
    pub async fn rate_limit(&self, key: &str, limit: u32, window: Duration) -> Result<RateDecision> {
        match self {
            Self::Memory(m) => Ok(m.rate_limit(key, limit, window)),
            Self::Redis(r) => r.rate_limit(key, limit, window).await,
        }
    }

    /// Counts one event of `cost` against the GCRA bucket at `key` when
    /// `rate` allows it, atomically (one Lua script on Redis's clock, one
    /// lock in memory): every replica shares the bucket. Refused events do
    /// not count; `reset_after` of a refusal says when to retry. One small
    /// key per bucket, expiring once the bucket is full again.
    pub async fn throttle(&self, key: &str, rate: Rate, cost: u32) -> Result<RateDecision> {
        match self {
            Self::Memory(m) => Ok(m.throttle(key, rate, cost)),
            Self::Redis(r) => r.throttle(key, rate, cost).await,
        }
    }

    /// Adds `member` to the set at `key`, (re)setting its TTL when given.
    pub async fn set_add(&self, key: &str, member: &str, ttl: Option<Duration>) -> Result<()> {
        match self {
            Self::Memory(m) => m.set_add(key, member, ttl),
            Self::Redis(r) => r.set_add(key, member, ttl).await,
        }
    }

    pub async fn set_remove(&self, key: &str, member: &str) -> Result<()> {
        match self {
            Self::Memory(m) => m.set_remove(key, member),
            Self::Redis(r) => r.set_remove(key, member).await,
        }
    }

    pub async fn set_members(&self, key: &str) -> Result<Vec<String>> {
        match self {
            Self::Memory(m) => m.set_members(key),
            Self::Redis(r) => r.set_members(key).await,
        }
    }

    pub async fn hash_set(&self, key: &str, field: &str, value: &[u8]) -> Result<()> {
        match self {
            Self::Memory(m) => m.hash_set(key, field, value),
            Self::Redis(r) => r.hash_set(key, field, value).await,
        }
    }

    pub async fn hash_get(&self, key: &str, field: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Memory(m) => m.hash_get(key, field),
            Self::Redis(r) => r.hash_get(key, field).await,
        }
    }

    pub async fn hash_delete(&self, key: &str, field: &str) -> Result<bool> {
        match self {
            Self::Memory(m) => m.hash_delete(key, field),
            Self::Redis(r) => r.hash_delete(key, field).await,
        }
    }

    pub async fn hash_all(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>> {
        match self {
            Self::Memory(m) => m.hash_all(key),
            Self::Redis(r) => r.hash_all(key).await,
        }
    }

    /// The field names of the hash at `key` (its values are not read).
    pub async fn hash_fields(&self, key: &str) -> Result<Vec<String>> {
        match self {
            Self::Memory(m) => m.hash_fields(key),
            Self::Redis(r) => r.hash_fields(key).await,
        }
    }

    /// Removes the hash at `key` and returns what it held, atomically: of
    /// two racing callers one gets the fields, the other nothing.
    /// Deletes `key` only while it holds `value`, atomically: releases a
    /// lease without removing one that passed to another holder.
    pub async fn delete_if_eq(&self, key: &str, value: &[u8]) -> Result<bool> {
        match self {
            Self::Memory(m) => m.delete_if_eq(key, value),
            Self::Redis(r) => r.delete_if_eq(key, value).await,
        }
    }

    pub async fn hash_take_all(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>> {
        match self {
            Self::Memory(m) => m.hash_take_all(key),
            Self::Redis(r) => r.hash_take_all(key).await,
        }
    }

    /// Publishes `payload` to every current subscriber of `topic`, on any
    /// replica. At most once: a subscriber that is not connected misses it.
    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        match self {
            Self::Memory(m) => {
                m.publish(topic, payload);
                Ok(())
            }
            Self::Redis(r) => r.publish(topic, payload).await,
        }
    }

    /// Subscribes to `topic`. The subscription is live when this returns.
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        match self {
            Self::Memory(m) => Ok(m.subscribe(topic)),
            Self::Redis(r) => r.subscribe(topic).await,
        }
    }

    /// Answers when the backend is reachable (always, in memory).
    pub async fn ping(&self) -> Result<()> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(r) => r.ping().await,
        }
    }
}

/// Drops `payload` for a full subscriber and counts it; forgets a closed one.
/// Returns false when the subscriber is gone.
pub(crate) fn offer(tx: &mpsc::Sender<Bytes>, payload: Bytes) -> bool {
    match tx.try_send(payload) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics::counter!("relaymesh_state_pubsub_dropped_total").increment(1);
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

#[cfg(test)]
mod tests;
