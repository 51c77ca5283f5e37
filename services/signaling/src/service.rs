//! The gRPC surface of the service. Every RPC is documented in
//! `proto/relaymesh/signaling/v1/`: the copilot callbacks and rate limit
//! (seed 001), and the WebRTC relay (seed 004, `relay.rs`).

use std::sync::Arc;
use std::time::Duration;

use relaymesh_proto::signaling::v1::{
    CallClientRequest, CallClientResponse, CallbackKind, CheckRateLimitRequest, CheckRateLimitResponse,
    DropSessionRequest, DropSessionResponse, RelaySignalRequest, RelaySignalResponse, ResolveCallbackRequest,
    ResolveCallbackResponse, signaling_service_server::SignalingService as SignalingApi,
};
use relaymesh_rpc::ServiceError;
use relaymesh_state::{ConnectionId, SharedState};
use tonic::{Request, Response, Status};

use crate::SignalingConfig;
use crate::callbacks::CallbackBroker;
use crate::error::SignalingError;
use crate::relay::SignalRelay;

pub struct SignalingService {
    broker: Arc<CallbackBroker>,
    state: SharedState,
    config: SignalingConfig,
    relay: SignalRelay,
}

impl SignalingService {
    pub(crate) fn new(
        broker: Arc<CallbackBroker>,
        state: SharedState,
        config: SignalingConfig,
        relay: SignalRelay,
    ) -> Self {
        Self {
            broker,
            state,
            config,
            relay,
        }
    }
}

fn kind_of(raw: i32) -> CallbackKind {
    CallbackKind::try_from(raw).unwrap_or(CallbackKind::Unspecified)
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A requested timeout; None when unset, an error when negative.
fn timeout_of(d: Option<prost_types::Duration>) -> Result<Option<Duration>, SignalingError> {
    d.map(|d| Duration::try_from(d).map_err(|_| SignalingError::Invalid("timeout must be positive")))
        .transpose()
}

#[tonic::async_trait]
impl SignalingApi for SignalingService {
    async fn call_client(&self, req: Request<CallClientRequest>) -> Result<Response<CallClientResponse>, Status> {
        let req = req.into_inner();
        let timeout = timeout_of(req.timeout).map_err(ServiceError::into_status)?;
        let conn = ConnectionId::new(req.connection_id);
        let (request_id, data) = self
            .broker
            .call(&conn, kind_of(req.kind), req.data, timeout)
            .await
            .map_err(ServiceError::into_status)?;
        Ok(Response::new(CallClientResponse { request_id, data }))
    }

    async fn resolve_callback(
        &self,
        req: Request<ResolveCallbackRequest>,
    ) -> Result<Response<ResolveCallbackResponse>, Status> {
        let req = req.into_inner();
        let conn = ConnectionId::new(req.connection_id);
        self.broker
            .resolve(&conn, &req.request_id, kind_of(req.kind), req.data)
            .await
            .map_err(ServiceError::into_status)?;
        Ok(Response::new(ResolveCallbackResponse {}))
    }

    async fn drop_session(&self, req: Request<DropSessionRequest>) -> Result<Response<DropSessionResponse>, Status> {
        let conn = ConnectionId::new(req.into_inner().connection_id);
        let released = self
            .broker
            .drop_session(&conn)
            .await
            .map_err(ServiceError::into_status)?;
        Ok(Response::new(DropSessionResponse { released }))
    }

    async fn check_rate_limit(
        &self,
        req: Request<CheckRateLimitRequest>,
    ) -> Result<Response<CheckRateLimitResponse>, Status> {
        let req = req.into_inner();
        let key = if self.config.share_rate_limit {
            format!("rl:user:{}", req.user_id)
        } else {
            format!("rl:conn:{}", req.connection_id)
        };
        if key.ends_with(':') {
            return Err(SignalingError::Invalid("user_id and connection_id are required").into_status());
        }
        let limit = self.config.rate_limit_requests;
        let decision = self
            .state
            .rate_limit(&key, limit, self.config.rate_limit_window())
            .await
            .map_err(|e| SignalingError::from(e).into_status())?;
        if !decision.allowed {
            metrics::counter!("relaymesh_signaling_rate_limited_total").increment(1);
        }
        Ok(Response::new(CheckRateLimitResponse {
            allowed: decision.allowed,
            limit,
            remaining: decision.remaining,
            retry_after: (!decision.allowed).then(|| duration(decision.reset_after)),
        }))
    }

    async fn relay_signal(&self, req: Request<RelaySignalRequest>) -> Result<Response<RelaySignalResponse>, Status> {
        self.relay.relay(req.into_inner()).await.map(Response::new)
    }
}
