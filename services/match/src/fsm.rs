//! The match state machine: one table of every allowed transition.
//!
//! [`transition`] is the only way a session's state changes; the service
//! applies its answer with a compare-and-set, so two racing actions on one
//! session cannot both win. Anything not in [`TABLE`] is refused.

use relaymesh_proto::r#match::v1::MatchState;

/// Who acts on a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The player who asked for the match (the seed's player1).
    Requester,
    /// The player asked (player2).
    Target,
    /// The service itself (a deadline passed).
    System,
}

/// What can happen to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Decline,
    Cancel,
    /// An SDP offer, SDP answer or ICE candidate between the players.
    Signal,
    /// The actor's peer connection is up.
    ReportUp,
    /// The actor's peer connection failed.
    ReportDown,
    /// The actor disconnected or left the lobby.
    Leave,
    /// The phase's deadline passed (request expiry, negotiation timeout).
    Deadline,
}

/// Who may take an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum May {
    Requester,
    Target,
    Either,
    System,
}

/// Where an allowed action leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    To(MatchState),
    /// Marks the actor's side up: Connected when the other side is up too,
    /// Connecting otherwise.
    UpWhenBoth,
}

/// Why an action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Only the target accepts or declines.
    NotTarget,
    /// Only the requester cancels.
    NotRequester,
    /// The session has ended: nothing happens after a terminal state.
    Closed,
    /// Not allowed in this state (or not by a player).
    InvalidTransition,
}

use MatchState as S;

/// Every allowed (state, action): who may take it and where it leads.
const TABLE: &[(MatchState, Action, May, Next)] = &[
    (S::Requested, Action::Accept, May::Target, Next::To(S::Accepted)),
    (S::Requested, Action::Decline, May::Target, Next::To(S::Declined)),
    (S::Requested, Action::Cancel, May::Requester, Next::To(S::Cancelled)),
    (S::Requested, Action::Leave, May::Either, Next::To(S::Cancelled)),
    (S::Requested, Action::Deadline, May::System, Next::To(S::Expired)),
    (S::Accepted, Action::Signal, May::Either, Next::To(S::Connecting)),
    (S::Accepted, Action::ReportUp, May::Either, Next::UpWhenBoth),
    (S::Accepted, Action::ReportDown, May::Either, Next::To(S::Failed)),
    (S::Accepted, Action::Leave, May::Either, Next::To(S::Failed)),
    (S::Accepted, Action::Deadline, May::System, Next::To(S::Failed)),
    (S::Connecting, Action::Signal, May::Either, Next::To(S::Connecting)),
    (S::Connecting, Action::ReportUp, May::Either, Next::UpWhenBoth),
    (S::Connecting, Action::ReportDown, May::Either, Next::To(S::Failed)),
    (S::Connecting, Action::Leave, May::Either, Next::To(S::Failed)),
    (S::Connecting, Action::Deadline, May::System, Next::To(S::Failed)),
    // Late ICE candidates and re-reports after the connection is up.
    (S::Connected, Action::Signal, May::Either, Next::To(S::Connected)),
    (S::Connected, Action::ReportUp, May::Either, Next::To(S::Connected)),
    (S::Connected, Action::ReportDown, May::Either, Next::To(S::Failed)),
    (S::Connected, Action::Leave, May::Either, Next::To(S::Failed)),
];

/// Whether nothing may happen after `state`.
pub fn is_terminal(state: MatchState) -> bool {
    matches!(
        state,
        S::Declined | S::Cancelled | S::Expired | S::Failed | S::Unspecified
    )
}

/// Whether the players of a session in `state` are busy with it: it holds
/// their one open match.
pub fn is_open(state: MatchState) -> bool {
    !is_terminal(state)
}

/// Where `action` by `actor` leads from `state`, or why it may not happen.
pub fn transition(state: MatchState, action: Action, actor: Actor) -> Result<Next, Refusal> {
    if is_terminal(state) {
        return Err(Refusal::Closed);
    }
    let Some(&(_, _, may, next)) = TABLE.iter().find(|(s, a, _, _)| *s == state && *a == action) else {
        return Err(Refusal::InvalidTransition);
    };
    match (may, actor) {
        (May::Either, Actor::Requester | Actor::Target)
        | (May::Requester, Actor::Requester)
        | (May::Target, Actor::Target)
        | (May::System, Actor::System) => Ok(next),
        (May::Target, Actor::Requester) => Err(Refusal::NotTarget),
        (May::Requester, Actor::Target) => Err(Refusal::NotRequester),
        _ => Err(Refusal::InvalidTransition),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [MatchState; 8] = [
        S::Requested,
        S::Accepted,
        S::Declined,
        S::Cancelled,
        S::Expired,
        S::Connecting,
        S::Connected,
        S::Failed,
    ];
    const ACTIONS: [Action; 8] = [
        Action::Accept,
        Action::Decline,
        Action::Cancel,
        Action::Signal,
        Action::ReportUp,
        Action::ReportDown,
        Action::Leave,
        Action::Deadline,
    ];
    const ACTORS: [Actor; 3] = [Actor::Requester, Actor::Target, Actor::System];

    /// The expected answer for every state x action x actor, written out
    /// independently of TABLE.
    fn expected(state: MatchState, action: Action, actor: Actor) -> Result<Next, Refusal> {
        use Action as A;
        use Actor::{Requester as R, System as Sys, Target as T};
        if is_terminal(state) {
            return Err(Refusal::Closed);
        }
        let player = matches!(actor, R | T);
        match (state, action, actor) {
            (S::Requested, A::Accept, T) => Ok(Next::To(S::Accepted)),
            (S::Requested, A::Decline, T) => Ok(Next::To(S::Declined)),
            (S::Requested, A::Accept | A::Decline, R) => Err(Refusal::NotTarget),
            (S::Requested, A::Cancel, R) => Ok(Next::To(S::Cancelled)),
            (S::Requested, A::Cancel, T) => Err(Refusal::NotRequester),
            (S::Requested, A::Leave, _) if player => Ok(Next::To(S::Cancelled)),
            (S::Requested, A::Deadline, Sys) => Ok(Next::To(S::Expired)),
            (S::Accepted | S::Connecting, A::Signal, _) if player => Ok(Next::To(S::Connecting)),
            (S::Accepted | S::Connecting, A::ReportUp, _) if player => Ok(Next::UpWhenBoth),
            (S::Accepted | S::Connecting | S::Connected, A::ReportDown | A::Leave, _) if player => {
                Ok(Next::To(S::Failed))
            }
            (S::Accepted | S::Connecting, A::Deadline, Sys) => Ok(Next::To(S::Failed)),
            (S::Connected, A::Signal | A::ReportUp, _) if player => Ok(Next::To(S::Connected)),
            _ => Err(Refusal::InvalidTransition),
        }
    }

    #[test]
    fn every_state_action_and_actor_follows_the_table() {
        for state in STATES {
            for action in ACTIONS {
                for actor in ACTORS {
                    assert_eq!(
                        transition(state, action, actor),
                        expected(state, action, actor),
                        "{state:?} {action:?} by {actor:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn nothing_happens_after_a_terminal_state() {
        for state in [S::Declined, S::Cancelled, S::Expired, S::Failed] {
            for action in ACTIONS {
                for actor in ACTORS {
                    assert_eq!(transition(state, action, actor), Err(Refusal::Closed));
                }
            }
        }
    }

    #[test]
    fn only_the_target_accepts_and_only_the_requester_cancels() {
        assert_eq!(
            transition(S::Requested, Action::Accept, Actor::Requester),
            Err(Refusal::NotTarget)
        );
        assert_eq!(
            transition(S::Requested, Action::Cancel, Actor::Target),
            Err(Refusal::NotRequester)
        );
    }

    #[test]
    fn sdp_before_accept_is_refused() {
        assert_eq!(
            transition(S::Requested, Action::Signal, Actor::Requester),
            Err(Refusal::InvalidTransition)
        );
    }
}
