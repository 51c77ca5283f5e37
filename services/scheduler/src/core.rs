//! The scheduler's in-memory state: per node, its devices' queues
//! (`dispatch::NodeQueues`) and the open tasks. Rebuilt from the store at
//! start; every decision made here is persisted by the service afterwards.
//!
//! Guarded by a plain mutex and never held across an `.await`.

use std::collections::HashMap;

use relaymesh_proto::scheduler::v1::TaskState;

use crate::dispatch::NodeQueues;
use crate::store::TaskRow;

pub struct NodeState {
    pub queues: NodeQueues<String, String>,
    pub devices: Vec<String>,
    /// The gateway connection holding the node, when connected.
    pub connection: Option<String>,
    /// Its last HEARTBEAT said READY (seed 000's pull-based push): no
    /// command goes to a node that has only said HELLO, or that refused one.
    pub ready: bool,
    pub last_heartbeat_ms: i64,
}

/// A task not yet finished.
#[derive(Debug, Clone)]
pub struct OpenTask {
    pub row: TaskRow,
    /// Unix ms past which a dispatched task is timed out; None while queued.
    pub deadline_ms: Option<i64>,
    /// Unix ms its COMMAND last went out (0: not known to have gone out,
    /// as for a task found in flight after a restart).
    pub sent_ms: i64,
}

#[derive(Default)]
pub struct Core {
    pub nodes: HashMap<String, NodeState>,
    pub open: HashMap<String, OpenTask>,
}

impl Core {
    /// Attaches (or re-attaches) a node with its devices and slots.
    pub fn register(
        &mut self,
        node_id: &str,
        devices: &[String],
        slots: usize,
        connection: Option<String>,
        now_ms: i64,
    ) {
        let node = self.nodes.entry(node_id.to_owned()).or_insert_with(|| NodeState {
            queues: NodeQueues::new(slots),
            devices: Vec::new(),
            connection: None,
            ready: false,
            last_heartbeat_ms: now_ms,
        });
        node.queues.set_slots(slots);
        for d in devices {
            node.queues.add_device(d.clone());
            if !node.devices.contains(d) {
                node.devices.push(d.clone());
            }
        }
        node.connection = connection;
        node.ready = false;
        node.last_heartbeat_ms = now_ms;
    }

    /// Attaches a known node to `connection` when it is not attached to it
    /// (a restarted scheduler meeting a node that stayed connected); true
    /// when that changed anything.
    pub fn attach(&mut self, node_id: &str, connection: &str, ready: bool, now_ms: i64) -> bool {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return false;
        };
        node.last_heartbeat_ms = now_ms;
        if node.connection.as_deref() == Some(connection) {
            return false;
        }
        node.connection = Some(connection.to_owned());
        node.ready = ready;
        true
    }

    /// A task whose COMMAND the node refused goes back to the head of its
    /// device's queue, and the node gets nothing more until it says READY.
    pub fn requeue(&mut self, task_id: &str, node_id: &str) -> Option<OpenTask> {
        let t = self.open.get_mut(task_id)?;
        if t.row.node_id != node_id || t.deadline_ms.is_none() {
            return None;
        }
        t.deadline_ms = None;
        t.row.state = TaskState::Queued;
        let t = t.clone();
        let node = self.nodes.get_mut(node_id)?;
        node.ready = false;
        node.queues.finish(&t.row.device_serial);
        node.queues
            .requeue_front(&t.row.device_serial, t.row.task_id.clone())
            .ok()?;
        Some(t)
    }

    /// The node a device is attached to.
    pub fn node_of(&self, device: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|(_, n)| n.queues.has_device(&device.to_owned()))
            .map(|(id, _)| id.as_str())
    }

    /// Queues a task on its node (false when its device is not attached).
    pub fn enqueue(&mut self, row: TaskRow) -> bool {
        let Some(node) = self.nodes.get_mut(&row.node_id) else {
            return false;
        };
        if node.queues.enqueue(&row.device_serial, row.task_id.clone()).is_err() {
            return false;
        }
        self.open.insert(
            row.task_id.clone(),
            OpenTask {
                row,
                deadline_ms: None,
                sent_ms: 0,
            },
        );
        true
    }

    /// Reloads a task that was in flight when the scheduler stopped: its
    /// device stays busy until its RESULT or deadline.
    pub fn restore_in_flight(&mut self, row: TaskRow) -> bool {
        let Some(node) = self.nodes.get_mut(&row.node_id) else {
            return false;
        };
        if !node.queues.occupy(&row.device_serial) {
            return false;
        }
        let deadline_ms = row.deadline_ms;
        self.open.insert(
            row.task_id.clone(),
            OpenTask {
                row,
                deadline_ms,
                sent_ms: 0,
            },
        );
        true
    }

    /// Starts every task the node can take now; returns them with their
    /// new attempt count and deadline set. Nothing for a node that is not
    /// connected and READY.
    pub fn dispatch(&mut self, node_id: &str, now_ms: i64, grace_ms: i64) -> Vec<OpenTask> {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return Vec::new();
        };
        if node.connection.is_none() || !node.ready {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (_, task_id) in node.queues.drain_ready() {
            if let Some(t) = self.open.get_mut(&task_id) {
                t.row.attempts += 1;
                t.row.state = TaskState::Dispatched;
                t.deadline_ms = Some(now_ms + t.row.timeout_ms + grace_ms);
                t.sent_ms = now_ms;
                out.push(t.clone());
            }
        }
        out
    }

    /// In-flight tasks of `node_id` that the node does not report running
    /// and whose COMMAND went out at least `after_ms` ago (or is not known
    /// to have gone out): the COMMAND may have been lost, e.g. by a
    /// scheduler killed between recording a dispatch and answering the hub.
    /// Sending it again is safe: a node runs a command id at most once, and
    /// answers a COMMAND it already finished with its RESULT.
    pub fn unconfirmed(&mut self, node_id: &str, running: &[String], now_ms: i64, after_ms: i64) -> Vec<OpenTask> {
        let mut out = Vec::new();
        for t in self.open.values_mut() {
            if t.row.node_id == node_id
                && t.deadline_ms.is_some()
                && now_ms - t.sent_ms >= after_ms
                && !running.contains(&t.row.task_id)
            {
                t.sent_ms = now_ms;
                out.push(t.clone());
            }
        }
        out
    }

    /// Ends a task (any outcome) and frees its device.
    pub fn finish(&mut self, task_id: &str) -> Option<OpenTask> {
        let t = self.open.remove(task_id)?;
        if let Some(node) = self.nodes.get_mut(&t.row.node_id) {
            node.queues.finish(&t.row.device_serial);
        }
        Some(t)
    }

    /// Ends every dispatched task past its deadline.
    pub fn expire(&mut self, now_ms: i64) -> Vec<OpenTask> {
        let due: Vec<String> = self
            .open
            .values()
            .filter(|t| t.deadline_ms.is_some_and(|d| d <= now_ms))
            .map(|t| t.row.task_id.clone())
            .collect();
        due.iter().filter_map(|id| self.finish(id)).collect()
    }
}
