//! The WebRTC relay of seed 004: an SDP offer, SDP answer or ICE candidate
//! goes from one player to the other player of the same match session.
//!
//! The match service vets each message (sender and receiver are the
//! session's two players, the session is accepted and not over); the event
//! then goes to the receiver's signal connections on whichever gateway
//! replica holds them. A gateway relays one player's messages one at a time,
//! each call returning after its publish, so they arrive in order.

use relaymesh_proto::client::v1::{
    ClientProtocol, IceCandidateReceived, SdpReceived, SignalResponse, signal_response::Event,
};
use relaymesh_proto::r#match::v1::ValidateSignalRequest;
use relaymesh_proto::signaling::v1::{RelaySignalRequest, RelaySignalResponse, relay_signal_request::Body};
use relaymesh_rpc::{MatchCalls, unary};
use relaymesh_state::{Delivery, event_envelope};
use tonic::Status;

#[derive(Clone)]
pub struct SignalRelay {
    matches: MatchCalls,
    delivery: Delivery,
}

impl SignalRelay {
    pub fn new(matches: MatchCalls, delivery: Delivery) -> Self {
        Self { matches, delivery }
    }

    /// Vets `r` with the match service and delivers it to the receiver.
    /// Refusals are the match service's status, passed on unchanged.
    pub async fn relay(&self, r: RelaySignalRequest) -> Result<RelaySignalResponse, Status> {
        let Some(body) = r.body else {
            return Err(Status::invalid_argument("nothing to relay"));
        };
        let vet = ValidateSignalRequest {
            session_id: r.session_id,
            sender_id: r.sender_id.clone(),
            receiver_id: r.receiver_id.clone(),
        };
        let session = unary!(self.matches, validate_signal, vet)
            .await?
            .into_inner()
            .session
            .unwrap_or_default();
        let session_id = session.session_id;
        let sender_id = r.sender_id;
        let event = match body {
            Body::SdpOffer(sdp) => Event::SdpOfferReceived(SdpReceived {
                sender_id,
                sdp,
                session_id: session_id.clone(),
            }),
            Body::SdpAnswer(sdp) => Event::SdpAnswerReceived(SdpReceived {
                sender_id,
                sdp,
                session_id: session_id.clone(),
            }),
            Body::IceCandidate(candidate) => Event::IceCandidateReceived(IceCandidateReceived {
                sender_id,
                candidate: Some(candidate),
                session_id: session_id.clone(),
            }),
        };
        let envelope = event_envelope(SignalResponse { event: Some(event) }, false);
        self.delivery
            .send_to_user(ClientProtocol::Signal, &r.receiver_id, envelope)
            .await
            .map_err(|err| Status::unavailable(format!("delivery: {err}")))?;
        metrics::counter!("relaymesh_signaling_relayed_total").increment(1);
        Ok(RelaySignalResponse { session_id })
    }
}
