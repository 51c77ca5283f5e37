//! The mesh's typed calls to the services that take them in process: one
//! name each, for every caller (the gateway, and signaling's calls to the
//! match service). Use [`crate::unary!`] to make a call.

use relaymesh_proto::channel::v1::channel_service_client::ChannelServiceClient;
use relaymesh_proto::channel::v1::channel_service_server::ChannelService;
use relaymesh_proto::r#match::v1::match_service_client::MatchServiceClient;
use relaymesh_proto::r#match::v1::match_service_server::MatchService;
use relaymesh_proto::signaling::v1::signaling_service_client::SignalingServiceClient;
use relaymesh_proto::signaling::v1::signaling_service_server::SignalingService;

use crate::{LocalOrRemote, RpcChannel};

/// Calls to the channel service.
pub type ChannelCalls = LocalOrRemote<ChannelServiceClient<RpcChannel>, dyn ChannelService>;
/// Calls to the signaling service.
pub type SignalingCalls = LocalOrRemote<SignalingServiceClient<RpcChannel>, dyn SignalingService>;
/// Calls to the match service.
pub type MatchCalls = LocalOrRemote<MatchServiceClient<RpcChannel>, dyn MatchService>;
