//! The backend HTTP API of seed 002: workflows, runs and nodes for
//! operators (a JWT with the `operator` role), result callbacks and artifact
//! uploads for nodes (`X-Node-Auth`). A browser page never runs work on
//! devices by itself: every call that does needs one of those credentials.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use relaymesh_proto::auth::v1::VerifyNodeSecretRequest;
use relaymesh_proto::json::{struct_from_json, struct_to_json, value_from_json, value_to_json};
use relaymesh_proto::scheduler::v1::{
    CommandType, CreateRunRequest, CreateWorkflowRequest, GetRunRequest, GetWorkflowRequest, ListNodesRequest, Recipe,
    ReportResultRequest, Run, RunStatus, StoreArtifactRequest, TaskState, Workflow,
};
use relaymesh_wire::node::{CommandResult, parse_wire_name, wire_name};
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

use crate::Shared;
use crate::identity::{self, AuthFailure};

/// Largest artifact upload (a screenshot).
const MAX_ARTIFACT_BYTES: usize = 16 * 1024 * 1024;

pub fn router() -> axum::Router<Arc<Shared>> {
    axum::Router::new()
        .route("/api/v1/workflows", post(create_workflow))
        .route("/api/v1/workflows/{id}", get(get_workflow))
        .route("/api/v1/runs", post(create_run))
        .route("/api/v1/runs/{run_id}", get(get_run))
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/nodes/{node_id}/results", post(node_result))
        .route(
            "/api/v1/nodes/{node_id}/artifacts",
            post(node_artifact).layer(DefaultBodyLimit::max(MAX_ARTIFACT_BYTES)),
        )
}

/// An API error: HTTP status plus `{"error": {"code", "message"}}`.
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl From<Status> for ApiError {
    /// The one mapping from a service's gRPC status to HTTP.
    fn from(s: Status) -> Self {
        let status = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable | Code::Unimplemented => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // The scheduler's ErrorReason, in snake case: `workflow_not_found`.
        let code = relaymesh_rpc::reason_of::<relaymesh_proto::scheduler::v1::ErrorReason>(&s).map_or_else(
            || "error".to_owned(),
            |r| r.as_str_name().trim_start_matches("ERROR_REASON_").to_ascii_lowercase(),
        );
        Self {
            status,
            code,
            message: s.message().to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The JSON body, parsed only after the caller is authenticated (so a
/// stranger learns nothing about what the endpoint accepts).
fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()))
}

/// Requires a bearer JWT whose roles include `operator`.
async fn operator(gw: &Shared, headers: &HeaderMap) -> ApiResult<()> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match identity::verify(gw, token).await {
        Ok(who) if who.roles.iter().any(|r| r == "operator") => Ok(()),
        Ok(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_operator",
            "the operator role is required",
        )),
        Err(AuthFailure::Unavailable) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "auth unavailable",
        )),
        Err(fail) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            fail.to_string(),
        )),
    }
}

/// Requires `X-Node-Auth` to carry the node agents' shared secret.
async fn node_secret(gw: &Shared, headers: &HeaderMap) -> ApiResult<()> {
    let presented = headers
        .get("x-node-auth")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if presented.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "X-Node-Auth is required",
        ));
    }
    let mut auth = gw.upstreams.auth.clone();
    auth.verify_node_secret(VerifyNodeSecretRequest {
        presented: presented.to_owned(),
    })
    .await?;
    Ok(())
}

#[derive(Deserialize)]
struct NewWorkflow {
    workflow_id: String,
    #[serde(default)]
    name: String,
    recipe: RecipeJson,
}

/// A recipe as the API speaks it (README, "Device farm"); converted to and
/// from the scheduler's `Recipe` here and nowhere else.
#[derive(Serialize, Deserialize)]
struct RecipeJson {
    command_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    params: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upload_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    steps: Option<serde_json::Value>,
}

impl RecipeJson {
    /// An unknown command type is refused here, before any service call.
    fn into_proto(self) -> ApiResult<Recipe> {
        let command_type: CommandType = parse_wire_name(&self.command_type).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_command_type",
                format!("unknown command type {:?}", self.command_type),
            )
        })?;
        Ok(Recipe {
            command_type: command_type as i32,
            params: self.params.map(struct_from_json),
            timeout_ms: self.timeout_ms.unwrap_or(0),
            upload_timeout_ms: self.upload_timeout_ms.unwrap_or(0),
            steps: self.steps.map(value_from_json),
        })
    }

    fn from_proto(r: Recipe) -> Self {
        Self {
            command_type: wire_name(r.command_type()).to_owned(),
            params: r.params.map(struct_to_json),
            timeout_ms: (r.timeout_ms > 0).then_some(r.timeout_ms),
            upload_timeout_ms: (r.upload_timeout_ms > 0).then_some(r.upload_timeout_ms),
            steps: r.steps.map(value_to_json),
        }
    }
}

#[derive(Serialize)]
struct WorkflowView {
    workflow_id: String,
    version: u32,
    name: String,
    recipe: Option<RecipeJson>,
}

impl From<Workflow> for WorkflowView {
    fn from(w: Workflow) -> Self {
        Self {
            recipe: w.recipe.map(RecipeJson::from_proto),
            workflow_id: w.workflow_id,
            version: w.version,
            name: w.name,
        }
    }
}

/// The workflow in a scheduler answer that must carry one.
fn workflow_of(w: Option<Workflow>) -> ApiResult<WorkflowView> {
    w.map(WorkflowView::from).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "internal",
            "scheduler answered without a workflow",
        )
    })
}

fn run_of(r: Option<Run>) -> ApiResult<RunView> {
    r.map(RunView::from)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_GATEWAY, "internal", "scheduler answered without a run"))
}

async fn create_workflow(
    State(gw): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    operator(&gw, &headers).await?;
    let body: NewWorkflow = json_body(&body)?;
    let req = CreateWorkflowRequest {
        workflow_id: body.workflow_id,
        name: body.name,
        recipe: Some(body.recipe.into_proto()?),
    };
    let w = gw.upstreams.scheduler.clone().create_workflow(req).await?.into_inner();
    Ok((StatusCode::CREATED, Json(workflow_of(w.workflow)?)))
}

#[derive(Deserialize)]
struct VersionQuery {
    #[serde(default)]
    version: u32,
}

async fn get_workflow(
    State(gw): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<VersionQuery>,
) -> ApiResult<Json<WorkflowView>> {
    operator(&gw, &headers).await?;
    let req = GetWorkflowRequest {
        workflow_id: id,
        version: q.version,
    };
    let w = gw.upstreams.scheduler.clone().get_workflow(req).await?.into_inner();
    Ok(Json(workflow_of(w.workflow)?))
}

#[derive(Deserialize)]
struct NewRun {
    workflow_id: String,
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    nodes: Vec<String>,
    #[serde(default)]
    params: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    task_timeout_ms: u32,
    #[serde(default)]
    upload_timeout_ms: u32,
}

#[derive(Serialize)]
struct TaskView {
    task_id: String,
    node_id: String,
    device_serial: String,
    state: &'static str,
    attempts: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct RunView {
    run_id: String,
    workflow_id: String,
    workflow_version: u32,
    status: &'static str,
    tasks: Vec<TaskView>,
}

impl From<Run> for RunView {
    fn from(r: Run) -> Self {
        let status = r.status();
        Self {
            run_id: r.run_id,
            workflow_id: r.workflow_id,
            workflow_version: r.workflow_version,
            status: match status {
                RunStatus::Queued => "queued",
                RunStatus::Running => "running",
                RunStatus::Finished => "finished",
                RunStatus::Unspecified => "unknown",
            },
            tasks: r
                .tasks
                .into_iter()
                .map(|t| TaskView {
                    state: match TaskState::try_from(t.state).unwrap_or(TaskState::Unspecified) {
                        TaskState::Queued => "QUEUED",
                        TaskState::Dispatched | TaskState::Running => "RUNNING",
                        TaskState::Succeeded => "SUCCEEDED",
                        TaskState::Failed => "FAILED",
                        TaskState::TimedOut => "TIMED_OUT",
                        TaskState::Unspecified => "UNKNOWN",
                    },
                    result: t.result.map(value_to_json),
                    task_id: t.task_id,
                    node_id: t.node_id,
                    device_serial: t.device_serial,
                    attempts: t.attempts,
                    error: t.error,
                })
                .collect(),
        }
    }
}

async fn create_run(State(gw): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> ApiResult<impl IntoResponse> {
    operator(&gw, &headers).await?;
    let body: NewRun = json_body(&body)?;
    let req = CreateRunRequest {
        workflow_id: body.workflow_id,
        device_serials: body.devices,
        node_ids: body.nodes,
        params: body.params.map(struct_from_json),
        task_timeout_ms: body.task_timeout_ms,
        upload_timeout_ms: body.upload_timeout_ms,
    };
    let run = gw.upstreams.scheduler.clone().create_run(req).await?.into_inner();
    Ok((StatusCode::CREATED, Json(run_of(run.run)?)))
}

async fn get_run(
    State(gw): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> ApiResult<Json<RunView>> {
    operator(&gw, &headers).await?;
    let run = gw
        .upstreams
        .scheduler
        .clone()
        .get_run(GetRunRequest { run_id })
        .await?
        .into_inner();
    Ok(Json(run_of(run.run)?))
}

async fn list_nodes(State(gw): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult<Response> {
    operator(&gw, &headers).await?;
    let nodes = gw
        .upstreams
        .scheduler
        .clone()
        .list_nodes(ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    let view: Vec<_> = nodes
        .into_iter()
        .map(|n| {
            serde_json::json!({
                "node_id": n.node_id,
                "connected": n.connected,
                "slots": n.slots,
                "slots_in_use": n.slots_in_use,
                "last_heartbeat_ms": n.last_heartbeat_ms,
                "devices": n.devices.into_iter().map(|d| serde_json::json!({"serial": d.serial, "busy": d.busy})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "nodes": view })).into_response())
}

async fn node_result(
    State(gw): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(node_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    node_secret(&gw, &headers).await?;
    // The body is a RESULT payload, the type the socket path reads.
    let body: CommandResult = json_body(&body)?;
    let req = ReportResultRequest {
        node_id,
        command_id: body.command_id.to_string(),
        status: body.status as i32,
        error: body.error.unwrap_or_default(),
        result: body.result.map(value_from_json),
    };
    let r = gw.upstreams.scheduler.clone().report_result(req).await?.into_inner();
    Ok(Json(serde_json::json!({ "recorded": r.recorded })))
}

#[derive(Deserialize)]
struct ArtifactQuery {
    device_serial: String,
    run_id: String,
    video_id: String,
    timestamp: i64,
}

async fn node_artifact(
    State(gw): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(node_id): Path<String>,
    Query(q): Query<ArtifactQuery>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    node_secret(&gw, &headers).await?;
    let req = StoreArtifactRequest {
        node_id,
        device_serial: q.device_serial,
        run_id: q.run_id,
        youtube_video_id: q.video_id,
        timestamp: q.timestamp,
        content: body.to_vec(),
    };
    let path = gw
        .upstreams
        .scheduler
        .clone()
        .store_artifact(req)
        .await?
        .into_inner()
        .path;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "path": path }))))
}
