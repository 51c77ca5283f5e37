//! The in-memory backend: one process, no persistence. Expiry is checked on
//! access and swept every `SWEEP_EVERY` writes, so dead keys do not pile up.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::gcra::{self, Rate};
use crate::{RateDecision, Result, SUBSCRIPTION_BUFFER, StateError, Subscription, offer};

const SWEEP_EVERY: u64 = 4096;

enum Value {
    Bytes(Vec<u8>),
    Counter(u64),
    Set(HashSet<String>),
    Hash(HashMap<String, Vec<u8>>),
    /// A sliding-window log: when each counted event happened, oldest first.
    Log(VecDeque<Instant>),
    /// A GCRA bucket's theoretical arrival time ([`crate::gcra`]).
    Tat(f64),
}

struct Entry {
    value: Value,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

pub struct MemoryStore {
    data: Mutex<HashMap<String, Entry>>,
    topics: Mutex<HashMap<String, Vec<mpsc::Sender<Bytes>>>>,
    /// Gateway inboxes served in the publisher's task, by gateway replica
    /// id (so a publish finds one without building its topic's name), each
    /// with its registration's id ([`crate::Delivery::serve_inbox`]).
    sinks: Mutex<HashMap<String, (u64, crate::delivery::InboxSink)>>,
    writes: AtomicU64,
    /// Never bumped: memory is never lost while the process lives. Kept so
    /// receivers wait forever instead of seeing a closed channel.
    reconnected: watch::Sender<u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            data: Mutex::default(),
            topics: Mutex::default(),
            sinks: Mutex::default(),
            writes: AtomicU64::default(),
            reconnected: watch::Sender::new(0),
        }
    }
}

fn wrong_type(key: &str) -> StateError {
    StateError::WrongType(key.to_owned())
}

impl MemoryStore {
    /// Runs `f` on the live entry at `key` (None when absent or expired).
    fn with_data<T>(&self, f: impl FnOnce(&mut HashMap<String, Entry>, Instant) -> T) -> T {
        let now = Instant::now();
        let mut data = self.data.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut data, now)
    }

    fn live<'a>(data: &'a mut HashMap<String, Entry>, key: &str, now: Instant) -> Option<&'a mut Entry> {
        if data.get(key).is_some_and(|e| !e.live(now)) {
            data.remove(key);
        }
        data.get_mut(key)
    }

    fn wrote(&self) {
        if self.writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.with_data(|data, now| data.retain(|_, e| e.live(now)));
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.with_data(|data, now| match Self::live(data, key, now) {
            None => Ok(None),
            Some(Entry {
                value: Value::Bytes(v), ..
            }) => Ok(Some(v.clone())),
            Some(Entry {
                value: Value::Counter(n),
                ..
            }) => Ok(Some(n.to_string().into_bytes())),
            Some(_) => Err(wrong_type(key)),
        })
    }

    pub fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.with_data(|data, now| {
            data.insert(
                key.to_owned(),
                Entry {
                    value: Value::Bytes(value.to_vec()),
                    expires: ttl.map(|t| now + t),
                },
            );
        });
        self.wrote();
        Ok(())
    }

    pub fn renew_if(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool> {
        self.with_data(|data, now| match Self::live(data, key, now) {
            Some(Entry {
                value: Value::Bytes(v),
                expires,
            }) if v.as_slice() == value => {
                *expires = Some(now + ttl);
                Ok(true)
            }
            _ => Ok(false),
        })
    }

    pub fn set_nx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        let set = self.with_data(|data, now| {
            if Self::live(data, key, now).is_some() {
                return false;
            }
            data.insert(
                key.to_owned(),
                Entry {
                    value: Value::Bytes(value.to_vec()),
                    expires: ttl.map(|t| now + t),
                },
            );
            true
        });
        self.wrote();
        Ok(set)
    }

    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: &[u8],
        new: Option<&[u8]>,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let swapped = self.with_data(|data, now| {
            let current = match Self::live(data, key, now) {
                Some(Entry {
                    value: Value::Bytes(v), ..
                }) => v.as_slice() == expected,
                Some(_) => return Err(wrong_type(key)),
                None => false,
            };
            if current {
                match new {
                    Some(v) => {
                        data.insert(
                            key.to_owned(),
                            Entry {
                                value: Value::Bytes(v.to_vec()),
                                expires: ttl.map(|t| now + t),
                            },
                        );
                    }
                    None => {
                        data.remove(key);
                    }
                }
            }
            Ok(current)
        })?;
        self.wrote();
        Ok(swapped)
    }

    pub fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.with_data(|data, now| {
            let existed = Self::live(data, key, now).is_some();
            data.remove(key);
            existed
        }))
    }

    pub fn delete_if_eq(&self, key: &str, value: &[u8]) -> Result<bool> {
        Ok(self.with_data(|data, now| {
            let held =
                matches!(Self::live(data, key, now), Some(e) if matches!(&e.value, Value::Bytes(v) if v == value));
            if held {
                data.remove(key);
            }
            held
        }))
    }

    pub fn take(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.with_data(|data, now| {
            if Self::live(data, key, now).is_none() {
                return Ok(None);
            }
            match data.remove(key) {
                Some(Entry {
                    value: Value::Bytes(v), ..
                }) => Ok(Some(v)),
                Some(other) => {
                    data.insert(key.to_owned(), other);
                    Err(wrong_type(key))
                }
                None => Ok(None),
            }
        })
    }

    pub fn incr_window(&self, key: &str, window: Duration) -> Result<(u64, Duration)> {
        let out = self.with_data(|data, now| match Self::live(data, key, now) {
            Some(Entry {
                value: Value::Counter(n),
                expires,
            }) => {
                *n += 1;
                let left = expires.map_or(window, |at| at.saturating_duration_since(now));
                Ok((*n, left))
            }
            Some(_) => Err(wrong_type(key)),
            None => {
                data.insert(
                    key.to_owned(),
                    Entry {
                        value: Value::Counter(1),
                        expires: Some(now + window),
                    },
                );
                Ok((1, window))
            }
        });
        self.wrote();
        out
    }

    pub fn rate_limit(&self, key: &str, limit: u32, window: Duration) -> RateDecision {
        let out = self.with_data(|data, now| {
            let entry = data.entry(key.to_owned()).or_insert_with(|| Entry {
                value: Value::Log(VecDeque::new()),
                expires: None,
            });
            // A key of another type is replaced: a rate-limit key is only
            // ever written here.
            if !matches!(entry.value, Value::Log(_)) || !entry.live(now) {
                entry.value = Value::Log(VecDeque::new());
            }
            let Value::Log(log) = &mut entry.value else {
                return RateDecision {
                    allowed: false,
                    remaining: 0,
                    reset_after: window,
                };
            };
            while log.front().is_some_and(|t| now.duration_since(*t) >= window) {
                log.pop_front();
            }
            let count = u32::try_from(log.len()).unwrap_or(u32::MAX);
            let allowed = count < limit;
            if allowed {
                log.push_back(now);
            }
            entry.expires = Some(now + window);
            let reset_after = log
                .front()
                .map_or(window, |t| window.saturating_sub(now.duration_since(*t)));
            RateDecision {
                allowed,
                remaining: limit.saturating_sub(count + u32::from(allowed)),
                reset_after,
            }
        });
        self.wrote();
        out
    }

    pub fn throttle(&self, key: &str, rate: Rate, cost: u32) -> RateDecision {
        let out = self.with_data(|data, now| {
            // One lookup: a live bucket is read and updated in place, so its
            // key is not hashed three times and copied again on every charge
            // (a channel's is charged for every message).
            let held = data.get_mut(key);
            let tat = match held.as_deref() {
                Some(
                    e @ Entry {
                        value: Value::Tat(t), ..
                    },
                ) if e.live(now) => Some(*t),
                // Absent, expired, or (never written here) another type.
                _ => None,
            };
            let now_us = gcra::monotonic_us(now);
            let (decision, tat) = gcra::decide(rate, tat, now_us, cost);
            // Expires once the bucket is full again: a full bucket needs no key.
            let full_in = Duration::from_secs_f64(((tat - now_us) / 1e6).max(0.0));
            let entry = Entry {
                value: Value::Tat(tat),
                expires: Some(now + full_in + Duration::from_millis(1)),
            };
            match held {
                Some(held) => *held = entry,
                None => {
                    data.insert(key.to_owned(), entry);
                }
            }
            decision
        });
        self.wrote();
        out
    }

    pub fn set_add(&self, key: &str, member: &str, ttl: Option<Duration>) -> Result<()> {
        let out = self.with_data(|data, now| {
            let entry = match Self::live(data, key, now) {
                Some(e) => e,
                None => data.entry(key.to_owned()).or_insert(Entry {
                    value: Value::Set(HashSet::new()),
                    expires: None,
                }),
            };
            let Value::Set(set) = &mut entry.value else {
                return Err(wrong_type(key));
            };
            set.insert(member.to_owned());
            if let Some(ttl) = ttl {
                entry.expires = Some(now + ttl);
            }
            Ok(())
        });
        self.wrote();
        out
    }

    pub fn set_remove(&self, key: &str, member: &str) -> Result<()> {
        self.with_data(|data, now| {
            let Some(entry) = Self::live(data, key, now) else {
                return Ok(());
            };
            let Value::Set(set) = &mut entry.value else {
                return Err(wrong_type(key));
            };
            set.remove(member);
            if set.is_empty() {
                data.remove(key);
            }
            Ok(())
        })
    }

    pub fn set_members(&self, key: &str) -> Result<Vec<String>> {
        self.with_data(|data, now| match Self::live(data, key, now) {
            None => Ok(Vec::new()),
            Some(Entry {
                value: Value::Set(s), ..
            }) => Ok(s.iter().cloned().collect()),
            Some(_) => Err(wrong_type(key)),
        })
    }

    fn with_hash<T>(
        &self,
        key: &str,
        create: bool,
        f: impl FnOnce(&mut HashMap<String, Vec<u8>>) -> T,
    ) -> Result<Option<T>> {
        self.with_data(|data, now| {
            let entry = match Self::live(data, key, now) {
                Some(e) => e,
                None if create => data.entry(key.to_owned()).or_insert(Entry {
                    value: Value::Hash(HashMap::new()),
                    expires: None,
                }),
                None => return Ok(None),
            };
            match &mut entry.value {
                Value::Hash(h) => Ok(Some(f(h))),
                _ => Err(wrong_type(key)),
            }
        })
    }

    pub fn hash_set(&self, key: &str, field: &str, value: &[u8]) -> Result<()> {
        self.with_hash(key, true, |h| h.insert(field.to_owned(), value.to_vec()))?;
        self.wrote();
        Ok(())
    }

    pub fn hash_get(&self, key: &str, field: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.with_hash(key, false, |h| h.get(field).cloned())?.flatten())
    }

    pub fn hash_delete(&self, key: &str, field: &str) -> Result<bool> {
        Ok(self
            .with_hash(key, false, |h| h.remove(field).is_some())?
            .unwrap_or(false))
    }

    pub fn hash_all(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .with_hash(key, false, |h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())?
            .unwrap_or_default())
    }

    pub fn hash_fields(&self, key: &str) -> Result<Vec<String>> {
        Ok(self
            .with_hash(key, false, |h| h.keys().cloned().collect())?
            .unwrap_or_default())
    }

    pub fn hash_take_all(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.with_data(|data, now| match Self::live(data, key, now) {
            None => Ok(Vec::new()),
            Some(Entry {
                value: Value::Hash(_), ..
            }) => match data.remove(key) {
                Some(Entry {
                    value: Value::Hash(h), ..
                }) => Ok(h.into_iter().collect()),
                _ => Ok(Vec::new()),
            },
            Some(_) => Err(wrong_type(key)),
        })
    }

    pub fn reconnected(&self) -> watch::Receiver<u64> {
        self.reconnected.subscribe()
    }

    pub fn publish(&self, topic: &str, payload: Bytes) {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(subs) = topics.get_mut(topic) {
            subs.retain(|tx| offer(tx, payload.clone()));
            if subs.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// Serves the inbox of gateway replica `gateway` with `sink`, called in
    /// each publisher's task, instead of a subscription to its topic;
    /// returns the registration's id for [`Self::detach_sink`].
    pub(crate) fn attach_sink(&self, gateway: &str, sink: crate::delivery::InboxSink) -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        sinks.insert(gateway.to_owned(), (id, sink));
        id
    }

    /// Removes the sink of registration `id` (not a newer one for the
    /// same replica).
    pub(crate) fn detach_sink(&self, gateway: &str, id: u64) {
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        if sinks.get(gateway).is_some_and(|(held, _)| *held == id) {
            sinks.remove(gateway);
        }
    }

    /// The sink serving the inbox of replica `gateway`, if any.
    pub(crate) fn sink(&self, gateway: &str) -> Option<crate::delivery::InboxSink> {
        let sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        sinks.get(gateway).map(|(_, sink)| sink.clone())
    }

    pub fn subscribe(&self, topic: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.entry(topic.to_owned()).or_default().push(tx);
        Subscription { rx }
    }
}
