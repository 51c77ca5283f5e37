//! The gRPC surface of the relay (`proto/relaymesh/media_relay/v1/`): the
//! channel service adds and removes SSRCs, moves the floor, and reads
//! counters. Every refusal goes through [`MediaRelayError`]'s one mapping.

use std::sync::Arc;

use relaymesh_proto::media_relay::v1::{
    AddPeerRequest, AddPeerResponse, GetStatsRequest, GetStatsResponse, RemovePeerRequest, RemovePeerResponse,
    SetFloorRequest, SetFloorResponse, media_relay_service_server,
};
use relaymesh_rpc::ServiceError;
use tonic::{Request, Response, Status};

use crate::error::MediaRelayError;
use crate::rtp::Ssrc;
use crate::stats::RelayCounters;
use crate::table::{Added, FloorApplied, RelayTable};

pub struct MediaRelayService {
    table: Arc<RelayTable>,
    counters: Arc<RelayCounters>,
    /// `host:port` clients send RTP to, fixed once the socket is bound.
    media_addr: String,
    idle_timeout_ms: u64,
}

impl MediaRelayService {
    pub fn new(table: Arc<RelayTable>, counters: Arc<RelayCounters>, media_addr: String, idle_timeout_ms: u64) -> Self {
        Self {
            table,
            counters,
            media_addr,
            idle_timeout_ms,
        }
    }
}

fn refuse(e: MediaRelayError) -> Status {
    metrics::counter!("relaymesh_media_rpc_refused_total", "reason" => e.reason().as_str_name()).increment(1);
    e.into_status()
}

#[tonic::async_trait]
impl media_relay_service_server::MediaRelayService for MediaRelayService {
    async fn add_peer(&self, req: Request<AddPeerRequest>) -> Result<Response<AddPeerResponse>, Status> {
        let req = req.into_inner();
        let ssrc = Ssrc(req.ssrc);
        let added = self
            .table
            .add_peer(
                &req.channel_id,
                ssrc,
                &req.user_id,
                self.table.now_ms(),
                self.idle_timeout_ms,
            )
            .map_err(refuse)?;
        if added == Added::New {
            tracing::info!(channel_id = %req.channel_id, ssrc = %ssrc, user_id = %req.user_id, "media peer added");
        }
        Ok(Response::new(AddPeerResponse {
            media_addr: self.media_addr.clone(),
        }))
    }

    async fn remove_peer(&self, req: Request<RemovePeerRequest>) -> Result<Response<RemovePeerResponse>, Status> {
        let req = req.into_inner();
        let ssrc = Ssrc(req.ssrc);
        self.table.remove_peer(&req.channel_id, ssrc).map_err(refuse)?;
        tracing::info!(channel_id = %req.channel_id, ssrc = %ssrc, "media peer removed");
        Ok(Response::new(RemovePeerResponse {}))
    }

    async fn set_floor(&self, req: Request<SetFloorRequest>) -> Result<Response<SetFloorResponse>, Status> {
        let req = req.into_inner();
        // 0 is the contract's "nobody holds the floor".
        let holder = (req.holder_ssrc != 0).then_some(Ssrc(req.holder_ssrc));
        let applied = self
            .table
            .set_floor(&req.channel_id, req.floor_controlled, holder, req.floor_version)
            .map_err(refuse)?;
        if let FloorApplied::Stale { current } = applied {
            tracing::debug!(
                channel_id = %req.channel_id,
                floor_version = req.floor_version,
                current,
                "stale media floor ignored"
            );
            return Ok(Response::new(SetFloorResponse {}));
        }
        tracing::debug!(
            channel_id = %req.channel_id,
            floor_controlled = req.floor_controlled,
            holder_ssrc = req.holder_ssrc,
            "media floor set"
        );
        Ok(Response::new(SetFloorResponse {}))
    }

    async fn get_stats(&self, _req: Request<GetStatsRequest>) -> Result<Response<GetStatsResponse>, Status> {
        Ok(Response::new(self.counters.snapshot(&self.table)))
    }
}
