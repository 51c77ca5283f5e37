//! Match sessions in shared state, changed only through [`fsm::transition`]
//! and a compare-and-set on the stored session: of two racing actions on one
//! session, one wins and the other re-reads and is judged on the new state.
//!
//! Keys: `match:session:<id>` the session; `match:open:<player>` the one
//! open session of a player (taken with set-if-absent); `match:deadlines`
//! the open sessions' deadlines, swept by every replica.

use std::time::Duration;

use prost::Message;
use relaymesh_proto::r#match::v1::{MatchSession, MatchState};
use relaymesh_state::SharedState;

use crate::error::{MatchError, Result};
use crate::fsm::{self, Action, Actor, Next};

const DEADLINES: &str = "match:deadlines";
/// Sessions outlive their end by this much, so late messages are answered
/// "closed" rather than "not found".
const SESSION_TTL: Duration = Duration::from_secs(3600);
/// Compare-and-set attempts before a call gives up as contended.
const CAS_ATTEMPTS: usize = 16;

fn session_key(id: &str) -> String {
    format!("match:session:{id}")
}

fn open_key(player: &str) -> String {
    format!("match:open:{player}")
}

/// A session before and after one applied action.
#[derive(Debug, Clone)]
pub struct Applied {
    pub before: MatchSession,
    pub after: MatchSession,
}

impl Applied {
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

#[derive(Clone)]
pub struct Sessions {
    state: SharedState,
}

fn after_ms(d: Duration) -> i64 {
    chrono::Utc::now()
        .timestamp_millis()
        .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The role `player` plays in `s`, if any.
pub fn role_of(s: &MatchSession, player: &str) -> Option<Actor> {
    if s.requester_id == player {
        Some(Actor::Requester)
    } else if s.target_id == player {
        Some(Actor::Target)
    } else {
        None
    }
}

impl Sessions {
    pub fn new(state: SharedState) -> Self {
        Self { state }
    }

    /// The open session of `player`, if any.
    pub async fn open_of(&self, player: &str) -> Result<Option<String>> {
        Ok(self
            .state
            .get(&open_key(player))
            .await?
            .and_then(|b| String::from_utf8(b).ok()))
    }

    /// Opens a Requested session between two players, each of whom must
    /// have no other open session.
    pub async fn open(
        &self,
        requester: (&str, &str),
        target: (&str, &str),
        expires_in: Duration,
    ) -> Result<MatchSession> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        if !self.state.set_nx(&open_key(requester.0), id.as_bytes(), None).await? {
            return Err(MatchError::PlayerBusy(requester.0.to_owned()));
        }
        if !self.state.set_nx(&open_key(target.0), id.as_bytes(), None).await? {
            self.release_player(requester.0, &id).await?;
            return Err(MatchError::PlayerBusy(target.0.to_owned()));
        }
        let session = MatchSession {
            session_id: id.clone(),
            requester_id: requester.0.to_owned(),
            requester_name: requester.1.to_owned(),
            target_id: target.0.to_owned(),
            target_name: target.1.to_owned(),
            state: MatchState::Requested as i32,
            created_at_ms: chrono::Utc::now().timestamp_millis(),
            deadline_ms: after_ms(expires_in),
            version: 1,
            ..MatchSession::default()
        };
        self.state
            .set(&session_key(&id), &session.encode_to_vec(), Some(SESSION_TTL))
            .await?;
        self.state
            .hash_set(DEADLINES, &id, session.deadline_ms.to_string().as_bytes())
            .await?;
        Ok(session)
    }

    /// Applies `action` by `player` (None: the service) to session `id`.
    /// `check` vets the session first (the ids a frame named); `negotiation`
    /// is the deadline an accepted match gets.
    pub async fn apply(
        &self,
        id: &str,
        player: Option<&str>,
        action: Action,
        negotiation: Duration,
        check: impl Fn(&MatchSession) -> Result<()>,
    ) -> Result<Applied> {
        let key = session_key(id);
        for _ in 0..CAS_ATTEMPTS {
            let Some(bytes) = self.state.get(&key).await? else {
                return Err(MatchError::SessionNotFound(Some(id.to_owned())));
            };
            let before = MatchSession::decode(bytes.as_slice())?;
            let actor = match player {
                Some(p) => role_of(&before, p).ok_or_else(|| MatchError::NotAPlayer(id.to_owned()))?,
                None => Actor::System,
            };
            check(&before)?;
            let next = fsm::transition(before.state(), action, actor).map_err(|refusal| MatchError::Refused {
                refusal,
                session_id: id.to_owned(),
            })?;
            let mut after = before.clone();
            match next {
                Next::To(state) => after.set_state(state),
                Next::UpWhenBoth => {
                    match actor {
                        Actor::Requester => after.requester_connected = true,
                        Actor::Target => after.target_connected = true,
                        Actor::System => {}
                    }
                    after.set_state(if after.requester_connected && after.target_connected {
                        MatchState::Connected
                    } else {
                        MatchState::Connecting
                    });
                }
            }
            if after == before {
                return Ok(Applied { before, after });
            }
            after.deadline_ms = match after.state() {
                MatchState::Accepted => after_ms(negotiation),
                MatchState::Connecting => before.deadline_ms,
                _ => 0,
            };
            after.version += 1;
            let swapped = self
                .state
                .compare_and_swap(&key, &bytes, Some(&after.encode_to_vec()), Some(SESSION_TTL))
                .await?;
            if swapped {
                self.settle(&after).await?;
                return Ok(Applied { before, after });
            }
        }
        Err(MatchError::Contended(id.to_owned()))
    }

    /// Keeps the deadline index and the players' open-session keys in step
    /// with a session that just changed.
    async fn settle(&self, s: &MatchSession) -> Result<()> {
        if s.deadline_ms > 0 {
            self.state
                .hash_set(DEADLINES, &s.session_id, s.deadline_ms.to_string().as_bytes())
                .await?;
        } else {
            self.state.hash_delete(DEADLINES, &s.session_id).await?;
        }
        if fsm::is_terminal(s.state()) {
            self.release_player(&s.requester_id, &s.session_id).await?;
            self.release_player(&s.target_id, &s.session_id).await?;
        }
        Ok(())
    }

    /// Frees `player`'s open-session slot if `id` holds it.
    async fn release_player(&self, player: &str, id: &str) -> Result<()> {
        self.state
            .compare_and_swap(&open_key(player), id.as_bytes(), None, None)
            .await?;
        Ok(())
    }

    /// Sessions whose deadline has passed.
    pub async fn overdue(&self) -> Result<Vec<String>> {
        let now = chrono::Utc::now().timestamp_millis();
        Ok(self
            .state
            .hash_all(DEADLINES)
            .await?
            .into_iter()
            .filter(|(_, v)| {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_none_or(|d| d <= now)
            })
            .map(|(id, _)| id)
            .collect())
    }

    /// Forgets a deadline that no longer applies.
    pub async fn drop_deadline(&self, id: &str) -> Result<()> {
        self.state.hash_delete(DEADLINES, id).await?;
        Ok(())
    }
}
