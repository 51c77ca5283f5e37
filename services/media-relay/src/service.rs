//! The gRPC surface of the service. Every RPC is documented in
//! `proto/relaymesh/media_relay/v1/`; the ones answered UNIMPLEMENTED here are
//! built by the LiveChat issue.

use relaymesh_proto::media_relay::v1::{
    AddPeerRequest, AddPeerResponse, GetStatsRequest, RelayStats, RemovePeerRequest, RemovePeerResponse,
    SetFloorRequest, SetFloorResponse, media_relay_server::MediaRelay,
};
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
pub struct MediaRelayService;

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "relaymesh.media_relay.v1.MediaRelay/{rpc} is not implemented yet"
    ))
}

#[tonic::async_trait]
impl MediaRelay for MediaRelayService {
    async fn add_peer(&self, _req: Request<AddPeerRequest>) -> Result<Response<AddPeerResponse>, Status> {
        Err(not_yet("AddPeer"))
    }

    async fn remove_peer(&self, _req: Request<RemovePeerRequest>) -> Result<Response<RemovePeerResponse>, Status> {
        Err(not_yet("RemovePeer"))
    }

    async fn set_floor(&self, _req: Request<SetFloorRequest>) -> Result<Response<SetFloorResponse>, Status> {
        Err(not_yet("SetFloor"))
    }

    async fn get_stats(&self, _req: Request<GetStatsRequest>) -> Result<Response<RelayStats>, Status> {
        Err(not_yet("GetStats"))
    }
}
