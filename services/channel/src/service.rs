//! The gRPC surface of the service. Every RPC is documented in
//! `proto/relaymesh/channel/v1/`; the ones answered UNIMPLEMENTED here are
//! built by the LiveChat issue.

use relaymesh_proto::channel::v1::{
    ChannelInfo, CreateChannelRequest, DeleteChannelRequest, DeleteChannelResponse, DropSessionRequest,
    DropSessionResponse, FloorRequest, FloorResponse, JoinChannelRequest, JoinChannelResponse, LeaveChannelRequest,
    LeaveChannelResponse, SendMessageRequest, SendMessageResponse, UpdateChannelRequest, channel_server::Channel,
};
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
pub struct ChannelService;

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!("relaymesh.channel.v1.Channel/{rpc} is not implemented yet"))
}

#[tonic::async_trait]
impl Channel for ChannelService {
    async fn create_channel(&self, _req: Request<CreateChannelRequest>) -> Result<Response<ChannelInfo>, Status> {
        Err(not_yet("CreateChannel"))
    }

    async fn join_channel(&self, _req: Request<JoinChannelRequest>) -> Result<Response<JoinChannelResponse>, Status> {
        Err(not_yet("JoinChannel"))
    }

    async fn leave_channel(
        &self,
        _req: Request<LeaveChannelRequest>,
    ) -> Result<Response<LeaveChannelResponse>, Status> {
        Err(not_yet("LeaveChannel"))
    }

    async fn update_channel(&self, _req: Request<UpdateChannelRequest>) -> Result<Response<ChannelInfo>, Status> {
        Err(not_yet("UpdateChannel"))
    }

    async fn delete_channel(
        &self,
        _req: Request<DeleteChannelRequest>,
    ) -> Result<Response<DeleteChannelResponse>, Status> {
        Err(not_yet("DeleteChannel"))
    }

    async fn send_message(&self, _req: Request<SendMessageRequest>) -> Result<Response<SendMessageResponse>, Status> {
        Err(not_yet("SendMessage"))
    }

    async fn request_floor(&self, _req: Request<FloorRequest>) -> Result<Response<FloorResponse>, Status> {
        Err(not_yet("RequestFloor"))
    }

    async fn release_floor(&self, _req: Request<FloorRequest>) -> Result<Response<FloorResponse>, Status> {
        Err(not_yet("ReleaseFloor"))
    }

    async fn drop_session(&self, _req: Request<DropSessionRequest>) -> Result<Response<DropSessionResponse>, Status> {
        Err(not_yet("DropSession"))
    }
}
