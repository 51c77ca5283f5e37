//! The gRPC surface of the service. Every RPC is documented in
//! `proto/relaymesh/scheduler/v1/`; the ones answered UNIMPLEMENTED here are
//! built by the device-farm issue.

use relaymesh_proto::scheduler::v1::{
    CreateRunRequest, CreateWorkflowRequest, GetRunRequest, GetWorkflowRequest, ListNodesRequest, ListNodesResponse,
    NodeDisconnectedRequest, NodeDisconnectedResponse, NodeHeartbeatRequest, NodeHeartbeatResponse,
    RegisterNodeRequest, RegisterNodeResponse, ReportResultRequest, ReportResultResponse, Run, Workflow,
    scheduler_server::Scheduler,
};
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
pub struct SchedulerService;

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!("relaymesh.scheduler.v1.Scheduler/{rpc} is not implemented yet"))
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn create_workflow(&self, _req: Request<CreateWorkflowRequest>) -> Result<Response<Workflow>, Status> {
        Err(not_yet("CreateWorkflow"))
    }

    async fn get_workflow(&self, _req: Request<GetWorkflowRequest>) -> Result<Response<Workflow>, Status> {
        Err(not_yet("GetWorkflow"))
    }

    async fn create_run(&self, _req: Request<CreateRunRequest>) -> Result<Response<Run>, Status> {
        Err(not_yet("CreateRun"))
    }

    async fn get_run(&self, _req: Request<GetRunRequest>) -> Result<Response<Run>, Status> {
        Err(not_yet("GetRun"))
    }

    async fn list_nodes(&self, _req: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        Err(not_yet("ListNodes"))
    }

    async fn register_node(
        &self,
        _req: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        Err(not_yet("RegisterNode"))
    }

    async fn node_heartbeat(
        &self,
        _req: Request<NodeHeartbeatRequest>,
    ) -> Result<Response<NodeHeartbeatResponse>, Status> {
        Err(not_yet("NodeHeartbeat"))
    }

    async fn report_result(
        &self,
        _req: Request<ReportResultRequest>,
    ) -> Result<Response<ReportResultResponse>, Status> {
        Err(not_yet("ReportResult"))
    }

    async fn node_disconnected(
        &self,
        _req: Request<NodeDisconnectedRequest>,
    ) -> Result<Response<NodeDisconnectedResponse>, Status> {
        Err(not_yet("NodeDisconnected"))
    }
}
