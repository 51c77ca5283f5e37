//! The dispatch core of one node (seed 002): every device has its own FIFO
//! queue; a device runs one task at a time; the node runs at most `slots`
//! devices at once; a freed slot goes to the next eligible device in
//! round-robin order.
//!
//! Pure data, no I/O: the service decides when to call it and persists what
//! it decides. Every operation is O(1): eligible devices wait in a ring in
//! the order they became eligible, which is round-robin by construction (a
//! device that just ran goes to the back).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// One device's queue.
#[derive(Debug)]
struct DeviceQueue<T> {
    fifo: VecDeque<T>,
    running: bool,
    /// In the eligible ring now (queued work, not running).
    in_ring: bool,
}

/// Dispatch state of one node, over device ids `D` and task ids `T`.
#[derive(Debug)]
pub struct NodeQueues<D, T> {
    slots: usize,
    running: usize,
    devices: HashMap<D, DeviceQueue<T>>,
    ring: VecDeque<D>,
}

/// Why a task could not be enqueued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    #[error("device is not attached to this node")]
    UnknownDevice,
}

impl<D: Clone + Eq + Hash, T> NodeQueues<D, T> {
    pub fn new(slots: usize) -> Self {
        Self {
            slots,
            running: 0,
            devices: HashMap::new(),
            ring: VecDeque::new(),
        }
    }

    /// Attaches a device (idempotent).
    pub fn add_device(&mut self, device: D) {
        self.devices.entry(device).or_insert(DeviceQueue {
            fifo: VecDeque::new(),
            running: false,
            in_ring: false,
        });
    }

    pub fn has_device(&self, device: &D) -> bool {
        self.devices.contains_key(device)
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn running(&self) -> usize {
        self.running
    }

    pub fn queued(&self, device: &D) -> usize {
        self.devices.get(device).map_or(0, |d| d.fifo.len())
    }

    /// Appends `task` to `device`'s queue.
    pub fn enqueue(&mut self, device: &D, task: T) -> Result<(), DispatchError> {
        let q = self.devices.get_mut(device).ok_or(DispatchError::UnknownDevice)?;
        q.fifo.push_back(task);
        if !q.running && !q.in_ring {
            q.in_ring = true;
            self.ring.push_back(device.clone());
        }
        Ok(())
    }

    /// Puts `task` back at the head of `device`'s queue (a task whose node
    /// dropped it is retried before newer work for the same device).
    pub fn requeue_front(&mut self, device: &D, task: T) -> Result<(), DispatchError> {
        let q = self.devices.get_mut(device).ok_or(DispatchError::UnknownDevice)?;
        q.fifo.push_front(task);
        if !q.running && !q.in_ring {
            q.in_ring = true;
            self.ring.push_back(device.clone());
        }
        Ok(())
    }

    /// The next task to start, if a slot is free and a device is eligible:
    /// the device is marked running until [`NodeQueues::finish`].
    pub fn start_next(&mut self) -> Option<(D, T)> {
        if self.running >= self.slots {
            return None;
        }
        while let Some(device) = self.ring.pop_front() {
            let Some(q) = self.devices.get_mut(&device) else {
                continue;
            };
            q.in_ring = false;
            if q.running {
                continue;
            }
            if let Some(task) = q.fifo.pop_front() {
                q.running = true;
                self.running += 1;
                return Some((device, task));
            }
        }
        None
    }

    /// Every task startable now, until slots or eligible devices run out.
    pub fn drain_ready(&mut self) -> Vec<(D, T)> {
        std::iter::from_fn(|| self.start_next()).collect()
    }

    /// The running task of `device` ended (any outcome): its slot is free
    /// and the device, if it has more work, goes to the back of the ring.
    /// False when the device was not running.
    pub fn finish(&mut self, device: &D) -> bool {
        let Some(q) = self.devices.get_mut(device) else {
            return false;
        };
        if !q.running {
            return false;
        }
        q.running = false;
        self.running -= 1;
        if !q.fifo.is_empty() && !q.in_ring {
            q.in_ring = true;
            self.ring.push_back(device.clone());
        }
        true
    }

    /// Marks `device` busy with a task that started elsewhere (found in
    /// flight when a restarted scheduler reloads its state). False when the
    /// device is unknown or already busy.
    pub fn occupy(&mut self, device: &D) -> bool {
        let Some(q) = self.devices.get_mut(device) else {
            return false;
        };
        if q.running {
            return false;
        }
        q.running = true;
        self.running += 1;
        true
    }

    /// Changes the node's slot count (a node re-registered with another).
    pub fn set_slots(&mut self, slots: usize) {
        self.slots = slots;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(devices: usize, slots: usize) -> NodeQueues<usize, (usize, usize)> {
        let mut n = NodeQueues::new(slots);
        for d in 0..devices {
            n.add_device(d);
        }
        n
    }

    #[test]
    fn never_more_than_the_slots_run_at_once() {
        let mut n = node(100, 20);
        for d in 0..100 {
            for k in 0..5 {
                n.enqueue(&d, (d, k)).unwrap();
            }
        }
        assert_eq!(n.drain_ready().len(), 20);
        assert_eq!(n.running(), 20);
        assert!(n.start_next().is_none(), "no free slot");
    }

    #[test]
    fn a_device_runs_one_task_at_a_time_in_fifo_order() {
        let mut n = node(1, 20);
        for k in 0..3 {
            n.enqueue(&0, (0, k)).unwrap();
        }
        assert_eq!(n.start_next(), Some((0, (0, 0))));
        assert_eq!(n.start_next(), None, "the device is busy though slots are free");
        assert!(n.finish(&0));
        assert_eq!(n.start_next(), Some((0, (0, 1))));
        assert!(n.finish(&0));
        assert_eq!(n.start_next(), Some((0, (0, 2))));
    }

    #[test]
    fn a_freed_slot_goes_round_robin_to_the_next_eligible_device() {
        let mut n = node(4, 2);
        for d in 0..4 {
            for k in 0..2 {
                n.enqueue(&d, (d, k)).unwrap();
            }
        }
        let first: Vec<_> = n.drain_ready().into_iter().map(|(d, _)| d).collect();
        assert_eq!(first, [0, 1]);
        n.finish(&0);
        assert_eq!(n.start_next().map(|(d, _)| d), Some(2), "device 0 waits behind 2 and 3");
        n.finish(&1);
        assert_eq!(n.start_next().map(|(d, _)| d), Some(3));
        n.finish(&2);
        assert_eq!(n.start_next().map(|(d, _)| d), Some(0), "then back to 0");
    }

    #[test]
    fn every_task_runs_exactly_once() {
        let mut n = node(100, 20);
        let mut expected = Vec::new();
        for d in 0..100 {
            for k in 0..5 {
                n.enqueue(&d, (d, k)).unwrap();
                expected.push((d, k));
            }
        }
        let mut ran = Vec::new();
        let mut running: VecDeque<usize> = VecDeque::new();
        loop {
            for (d, t) in n.drain_ready() {
                assert!(!running.contains(&d), "device {d} ran twice at once");
                running.push_back(d);
                ran.push(t);
            }
            assert!(n.running() <= 20);
            match running.pop_front() {
                Some(d) => assert!(n.finish(&d)),
                None => break,
            }
        }
        ran.sort();
        assert_eq!(ran, expected);
    }

    #[test]
    fn unknown_devices_are_refused() {
        let mut n = node(1, 1);
        assert_eq!(n.enqueue(&7, (7, 0)), Err(DispatchError::UnknownDevice));
        assert!(!n.finish(&7));
    }

    #[test]
    fn a_requeued_task_runs_before_newer_work() {
        let mut n = node(1, 1);
        n.enqueue(&0, (0, 1)).unwrap();
        let (_, t) = n.start_next().unwrap();
        n.enqueue(&0, (0, 2)).unwrap();
        n.finish(&0);
        n.start_next();
        n.finish(&0);
        n.requeue_front(&0, t).unwrap();
        assert_eq!(n.start_next(), Some((0, (0, 1))));
    }

    #[test]
    fn an_occupied_device_takes_a_slot_until_finished() {
        let mut n = node(2, 1);
        n.enqueue(&1, (1, 0)).unwrap();
        assert!(n.occupy(&0));
        assert!(!n.occupy(&0), "already busy");
        assert_eq!(n.start_next(), None, "the one slot is taken");
        n.finish(&0);
        assert_eq!(n.start_next(), Some((1, (1, 0))));
    }

    #[test]
    fn finishing_an_idle_device_frees_nothing() {
        let mut n = node(2, 1);
        n.enqueue(&0, (0, 0)).unwrap();
        n.start_next();
        assert!(!n.finish(&1));
        assert_eq!(n.running(), 1);
    }
}
