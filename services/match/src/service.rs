//! The gRPC surface of the service. Every RPC is documented in
//! `proto/relaymesh/match/v1/`; the ones answered UNIMPLEMENTED here are
//! built by the game-signaling issue.

use relaymesh_proto::r#match::v1::{
    GetLobbyRequest, JoinLobbyRequest, LeaveLobbyRequest, LeaveLobbyResponse, LobbySnapshot, MatchActionRequest,
    MatchSession, ReportConnectionRequest, RequestMatchRequest, ValidateSignalRequest, match_server::Match,
};
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
pub struct MatchService;

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!("relaymesh.match.v1.Match/{rpc} is not implemented yet"))
}

#[tonic::async_trait]
impl Match for MatchService {
    async fn join_lobby(&self, _req: Request<JoinLobbyRequest>) -> Result<Response<LobbySnapshot>, Status> {
        Err(not_yet("JoinLobby"))
    }

    async fn leave_lobby(&self, _req: Request<LeaveLobbyRequest>) -> Result<Response<LeaveLobbyResponse>, Status> {
        Err(not_yet("LeaveLobby"))
    }

    async fn get_lobby(&self, _req: Request<GetLobbyRequest>) -> Result<Response<LobbySnapshot>, Status> {
        Err(not_yet("GetLobby"))
    }

    async fn request_match(&self, _req: Request<RequestMatchRequest>) -> Result<Response<MatchSession>, Status> {
        Err(not_yet("RequestMatch"))
    }

    async fn accept_match(&self, _req: Request<MatchActionRequest>) -> Result<Response<MatchSession>, Status> {
        Err(not_yet("AcceptMatch"))
    }

    async fn decline_match(&self, _req: Request<MatchActionRequest>) -> Result<Response<MatchSession>, Status> {
        Err(not_yet("DeclineMatch"))
    }

    async fn cancel_match(&self, _req: Request<MatchActionRequest>) -> Result<Response<MatchSession>, Status> {
        Err(not_yet("CancelMatch"))
    }

    async fn validate_signal(&self, _req: Request<ValidateSignalRequest>) -> Result<Response<MatchSession>, Status> {
        Err(not_yet("ValidateSignal"))
    }

    async fn report_connection(
        &self,
        _req: Request<ReportConnectionRequest>,
    ) -> Result<Response<MatchSession>, Status> {
        Err(not_yet("ReportConnection"))
    }
}
