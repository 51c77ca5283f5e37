//! The channel service's gRPC API: channels, membership, chat and the
//! push-to-talk floor. Every change to one channel runs under that channel's
//! lock; events go to members through `Delivery`, whichever gateway replica
//! holds them.
//!
//! The lock is never held across a call to the media relay (a call that
//! may wait on another process): a join adds its peer to the relay before
//! taking the lock and removes it again if the join is then refused; the
//! relay calls a change owes (a peer to remove, the floor to tell) are
//! returned as a [`RelayFollowUp`] and made after the lock is released.

use std::sync::Arc;
use std::time::Duration;

use relaymesh_proto::channel::v1::{
    Caller, CreateChannelRequest, CreateChannelResponse, DeleteChannelRequest, DeleteChannelResponse,
    DropSessionRequest, DropSessionResponse, JoinChannelRequest, JoinChannelResponse, LeaveChannelRequest,
    LeaveChannelResponse, ReleaseFloorRequest, ReleaseFloorResponse, RequestFloorRequest, RequestFloorResponse,
    SendMessageRequest, SendMessageResponse, UpdateChannelRequest, UpdateChannelResponse, channel_service_server,
};
use relaymesh_proto::client::v1::{
    Channel, ChannelEvent, ChannelEventType, FloorHolder, FloorState, LivechatResponse, Member, MessageEvent,
    livechat_response::Event,
};
use relaymesh_proto::media_relay::v1::{AddPeerRequest, RemovePeerRequest, SetFloorRequest};
use relaymesh_rpc::ServiceError;
use relaymesh_state::{ConnectionId, Delivery, SessionRegistry, SharedState};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use crate::ChannelConfig;
use crate::error::{ChannelError, Result};
use crate::fanout::{Deliver, Fanout, FanoutJob};
use crate::floor::{self, Floor, FloorChange, FloorEvent, FloorPolicy, Talker};
use crate::relays::RelayDirectory;
use crate::store::{ChannelRecord, ChannelStore, MemberRecord};

/// The channel service, its events handed to `D` (the shared-state
/// [`Delivery`]; another only in tests that stall delivery).
pub struct ChannelService<D = Delivery> {
    inner: Arc<Inner<D>>,
}

impl<D> Clone for ChannelService<D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<D> {
    store: ChannelStore,
    relays: RelayDirectory,
    config: ChannelConfig,
    fanout: Fanout<D>,
    /// Floor expiry timers, fan-out workers and the gone-session reaper;
    /// stopped on shutdown.
    timers: TaskTracker,
    shutdown: CancellationToken,
}

/// Fan-out shards: events of one channel stay in order on one shard.
const FANOUT_SHARDS: usize = 4;

/// How long the fan-out remembers which replica holds a member's
/// connection ([`Delivery::with_routes`]): a message to a channel whose
/// members it addressed lately reads no registry entry. A member whose
/// session vanished without a leave (its gateway died; the gateways' reaper
/// removes those too) is found gone by a message at most this long after.
const FANOUT_ROUTE_TTL: Duration = Duration::from_secs(5);

fn info(rec: &ChannelRecord, members: &[MemberRecord]) -> Channel {
    Channel {
        channel_id: rec.channel_id.clone(),
        name: rec.name.clone(),
        creator_id: rec.creator_id.clone(),
        capacity: rec.capacity,
        members: members.iter().map(|m| m.user_id.clone()).collect(),
        floor: rec.floor.to_proto() as i32,
    }
}

fn holder_of(floor: &Floor) -> Option<FloorHolder> {
    floor.holder.as_ref().map(|g| FloorHolder {
        user_id: g.talker.user_id.clone(),
        ssrc: g.talker.ssrc,
        expires_at: g.expires_at_ms,
    })
}

fn floor_state(channel_id: &str, floor: &Floor, queue_position: u32) -> FloorState {
    FloorState {
        channel_id: channel_id.to_owned(),
        holder: holder_of(floor),
        queue_position,
    }
}

fn member_view(m: &MemberRecord) -> Member {
    Member {
        user_id: m.user_id.clone(),
        session_id: m.session_id.clone(),
        ssrc: m.ssrc,
    }
}

/// The caller's (session, user), which every request must name.
fn caller(c: Option<Caller>) -> Result<Caller> {
    match c {
        Some(c) if !c.session_id.is_empty() && !c.user_id.is_empty() => Ok(c),
        _ => Err(ChannelError::Invalid(
            "caller session_id and user_id are required".into(),
        )),
    }
}

fn channel_event(kind: ChannelEventType, channel_id: &str, user_id: &str) -> ChannelEvent {
    ChannelEvent {
        r#type: kind as i32,
        channel_id: channel_id.to_owned(),
        user_id: user_id.to_owned(),
        ..ChannelEvent::default()
    }
}

/// The relay calls a change under the channel lock owes, made after the
/// lock is released ([`ChannelService::follow_up`]).
#[derive(Debug, Default)]
#[must_use]
struct RelayFollowUp {
    /// SSRCs of members who left.
    removed: Vec<u32>,
    /// The floor holder changed: tell the relay whom to forward.
    floor: bool,
}

impl RelayFollowUp {
    fn and(mut self, other: Self) -> Self {
        self.removed.extend(other.removed);
        self.floor |= other.floor;
        self
    }
}

impl ChannelService {
    pub fn new(state: SharedState, config: ChannelConfig, shutdown: CancellationToken) -> Self {
        // Lookups only: the TTL matters to whoever registers sessions.
        let registry = SessionRegistry::new(state.clone(), Duration::from_secs(60));
        let delivery = Delivery::new(state.clone(), registry).with_routes(FANOUT_ROUTE_TTL);
        Self::with_delivery(state, delivery, config, shutdown)
    }
}

impl<D: Deliver> ChannelService<D> {
    /// The service with its events handed to `delivery` instead of the
    /// shared-state [`Delivery`]: a seam for tests that stall delivery.
    pub fn with_delivery(state: SharedState, delivery: D, config: ChannelConfig, shutdown: CancellationToken) -> Self {
        let timers = TaskTracker::new();
        let (gone_tx, gone_rx) = mpsc::unbounded_channel();
        let fanout = Fanout::start(FANOUT_SHARDS, delivery, &timers, gone_tx, shutdown.clone());
        let svc = Self {
            inner: Arc::new(Inner {
                store: ChannelStore::new(state.clone()),
                relays: RelayDirectory::new(state),
                config,
                fanout,
                timers,
                shutdown,
            }),
        };
        svc.inner.timers.spawn(svc.clone().reap_gone(gone_rx));
        svc
    }

    /// Removes members whose session no gateway holds any more (a gateway
    /// that died cannot say so): each leaves its channel once, with the
    /// normal leave event and floor hand-over.
    async fn reap_gone(self, mut gone: mpsc::UnboundedReceiver<(String, ConnectionId)>) {
        loop {
            let next = tokio::select! {
                next = gone.recv() => next,
                () = self.inner.shutdown.cancelled() => None,
            };
            let Some((channel_id, conn)) = next else { break };
            let left = self.leave(&channel_id, conn.as_str()).await;
            match left {
                Ok(()) => tracing::info!(channel_id, session_id = %conn, "removed member whose session is gone"),
                // Already removed (by another event or replica).
                Err(ChannelError::NotFound(_) | ChannelError::NotJoined) => {}
                Err(err) => tracing::warn!(channel_id, session_id = %conn, error = %err, "gone member not removed"),
            }
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

    /// As [`Self::locked`] for a change that owes relay calls: they are made
    /// once the lock is released.
    async fn locked_then_relay<T>(
        &self,
        channel_id: &str,
        f: impl AsyncFnOnce() -> Result<(T, RelayFollowUp)>,
    ) -> Result<T> {
        let (out, follow_up) = self.locked(channel_id, f).await?;
        self.follow_up(channel_id, follow_up).await;
        Ok(out)
    }

    /// Makes the relay calls a change owed, outside the channel lock. The
    /// floor sent is the one stored now, not the one the change saw, so a
    /// later change's own follow-up can only bring the relay forward.
    async fn follow_up(&self, channel_id: &str, f: RelayFollowUp) {
        for ssrc in f.removed {
            self.remove_peer(channel_id, ssrc).await;
        }
        if f.floor
            && let Ok(Some(rec)) = self.inner.store.channel(channel_id).await
            && let Ok(floor) = self.inner.store.floor(channel_id).await
        {
            self.sync_relay_floor(&rec, &floor).await;
        }
    }

    /// Leaves `channel_id` (its lock taken here), then tells the relay.
    async fn leave(&self, channel_id: &str, session_id: &str) -> Result<()> {
        self.locked_then_relay(channel_id, async || {
            Ok(((), self.leave_locked(channel_id, session_id).await?))
        })
        .await
    }

    /// Queues `event` for every member of the channel: the fan-out delivers
    /// it in order with the channel's other events (in memory, a small one
    /// before this returns; see `fanout`).
    async fn broadcast(&self, channel_id: &str, members: &[MemberRecord], event: Event) {
        let recipients = members
            .iter()
            .map(|m| ConnectionId::new(m.session_id.clone()))
            .collect();
        self.broadcast_to(channel_id, recipients, event).await;
    }

    /// [`Self::broadcast`] to sessions already named.
    async fn broadcast_to(&self, channel_id: &str, recipients: Arc<[ConnectionId]>, event: Event) {
        self.inner
            .fanout
            .push(FanoutJob {
                channel_id: channel_id.to_owned(),
                recipients,
                event: LivechatResponse { event: Some(event) },
                traceparent: relaymesh_telemetry::propagation::current_traceparent(),
            })
            .await;
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
            if peer_already_gone(&status) {
                tracing::debug!(
                    channel_id,
                    ssrc,
                    "relay had no such peer (evicted idle, or the channel closed)"
                );
            } else {
                tracing::warn!(channel_id, ssrc, error = %status.message(), "relay remove_peer failed");
            }
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
                floor_version: floor.version,
            };
            if let Err(status) = relay.set_floor(req).await {
                tracing::warn!(channel_id = %rec.channel_id, error = %status.message(), "relay set_floor failed");
            }
        }
    }

    /// Applies a floor event under the channel lock: stores the floor, tells
    /// the members, and arms the new holder's expiry; the relay is told
    /// after the lock (the follow-up).
    async fn floor_event_locked(
        &self,
        rec: &ChannelRecord,
        event: FloorEvent,
    ) -> Result<(Floor, FloorChange, RelayFollowUp)> {
        let store = &self.inner.store;
        let mut floor = store.floor(&rec.channel_id).await?;
        let now = chrono::Utc::now();
        let mut holder_changed = false;
        let mut apply = |floor: &mut Floor, event: FloorEvent| {
            let change = floor::transition(
                rec.floor,
                floor,
                event,
                now.timestamp_millis(),
                rec.max_talk_ms as i64,
                new_grant_id,
            )?;
            holder_changed |= matches!(change, FloorChange::Holder { .. });
            Ok::<_, ChannelError>(change)
        };
        // A grant whose timer was lost with its replica ends here.
        if let Some(g) = floor.holder.clone()
            && g.expires_at_ms <= now.timestamp_millis()
        {
            let change = apply(&mut floor, FloorEvent::Expire { grant_id: g.grant_id })?;
            self.floor_changed(rec, &floor, &change).await;
        }
        let change = apply(&mut floor, event)?;
        floor.next_version(now.timestamp_micros());
        store.put_floor(&rec.channel_id, &floor).await?;
        self.floor_changed(rec, &floor, &change).await;
        let follow_up = RelayFollowUp {
            removed: Vec::new(),
            floor: holder_changed && rec.floor.controlled(),
        };
        Ok((floor, change, follow_up))
    }

    async fn floor_changed(&self, rec: &ChannelRecord, floor: &Floor, change: &FloorChange) {
        let FloorChange::Holder { why } = change else { return };
        let event = Event::FloorEvent(relaymesh_proto::client::v1::FloorEvent {
            r#type: *why as i32,
            channel_id: rec.channel_id.clone(),
            holder: holder_of(floor),
        });
        if let Ok(members) = self.inner.store.members(&rec.channel_id).await {
            self.broadcast(&rec.channel_id, &members, event).await;
        }
        if let Some(g) = floor.holder.as_ref() {
            self.arm_expiry(rec.channel_id.clone(), g.grant_id.clone(), g.expires_at_ms);
        }
    }

    fn arm_expiry(&self, channel_id: String, grant_id: String, expires_at_ms: i64) {
        let svc = self.clone();
        let wait =
            Duration::from_millis(u64::try_from(expires_at_ms - chrono::Utc::now().timestamp_millis()).unwrap_or(0));
        self.inner.timers.spawn(async move {
            tokio::select! {
                () = svc.inner.shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let result = svc
                .locked_then_relay(&channel_id, async || {
                    let rec = svc.inner.store.require(&channel_id).await?;
                    let (_, _, follow_up) = svc.floor_event_locked(&rec, FloorEvent::Expire { grant_id }).await?;
                    Ok(((), follow_up))
                })
                .await;
            if let Err(err) = result {
                tracing::debug!(channel_id, error = %err, "floor expiry skipped");
            }
        });
    }

    /// Removes the member; its relay peer is removed after the lock.
    async fn leave_locked(&self, channel_id: &str, session_id: &str) -> Result<RelayFollowUp> {
        let store = &self.inner.store;
        let mut rec = store.require(channel_id).await?;
        let member = store
            .member(channel_id, session_id)
            .await?
            .ok_or(ChannelError::NotJoined)?;
        store.remove_member(&mut rec, session_id).await?;
        let mut follow_up = RelayFollowUp {
            removed: vec![member.ssrc],
            floor: false,
        };
        if rec.floor.controlled() {
            let leave = FloorEvent::Leave {
                session_id: session_id.to_owned(),
            };
            let (_, _, floor) = self.floor_event_locked(&rec, leave).await?;
            follow_up = follow_up.and(floor);
        }
        let members = store.members(channel_id).await?;
        let event = ChannelEvent {
            session_id: Some(session_id.to_owned()),
            ssrc: Some(member.ssrc),
            ..channel_event(ChannelEventType::Leave, channel_id, &member.user_id)
        };
        self.broadcast(channel_id, &members, Event::ChannelEvent(event)).await;
        tracing::info!(channel_id, session_id, user_id = %member.user_id, "member left");
        Ok(follow_up)
    }

    async fn create(&self, req: CreateChannelRequest) -> Result<Channel> {
        let cfg = &self.inner.config;
        let floor = FloorPolicy::from_proto(req.floor_policy());
        let who = caller(req.caller)?;
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
            creator_id: who.user_id,
            capacity: clamp(u64::from(req.capacity), u64::from(cfg.max_channel_members)) as u32,
            floor,
            max_talk_ms: clamp(req.max_talk_ms, cfg.floor_max_talk_ms),
            members_version: 0,
        };
        if !self.inner.store.create(&rec).await? {
            return Err(ChannelError::Exists(rec.channel_id));
        }
        tracing::info!(channel_id = %rec.channel_id, creator = %rec.creator_id, floor = ?rec.floor, "channel created");
        Ok(info(&rec, &[]))
    }

    async fn join(&self, req: JoinChannelRequest) -> Result<JoinChannelResponse> {
        let store = &self.inner.store;
        let who = caller(req.caller)?;
        if req.ssrc == 0 {
            return Err(ChannelError::Invalid("ssrc must not be 0".into()));
        }
        let rec = store.require(&req.channel_id).await?;
        if store.member(&rec.channel_id, &who.session_id).await?.is_some() {
            return Err(ChannelError::AlreadyJoined);
        }
        // The relay first, outside the lock: a slow relay delays this join
        // only, not everyone else's.
        let media_addr = self.add_peer(&rec, &who, req.ssrc).await?;
        let joined = self
            .locked(&rec.channel_id, async || {
                // Checked again: the channel may have changed meanwhile.
                let mut rec = store.require(&req.channel_id).await?;
                if store.member(&rec.channel_id, &who.session_id).await?.is_some() {
                    return Err(ChannelError::AlreadyJoined);
                }
                let mut members = store.members(&rec.channel_id).await?;
                if members.len() as u32 >= rec.capacity {
                    return Err(ChannelError::Full(rec.capacity));
                }
                let me = MemberRecord {
                    user_id: who.user_id.clone(),
                    session_id: who.session_id.clone(),
                    ssrc: req.ssrc,
                };
                store.add_member(&mut rec, &me).await?;
                let event = ChannelEvent {
                    session_id: Some(me.session_id.clone()),
                    ssrc: Some(me.ssrc),
                    ..channel_event(ChannelEventType::Join, &rec.channel_id, &me.user_id)
                };
                self.broadcast(&rec.channel_id, &members, Event::ChannelEvent(event))
                    .await;
                members.push(me);
                Ok(members)
            })
            .await;
        let members = match joined {
            Ok(members) => members,
            Err(err) => {
                if media_addr.is_some() {
                    self.undo_add_peer(&rec.channel_id, &who.session_id, req.ssrc).await;
                }
                return Err(err);
            }
        };
        tracing::info!(channel_id = %rec.channel_id, user_id = %who.user_id, ssrc = req.ssrc, "member joined");
        if media_addr.is_some() {
            self.follow_up(
                &rec.channel_id,
                RelayFollowUp {
                    removed: Vec::new(),
                    floor: rec.floor.controlled(),
                },
            )
            .await;
        }
        Ok(JoinChannelResponse {
            active_members: members.iter().map(member_view).collect(),
            media_addr: media_addr.unwrap_or_default(),
        })
    }

    /// Adds the joiner's SSRC to the channel's relay (assigning one when it
    /// has none); its media address, or None without a relay.
    async fn add_peer(&self, rec: &ChannelRecord, who: &Caller, ssrc: u32) -> Result<Option<String>> {
        let Some(reg) = self.inner.relays.for_channel(&rec.channel_id).await? else {
            return Ok(None);
        };
        let mut relay = self.inner.relays.client(&reg)?;
        let add = AddPeerRequest {
            channel_id: rec.channel_id.clone(),
            ssrc,
            user_id: who.user_id.clone(),
        };
        match relay.add_peer(add).await {
            Ok(r) => Ok(Some(r.into_inner().media_addr)),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Err(ChannelError::SsrcInUse(ssrc)),
            Err(s) => Err(ChannelError::Relay(s.message().to_owned())),
        }
    }

    /// Removes a refused joiner's peer again, unless the session is a member
    /// with that SSRC after all (a racing join of the same session won).
    async fn undo_add_peer(&self, channel_id: &str, session_id: &str, ssrc: u32) {
        match self.inner.store.member(channel_id, session_id).await {
            Ok(Some(m)) if m.ssrc == ssrc => {}
            _ => self.remove_peer(channel_id, ssrc).await,
        }
    }

    async fn update(&self, req: UpdateChannelRequest) -> Result<Channel> {
        let store = &self.inner.store;
        let who = caller(req.caller)?;
        self.locked(&req.channel_id, async || {
            let mut rec = store.require(&req.channel_id).await?;
            if rec.creator_id != who.user_id {
                return Err(ChannelError::NotAllowed);
            }
            rec.name = req.name.clone();
            store.put(&rec).await?;
            let members = store.members(&rec.channel_id).await?;
            let event = ChannelEvent {
                name: Some(rec.name.clone()),
                ..channel_event(ChannelEventType::Update, &rec.channel_id, &who.user_id)
            };
            self.broadcast(&rec.channel_id, &members, Event::ChannelEvent(event))
                .await;
            Ok(info(&rec, &members))
        })
        .await
    }

    async fn delete(&self, req: DeleteChannelRequest) -> Result<()> {
        let store = &self.inner.store;
        let who = caller(req.caller)?;
        // The relay's peers go after the lock; the channel's relay assignment
        // is forgotten only then, so the follow-up still finds the relay.
        self.locked_then_relay(&req.channel_id, async || {
            let rec = store.require(&req.channel_id).await?;
            if rec.creator_id != who.user_id {
                return Err(ChannelError::NotAllowed);
            }
            let members = store.members(&rec.channel_id).await?;
            let event = channel_event(ChannelEventType::Delete, &rec.channel_id, &who.user_id);
            self.broadcast(&rec.channel_id, &members, Event::ChannelEvent(event))
                .await;
            for m in &members {
                store.forget_member(&rec.channel_id, &m.session_id).await?;
            }
            store.delete(&rec.channel_id).await?;
            tracing::info!(channel_id = %rec.channel_id, "channel deleted");
            let removed = members.iter().map(|m| m.ssrc).collect();
            Ok(((), RelayFollowUp { removed, floor: false }))
        })
        .await?;
        self.inner.relays.forget(&req.channel_id).await?;
        Ok(())
    }

    async fn send_message(&self, req: SendMessageRequest) -> Result<SendMessageResponse> {
        let store = &self.inner.store;
        let who = caller(req.caller)?;
        // The record's members_version, then its members' sessions: kept by
        // this replica while that version stays, so a busy channel's message
        // reads one small key. Membership is checked in that list, and
        // member records are not decoded: a message needs only who.
        let sessions = store.message_recipients(&req.channel_id).await?;
        if req.content.trim().is_empty() {
            return Err(ChannelError::EmptyMessage);
        }
        let max = self.inner.config.max_message_len;
        if req.content.chars().count() > max {
            return Err(ChannelError::MessageTooLong(max));
        }
        if !sessions.iter().any(|c| c.as_str() == who.session_id) {
            return Err(ChannelError::NotMember);
        }
        let message_id = uuid::Uuid::new_v4().to_string();
        if let Some(cap) = self.inner.config.fanout_rate() {
            store.charge_fanout(&req.channel_id, cap, sessions.len()).await?;
        }
        let event = Event::MessageEvent(MessageEvent {
            channel_id: req.channel_id.clone(),
            message_id: message_id.clone(),
            user_id: who.user_id,
            content: req.content,
            timestamp: chrono::Utc::now().timestamp_millis(),
        });
        // The kept list itself is the recipients: no copy of a thousand ids
        // per message.
        self.broadcast_to(&req.channel_id, sessions, event).await;
        Ok(SendMessageResponse { message_id })
    }

    async fn floor(&self, who: Option<Caller>, channel_id: &str, request: bool) -> Result<FloorState> {
        let store = &self.inner.store;
        let who = caller(who)?;
        self.locked_then_relay(channel_id, async || {
            let rec = store.require(channel_id).await?;
            let me = store
                .member(&rec.channel_id, &who.session_id)
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
            let (floor, change, follow_up) = self.floor_event_locked(&rec, event).await?;
            let position = if let FloorChange::Queued(p) = change { p } else { 0 };
            Ok((floor_state(&rec.channel_id, &floor, position), follow_up))
        })
        .await
    }

    async fn drop_session(&self, session_id: &str) -> Result<()> {
        for channel_id in self.inner.store.session_channels(session_id).await? {
            let left = self.leave(&channel_id, session_id).await;
            match left {
                Ok(()) | Err(ChannelError::NotFound(_) | ChannelError::NotJoined) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

/// Whether the relay refused a RemovePeer because the peer is gone
/// already: its idle sweep evicts a peer that sends no media (a member who
/// only chats) and a channel with no peers left, so a later leave finds
/// nothing to remove. That is the outcome the leave wanted, not a failure.
fn peer_already_gone(status: &Status) -> bool {
    use relaymesh_proto::media_relay::v1::ErrorReason as RelayReason;
    matches!(
        relaymesh_rpc::reason_of::<RelayReason>(status),
        Some(RelayReason::UnknownPeer | RelayReason::UnknownChannel)
    )
}

fn new_grant_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn answer<T>(r: Result<T>) -> std::result::Result<Response<T>, Status> {
    r.map(Response::new).map_err(ServiceError::into_status)
}

#[tonic::async_trait]
impl<D: Deliver> channel_service_server::ChannelService for ChannelService<D> {
    async fn create_channel(
        &self,
        req: Request<CreateChannelRequest>,
    ) -> std::result::Result<Response<CreateChannelResponse>, Status> {
        let created = self.create(req.into_inner()).await;
        answer(created.map(|c| CreateChannelResponse { channel: Some(c) }))
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
        let left = match caller(r.caller) {
            Ok(who) => self.leave(&r.channel_id, &who.session_id).await,
            Err(err) => Err(err),
        };
        answer(left.map(|()| LeaveChannelResponse {}))
    }

    async fn update_channel(
        &self,
        req: Request<UpdateChannelRequest>,
    ) -> std::result::Result<Response<UpdateChannelResponse>, Status> {
        let updated = self.update(req.into_inner()).await;
        answer(updated.map(|c| UpdateChannelResponse { channel: Some(c) }))
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

    async fn request_floor(
        &self,
        req: Request<RequestFloorRequest>,
    ) -> std::result::Result<Response<RequestFloorResponse>, Status> {
        let r = req.into_inner();
        let floor = self.floor(r.caller, &r.channel_id, true).await;
        answer(floor.map(|f| RequestFloorResponse { floor: Some(f) }))
    }

    async fn release_floor(
        &self,
        req: Request<ReleaseFloorRequest>,
    ) -> std::result::Result<Response<ReleaseFloorResponse>, Status> {
        let r = req.into_inner();
        let floor = self.floor(r.caller, &r.channel_id, false).await;
        answer(floor.map(|f| ReleaseFloorResponse { floor: Some(f) }))
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

#[cfg(test)]
mod tests {
    use relaymesh_media_relay::MediaRelayError;
    use relaymesh_media_relay::engine::Ssrc;
    use relaymesh_rpc::ServiceError;
    use tonic::Status;

    use super::peer_already_gone;

    #[test]
    fn a_peer_or_channel_the_relay_no_longer_has_is_already_gone() {
        let peer = MediaRelayError::UnknownPeer {
            channel_id: "c".into(),
            ssrc: Ssrc(1),
        };
        assert!(peer_already_gone(&peer.into_status()));
        assert!(peer_already_gone(
            &MediaRelayError::UnknownChannel("c".into()).into_status()
        ));
    }

    #[test]
    fn any_other_refusal_or_a_broken_call_is_a_failure() {
        assert!(!peer_already_gone(
            &MediaRelayError::InvalidArgument("ssrc").into_status()
        ));
        // NOT_FOUND without the relay's reason (a proxy's, a missing route)
        // says nothing about the peer.
        assert!(!peer_already_gone(&Status::not_found("no route")));
        assert!(!peer_already_gone(&Status::unavailable("connection refused")));
    }
}
