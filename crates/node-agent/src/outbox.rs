//! `Outbox`: RESULTs not yet ACKed by the hub, in the order they were
//! produced. Results survive disconnects here and are resent after each
//! HELLO_ACK (seed 002: callbacks are buffered and retried by the node).
//! While connected, a result left unACKed for a while (the hub answered
//! ERROR, or the ACK was lost) is sent again too: the hub records a result
//! once per command_id, so repeats are harmless.
//! Overflow policy: bounded; when full the oldest result is dropped and
//! returned so the caller can log it.

use std::collections::{BTreeMap, HashMap};

use tokio::time::Instant;

use crate::frames::CommandResult;
use crate::ids::CommandId;

#[derive(Debug)]
struct Entry {
    result: CommandResult,
    /// When it last went out on a socket; `None` if never.
    sent_at: Option<Instant>,
}

#[derive(Debug)]
pub struct Outbox {
    capacity: usize,
    next_seq: u64,
    by_seq: BTreeMap<u64, Entry>,
    seq_of: HashMap<CommandId, u64>,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            next_seq: 0,
            by_seq: BTreeMap::new(),
            seq_of: HashMap::new(),
        }
    }

    /// Keeps `result` until acknowledged; a newer result for the same
    /// command replaces the older. Returns the result dropped to make room.
    pub fn push(&mut self, result: CommandResult) -> Option<CommandResult> {
        self.ack(&result.command_id);
        let dropped = if self.by_seq.len() >= self.capacity {
            self.by_seq.pop_first().map(|(_, old)| {
                self.seq_of.remove(&old.result.command_id);
                old.result
            })
        } else {
            None
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.seq_of.insert(result.command_id.clone(), seq);
        self.by_seq.insert(seq, Entry { result, sent_at: None });
        dropped
    }

    /// Forgets the result of `id`; `true` if it was held.
    pub fn ack(&mut self, id: &CommandId) -> bool {
        match self.seq_of.remove(id) {
            Some(seq) => self.by_seq.remove(&seq).is_some(),
            None => false,
        }
    }

    pub fn get(&self, id: &CommandId) -> Option<&CommandResult> {
        self.seq_of
            .get(id)
            .and_then(|seq| self.by_seq.get(seq))
            .map(|e| &e.result)
    }

    /// Records that the result of `id` was just sent.
    pub fn mark_sent(&mut self, id: &CommandId, now: Instant) {
        if let Some(e) = self.seq_of.get(id).and_then(|seq| self.by_seq.get_mut(seq)) {
            e.sent_at = Some(now);
        }
    }

    /// Unacknowledged results, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &CommandResult> {
        self.by_seq.values().map(|e| &e.result)
    }

    /// Unacknowledged results last sent before `cutoff` (or never), oldest first.
    pub fn unacked_since(&self, cutoff: Instant) -> Vec<CommandResult> {
        self.by_seq
            .values()
            .filter(|e| e.sent_at.is_none_or(|t| t < cutoff))
            .map(|e| e.result.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::ResultStatus;

    fn result(id: &str) -> CommandResult {
        CommandResult {
            command_id: id.into(),
            run_id: "r".into(),
            device_serial: "d".into(),
            status: ResultStatus::Success,
            error: None,
            result: None,
            started_at: 0,
            finished_at: 0,
        }
    }

    fn ids(o: &Outbox) -> Vec<&str> {
        o.pending().map(|r| r.command_id.as_str()).collect()
    }

    #[test]
    fn keeps_results_in_order_until_acked() {
        let mut o = Outbox::new(10);
        o.push(result("a"));
        o.push(result("b"));
        o.push(result("c"));
        assert!(o.ack(&"b".into()));
        assert!(!o.ack(&"b".into()));
        assert_eq!(ids(&o), ["a", "c"]);
    }

    #[test]
    fn drops_the_oldest_when_full() {
        let mut o = Outbox::new(2);
        assert!(o.push(result("a")).is_none());
        assert!(o.push(result("b")).is_none());
        assert_eq!(o.push(result("c")).map(|r| r.command_id), Some("a".into()));
        assert_eq!(ids(&o), ["b", "c"]);
        assert!(o.get(&"a".into()).is_none());
    }

    #[test]
    fn only_results_sent_before_the_cutoff_are_due_again() {
        let mut o = Outbox::new(5);
        let t0 = Instant::now();
        o.push(result("old"));
        o.push(result("new"));
        o.push(result("never"));
        o.mark_sent(&"old".into(), t0);
        o.mark_sent(&"new".into(), t0 + std::time::Duration::from_secs(10));
        let due: Vec<_> = o
            .unacked_since(t0 + std::time::Duration::from_secs(5))
            .into_iter()
            .map(|r| r.command_id)
            .collect();
        assert_eq!(due, vec!["old".into(), "never".into()]);
    }

    #[test]
    fn a_repeated_command_keeps_one_result() {
        let mut o = Outbox::new(5);
        o.push(result("a"));
        o.push(result("b"));
        o.push(result("a"));
        assert_eq!(ids(&o), ["b", "a"]);
        assert_eq!(o.len(), 2);
    }
}
