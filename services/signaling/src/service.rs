//! The gRPC surface of the service. Every RPC is documented in
//! `proto/relaymesh/signaling/v1/`; the ones answered UNIMPLEMENTED here are
//! built by the copilot and game-signaling issues.

use relaymesh_proto::signaling::v1::{
    CallClientRequest, CallClientResponse, CheckRateLimitRequest, CheckRateLimitResponse, QueryRequest, QueryResponse,
    RelaySignalRequest, RelaySignalResponse, ResolveCallbackRequest, ResolveCallbackResponse,
    signaling_server::Signaling,
};
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
pub struct SignalingService;

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!("relaymesh.signaling.v1.Signaling/{rpc} is not implemented yet"))
}

#[tonic::async_trait]
impl Signaling for SignalingService {
    async fn query(&self, _req: Request<QueryRequest>) -> Result<Response<QueryResponse>, Status> {
        Err(not_yet("Query"))
    }

    async fn call_client(&self, _req: Request<CallClientRequest>) -> Result<Response<CallClientResponse>, Status> {
        Err(not_yet("CallClient"))
    }

    async fn resolve_callback(
        &self,
        _req: Request<ResolveCallbackRequest>,
    ) -> Result<Response<ResolveCallbackResponse>, Status> {
        Err(not_yet("ResolveCallback"))
    }

    async fn check_rate_limit(
        &self,
        _req: Request<CheckRateLimitRequest>,
    ) -> Result<Response<CheckRateLimitResponse>, Status> {
        Err(not_yet("CheckRateLimit"))
    }

    async fn relay_signal(&self, _req: Request<RelaySignalRequest>) -> Result<Response<RelaySignalResponse>, Status> {
        Err(not_yet("RelaySignal"))
    }
}
