//! `/ws/node`: seed 000's NodeRunner hub (frames in docs/node-protocol.md).
//!
//! Every inbound frame is verified by the auth service (signature, replay,
//! timestamp window) before anything else; a node that fails before its
//! HELLO is accepted cannot hold the socket (4001). Outbound frames are
//! signed by the auth service, which alone holds the key.
//!
//! Payloads are the shared types of `relaymesh_wire::node::payload` (the
//! node agent uses the same ones); this module converts them to and from the
//! scheduler's typed contract. Commands go out only after the node's
//! `HEARTBEAT status=READY` (the scheduler enforces it for every path).

use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use relaymesh_proto::auth::v1::ErrorReason as AuthReason;
use relaymesh_proto::auth::v1::{SignNodeFrameRequest, VerifyNodeFrameRequest};
use relaymesh_proto::client::v1::{ClientProtocol, CloseCode};
use relaymesh_proto::delivery::v1::NudgeReason;
use relaymesh_proto::json::{struct_to_json, value_from_json};
use relaymesh_proto::scheduler::v1::ErrorReason as SchedulerReason;
use relaymesh_proto::scheduler::v1::{
    self as pb, NodeDisconnectedRequest, NodeHeartbeatRequest, PullCommandsRequest, RegisterNodeRequest,
    RejectCommandRequest, RejectReason, ReportResultRequest,
};
use relaymesh_wire::FrameError;
use relaymesh_wire::node::{
    self as wire, Ack, Command, CommandId, CommandResult, DeviceSerial, Envelope, ErrorCode, ErrorFrame, FrameType,
    Heartbeat, Hello, HelloAck, NodeId, OutFrame, RunId,
};
use serde::Serialize;
use tonic::{Code, Status};

use super::{Ctx, Ended, Protocol};
use crate::Shared;
use crate::ws::WsCodec;

#[derive(Debug, Default)]
pub struct NodeProtocol {
    node_id: Option<NodeId>,
    /// The accepted HELLO, repeated to the scheduler with each heartbeat so
    /// a scheduler that restarted can attach this node without a new HELLO.
    hello: Hello,
}

/// The hub's ERROR code for a refused frame, from the service's reason.
fn refusal_code(status: &Status) -> ErrorCode {
    if let Some(reason) = relaymesh_rpc::reason_of::<AuthReason>(status) {
        return match reason {
            AuthReason::InvalidSignature => ErrorCode::InvalidSignature,
            AuthReason::Replayed | AuthReason::StaleTimestamp => ErrorCode::Replayed,
            AuthReason::InvalidFrame => ErrorCode::InvalidFrame,
            _ if status.code() == Code::Unavailable => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
    }
    match relaymesh_rpc::reason_of::<SchedulerReason>(status) {
        Some(SchedulerReason::InvalidArgument | SchedulerReason::UnknownCommandType) => ErrorCode::InvalidFrame,
        Some(SchedulerReason::UnknownNode) => ErrorCode::NotRegistered,
        _ if status.code() == Code::Unavailable => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

/// The COMMAND frame's payload for a scheduler command.
fn command_payload(c: pb::Command) -> Command {
    let command_type = c.command_type();
    Command {
        command_id: CommandId::from(c.command_id),
        run_id: RunId::from(c.run_id),
        device_serial: DeviceSerial::from(c.device_serial),
        command_type,
        params: serde_json::Value::Object(c.params.map(struct_to_json).unwrap_or_default()),
        timeout_ms: Some(u64::from(c.timeout_ms)),
    }
}

/// Why the node refused a command, as the scheduler records it.
fn reject_reason(code: ErrorCode) -> RejectReason {
    match code {
        ErrorCode::DeviceBusy => RejectReason::DeviceBusy,
        ErrorCode::NoFreeSlot => RejectReason::NoFreeSlot,
        ErrorCode::Unavailable => RejectReason::Unavailable,
        _ => RejectReason::Unspecified,
    }
}

impl NodeProtocol {
    /// Signs `text` with the node key (through the auth service). Unsigned
    /// when it cannot be signed; the node will refuse it, which is the point.
    async fn signed(cx: &Ctx<String>, text: String) -> String {
        let mut auth = cx.gw.upstreams.auth.clone();
        match auth
            .sign_node_frame(SignNodeFrameRequest {
                frame: text.clone().into_bytes(),
            })
            .await
        {
            Ok(r) => String::from_utf8(r.into_inner().frame).unwrap_or(text),
            Err(status) => {
                tracing::warn!(error = %status.message(), "could not sign hub frame");
                text
            }
        }
    }

    fn node(&self) -> &str {
        self.node_id.as_ref().map_or("hub", NodeId::as_str)
    }

    async fn send<P: Serialize>(&self, cx: &mut Ctx<String>, kind: FrameType, payload: P) {
        let text = OutFrame::new(kind, self.node(), payload).to_text();
        let signed = Self::signed(cx, text).await;
        cx.send(signed);
    }

    async fn error(
        &self,
        cx: &mut Ctx<String>,
        code: ErrorCode,
        message: &str,
        ref_id: Option<&str>,
        command_id: Option<&CommandId>,
    ) {
        metrics::counter!("relaymesh_gateway_node_frames_refused_total", "code" => code.as_str()).increment(1);
        let payload = ErrorFrame {
            code,
            message: message.to_owned(),
            ref_message_id: ref_id.map(str::to_owned),
            command_id: command_id.cloned(),
        };
        let signed = Self::signed(cx, wire::error(self.node(), &payload)).await;
        cx.send(signed);
    }

    async fn send_commands(&self, cx: &mut Ctx<String>, commands: Vec<pb::Command>) {
        for c in commands {
            let payload = command_payload(c);
            tracing::info!(run_id = %payload.run_id, node_id = %self.node(), device_serial = %payload.device_serial,
                command_id = %payload.command_id, "command sent");
            self.send(cx, FrameType::Command, payload).await;
        }
    }

    async fn hello(&mut self, cx: &mut Ctx<String>, env: &Envelope, node_id: String) {
        let p: Hello = match payload("HELLO", env) {
            Ok(p) => p,
            Err(err) => {
                return self
                    .error(
                        cx,
                        ErrorCode::InvalidFrame,
                        &err.to_string(),
                        env.message_id.as_deref(),
                        None,
                    )
                    .await;
            }
        };
        // A node reconnecting replaces its older socket, on any replica.
        if let Err(err) = cx.register(Self::NAME, &node_id, true).await {
            tracing::warn!(node_id = %node_id, error = %err, "session registry unavailable");
            return self
                .error(
                    cx,
                    ErrorCode::Unavailable,
                    "session registry unavailable",
                    env.message_id.as_deref(),
                    None,
                )
                .await;
        }
        let mut scheduler = cx.gw.upstreams.scheduler.clone();
        let req = RegisterNodeRequest {
            node_id: node_id.clone(),
            connection_id: cx.id.to_string(),
            device_serials: p.devices.iter().map(|d| d.as_str().to_owned()).collect(),
            slots: p.slots,
        };
        match scheduler.register_node(req).await {
            Ok(r) => {
                tracing::info!(node_id = %node_id, devices = p.devices.len(), "node registered");
                let ack = HelloAck {
                    heartbeat_interval_s: Some(f64::from(r.into_inner().heartbeat_interval_s)),
                    devices: Some(p.devices.len() as u64),
                };
                self.node_id = Some(NodeId::from(node_id));
                self.hello = p;
                // No COMMAND yet: the node asks for work with HEARTBEAT READY.
                self.send(cx, FrameType::HelloAck, ack).await;
            }
            Err(status) => {
                tracing::warn!(node_id = %node_id, code = %refusal_code(&status), error = %status.message(),
                    "node registration refused");
                self.error(
                    cx,
                    refusal_code(&status),
                    status.message(),
                    env.message_id.as_deref(),
                    None,
                )
                .await
            }
        }
    }

    async fn pull(&self, cx: &mut Ctx<String>) {
        let Some(node_id) = self.node_id.clone() else { return };
        let mut scheduler = cx.gw.upstreams.scheduler.clone();
        match scheduler
            .pull_commands(PullCommandsRequest {
                node_id: node_id.to_string(),
            })
            .await
        {
            Ok(r) => self.send_commands(cx, r.into_inner().commands).await,
            Err(status) => tracing::warn!(node_id = %node_id, error = %status.message(), "pull commands failed"),
        }
    }

    async fn heartbeat(&self, cx: &mut Ctx<String>, env: &Envelope, node_id: String) {
        let ref_id = env.message_id.clone().unwrap_or_default();
        let p: Heartbeat = match payload("HEARTBEAT", env) {
            Ok(p) => p,
            Err(err) => {
                return self
                    .error(cx, ErrorCode::InvalidFrame, &err.to_string(), Some(&ref_id), None)
                    .await;
            }
        };
        let mut scheduler = cx.gw.upstreams.scheduler.clone();
        let reply = scheduler
            .node_heartbeat(NodeHeartbeatRequest {
                node_id,
                status: p.status as i32,
                connection_id: cx.id.to_string(),
                device_serials: self.hello.devices.iter().map(|d| d.as_str().to_owned()).collect(),
                slots: self.hello.slots,
                running: p.running.iter().map(|c| c.as_str().to_owned()).collect(),
            })
            .await;
        let ack = Ack {
            ref_message_id: Some(ref_id.clone()),
            command_id: None,
        };
        self.send(cx, FrameType::HeartbeatAck, ack).await;
        match reply {
            Ok(r) => self.send_commands(cx, r.into_inner().commands).await,
            Err(status) => {
                self.error(cx, refusal_code(&status), status.message(), Some(&ref_id), None)
                    .await
            }
        }
    }

    async fn result(&self, cx: &mut Ctx<String>, env: &Envelope, node_id: String) {
        let ref_id = env.message_id.clone().unwrap_or_default();
        let p: CommandResult = match payload("RESULT", env) {
            Ok(p) => p,
            Err(err) => {
                return self
                    .error(cx, ErrorCode::InvalidFrame, &err.to_string(), Some(&ref_id), None)
                    .await;
            }
        };
        let mut scheduler = cx.gw.upstreams.scheduler.clone();
        let req = ReportResultRequest {
            node_id: node_id.clone(),
            command_id: p.command_id.to_string(),
            status: p.status as i32,
            error: p.error.clone().unwrap_or_default(),
            result: p.result.clone().map(value_from_json),
        };
        let ack = Ack {
            ref_message_id: Some(ref_id.clone()),
            command_id: Some(p.command_id.clone()),
        };
        match scheduler.report_result(req).await {
            Ok(r) => {
                self.send(cx, FrameType::Ack, ack).await;
                self.send_commands(cx, r.into_inner().commands).await;
            }
            // An unknown command will never be known: acknowledge it so the
            // node stops resending, and say why.
            Err(status) if status.code() == Code::NotFound => {
                tracing::warn!(run_id = %p.run_id, node_id = %node_id, device_serial = %p.device_serial,
                    command_id = %p.command_id, "result for an unknown command acknowledged and dropped");
                self.send(cx, FrameType::Ack, ack).await;
                self.error(
                    cx,
                    ErrorCode::InvalidFrame,
                    status.message(),
                    Some(&ref_id),
                    Some(&p.command_id),
                )
                .await;
            }
            // Not recorded (the scheduler is restarting, or failing over):
            // the node keeps the result and retries it within seconds.
            Err(status) => {
                let code = refusal_code(&status);
                tracing::warn!(run_id = %p.run_id, node_id = %node_id, device_serial = %p.device_serial,
                    command_id = %p.command_id, code = %code, error = %status.message(),
                    "result not recorded; node told to retry");
                self.error(cx, code, status.message(), Some(&ref_id), Some(&p.command_id))
                    .await
            }
        }
    }

    /// An ERROR from the node. One naming a command is a refused COMMAND:
    /// the scheduler re-queues it at once instead of waiting for its deadline.
    async fn node_error(&self, cx: &mut Ctx<String>, env: &Envelope, node_id: String) {
        let err: ErrorFrame = payload("ERROR", env).unwrap_or_default();
        let Some(command_id) = err.command_id else {
            tracing::warn!(node_id = %node_id, code = %err.code, error = %err.message,
                ref_message_id = err.ref_message_id.as_deref().unwrap_or(""), "node reported an error");
            return;
        };
        tracing::warn!(node_id = %node_id, command_id = %command_id, code = %err.code, error = %err.message,
            "node refused a command");
        let mut scheduler = cx.gw.upstreams.scheduler.clone();
        let req = RejectCommandRequest {
            node_id: node_id.clone(),
            command_id: command_id.to_string(),
            reason: reject_reason(err.code) as i32,
        };
        if let Err(status) = scheduler.reject_command(req).await {
            tracing::warn!(node_id = %node_id, command_id = %command_id, error = %status.message(),
                "refused command not re-queued; it waits for its deadline");
        }
    }
}

/// The typed payload of a frame of type `kind` (missing reads as `{}`).
fn payload<T: serde::de::DeserializeOwned>(kind: &str, env: &Envelope) -> Result<T, FrameError> {
    serde_json::from_str(env.payload.as_deref().unwrap_or("{}")).map_err(|e| FrameError::InvalidPayload {
        kind: kind.to_owned(),
        why: e.to_string(),
    })
}

impl Protocol for NodeProtocol {
    const NAME: ClientProtocol = ClientProtocol::Node;
    /// The frame as received: the HMAC covers its exact bytes.
    type Request = String;
    type Event = String;

    async fn on_open(&mut self, _cx: &mut Ctx<String>) {}

    async fn on_request(&mut self, cx: &mut Ctx<String>, text: String) {
        let text = text.as_str();
        let env = match Envelope::parse(text) {
            Ok(env) => env,
            Err(err) => return cx.send(wire::frame_error(&err)),
        };
        let ref_id = env.message_id.clone();
        let mut auth = cx.gw.upstreams.auth.clone();
        let verified = match auth
            .verify_node_frame(VerifyNodeFrameRequest {
                frame: text.as_bytes().to_vec(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let c = refusal_code(&status);
                tracing::warn!(
                    node_id = env.node_id.as_deref().unwrap_or(""),
                    code = %c,
                    "node frame refused"
                );
                self.error(cx, c, status.message(), ref_id.as_deref(), None).await;
                if self.node_id.is_none() && status.code() == Code::Unauthenticated {
                    cx.close(CloseCode::AuthFailed, "node authentication failed");
                }
                return;
            }
        };
        if let Some(mine) = &self.node_id
            && mine.as_str() != verified.node_id
        {
            return self
                .error(
                    cx,
                    ErrorCode::InvalidFrame,
                    "node_id differs from this socket's node",
                    ref_id.as_deref(),
                    None,
                )
                .await;
        }
        let node_id = verified.node_id;
        match env.kind {
            FrameType::Hello => self.hello(cx, &env, node_id).await,
            _ if self.node_id.is_none() => {
                self.error(
                    cx,
                    ErrorCode::NotRegistered,
                    "send HELLO first",
                    ref_id.as_deref(),
                    None,
                )
                .await
            }
            FrameType::Heartbeat => self.heartbeat(cx, &env, node_id).await,
            FrameType::Result => self.result(cx, &env, node_id).await,
            FrameType::Ack => tracing::debug!(node_id = %node_id, "node ack"),
            FrameType::Error => self.node_error(cx, &env, node_id).await,
            FrameType::HelloAck | FrameType::HeartbeatAck | FrameType::Command => {
                self.error(
                    cx,
                    ErrorCode::InvalidFrame,
                    "that frame type goes from hub to node",
                    ref_id.as_deref(),
                    None,
                )
                .await
            }
        }
    }

    /// The frame is not verified nor handled: the node resends it later
    /// (a RESULT stays unacknowledged, so the agent retries it).
    async fn on_rate_limited(&mut self, cx: &mut Ctx<String>, text: String, retry_after: Duration) {
        let env = Envelope::parse(&text).ok();
        let ref_id = env.as_ref().and_then(|e| e.message_id.clone());
        let command_id = env
            .filter(|e| e.kind == FrameType::Result)
            .and_then(|e| payload::<CommandResult>("RESULT", &e).ok())
            .map(|r| r.command_id);
        let ms = relaymesh_wire::millis(retry_after);
        let message = format!("rate limit exceeded; retry in {ms} ms");
        self.error(
            cx,
            ErrorCode::RateLimited,
            &message,
            ref_id.as_deref(),
            command_id.as_ref(),
        )
        .await;
    }

    async fn on_nudge(&mut self, cx: &mut Ctx<String>, _reason: NudgeReason) {
        self.pull(cx).await;
    }

    async fn on_close(&mut self, cx: &mut Ctx<String>) {
        if let Some(node_id) = self.node_id.take() {
            let node = node_id.to_string();
            let ended = Ended {
                connection_id: cx.id.as_str(),
                user_id: &node,
            };
            if let Err(status) = Self::release(&cx.gw, ended).await {
                tracing::warn!(node_id = %node_id, error = %status.message(), "node disconnect not recorded");
            }
        }
    }

    /// The scheduler marks the node disconnected (this connection's, not a
    /// newer one's) and requeues what it ran.
    async fn release(gw: &Shared, ended: Ended<'_>) -> Result<(), Status> {
        let req = NodeDisconnectedRequest {
            node_id: ended.user_id.to_owned(),
            connection_id: ended.connection_id.to_owned(),
        };
        gw.upstreams.scheduler.clone().node_disconnected(req).await.map(drop)
    }
}

impl WsCodec for NodeProtocol {
    /// Node frames are checked by the auth service before they are read, so
    /// the transport passes the text through unparsed.
    fn parse(&self, text: &str) -> Result<String, String> {
        Ok(text.to_owned())
    }

    fn render(event: &String) -> Option<Utf8Bytes> {
        Some(Utf8Bytes::from(event.as_str()))
    }

    fn refused(&self, err: &FrameError) -> String {
        wire::frame_error(err)
    }
}
