//! One adapter per protocol, independent of the transport that carries it.
//!
//! An adapter turns typed requests into service calls and queues typed
//! events ([`Protocol`]); it never touches a socket. The JSON WebSocket
//! (`crate::ws`) and the gRPC client API (`crate::grpc_api`) drive the same
//! adapters. Each module holds its protocol's one mapping from a service's
//! refusal to its error event.

mod copilot;
pub mod heartbeat;
mod livechat;
mod node;
mod signal;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use copilot::CopilotProtocol;
pub use heartbeat::{Beat, Heartbeat, Liveness};
pub use livechat::LivechatProtocol;
pub use node::NodeProtocol;
use relaymesh_proto::client::v1::{ClientProtocol, CloseCode};
use relaymesh_proto::delivery::v1::NudgeReason;
use relaymesh_state::{ConnectionId, SessionEntry, close_envelope, protocol_key};
pub use signal::SignalProtocol;
use tracing::Instrument;

use crate::Shared;
use crate::limits::FrameLimiter;

/// One protocol's behaviour on a connection.
pub trait Protocol: Send + 'static {
    /// Which protocol: the registry's protocol of its sessions.
    const NAME: ClientProtocol;

    /// A client request, parsed by the transport.
    type Request: Send + 'static;

    /// A server event, rendered by the transport.
    type Event: Send + Sync + 'static;

    /// Sends the first events (HELLO, connected…).
    fn on_open(&mut self, cx: &mut Ctx<Self::Event>) -> impl Future<Output = ()> + Send;

    /// How a connection of this protocol shows it is alive (see
    /// [`heartbeat`]); the client's own frames unless the protocol says the
    /// server pings.
    const LIVENESS: Liveness = Liveness::ClientBeats;

    /// With [`Liveness::PongDeadline`]: the event the server pings with
    /// each heartbeat period.
    fn ping_event() -> Option<Self::Event> {
        None
    }

    /// With [`Liveness::PongDeadline`]: whether `req` answers the ping.
    fn answers_ping(_req: &Self::Request) -> bool {
        true
    }

    /// The request's name in traces (`MESSAGE_CREATE`, `join_lobby`…).
    fn op_name(_req: &Self::Request) -> &'static str {
        "request"
    }

    /// Handles one request.
    fn on_request(&mut self, cx: &mut Ctx<Self::Event>, req: Self::Request) -> impl Future<Output = ()> + Send;

    /// Answers a request that a rate limit refused (see [`dispatch`]), in
    /// the protocol's own terms; the connection stays open.
    fn on_rate_limited(
        &mut self,
        cx: &mut Ctx<Self::Event>,
        req: Self::Request,
        retry_after: Duration,
    ) -> impl Future<Output = ()> + Send;

    /// A service nudged this connection (see `relaymesh.delivery.v1.Nudge`).
    fn on_nudge(&mut self, _cx: &mut Ctx<Self::Event>, _reason: NudgeReason) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Cleans up after the connection closed, for any reason.
    fn on_close(&mut self, _cx: &mut Ctx<Self::Event>) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// What the services must forget of a session that ended: called by
    /// [`Protocol::on_close`], and by the reaper for the sessions of a
    /// replica that died without closing them (`crate::reaper`).
    fn release(_gw: &Shared, _ended: Ended<'_>) -> impl Future<Output = Result<(), tonic::Status>> + Send {
        async { Ok(()) }
    }
}

/// A session that ended, as [`Protocol::release`] needs it.
#[derive(Debug, Clone, Copy)]
pub struct Ended<'a> {
    pub connection_id: &'a str,
    /// The user (a node's id for the node protocol).
    pub user_id: &'a str,
}

/// Handles one client request: under the connection's and its user's rate
/// limits, then the protocol's handler. Every transport calls this for
/// every request, never [`Protocol::on_request`] directly.
pub async fn dispatch<P: Protocol>(proto: &mut P, cx: &mut Ctx<P::Event>, req: P::Request) {
    let user = cx.session.as_ref().map(|s| s.user_id.as_str());
    let limiter = cx
        .limiter
        .get_or_insert_with(|| FrameLimiter::new(&cx.gw.config.limits, P::NAME));
    let admitted = limiter.admit(&cx.gw.state, P::NAME, user, cx.id.as_str()).await;
    match admitted {
        Ok(()) => proto.on_request(cx, req).await,
        Err(limited) => proto.on_rate_limited(cx, req, limited.retry_after).await,
    }
}

/// Runs one parsed request on a connection of any transport: a request
/// that answers the server's ping tells `heartbeat`, and the handler runs
/// under the frame's span ([`dispatch`]).
pub async fn handle<P: Protocol>(
    proto: &mut P,
    cx: &mut Ctx<P::Event>,
    heartbeat: &mut Heartbeat,
    transport: &'static str,
    req: P::Request,
) {
    if P::LIVENESS == Liveness::PongDeadline && P::answers_ping(&req) {
        heartbeat.answered();
    }
    let span = frame_span(P::NAME, transport, P::op_name(&req), cx);
    Box::pin(dispatch(proto, cx, req)).instrument(span.clone()).await;
    record_user(&span, cx);
}

/// The end of a connection of any transport, once nothing more can be
/// written to it: out of the table, the protocol's cleanup, out of the
/// registry.
pub async fn finish<P: Protocol>(proto: &mut P, cx: &mut Ctx<P::Event>, transport: &'static str) {
    cx.gw.table.remove(&cx.id);
    let span = frame_span(P::NAME, transport, "close", cx);
    async {
        Box::pin(proto.on_close(cx)).await;
        cx.unregister().await;
    }
    .instrument(span)
    .await;
}

/// Counts one frame a client sent on `protocol`
/// (`relaymesh_gateway_frames_in_total`).
pub fn count_frame_in(protocol: ClientProtocol) {
    static KEPT: ProtocolCounters = ProtocolCounters::new("relaymesh_gateway_frames_in_total");
    KEPT.increment(protocol);
}

/// A counter labelled by protocol, for counts made per frame or per event:
/// each protocol's handle is registered at its first count and kept, not
/// looked up by name and label every time.
pub struct ProtocolCounters {
    name: &'static str,
    /// By `ClientProtocol` value.
    kept: [OnceLock<metrics::Counter>; 5],
}

impl ProtocolCounters {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            kept: [const { OnceLock::new() }; 5],
        }
    }

    pub fn increment(&self, protocol: ClientProtocol) {
        if let Some(slot) = self.kept.get(protocol as usize) {
            slot.get_or_init(|| metrics::counter!(self.name, "protocol" => protocol_name(protocol)))
                .increment(1);
        }
    }
}

/// The registry's name of a protocol, for logs and metric labels.
pub fn protocol_name(p: ClientProtocol) -> &'static str {
    protocol_key(p)
}

/// The span of one thing a connection does (a frame, its open, a nudge, its
/// close): the parent of every RPC the handler makes, so one frame is one
/// trace across the services. Run the handler inside it
/// (`tracing::Instrument`), then [`record_user`].
pub fn frame_span<E>(
    protocol: ClientProtocol,
    transport: &'static str,
    op: &'static str,
    cx: &Ctx<E>,
) -> tracing::Span {
    let name = protocol_name(protocol);
    let span = tracing::info_span!(
        "gateway.frame",
        otel.name = %format_args!("{name} {op}"),
        otel.kind = "server",
        relaymesh.role = "gateway",
        relaymesh.protocol = name,
        relaymesh.transport = transport,
        relaymesh.op = op,
        relaymesh.connection_id = %cx.id,
        enduser.id = tracing::field::Empty,
    );
    record_user(&span, cx);
    span
}

/// Records the connection's user on its frame span, once known (IDENTIFY
/// learns it while the span is open).
pub fn record_user<E>(span: &tracing::Span, cx: &Ctx<E>) {
    if let Some(session) = cx.session() {
        span.record("enduser.id", session.user_id.as_str());
    }
}

/// What a protocol handler may do with its connection.
pub struct Ctx<E> {
    pub id: ConnectionId,
    pub gw: Arc<Shared>,
    out: Vec<E>,
    close: Option<(CloseCode, String)>,
    session: Option<SessionEntry>,
    /// This connection's frame limits, set up at its first request.
    limiter: Option<FrameLimiter>,
}

impl<E> Ctx<E> {
    pub fn new(id: ConnectionId, gw: Arc<Shared>) -> Self {
        Self {
            limiter: None,
            id,
            gw,
            out: Vec::new(),
            close: None,
            session: None,
        }
    }

    /// Queues an event, written when the handler returns.
    pub fn send(&mut self, event: impl Into<E>) {
        self.out.push(event.into());
    }

    /// Closes the connection after the queued events are written.
    pub fn close(&mut self, code: CloseCode, reason: impl Into<String>) {
        self.close.get_or_insert((code, reason.into()));
    }

    /// The events queued since the last call.
    pub fn take_out(&mut self) -> std::vec::Drain<'_, E> {
        self.out.drain(..)
    }

    /// The close asked for, if any (taken: asked once).
    pub fn take_close(&mut self) -> Option<(CloseCode, String)> {
        self.close.take()
    }

    pub fn closing(&self) -> bool {
        self.close.is_some()
    }

    pub fn session(&self) -> Option<&SessionEntry> {
        self.session.as_ref()
    }

    /// The session, for cleanup after the connection ended.
    pub fn take_session(&mut self) -> Option<SessionEntry> {
        self.session.take()
    }

    /// Registers this connection as `user` so events for the user reach it
    /// on this replica. With single-session policy (`single`), closes every
    /// older session of the user, on any replica, with 4004.
    pub async fn register(
        &mut self,
        protocol: ClientProtocol,
        user: &str,
        single: bool,
    ) -> Result<(), relaymesh_state::StateError> {
        let now = chrono::Utc::now().timestamp_millis();
        let entry = SessionEntry {
            connection_id: self.id.to_string(),
            gateway_id: self.gw.gateway_id.to_string(),
            protocol: protocol as i32,
            user_id: user.to_owned(),
            connected_at_ms: now,
            last_activity_ms: now,
        };
        let registry = self.gw.delivery.registry();
        registry.register(&entry).await?;
        self.session = Some(entry.clone());
        if single {
            for old in registry.sessions_of(protocol, user).await? {
                if old.connection_id != entry.connection_id && old.connected_at_ms <= entry.connected_at_ms {
                    tracing::info!(connection_id = %old.connection_id, user_id = user, "replacing older session");
                    self.gw
                        .delivery
                        .send_to_session(&old, close_envelope(CloseCode::Replaced, "replaced by a newer session"))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Notes that the client sent something; the registry learns it at the
    /// next [`Ctx::refresh_session`].
    pub fn touch(&mut self) {
        if let Some(entry) = &mut self.session {
            entry.last_activity_ms = chrono::Utc::now().timestamp_millis();
        }
    }

    /// Re-registers the session (heartbeat), so its TTL does not lapse.
    pub async fn refresh_session(&self) {
        if let Some(entry) = &self.session
            && let Err(err) = self.gw.delivery.registry().register(entry).await
        {
            tracing::warn!(connection_id = %self.id, error = %err, "session refresh failed");
        }
    }

    /// Removes the session from the registry (the connection ended).
    pub async fn unregister(&mut self) {
        if let Some(entry) = self.session.take()
            && let Err(err) = self.gw.delivery.registry().unregister(&entry).await
        {
            tracing::warn!(connection_id = %self.id, error = %err, "session registry cleanup failed");
        }
    }
}
