//! Push-to-talk floor control: who may talk in a channel, as a table.
//!
//! The seed leaves the floor to clients; here the server arbitrates. Each
//! transition is one function of (state, event) so it can be checked pair by
//! pair; timers and delivery live in the service, not here.

use relaymesh_proto::client::v1 as proto;
pub use relaymesh_proto::client::v1::FloorEventType;
use serde::{Deserialize, Serialize};

use crate::error::ChannelError;

/// A channel's floor policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FloorPolicy {
    /// No floor: every member's media is forwarded (the seed's behaviour).
    #[default]
    None,
    /// One holder at a time; a request while held is refused.
    Exclusive,
    /// One holder at a time; requests while held wait in FIFO order.
    Queue,
}

impl FloorPolicy {
    /// The policy a client asked for; unspecified means none.
    pub fn from_proto(p: proto::FloorPolicy) -> Self {
        match p {
            proto::FloorPolicy::Unspecified | proto::FloorPolicy::None => Self::None,
            proto::FloorPolicy::Exclusive => Self::Exclusive,
            proto::FloorPolicy::Queue => Self::Queue,
        }
    }

    pub fn to_proto(self) -> proto::FloorPolicy {
        match self {
            Self::None => proto::FloorPolicy::None,
            Self::Exclusive => proto::FloorPolicy::Exclusive,
            Self::Queue => proto::FloorPolicy::Queue,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Exclusive => "exclusive",
            Self::Queue => "queue",
        }
    }

    /// Whether the media relay forwards only the holder's packets.
    pub fn controlled(self) -> bool {
        self != Self::None
    }
}

/// One member as the floor knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Talker {
    pub session_id: String,
    pub user_id: String,
    pub ssrc: u32,
}

/// The floor of one channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    pub holder: Option<Grant>,
    pub queue: Vec<Talker>,
    /// Grows with every stored change ([`Floor::next_version`]), so the
    /// media relay can ignore a floor that reaches it after a newer one
    /// (`SetFloorRequest.floor_version`). Absent in floors stored before it
    /// existed: 0.
    #[serde(default)]
    pub version: u64,
}

impl Floor {
    /// Moves [`Floor::version`] past its current value and past `now_us`
    /// (microseconds since the epoch): a channel deleted and created again
    /// starts above any version a relay still holds for the old one.
    pub fn next_version(&mut self, now_us: i64) {
        let now = u64::try_from(now_us).unwrap_or(0);
        self.version = now.max(self.version.saturating_add(1));
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub talker: Talker,
    pub expires_at_ms: i64,
    /// Distinguishes grants to the same member, so a stale timer cannot
    /// revoke a newer grant.
    pub grant_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FloorEvent {
    Request(Talker),
    /// The member releases the floor or leaves the queue.
    Release {
        session_id: String,
    },
    /// The member left the channel (or its session died).
    Leave {
        session_id: String,
    },
    /// The grant's time ran out.
    Expire {
        grant_id: String,
    },
}

/// What a transition did, for the events the service sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FloorChange {
    /// The holder changed (granted to someone, or freed); `why` names the
    /// FLOOR_EVENT type.
    Holder { why: FloorEventType },
    /// The requester was queued at this position (1-based).
    Queued(u32),
    /// Nothing changed (a release by a non-holder who was not queued, a
    /// stale expiry, a repeated request by the holder).
    Nothing,
}

/// Applies `event` to `floor` under `policy`. `now_ms` and `max_talk_ms` set
/// the expiry of a new grant; `new_grant_id` names it.
pub fn transition(
    policy: FloorPolicy,
    floor: &mut Floor,
    event: FloorEvent,
    now_ms: i64,
    max_talk_ms: i64,
    new_grant_id: impl FnOnce() -> String,
) -> Result<FloorChange, ChannelError> {
    if policy == FloorPolicy::None {
        return Err(ChannelError::NoFloorControl);
    }
    let grant_next = |floor: &mut Floor, why: FloorEventType| {
        floor.holder = (!floor.queue.is_empty()).then(|| Grant {
            talker: floor.queue.remove(0),
            expires_at_ms: now_ms + max_talk_ms,
            grant_id: String::new(),
        });
        FloorChange::Holder { why }
    };
    let change = match event {
        FloorEvent::Request(talker) => match &floor.holder {
            None => {
                floor.queue.retain(|t| t.session_id != talker.session_id);
                floor.holder = Some(Grant {
                    talker,
                    expires_at_ms: now_ms + max_talk_ms,
                    grant_id: String::new(),
                });
                FloorChange::Holder {
                    why: FloorEventType::Granted,
                }
            }
            Some(g) if g.talker.session_id == talker.session_id => FloorChange::Nothing,
            Some(g) if policy == FloorPolicy::Exclusive => {
                return Err(ChannelError::FloorBusy(g.talker.user_id.clone()));
            }
            Some(_) => {
                if let Some(pos) = floor.queue.iter().position(|t| t.session_id == talker.session_id) {
                    FloorChange::Queued(pos as u32 + 1)
                } else {
                    floor.queue.push(talker);
                    FloorChange::Queued(floor.queue.len() as u32)
                }
            }
        },
        FloorEvent::Release { session_id } => {
            if floor.holder.as_ref().is_some_and(|g| g.talker.session_id == session_id) {
                grant_next(floor, FloorEventType::Released)
            } else {
                floor.queue.retain(|t| t.session_id != session_id);
                FloorChange::Nothing
            }
        }
        FloorEvent::Leave { session_id } => {
            floor.queue.retain(|t| t.session_id != session_id);
            if floor.holder.as_ref().is_some_and(|g| g.talker.session_id == session_id) {
                grant_next(floor, FloorEventType::Left)
            } else {
                FloorChange::Nothing
            }
        }
        FloorEvent::Expire { grant_id } => {
            if floor.holder.as_ref().is_some_and(|g| g.grant_id == grant_id) {
                grant_next(floor, FloorEventType::Revoked)
            } else {
                FloorChange::Nothing
            }
        }
    };
    if let Some(g) = &mut floor.holder
        && g.grant_id.is_empty()
    {
        g.grant_id = new_grant_id();
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Talker {
        Talker {
            session_id: s.into(),
            user_id: format!("user-{s}"),
            ssrc: s.len() as u32,
        }
    }

    #[test]
    fn every_floor_version_is_above_the_last_and_the_clock() {
        let mut floor = Floor::default();
        floor.next_version(1_000);
        assert_eq!(floor.version, 1_000);
        // The same microsecond, or a clock stepped back: still above.
        floor.next_version(1_000);
        assert_eq!(floor.version, 1_001);
        floor.next_version(10);
        assert_eq!(floor.version, 1_002);
        floor.next_version(5_000);
        assert_eq!(floor.version, 5_000);
        // A floor stored before versions existed reads as 0.
        let old: Floor = serde_json::from_str(r#"{"holder":null,"queue":[]}"#).unwrap();
        assert_eq!(old.version, 0);
    }

    fn apply(policy: FloorPolicy, floor: &mut Floor, e: FloorEvent) -> Result<FloorChange, ChannelError> {
        let mut n = 0;
        transition(policy, floor, e, 1_000, 500, || {
            n += 1;
            format!("g{n}")
        })
    }

    fn holder(f: &Floor) -> Option<&str> {
        f.holder.as_ref().map(|g| g.talker.session_id.as_str())
    }

    #[test]
    fn no_policy_refuses_every_floor_event() {
        let mut f = Floor::default();
        for e in [
            FloorEvent::Request(t("a")),
            FloorEvent::Release { session_id: "a".into() },
            FloorEvent::Leave { session_id: "a".into() },
            FloorEvent::Expire { grant_id: "g".into() },
        ] {
            assert!(matches!(
                apply(FloorPolicy::None, &mut f, e),
                Err(ChannelError::NoFloorControl)
            ));
        }
    }

    #[test]
    fn a_free_floor_is_granted_with_an_expiry() {
        for policy in [FloorPolicy::Exclusive, FloorPolicy::Queue] {
            let mut f = Floor::default();
            assert_eq!(
                apply(policy, &mut f, FloorEvent::Request(t("a"))).unwrap(),
                FloorChange::Holder {
                    why: FloorEventType::Granted
                }
            );
            let g = f.holder.as_ref().unwrap();
            assert_eq!((g.talker.session_id.as_str(), g.expires_at_ms), ("a", 1_500));
            assert!(!g.grant_id.is_empty());
        }
    }

    #[test]
    fn the_holder_asking_again_changes_nothing() {
        let mut f = Floor::default();
        apply(FloorPolicy::Queue, &mut f, FloorEvent::Request(t("a"))).unwrap();
        let before = f.clone();
        assert_eq!(
            apply(FloorPolicy::Queue, &mut f, FloorEvent::Request(t("a"))).unwrap(),
            FloorChange::Nothing
        );
        assert_eq!(f, before);
    }

    #[test]
    fn exclusive_refuses_while_held() {
        let mut f = Floor::default();
        apply(FloorPolicy::Exclusive, &mut f, FloorEvent::Request(t("a"))).unwrap();
        assert!(
            matches!(apply(FloorPolicy::Exclusive, &mut f, FloorEvent::Request(t("b"))), Err(ChannelError::FloorBusy(u)) if u == "user-a")
        );
        assert!(f.queue.is_empty());
    }

    #[test]
    fn queue_waits_in_order_and_hands_over_on_release() {
        let mut f = Floor::default();
        let q = FloorPolicy::Queue;
        apply(q, &mut f, FloorEvent::Request(t("a"))).unwrap();
        assert_eq!(
            apply(q, &mut f, FloorEvent::Request(t("b"))).unwrap(),
            FloorChange::Queued(1)
        );
        assert_eq!(
            apply(q, &mut f, FloorEvent::Request(t("c"))).unwrap(),
            FloorChange::Queued(2)
        );
        assert_eq!(
            apply(q, &mut f, FloorEvent::Request(t("b"))).unwrap(),
            FloorChange::Queued(1),
            "no double entry"
        );
        assert_eq!(
            apply(q, &mut f, FloorEvent::Release { session_id: "a".into() }).unwrap(),
            FloorChange::Holder {
                why: FloorEventType::Released
            }
        );
        assert_eq!(holder(&f), Some("b"));
        assert_eq!(f.queue, vec![t("c")]);
    }

    #[test]
    fn releasing_without_holding_only_leaves_the_queue() {
        let mut f = Floor::default();
        let q = FloorPolicy::Queue;
        apply(q, &mut f, FloorEvent::Request(t("a"))).unwrap();
        apply(q, &mut f, FloorEvent::Request(t("b"))).unwrap();
        assert_eq!(
            apply(q, &mut f, FloorEvent::Release { session_id: "b".into() }).unwrap(),
            FloorChange::Nothing
        );
        assert_eq!(holder(&f), Some("a"));
        assert!(f.queue.is_empty());
    }

    #[test]
    fn the_holder_leaving_frees_or_hands_over() {
        let mut f = Floor::default();
        let q = FloorPolicy::Queue;
        apply(q, &mut f, FloorEvent::Request(t("a"))).unwrap();
        assert_eq!(
            apply(q, &mut f, FloorEvent::Leave { session_id: "a".into() }).unwrap(),
            FloorChange::Holder {
                why: FloorEventType::Left
            }
        );
        assert_eq!(holder(&f), None);
        apply(q, &mut f, FloorEvent::Request(t("a"))).unwrap();
        apply(q, &mut f, FloorEvent::Request(t("b"))).unwrap();
        apply(q, &mut f, FloorEvent::Leave { session_id: "a".into() }).unwrap();
        assert_eq!(holder(&f), Some("b"));
    }

    #[test]
    fn expiry_revokes_only_the_grant_it_was_armed_for() {
        let mut f = Floor::default();
        let q = FloorPolicy::Queue;
        apply(q, &mut f, FloorEvent::Request(t("a"))).unwrap();
        let first = f.holder.as_ref().unwrap().grant_id.clone();
        apply(q, &mut f, FloorEvent::Request(t("b"))).unwrap();
        assert_eq!(
            apply(
                q,
                &mut f,
                FloorEvent::Expire {
                    grant_id: "stale".into()
                }
            )
            .unwrap(),
            FloorChange::Nothing
        );
        assert_eq!(
            apply(q, &mut f, FloorEvent::Expire { grant_id: first }).unwrap(),
            FloorChange::Holder {
                why: FloorEventType::Revoked
            }
        );
        assert_eq!(holder(&f), Some("b"));
    }

    #[test]
    fn policies_round_trip_through_the_client_enum() {
        assert_eq!(
            FloorPolicy::from_proto(proto::FloorPolicy::Unspecified),
            FloorPolicy::None
        );
        for p in [FloorPolicy::None, FloorPolicy::Exclusive, FloorPolicy::Queue] {
            assert_eq!(FloorPolicy::from_proto(p.to_proto()), p);
        }
    }
}
