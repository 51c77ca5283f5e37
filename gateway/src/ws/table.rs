//! The connections this replica holds, and the slow-consumer policy that
//! applies when something is queued for one of them.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use relaymesh_proto::client::v1::{ClientProtocol, CloseCode};
use relaymesh_proto::delivery::v1::{ForwardedRequest, NudgeReason};
use relaymesh_state::{Body, ConnectionId, Envelope};
use relaymesh_wire::Format;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocols::ProtocolCounters;

/// What the connection task is asked to do by someone else.
#[derive(Debug)]
pub enum Outbound {
    /// A frame already rendered for a JSON WebSocket.
    Text(Utf8Bytes),
    /// A frame already rendered for a MessagePack WebSocket.
    Binary(Bytes),
    /// A typed event, for a gRPC stream.
    Event(Arc<Body>),
    Close(CloseCode, String),
    /// A service has something for this connection's protocol adapter.
    Nudge(NudgeReason),
    /// A request for this connection that reached another replica. Boxed:
    /// inline it would make every variant 176 bytes, and each connection's
    /// queue allocates its first block of 32 slots when it opens (5.6 KiB
    /// per idle socket instead of 1.3).
    Forwarded(Box<ForwardedRequest>),
    /// The connection's newest droppable frame is waiting in this slot.
    Latest(Arc<LatestSlot>),
}

/// The newest droppable frame (a snapshot) queued for a connection. A newer
/// one replaces it in place, so a connection holds at most one snapshot in
/// its queue, always the freshest: stale snapshots are the first thing
/// dropped and never take the room of match or SDP/ICE frames.
#[derive(Debug, Default)]
pub struct LatestSlot(Mutex<Option<Outbound>>);

impl LatestSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Outbound>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The frame, taken (the connection task writes it now).
    pub fn take(&self) -> Option<Outbound> {
        self.lock().take()
    }
}

/// How a connection is carried: what form its events take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket frames in this format: events are rendered once per
    /// delivery and format.
    WebSocket(Format),
    /// gRPC stream: events stay typed.
    Grpc,
}

pub struct ConnHandle {
    tx: mpsc::Sender<Outbound>,
    /// Cancelled when the connection's queue overflows with a frame that
    /// must not be dropped: the task then closes with 1013.
    evict: CancellationToken,
    transport: Transport,
    /// Holds the newest droppable frame; one marker in the queue points here.
    latest: Arc<LatestSlot>,
}

impl ConnHandle {
    pub fn new(tx: mpsc::Sender<Outbound>, evict: CancellationToken, transport: Transport) -> Self {
        Self {
            tx,
            evict,
            transport,
            latest: Arc::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    Queued,
    /// A droppable frame was dropped: a stale one replaced by this newer
    /// one, or this one because the queue was full. Connection kept.
    Dropped,
    /// The queue was full and the frame not droppable: connection evicted.
    Evicted,
    /// Not held here (closed meanwhile, or never was).
    Unknown,
}

impl Offered {
    fn label(&self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Dropped => "dropped",
            Self::Evicted => "evicted",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Default)]
pub struct ConnectionTable {
    map: Mutex<HashMap<ConnectionId, ConnHandle>>,
}

/// The WebSocket frame of a delivered event in `format`: each protocol's
/// one renderer per encoding. Each render is counted in
/// `relaymesh_gateway_frames_rendered_total`, so "rendered once per gateway
/// and format, whatever the number of recipients" can be checked from outside.
fn render_body(body: &Body, format: Format) -> Option<Outbound> {
    static RENDERED: ProtocolCounters = ProtocolCounters::new("relaymesh_gateway_frames_rendered_total");
    let (protocol, out) = match (format, body) {
        (Format::Json, Body::Livechat(e)) => (
            ClientProtocol::Livechat,
            relaymesh_wire::livechat::render(e).map(|t| Outbound::Text(t.into())),
        ),
        (Format::Json, Body::Copilot(e)) => (
            ClientProtocol::Copilot,
            relaymesh_wire::copilot::render(e).map(|t| Outbound::Text(t.into())),
        ),
        (Format::Json, Body::Signal(e)) => (
            ClientProtocol::Signal,
            relaymesh_wire::signal::render(e).map(|t| Outbound::Text(t.into())),
        ),
        (Format::Msgpack, Body::Signal(e)) => (
            ClientProtocol::Signal,
            relaymesh_wire::signal::render_msgpack(e).map(|b| Outbound::Binary(b.into())),
        ),
        (Format::Msgpack, Body::Livechat(_) | Body::Copilot(_))
        | (_, Body::Close(_) | Body::Nudge(_) | Body::Forwarded(_)) => return None,
    };
    RENDERED.increment(protocol);
    out
}

/// A copy of a rendered frame for one more connection (shares its bytes).
fn copy(out: &Outbound) -> Option<Outbound> {
    match out {
        Outbound::Text(t) => Some(Outbound::Text(t.clone())),
        Outbound::Binary(b) => Some(Outbound::Binary(b.clone())),
        _ => None,
    }
}

impl ConnectionTable {
    pub fn insert(&self, id: ConnectionId, handle: ConnHandle) {
        self.lock().insert(id, handle);
    }

    pub fn remove(&self, id: &ConnectionId) {
        self.lock().remove(id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this replica holds `id` over `transport`.
    pub fn holds(&self, id: &ConnectionId, transport: Transport) -> bool {
        self.lock().get(id).is_some_and(|h| h.transport == transport)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, ConnHandle>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `out` for `id` without waiting.
    ///
    /// Overflow policy: a droppable frame (a snapshot a later one replaces)
    /// replaces the connection's queued snapshot, if any, so at most one
    /// snapshot ever occupies the queue; it is dropped and counted only when
    /// the queue is full. Any other frame that finds the queue full evicts
    /// the connection, since a client that misses it would silently hold a
    /// wrong state.
    pub fn offer(&self, id: &ConnectionId, out: Outbound, droppable: bool) -> Offered {
        let map = self.lock();
        let Some(handle) = map.get(id) else {
            return Offered::Unknown;
        };
        offer_event(handle, out, droppable)
    }

    /// Hands a delivery envelope to its connections. An event is rendered
    /// at most once per format, however many WebSocket connections here
    /// receive it.
    ///
    /// An envelope raised inside a trace continues it: its delivery here is
    /// a child of the span that raised it (the service call, on whichever
    /// replica). Untraced envelopes cost no span.
    pub fn deliver(&self, env: Envelope) {
        let span = (!env.traceparent.is_empty()).then(|| {
            let span = tracing::info_span!(
                "gateway.deliver",
                otel.name = "gateway deliver",
                relaymesh.role = "gateway",
                relaymesh.connections = env.connection_ids.len(),
            );
            relaymesh_telemetry::propagation::set_parent_from_traceparent(&span, &env.traceparent);
            span
        });
        let _entered = span.as_ref().map(tracing::Span::enter);
        let Some(body) = env.body else { return };
        let ids: Vec<ConnectionId> = env.connection_ids.into_iter().map(ConnectionId::new).collect();
        let map = self.lock();
        // Outcomes are counted here and recorded once per outcome, not once
        // per recipient (a metrics registry lookup each).
        let mut tally = Tally::default();
        match body {
            Body::Close(c) => {
                let code = CloseCode::try_from(c.code).unwrap_or(CloseCode::PolicyViolation);
                for id in &ids {
                    tally.add(map.get(id).map_or(Offered::Unknown, |h| {
                        offer_to(h, Outbound::Close(code, c.reason.clone()), false)
                    }));
                }
            }
            // A nudge is a hint ("pull now"): if the queue is full, the
            // adapter is busy and will pull anyway, so it may be dropped.
            Body::Nudge(n) => {
                let reason = NudgeReason::try_from(n.reason).unwrap_or(NudgeReason::Unspecified);
                for id in &ids {
                    tally.add(
                        map.get(id)
                            .map_or(Offered::Unknown, |h| offer_to(h, Outbound::Nudge(reason), true)),
                    );
                }
            }
            Body::Forwarded(f) => {
                for id in &ids {
                    tally.add(map.get(id).map_or(Offered::Unknown, |h| {
                        offer_to(h, Outbound::Forwarded(Box::new(f.clone())), false)
                    }));
                }
            }
            event => {
                let event = Arc::new(event);
                // Rendered frames by format, each rendered on first need.
                let (mut json, mut msgpack): (Option<Option<Outbound>>, Option<Option<Outbound>>) = (None, None);
                for id in &ids {
                    let Some(h) = map.get(id) else {
                        tally.add(Offered::Unknown);
                        continue;
                    };
                    let out = match h.transport {
                        Transport::Grpc => Outbound::Event(event.clone()),
                        Transport::WebSocket(format) => {
                            let rendered = match format {
                                Format::Json => &mut json,
                                Format::Msgpack => &mut msgpack,
                            };
                            match rendered
                                .get_or_insert_with(|| render_body(&event, format))
                                .as_ref()
                                .and_then(copy)
                            {
                                Some(out) => out,
                                None => continue,
                            }
                        }
                    };
                    tally.add(offer_event(h, out, env.droppable));
                }
            }
        }
        drop(map);
        tally.record();
    }
}

/// Delivery outcomes of one envelope, recorded once each.
#[derive(Default)]
struct Tally([u64; 4]);

impl Tally {
    /// In the order of [`Offered`]'s variants.
    const OUTCOMES: [Offered; 4] = [Offered::Queued, Offered::Dropped, Offered::Evicted, Offered::Unknown];

    fn add(&mut self, o: Offered) {
        self.0[o as usize] += 1;
    }

    fn record(&self) {
        // One handle per outcome, registered at the first delivery rather
        // than looked up by name and label on every one.
        static COUNTERS: LazyLock<[metrics::Counter; 4]> = LazyLock::new(|| {
            Tally::OUTCOMES.map(|o| metrics::counter!("relaymesh_gateway_deliveries_total", "outcome" => o.label()))
        });
        for (counter, &n) in COUNTERS.iter().zip(&self.0) {
            if n > 0 {
                counter.increment(n);
            }
        }
    }
}

/// Queues an event: droppable ones through the connection's latest slot.
fn offer_event(handle: &ConnHandle, out: Outbound, droppable: bool) -> Offered {
    if !droppable {
        return offer_to(handle, out, false);
    }
    let mut slot = handle.latest.lock();
    if slot.replace(out).is_some() {
        // The queued marker now points at this newer frame.
        metrics::counter!("relaymesh_gateway_frames_dropped_total").increment(1);
        return Offered::Dropped;
    }
    // The slot was empty: queue one marker for it (no lock is awaited: the
    // send does not wait). Without room, the frame goes.
    let offered = offer_to(handle, Outbound::Latest(handle.latest.clone()), true);
    if offered != Offered::Queued {
        slot.take();
    }
    offered
}

fn offer_to(handle: &ConnHandle, out: Outbound, droppable: bool) -> Offered {
    match handle.tx.try_send(out) {
        Ok(()) => Offered::Queued,
        Err(mpsc::error::TrySendError::Closed(_)) => Offered::Unknown,
        Err(mpsc::error::TrySendError::Full(_)) if droppable => {
            metrics::counter!("relaymesh_gateway_frames_dropped_total").increment(1);
            Offered::Dropped
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics::counter!("relaymesh_gateway_slow_consumer_evictions_total").increment(1);
            handle.evict.cancel();
            Offered::Evicted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection's queue allocates a block of 32 slots when it
    /// opens, idle or not: one large variant would grow them all.
    #[test]
    fn a_queued_item_is_small() {
        let size = std::mem::size_of::<Outbound>();
        assert!(size <= 48, "Outbound is {size} bytes: box the large variant");
    }

    #[test]
    fn a_tally_counts_each_outcome_under_its_own_label() {
        for (i, o) in Tally::OUTCOMES.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o:?} out of place");
        }
        let mut tally = Tally::default();
        for o in [Offered::Queued, Offered::Unknown, Offered::Queued, Offered::Evicted] {
            tally.add(o);
        }
        assert_eq!(tally.0, [2, 0, 1, 1]);
    }

    fn table_with(
        cap: usize,
    ) -> (
        ConnectionTable,
        ConnectionId,
        mpsc::Receiver<Outbound>,
        CancellationToken,
    ) {
        let table = ConnectionTable::default();
        let (tx, rx) = mpsc::channel(cap);
        let evict = CancellationToken::new();
        let id = ConnectionId::new("c");
        table.insert(
            id.clone(),
            ConnHandle::new(tx, evict.clone(), Transport::WebSocket(Format::Json)),
        );
        (table, id, rx, evict)
    }

    #[test]
    fn droppable_frames_are_dropped_when_full() {
        let (table, id, _rx, evict) = table_with(1);
        assert_eq!(table.offer(&id, Outbound::Text("a".into()), true), Offered::Queued);
        assert_eq!(table.offer(&id, Outbound::Text("b".into()), true), Offered::Dropped);
        assert!(!evict.is_cancelled());
    }

    /// What the connection task would write, in order.
    fn drain(rx: &mut mpsc::Receiver<Outbound>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(o) = rx.try_recv() {
            let o = match o {
                Outbound::Latest(slot) => slot.take(),
                other => Some(other),
            };
            if let Some(Outbound::Text(t)) = o {
                out.push(t.to_string());
            }
        }
        out
    }

    #[test]
    fn stale_snapshots_are_replaced_and_never_crowd_out_other_frames() {
        let (table, id, mut rx, evict) = table_with(2);
        for i in 0..10 {
            let out = Outbound::Text(format!("snapshot {i}").into());
            table.offer(&id, out, true);
        }
        assert_eq!(table.offer(&id, Outbound::Text("sdp".into()), false), Offered::Queued);
        assert!(!evict.is_cancelled());
        assert_eq!(drain(&mut rx), ["snapshot 9", "sdp"]);
        // Once written, the next snapshot queues again.
        assert_eq!(
            table.offer(&id, Outbound::Text("snapshot 10".into()), true),
            Offered::Queued
        );
        assert_eq!(drain(&mut rx), ["snapshot 10"]);
    }

    #[test]
    fn other_frames_evict_a_full_connection() {
        let (table, id, _rx, evict) = table_with(1);
        table.offer(&id, Outbound::Text("a".into()), false);
        assert_eq!(table.offer(&id, Outbound::Text("b".into()), false), Offered::Evicted);
        assert!(evict.is_cancelled());
    }

    #[test]
    fn unknown_connections_are_reported() {
        let (table, _, _rx, _) = table_with(1);
        assert_eq!(
            table.offer(&ConnectionId::new("zz"), Outbound::Text("a".into()), false),
            Offered::Unknown
        );
    }

    #[test]
    fn each_connection_gets_the_event_in_its_format() {
        use relaymesh_proto::client::v1::SignalResponse;
        let table = ConnectionTable::default();
        let mut rxs = Vec::new();
        for (id, format) in [("j1", Format::Json), ("m1", Format::Msgpack), ("j2", Format::Json)] {
            let (tx, rx) = mpsc::channel(4);
            let handle = ConnHandle::new(tx, CancellationToken::new(), Transport::WebSocket(format));
            table.insert(ConnectionId::new(id), handle);
            rxs.push(rx);
        }
        let event = relaymesh_wire::signal::error(relaymesh_proto::client::v1::SignalErrorCode::NotTarget, "no", None);
        table.deliver(Envelope {
            connection_ids: vec!["j1".into(), "m1".into(), "j2".into()],
            body: Some(Body::Signal(SignalResponse::clone(&event))),
            ..Envelope::default()
        });
        let json = relaymesh_wire::signal::render(&event).unwrap();
        let msgpack = relaymesh_wire::signal::render_msgpack(&event).unwrap();
        let got: Vec<Outbound> = rxs.iter_mut().map(|rx| rx.try_recv().unwrap()).collect();
        assert!(matches!(&got[0], Outbound::Text(t) if t.as_str() == json));
        assert!(matches!(&got[1], Outbound::Binary(b) if b[..] == msgpack[..]));
        // Rendered once: both JSON connections share the same bytes.
        let (Outbound::Text(a), Outbound::Text(b)) = (&got[0], &got[2]) else {
            panic!("text frames")
        };
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
    }
}
