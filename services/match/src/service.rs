//! The gRPC surface of the match service (`proto/relaymesh/match/v1/`), and
//! what each applied transition tells the players.

use std::sync::Arc;
use std::time::Duration;

use relaymesh_proto::client::v1::{
    ClientProtocol, MatchFailed, MatchFailure, MatchRequestAccepted, MatchRequestCancelled, MatchRequestDeclined,
    MatchRequestExpired, MatchRequestReceived, MatchRequestSent, MatchStarted, SignalResponse, signal_response::Event,
};
use relaymesh_proto::r#match::v1::{
    AcceptMatchRequest, AcceptMatchResponse, CancelMatchRequest, CancelMatchResponse, DeclineMatchRequest,
    DeclineMatchResponse, GetLobbyRequest, GetLobbyResponse, JoinLobbyRequest, JoinLobbyResponse, LeaveLobbyRequest,
    LeaveLobbyResponse, LobbyMember, MatchSession, MatchState, ReportConnectionRequest, ReportConnectionResponse,
    RequestMatchRequest, RequestMatchResponse, ValidateSignalRequest, ValidateSignalResponse,
    match_service_server::MatchService as MatchApi,
};
use relaymesh_rpc::ServiceError;
use relaymesh_state::{Delivery, SessionRegistry, SharedState, event_envelope};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use crate::MatchConfig;
use crate::error::{MatchError, Result};
use crate::fsm::Action;
use crate::lobby::Lobby;
use crate::sessions::{Applied, Sessions};

#[derive(Clone)]
pub struct MatchService {
    inner: Arc<Inner>,
}

struct Inner {
    config: MatchConfig,
    lobby: Lobby,
    sessions: Sessions,
    delivery: Delivery,
    tasks: TaskTracker,
}

impl MatchService {
    /// The service, with its lobby broadcaster and deadline sweeper running
    /// until `shutdown`.
    pub fn start(state: SharedState, config: MatchConfig, shutdown: CancellationToken) -> Self {
        let registry = SessionRegistry::new(state.clone(), Duration::from_secs(60));
        let delivery = Delivery::new(state.clone(), registry);
        let inner = Arc::new(Inner {
            lobby: Lobby::new(state.clone()),
            sessions: Sessions::new(state),
            delivery: delivery.clone(),
            tasks: TaskTracker::new(),
            config,
        });
        let gap = inner.config.lobby_gap();
        inner
            .tasks
            .spawn(inner.lobby.clone().broadcast_loop(delivery, gap, shutdown.clone()));
        inner.tasks.spawn(sweep_loop(inner.clone(), shutdown));
        inner.tasks.close();
        Self { inner }
    }

    /// Waits until the background tasks have stopped (after shutdown).
    pub async fn stopped(&self) {
        self.inner.tasks.wait().await;
    }
}

/// Applies the deadline of every overdue session, on every replica: the
/// compare-and-set lets one replica win each, and only the winner notifies.
async fn sweep_loop(inner: Arc<Inner>, shutdown: CancellationToken) {
    let every = Duration::from_millis(inner.config.match_sweep_interval_ms.max(10));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let overdue = match inner.sessions.overdue().await {
            Ok(ids) => ids,
            Err(err) => {
                tracing::warn!(error = %err, "deadline sweep failed");
                continue;
            }
        };
        for id in overdue {
            match inner.apply(&id, None, Action::Deadline, |_| Ok(())).await {
                Ok(_) | Err(MatchError::Contended(_)) => {}
                Err(MatchError::Refused { .. } | MatchError::SessionNotFound(_)) => {
                    if let Err(err) = inner.sessions.drop_deadline(&id).await {
                        tracing::warn!(session_id = %id, error = %err, "deadline not dropped");
                    }
                }
                Err(err) => tracing::warn!(session_id = %id, error = %err, "deadline not applied"),
            }
        }
    }
}

fn event(e: Event) -> SignalResponse {
    SignalResponse { event: Some(e) }
}

impl Inner {
    /// Sends `e` to every signal connection of `player`; best effort.
    async fn tell(&self, player: &str, e: Event) {
        let envelope = event_envelope(event(e), false);
        if let Err(err) = self
            .delivery
            .send_to_user(ClientProtocol::Signal, player, envelope)
            .await
        {
            tracing::warn!(player_id = player, error = %err, "match event not delivered");
        }
    }

    async fn apply(
        &self,
        id: &str,
        player: Option<&str>,
        action: Action,
        check: impl Fn(&MatchSession) -> Result<()>,
    ) -> Result<MatchSession> {
        let negotiation = Duration::from_millis(self.config.match_negotiation_timeout_ms);
        let applied = self.sessions.apply(id, player, action, negotiation, check).await?;
        if applied.changed() {
            self.announce(&applied, action).await?;
        }
        Ok(applied.after)
    }

    /// Tells the players what one transition means for them, and keeps the
    /// lobby's statuses in step.
    async fn announce(&self, a: &Applied, action: Action) -> Result<()> {
        let s = &a.after;
        let id = s.session_id.clone();
        let (req, tgt) = (s.requester_id.as_str(), s.target_id.as_str());
        let was = a.before.state();
        match s.state() {
            MatchState::Accepted => {
                self.lobby.set_busy(req, &id).await?;
                self.lobby.set_busy(tgt, &id).await?;
                let e = Event::MatchRequestAccepted(MatchRequestAccepted {
                    accepter_id: tgt.to_owned(),
                    accepter_name: s.target_name.clone(),
                    session_id: id,
                });
                self.tell(req, e.clone()).await;
                self.tell(tgt, e).await;
            }
            MatchState::Declined => {
                self.tell(
                    req,
                    Event::MatchRequestDeclined(MatchRequestDeclined {
                        decliner_id: tgt.to_owned(),
                        decliner_name: s.target_name.clone(),
                        session_id: id,
                    }),
                )
                .await;
            }
            MatchState::Cancelled => {
                let e = Event::MatchRequestCancelled(MatchRequestCancelled {
                    requester_id: req.to_owned(),
                    session_id: id,
                });
                self.tell(req, e.clone()).await;
                self.tell(tgt, e).await;
            }
            MatchState::Expired => {
                let e = Event::MatchRequestExpired(MatchRequestExpired {
                    requester_id: req.to_owned(),
                    target_id: tgt.to_owned(),
                    session_id: id,
                });
                self.tell(req, e.clone()).await;
                self.tell(tgt, e).await;
            }
            MatchState::Connected if was != MatchState::Connected => {
                for (me, other, other_name) in [(req, tgt, &s.target_name), (tgt, req, &s.requester_name)] {
                    let e = Event::MatchStarted(MatchStarted {
                        opponent_id: other.to_owned(),
                        opponent_name: other_name.clone(),
                        session_id: id.clone(),
                    });
                    self.tell(me, e).await;
                }
            }
            MatchState::Failed => {
                let reason = match action {
                    Action::Deadline => MatchFailure::Timeout,
                    Action::ReportDown => MatchFailure::PeerFailed,
                    _ => MatchFailure::OpponentLeft,
                };
                for (me, other) in [(req, tgt), (tgt, req)] {
                    let e = Event::MatchFailed(MatchFailed {
                        opponent_id: other.to_owned(),
                        reason: reason as i32,
                        session_id: id.clone(),
                    });
                    self.tell(me, e).await;
                }
                self.lobby.clear_busy(req).await?;
                self.lobby.clear_busy(tgt).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The session `given`, or `player`'s open one.
    async fn session_of(&self, given: Option<&str>, player: &str) -> Result<String> {
        match given.filter(|s| !s.is_empty()) {
            Some(id) => Ok(id.to_owned()),
            None => self
                .sessions
                .open_of(player)
                .await?
                .ok_or(MatchError::SessionNotFound(None)),
        }
    }

    async fn join(&self, r: JoinLobbyRequest) -> Result<JoinLobbyResponse> {
        if r.player_id.is_empty() || r.connection_id.is_empty() {
            return Err(MatchError::Invalid("player_id and connection_id are required"));
        }
        let player_name = if r.player_name.is_empty() {
            r.player_id.clone()
        } else {
            r.player_name
        };
        let ice = crate::turn::ice_servers(
            &self.config.ice,
            &r.player_id,
            chrono::Utc::now().timestamp_millis() / 1000,
        );
        self.lobby
            .join(&LobbyMember {
                player_id: r.player_id,
                player_name,
                connection_id: r.connection_id,
            })
            .await?;
        Ok(JoinLobbyResponse {
            ice_servers: ice.servers,
            credentials_expire_at: ice.expire_at,
        })
    }

    /// Leaving clears the player's pending request and fails an open match.
    /// A player already out of the lobby still has them cleared: a dead
    /// gateway's players may have been dropped from the lobby by a snapshot
    /// (their connections gone from the registry) before its reaper calls
    /// here. A player in the lobby from another connection is left alone.
    async fn leave(&self, r: LeaveLobbyRequest) -> Result<()> {
        if !self.lobby.leave(&r.player_id, &r.connection_id).await? && self.lobby.member(&r.player_id).await?.is_some()
        {
            return Ok(());
        }
        self.lobby.clear_busy(&r.player_id).await?;
        if let Some(id) = self.sessions.open_of(&r.player_id).await? {
            match self.apply(&id, Some(&r.player_id), Action::Leave, |_| Ok(())).await {
                Ok(_) | Err(MatchError::Refused { .. } | MatchError::SessionNotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    async fn request(&self, r: RequestMatchRequest) -> Result<MatchSession> {
        if r.requester_id == r.target_id {
            return Err(MatchError::SelfMatch);
        }
        let requester = self
            .lobby
            .member(&r.requester_id)
            .await?
            .ok_or(MatchError::NotInLobby)?;
        let target = self
            .lobby
            .member(&r.target_id)
            .await?
            .ok_or_else(|| MatchError::PlayerNotFound(r.target_id.clone()))?;
        let expires = Duration::from_millis(self.config.match_request_timeout_ms);
        let s = self
            .sessions
            .open(
                (&requester.player_id, &requester.player_name),
                (&target.player_id, &target.player_name),
                expires,
            )
            .await?;
        self.tell(
            &s.target_id,
            Event::MatchRequestReceived(MatchRequestReceived {
                requester_id: s.requester_id.clone(),
                requester_name: s.requester_name.clone(),
                session_id: s.session_id.clone(),
            }),
        )
        .await;
        self.tell(
            &s.requester_id,
            Event::MatchRequestSent(MatchRequestSent {
                target_id: s.target_id.clone(),
                target_name: s.target_name.clone(),
                session_id: s.session_id.clone(),
            }),
        )
        .await;
        Ok(s)
    }

    /// Accept or decline by `player` of `requester`'s request.
    async fn answer(
        &self,
        player: &str,
        requester: &str,
        session: Option<&str>,
        action: Action,
    ) -> Result<MatchSession> {
        let id = self.session_of(session, player).await?;
        let sid = id.clone();
        self.apply(&id, Some(player), action, move |s| {
            if s.requester_id == requester || s.target_id == requester {
                Ok(())
            } else {
                Err(MatchError::NotAPlayer(sid.clone()))
            }
        })
        .await
    }

    async fn validate_signal(&self, r: ValidateSignalRequest) -> Result<MatchSession> {
        let id = self.session_of(Some(&r.session_id), &r.sender_id).await?;
        let sid = id.clone();
        let (sender, receiver) = (r.sender_id.clone(), r.receiver_id);
        self.apply(&id, Some(&r.sender_id), Action::Signal, move |s| {
            let pair = (s.requester_id.as_str(), s.target_id.as_str());
            if pair == (sender.as_str(), receiver.as_str()) || pair == (receiver.as_str(), sender.as_str()) {
                Ok(())
            } else {
                Err(MatchError::NotAPlayer(sid.clone()))
            }
        })
        .await
    }
}

fn answer<T>(r: Result<T>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(ServiceError::into_status)
}

#[tonic::async_trait]
impl MatchApi for MatchService {
    async fn join_lobby(&self, req: Request<JoinLobbyRequest>) -> Result<Response<JoinLobbyResponse>, Status> {
        answer(self.inner.join(req.into_inner()).await)
    }

    async fn leave_lobby(&self, req: Request<LeaveLobbyRequest>) -> Result<Response<LeaveLobbyResponse>, Status> {
        answer(self.inner.leave(req.into_inner()).await.map(|()| LeaveLobbyResponse {}))
    }

    async fn get_lobby(&self, _req: Request<GetLobbyRequest>) -> Result<Response<GetLobbyResponse>, Status> {
        answer(
            self.inner
                .lobby
                .snapshot()
                .await
                .map(|(players, _)| GetLobbyResponse { players }),
        )
    }

    async fn request_match(&self, req: Request<RequestMatchRequest>) -> Result<Response<RequestMatchResponse>, Status> {
        let r = self.inner.request(req.into_inner()).await;
        answer(r.map(|s| RequestMatchResponse { session: Some(s) }))
    }

    async fn accept_match(&self, req: Request<AcceptMatchRequest>) -> Result<Response<AcceptMatchResponse>, Status> {
        let r = req.into_inner();
        let s = self
            .inner
            .answer(&r.player_id, &r.requester_id, r.session_id.as_deref(), Action::Accept)
            .await;
        answer(s.map(|s| AcceptMatchResponse { session: Some(s) }))
    }

    async fn decline_match(&self, req: Request<DeclineMatchRequest>) -> Result<Response<DeclineMatchResponse>, Status> {
        let r = req.into_inner();
        let s = self
            .inner
            .answer(&r.player_id, &r.requester_id, r.session_id.as_deref(), Action::Decline)
            .await;
        answer(s.map(|s| DeclineMatchResponse { session: Some(s) }))
    }

    async fn cancel_match(&self, req: Request<CancelMatchRequest>) -> Result<Response<CancelMatchResponse>, Status> {
        let r = req.into_inner();
        let s = self
            .inner
            .answer(&r.player_id, &r.target_id, Some(&r.session_id), Action::Cancel)
            .await;
        answer(s.map(|s| CancelMatchResponse { session: Some(s) }))
    }

    async fn validate_signal(
        &self,
        req: Request<ValidateSignalRequest>,
    ) -> Result<Response<ValidateSignalResponse>, Status> {
        let s = self.inner.validate_signal(req.into_inner()).await;
        answer(s.map(|s| ValidateSignalResponse { session: Some(s) }))
    }

    async fn report_connection(
        &self,
        req: Request<ReportConnectionRequest>,
    ) -> Result<Response<ReportConnectionResponse>, Status> {
        let r = req.into_inner();
        let action = if r.connected {
            Action::ReportUp
        } else {
            Action::ReportDown
        };
        let s = self
            .inner
            .apply(&r.session_id, Some(&r.player_id), action, |_| Ok(()))
            .await;
        answer(s.map(|s| ReportConnectionResponse { session: Some(s) }))
    }
}
