//! The Redis backend: one Redis (`REDIS_URL`) or a Redis Cluster
//! (`REDIS_CLUSTER_URLS`), behind the same operations.
//!
//! Both speak RESP3, so a connection that drops is noticed at once (the
//! client library pushes a disconnection) and reconnected before the next
//! command needs it, not by the next command failing. Commands that are safe
//! to repeat are retried once more after a dropped connection, so the first
//! command after a Redis restart succeeds.
//!
//! Pub/sub has its own connection per process; its messages are fanned out to
//! the local subscribers of their topic, and the client library resubscribes
//! every topic after a reconnect. On a cluster, topics are sharded
//! (`SSUBSCRIBE`/`SPUBLISH`): each lives on the node owning its slot.
//!
//! A supervisor task, owned by the store (it stops when the last clone is
//! dropped), pings both connections each second and after every dropped
//! connection; when they answer again it bumps the epoch that
//! [`crate::SharedState::reconnected`] reports, so holders of state that a
//! restarted Redis may have lost can write it again at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, ProtocolVersion, PushInfo, PushKind, RedisFuture, Value};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::gcra::Rate;
use crate::{RateDecision, Result, SUBSCRIPTION_BUFFER, Subscription, offer};

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

/// A GCRA bucket (`crate::gcra::decide`, the same arithmetic) on Redis's
/// clock, in microseconds: ARGV interval_us, burst, cost (already clamped
/// to 1..=burst). The key holds the TAT and expires once the bucket is full
/// again. Returns {allowed, remaining, reset_after_us}.
const THROTTLE_LUA: &str = r"
local key, interval, burst, cost = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', key) or now)
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, 0, math.ceil(allow_at - now)}
end
redis.call('SET', key, string.format('%.17g', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now - allow_at) / interval), math.ceil(new_tat - now)}
";

/// Hashed once: the script is sent by its SHA (EVALSHA), loaded on a miss.
static THROTTLE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(THROTTLE_LUA));

/// Hashed once: the script is sent by its SHA (EVALSHA), loaded on a miss.
static RATE_LIMIT_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RATE_LIMIT_LUA));

type Subscribers = Arc<Mutex<HashMap<String, Vec<mpsc::Sender<Bytes>>>>>;

/// How long to wait for a TCP connection to a Redis node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait for a reply before the command fails.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Reconnect attempts after a drop before commands waiting on it fail
/// (with backoff from 50 ms to 500 ms: about three seconds of outage).
const RECONNECT_ATTEMPTS: usize = 6;
/// The supervisor's health check period.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// Extra attempts of a command that is safe to repeat, after a dropped
/// connection.
const IDEMPOTENT_RETRIES: u32 = 2;

/// A command connection: one server, or a cluster routed by key slot.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether a failed command may be sent again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Sending it twice has the effect of sending it once.
    Safe,
    /// It must not run twice (a counter, a claim, a take, a publish).
    Never,
}

#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    pubsub: Conn,
    prefix: Arc<str>,
    subscribers: Subscribers,
    reconnected: watch::Receiver<u64>,
    /// Stops the supervisor when the last clone of the store is dropped.
    _supervisor: Arc<DropGuard>,
}

/// What the push callback of the connections shares with the supervisor.
struct Pushes {
    subscribers: Subscribers,
    /// Set (and `notify` woken) when a connection reports it dropped.
    lost: AtomicBool,
    notify: Notify,
    /// Topics whose last local subscriber went away, to unsubscribe.
    emptied: mpsc::UnboundedSender<String>,
}

impl Pushes {
    fn push(&self, info: PushInfo) {
        match info.kind {
            PushKind::Message | PushKind::SMessage => self.deliver(&info.data),
            PushKind::Disconnection => {
                self.lost.store(true, Ordering::SeqCst);
                self.notify.notify_one();
            }
            _ => {}
        }
    }

    fn deliver(&self, data: &[Value]) {
        let [Value::BulkString(topic), Value::BulkString(payload)] = data else {
            metrics::counter!("relaymesh_state_pubsub_malformed_total").increment(1);
            return;
        };
        let Ok(topic) = std::str::from_utf8(topic) else {
            return;
        };
        let payload = Bytes::copy_from_slice(payload);
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let emptied = subs.get_mut(topic).is_some_and(|list| {
            list.retain(|tx| offer(tx, payload.clone()));
            list.is_empty()
        });
        if emptied {
            subs.remove(topic);
            let _ = self.emptied.send(topic.to_owned());
        }
    }
}

impl RedisStore {
    /// One Redis server at `url`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)?;
        let redis_settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(redis_settings))?;
        Self::start(prefix, |pushes| async move {
            let config = || {
                ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500))
                    .set_number_of_retries(RECONNECT_ATTEMPTS)
            };
            let on_push = |pushes: Arc<Pushes>| {
                move |info: PushInfo| -> Result<(), std::convert::Infallible> {
                    pushes.push(info);
                    Ok(())
                }
            };
            let conn =
                ConnectionManager::new_with_config(client.clone(), config().set_push_sender(on_push(pushes.clone())))
                    .await?;
            let pubsub = ConnectionManager::new_with_config(
                client,
                config().set_push_sender(on_push(pushes)).set_automatic_resubscription(),
            )
            .await?;
            Ok((Conn::Single(conn), Conn::Single(pubsub)))
        })
        .await
    }

    /// The Redis Cluster that `seeds` (any of its nodes) belong to.
    pub async fn connect_cluster(seeds: &[String], prefix: &str) -> Result<Self> {
        if prefix.contains('{') {
            tracing::warn!(
                prefix,
                "a key prefix with a hash tag puts every key in one cluster slot"
            );
        }
        let seeds = seeds.to_vec();
        Self::start(prefix, |pushes| async move {
            let client = |pushes: Option<Arc<Pushes>>| {
                let mut builder = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT);
                if let Some(pushes) = pushes {
                    builder = builder.push_sender(move |info: PushInfo| -> Result<(), std::convert::Infallible> {
                        pushes.push(info);
                        Ok(())
                    });
                }
                builder.build()
            };
            let conn = client(None)?.get_async_connection().await?;
            let pubsub = client(Some(pushes))?.get_async_connection().await?;
            Ok((Conn::Cluster(conn), Conn::Cluster(pubsub)))
        })
        .await
    }

    async fn start<F, Fut>(prefix: &str, open: F) -> Result<Self>
    where
        F: FnOnce(Arc<Pushes>) -> Fut,
        Fut: Future<Output = Result<(Conn, Conn)>>,
    {
        let subscribers: Subscribers = Arc::default();
        let (emptied_tx, emptied_rx) = mpsc::unbounded_channel();
        let pushes = Arc::new(Pushes {
            subscribers: subscribers.clone(),
            lost: AtomicBool::new(false),
            notify: Notify::new(),
            emptied: emptied_tx,
        });
        let (conn, pubsub) = open(pushes.clone()).await?;
        let (epoch_tx, reconnected) = watch::channel(0);
        let stop = CancellationToken::new();
        tokio::spawn(
            Supervisor {
                conn: conn.clone(),
                pubsub: pubsub.clone(),
                pushes,
                emptied: emptied_rx,
                epoch: epoch_tx,
            }
            .run(stop.clone()),
        );
        Ok(Self {
            conn,
            pubsub,
            prefix: prefix.into(),
            subscribers,
            reconnected,
            _supervisor: Arc::new(stop.drop_guard()),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// Bumped each time the connections came back after a drop.
    pub fn reconnected(&self) -> watch::Receiver<u64> {
        self.reconnected.clone()
    }

    fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// Runs `cmd`; a `Safe` one is sent again after a dropped connection
    /// (by then the connection manager has reconnected, or is doing so).
    async fn run<T: FromRedisValue>(&self, cmd: &Cmd, repeat: Repeat) -> Result<T> {
        self.with_retry(repeat, || async { cmd.query_async(&mut self.conn.clone()).await })
            .await
    }

    /// A script compare-and-acts on its own key, so a retry after a dropped
    /// connection is safe: the second run finds the first one's outcome.
    async fn run_script<T: FromRedisValue>(&self, inv: &redis::ScriptInvocation<'_>) -> Result<T> {
        self.with_retry(Repeat::Safe, || async {
            inv.invoke_async(&mut self.conn.clone()).await
        })
        .await
    }

    async fn run_pipe<T: FromRedisValue>(&self, pipe: &Pipeline, repeat: Repeat) -> Result<T> {
        self.with_retry(repeat, || async { pipe.query_async(&mut self.conn.clone()).await })
            .await
    }

    async fn with_retry<T, F, Fut>(&self, repeat: Repeat, send: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let mut attempt = 0;
        loop {
            match send().await {
                Ok(v) => return Ok(v),
                Err(err) if repeat == Repeat::Safe && attempt < IDEMPOTENT_RETRIES && transient(&err) => {
                    attempt += 1;
                    metrics::counter!("relaymesh_state_redis_retries_total").increment(1);
                    tracing::debug!(error = %err, attempt, "redis command retried after a dropped connection");
                    tokio::time::sleep(Duration::from_millis(50) * attempt).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.run(redis::cmd("GET").arg(self.key(key)), Repeat::Safe).await
    }

    /// One `MGET`; on a cluster the client splits it by slot and sends the
    /// parts to their nodes at once.
    pub async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        let keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        self.run(redis::cmd("MGET").arg(&keys), Repeat::Safe).await
    }

    pub async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(millis(ttl));
        }
        self.run(&cmd, Repeat::Safe).await
    }

    pub async fn set_nx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value).arg("NX");
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(millis(ttl));
        }
        let set: Option<String> = self.run(&cmd, Repeat::Never).await?;
        Ok(set.is_some())
    }

    pub async fn renew_if(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool> {
        // Compare and extend in one step: a lease that expired and was taken
        // by another holder is never extended by the old one.
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
        );
        let mut inv = script.key(self.key(key));
        inv.arg(value).arg(millis(ttl));
        let n: i64 = self.run_script(&inv).await?;
        Ok(n == 1)
    }

    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: &[u8],
        new: Option<&[u8]>,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        // One script: GET, compare and write happen with no command between.
        const SCRIPT: &str = r"
            if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
            if ARGV[2] == '0' then redis.call('DEL', KEYS[1]) return 1 end
            if ARGV[4] == '0' then redis.call('SET', KEYS[1], ARGV[3])
            else redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4]) end
            return 1";
        let script = redis::Script::new(SCRIPT);
        let swapped: i64 = script
            .key(self.key(key))
            .arg(expected)
            .arg(if new.is_some() { "1" } else { "0" })
            .arg(new.unwrap_or_default())
            .arg(ttl.map_or(0, millis))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(swapped == 1)
    }

    pub async fn delete(&self, key: &str) -> Result<bool> {
        let n: u64 = self.run(redis::cmd("DEL").arg(self.key(key)), Repeat::Safe).await?;
        Ok(n > 0)
    }

    /// Deletes `key` only while it holds `value`, atomically (a Lua script):
    /// the release of a lease that may have passed to someone else.
    pub async fn delete_if_eq(&self, key: &str, value: &[u8]) -> Result<bool> {
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        let mut inv = script.key(self.key(key));
        inv.arg(value);
        let n: u64 = self.run_script(&inv).await?;
        Ok(n > 0)
    }

    pub async fn take(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.run(redis::cmd("GETDEL").arg(self.key(key)), Repeat::Never).await
    }

    pub async fn incr_window(&self, key: &str, window: Duration) -> Result<(u64, Duration)> {
        let key = self.key(key);
        let (count, pttl): (u64, i64) = self
            .run_pipe(
                redis::pipe()
                    .atomic()
                    .incr(&key, 1u64)
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(millis(window))
                    .arg("NX")
                    .ignore()
                    .pttl(&key),
                Repeat::Never,
            )
            .await?;
        let left = u64::try_from(pttl).map_or(window, Duration::from_millis);
        Ok((count, left))
    }

    pub async fn rate_limit(&self, key: &str, limit: u32, window: Duration) -> Result<RateDecision> {
        let mut inv = RATE_LIMIT_SCRIPT.key(self.key(key));
        inv.arg(limit)
            .arg(millis(window))
            .arg(uuid::Uuid::new_v4().simple().to_string());
        self.decide(&inv, Duration::from_millis).await
    }

    pub async fn throttle(&self, key: &str, rate: Rate, cost: u32) -> Result<RateDecision> {
        let mut inv = THROTTLE_SCRIPT.key(self.key(key));
        inv.arg(rate.interval_us()).arg(rate.burst()).arg(rate.charge(cost));
        self.decide(&inv, Duration::from_micros).await
    }

    /// Runs a limiter script answering {allowed, remaining, reset_after},
    /// the reset in the script's `unit`.
    async fn decide(&self, inv: &redis::ScriptInvocation<'_>, unit: fn(u64) -> Duration) -> Result<RateDecision> {
        // Not retried: a second run would count the event twice.
        let (allowed, remaining, reset): (i64, i64, i64) = self
            .with_retry(Repeat::Never, || async {
                inv.invoke_async(&mut self.conn.clone()).await
            })
            .await?;
        Ok(RateDecision {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            reset_after: unit(u64::try_from(reset.max(0)).unwrap_or(0)),
        })
    }

    pub async fn set_add(&self, key: &str, member: &str, ttl: Option<Duration>) -> Result<()> {
        let key = self.key(key);
        let mut pipe = redis::pipe();
        pipe.atomic().sadd(&key, member).ignore();
        if let Some(ttl) = ttl {
            pipe.cmd("PEXPIRE").arg(&key).arg(millis(ttl)).ignore();
        }
        self.run_pipe(&pipe, Repeat::Safe).await
    }

    pub async fn set_remove(&self, key: &str, member: &str) -> Result<()> {
        let _: u64 = self
            .run(redis::cmd("SREM").arg(self.key(key)).arg(member), Repeat::Safe)
            .await?;
        Ok(())
    }

    pub async fn set_members(&self, key: &str) -> Result<Vec<String>> {
        self.run(redis::cmd("SMEMBERS").arg(self.key(key)), Repeat::Safe).await
    }

    pub async fn hash_set(&self, key: &str, field: &str, value: &[u8]) -> Result<()> {
        let _: u64 = self
            .run(
                redis::cmd("HSET").arg(self.key(key)).arg(field).arg(value),
                Repeat::Safe,
            )
            .await?;
        Ok(())
    }

    pub async fn hash_get(&self, key: &str, field: &str) -> Result<Option<Vec<u8>>> {
        self.run(redis::cmd("HGET").arg(self.key(key)).arg(field), Repeat::Safe)
            .await
    }

    pub async fn hash_delete(&self, key: &str, field: &str) -> Result<bool> {
        let n: u64 = self
            .run(redis::cmd("HDEL").arg(self.key(key)).arg(field), Repeat::Safe)
            .await?;
        Ok(n > 0)
    }

    pub async fn hash_all(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.run(redis::cmd("HGETALL").arg(self.key(key)), Repeat::Safe).await
    }

    /// Removes the hash at `key` and returns what it held, atomically.
    pub async fn hash_take_all(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let key = self.key(key);
        let (all,): (Vec<(String, Vec<u8>)>,) = self
            .run_pipe(redis::pipe().atomic().hgetall(&key).del(&key).ignore(), Repeat::Never)
            .await?;
        Ok(all)
    }

    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        let command = if self.is_cluster() { "SPUBLISH" } else { "PUBLISH" };
        let _: u64 = self
            .run(
                redis::cmd(command).arg(self.key(topic)).arg(payload.as_ref()),
                Repeat::Never,
            )
            .await?;
        Ok(())
    }

    /// The subscription is live when this returns. `SUBSCRIBE` is sent each
    /// time (Redis ignores a repeat), so a second subscriber to a topic does
    /// not return before the first one's subscription is confirmed.
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        let topic = self.key(topic);
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(topic.clone())
            .or_default()
            .push(tx);
        subscribe_like(&self.pubsub, &topic, true).await?;
        Ok(Subscription { rx })
    }

    pub async fn ping(&self) -> Result<()> {
        ping(&self.conn).await
    }
}

async fn ping(conn: &Conn) -> Result<()> {
    redis::cmd("PING").query_async::<String>(&mut conn.clone()).await?;
    Ok(())
}

/// (S)SUBSCRIBE or (S)UNSUBSCRIBE `topic` on the pub/sub connection.
async fn subscribe_like(pubsub: &Conn, topic: &str, subscribe: bool) -> Result<()> {
    let mut pubsub = pubsub.clone();
    match (&mut pubsub, subscribe) {
        (Conn::Single(c), true) => c.subscribe(topic).await?,
        (Conn::Single(c), false) => c.unsubscribe(topic).await?,
        (Conn::Cluster(c), true) => c.ssubscribe(topic).await?,
        (Conn::Cluster(c), false) => c.sunsubscribe(topic).await?,
    }
    Ok(())
}

/// An error after which the connection is being (or has been) replaced.
fn transient(err: &redis::RedisError) -> bool {
    err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() || err.is_unrecoverable_error()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Watches the connections: unsubscribes topics nobody here listens to any
/// more, and after a drop waits until both connections answer again and
/// every topic is subscribed again, then bumps the reconnect epoch.
struct Supervisor {
    conn: Conn,
    pubsub: Conn,
    pushes: Arc<Pushes>,
    emptied: mpsc::UnboundedReceiver<String>,
    epoch: watch::Sender<u64>,
}

impl Supervisor {
    async fn run(mut self, stop: CancellationToken) {
        let mut health = tokio::time::interval(HEALTH_EVERY);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let lost = tokio::select! {
                () = stop.cancelled() => return,
                Some(topic) = self.emptied.recv() => {
                    self.unsubscribe_if_unused(&topic).await;
                    false
                }
                () = self.pushes.notify.notified() => self.pushes.lost.swap(false, Ordering::SeqCst),
                _ = health.tick() => !self.healthy().await,
            };
            if lost {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.recover() => {}
                }
            }
        }
    }

    async fn healthy(&self) -> bool {
        let (a, b) = tokio::join!(ping(&self.conn), ping(&self.pubsub));
        a.is_ok() && b.is_ok()
    }

    async fn recover(&self) {
        let started = tokio::time::Instant::now();
        tracing::warn!("redis connection lost; reconnecting");
        let mut failed = 0u32;
        // The client library resubscribes by itself too, but on a cluster
        // without waiting and without retrying a node that is not serving
        // its slots yet; (S)SUBSCRIBE is idempotent, so make sure here.
        while !(self.healthy().await && self.resubscribe_all().await) {
            failed += 1;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // A drop reported while we were reconnecting is this one.
        self.pushes.lost.store(false, Ordering::SeqCst);
        self.epoch.send_modify(|n| *n += 1);
        metrics::counter!("relaymesh_state_redis_reconnects_total").increment(1);
        tracing::info!(
            after_ms = started.elapsed().as_millis(),
            failed_pings = failed,
            "redis reconnected; subscriptions restored"
        );
    }

    /// Subscribes every topic with a local subscriber again; true when the
    /// server confirmed them all.
    async fn resubscribe_all(&self) -> bool {
        let topics: Vec<String> = self
            .pushes
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for topic in &topics {
            if let Err(err) = subscribe_like(&self.pubsub, topic, true).await {
                tracing::debug!(topic, error = %err, "resubscribe failed; retrying");
                return false;
            }
        }
        true
    }

    async fn unsubscribe_if_unused(&self, topic: &str) {
        let unused = !self
            .pushes
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(topic);
        if unused && let Err(err) = subscribe_like(&self.pubsub, topic, false).await {
            tracing::debug!(topic, error = %err, "unsubscribe failed");
        }
    }
}
