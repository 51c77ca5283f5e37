//! The agent's life: connect, register (HELLO / HELLO_ACK), heartbeat,
//! run COMMANDs within the slot rules, report RESULTs until ACKed, and
//! reconnect with backoff whenever the hub goes away.
//!
//! `wss://` hubs are reached through the rustls connector built once at
//! start (webpki roots plus `--hub-ca-file`, see `crate::tls`); a TLS
//! failure is a lost connection like any other and is retried with backoff.
//!
//! One task owns the socket and all state; commands run in a `JoinSet`
//! owned by the agent, so results are collected whether or not the hub is
//! connected, and nothing outlives `run`. No lock exists to be held across
//! an `.await`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::{Id as TaskId, JoinError, JoinSet};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream, connect_async_tls_with_config};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use relaymesh_wire::node::{FrameType, wire_name};

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::driver::DeviceDriver;
use crate::error::AgentError;
use crate::frames::{
    Ack, Command, CommandResult, ErrorCode, ErrorFrame, FrameCodec, Heartbeat, Hello, HelloAck, Inbound, NodeStatus,
    ResultStatus,
};
use crate::ids::{CommandId, DeviceSerial, NodeId};
use crate::outbox::Outbox;
use crate::slots::{Refusal, SlotPool};

/// Close codes the hub uses (gateway/src/ws).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const AUTH_FAILED: u16 = 4001;
    pub const HEARTBEAT_LOST: u16 = 4003;
    pub const REPLACED: u16 = 4004;
}

/// Longest wait for the TCP + WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for HELLO_ACK after HELLO.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The hub is presumed gone after this many heartbeat periods of silence
/// (a half-open TCP connection would otherwise never be noticed).
const SILENCE_PERIODS: u32 = 3;
/// After the last command ends on shutdown, how long to wait for ACKs.
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for the hub's answer to our close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How often results due again (see `outbox`) are looked for.
const RESEND_TICK: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The one field of a COMMAND read even when the rest does not parse.
#[derive(serde::Deserialize)]
struct CommandIdOnly {
    #[serde(default)]
    command_id: Option<CommandId>,
}

/// How a connection ended.
#[derive(Debug)]
enum SessionEnd {
    /// Connection gone; reconnect after a backoff delay.
    Lost(String),
    /// Shutdown finished while connected; results flushed.
    Shutdown,
    /// Closed with 4004.
    Replaced,
}

/// How one command ended.
#[derive(Debug)]
enum Outcome {
    Success(Value),
    Failed(String),
    Timeout,
}

#[derive(Debug)]
struct Completion {
    command: Command,
    started_at: i64,
    finished_at: i64,
    outcome: Outcome,
}

/// Deadlines of a shutdown in progress.
#[derive(Debug, Clone, Copy)]
struct Drain {
    /// Commands still running then are aborted.
    cut_off: Instant,
    /// Unacknowledged results are given up then.
    flush_until: Instant,
}

pub(crate) struct Agent<D: DeviceDriver> {
    config: AgentConfig,
    /// TLS settings for wss:// (unused for ws://).
    connector: Connector,
    node_id: NodeId,
    codec: FrameCodec,
    driver: Arc<D>,
    devices: Vec<DeviceSerial>,
    slots: SlotPool,
    outbox: Outbox,
    tasks: JoinSet<Completion>,
    /// Each task's command and start, so an aborted or panicked task is
    /// still reported.
    task_commands: HashMap<TaskId, (Command, i64)>,
    heartbeat_every: Duration,
    drain: Option<Drain>,
}

impl<D: DeviceDriver> Agent<D> {
    /// Checks the URL and lists devices once; a driver that cannot list
    /// devices at start-up (adb missing) stops the agent with a clear error.
    pub(crate) async fn start(config: AgentConfig, driver: D) -> Result<Self, AgentError> {
        if let Err(e) = config.vultr_url.as_str().into_client_request() {
            return Err(AgentError::InvalidUrl {
                url: config.vultr_url.clone(),
                why: e.to_string(),
            });
        }
        crate::tls::install_default_provider();
        let connector = crate::tls::connector(config.hub_ca_file.as_deref())?;
        let devices = driver.devices().await?;
        let node_id = config.resolved_node_id();
        let key = relaymesh_wire::node::NodeKey::from_secret(config.node_secret.expose());
        let capacity = usize::try_from(config.result_buffer).unwrap_or(usize::MAX);
        let outbox = match &config.state_dir {
            Some(dir) => Outbox::open(capacity, dir, &node_id)?,
            None => {
                warn!(node_id = %node_id, "no --state-dir: unacknowledged results do not survive a restart");
                Outbox::new(capacity)
            }
        };
        info!(node_id = %node_id, devices = devices.len(), slots = config.slots, unacked = outbox.len(),
            "node agent starting");
        Ok(Self {
            codec: FrameCodec::new(node_id.clone(), key),
            connector,
            node_id,
            driver: Arc::new(driver),
            devices,
            slots: SlotPool::new(config.slots),
            outbox,
            tasks: JoinSet::new(),
            task_commands: HashMap::new(),
            heartbeat_every: config.heartbeat_interval(),
            drain: None,
            config,
        })
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let mut backoff = Backoff::new(
            Duration::from_millis(self.config.reconnect_min_ms),
            Duration::from_millis(self.config.reconnect_max_ms),
        );
        loop {
            match self.session(&shutdown, &mut backoff).await {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Replaced => {
                    let abandoned = self.tasks.len();
                    self.tasks.abort_all();
                    error!(node_id = %self.node_id, abandoned, undelivered = self.outbox.len(),
                        "replaced by another agent with the same node id; stopping");
                    return Err(AgentError::Replaced {
                        node_id: self.node_id.to_string(),
                    });
                }
                SessionEnd::Lost(reason) => {
                    warn!(node_id = %self.node_id, reason = %reason, "hub connection lost");
                }
            }
            if shutdown.is_cancelled() {
                self.drain_offline().await;
                return Ok(());
            }
            let delay = backoff.next_delay();
            info!(node_id = %self.node_id, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "reconnecting");
            if !self.wait_offline(delay, &shutdown).await {
                self.drain_offline().await;
                return Ok(());
            }
        }
    }

    /// One connection, from connect to close.
    async fn session(&mut self, shutdown: &CancellationToken, backoff: &mut Backoff) -> SessionEnd {
        if shutdown.is_cancelled() {
            return SessionEnd::Lost("shutting down".into());
        }
        self.refresh_devices().await;
        let connect = tokio::time::timeout(
            CONNECT_TIMEOUT,
            connect_async_tls_with_config(
                self.config.vultr_url.as_str(),
                None,
                false,
                Some(self.connector.clone()),
            ),
        );
        let mut ws = tokio::select! {
            () = shutdown.cancelled() => return SessionEnd::Lost("shutting down".into()),
            r = connect => match r {
                Ok(Ok((ws, _))) => ws,
                Ok(Err(e)) => return SessionEnd::Lost(crate::tls::describe_connect_error(&e)),
                Err(_) => return SessionEnd::Lost("connect timed out".into()),
            },
        };
        let hello = Hello {
            devices: self.devices.clone(),
            slots: self.config.slots,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        if let Err(end) = self.send(&mut ws, FrameType::Hello, &hello).await {
            return end;
        }
        let ack = match tokio::time::timeout(HELLO_TIMEOUT, self.await_hello_ack(&mut ws)).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(end)) => return end,
            Err(_) => return SessionEnd::Lost("no HELLO_ACK in time".into()),
        };
        backoff.reset();
        self.heartbeat_every = ack
            .heartbeat_interval_s
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or_else(|| self.config.heartbeat_interval(), Duration::from_secs_f64);
        info!(node_id = %self.node_id, devices = self.devices.len(), accepted = ?ack.devices,
            heartbeat_ms = u64::try_from(self.heartbeat_every.as_millis()).unwrap_or(u64::MAX),
            unacked = self.outbox.len(), "registered with hub");
        match self.serve(&mut ws, shutdown).await {
            Ok(end) | Err(end) => end,
        }
    }

    /// After HELLO_ACK: resend what the hub has not ACKed, then serve.
    async fn serve(&mut self, ws: &mut Ws, shutdown: &CancellationToken) -> Result<SessionEnd, SessionEnd> {
        let pending: Vec<CommandResult> = self.outbox.pending().cloned().collect();
        self.resend(ws, &pending).await?;
        self.send_heartbeat(ws).await?;

        let period = self.heartbeat_every;
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resend_tick = tokio::time::interval_at(Instant::now() + RESEND_TICK, RESEND_TICK);
        resend_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            if let Some(drain) = &mut self.drain
                && self.tasks.is_empty()
            {
                drain.flush_until = drain.flush_until.min(Instant::now() + FLUSH_WAIT);
                if self.outbox.is_empty() || Instant::now() >= drain.flush_until {
                    if !self.outbox.is_empty() {
                        warn!(node_id = %self.node_id, undelivered = self.outbox.len(), "shutting down with unacknowledged results");
                    }
                    close_socket(ws, CloseCode::Normal, "agent shutting down").await;
                    info!(node_id = %self.node_id, "node agent stopped");
                    return Ok(SessionEnd::Shutdown);
                }
            }
            let cut_off = self.drain.map_or(far, |d| d.cut_off);
            let flush_until = self.drain.map_or(far, |d| d.flush_until);
            tokio::select! {
                () = shutdown.cancelled(), if self.drain.is_none() => {
                    let cut_off = Instant::now() + self.config.shutdown_grace();
                    self.drain = Some(Drain { cut_off, flush_until: cut_off + FLUSH_WAIT });
                    info!(node_id = %self.node_id, running = self.tasks.len(), "shutting down: no new commands");
                    // BUSY with no free slots, so the hub stops sending.
                    self.send_heartbeat(ws).await?;
                }
                msg = ws.next() => {
                    last_heard = Instant::now();
                    match msg {
                        None => return Err(SessionEnd::Lost("hub closed the connection".into())),
                        Some(Err(e)) => return Err(SessionEnd::Lost(format!("socket error: {e}"))),
                        Some(Ok(Message::Text(text))) => self.on_text(ws, text.as_str()).await?,
                        Some(Ok(Message::Close(frame))) => return Err(self.on_close(frame.as_ref())),
                        Some(Ok(Message::Binary(_))) => {
                            self.send_error(ws, ErrorCode::InvalidFrame, "binary frames are not accepted", None, None).await?;
                        }
                        // tungstenite answers pings itself.
                        Some(Ok(_)) => {}
                    }
                }
                _ = ticker.tick() => {
                    if last_heard.elapsed() > period * SILENCE_PERIODS {
                        return Err(SessionEnd::Lost("hub silent for three heartbeat periods".into()));
                    }
                    self.send_heartbeat(ws).await?;
                }
                _ = resend_tick.tick() => {
                    let due = self.outbox.due(Instant::now());
                    self.resend(ws, &due).await?;
                }
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    if let Some(result) = self.finish(joined) {
                        self.send_result(ws, &result).await?;
                        // A slot is free: say so now so the hub refills it at once.
                        if self.drain.is_none() {
                            self.send_heartbeat(ws).await?;
                        }
                    }
                }
                () = sleep_until(cut_off), if self.drain.is_some() && !self.tasks.is_empty() => {
                    warn!(node_id = %self.node_id, aborted = self.tasks.len(), "shutdown grace over: aborting running commands");
                    self.tasks.abort_all();
                    // Aborted tasks come back through join_next as FAILED.
                    if let Some(d) = &mut self.drain {
                        d.cut_off = far;
                    }
                }
                // Wakes the loop so its top can give up on missing ACKs.
                () = sleep_until(flush_until), if self.drain.is_some() && self.tasks.is_empty() => {}
            }
        }
    }

    /// Reads until HELLO_ACK; anything else the hub says first is logged.
    async fn await_hello_ack(&mut self, ws: &mut Ws) -> Result<HelloAck, SessionEnd> {
        loop {
            match ws.next().await {
                None => return Err(SessionEnd::Lost("hub closed before HELLO_ACK".into())),
                Some(Err(e)) => return Err(SessionEnd::Lost(format!("socket error: {e}"))),
                Some(Ok(Message::Close(frame))) => return Err(self.on_close(frame.as_ref())),
                Some(Ok(Message::Text(text))) => {
                    let Ok(inbound) = self.codec.decode(text.as_str()) else {
                        warn!(node_id = %self.node_id, "malformed frame before HELLO_ACK");
                        continue;
                    };
                    match inbound.envelope.kind {
                        FrameType::HelloAck => {
                            if let Err(e) = &inbound.signature {
                                // Someone who cannot sign is not our hub.
                                return Err(SessionEnd::Lost(format!("HELLO_ACK signature invalid: {e}")));
                            }
                            return inbound
                                .payload::<HelloAck>()
                                .map_err(|e| SessionEnd::Lost(format!("malformed HELLO_ACK: {e}")));
                        }
                        FrameType::Error => {
                            let err: ErrorFrame = inbound.payload().unwrap_or_default();
                            return Err(SessionEnd::Lost(format!(
                                "hub refused HELLO: {} {}",
                                err.code, err.message
                            )));
                        }
                        other => debug!(node_id = %self.node_id, kind = ?other, "frame before HELLO_ACK ignored"),
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }

    fn on_close(&self, frame: Option<&CloseFrame>) -> SessionEnd {
        let (code, reason) = frame.map_or((close::NORMAL, String::new()), |f| {
            (u16::from(f.code), f.reason.to_string())
        });
        match code {
            close::REPLACED => SessionEnd::Replaced,
            close::AUTH_FAILED => {
                // Retried with backoff: the secret may be rotating on the hub.
                error!(node_id = %self.node_id, code, reason = %reason, "hub rejected our credentials");
                SessionEnd::Lost("authentication failed (4001)".into())
            }
            close::HEARTBEAT_LOST => SessionEnd::Lost("hub lost our heartbeats (4003)".into()),
            close::GOING_AWAY => SessionEnd::Lost("hub shutting down (1001)".into()),
            _ => SessionEnd::Lost(format!("hub closed with {code} {reason}")),
        }
    }

    async fn on_text(&mut self, ws: &mut Ws, text: &str) -> Result<(), SessionEnd> {
        let inbound = match self.codec.decode(text) {
            Ok(inbound) => inbound,
            Err(e) => {
                return self
                    .send_error(ws, ErrorCode::InvalidFrame, &e.to_string(), None, None)
                    .await;
            }
        };
        match inbound.envelope.kind {
            FrameType::Command => self.on_command(ws, &inbound).await,
            // Errors are only logged, so an unsigned one (the hub's
            // frame-level refusals) is still worth reading.
            FrameType::Error => {
                let err: ErrorFrame = inbound.payload().unwrap_or_default();
                let ref_message_id = err.ref_message_id.as_deref().unwrap_or("");
                match &err.command_id {
                    // A RESULT the hub could not record: retry it in seconds.
                    Some(id) if inbound.signature.is_ok() => {
                        let retry = self.outbox.mark_refused(id, Instant::now());
                        let held = self.outbox.get(id);
                        warn!(node_id = %self.node_id, command_id = %id,
                            run_id = %held.map_or("", |r| r.run_id.as_str()),
                            device_serial = %held.map_or("", |r| r.device_serial.as_str()),
                            code = %err.code, error = %err.message, ref_message_id,
                            retry_ms = retry.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                            "hub refused a result");
                    }
                    _ => warn!(node_id = %self.node_id, code = %err.code, error = %err.message,
                        ref_message_id, signed = inbound.signature.is_ok(), "hub reported an error"),
                }
                Ok(())
            }
            _ if inbound.signature.is_err() => {
                warn!(node_id = %self.node_id, kind = ?inbound.envelope.kind, message_id = inbound.message_id(),
                    "dropping hub frame with a bad signature");
                Ok(())
            }
            FrameType::Ack => {
                match inbound.payload::<Ack>() {
                    Ok(Ack {
                        command_id: Some(id), ..
                    }) => {
                        if self.outbox.ack(&id) {
                            debug!(node_id = %self.node_id, command_id = %id, "result acknowledged");
                        }
                    }
                    Ok(_) => debug!(node_id = %self.node_id, "ack without command_id"),
                    Err(e) => warn!(node_id = %self.node_id, error = %e, "malformed ACK"),
                }
                Ok(())
            }
            FrameType::HeartbeatAck | FrameType::HelloAck => Ok(()),
            other @ (FrameType::Hello | FrameType::Heartbeat | FrameType::Result) => {
                let why = format!("{other:?} is not sent by a hub");
                self.send_error(ws, ErrorCode::InvalidFrame, &why, inbound.message_id(), None)
                    .await
            }
        }
    }

    async fn on_command(&mut self, ws: &mut Ws, inbound: &Inbound) -> Result<(), SessionEnd> {
        let message_id = inbound.message_id();
        // Every refusal names the command, when it can be read at all, so
        // the hub re-queues it at once.
        let claimed: Option<CommandId> = inbound.payload::<CommandIdOnly>().ok().and_then(|p| p.command_id);
        if let Err(e) = &inbound.signature {
            warn!(node_id = %self.node_id, message_id, command_id = claimed.as_ref().map(|c| c.0.as_str()), error = %e,
                "command refused: bad signature");
            return self
                .send_error(
                    ws,
                    ErrorCode::InvalidSignature,
                    "command signature does not verify",
                    message_id,
                    claimed.as_ref(),
                )
                .await;
        }
        if inbound.envelope.node_id.as_deref() != Some(self.node_id.as_str()) {
            return self
                .send_error(
                    ws,
                    ErrorCode::InvalidFrame,
                    "command addressed to another node",
                    message_id,
                    claimed.as_ref(),
                )
                .await;
        }
        let command: Command = match inbound.payload() {
            Ok(c) => c,
            Err(e) => {
                return self
                    .send_error(
                        ws,
                        ErrorCode::InvalidFrame,
                        &format!("invalid COMMAND payload: {e}"),
                        message_id,
                        claimed.as_ref(),
                    )
                    .await;
            }
        };
        let c = &command;
        let id = Some(&c.command_id);
        // Finished but not yet ACKed (perhaps before this process started):
        // the hub evidently missed the result, so send it, never run again.
        if let Some(result) = self.outbox.get(&c.command_id).cloned() {
            debug!(run_id = %c.run_id, node_id = %self.node_id, device_serial = %c.device_serial,
                command_id = %c.command_id, "command already done; result sent again");
            return self.send_result(ws, &result).await;
        }
        if self.drain.is_some() {
            info!(run_id = %c.run_id, node_id = %self.node_id, device_serial = %c.device_serial,
                command_id = %c.command_id, "command refused: shutting down");
            return self
                .send_error(ws, ErrorCode::Unavailable, "agent is shutting down", message_id, id)
                .await;
        }
        match self.slots.admit(&c.command_id, &c.device_serial) {
            Ok(()) => {
                self.start_command(command);
                Ok(())
            }
            Err(Refusal::Running) => {
                debug!(run_id = %c.run_id, node_id = %self.node_id, device_serial = %c.device_serial,
                    command_id = %c.command_id, "duplicate command ignored: running");
                Ok(())
            }
            Err(Refusal::Done) => {
                // The hub evidently missed the result: send it again if still held.
                debug!(run_id = %c.run_id, node_id = %self.node_id, device_serial = %c.device_serial,
                    command_id = %c.command_id, "duplicate command ignored: done");
                match self.outbox.get(&c.command_id).cloned() {
                    Some(result) => self.send_result(ws, &result).await,
                    None => Ok(()),
                }
            }
            Err(Refusal::DeviceBusy(holder)) => {
                warn!(run_id = %c.run_id, node_id = %self.node_id, device_serial = %c.device_serial,
                    command_id = %c.command_id, running = %holder, "command refused: device busy");
                let why = format!("device {} is running command {holder}", c.device_serial);
                self.send_error(ws, ErrorCode::DeviceBusy, &why, message_id, id).await
            }
            Err(Refusal::NoFreeSlot) => {
                warn!(run_id = %c.run_id, node_id = %self.node_id, device_serial = %c.device_serial,
                    command_id = %c.command_id, "command refused: no free slot");
                let why = format!("all {} slots are busy", self.config.slots);
                self.send_error(ws, ErrorCode::NoFreeSlot, &why, message_id, id).await
            }
        }
    }

    /// Runs an admitted command in the agent's `JoinSet`, bounded by its
    /// timeout (COMMAND `timeout_ms`, else `--task-timeout-ms`).
    fn start_command(&mut self, command: Command) {
        let timeout = command
            .timeout_ms
            .filter(|ms| *ms > 0)
            .map_or_else(|| self.config.task_timeout(), Duration::from_millis);
        let started_at = chrono::Utc::now().timestamp_millis();
        info!(run_id = %command.run_id, node_id = %self.node_id, device_serial = %command.device_serial,
            command_id = %command.command_id, command_type = wire_name(command.command_type),
            timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX), "task started");
        let driver = Arc::clone(&self.driver);
        let task_command = command.clone();
        let handle = self.tasks.spawn(async move {
            let command = task_command;
            let run = driver.run(&command.device_serial, &command);
            let outcome = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(value)) => Outcome::Success(value),
                Ok(Err(e)) => Outcome::Failed(e.to_string()),
                Err(_) => Outcome::Timeout,
            };
            Completion {
                command,
                started_at,
                finished_at: chrono::Utc::now().timestamp_millis(),
                outcome,
            }
        });
        self.task_commands.insert(handle.id(), (command, started_at));
    }

    /// Turns a finished (or aborted, or panicked) task into a RESULT kept in
    /// the outbox, and frees its slot.
    fn finish(&mut self, joined: Result<(TaskId, Completion), JoinError>) -> Option<CommandResult> {
        let done = match joined {
            Ok((id, done)) => {
                self.task_commands.remove(&id);
                done
            }
            Err(e) => {
                let Some((command, started_at)) = self.task_commands.remove(&e.id()) else {
                    error!(node_id = %self.node_id, error = %e, "unknown task ended");
                    return None;
                };
                let why = if e.is_cancelled() {
                    "aborted: agent shut down before the command finished"
                } else {
                    "the command's task panicked"
                };
                Completion {
                    command,
                    started_at,
                    finished_at: chrono::Utc::now().timestamp_millis(),
                    outcome: Outcome::Failed(why.into()),
                }
            }
        };
        let c = &done.command;
        self.slots.release(&c.command_id);
        let duration_ms = done.finished_at - done.started_at;
        let (status, error, result) = match done.outcome {
            Outcome::Success(value) => {
                info!(run_id = %c.run_id, node_id = %self.node_id, device_serial = %c.device_serial,
                    command_id = %c.command_id, duration_ms, "task succeeded");
                (ResultStatus::Success, None, Some(value))
            }
            Outcome::Failed(why) => {
                // Fail-soft (seed 002): report and carry on with other devices.
                warn!(run_id = %c.run_id, node_id = %self.node_id, device_serial = %c.device_serial,
                    command_id = %c.command_id, duration_ms, error = %why, "task failed");
                (ResultStatus::Failed, Some(why), None)
            }
            Outcome::Timeout => {
                warn!(run_id = %c.run_id, node_id = %self.node_id, device_serial = %c.device_serial,
                    command_id = %c.command_id, duration_ms, "task timed out");
                (ResultStatus::Timeout, Some("timed out".to_owned()), None)
            }
        };
        let result = CommandResult {
            command_id: done.command.command_id,
            run_id: done.command.run_id,
            device_serial: done.command.device_serial,
            status,
            error,
            result,
            started_at: done.started_at,
            finished_at: done.finished_at,
        };
        if let Some(dropped) = self.outbox.push(result.clone()) {
            warn!(run_id = %dropped.run_id, node_id = %self.node_id, device_serial = %dropped.device_serial,
                command_id = %dropped.command_id, capacity = self.config.result_buffer,
                "result buffer full: dropped the oldest unacknowledged result");
        }
        Some(result)
    }

    /// Sleeps `delay` between connections while still collecting results.
    /// `false` if shutdown was requested meanwhile.
    async fn wait_offline(&mut self, delay: Duration, shutdown: &CancellationToken) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                () = sleep_until(deadline) => return true,
                () = shutdown.cancelled() => return false,
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.finish(joined);
                }
            }
        }
    }

    /// Shutdown without a hub: let running commands end (bounded), then
    /// stop; their results cannot be delivered.
    async fn drain_offline(&mut self) {
        let cut_off = Instant::now() + self.config.shutdown_grace();
        let mut aborted = false;
        while !self.tasks.is_empty() {
            tokio::select! {
                Some(joined) = self.tasks.join_next_with_id() => {
                    self.finish(joined);
                }
                () = sleep_until(cut_off), if !aborted => {
                    self.tasks.abort_all();
                    aborted = true;
                }
            }
        }
        if !self.outbox.is_empty() {
            warn!(node_id = %self.node_id, undelivered = self.outbox.len(), "stopped while disconnected: results not delivered");
        }
        info!(node_id = %self.node_id, "node agent stopped");
    }

    /// Re-lists devices before each HELLO; on failure keeps the last list.
    async fn refresh_devices(&mut self) {
        match self.driver.devices().await {
            Ok(devices) => self.devices = devices,
            Err(e) => warn!(node_id = %self.node_id, error = %e, "cannot list devices; using the last known list"),
        }
    }

    fn heartbeat(&self) -> Heartbeat {
        let free_slots = if self.drain.is_some() { 0 } else { self.slots.free() };
        Heartbeat {
            status: if free_slots > 0 {
                NodeStatus::Ready
            } else {
                NodeStatus::Busy
            },
            free_slots,
            running: self.slots.running(),
        }
    }

    async fn send_result(&mut self, ws: &mut Ws, result: &CommandResult) -> Result<(), SessionEnd> {
        self.send(ws, FrameType::Result, result).await?;
        self.outbox.mark_sent(&result.command_id, Instant::now());
        Ok(())
    }

    /// Sends unacknowledged results again, oldest first.
    async fn resend(&mut self, ws: &mut Ws, results: &[CommandResult]) -> Result<(), SessionEnd> {
        for result in results {
            debug!(run_id = %result.run_id, node_id = %self.node_id, device_serial = %result.device_serial,
                command_id = %result.command_id, "resending result");
            self.send_result(ws, result).await?;
        }
        Ok(())
    }

    async fn send_heartbeat(&self, ws: &mut Ws) -> Result<(), SessionEnd> {
        self.send(ws, FrameType::Heartbeat, &self.heartbeat()).await
    }

    async fn send_error(
        &self,
        ws: &mut Ws,
        code: ErrorCode,
        message: &str,
        ref_message_id: Option<&str>,
        command_id: Option<&CommandId>,
    ) -> Result<(), SessionEnd> {
        let frame = ErrorFrame {
            code,
            message: message.to_owned(),
            ref_message_id: ref_message_id.map(str::to_owned),
            command_id: command_id.cloned(),
        };
        self.send(ws, FrameType::Error, &frame).await
    }

    /// Signs and sends one frame; a failed write ends the session.
    async fn send<P: Serialize + Sync>(&self, ws: &mut Ws, kind: FrameType, payload: &P) -> Result<(), SessionEnd> {
        let text = match self.codec.encode(kind, payload) {
            Ok(text) => text,
            Err(e) => {
                // Our own payloads always serialise; this is a bug, not the hub's fault.
                error!(node_id = %self.node_id, error = %e, "cannot sign frame");
                return Ok(());
            }
        };
        ws.send(Message::text(text))
            .await
            .map_err(|e| SessionEnd::Lost(format!("send failed: {e}")))
    }
}

/// Sends a close frame and waits briefly for the hub's reply.
async fn close_socket(ws: &mut Ws, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if ws.close(Some(frame)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}
