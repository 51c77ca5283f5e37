//! The gRPC surface of the service. Every RPC is documented in
//! `proto/relaymesh/signaling/v1/`; the ones answered UNIMPLEMENTED here are
//! built by the copilot and game-signaling issues.

use relaymesh_proto::signaling::v1::{
    CallClientRequest, CallClientResponse, CheckRateLimitRequest, CheckRateLimitResponse, QueryRequest, QueryResponse,
    RelaySignalRequest, RelaySignalResponse, ResolveCallbackRequest, ResolveCallbackResponse,
    signaling_service_server::SignalingService as SignalingApi,
};
use tonic::{Request, Response, Status};

use crate::relay::SignalRelay;

pub struct SignalingService {
    relay: SignalRelay,
}

impl SignalingService {
    pub(crate) fn new(relay: SignalRelay) -> Self {
        Self { relay }
    }
}

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "relaymesh.signaling.v1.SignalingService/{rpc} is not implemented yet"
    ))
}

#[tonic::async_trait]
impl SignalingApi for SignalingService {
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

    async fn relay_signal(&self, req: Request<RelaySignalRequest>) -> Result<Response<RelaySignalResponse>, Status> {
        self.relay.relay(req.into_inner()).await.map(Response::new)
    }
}
