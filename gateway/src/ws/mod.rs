//! The WebSocket transport every endpoint shares: JSON text frames, or,
//! where the protocol has that encoding and the client asked for it
//! (`?format=msgpack`), MessagePack binary frames carrying the same objects.
//!
//! One task per connection owns the socket and `select!`s over: the socket,
//! its bounded outbound queue (events delivered by other tasks or replicas),
//! the heartbeat timer, eviction and shutdown. A protocol adapter only turns
//! typed requests into calls and typed events ([`Protocol`]); this module
//! parses each frame once and renders each event once per encoding, through
//! the protocol's [`WsCodec`], so it cannot block writes or leak the task.

mod table;

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::SinkExt;
use relaymesh_proto::client::v1::CloseCode;
use relaymesh_state::ConnectionId;
use relaymesh_wire::{Format, FrameError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use table::{ConnHandle, ConnectionTable, LatestSlot, Offered, Outbound, Transport};

use crate::Shared;
use crate::protocols::{Beat, Ctx, Heartbeat, Protocol, count_frame_in, finish, frame_span, handle, protocol_name};

/// How a protocol looks as WebSocket frames: the one place its frames are
/// parsed and rendered, as JSON text and, for protocols that have it, as
/// MessagePack binary.
pub trait WsCodec: Protocol {
    /// Parses one text frame; a refusal is the protocol's error event.
    fn parse(&self, text: &str) -> Result<Self::Request, Self::Event>;

    /// Renders one event as a text frame; None when it has no frame (a
    /// close, which goes out as a close frame).
    fn render(event: &Self::Event) -> Option<Utf8Bytes>;

    /// Parses one binary frame of a `?format=msgpack` connection (a
    /// MessagePack map of the JSON frame's object); a refusal is the
    /// protocol's error event. Protocols without that encoding never get
    /// here: their endpoints accept only JSON.
    fn parse_msgpack(&self, _bytes: &[u8]) -> Result<Self::Request, Self::Event> {
        Err(self.refused(&FrameError::Binary))
    }

    /// Renders one event as a MessagePack binary frame; None when it has no
    /// frame (or the protocol no such encoding).
    fn render_msgpack(_event: &Self::Event) -> Option<Bytes> {
        None
    }

    /// The error event for a frame refused before parsing (too large, of
    /// the wrong kind for the connection's format).
    fn refused(&self, err: &FrameError) -> Self::Event;

    /// The frame the server sends each heartbeat period: the protocol's
    /// ping event ([`Protocol::ping_event`]) where it has one; a protocol
    /// may send a WebSocket ping instead, which browsers answer by
    /// themselves. None: the client heartbeats on its own.
    fn ping(&self) -> Option<Message> {
        Self::ping_event().and_then(|e| Self::render(&e)).map(Message::Text)
    }
}

/// This transport's name in traces.
const TRANSPORT: &str = "websocket";

/// Runs one connection to its end, its frames in `format`. The caller has
/// already inserted its handle into the [`ConnectionTable`].
pub async fn run<P: WsCodec>(
    mut socket: WebSocket,
    format: Format,
    mut proto: P,
    gw: Arc<Shared>,
    id: ConnectionId,
    mut rx: mpsc::Receiver<Outbound>,
    evict: CancellationToken,
) {
    let name = protocol_name(P::NAME);
    let mut cx = Ctx::<P::Event>::new(id.clone(), gw.clone());
    let mut pending: Vec<Message> = Vec::new();
    let cfg = &gw.config;
    let mut heartbeat = Heartbeat::new(cfg, P::LIVENESS);
    metrics::gauge!("relaymesh_gateway_connections", "protocol" => name).increment(1.0);

    // Handler futures are boxed so the idle connection's future stays small:
    // it is allocated for the socket's whole life, a handler only while it runs.
    let span = frame_span(P::NAME, TRANSPORT, "open", &cx);
    Box::pin(proto.on_open(&mut cx)).instrument(span).await;
    // How the last write went: the loop runs while they are done.
    let mut write = Write::Done;
    // Why a slow consumer is closed, for its metric and log line.
    let mut slow: Option<&'static str> = None;

    // Both waits are made once, not per turn of the loop: a new wait
    // registers with its token (a lock) and the dropped one deregisters
    // (another), on every frame. Either ends the loop when it fires.
    let shutdown = gw.shutdown.cancelled();
    let evicted = evict.cancelled();
    tokio::pin!(shutdown, evicted);

    loop {
        // Each turn starts by writing what the last one produced (the
        // first: what opening the connection did), unless its own write
        // (a ping) already failed.
        if write == Write::Done {
            write = flush(
                &mut socket,
                format,
                &mut proto,
                &mut cx,
                &mut rx,
                &mut pending,
                cfg.send_timeout(),
            )
            .await;
        }
        if write == Write::TooSlow {
            // The reader does not keep up with what it is sent: 1013.
            slow = Some("send_timeout");
            cx.close(CloseCode::TryAgainLater, "slow consumer: write timed out");
        }
        if write != Write::Done || cx.closing() {
            break;
        }
        tokio::select! {
            biased;
            () = &mut shutdown => cx.close(CloseCode::GoingAway, "server shutting down"),
            () = &mut evicted => {
                slow = Some("queue_full");
                cx.close(CloseCode::TryAgainLater, "slow consumer: outbound queue full");
            }
            out = rx.recv() => match out {
                Some(out) => take_queued(out, &mut proto, &mut cx, &mut pending).await,
                None => break,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    heartbeat.heard();
                    count_frame_in(P::NAME);
                    match format {
                        Format::Json => take(&mut cx, &mut proto, &mut heartbeat, text.len(), cfg.max_frame_bytes, |p| p.parse(text.as_str())).await,
                        Format::Msgpack => refuse(&mut cx, &proto, &FrameError::Text),
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    heartbeat.heard();
                    match format {
                        Format::Json => refuse(&mut cx, &proto, &FrameError::Binary),
                        Format::Msgpack => {
                            count_frame_in(P::NAME);
                            take(&mut cx, &mut proto, &mut heartbeat, bytes.len(), cfg.max_frame_bytes, |p| p.parse_msgpack(&bytes)).await;
                        }
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => heartbeat.heard(),
                // The client closed, or the socket broke: nothing more to write.
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(err)) => match protocol_violation(err) {
                    // The WebSocket layer refused what the client sent: say
                    // why with RFC 6455's code instead of dropping the TCP
                    // connection.
                    Some((code, reason)) => {
                        metrics::counter!("relaymesh_gateway_protocol_violations_total", "protocol" => name, "code" => (code as i32).to_string()).increment(1);
                        tracing::info!(connection_id = %id, code = code as i32, reason, "closing on protocol violation");
                        cx.close(code, reason);
                    }
                    None => break,
                },
            },
            beat = heartbeat.next() => match beat {
                Beat::Period { heard } => {
                    if heard {
                        cx.touch();
                    }
                    if let Some(ping) = proto.ping() {
                        write = send(&mut socket, ping, cfg.send_timeout()).await;
                    }
                    // Boxed, as the handlers are: it runs once a period, and
                    // inline its registry write would be held in every idle
                    // connection's future.
                    Box::pin(cx.refresh_session()).await;
                }
                Beat::Lost(reason) => cx.close(CloseCode::HeartbeatLost, reason),
                Beat::Missed => {}
            },
        }
    }

    if write != Write::Broken
        && let Some((code, reason)) = cx.take_close()
    {
        tracing::debug!(connection_id = %id, code = code as i32, reason = %reason, "closing connection");
        // A stalled socket still takes the close frame into its buffer,
        // behind the frame that stalled; it goes out if the client reads
        // within the grace.
        let grace = match slow {
            Some(cause) => {
                metrics::counter!("relaymesh_gateway_slow_consumer_closes_total", "protocol" => name, "cause" => cause)
                    .increment(1);
                tracing::info!(connection_id = %id, protocol = name, cause, "slow consumer closed with 1013");
                SLOW_CLOSE_GRACE
            }
            None => cfg.send_timeout(),
        };
        let frame = CloseFrame {
            code: code as u16,
            reason: reason.into(),
        };
        if send(&mut socket, Message::Close(Some(frame)), grace).await == Write::Done {
            finish_close_handshake(&mut socket).await;
        }
    }
    drop(socket);
    // Boxed too: it runs once, at the end.
    Box::pin(finish(&mut proto, &mut cx, TRANSPORT)).await;
    metrics::gauge!("relaymesh_gateway_connections", "protocol" => name).decrement(1.0);
}

/// Sleeps until `at`; forever when None (the select! guard keeps it unpolled).
pub(crate) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The close code for an error the WebSocket layer read off the socket, when
/// it is the client's fault (a message past the hard size limit, text that
/// is not UTF-8); None when the connection itself broke.
fn protocol_violation(err: axum::Error) -> Option<(CloseCode, &'static str)> {
    let inner = err.into_inner();
    match inner.downcast_ref::<tungstenite::Error>()? {
        tungstenite::Error::Capacity(_) => Some((CloseCode::MessageTooBig, "message too big")),
        tungstenite::Error::Utf8(_) => Some((CloseCode::InvalidPayload, "text frame is not UTF-8")),
        tungstenite::Error::Protocol(_) => Some((CloseCode::PolicyViolation, "websocket protocol error")),
        _ => None,
    }
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

/// Parses one inbound frame of `size` bytes (refused past `max`) and runs
/// its request; a request that answers the server's ping tells `heartbeat`.
async fn take<P: WsCodec>(
    cx: &mut Ctx<P::Event>,
    proto: &mut P,
    heartbeat: &mut Heartbeat,
    size: usize,
    max: usize,
    parse: impl FnOnce(&P) -> Result<P::Request, P::Event>,
) {
    if size > max {
        refuse(cx, proto, &FrameError::TooLarge { size, max });
        return;
    }
    match parse(proto) {
        Ok(req) => handle(proto, cx, heartbeat, TRANSPORT, req).await,
        Err(error_event) => {
            metrics::counter!("relaymesh_gateway_frames_refused_total", "protocol" => protocol_name(P::NAME))
                .increment(1);
            cx.send(error_event);
        }
    }
}

fn refuse<P: WsCodec>(cx: &mut Ctx<P::Event>, proto: &P, err: &FrameError) {
    metrics::counter!("relaymesh_gateway_frames_refused_total", "protocol" => protocol_name(P::NAME)).increment(1);
    cx.send(proto.refused(err));
}

/// How a write to the socket went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Done,
    /// The socket is gone: nothing more can be written.
    Broken,
    /// The write did not finish within SEND_TIMEOUT_MS: the client reads
    /// too slowly. The socket still works; the frame waits in its buffer.
    TooSlow,
}

/// How long a slow consumer's 1013 close frame may take to go out. Fixed:
/// the client may be reading again by then, or never.
const SLOW_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// One event as a frame in `format`; None when it has none.
fn render<P: WsCodec>(format: Format, event: &P::Event) -> Option<Message> {
    match format {
        Format::Json => P::render(event).map(Message::Text),
        Format::Msgpack => P::render_msgpack(event).map(Message::Binary),
    }
}

/// Acts on one thing queued for the connection: a frame joins `pending`,
/// a close or nudge is acted on (a nudge's answers are the handler's
/// events, rendered by the next [`flush`]).
async fn take_queued<P: WsCodec>(out: Outbound, proto: &mut P, cx: &mut Ctx<P::Event>, pending: &mut Vec<Message>) {
    match out {
        Outbound::Text(text) => pending.push(Message::Text(text)),
        Outbound::Binary(bytes) => pending.push(Message::Binary(bytes)),
        Outbound::Latest(slot) => match slot.take() {
            Some(Outbound::Text(text)) => pending.push(Message::Text(text)),
            Some(Outbound::Binary(bytes)) => pending.push(Message::Binary(bytes)),
            _ => {}
        },
        Outbound::Close(code, reason) => cx.close(code, reason),
        Outbound::Nudge(reason) => {
            let span = frame_span(P::NAME, TRANSPORT, "nudge", cx);
            Box::pin(proto.on_nudge(cx, reason)).instrument(span).await;
        }
        // Typed events and forwarded requests are for gRPC streams.
        Outbound::Event(_) | Outbound::Forwarded(_) => {}
    }
}

/// The most frames already queued for the connection that one write takes
/// along after the turn's own, so a busy queue cannot hold a write back.
const WRITE_ALONG: usize = 64;

/// Writes what this turn of the loop produced (delivered frames, then the
/// handler's events, in that order), then what was queued for the
/// connection meanwhile (a chat message's own MESSAGE_EVENT, delivered while
/// its ACK was being made), in one write to the socket rather than one per
/// frame. Stops at a write that does not finish.
async fn flush<P: WsCodec>(
    socket: &mut WebSocket,
    format: Format,
    proto: &mut P,
    cx: &mut Ctx<P::Event>,
    rx: &mut mpsc::Receiver<Outbound>,
    pending: &mut Vec<Message>,
    timeout: std::time::Duration,
) -> Write {
    pending.extend(cx.take_out().filter_map(|e| render::<P>(format, &e)));
    for _ in 0..WRITE_ALONG {
        if cx.closing() {
            break;
        }
        let Ok(out) = rx.try_recv() else { break };
        take_queued(out, proto, cx, pending).await;
        pending.extend(cx.take_out().filter_map(|e| render::<P>(format, &e)));
    }
    if pending.is_empty() {
        return Write::Done;
    }
    let written = async {
        // Drained, not taken: the buffer's room is kept for the next turn.
        for msg in pending.drain(..) {
            socket.feed(msg).await?;
        }
        socket.flush().await
    };
    match tokio::time::timeout(timeout, written).await {
        Ok(Ok(())) => Write::Done,
        Ok(Err(_)) => Write::Broken,
        Err(_) => {
            metrics::counter!("relaymesh_gateway_send_timeouts_total").increment(1);
            Write::TooSlow
        }
    }
}

async fn send(socket: &mut WebSocket, msg: Message, timeout: std::time::Duration) -> Write {
    match tokio::time::timeout(timeout, socket.send(msg)).await {
        Ok(Ok(())) => Write::Done,
        Ok(Err(_)) => Write::Broken,
        Err(_) => {
            metrics::counter!("relaymesh_gateway_send_timeouts_total").increment(1);
            Write::TooSlow
        }
    }
}
