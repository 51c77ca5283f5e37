//! The scheduler's gRPC API. Decisions are made on the in-memory core under
//! its lock, then persisted; commands reach nodes when the hub pulls them
//! (heartbeat READY, a RESULT that frees a slot, or a nudge sent here when
//! work arrives for an idle node).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::path::Path;
use relaymesh_proto::client::v1::ClientProtocol;
use relaymesh_proto::delivery::v1::NudgeReason;
use relaymesh_proto::scheduler::v1::{
    Command, CreateRunRequest, CreateWorkflowRequest, Device, GetRunRequest, GetWorkflowRequest, ListNodesRequest,
    ListNodesResponse, Node, NodeDisconnectedRequest, NodeDisconnectedResponse, NodeHeartbeatRequest,
    NodeHeartbeatResponse, PullCommandsRequest, PullCommandsResponse, RegisterNodeRequest, RegisterNodeResponse,
    ReportResultRequest, ReportResultResponse, Run, StoreArtifactRequest, StoreArtifactResponse, Task, TaskState,
    Workflow, scheduler_server::Scheduler,
};
use relaymesh_rpc::ServiceError;
use relaymesh_state::{Delivery, SessionRegistry, SharedState, nudge_envelope};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::SchedulerConfig;
use crate::artifacts::ArtifactStore;
use crate::core::{Core, OpenTask};
use crate::error::{Result, SchedulerError};
use crate::recipe::Recipe;
use crate::store::{NodeRow, RunRow, Store, TaskRow, WorkflowRow};

#[derive(Clone)]
pub struct SchedulerService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    core: Mutex<Core>,
    delivery: Delivery,
    artifacts: ArtifactStore,
    config: SchedulerConfig,
}

fn now_ms() -> i64 {
    relaymesh_wire::now_ms()
}

fn state_of(s: &str) -> TaskState {
    match s {
        "QUEUED" => TaskState::Queued,
        "DISPATCHED" => TaskState::Dispatched,
        "SUCCEEDED" => TaskState::Succeeded,
        "FAILED" => TaskState::Failed,
        "TIMED_OUT" => TaskState::TimedOut,
        _ => TaskState::Unspecified,
    }
}

fn command(t: &OpenTask) -> Command {
    Command {
        command_id: t.row.task_id.clone(),
        run_id: t.row.run_id.clone(),
        device_serial: t.row.device_serial.clone(),
        command_type: t.row.command_type.clone(),
        params_json: t.row.params_json.clone(),
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

impl SchedulerService {
    /// Connects the store, reloads open work, and starts the timeout sweep.
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
            let placed = if t.state == "DISPATCHED" {
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
        tokio::spawn(svc.clone().sweep_timeouts(shutdown));
        Ok(svc)
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.inner.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the hub holding `node_id` to pull its commands.
    async fn nudge(&self, node_id: &str) {
        if let Err(err) = self
            .inner
            .delivery
            .send_to_user(
                ClientProtocol::Node,
                node_id,
                nudge_envelope(NudgeReason::CommandsAvailable),
            )
            .await
        {
            tracing::warn!(node_id, error = %err, "nudge failed");
        }
    }

    /// Starts what the node can take now and persists the decisions.
    async fn dispatch(&self, node_id: &str) -> Result<Vec<Command>> {
        let now = now_ms();
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
                command_id = %t.row.task_id, command_type = %t.row.command_type, "task dispatched"
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
            let expired = self.core().expire(now_ms());
            let mut nodes: Vec<String> = Vec::new();
            for t in expired {
                let r = &t.row;
                tracing::warn!(run_id = %r.run_id, node_id = %r.node_id, device_serial = %r.device_serial,
                    command_id = %r.task_id, "task timed out");
                if let Err(err) = self
                    .inner
                    .store
                    .finish(&r.task_id, "TIMED_OUT", Some("deadline passed"), None, now_ms())
                    .await
                {
                    tracing::error!(run_id = %r.run_id, node_id = %r.node_id, device_serial = %r.device_serial,
                        error = %err, "could not record timeout");
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
        let params = recipe.params_for_run(&req.params_json, upload_timeout)?;
        let run_id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();

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
                command_type: recipe.command_type.clone(),
                params_json: params.clone(),
                timeout_ms: task_timeout as i64,
                state: "QUEUED".into(),
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
            params_json: req.params_json.clone(),
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
        let finished = tasks
            .iter()
            .all(|t| matches!(t.state.as_str(), "SUCCEEDED" | "FAILED" | "TIMED_OUT"));
        let started = tasks.iter().any(|t| t.state != "QUEUED");
        let status = if finished {
            "finished"
        } else if started {
            "running"
        } else {
            "queued"
        };
        Ok(Run {
            run_id: run.run_id,
            workflow_id: run.workflow_id,
            workflow_version: run.workflow_version as u32,
            status: status.into(),
            tasks: tasks
                .into_iter()
                .map(|t| Task {
                    task_id: t.task_id,
                    node_id: t.node_id,
                    device_serial: t.device_serial,
                    state: state_of(&t.state) as i32,
                    error: t.error.unwrap_or_default(),
                    attempts: t.attempts as u32,
                    result_json: t.result_json.unwrap_or_default(),
                })
                .collect(),
        })
    }

    async fn report(&self, req: ReportResultRequest) -> Result<ReportResultResponse> {
        let (state, error) = match req.status.as_str() {
            "SUCCESS" => ("SUCCEEDED", None),
            "TIMEOUT" => (
                "TIMED_OUT",
                Some(if req.error.is_empty() {
                    "timed out on the node"
                } else {
                    &req.error
                }),
            ),
            "FAILED" => (
                "FAILED",
                Some(if req.error.is_empty() {
                    "failed"
                } else {
                    req.error.as_str()
                }),
            ),
            other => return Err(SchedulerError::Invalid(format!("result status {other:?}"))),
        };
        let open = {
            let mut core = self.core();
            match core.open.get(&req.command_id) {
                Some(t) if t.row.node_id != req.node_id => return Err(SchedulerError::WrongNode(req.command_id)),
                Some(_) => core.finish(&req.command_id),
                None => None,
            }
        };
        let Some(t) = open else {
            // Not open: a result resent after a reconnect, or unknown.
            return match self.inner.store.task(&req.command_id).await? {
                Some(_) => Ok(ReportResultResponse {
                    recorded: false,
                    commands: self.dispatch(&req.node_id).await?,
                }),
                None => Err(SchedulerError::CommandNotFound(req.command_id)),
            };
        };
        let result = (!req.result_json.is_empty()).then_some(req.result_json.as_str());
        let recorded = self
            .inner
            .store
            .finish(&t.row.task_id, state, error, result, now_ms())
            .await?;
        tracing::info!(run_id = %t.row.run_id, node_id = %t.row.node_id, device_serial = %t.row.device_serial,
            command_id = %t.row.task_id, state, "task finished");
        let commands = self.dispatch(&req.node_id).await?;
        Ok(ReportResultResponse { recorded, commands })
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

fn answer<T>(r: Result<T>) -> std::result::Result<Response<T>, Status> {
    r.map(Response::new).map_err(ServiceError::into_status)
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn create_workflow(
        &self,
        req: Request<CreateWorkflowRequest>,
    ) -> std::result::Result<Response<Workflow>, Status> {
        let r = req.into_inner();
        let run = async {
            if r.workflow_id.is_empty() {
                return Err(SchedulerError::Invalid("workflow_id is empty".into()));
            }
            Recipe::parse(&r.recipe_json)?;
            let version = self.inner.store.next_workflow_version(&r.workflow_id).await?;
            let row = WorkflowRow {
                workflow_id: r.workflow_id,
                version,
                name: r.name,
                recipe_json: r.recipe_json,
            };
            self.inner.store.insert_workflow(&row, now_ms()).await?;
            tracing::info!(workflow_id = %row.workflow_id, version, "workflow stored");
            Ok(Workflow {
                workflow_id: row.workflow_id,
                version: version as u32,
                name: row.name,
                recipe_json: row.recipe_json,
            })
        };
        answer(run.await)
    }

    async fn get_workflow(&self, req: Request<GetWorkflowRequest>) -> std::result::Result<Response<Workflow>, Status> {
        let r = req.into_inner();
        let wf = self
            .inner
            .store
            .workflow(&r.workflow_id, i64::from(r.version))
            .await
            .and_then(|w| {
                w.map(|w| Workflow {
                    workflow_id: w.workflow_id,
                    version: w.version as u32,
                    name: w.name,
                    recipe_json: w.recipe_json,
                })
                .ok_or(SchedulerError::WorkflowNotFound(r.workflow_id))
            });
        answer(wf)
    }

    async fn create_run(&self, req: Request<CreateRunRequest>) -> std::result::Result<Response<Run>, Status> {
        answer(SchedulerService::create_run(self, req.into_inner()).await)
    }

    async fn get_run(&self, req: Request<GetRunRequest>) -> std::result::Result<Response<Run>, Status> {
        answer(self.run_view(&req.into_inner().run_id).await)
    }

    async fn list_nodes(
        &self,
        _req: Request<ListNodesRequest>,
    ) -> std::result::Result<Response<ListNodesResponse>, Status> {
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
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn register_node(
        &self,
        req: Request<RegisterNodeRequest>,
    ) -> std::result::Result<Response<RegisterNodeResponse>, Status> {
        let r = req.into_inner();
        let run = async {
            if r.node_id.is_empty() {
                return Err(SchedulerError::Invalid("node_id is empty".into()));
            }
            let slots = if r.slots == 0 {
                self.inner.config.slots_per_node
            } else {
                r.slots as usize
            };
            let slots = slots.min(self.inner.config.slots_per_node);
            let now = now_ms();
            self.core()
                .register(&r.node_id, &r.device_serials, slots, Some(r.connection_id.clone()), now);
            let devices = self
                .core()
                .nodes
                .get(&r.node_id)
                .map(|n| n.devices.clone())
                .unwrap_or_default();
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
        };
        answer(run.await)
    }

    async fn node_heartbeat(
        &self,
        req: Request<NodeHeartbeatRequest>,
    ) -> std::result::Result<Response<NodeHeartbeatResponse>, Status> {
        let r = req.into_inner();
        let known = {
            let mut core = self.core();
            core.nodes
                .get_mut(&r.node_id)
                .map(|n| n.last_heartbeat_ms = now_ms())
                .is_some()
        };
        if !known {
            return answer(Err(SchedulerError::UnknownNode(r.node_id)));
        }
        let commands = if r.status == "READY" {
            self.dispatch(&r.node_id).await
        } else {
            Ok(Vec::new())
        };
        answer(commands.map(|commands| NodeHeartbeatResponse { commands }))
    }

    async fn report_result(
        &self,
        req: Request<ReportResultRequest>,
    ) -> std::result::Result<Response<ReportResultResponse>, Status> {
        answer(self.report(req.into_inner()).await)
    }

    async fn pull_commands(
        &self,
        req: Request<PullCommandsRequest>,
    ) -> std::result::Result<Response<PullCommandsResponse>, Status> {
        answer(
            self.dispatch(&req.into_inner().node_id)
                .await
                .map(|commands| PullCommandsResponse { commands }),
        )
    }

    async fn node_disconnected(
        &self,
        req: Request<NodeDisconnectedRequest>,
    ) -> std::result::Result<Response<NodeDisconnectedResponse>, Status> {
        let r = req.into_inner();
        let mut core = self.core();
        if let Some(n) = core.nodes.get_mut(&r.node_id)
            && n.connection.as_deref() == Some(r.connection_id.as_str())
        {
            n.connection = None;
            tracing::info!(node_id = %r.node_id, running = n.queues.running(), "node disconnected; in-flight tasks keep their deadline");
        }
        Ok(Response::new(NodeDisconnectedResponse {}))
    }

    async fn store_artifact(
        &self,
        req: Request<StoreArtifactRequest>,
    ) -> std::result::Result<Response<StoreArtifactResponse>, Status> {
        answer(
            SchedulerService::store_artifact(self, req.into_inner())
                .await
                .map(|path| StoreArtifactResponse { path }),
        )
    }
}
