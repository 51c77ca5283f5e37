//! Channel state in shared state, so every replica of the service sees the
//! same channels. Records are JSON (readable with `redis-cli`).
//!
//! Keys: `chan:<id>` record, `chan-members:<id>` hash session -> member,
//! `chan-floor:<id>` floor, `sess-chans:<session>` set of channel ids,
//! `chan-lock:<id>` the short lock that serialises changes to one channel,
//! `chan-fanout:<id>` the channel's fan-out bucket (GCRA).
//!
//! A chat message needs the member list, which rarely changes while a
//! channel is busy: each replica keeps the lists it read
//! ([`ChannelStore::message_recipients`]), valid while the record's
//! `members_version` (a fresh random value written by every join and leave,
//! after the member hash changes) is the one they were read under.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use relaymesh_state::{ConnectionId, Rate, SharedState};
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
    /// Changed (to a fresh random nonzero value) by every change to the
    /// member hash, after it: a member list read after this value was read
    /// is at least as new as the value. 0 (a record from before the field,
    /// or a channel nobody has joined): unknown, never cached under.
    #[serde(default)]
    pub members_version: u64,
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
    /// Member lists this replica read, by channel, under their version.
    members: Arc<Mutex<MemberCache>>,
}

/// The member lists a replica read, each under the `members_version` it
/// was read after. Bounded by the session ids it holds in all; when full,
/// lists are dropped (and read again when next needed).
#[derive(Debug, Default)]
struct MemberCache {
    lists: HashMap<String, KeptList>,
    /// Session ids held in all lists.
    held: usize,
}

/// The most session ids the member cache holds (about 50 bytes each).
const MEMBER_CACHE_IDS: usize = 1 << 18;

/// One kept member list.
#[derive(Debug)]
struct KeptList {
    /// The `members_version` it was read after.
    version: u64,
    /// The stored record that version was last read from, as stored: the
    /// same bytes hold the same version, so a message whose record read
    /// gives these bytes needs no decode.
    record: Box<[u8]>,
    list: Arc<[ConnectionId]>,
}

impl MemberCache {
    /// The list kept for `channel_id` when `record` is the record it was
    /// last seen with.
    fn get_by_record(&self, channel_id: &str, record: &[u8]) -> Option<Arc<[ConnectionId]>> {
        match self.lists.get(channel_id) {
            Some(kept) if *kept.record == *record => Some(kept.list.clone()),
            _ => None,
        }
    }

    /// The list kept for `channel_id` under `version`; `record` (which
    /// holds that version) is then the one it is known by.
    fn get(&mut self, channel_id: &str, version: u64, record: &[u8]) -> Option<Arc<[ConnectionId]>> {
        match self.lists.get_mut(channel_id) {
            Some(kept) if kept.version == version && version != 0 => {
                if *kept.record != *record {
                    kept.record = record.into();
                }
                Some(kept.list.clone())
            }
            _ => None,
        }
    }

    fn put(&mut self, channel_id: &str, version: u64, record: &[u8], list: Arc<[ConnectionId]>) {
        self.forget(channel_id);
        if version == 0 || list.len() > MEMBER_CACHE_IDS {
            return;
        }
        while self.held + list.len() > MEMBER_CACHE_IDS {
            let Some(victim) = self.lists.keys().next().cloned() else {
                break;
            };
            self.forget(&victim);
        }
        self.held += list.len();
        let kept = KeptList {
            version,
            record: record.into(),
            list,
        };
        self.lists.insert(channel_id.to_owned(), kept);
    }

    fn forget(&mut self, channel_id: &str) {
        if let Some(kept) = self.lists.remove(channel_id) {
            self.held -= kept.list.len();
        }
    }
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

/// The key of channel `id`'s record ([`ChannelRecord`]).
fn channel_key(id: &str) -> String {
    format!("chan:{id}")
}

/// The key of channel `id`'s member hash (session id -> [`MemberRecord`]).
fn members_key(id: &str) -> String {
    format!("chan-members:{id}")
}

/// The key of channel `id`'s floor.
fn floor_key(id: &str) -> String {
    format!("chan-floor:{id}")
}

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
            members: Arc::default(),
        }
    }

    fn member_cache(&self) -> std::sync::MutexGuard<'_, MemberCache> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
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
        match self.state.get(&channel_key(id)).await? {
            Some(b) => Ok(Some(decode(&b)?)),
            None => Ok(None),
        }
    }

    /// The current member sessions of channel `id`, for a chat message:
    /// reads the record, then the kept or stored member list. A record
    /// byte for byte as last seen is not decoded (it holds the version
    /// the list is kept under); another is decoded for its
    /// `members_version` alone (its strings are skipped, not copied).
    pub async fn message_recipients(&self, id: &str) -> Result<Arc<[ConnectionId]>> {
        /// The one field of a [`ChannelRecord`] a message needs.
        #[derive(Deserialize)]
        struct Version {
            #[serde(default)]
            members_version: u64,
        }
        let bytes = self
            .state
            .get(&channel_key(id))
            .await?
            .ok_or_else(|| ChannelError::NotFound(id.to_owned()))?;
        // The record as last seen: its version is the one the list is kept
        // under, with no decode.
        if let Some(list) = self.member_cache().get_by_record(id, &bytes) {
            return Ok(list);
        }
        let Version { members_version } = decode(&bytes)?;
        if let Some(list) = self.member_cache().get(id, members_version, &bytes) {
            return Ok(list);
        }
        // Read after the record, so the list is at least as new as its
        // version; member ids only, their records are not read.
        let fields = self.state.hash_fields(&members_key(id)).await?;
        let list: Arc<[ConnectionId]> = fields.into_iter().map(ConnectionId::new).collect();
        self.member_cache().put(id, members_version, &bytes, list.clone());
        Ok(list)
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
            .set_nx(&channel_key(&rec.channel_id), &encode(rec), None)
            .await?)
    }

    pub async fn put(&self, rec: &ChannelRecord) -> Result<()> {
        Ok(self
            .state
            .set(&channel_key(&rec.channel_id), &encode(rec), None)
            .await?)
    }

    pub async fn delete(&self, id: &str) -> Result<()> {
        for key in [channel_key(id), members_key(id), floor_key(id)] {
            self.state.delete(&key).await?;
        }
        self.member_cache().forget(id);
        Ok(())
    }

    pub async fn members(&self, id: &str) -> Result<Vec<MemberRecord>> {
        let mut out = Vec::new();
        for (_, v) in self.state.hash_all(&members_key(id)).await? {
            out.push(decode::<MemberRecord>(&v)?);
        }
        out.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        Ok(out)
    }

    pub async fn member(&self, id: &str, session_id: &str) -> Result<Option<MemberRecord>> {
        match self.state.hash_get(&members_key(id), session_id).await? {
            Some(b) => Ok(Some(decode(&b)?)),
            None => Ok(None),
        }
    }

    /// Adds `m` to the channel of `rec`, then gives `rec` (stored) a new
    /// `members_version`. Under the channel's lock, with `rec` read under it.
    pub async fn add_member(&self, rec: &mut ChannelRecord, m: &MemberRecord) -> Result<()> {
        let id = &rec.channel_id;
        self.state.hash_set(&members_key(id), &m.session_id, &encode(m)).await?;
        self.state
            .set_add(&format!("sess-chans:{}", m.session_id), id, None)
            .await?;
        self.members_changed(rec).await
    }

    /// Removes the member `session_id` from the channel of `rec`, then gives
    /// `rec` (stored) a new `members_version`. Under the channel's lock, with
    /// `rec` read under it. False when it was not a member.
    pub async fn remove_member(&self, rec: &mut ChannelRecord, session_id: &str) -> Result<bool> {
        let removed = self.forget_member(&rec.channel_id, session_id).await?;
        self.members_changed(rec).await?;
        Ok(removed)
    }

    /// Removes the member's entries without a new version: for a channel
    /// being deleted, whose record goes too.
    pub async fn forget_member(&self, id: &str, session_id: &str) -> Result<bool> {
        self.state.set_remove(&format!("sess-chans:{session_id}"), id).await?;
        Ok(self.state.hash_delete(&members_key(id), session_id).await?)
    }

    /// Stores `rec` with a new `members_version`, after its member hash
    /// changed: lists read before are no longer used for it.
    async fn members_changed(&self, rec: &mut ChannelRecord) -> Result<()> {
        rec.members_version = fastrand::u64(1..);
        self.put(rec).await
    }

    pub async fn session_channels(&self, session_id: &str) -> Result<Vec<String>> {
        Ok(self.state.set_members(&format!("sess-chans:{session_id}")).await?)
    }

    pub async fn floor(&self, id: &str) -> Result<Floor> {
        match self.state.get(&floor_key(id)).await? {
            Some(b) => decode(&b),
            None => Ok(Floor::default()),
        }
    }

    pub async fn put_floor(&self, id: &str, floor: &Floor) -> Result<()> {
        Ok(self.state.set(&floor_key(id), &encode(floor), None).await?)
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

#[cfg(test)]
mod tests {
    use relaymesh_state::testing::backends;

    use super::*;

    fn record(id: &str) -> ChannelRecord {
        ChannelRecord {
            channel_id: id.to_owned(),
            name: id.to_owned(),
            creator_id: "creator".to_owned(),
            capacity: 10,
            floor: FloorPolicy::None,
            max_talk_ms: 0,
            members_version: 0,
        }
    }

    fn member(session: &str) -> MemberRecord {
        MemberRecord {
            user_id: format!("user-{session}"),
            session_id: session.to_owned(),
            ssrc: 1,
        }
    }

    async fn sessions(store: &ChannelStore, id: &str) -> Vec<String> {
        let mut list: Vec<String> = store
            .message_recipients(id)
            .await
            .unwrap()
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect();
        list.sort();
        list
    }

    #[tokio::test]
    async fn member_lists_are_kept_until_a_join_or_leave_on_any_replica() {
        for state in backends("channel-member-cache").await {
            let (one, two) = (ChannelStore::new(state.clone()), ChannelStore::new(state.clone()));
            let mut rec = record("c");
            assert!(one.create(&rec).await.unwrap());
            one.add_member(&mut rec, &member("a")).await.unwrap();
            assert_ne!(rec.members_version, 0);
            assert_eq!(sessions(&one, "c").await, ["a"]);
            assert_eq!(sessions(&two, "c").await, ["a"]);

            // A hash change that no version records is not seen: the lists
            // read are kept under the version.
            state
                .hash_set(&members_key("c"), "stray", &encode(&member("stray")))
                .await
                .unwrap();
            assert_eq!(sessions(&one, "c").await, ["a"]);
            // Nor by a change to the record that keeps its version (a new
            // name): the list stays kept, known by the new record's bytes.
            let mut renamed = one.require("c").await.unwrap();
            renamed.name = "renamed".into();
            two.put(&renamed).await.unwrap();
            assert_eq!(sessions(&one, "c").await, ["a"]);
            assert_eq!(sessions(&one, "c").await, ["a"]);

            // A join on one replica is seen by both, with the stray field.
            let mut rec = one.require("c").await.unwrap();
            one.add_member(&mut rec, &member("b")).await.unwrap();
            assert_eq!(sessions(&two, "c").await, ["a", "b", "stray"]);
            assert_eq!(sessions(&one, "c").await, ["a", "b", "stray"]);

            // So is a leave, made on the other replica.
            let mut rec = two.require("c").await.unwrap();
            assert!(two.remove_member(&mut rec, "a").await.unwrap());
            assert_eq!(sessions(&one, "c").await, ["b", "stray"]);

            // A record without a version (from before it, or never joined)
            // is read every time.
            let mut rec = one.require("c").await.unwrap();
            rec.members_version = 0;
            one.put(&rec).await.unwrap();
            assert_eq!(sessions(&one, "c").await, ["b", "stray"]);
            state.hash_delete(&members_key("c"), "stray").await.unwrap();
            assert_eq!(sessions(&one, "c").await, ["b"]);

            // A deleted and re-created channel starts with no list.
            one.delete("c").await.unwrap();
            let mut again = record("c");
            assert!(two.create(&again).await.unwrap());
            two.add_member(&mut again, &member("z")).await.unwrap();
            assert_eq!(sessions(&one, "c").await, ["z"]);
            assert_eq!(sessions(&two, "c").await, ["z"]);
        }
    }

    #[test]
    fn the_member_cache_holds_at_most_its_bound_of_ids() {
        let list = |n: usize| -> Arc<[ConnectionId]> { (0..n).map(|i| ConnectionId::new(i.to_string())).collect() };
        let mut cache = MemberCache::default();
        cache.put("big", 1, b"r", list(MEMBER_CACHE_IDS - 10));
        cache.put("small", 1, b"r", list(10));
        assert_eq!(cache.held, MEMBER_CACHE_IDS);
        assert!(cache.get("big", 1, b"r").is_some() && cache.get("small", 1, b"r").is_some());
        // One more id: a list is dropped to make room.
        cache.put("one", 7, b"r", list(1));
        assert!(cache.held <= MEMBER_CACHE_IDS);
        assert_eq!(cache.get("one", 7, b"r").map(|l| l.len()), Some(1));
        assert!(cache.get("big", 1, b"r").is_none() || cache.get("small", 1, b"r").is_none());
        // Another version of a channel replaces its list; version 0 and a
        // list past the bound are not kept.
        cache.put("one", 8, b"r", list(3));
        assert!(cache.get("one", 7, b"r").is_none());
        assert_eq!(cache.get("one", 8, b"r").map(|l| l.len()), Some(3));
        cache.put("one", 0, b"r", list(3));
        assert!(cache.get("one", 0, b"r").is_none() && cache.get("one", 8, b"r").is_none());
        cache.put("huge", 1, b"r", list(MEMBER_CACHE_IDS + 1));
        assert!(cache.get("huge", 1, b"r").is_none());
        let held: usize = cache.lists.values().map(|k| k.list.len()).sum();
        assert_eq!(cache.held, held);
    }

    #[test]
    fn a_kept_list_is_found_by_the_record_it_was_last_seen_with() {
        let mut cache = MemberCache::default();
        let list: Arc<[ConnectionId]> = Arc::from([ConnectionId::new("a")]);
        cache.put("c", 7, b"record v7", list);
        assert!(cache.get_by_record("c", b"record v7").is_some());
        // Other bytes (a rename, a new version) are not taken on trust.
        assert!(cache.get_by_record("c", b"renamed v7").is_none());
        assert!(cache.get_by_record("other", b"record v7").is_none());
        // Found by its version, the new bytes become the ones it is known by.
        assert!(cache.get("c", 7, b"renamed v7").is_some());
        assert!(cache.get_by_record("c", b"renamed v7").is_some());
        assert!(cache.get_by_record("c", b"record v7").is_none());
        // Another version does not match, whatever the bytes.
        assert!(cache.get("c", 8, b"record v8").is_none());
        assert!(cache.get_by_record("c", b"record v8").is_none());
    }
}
