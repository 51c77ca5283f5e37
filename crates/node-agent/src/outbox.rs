//! `Outbox`: RESULTs not yet ACKed by the hub, in the order they were
//! produced. Results survive disconnects here and are resent after each
//! HELLO_ACK (seed 002: callbacks are buffered and retried by the node).
//! While connected, a result is sent again when it is due: [`RESEND_AFTER`]
//! after it went out without an ACK (the ACK was lost), or after a backoff of
//! seconds when the hub refused it with an ERROR naming its command (the
//! scheduler was briefly unavailable). The hub records a result once per
//! command_id, so repeats are harmless.
//!
//! With a state directory the outbox is also a file
//! (`<dir>/outbox-<node_id>.jsonl`): one line per result kept and per ACK,
//! appended as they happen and compacted when ACKs dominate, so results
//! survive a restart of the agent itself (a crash, an upgrade). Writes are
//! plain appends of a few hundred bytes, once per result; they are not
//! fsynced (a process crash loses nothing, a power cut may lose the tail).
//!
//! Overflow policy: bounded; when full the oldest result is dropped and
//! returned so the caller can log it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::frames::CommandResult;
use crate::ids::{CommandId, NodeId};

/// A result sent without an ACK is due again after this long.
pub const RESEND_AFTER: Duration = Duration::from_secs(10);
/// First wait after the hub refused a result; doubles per refusal.
const REFUSED_FIRST: Duration = Duration::from_secs(1);
/// Longest wait after a refusal.
const REFUSED_MAX: Duration = Duration::from_secs(8);

#[derive(Debug)]
struct Entry {
    result: CommandResult,
    /// When it should go out (again); `None`: at the next chance.
    due: Option<Instant>,
    /// Refusals in a row, for the backoff.
    refusals: u32,
}

/// One line of the outbox file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Keep(CommandResult),
    Ack(CommandId),
}

/// Why the outbox file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("outbox file {path}: {source}")]
pub struct OutboxFileError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

#[derive(Debug)]
struct Journal {
    path: PathBuf,
    file: File,
    /// Lines in the file, to know when compaction pays.
    lines: usize,
}

#[derive(Debug)]
pub struct Outbox {
    capacity: usize,
    next_seq: u64,
    by_seq: BTreeMap<u64, Entry>,
    seq_of: HashMap<CommandId, u64>,
    journal: Option<Journal>,
}

impl Outbox {
    /// An outbox in memory only.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            next_seq: 0,
            by_seq: BTreeMap::new(),
            seq_of: HashMap::new(),
            journal: None,
        }
    }

    /// An outbox kept in `dir` for `node`: results left unacknowledged by
    /// an earlier run are loaded back, oldest first.
    pub fn open(capacity: usize, dir: &Path, node: &NodeId) -> Result<Self, OutboxFileError> {
        let path = dir.join(format!("outbox-{}.jsonl", file_safe(node.as_str())));
        let err = |source| OutboxFileError {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut outbox = Self::new(capacity);
        match File::open(&path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line = line.map_err(err)?;
                    // A torn last line (killed mid-write) is skipped.
                    match serde_json::from_str::<Line>(&line) {
                        Ok(Line::Keep(r)) => {
                            outbox.push(r);
                        }
                        Ok(Line::Ack(id)) => {
                            outbox.ack(&id);
                        }
                        Err(_) => {}
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let file = rewrite(&path, outbox.pending()).map_err(err)?;
        outbox.journal = Some(Journal {
            path,
            file,
            lines: outbox.len(),
        });
        Ok(outbox)
    }

    /// Keeps `result` until acknowledged; a newer result for the same
    /// command replaces the older. Returns the result dropped to make room.
    pub fn push(&mut self, result: CommandResult) -> Option<CommandResult> {
        self.forget(&result.command_id);
        let dropped = if self.by_seq.len() >= self.capacity {
            self.by_seq.pop_first().map(|(_, old)| {
                self.seq_of.remove(&old.result.command_id);
                old.result
            })
        } else {
            None
        };
        self.journal(&Line::Keep(result.clone()));
        if let Some(d) = &dropped {
            self.journal(&Line::Ack(d.command_id.clone()));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.seq_of.insert(result.command_id.clone(), seq);
        self.by_seq.insert(
            seq,
            Entry {
                result,
                due: None,
                refusals: 0,
            },
        );
        dropped
    }

    /// Forgets the result of `id`; `true` if it was held.
    pub fn ack(&mut self, id: &CommandId) -> bool {
        let held = self.forget(id);
        if held {
            self.journal(&Line::Ack(id.clone()));
            self.compact_if_worth_it();
        }
        held
    }

    fn forget(&mut self, id: &CommandId) -> bool {
        match self.seq_of.remove(id) {
            Some(seq) => self.by_seq.remove(&seq).is_some(),
            None => false,
        }
    }

    pub fn get(&self, id: &CommandId) -> Option<&CommandResult> {
        self.entry(id).map(|e| &e.result)
    }

    fn entry(&self, id: &CommandId) -> Option<&Entry> {
        self.seq_of.get(id).and_then(|seq| self.by_seq.get(seq))
    }

    fn entry_mut(&mut self, id: &CommandId) -> Option<&mut Entry> {
        self.seq_of.get(id).and_then(|seq| self.by_seq.get_mut(seq))
    }

    /// Records that the result of `id` was just sent: due again after
    /// [`RESEND_AFTER`] unless ACKed.
    pub fn mark_sent(&mut self, id: &CommandId, now: Instant) {
        if let Some(e) = self.entry_mut(id) {
            e.due = Some(now + RESEND_AFTER);
        }
    }

    /// The hub refused the result of `id` (ERROR naming it): due again
    /// after a backoff of 1, 2, 4, 8, 8… seconds. Returns the wait.
    pub fn mark_refused(&mut self, id: &CommandId, now: Instant) -> Option<Duration> {
        let e = self.entry_mut(id)?;
        let wait = REFUSED_FIRST.saturating_mul(1u32 << e.refusals.min(8)).min(REFUSED_MAX);
        e.refusals = e.refusals.saturating_add(1);
        e.due = Some(now + wait);
        Some(wait)
    }

    /// Unacknowledged results, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &CommandResult> {
        self.by_seq.values().map(|e| &e.result)
    }

    /// Unacknowledged results due at `now` (never sent, or their wait is
    /// over), oldest first.
    pub fn due(&self, now: Instant) -> Vec<CommandResult> {
        self.by_seq
            .values()
            .filter(|e| e.due.is_none_or(|t| t <= now))
            .map(|e| e.result.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    /// Appends a line; a failing disk is logged and the outbox carries on
    /// in memory (results are still delivered while the agent runs).
    fn journal(&mut self, line: &Line) {
        let Some(j) = &mut self.journal else { return };
        let Ok(mut text) = serde_json::to_string(line) else {
            return;
        };
        text.push('\n');
        if let Err(e) = j.file.write_all(text.as_bytes()) {
            tracing::error!(path = %j.path.display(), error = %e, "cannot write the result outbox file");
        }
        j.lines += 1;
    }

    /// Rewrites the file with only the results held, once it is mostly ACKs.
    fn compact_if_worth_it(&mut self) {
        let live = self.by_seq.len();
        let Some(j) = &self.journal else { return };
        if j.lines < 64 || j.lines < live * 4 {
            return;
        }
        let path = j.path.clone();
        match rewrite(&path, self.by_seq.values().map(|e| &e.result)) {
            Ok(file) => {
                self.journal = Some(Journal {
                    path,
                    file,
                    lines: live,
                });
            }
            Err(e) => tracing::error!(path = %path.display(), error = %e, "cannot compact the result outbox file"),
        }
    }
}

/// Writes `results` to a temporary file and renames it over `path`, so a
/// crash leaves either the old file or the new one; returns it for appends.
fn rewrite<'a>(path: &Path, results: impl Iterator<Item = &'a CommandResult>) -> std::io::Result<File> {
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut f = File::create(&tmp)?;
        for r in results {
            let mut text = serde_json::to_string(&Line::Keep(r.clone())).map_err(std::io::Error::other)?;
            text.push('\n');
            f.write_all(text.as_bytes())?;
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    OpenOptions::new().append(true).open(path)
}

/// A node id as a file name: anything but `[A-Za-z0-9._-]` becomes `_`.
fn file_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
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

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rm-outbox-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
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
    fn sent_results_are_due_again_only_after_the_resend_wait() {
        let mut o = Outbox::new(5);
        let t0 = Instant::now();
        o.push(result("sent"));
        o.push(result("never"));
        o.mark_sent(&"sent".into(), t0);
        let due = |o: &Outbox, t| o.due(t).into_iter().map(|r| r.command_id).collect::<Vec<_>>();
        assert_eq!(due(&o, t0), vec![CommandId::from("never")]);
        assert_eq!(due(&o, t0 + RESEND_AFTER).len(), 2);
    }

    #[test]
    fn a_refused_result_is_retried_after_seconds_doubling_to_a_cap() {
        let mut o = Outbox::new(5);
        let t0 = Instant::now();
        o.push(result("a"));
        let waits: Vec<u64> = (0..6)
            .map(|_| o.mark_refused(&"a".into(), t0).unwrap().as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 8, 8]);
        assert!(o.due(t0 + Duration::from_secs(7)).is_empty());
        assert_eq!(o.due(t0 + Duration::from_secs(8)).len(), 1);
        assert!(o.mark_refused(&"unknown".into(), t0).is_none());
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

    #[test]
    fn unacknowledged_results_survive_a_reopen_in_order() {
        let dir = temp_dir();
        let node = NodeId::from("node/A1");
        {
            let mut o = Outbox::open(10, &dir, &node).unwrap();
            o.push(result("a"));
            o.push(result("b"));
            o.push(result("c"));
            o.ack(&"b".into());
        }
        let mut o = Outbox::open(10, &dir, &node).unwrap();
        assert_eq!(ids(&o), ["a", "c"]);
        o.ack(&"a".into());
        drop(o);
        let o = Outbox::open(10, &dir, &node).unwrap();
        assert_eq!(ids(&o), ["c"]);
        assert!(dir.join("outbox-node_A1.jsonl").exists(), "the id is made file-safe");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_file_is_compacted_once_acks_dominate() {
        let dir = temp_dir();
        let node = NodeId::from("n");
        let mut o = Outbox::open(1000, &dir, &node).unwrap();
        for i in 0..200 {
            let id = format!("c{i}");
            o.push(result(&id));
            o.ack(&id.as_str().into());
        }
        o.push(result("last"));
        drop(o);
        let text = std::fs::read_to_string(dir.join("outbox-n.jsonl")).unwrap();
        assert!(text.lines().count() < 100, "{} lines", text.lines().count());
        assert_eq!(ids(&Outbox::open(1000, &dir, &node).unwrap()), ["last"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = temp_dir();
        let node = NodeId::from("n");
        {
            let mut o = Outbox::open(10, &dir, &node).unwrap();
            o.push(result("a"));
        }
        let path = dir.join("outbox-n.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"keep\":{\"command_id\":\"b\"").unwrap();
        drop(f);
        assert_eq!(ids(&Outbox::open(10, &dir, &node).unwrap()), ["a"]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
