//! The WebSocket machinery every endpoint shares.
//!
//! One task per connection owns the socket and `select!`s over: the socket,
//! its bounded outbound queue (frames delivered by other tasks or replicas),
//! the heartbeat timer, eviction and shutdown. A protocol adapter only turns
//! a text frame into calls and answer frames ([`Protocol`]); it never touches
//! the socket, so it cannot block writes or leak the task.

mod table;

use std::future::Future;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use relaymesh_state::{ConnectionId, SessionEntry, close_envelope};
use relaymesh_wire::FrameError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use table::{ConnHandle, ConnectionTable, Offered, Outbound};

use crate::Shared;

/// Close codes of the contract, plus the ones RFC 6455 defines for what the
/// contract leaves open.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const INTERNAL: u16 = 1011;
    /// RFC 6455 "try again later": the client fell too far behind.
    pub const SLOW_CONSUMER: u16 = 1013;
    pub const AUTH_FAILED: u16 = 4001;
    pub const HEARTBEAT_LOST: u16 = 4003;
    pub const REPLACED: u16 = 4004;
}

/// One protocol's behaviour on a connection.
pub trait Protocol: Send + 'static {
    /// `node`, `copilot`, `livechat` or `signal`: the registry's protocol name.
    const NAME: &'static str;

    /// A frame the server sends each heartbeat period, for protocols where
    /// the server pings; None where the client heartbeats on its own.
    fn ping(&self) -> Option<Message> {
        None
    }

    /// Sends the first frames (HELLO, connected…).
    fn on_open(&mut self, cx: &mut Ctx) -> impl Future<Output = ()> + Send;

    /// Handles one text frame that passed the size limit.
    fn on_text(&mut self, cx: &mut Ctx, text: &str) -> impl Future<Output = ()> + Send;

    /// This protocol's error frame for a frame refused by the machinery.
    fn frame_error(&self, err: &FrameError) -> String;

    /// A service nudged this connection (see `relaymesh.delivery.v1.Nudge`).
    fn on_nudge(&mut self, _cx: &mut Ctx, _reason: &str) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Cleans up after the socket closed, for any reason.
    fn on_close(&mut self, _cx: &mut Ctx) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What a protocol handler may do with its connection.
pub struct Ctx {
    pub id: ConnectionId,
    pub gw: Arc<Shared>,
    out: Vec<Utf8Bytes>,
    close: Option<(u16, String)>,
    session: Option<SessionEntry>,
}

impl Ctx {
    /// Queues a frame, written when the handler returns.
    pub fn send(&mut self, text: impl Into<Utf8Bytes>) {
        self.out.push(text.into());
    }

    /// Closes the connection after the queued frames are written.
    pub fn close(&mut self, code: u16, reason: impl Into<String>) {
        self.close.get_or_insert((code, reason.into()));
    }

    pub fn session(&self) -> Option<&SessionEntry> {
        self.session.as_ref()
    }

    /// Registers this connection as `user` so events for the user reach it
    /// on this replica. With single-session policy (`single`), closes every
    /// older session of the user, on any replica, with 4004.
    pub async fn register(
        &mut self,
        protocol: &'static str,
        user: &str,
        single: bool,
    ) -> Result<(), relaymesh_state::StateError> {
        let entry = SessionEntry {
            connection_id: self.id.to_string(),
            gateway_id: self.gw.gateway_id.to_string(),
            protocol: protocol.to_owned(),
            user_id: user.to_owned(),
            connected_at_ms: relaymesh_wire::now_ms(),
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
                        .send_to_session(&old, close_envelope(close::REPLACED, "replaced by a newer session"))
                        .await?;
                }
            }
        }
        Ok(())
    }
}

/// Runs one connection to its end. `handle` is what [`ConnectionTable`]
/// holds for it; the caller has already inserted it.
pub async fn run<P: Protocol>(
    mut socket: WebSocket,
    mut proto: P,
    gw: Arc<Shared>,
    id: ConnectionId,
    mut rx: mpsc::Receiver<Outbound>,
    evict: CancellationToken,
) {
    let mut cx = Ctx {
        id: id.clone(),
        gw: gw.clone(),
        out: Vec::new(),
        close: None,
        session: None,
    };
    let cfg = &gw.config;
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.heartbeat_interval(),
        cfg.heartbeat_interval(),
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut heard, mut missed) = (false, 0u32);
    metrics::gauge!("gateway_connections", "protocol" => P::NAME).increment(1.0);

    // Handler futures are boxed so the idle connection's future stays small:
    // it is allocated for the socket's whole life, a handler only while it runs.
    Box::pin(proto.on_open(&mut cx)).await;
    let mut open = flush(&mut socket, &mut cx, cfg.send_timeout()).await;

    while open && cx.close.is_none() {
        tokio::select! {
            biased;
            () = gw.shutdown.cancelled() => cx.close(close::GOING_AWAY, "server shutting down"),
            () = evict.cancelled() => cx.close(close::SLOW_CONSUMER, "slow consumer: outbound queue full"),
            out = rx.recv() => match out {
                Some(Outbound::Text(text)) => cx.out.push(text),
                Some(Outbound::Close(code, reason)) => cx.close(code, reason),
                Some(Outbound::Nudge(reason)) => Box::pin(proto.on_nudge(&mut cx, &reason)).await,
                None => break,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    heard = true;
                    metrics::counter!("gateway_frames_in_total", "protocol" => P::NAME).increment(1);
                    if text.len() > cfg.max_frame_bytes {
                        let err = FrameError::TooLarge { size: text.len(), max: cfg.max_frame_bytes };
                        refuse(&mut cx, &proto, &err);
                    } else {
                        Box::pin(proto.on_text(&mut cx, text.as_str())).await;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    heard = true;
                    refuse(&mut cx, &proto, &FrameError::Binary);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => heard = true,
                // The client closed, or the socket broke: nothing more to write.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            },
            _ = heartbeat.tick() => {
                missed = if heard { 0 } else { missed + 1 };
                heard = false;
                if missed >= cfg.heartbeat_max_missed {
                    cx.close(close::HEARTBEAT_LOST, "heartbeat lost");
                } else {
                    if let Some(ping) = proto.ping() {
                        open = send(&mut socket, ping, cfg.send_timeout()).await;
                    }
                    refresh_session(&cx).await;
                }
            }
        }
        open = open && flush(&mut socket, &mut cx, cfg.send_timeout()).await;
    }

    if open && let Some((code, reason)) = cx.close.take() {
        tracing::debug!(connection_id = %id, code, reason = %reason, "closing connection");
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if send(&mut socket, Message::Close(Some(frame)), cfg.send_timeout()).await {
            finish_close_handshake(&mut socket).await;
        }
    }
    drop(socket);
    gw.table.remove(&id);
    Box::pin(proto.on_close(&mut cx)).await;
    if let Some(entry) = cx.session.take()
        && let Err(err) = gw.delivery.registry().unregister(&entry).await
    {
        tracing::warn!(connection_id = %id, error = %err, "session registry cleanup failed");
    }
    metrics::gauge!("gateway_connections", "protocol" => P::NAME).decrement(1.0);
}

/// Reads until the peer answers our Close (or a short grace expires).
/// Dropping the socket at once would leave the peer's in-flight frames
/// unread, and the kernel would then reset the connection, which can
/// destroy our close frame, and its code, before the client reads it.
pub async fn finish_close_handshake(socket: &mut WebSocket) {
    let grace = std::time::Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn refuse<P: Protocol>(cx: &mut Ctx, proto: &P, err: &FrameError) {
    metrics::counter!("gateway_frames_refused_total", "protocol" => P::NAME).increment(1);
    cx.send(proto.frame_error(err));
}

async fn refresh_session(cx: &Ctx) {
    if let Some(entry) = &cx.session
        && let Err(err) = cx.gw.delivery.registry().register(entry).await
    {
        tracing::warn!(connection_id = %cx.id, error = %err, "session refresh failed");
    }
}

/// Writes the queued frames; false when the socket is gone or too slow.
async fn flush(socket: &mut WebSocket, cx: &mut Ctx, timeout: std::time::Duration) -> bool {
    for text in cx.out.drain(..) {
        if !send(socket, Message::Text(text), timeout).await {
            return false;
        }
    }
    true
}

async fn send(socket: &mut WebSocket, msg: Message, timeout: std::time::Duration) -> bool {
    match tokio::time::timeout(timeout, socket.send(msg)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            metrics::counter!("gateway_send_timeouts_total").increment(1);
            false
        }
    }
}
