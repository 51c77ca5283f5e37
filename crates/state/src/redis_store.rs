//! The Redis backend.
//!
//! Commands go over a `ConnectionManager`, which reconnects by itself.
//! Pub/sub uses one dedicated connection per process, owned by a driver task
//! that fans each message out to the local subscribers of its topic and, when
//! the connection drops, reconnects with backoff and resubscribes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use crate::{RateDecision, Result, SUBSCRIPTION_BUFFER, StateError, Subscription, offer};

/// A sliding-window log in a sorted set, decided in one atomic step on
/// Redis's own clock (so replicas with skewed clocks agree). Members are
/// unique ids scored by arrival time in milliseconds. Returns
/// {allowed, remaining, reset_after_ms}.
const RATE_LIMIT_LUA: &str = r"
local key, limit, window, member = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
local allowed = 0
if count < limit then
  redis.call('ZADD', key, now, member)
  count = count + 1
  allowed = 1
end
redis.call('PEXPIRE', key, window)
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local reset = window
if oldest[2] then reset = tonumber(oldest[2]) + window - now end
return {allowed, limit - count, reset}
";

/// Hashed once: the script is sent by its SHA (EVALSHA), loaded on a miss.
static RATE_LIMIT_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RATE_LIMIT_LUA));

type Subscribers = Arc<Mutex<HashMap<String, Vec<mpsc::Sender<Bytes>>>>>;

#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
    subscribers: Subscribers,
    /// Asks the pub/sub driver to subscribe a topic; answered once live.
    subscribe_tx: mpsc::Sender<(String, oneshot::Sender<Result<()>>)>,
}

impl RedisStore {
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let conn = client.get_connection_manager().await?;
        let subscribers: Subscribers = Arc::default();
        let (subscribe_tx, subscribe_rx) = mpsc::channel(64);
        let pubsub = client.get_async_pubsub().await?;
        tokio::spawn(drive_pubsub(client, pubsub, subscribers.clone(), subscribe_rx));
        Ok(Self {
            conn,
            prefix: prefix.into(),
            subscribers,
            subscribe_tx,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.conn().get(self.key(key)).await?)
    }

    pub async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(millis(ttl));
        }
        cmd.query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    pub async fn set_nx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value).arg("NX");
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(millis(ttl));
        }
        let set: Option<String> = cmd.query_async(&mut self.conn()).await?;
        Ok(set.is_some())
    }

    pub async fn delete(&self, key: &str) -> Result<bool> {
        let n: u64 = self.conn().del(self.key(key)).await?;
        Ok(n > 0)
    }

    pub async fn take(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(redis::cmd("GETDEL")
            .arg(self.key(key))
            .query_async(&mut self.conn())
            .await?)
    }

    pub async fn incr_window(&self, key: &str, window: Duration) -> Result<(u64, Duration)> {
        let key = self.key(key);
        let (count, pttl): (u64, i64) = redis::pipe()
            .atomic()
            .incr(&key, 1u64)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(millis(window))
            .arg("NX")
            .ignore()
            .pttl(&key)
            .query_async(&mut self.conn())
            .await?;
        let left = u64::try_from(pttl).map_or(window, Duration::from_millis);
        Ok((count, left))
    }

    pub async fn rate_limit(&self, key: &str, limit: u32, window: Duration) -> Result<RateDecision> {
        let (allowed, remaining, reset_ms): (i64, i64, i64) = RATE_LIMIT_SCRIPT
            .key(self.key(key))
            .arg(limit)
            .arg(millis(window))
            .arg(uuid::Uuid::new_v4().simple().to_string())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(RateDecision {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            reset_after: Duration::from_millis(u64::try_from(reset_ms.max(0)).unwrap_or(0)),
        })
    }

    pub async fn set_add(&self, key: &str, member: &str, ttl: Option<Duration>) -> Result<()> {
        let key = self.key(key);
        let mut pipe = redis::pipe();
        pipe.atomic().sadd(&key, member).ignore();
        if let Some(ttl) = ttl {
            pipe.cmd("PEXPIRE").arg(&key).arg(millis(ttl)).ignore();
        }
        pipe.query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    pub async fn set_remove(&self, key: &str, member: &str) -> Result<()> {
        let _: u64 = self.conn().srem(self.key(key), member).await?;
        Ok(())
    }

    pub async fn set_members(&self, key: &str) -> Result<Vec<String>> {
        Ok(self.conn().smembers(self.key(key)).await?)
    }

    pub async fn hash_set(&self, key: &str, field: &str, value: &[u8]) -> Result<()> {
        let _: u64 = self.conn().hset(self.key(key), field, value).await?;
        Ok(())
    }

    pub async fn hash_get(&self, key: &str, field: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.conn().hget(self.key(key), field).await?)
    }

    pub async fn hash_delete(&self, key: &str, field: &str) -> Result<bool> {
        let n: u64 = self.conn().hdel(self.key(key), field).await?;
        Ok(n > 0)
    }

    pub async fn hash_all(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self.conn().hgetall(self.key(key)).await?)
    }

    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        let _: u64 = self.conn().publish(self.key(topic), payload.as_ref()).await?;
        Ok(())
    }

    pub async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        let topic = self.key(topic);
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let first = {
            let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            let list = subs.entry(topic.clone()).or_default();
            list.push(tx);
            list.len() == 1
        };
        if first {
            let (ack_tx, ack_rx) = oneshot::channel();
            self.subscribe_tx
                .send((topic, ack_tx))
                .await
                .map_err(|_| StateError::Corrupt("pub/sub driver stopped".into()))?;
            ack_rx
                .await
                .map_err(|_| StateError::Corrupt("pub/sub driver stopped".into()))??;
        }
        Ok(Subscription { rx })
    }

    pub async fn ping(&self) -> Result<()> {
        redis::cmd("PING").query_async::<String>(&mut self.conn()).await?;
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Owns the pub/sub connection for the life of the store (it ends when every
/// clone of the store, and so `requests`' sender, is dropped).
async fn drive_pubsub(
    client: redis::Client,
    pubsub: redis::aio::PubSub,
    subscribers: Subscribers,
    mut requests: mpsc::Receiver<(String, oneshot::Sender<Result<()>>)>,
) {
    let (mut sink, mut stream) = pubsub.split();
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            req = requests.recv() => {
                let Some((topic, ack)) = req else { return };
                let _ = ack.send(sink.subscribe(&topic).await.map_err(StateError::from));
            }
            msg = stream.next() => {
                if let Some(msg) = msg {
                    backoff = Duration::from_millis(100);
                    let topic = msg.get_channel_name().to_owned();
                    let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                    let emptied = {
                        let mut subs = subscribers.lock().unwrap_or_else(|p| p.into_inner());
                        let emptied = subs.get_mut(&topic).is_some_and(|list| {
                            list.retain(|tx| offer(tx, payload.clone()));
                            list.is_empty()
                        });
                        if emptied {
                            subs.remove(&topic);
                        }
                        emptied
                    };
                    if emptied {
                        let _ = sink.unsubscribe(&topic).await;
                    }
                    continue;
                }
                // The connection dropped: reconnect and resubscribe every topic.
                tracing::warn!("redis pub/sub connection lost; reconnecting");
                loop {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    let Ok(pubsub) = client.get_async_pubsub().await else { continue };
                    (sink, stream) = pubsub.split();
                    let topics: Vec<String> = subscribers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .keys()
                        .cloned()
                        .collect();
                    let mut ok = true;
                    for topic in &topics {
                        ok &= sink.subscribe(topic).await.is_ok();
                    }
                    if ok {
                        tracing::info!(topics = topics.len(), "redis pub/sub resubscribed");
                        break;
                    }
                }
            }
        }
    }
}
