//! The channel service's gRPC API: channels, membership, chat and the
//! push-to-talk floor. Every change to one channel runs under that channel's
//! lock; events go to members through `Delivery`, whichever gateway replica
//! holds them.

use std::sync::Arc;
use std::time::Duration;

use relaymesh_proto::channel::v1::{
    ChannelInfo, CreateChannelRequest, DeleteChannelRequest, DeleteChannelResponse, DropSessionRequest,
    DropSessionResponse, FloorRequest, FloorResponse, JoinChannelRequest, JoinChannelResponse, LeaveChannelRequest,
    LeaveChannelResponse, Member, SendMessageRequest, SendMessageResponse, UpdateChannelRequest, channel_server,
};
use relaymesh_proto::media_relay::v1::{AddPeerRequest, RemovePeerRequest, SetFloorRequest};
use relaymesh_rpc::ServiceError;
use relaymesh_state::{ConnectionId, Delivery, SessionRegistry, SharedState, text_envelope};
use relaymesh_wire::livechat as wire;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use crate::ChannelConfig;
use crate::error::{ChannelError, Result};
use crate::floor::{self, Floor, FloorChange, FloorEvent, FloorPolicy, Talker};
use crate::relays::RelayDirectory;
use crate::store::{ChannelRecord, ChannelStore, MemberRecord};

#[derive(Clone)]
pub struct ChannelService {
    inner: Arc<Inner>,
}

struct Inner {
    store: ChannelStore,
    delivery: Delivery,
    relays: RelayDirectory,
    config: ChannelConfig,
    /// Floor expiry timers; cancelled on shutdown.
    timers: TaskTracker,
    shutdown: CancellationToken,
}

fn now_ms() -> i64 {
    relaymesh_wire::now_ms()
}

fn info(rec: &ChannelRecord, members: &[MemberRecord]) -> ChannelInfo {
    ChannelInfo {
        channel_id: rec.channel_id.clone(),
        name: rec.name.clone(),
        creator_id: rec.creator_id.clone(),
        capacity: rec.capacity,
        members: members.iter().map(|m| m.user_id.clone()).collect(),
        floor_policy: rec.floor.as_str().to_owned(),
    }
}

fn floor_response(floor: &Floor, queue_position: u32) -> FloorResponse {
    let holder = floor.holder.as_ref();
    FloorResponse {
        holder_id: holder.map(|g| g.talker.user_id.clone()).unwrap_or_default(),
        queue_position,
        holder_ssrc: holder.map_or(0, |g| g.talker.ssrc),
        expires_at_ms: holder.map_or(0, |g| g.expires_at_ms),
    }
}

impl ChannelService {
    pub fn new(state: SharedState, config: ChannelConfig, shutdown: CancellationToken) -> Self {
        // Lookups only: the TTL matters to whoever registers sessions.
        let registry = SessionRegistry::new(state.clone(), Duration::from_secs(60));
        Self {
            inner: Arc::new(Inner {
                store: ChannelStore::new(state.clone()),
                delivery: Delivery::new(state.clone(), registry),
                relays: RelayDirectory::new(state),
                config,
                timers: TaskTracker::new(),
                shutdown,
            }),
        }
    }

    /// Waits for floor timers to stop (after shutdown).
    pub async fn drained(&self) {
        self.inner.timers.close();
        self.inner.timers.wait().await;
    }

    async fn locked<T>(&self, channel_id: &str, f: impl AsyncFnOnce() -> Result<T>) -> Result<T> {
        let lock = self.inner.store.lock(channel_id).await?;
        let out = f().await;
        self.inner.store.unlock(lock).await;
        out
    }

    /// Sends `frame` to every member but `except`; members whose session is
    /// gone from every gateway are removed (a gateway that died cannot say so).
    async fn broadcast(&self, channel_id: &str, members: &[MemberRecord], frame: &str, except: Option<&str>) {
        let mut gone = Vec::new();
        for m in members.iter().filter(|m| Some(m.session_id.as_str()) != except) {
            let conn = ConnectionId::new(m.session_id.clone());
            match self
                .inner
                .delivery
                .send_to_connection(&conn, text_envelope(frame, false))
                .await
            {
                Ok(true) => {}
                Ok(false) => gone.push(m),
                Err(err) => tracing::warn!(channel_id, error = %err, "event delivery failed"),
            }
        }
        for m in gone {
            tracing::info!(channel_id, session_id = %m.session_id, "removing member whose session is gone");
            let _ = self.inner.store.remove_member(channel_id, &m.session_id).await;
            self.remove_peer(channel_id, m.ssrc).await;
        }
    }

    async fn remove_peer(&self, channel_id: &str, ssrc: u32) {
        if let Ok(Some(reg)) = self.inner.relays.assigned(channel_id).await
            && let Ok(mut relay) = self.inner.relays.client(&reg)
            && let Err(status) = relay
                .remove_peer(RemovePeerRequest {
                    channel_id: channel_id.to_owned(),
                    ssrc,
                })
                .await
        {
            tracing::warn!(channel_id, ssrc, error = %status.message(), "relay remove_peer failed");
        }
    }

    /// Tells the relay whom to forward in a floor-controlled channel.
    async fn sync_relay_floor(&self, rec: &ChannelRecord, floor: &Floor) {
        if !rec.floor.controlled() {
            return;
        }
        if let Ok(Some(reg)) = self.inner.relays.assigned(&rec.channel_id).await
            && let Ok(mut relay) = self.inner.relays.client(&reg)
        {
            let req = SetFloorRequest {
                channel_id: rec.channel_id.clone(),
                floor_controlled: true,
                holder_ssrc: floor.holder.as_ref().map_or(0, |g| g.talker.ssrc),
            };
            if let Err(status) = relay.set_floor(req).await {
                tracing::warn!(channel_id = %rec.channel_id, error = %status.message(), "relay set_floor failed");
            }
        }
    }

    /// Applies a floor event under the channel lock: stores the floor, tells
    /// the relay and the members, and arms the new holder's expiry.
    async fn floor_event_locked(&self, rec: &ChannelRecord, event: FloorEvent) -> Result<(Floor, FloorChange)> {
        let store = &self.inner.store;
        let mut floor = store.floor(&rec.channel_id).await?;
        let max_talk = rec.max_talk_ms as i64;
        // A grant whose timer was lost with its replica ends here.
        if let Some(g) = floor.holder.clone()
            && g.expires_at_ms <= now_ms()
        {
            let expire = FloorEvent::Expire { grant_id: g.grant_id };
            let change = floor::transition(rec.floor, &mut floor, expire, now_ms(), max_talk, new_grant_id)?;
            self.floor_changed(rec, &floor, &change).await;
        }
        let change = floor::transition(rec.floor, &mut floor, event, now_ms(), max_talk, new_grant_id)?;
        store.put_floor(&rec.channel_id, &floor).await?;
        self.floor_changed(rec, &floor, &change).await;
        Ok((floor, change))
    }

    async fn floor_changed(&self, rec: &ChannelRecord, floor: &Floor, change: &FloorChange) {
        let FloorChange::Holder { why } = change else { return };
        self.sync_relay_floor(rec, floor).await;
        let holder = floor.holder.as_ref();
        let frame = wire::floor_event(&wire::FloorEvent {
            kind: why,
            channel_id: &rec.channel_id,
            holder_id: holder.map(|g| g.talker.user_id.as_str()),
            holder_ssrc: holder.map(|g| g.talker.ssrc),
            expires_at: holder.map(|g| g.expires_at_ms),
        });
        if let Ok(members) = self.inner.store.members(&rec.channel_id).await {
            self.broadcast(&rec.channel_id, &members, &frame, None).await;
        }
        if let Some(g) = holder {
            self.arm_expiry(rec.channel_id.clone(), g.grant_id.clone(), g.expires_at_ms);
        }
    }

    fn arm_expiry(&self, channel_id: String, grant_id: String, expires_at_ms: i64) {
        let svc = self.clone();
        let wait = Duration::from_millis(u64::try_from(expires_at_ms - now_ms()).unwrap_or(0));
        self.inner.timers.spawn(async move {
            tokio::select! {
                () = svc.inner.shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let result = svc
                .locked(&channel_id, async || {
                    let rec = svc.inner.store.require(&channel_id).await?;
                    svc.floor_event_locked(&rec, FloorEvent::Expire { grant_id }).await
                })
                .await;
            if let Err(err) = result {
                tracing::debug!(channel_id, error = %err, "floor expiry skipped");
            }
        });
    }

    async fn leave_locked(&self, channel_id: &str, session_id: &str) -> Result<()> {
        let store = &self.inner.store;
        let rec = store.require(channel_id).await?;
        let member = store
            .member(channel_id, session_id)
            .await?
            .ok_or(ChannelError::NotJoined)?;
        store.remove_member(channel_id, session_id).await?;
        self.remove_peer(channel_id, member.ssrc).await;
        if rec.floor.controlled() {
            self.floor_event_locked(
                &rec,
                FloorEvent::Leave {
                    session_id: session_id.to_owned(),
                },
            )
            .await?;
        }
        let members = store.members(channel_id).await?;
        let frame = wire::channel_event(&wire::ChannelEvent {
            kind: "leave",
            channel_id,
            user_id: &member.user_id,
            session_id: Some(session_id),
            ssrc: Some(member.ssrc),
            name: None,
        });
        self.broadcast(channel_id, &members, &frame, None).await;
        tracing::info!(channel_id, session_id, user_id = %member.user_id, "member left");
        Ok(())
    }

    async fn create(&self, req: CreateChannelRequest) -> Result<ChannelInfo> {
        let cfg = &self.inner.config;
        if req.channel_id.is_empty() {
            return Err(ChannelError::Invalid("channel_id is empty".into()));
        }
        let clamp = |asked: u64, max: u64| if asked == 0 { max } else { asked.min(max) };
        let rec = ChannelRecord {
            name: if req.name.is_empty() {
                req.channel_id.clone()
            } else {
                req.name
            },
            channel_id: req.channel_id,
            creator_id: req.user_id,
            capacity: clamp(u64::from(req.capacity), u64::from(cfg.max_channel_members)) as u32,
            floor: FloorPolicy::parse(&req.floor_policy)?,
            max_talk_ms: clamp(req.max_talk_ms, cfg.floor_max_talk_ms),
        };
        if !self.inner.store.create(&rec).await? {
            return Err(ChannelError::Exists(rec.channel_id));
        }
        tracing::info!(channel_id = %rec.channel_id, creator = %rec.creator_id, floor = rec.floor.as_str(), "channel created");
        Ok(info(&rec, &[]))
    }

    async fn join(&self, req: JoinChannelRequest) -> Result<JoinChannelResponse> {
        let store = &self.inner.store;
        self.locked(&req.channel_id, async || {
            let rec = store.require(&req.channel_id).await?;
            if store.member(&rec.channel_id, &req.session_id).await?.is_some() {
                return Err(ChannelError::AlreadyJoined);
            }
            let mut members = store.members(&rec.channel_id).await?;
            if members.len() as u32 >= rec.capacity {
                return Err(ChannelError::Full(rec.capacity));
            }
            let media_addr = match self.inner.relays.for_channel(&rec.channel_id).await? {
                None => String::new(),
                Some(reg) => {
                    let mut relay = self.inner.relays.client(&reg)?;
                    let add = AddPeerRequest {
                        channel_id: rec.channel_id.clone(),
                        ssrc: req.ssrc,
                        user_id: req.user_id.clone(),
                    };
                    let addr = match relay.add_peer(add).await {
                        Ok(r) => r.into_inner().media_addr,
                        Err(s) if s.code() == tonic::Code::AlreadyExists => {
                            return Err(ChannelError::SsrcInUse(req.ssrc));
                        }
                        Err(s) => return Err(ChannelError::Relay(s.message().to_owned())),
                    };
                    if rec.floor.controlled() {
                        self.sync_relay_floor(&rec, &store.floor(&rec.channel_id).await?).await;
                    }
                    addr
                }
            };
            let me = MemberRecord {
                user_id: req.user_id.clone(),
                session_id: req.session_id.clone(),
                ssrc: req.ssrc,
            };
            store.add_member(&rec.channel_id, &me).await?;
            let frame = wire::channel_event(&wire::ChannelEvent {
                kind: "join",
                channel_id: &rec.channel_id,
                user_id: &me.user_id,
                session_id: Some(&me.session_id),
                ssrc: Some(me.ssrc),
                name: None,
            });
            self.broadcast(&rec.channel_id, &members, &frame, None).await;
            members.push(me);
            tracing::info!(channel_id = %rec.channel_id, user_id = %req.user_id, ssrc = req.ssrc, "member joined");
            let active_members = members
                .into_iter()
                .map(|m| Member {
                    user_id: m.user_id,
                    session_id: m.session_id,
                    ssrc: m.ssrc,
                })
                .collect();
            Ok(JoinChannelResponse {
                active_members,
                media_addr,
            })
        })
        .await
    }

    async fn update(&self, req: UpdateChannelRequest) -> Result<ChannelInfo> {
        let store = &self.inner.store;
        self.locked(&req.channel_id, async || {
            let mut rec = store.require(&req.channel_id).await?;
            if rec.creator_id != req.user_id {
                return Err(ChannelError::NotAllowed);
            }
            rec.name = req.name.clone();
            store.put(&rec).await?;
            let members = store.members(&rec.channel_id).await?;
            let frame = wire::channel_event(&wire::ChannelEvent {
                kind: "update",
                channel_id: &rec.channel_id,
                user_id: &req.user_id,
                session_id: None,
                ssrc: None,
                name: Some(&rec.name),
            });
            self.broadcast(&rec.channel_id, &members, &frame, None).await;
            Ok(info(&rec, &members))
        })
        .await
    }

    async fn delete(&self, req: DeleteChannelRequest) -> Result<()> {
        let store = &self.inner.store;
        self.locked(&req.channel_id, async || {
            let rec = store.require(&req.channel_id).await?;
            if rec.creator_id != req.user_id {
                return Err(ChannelError::NotAllowed);
            }
            let members = store.members(&rec.channel_id).await?;
            let frame = wire::channel_event(&wire::ChannelEvent {
                kind: "delete",
                channel_id: &rec.channel_id,
                user_id: &req.user_id,
                session_id: None,
                ssrc: None,
                name: None,
            });
            self.broadcast(&rec.channel_id, &members, &frame, None).await;
            for m in &members {
                store.remove_member(&rec.channel_id, &m.session_id).await?;
                self.remove_peer(&rec.channel_id, m.ssrc).await;
            }
            store.delete(&rec.channel_id).await?;
            self.inner.relays.forget(&rec.channel_id).await?;
            tracing::info!(channel_id = %rec.channel_id, "channel deleted");
            Ok(())
        })
        .await
    }

    async fn send_message(&self, req: SendMessageRequest) -> Result<SendMessageResponse> {
        let store = &self.inner.store;
        store.require(&req.channel_id).await?;
        if req.content.trim().is_empty() {
            return Err(ChannelError::EmptyMessage);
        }
        let max = self.inner.config.max_message_len;
        if req.content.chars().count() > max {
            return Err(ChannelError::MessageTooLong(max));
        }
        if store.member(&req.channel_id, &req.session_id).await?.is_none() {
            return Err(ChannelError::NotMember);
        }
        let message_id = uuid::Uuid::new_v4().to_string();
        let members = store.members(&req.channel_id).await?;
        let frame = wire::message_event(&wire::MessageEvent {
            channel_id: &req.channel_id,
            message_id: &message_id,
            user_id: &req.user_id,
            content: &req.content,
            timestamp: now_ms(),
        });
        self.broadcast(&req.channel_id, &members, &frame, None).await;
        Ok(SendMessageResponse { message_id })
    }

    async fn floor(&self, req: FloorRequest, request: bool) -> Result<FloorResponse> {
        let store = &self.inner.store;
        self.locked(&req.channel_id, async || {
            let rec = store.require(&req.channel_id).await?;
            let me = store
                .member(&rec.channel_id, &req.session_id)
                .await?
                .ok_or(ChannelError::NotJoined)?;
            let event = if request {
                FloorEvent::Request(Talker {
                    session_id: me.session_id,
                    user_id: me.user_id,
                    ssrc: me.ssrc,
                })
            } else {
                FloorEvent::Release {
                    session_id: me.session_id,
                }
            };
            let (floor, change) = self.floor_event_locked(&rec, event).await?;
            let position = if let FloorChange::Queued(p) = change { p } else { 0 };
            Ok(floor_response(&floor, position))
        })
        .await
    }

    async fn drop_session(&self, session_id: &str) -> Result<()> {
        for channel_id in self.inner.store.session_channels(session_id).await? {
            let left = self
                .locked(&channel_id, async || self.leave_locked(&channel_id, session_id).await)
                .await;
            match left {
                Ok(()) | Err(ChannelError::NotFound(_) | ChannelError::NotJoined) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

fn new_grant_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn answer<T>(r: Result<T>) -> std::result::Result<Response<T>, Status> {
    r.map(Response::new).map_err(ServiceError::into_status)
}

#[tonic::async_trait]
impl channel_server::Channel for ChannelService {
    async fn create_channel(
        &self,
        req: Request<CreateChannelRequest>,
    ) -> std::result::Result<Response<ChannelInfo>, Status> {
        answer(self.create(req.into_inner()).await)
    }

    async fn join_channel(
        &self,
        req: Request<JoinChannelRequest>,
    ) -> std::result::Result<Response<JoinChannelResponse>, Status> {
        answer(self.join(req.into_inner()).await)
    }

    async fn leave_channel(
        &self,
        req: Request<LeaveChannelRequest>,
    ) -> std::result::Result<Response<LeaveChannelResponse>, Status> {
        let r = req.into_inner();
        let left = self
            .locked(&r.channel_id, async || {
                self.leave_locked(&r.channel_id, &r.session_id).await
            })
            .await;
        answer(left.map(|()| LeaveChannelResponse {}))
    }

    async fn update_channel(
        &self,
        req: Request<UpdateChannelRequest>,
    ) -> std::result::Result<Response<ChannelInfo>, Status> {
        answer(self.update(req.into_inner()).await)
    }

    async fn delete_channel(
        &self,
        req: Request<DeleteChannelRequest>,
    ) -> std::result::Result<Response<DeleteChannelResponse>, Status> {
        answer(self.delete(req.into_inner()).await.map(|()| DeleteChannelResponse {}))
    }

    async fn send_message(
        &self,
        req: Request<SendMessageRequest>,
    ) -> std::result::Result<Response<SendMessageResponse>, Status> {
        answer(ChannelService::send_message(self, req.into_inner()).await)
    }

    async fn request_floor(&self, req: Request<FloorRequest>) -> std::result::Result<Response<FloorResponse>, Status> {
        answer(self.floor(req.into_inner(), true).await)
    }

    async fn release_floor(&self, req: Request<FloorRequest>) -> std::result::Result<Response<FloorResponse>, Status> {
        answer(self.floor(req.into_inner(), false).await)
    }

    async fn drop_session(
        &self,
        req: Request<DropSessionRequest>,
    ) -> std::result::Result<Response<DropSessionResponse>, Status> {
        answer(
            ChannelService::drop_session(self, &req.into_inner().session_id)
                .await
                .map(|()| DropSessionResponse {}),
        )
    }
}
