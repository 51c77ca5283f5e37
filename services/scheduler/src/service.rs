//! The scheduler's gRPC API. Decisions are made on the in-memory core under
//! its lock, then persisted; commands reach nodes when the hub pulls them
//! (heartbeat READY, a RESULT that frees a slot, or a nudge sent here when
//! work arrives for an idle node).
//!
//! [`SchedulerApi`] is what gRPC serves: until this instance holds the lease
//! (see `lease`) it answers UNAVAILABLE; then it forwards to the active
//! [`Scheduler`].

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use object_store::path::Path;
use relaymesh_proto::client::v1::ClientProtocol;
use relaymesh_proto::delivery::v1::NudgeReason;
use relaymesh_proto::json::{struct_from_json, struct_to_json, value_from_json, value_to_json};
use relaymesh_proto::scheduler::v1::scheduler_service_server::SchedulerService;
use relaymesh_proto::scheduler::v1::{
    Command, CreateRunRequest, CreateRunResponse, CreateWorkflowRequest, CreateWorkflowResponse, Device, GetRunRequest,
    GetRunResponse, GetWorkflowRequest, GetWorkflowResponse, ListNodesRequest, ListNodesResponse, Node,
    NodeDisconnectedRequest, NodeDisconnectedResponse, NodeHeartbeatRequest, NodeHeartbeatResponse, NodeStatus,
    PullCommandsRequest, PullCommandsResponse, RegisterNodeRequest, RegisterNodeResponse, RejectCommandRequest,
    RejectCommandResponse, ReportResultRequest, ReportResultResponse, ResultStatus, Run, RunStatus,
    StoreArtifactRequest, StoreArtifactResponse, Task, TaskState, Workflow,
};
use relaymesh_rpc::ServiceError;
use relaymesh_state::{Delivery, SessionRegistry, SharedState, nudge_envelope};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::SchedulerConfig;
use crate::artifacts::ArtifactStore;
use crate::core::{Core, OpenTask};
use crate::error::{Result, SchedulerError};
use crate::recipe::{Recipe, command_type_name};
use crate::store::{NodeRow, RunRow, Store, TaskRow, WorkflowRow};

/// The gateway registers node sockets under this protocol.
const NODE_PROTOCOL: ClientProtocol = ClientProtocol::Node;

/// An in-flight command its node does not report running is sent again
/// after this long (see `Core::unconfirmed`).
const RESEND_UNCONFIRMED_MS: i64 = 5_000;

/// The active scheduler: store, queues, delivery of nudges.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    core: Mutex<Core>,
    delivery: Delivery,
    artifacts: ArtifactStore,
    config: SchedulerConfig,
}

fn is_final(s: TaskState) -> bool {
    matches!(s, TaskState::Succeeded | TaskState::Failed | TaskState::TimedOut)
}

fn command(t: &OpenTask) -> Command {
    let params = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&t.row.params_json)
        .map(struct_from_json)
        .ok();
    Command {
        command_id: t.row.task_id.clone(),
        run_id: t.row.run_id.clone(),
        device_serial: t.row.device_serial.clone(),
        command_type: t.row.command_type as i32,
        params,
        timeout_ms: u32::try_from(t.row.timeout_ms).unwrap_or(u32::MAX),
    }
}

/// One path segment of the artifact convention: no separators, no `..`.
fn segment<'a>(name: &str, v: &'a str) -> Result<&'a str> {
    let ok = !v.is_empty()
        && v != "."
        && v != ".."
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(v)
    } else {
        Err(SchedulerError::Invalid(format!(
            "{name} {v:?} is not a valid path segment"
        )))
    }
}

impl Scheduler {
    /// Connects the store, reloads open work, adopts the nodes that are
    /// connected to a gateway now, and starts the timeout sweep.
    pub async fn start(state: SharedState, config: SchedulerConfig, shutdown: CancellationToken) -> Result<Self> {
        let store = Store::connect(&config.database_url).await?;
        let artifacts = ArtifactStore::from_config(&config.artifacts)?;
        tracing::info!(location = %artifacts.location(), "artifact store ready");
        let mut core = Core::default();
        for n in store.nodes().await? {
            let slots = (n.slots.max(0) as usize).min(config.slots_per_node);
            core.register(&n.node_id, &n.devices, slots, None, n.last_heartbeat_ms);
        }
        let (mut restored, mut unplaceable) = (0, 0);
        for t in store.open_tasks().await? {
            let placed = if t.state == TaskState::Dispatched {
                core.restore_in_flight(t)
            } else {
                core.enqueue(t)
            };
            if placed {
                restored += 1;
            } else {
                unplaceable += 1;
            }
        }
        // Unplaceable: a task whose node or device is no longer known; it
        // stays in the store, visible in its run, and is not dispatched.
        tracing::info!(restored, unplaceable, "scheduler state reloaded");
        let registry = SessionRegistry::new(state.clone(), Duration::from_secs(60));
        let svc = Self {
            inner: Arc::new(Inner {
                store,
                core: Mutex::new(core),
                delivery: Delivery::new(state, registry),
                artifacts,
                config,
            }),
        };
        svc.adopt_connected_nodes().await;
        tokio::spawn(svc.clone().sweep_timeouts(shutdown));
        Ok(svc)
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.inner.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a restart or fail-over: every known node that a gateway holds
    /// a socket for now (the session registry says which) is attached to
    /// that socket and nudged, so its hub pulls work within moments instead
    /// of at the node's next HELLO. A node the registry cannot answer for is
    /// attached by its next HEARTBEAT instead.
    async fn adopt_connected_nodes(&self) {
        let node_ids: Vec<String> = self.core().nodes.keys().cloned().collect();
        let now = chrono::Utc::now().timestamp_millis();
        let mut adopted = Vec::new();
        for node_id in node_ids {
            match self
                .inner
                .delivery
                .registry()
                .sessions_of(NODE_PROTOCOL, &node_id)
                .await
            {
                Ok(sessions) => {
                    // The newest socket holds the node (a reconnect replaces the older).
                    if let Some(s) = sessions.last()
                        && self.core().attach(&node_id, &s.connection_id, true, now)
                    {
                        tracing::info!(node_id = %node_id, connection_id = %s.connection_id,
                            gateway_id = %s.gateway_id, "adopted a node that stayed connected");
                        adopted.push(node_id);
                    }
                }
                Err(err) => {
                    tracing::warn!(node_id = %node_id, error = %err, "session registry unavailable; the node's next heartbeat attaches it");
                }
            }
        }
        for node_id in &adopted {
            self.nudge(node_id).await;
        }
    }

    /// Tells the hub holding `node_id` to pull its commands.
    async fn nudge(&self, node_id: &str) {
        if let Err(err) = self
            .inner
            .delivery
            .send_to_user(NODE_PROTOCOL, node_id, nudge_envelope(NudgeReason::CommandsAvailable))
            .await
        {
            tracing::warn!(node_id, error = %err, "nudge failed");
        }
    }

    /// Starts what the node can take now and persists the decisions.
    async fn dispatch(&self, node_id: &str) -> Result<Vec<Command>> {
        let now = chrono::Utc::now().timestamp_millis();
        let started = self
            .core()
            .dispatch(node_id, now, self.inner.config.timeout_grace_ms as i64);
        let mut out = Vec::with_capacity(started.len());
        for t in &started {
            let deadline = t.deadline_ms.unwrap_or(now);
            self.inner
                .store
                .mark_dispatched(&t.row.task_id, t.row.attempts, now, deadline)
                .await?;
            tracing::info!(
                run_id = %t.row.run_id, node_id, device_serial = %t.row.device_serial,
                command_id = %t.row.task_id, command_type = command_type_name(t.row.command_type), "task dispatched"
            );
            out.push(command(t));
        }
        Ok(out)
    }

    async fn sweep_timeouts(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.inner.config.sweep_interval_ms.max(10)));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let expired = self.core().expire(chrono::Utc::now().timestamp_millis());
            let mut nodes: Vec<String> = Vec::new();
            for t in expired {
                let r = &t.row;
                tracing::warn!(run_id = %r.run_id, node_id = %r.node_id, device_serial = %r.device_serial,
                    command_id = %r.task_id, "task timed out");
                if let Err(err) = self
                    .inner
                    .store
                    .finish(
                        &r.task_id,
                        TaskState::TimedOut,
                        Some("deadline passed"),
                        None,
                        chrono::Utc::now().timestamp_millis(),
                    )
                    .await
                {
                    tracing::error!(run_id = %r.run_id, node_id = %r.node_id, device_serial = %r.device_serial,
                        command_id = %r.task_id, error = %err, "could not record timeout");
                }
                if !nodes.contains(&r.node_id) {
                    nodes.push(r.node_id.clone());
                }
            }
            for n in nodes {
                self.nudge(&n).await;
            }
        }
    }

    async fn create_workflow(&self, r: CreateWorkflowRequest) -> Result<Workflow> {
        if r.workflow_id.is_empty() {
            return Err(SchedulerError::Invalid("workflow_id is empty".into()));
        }
        let recipe = Recipe::from_proto(r.recipe.unwrap_or_default())?;
        let version = self.inner.store.next_workflow_version(&r.workflow_id).await?;
        let row = WorkflowRow {
            workflow_id: r.workflow_id,
            version,
            name: r.name,
            recipe_json: recipe.to_json(),
        };
        self.inner
            .store
            .insert_workflow(&row, chrono::Utc::now().timestamp_millis())
            .await?;
        tracing::info!(workflow_id = %row.workflow_id, version, "workflow stored");
        workflow(row)
    }

    async fn create_run(&self, req: CreateRunRequest) -> Result<Run> {
        let cfg = &self.inner.config;
        let wf = self
            .inner
            .store
            .workflow(&req.workflow_id, 0)
            .await?
            .ok_or_else(|| SchedulerError::WorkflowNotFound(req.workflow_id.clone()))?;
        let recipe = Recipe::parse(&wf.recipe_json)?;
        let clamp = |asked: u32, recipe: Option<u64>, default: u64| {
            let v = if asked > 0 {
                u64::from(asked)
            } else {
                recipe.unwrap_or(default)
            };
            v.clamp(cfg.min_timeout_ms, cfg.max_timeout_ms)
        };
        let task_timeout = clamp(req.task_timeout_ms, recipe.timeout_ms, cfg.task_timeout_ms);
        let upload_timeout = clamp(req.upload_timeout_ms, recipe.upload_timeout_ms, cfg.upload_timeout_ms);
        let run_params = req.params.map(struct_to_json);
        let run_params_json = run_params
            .as_ref()
            .map(|p| serde_json::Value::Object(p.clone()).to_string())
            .unwrap_or_default();
        let params = serde_json::Value::Object(recipe.params_for_run(run_params, upload_timeout)).to_string();
        let run_id = uuid::Uuid::new_v4().to_string();
        let now = chrono::Utc::now().timestamp_millis();

        // Targets: the named devices, plus every device of the named nodes.
        let targets: Vec<(String, String)> = {
            let core = self.core();
            let mut t = Vec::new();
            for serial in &req.device_serials {
                let node = core
                    .node_of(serial)
                    .ok_or_else(|| SchedulerError::UnknownDevice(serial.clone()))?;
                t.push((node.to_owned(), serial.clone()));
            }
            for node_id in &req.node_ids {
                let node = core
                    .nodes
                    .get(node_id)
                    .ok_or_else(|| SchedulerError::UnknownNode(node_id.clone()))?;
                t.extend(node.devices.iter().map(|d| (node_id.clone(), d.clone())));
            }
            t.sort();
            t.dedup();
            t
        };
        if targets.is_empty() {
            return Err(SchedulerError::Invalid("a run needs device_serials or node_ids".into()));
        }
        let tasks: Vec<TaskRow> = targets
            .iter()
            .enumerate()
            .map(|(i, (node, serial))| TaskRow {
                task_id: uuid::Uuid::new_v4().to_string(),
                run_id: run_id.clone(),
                seq: now * 100_000 + i as i64,
                node_id: node.clone(),
                device_serial: serial.clone(),
                command_type: recipe.command_type,
                params_json: params.clone(),
                timeout_ms: task_timeout as i64,
                state: TaskState::Queued,
                attempts: 0,
                error: None,
                result_json: None,
                deadline_ms: None,
            })
            .collect();
        let run = RunRow {
            run_id: run_id.clone(),
            workflow_id: wf.workflow_id.clone(),
            workflow_version: wf.version,
            params_json: run_params_json,
            task_timeout_ms: task_timeout as i64,
            upload_timeout_ms: upload_timeout as i64,
            created_at_ms: now,
        };
        // Persist first: an accepted run survives a crash right after.
        self.inner.store.insert_run(&run, &tasks).await?;
        let mut nodes: Vec<String> = Vec::new();
        {
            let mut core = self.core();
            for t in &tasks {
                core.enqueue(t.clone());
                if !nodes.contains(&t.node_id) {
                    nodes.push(t.node_id.clone());
                }
            }
        }
        tracing::info!(run_id = %run_id, workflow_id = %wf.workflow_id, tasks = tasks.len(), "run created");
        for n in &nodes {
            self.nudge(n).await;
        }
        self.run_view(&run_id).await
    }

    async fn run_view(&self, run_id: &str) -> Result<Run> {
        let (run, tasks) = self
            .inner
            .store
            .run(run_id)
            .await?
            .ok_or_else(|| SchedulerError::RunNotFound(run_id.to_owned()))?;
        let status = if tasks.iter().all(|t| is_final(t.state)) {
            RunStatus::Finished
        } else if tasks.iter().any(|t| t.state != TaskState::Queued) {
            RunStatus::Running
        } else {
            RunStatus::Queued
        };
        Ok(Run {
            run_id: run.run_id,
            workflow_id: run.workflow_id,
            workflow_version: run.workflow_version as u32,
            status: status as i32,
            tasks: tasks
                .into_iter()
                .map(|t| Task {
                    task_id: t.task_id,
                    node_id: t.node_id,
                    device_serial: t.device_serial,
                    state: t.state as i32,
                    error: t.error.unwrap_or_default(),
                    attempts: t.attempts as u32,
                    result: t
                        .result_json
                        .and_then(|j| serde_json::from_str(&j).ok())
                        .map(value_from_json),
                })
                .collect(),
        })
    }

    async fn report(&self, req: ReportResultRequest) -> Result<ReportResultResponse> {
        let or = |default: &str| {
            if req.error.is_empty() {
                default.to_owned()
            } else {
                req.error.clone()
            }
        };
        let (state, error) = match req.status() {
            ResultStatus::Success => (TaskState::Succeeded, None),
            ResultStatus::Timeout => (TaskState::TimedOut, Some(or("timed out on the node"))),
            ResultStatus::Failed => (TaskState::Failed, Some(or("failed"))),
            ResultStatus::Unspecified => return Err(SchedulerError::Invalid("result status is missing".into())),
        };
        let result_json = req.result.clone().map(|v| value_to_json(v).to_string());
        let open = {
            let mut core = self.core();
            match core.open.get(&req.command_id) {
                Some(t) if t.row.node_id != req.node_id => return Err(SchedulerError::WrongNode(req.command_id)),
                Some(_) => core.finish(&req.command_id),
                None => None,
            }
        };
        let Some(t) = open else {
            return self.report_not_open(req, state, error, result_json).await;
        };
        let recorded = self
            .inner
            .store
            .finish(
                &t.row.task_id,
                state,
                error.as_deref(),
                result_json.as_deref(),
                chrono::Utc::now().timestamp_millis(),
            )
            .await?;
        tracing::info!(run_id = %t.row.run_id, node_id = %t.row.node_id, device_serial = %t.row.device_serial,
            command_id = %t.row.task_id, state = relaymesh_proto::enum_names::wire_name(state), "task finished");
        let commands = self.dispatch(&req.node_id).await?;
        Ok(ReportResultResponse { recorded, commands })
    }

    /// A RESULT for a task not open here: resent after a reconnect (already
    /// recorded), late (already TIMED_OUT: dropped, and said so once), or of
    /// a task this scheduler could not place (recorded from the store).
    async fn report_not_open(
        &self,
        req: ReportResultRequest,
        state: TaskState,
        error: Option<String>,
        result_json: Option<String>,
    ) -> Result<ReportResultResponse> {
        let Some(row) = self.inner.store.task(&req.command_id).await? else {
            return Err(SchedulerError::CommandNotFound(req.command_id));
        };
        if row.node_id != req.node_id {
            return Err(SchedulerError::WrongNode(req.command_id));
        }
        let recorded = match row.state {
            TaskState::TimedOut => {
                tracing::warn!(run_id = %row.run_id, node_id = %row.node_id, device_serial = %row.device_serial,
                    command_id = %row.task_id, reported = relaymesh_proto::enum_names::wire_name(state),
                    "late result for a task already timed out; dropped");
                false
            }
            s if is_final(s) => {
                tracing::debug!(run_id = %row.run_id, node_id = %row.node_id, device_serial = %row.device_serial,
                    command_id = %row.task_id, "result already recorded");
                false
            }
            _ => {
                let recorded = self
                    .inner
                    .store
                    .finish(
                        &row.task_id,
                        state,
                        error.as_deref(),
                        result_json.as_deref(),
                        chrono::Utc::now().timestamp_millis(),
                    )
                    .await?;
                tracing::info!(run_id = %row.run_id, node_id = %row.node_id, device_serial = %row.device_serial,
                    command_id = %row.task_id, state = relaymesh_proto::enum_names::wire_name(state),
                    "task finished (was not queued here)");
                recorded
            }
        };
        Ok(ReportResultResponse {
            recorded,
            commands: self.dispatch(&req.node_id).await?,
        })
    }

    async fn reject(&self, req: RejectCommandRequest) -> Result<bool> {
        let requeued = self.core().requeue(&req.command_id, &req.node_id);
        let Some(t) = requeued else {
            tracing::debug!(node_id = %req.node_id, command_id = %req.command_id, "refused command is not open here");
            return Ok(false);
        };
        self.inner.store.mark_queued(&t.row.task_id).await?;
        tracing::warn!(run_id = %t.row.run_id, node_id = %t.row.node_id, device_serial = %t.row.device_serial,
            command_id = %t.row.task_id, reason = req.reason().as_str_name(),
            "node refused a command; re-queued until it says READY");
        Ok(true)
    }

    async fn register_node(&self, r: RegisterNodeRequest) -> Result<RegisterNodeResponse> {
        if r.node_id.is_empty() {
            return Err(SchedulerError::Invalid("node_id is empty".into()));
        }
        let slots = self.slots(r.slots);
        let now = chrono::Utc::now().timestamp_millis();
        let devices = {
            let mut core = self.core();
            core.register(&r.node_id, &r.device_serials, slots, Some(r.connection_id.clone()), now);
            core.nodes
                .get(&r.node_id)
                .map(|n| n.devices.clone())
                .unwrap_or_default()
        };
        self.inner
            .store
            .upsert_node(&NodeRow {
                node_id: r.node_id.clone(),
                devices,
                slots: slots as i64,
                last_heartbeat_ms: now,
            })
            .await?;
        tracing::info!(node_id = %r.node_id, devices = r.device_serials.len(), slots, "node registered");
        Ok(RegisterNodeResponse {
            heartbeat_interval_s: self.inner.config.node_heartbeat_interval_s,
        })
    }

    /// The slots a node gets: what it asked for (0: the default), capped.
    fn slots(&self, asked: u32) -> usize {
        let slots = if asked == 0 {
            self.inner.config.slots_per_node
        } else {
            asked as usize
        };
        slots.min(self.inner.config.slots_per_node)
    }

    async fn heartbeat(&self, r: NodeHeartbeatRequest) -> Result<Vec<Command>> {
        let ready = r.status() == NodeStatus::Ready;
        let now = chrono::Utc::now().timestamp_millis();
        let known = self.core().nodes.contains_key(&r.node_id);
        if !known {
            // A node that registered while no scheduler was active: its hub
            // repeats the HELLO's devices with every heartbeat.
            if r.device_serials.is_empty() || r.connection_id.is_empty() {
                return Err(SchedulerError::UnknownNode(r.node_id));
            }
            self.register_node(RegisterNodeRequest {
                node_id: r.node_id.clone(),
                connection_id: r.connection_id.clone(),
                device_serials: r.device_serials.clone(),
                slots: r.slots,
            })
            .await?;
        }
        let attached = {
            let mut core = self.core();
            let attached = !r.connection_id.is_empty() && core.attach(&r.node_id, &r.connection_id, ready, now);
            if let Some(n) = core.nodes.get_mut(&r.node_id) {
                n.ready = ready;
                n.last_heartbeat_ms = now;
            }
            attached
        };
        if attached {
            tracing::info!(node_id = %r.node_id, connection_id = %r.connection_id, "node attached by its heartbeat");
        }
        let again = self
            .core()
            .unconfirmed(&r.node_id, &r.running, now, RESEND_UNCONFIRMED_MS);
        let mut commands: Vec<Command> = again
            .iter()
            .map(|t| {
                tracing::warn!(run_id = %t.row.run_id, node_id = %t.row.node_id, device_serial = %t.row.device_serial,
                    command_id = %t.row.task_id, "in-flight command not reported by its node; sent again");
                command(t)
            })
            .collect();
        if ready {
            commands.extend(self.dispatch(&r.node_id).await?);
        }
        Ok(commands)
    }

    fn node_disconnected(&self, r: &NodeDisconnectedRequest) {
        let mut core = self.core();
        if let Some(n) = core.nodes.get_mut(&r.node_id)
            && n.connection.as_deref() == Some(r.connection_id.as_str())
        {
            n.connection = None;
            n.ready = false;
            tracing::info!(node_id = %r.node_id, running = n.queues.running(), "node disconnected; in-flight tasks keep their deadline");
        }
    }

    fn list_nodes(&self) -> Vec<Node> {
        let core = self.core();
        let mut nodes: Vec<Node> = core
            .nodes
            .iter()
            .map(|(id, n)| {
                let busy: Vec<&str> = core
                    .open
                    .values()
                    .filter(|t| t.row.node_id == *id && t.deadline_ms.is_some())
                    .map(|t| t.row.device_serial.as_str())
                    .collect();
                Node {
                    node_id: id.clone(),
                    devices: n
                        .devices
                        .iter()
                        .map(|d| Device {
                            serial: d.clone(),
                            busy: busy.contains(&d.as_str()),
                        })
                        .collect(),
                    slots_in_use: n.queues.running() as u32,
                    slots: n.queues.slots() as u32,
                    last_heartbeat_ms: n.last_heartbeat_ms,
                    connected: n.connection.is_some(),
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        nodes
    }

    async fn get_workflow(&self, r: GetWorkflowRequest) -> Result<Workflow> {
        let row = self
            .inner
            .store
            .workflow(&r.workflow_id, i64::from(r.version))
            .await?
            .ok_or(SchedulerError::WorkflowNotFound(r.workflow_id))?;
        workflow(row)
    }

    async fn store_artifact(&self, req: StoreArtifactRequest) -> Result<String> {
        let timestamp = format!("{}.png", req.timestamp);
        let key = Path::from_iter([
            segment("youtube_video_id", &req.youtube_video_id)?,
            segment("node_id", &req.node_id)?,
            segment("device_serial", &req.device_serial)?,
            segment("run_id", &req.run_id)?,
            &timestamp,
        ]);
        let bytes = req.content.len();
        self.inner.artifacts.put_png(&key, req.content).await?;
        tracing::info!(run_id = %req.run_id, node_id = %req.node_id, device_serial = %req.device_serial,
            path = %key, bytes, "artifact stored");
        Ok(key.to_string())
    }
}

fn workflow(row: WorkflowRow) -> Result<Workflow> {
    let recipe = Recipe::parse(&row.recipe_json)?;
    Ok(Workflow {
        workflow_id: row.workflow_id,
        version: row.version as u32,
        name: row.name,
        recipe: Some(recipe.to_proto()),
    })
}

/// What gRPC serves: UNAVAILABLE (reason `standby`) until this instance
/// holds the lease and has loaded its state, then the active [`Scheduler`].
#[derive(Clone, Default)]
pub struct SchedulerApi {
    active: Arc<OnceLock<Scheduler>>,
}

impl SchedulerApi {
    /// Starts answering with `scheduler` (once; later calls are ignored).
    pub fn activate(&self, scheduler: Scheduler) {
        let _ = self.active.set(scheduler);
    }

    fn active(&self) -> std::result::Result<&Scheduler, Status> {
        self.active.get().ok_or_else(|| SchedulerError::Standby.into_status())
    }
}

fn answer<T>(r: Result<T>) -> std::result::Result<Response<T>, Status> {
    r.map(Response::new).map_err(ServiceError::into_status)
}

#[tonic::async_trait]
impl SchedulerService for SchedulerApi {
    async fn create_workflow(
        &self,
        req: Request<CreateWorkflowRequest>,
    ) -> std::result::Result<Response<CreateWorkflowResponse>, Status> {
        let s = self.active()?;
        answer(
            s.create_workflow(req.into_inner())
                .await
                .map(|w| CreateWorkflowResponse { workflow: Some(w) }),
        )
    }

    async fn get_workflow(
        &self,
        req: Request<GetWorkflowRequest>,
    ) -> std::result::Result<Response<GetWorkflowResponse>, Status> {
        let s = self.active()?;
        answer(
            s.get_workflow(req.into_inner())
                .await
                .map(|w| GetWorkflowResponse { workflow: Some(w) }),
        )
    }

    async fn create_run(
        &self,
        req: Request<CreateRunRequest>,
    ) -> std::result::Result<Response<CreateRunResponse>, Status> {
        let s = self.active()?;
        answer(
            s.create_run(req.into_inner())
                .await
                .map(|r| CreateRunResponse { run: Some(r) }),
        )
    }

    async fn get_run(&self, req: Request<GetRunRequest>) -> std::result::Result<Response<GetRunResponse>, Status> {
        let s = self.active()?;
        answer(
            s.run_view(&req.into_inner().run_id)
                .await
                .map(|r| GetRunResponse { run: Some(r) }),
        )
    }

    async fn list_nodes(
        &self,
        _req: Request<ListNodesRequest>,
    ) -> std::result::Result<Response<ListNodesResponse>, Status> {
        let s = self.active()?;
        Ok(Response::new(ListNodesResponse { nodes: s.list_nodes() }))
    }

    async fn register_node(
        &self,
        req: Request<RegisterNodeRequest>,
    ) -> std::result::Result<Response<RegisterNodeResponse>, Status> {
        let s = self.active()?;
        answer(s.register_node(req.into_inner()).await)
    }

    async fn node_heartbeat(
        &self,
        req: Request<NodeHeartbeatRequest>,
    ) -> std::result::Result<Response<NodeHeartbeatResponse>, Status> {
        let s = self.active()?;
        answer(
            s.heartbeat(req.into_inner())
                .await
                .map(|commands| NodeHeartbeatResponse { commands }),
        )
    }

    async fn report_result(
        &self,
        req: Request<ReportResultRequest>,
    ) -> std::result::Result<Response<ReportResultResponse>, Status> {
        let s = self.active()?;
        answer(s.report(req.into_inner()).await)
    }

    async fn pull_commands(
        &self,
        req: Request<PullCommandsRequest>,
    ) -> std::result::Result<Response<PullCommandsResponse>, Status> {
        let s = self.active()?;
        answer(
            s.dispatch(&req.into_inner().node_id)
                .await
                .map(|commands| PullCommandsResponse { commands }),
        )
    }

    async fn reject_command(
        &self,
        req: Request<RejectCommandRequest>,
    ) -> std::result::Result<Response<RejectCommandResponse>, Status> {
        let s = self.active()?;
        answer(
            s.reject(req.into_inner())
                .await
                .map(|requeued| RejectCommandResponse { requeued }),
        )
    }

    async fn node_disconnected(
        &self,
        req: Request<NodeDisconnectedRequest>,
    ) -> std::result::Result<Response<NodeDisconnectedResponse>, Status> {
        let s = self.active()?;
        s.node_disconnected(&req.into_inner());
        Ok(Response::new(NodeDisconnectedResponse {}))
    }

    async fn store_artifact(
        &self,
        req: Request<StoreArtifactRequest>,
    ) -> std::result::Result<Response<StoreArtifactResponse>, Status> {
        let s = self.active()?;
        answer(
            s.store_artifact(req.into_inner())
                .await
                .map(|path| StoreArtifactResponse { path }),
        )
    }
}
