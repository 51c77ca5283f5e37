//! `/ws/node`: seed 000's NodeRunner hub (frames in docs/node-protocol.md).
//!
//! Every inbound frame is verified by the auth service (signature, replay,
//! timestamp window) before anything else; a node that fails before its
//! HELLO is accepted cannot hold the socket (4001). Outbound frames are
//! signed by the auth service, which alone holds the key.

use relaymesh_proto::auth::v1::{SignNodeFrameRequest, VerifyNodeFrameRequest};
use relaymesh_proto::scheduler::v1::{
    Command, NodeDisconnectedRequest, NodeHeartbeatRequest, PullCommandsRequest, RegisterNodeRequest,
    ReportResultRequest,
};
use relaymesh_wire::node::{self as wire, Envelope, FrameType, OutFrame, code};
use relaymesh_wire::{FrameError, JsonText};
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

use axum::extract::ws::Utf8Bytes;
use relaymesh_proto::auth::v1::ErrorReason as AuthReason;
use relaymesh_proto::client::v1::{ClientProtocol, CloseCode};
use relaymesh_proto::delivery::v1::NudgeReason;
use relaymesh_proto::scheduler::v1::ErrorReason as SchedulerReason;

use super::{Ctx, Protocol};
use crate::ws::WsCodec;

#[derive(Debug, Default)]
pub struct NodeProtocol {
    node_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HelloPayload {
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    slots: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct HeartbeatPayload {
    #[serde(default)]
    status: String,
}

#[derive(Debug, Deserialize)]
struct ResultPayload {
    command_id: String,
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    result: Option<JsonText>,
}

#[derive(Serialize)]
struct HelloAck {
    heartbeat_interval_s: u32,
    devices: usize,
}

#[derive(Serialize)]
struct AckPayload<'a> {
    ref_message_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    command_id: Option<&'a str>,
}

#[derive(Serialize)]
struct CommandPayload<'a> {
    command_id: &'a str,
    run_id: &'a str,
    device_serial: &'a str,
    command_type: &'a str,
    params: &'a serde_json::value::RawValue,
    timeout_ms: u32,
}

/// The hub's ERROR code for a refused frame, from the service's reason.
fn refusal_code(status: &Status) -> &'static str {
    if let Some(reason) = relaymesh_rpc::reason_of::<AuthReason>(status) {
        return match reason {
            AuthReason::InvalidSignature => code::INVALID_SIGNATURE,
            AuthReason::Replayed | AuthReason::StaleTimestamp => code::REPLAYED,
            AuthReason::InvalidFrame => code::INVALID_FRAME,
            _ if status.code() == Code::Unavailable => code::UNAVAILABLE,
            _ => code::INTERNAL,
        };
    }
    match relaymesh_rpc::reason_of::<SchedulerReason>(status) {
        Some(SchedulerReason::InvalidArgument | SchedulerReason::UnknownCommandType) => code::INVALID_FRAME,
        Some(SchedulerReason::UnknownNode) => code::NOT_REGISTERED,
        _ if status.code() == Code::Unavailable => code::UNAVAILABLE,
        _ => code::INTERNAL,
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

    async fn send<P: Serialize>(&self, cx: &mut Ctx<String>, kind: FrameType, payload: P) {
        let node = self.node_id.as_deref().unwrap_or("hub");
        let text = OutFrame::new(kind, node, payload).to_text();
        let signed = Self::signed(cx, text).await;
        cx.send(signed);
    }

    async fn error(&self, cx: &mut Ctx<String>, code: &str, message: &str, ref_id: Option<&str>) {
        metrics::counter!("gateway_node_frames_refused_total", "code" => code.to_owned()).increment(1);
        let node = self.node_id.as_deref().unwrap_or("hub");
        let signed = Self::signed(cx, wire::error(node, code, message, ref_id)).await;
        cx.send(signed);
    }

    async fn send_commands(&self, cx: &mut Ctx<String>, commands: Vec<Command>) {
        let Some(node_id) = self.node_id.clone() else { return };
        for c in commands {
            let params = serde_json::value::RawValue::from_string(c.params_json.clone())
                .unwrap_or_else(|_| serde_json::value::RawValue::from_string("{}".into()).unwrap_or_default());
            tracing::info!(run_id = %c.run_id, node_id = %node_id, device_serial = %c.device_serial,
                command_id = %c.command_id, "command sent");
            let payload = CommandPayload {
                command_id: &c.command_id,
                run_id: &c.run_id,
                device_serial: &c.device_serial,
                command_type: &c.command_type,
                params: &params,
                timeout_ms: c.timeout_ms,
            };
            self.send(cx, FrameType::Command, payload).await;
        }
    }

    async fn hello(&mut self, cx: &mut Ctx<String>, env: &Envelope, node_id: String) {
        let p: HelloPayload = match payload("HELLO", env) {
            Ok(p) => p,
            Err(err) => {
                return self
                    .error(cx, code::INVALID_FRAME, &err.to_string(), env.message_id.as_deref())
                    .await;
            }
        };
        // A node reconnecting replaces its older socket, on any replica.
        if let Err(err) = cx.register(Self::NAME, &node_id, true).await {
            tracing::warn!(node_id = %node_id, error = %err, "session registry unavailable");
            return self
                .error(
                    cx,
                    code::UNAVAILABLE,
                    "session registry unavailable",
                    env.message_id.as_deref(),
                )
                .await;
        }
        let mut scheduler = cx.gw.upstreams.scheduler.clone();
        let req = RegisterNodeRequest {
            node_id: node_id.clone(),
            connection_id: cx.id.to_string(),
            device_serials: p.devices.clone(),
            slots: p.slots.unwrap_or(0),
        };
        match scheduler.register_node(req).await {
            Ok(r) => {
                self.node_id = Some(node_id.clone());
                tracing::info!(node_id = %node_id, devices = p.devices.len(), "node registered");
                let ack = HelloAck {
                    heartbeat_interval_s: r.into_inner().heartbeat_interval_s,
                    devices: p.devices.len(),
                };
                self.send(cx, FrameType::HelloAck, ack).await;
                self.pull(cx).await;
            }
            Err(status) => {
                self.error(cx, refusal_code(&status), status.message(), env.message_id.as_deref())
                    .await
            }
        }
    }

    async fn pull(&self, cx: &mut Ctx<String>) {
        let Some(node_id) = self.node_id.clone() else { return };
        let mut scheduler = cx.gw.upstreams.scheduler.clone();
        match scheduler.pull_commands(PullCommandsRequest { node_id }).await {
            Ok(r) => self.send_commands(cx, r.into_inner().commands).await,
            Err(status) => tracing::warn!(error = %status.message(), "pull commands failed"),
        }
    }

    async fn heartbeat(&self, cx: &mut Ctx<String>, env: &Envelope, node_id: String) {
        let p: HeartbeatPayload = payload("HEARTBEAT", env).unwrap_or(HeartbeatPayload { status: String::new() });
        let mut scheduler = cx.gw.upstreams.scheduler.clone();
        let reply = scheduler
            .node_heartbeat(NodeHeartbeatRequest {
                node_id,
                status: p.status,
            })
            .await;
        let ref_id = env.message_id.clone().unwrap_or_default();
        self.send(
            cx,
            FrameType::HeartbeatAck,
            AckPayload {
                ref_message_id: &ref_id,
                command_id: None,
            },
        )
        .await;
        match reply {
            Ok(r) => self.send_commands(cx, r.into_inner().commands).await,
            Err(status) => {
                self.error(cx, refusal_code(&status), status.message(), Some(&ref_id))
                    .await
            }
        }
    }

    async fn result(&self, cx: &mut Ctx<String>, env: &Envelope, node_id: String) {
        let ref_id = env.message_id.clone().unwrap_or_default();
        let p: ResultPayload = match payload("RESULT", env) {
            Ok(p) => p,
            Err(err) => {
                return self
                    .error(cx, code::INVALID_FRAME, &err.to_string(), Some(&ref_id))
                    .await;
            }
        };
        let mut scheduler = cx.gw.upstreams.scheduler.clone();
        let req = ReportResultRequest {
            node_id,
            command_id: p.command_id.clone(),
            status: p.status,
            error: p.error.unwrap_or_default(),
            result_json: p.result.map(|r| r.get().to_owned()).unwrap_or_default(),
        };
        match scheduler.report_result(req).await {
            Ok(r) => {
                let ack = AckPayload {
                    ref_message_id: &ref_id,
                    command_id: Some(&p.command_id),
                };
                self.send(cx, FrameType::Ack, ack).await;
                self.send_commands(cx, r.into_inner().commands).await;
            }
            // An unknown command will never be known: acknowledge it so the
            // node stops resending, and say why.
            Err(status) if status.code() == Code::NotFound => {
                let ack = AckPayload {
                    ref_message_id: &ref_id,
                    command_id: Some(&p.command_id),
                };
                self.send(cx, FrameType::Ack, ack).await;
                self.error(cx, code::INVALID_FRAME, status.message(), Some(&ref_id))
                    .await;
            }
            Err(status) => {
                self.error(cx, refusal_code(&status), status.message(), Some(&ref_id))
                    .await
            }
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
                    code = c,
                    "node frame refused"
                );
                self.error(cx, c, status.message(), ref_id.as_deref()).await;
                if self.node_id.is_none() && status.code() == Code::Unauthenticated {
                    cx.close(CloseCode::AuthFailed, "node authentication failed");
                }
                return;
            }
        };
        if let Some(mine) = &self.node_id
            && *mine != verified.node_id
        {
            return self
                .error(
                    cx,
                    code::INVALID_FRAME,
                    "node_id differs from this socket's node",
                    ref_id.as_deref(),
                )
                .await;
        }
        let node_id = verified.node_id;
        match env.kind {
            FrameType::Hello => self.hello(cx, &env, node_id).await,
            _ if self.node_id.is_none() => {
                self.error(cx, code::NOT_REGISTERED, "send HELLO first", ref_id.as_deref())
                    .await
            }
            FrameType::Heartbeat => self.heartbeat(cx, &env, node_id).await,
            FrameType::Result => self.result(cx, &env, node_id).await,
            FrameType::Ack => tracing::debug!(node_id = %node_id, "node ack"),
            FrameType::Error => {
                tracing::warn!(node_id = %node_id, payload = env.payload.as_deref().unwrap_or(""), "node reported an error")
            }
            FrameType::HelloAck | FrameType::HeartbeatAck | FrameType::Command => {
                self.error(
                    cx,
                    code::INVALID_FRAME,
                    "that frame type goes from hub to node",
                    ref_id.as_deref(),
                )
                .await
            }
        }
    }

    async fn on_nudge(&mut self, cx: &mut Ctx<String>, _reason: NudgeReason) {
        self.pull(cx).await;
    }

    async fn on_close(&mut self, cx: &mut Ctx<String>) {
        if let Some(node_id) = self.node_id.take() {
            let mut scheduler = cx.gw.upstreams.scheduler.clone();
            let req = NodeDisconnectedRequest {
                node_id: node_id.clone(),
                connection_id: cx.id.to_string(),
            };
            if let Err(status) = scheduler.node_disconnected(req).await {
                tracing::warn!(node_id = %node_id, error = %status.message(), "node disconnect not recorded");
            }
        }
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
