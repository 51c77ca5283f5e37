//! Delivery of events and closes to connections held by any gateway replica.
//!
//! A producer (a service, or a gateway acting for another connection) looks
//! the recipients up in the registry, groups them by the replica holding
//! them, and publishes one [`Envelope`] per replica on that replica's topic;
//! the replica's [`GatewayInbox`] hands it to its sockets. Delivery is at
//! most once: state that must not be lost (device commands) is kept by its
//! service and re-sent, not by this path.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use relaymesh_proto::client::v1::{ClientProtocol, CloseCode};
use relaymesh_proto::delivery::v1::NudgeReason;

use crate::{
    Body, ConnectionId, Envelope, GatewayId, Result, SessionEntry, SessionRegistry, SharedState, Subscription,
};

#[derive(Clone, Debug)]
pub struct Delivery {
    state: SharedState,
    registry: SessionRegistry,
    /// Where recently addressed connections are, for a producer that keeps
    /// them ([`Delivery::with_routes`]).
    routes: Option<Arc<Routes>>,
}

fn inbox_topic(gateway: &str) -> String {
    format!("gw:{gateway}")
}

impl Delivery {
    pub fn new(state: SharedState, registry: SessionRegistry) -> Self {
        Self {
            state,
            registry,
            routes: None,
        }
    }

    /// This delivery, remembering for about `ttl` which replica holds each
    /// connection it addressed, for a producer that sends to the same
    /// connections again and again (a channel's fan-out): the registry is
    /// then read only for connections it has not addressed lately. A
    /// connection never moves to another replica, so a remembered route is
    /// never wrong about where; it can outlive its connection, and then a
    /// send reports the connection gone only once the route has expired
    /// (each expires between `ttl / 2` and `ttl` after it was read, spread
    /// by connection, so a channel's routes are not all read again in one
    /// send). Clones share the routes; `Delivery::new` keeps none.
    pub fn with_routes(mut self, ttl: Duration) -> Self {
        self.routes = Some(Arc::new(Routes::new(ttl)));
        self
    }

    pub fn registry(&self) -> &SessionRegistry {
        &self.registry
    }

    /// Whether every delivery completes in this process without I/O (the
    /// in-memory backend: registry reads, publishes and inboxes served by
    /// [`Self::serve_inbox`] all are).
    pub fn in_process(&self) -> bool {
        matches!(self.state, SharedState::Memory(_))
    }

    /// Publishes `envelope`, already addressed, to replica `gateway`.
    /// Callers stamp it first ([`traced`]). A replica that serves its inbox
    /// in process ([`Self::serve_inbox`], in memory) gets it handed over
    /// typed, in this task.
    async fn publish(&self, gateway: &str, envelope: Envelope) -> Result<()> {
        if let SharedState::Memory(m) = &self.state
            && let Some(sink) = m.sink(gateway)
        {
            sink(envelope);
            return Ok(());
        }
        let topic = inbox_topic(gateway);
        self.state.publish(&topic, Bytes::from(envelope.encode_to_vec())).await
    }

    /// Sends `envelope` to the connection of `entry`.
    pub async fn send_to_session(&self, entry: &SessionEntry, envelope: Envelope) -> Result<()> {
        let mut envelope = traced(envelope);
        envelope.connection_ids = vec![entry.connection_id.clone()];
        self.publish(&entry.gateway_id, envelope).await
    }

    /// Sends `envelope` to one connection; false when no replica holds it.
    pub async fn send_to_connection(&self, conn: &ConnectionId, envelope: Envelope) -> Result<bool> {
        let gone = self.send_to_connections(std::slice::from_ref(conn), envelope).await?;
        Ok(gone.is_empty())
    }

    /// Sends `envelope` to every connection in `conns`: one registry read for
    /// all of them and one publish per replica that holds any (not one per
    /// connection). Returns the connections no replica holds any more.
    pub async fn send_to_connections(&self, conns: &[ConnectionId], envelope: Envelope) -> Result<Vec<ConnectionId>> {
        let envelope = traced(envelope);
        let mut by_gateway: HashMap<String, Vec<String>> = HashMap::new();
        // With routes kept, only the connections without a live route are
        // looked up.
        let unrouted = match &self.routes {
            Some(routes) => Cow::Owned(routes.resolve(conns, &mut by_gateway)),
            None => Cow::Borrowed(conns),
        };
        let mut gone = Vec::new();
        if !unrouted.is_empty() {
            let entries = self.registry.lookup_many(&unrouted).await?;
            if let Some(routes) = &self.routes {
                routes.remember(unrouted.iter().zip(&entries));
            }
            for (conn, entry) in unrouted.iter().zip(entries) {
                match entry {
                    Some(e) => by_gateway.entry(e.gateway_id).or_default().push(e.connection_id),
                    None => gone.push(conn.clone()),
                }
            }
        }
        // One replica (every send on one gateway, most to a small channel):
        // the envelope itself goes, not a copy of its event.
        if by_gateway.len() == 1
            && let Some((gateway, ids)) = by_gateway.drain().next()
        {
            let addressed = Envelope {
                connection_ids: ids,
                ..envelope
            };
            self.publish(&gateway, addressed).await?;
            return Ok(gone);
        }
        // The replicas' publishes go out together (one round trip, not one
        // per replica); each carries only its own replica's connections.
        let publishes = by_gateway.into_iter().map(|(gateway, ids)| {
            let addressed = Envelope {
                connection_ids: ids,
                ..envelope.clone()
            };
            async move { self.publish(&gateway, addressed).await }
        });
        futures_util::future::try_join_all(publishes).await?;
        Ok(gone)
    }

    /// Sends `envelope` to every connection of `user` on `protocol`; returns
    /// how many connections it was sent to.
    pub async fn send_to_user(&self, protocol: ClientProtocol, user: &str, envelope: Envelope) -> Result<usize> {
        let sessions = self.registry.sessions_of(protocol, user).await?;
        let conns: Vec<ConnectionId> = sessions
            .iter()
            .map(|s| ConnectionId::new(s.connection_id.clone()))
            .collect();
        let gone = self.send_to_connections(&conns, envelope).await?;
        Ok(conns.len() - gone.len())
    }

    /// The inbox of gateway replica `gateway`: live when this returns.
    pub async fn inbox(&self, gateway: &GatewayId) -> Result<GatewayInbox> {
        Ok(GatewayInbox {
            sub: self.state.subscribe(&inbox_topic(gateway.as_str())).await?,
        })
    }

    /// Serves the inbox of gateway replica `gateway` with `sink`, live when
    /// this returns, until the returned server's [`InboxServer::run`] ends
    /// or is dropped. In memory every publisher is in this process, so
    /// `sink` is called in the publisher's task: an event reaches its
    /// sockets' queues before the publish returns, with no task hand-off
    /// and no encoding. On Redis, `run` receives and calls `sink`.
    pub async fn serve_inbox(
        &self,
        gateway: &GatewayId,
        sink: impl Fn(Envelope) + Send + Sync + 'static,
    ) -> Result<InboxServer> {
        let sink: InboxSink = Arc::new(sink);
        let served = match &self.state {
            SharedState::Memory(m) => Served::InProcess(SinkRegistration {
                id: m.attach_sink(gateway.as_str(), sink.clone()),
                store: m.clone(),
                gateway: gateway.as_str().to_owned(),
            }),
            SharedState::Redis(_) => Served::Subscribed(GatewayInbox {
                sub: self.state.subscribe(&inbox_topic(gateway.as_str())).await?,
            }),
        };
        Ok(InboxServer { sink, served })
    }
}

/// What a gateway replica's inbox hands each envelope to.
pub(crate) type InboxSink = Arc<dyn Fn(Envelope) + Send + Sync>;

/// A gateway replica's inbox being served ([`Delivery::serve_inbox`]).
pub struct InboxServer {
    sink: InboxSink,
    served: Served,
}

enum Served {
    /// Publishers call the sink themselves while this is held.
    InProcess(SinkRegistration),
    Subscribed(GatewayInbox),
}

struct SinkRegistration {
    store: Arc<crate::MemoryStore>,
    gateway: String,
    id: u64,
}

impl Drop for SinkRegistration {
    fn drop(&mut self) {
        self.store.detach_sink(&self.gateway, self.id);
    }
}

impl InboxServer {
    /// Hands envelopes to the sink until the backend is gone; in memory,
    /// waits (publishers call the sink) until dropped.
    pub async fn run(self) {
        match self.served {
            Served::InProcess(registration) => {
                std::future::pending::<()>().await;
                drop(registration);
            }
            Served::Subscribed(mut inbox) => {
                while let Some(env) = inbox.recv().await {
                    (self.sink)(env);
                }
            }
        }
    }
}

/// Which replica holds each connection a [`Delivery`] addressed lately
/// ([`Delivery::with_routes`]).
#[derive(Debug)]
struct Routes {
    ttl: Duration,
    table: Mutex<RouteTable>,
    /// Spreads the routes' expiries by connection.
    spread: std::collections::hash_map::RandomState,
}

#[derive(Debug)]
struct RouteTable {
    /// Connection id -> (its replica, when the route expires).
    by_connection: HashMap<String, (String, Instant)>,
    /// When expired routes were last dropped from the table.
    swept_at: Instant,
}

impl Routes {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            table: Mutex::new(RouteTable {
                by_connection: HashMap::new(),
                swept_at: Instant::now(),
            }),
            spread: Default::default(),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, RouteTable> {
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds each of `conns` with a live route to its replica's list in
    /// `by_gateway`; returns the others.
    fn resolve(&self, conns: &[ConnectionId], by_gateway: &mut HashMap<String, Vec<String>>) -> Vec<ConnectionId> {
        let now = Instant::now();
        let table = self.table();
        let mut unrouted = Vec::new();
        for conn in conns {
            match table.by_connection.get(conn.as_str()) {
                Some((gateway, until)) if *until > now => {
                    // The replica's name is cloned once per send, not once
                    // per connection.
                    let id = conn.as_str().to_owned();
                    match by_gateway.get_mut(gateway) {
                        Some(ids) => ids.push(id),
                        None => {
                            by_gateway.insert(gateway.clone(), vec![id]);
                        }
                    }
                }
                _ => unrouted.push(conn.clone()),
            }
        }
        unrouted
    }

    /// How long the route of `conn` read now lives: between ttl/2 and
    /// ttl, by connection.
    fn lifetime(&self, conn: &ConnectionId) -> Duration {
        let spread = self.spread.hash_one(conn.as_str()) % 1024;
        self.ttl / 2 + self.ttl / 2 * spread as u32 / 1024
    }

    /// Keeps the routes of connections just read from the registry (and
    /// forgets those no replica holds); drops expired routes once a `ttl`.
    fn remember<'a>(&self, read: impl Iterator<Item = (&'a ConnectionId, &'a Option<SessionEntry>)>) {
        let now = Instant::now();
        let mut table = self.table();
        if now.duration_since(table.swept_at) >= self.ttl {
            table.by_connection.retain(|_, (_, until)| *until > now);
            table.swept_at = now;
        }
        for (conn, entry) in read {
            match entry {
                Some(e) => {
                    let until = now + self.lifetime(conn);
                    table
                        .by_connection
                        .insert(conn.as_str().to_owned(), (e.gateway_id.clone(), until));
                }
                None => {
                    table.by_connection.remove(conn.as_str());
                }
            }
        }
    }
}

/// `envelope` carrying the trace context of the span that raised it (the
/// current span, unless the producer already set one, as a queued fan-out
/// does), so the receiving gateway's delivery joins the same trace.
pub fn traced(mut envelope: Envelope) -> Envelope {
    if envelope.traceparent.is_empty() {
        envelope.traceparent = relaymesh_telemetry::propagation::current_traceparent();
    }
    envelope
}

/// An envelope carrying one event of a client protocol.
pub fn event_envelope(event: impl Into<Body>, droppable: bool) -> Envelope {
    Envelope {
        body: Some(event.into()),
        droppable,
        ..Envelope::default()
    }
}

/// An envelope asking the holding gateway to close the connection.
pub fn close_envelope(code: CloseCode, reason: impl Into<String>) -> Envelope {
    Envelope {
        body: Some(Body::Close(crate::Close {
            code: code as i32,
            reason: reason.into(),
        })),
        ..Envelope::default()
    }
}

/// An envelope telling the connection's protocol adapter to pull what a
/// service has for it.
pub fn nudge_envelope(reason: NudgeReason) -> Envelope {
    Envelope {
        body: Some(Body::Nudge(crate::Nudge { reason: reason as i32 })),
        droppable: true,
        ..Envelope::default()
    }
}

/// Envelopes addressed to one gateway replica.
pub struct GatewayInbox {
    sub: Subscription,
}

impl GatewayInbox {
    /// The next envelope; None when the backend is gone. Undecodable
    /// messages are skipped and counted.
    pub async fn recv(&mut self) -> Option<Envelope> {
        loop {
            let bytes = self.sub.recv().await?;
            match Envelope::decode(bytes) {
                Ok(env) => return Some(env),
                Err(_) => metrics::counter!("relaymesh_delivery_envelopes_corrupt_total").increment(1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(conn: &ConnectionId, gateway: &str) -> Option<SessionEntry> {
        Some(SessionEntry {
            connection_id: conn.as_str().to_owned(),
            gateway_id: gateway.to_owned(),
            ..Default::default()
        })
    }

    /// Routes read together expire spread over (ttl/2, ttl], so a
    /// channel's members are not all looked up again in one send; once a
    /// ttl has passed, the next read drops the expired ones from memory.
    #[test]
    fn routes_read_together_expire_spread_and_expired_ones_are_dropped() {
        let ttl = Duration::from_secs(60);
        let routes = Routes::new(ttl);
        let conns: Vec<ConnectionId> = (0..1000).map(|i| ConnectionId::new(format!("c{i}"))).collect();
        let lifetimes: Vec<Duration> = conns.iter().map(|c| routes.lifetime(c)).collect();
        assert!(lifetimes.iter().all(|l| *l >= ttl / 2 && *l <= ttl));
        let early = lifetimes.iter().filter(|l| **l < ttl * 3 / 4).count();
        assert!(
            (300..=700).contains(&early),
            "about half expire in the first half of the window: {early}"
        );

        let entries: Vec<Option<SessionEntry>> = conns.iter().map(|c| entry(c, "gw-a")).collect();
        routes.remember(conns.iter().zip(&entries));
        let mut by_gateway = HashMap::new();
        assert!(routes.resolve(&conns, &mut by_gateway).is_empty());
        assert_eq!(by_gateway["gw-a"].len(), 1000);

        // Within the ttl nothing is dropped.
        let fresh = ConnectionId::new("fresh");
        let fresh_entry = entry(&fresh, "gw-b");
        routes.remember(std::iter::once((&fresh, &fresh_entry)));
        assert_eq!(routes.table().by_connection.len(), 1001);

        // With a ttl of zero every route is expired as soon as it is read,
        // and each read drops the expired ones before keeping its own.
        let instant = Routes::new(Duration::ZERO);
        instant.remember(conns.iter().zip(&entries));
        instant.remember(std::iter::once((&fresh, &fresh_entry)));
        assert_eq!(instant.table().by_connection.len(), 1);
        assert_eq!(instant.resolve(&conns, &mut HashMap::new()).len(), 1000);
    }
}
