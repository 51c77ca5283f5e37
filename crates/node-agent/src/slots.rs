//! `SlotPool`: which commands run now, on which devices, and which ran
//! recently. It enforces seed 002's rules on what the hub sends: at most
//! `slots` commands at once, never two on one device, and a command id is
//! run at most once (the hub may resend a COMMAND after a reconnect).
//! It never queues: the hub owns the per-device FIFO queues.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::ids::{CommandId, DeviceSerial};

/// How many finished command ids are remembered for deduplication.
pub const RECENT_LIMIT: usize = 4096;

/// Why a command was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Already running: ignore it.
    Running,
    /// Finished recently: ignore it.
    Done,
    /// Its device runs another command.
    DeviceBusy(CommandId),
    /// Every slot is taken.
    NoFreeSlot,
}

#[derive(Debug)]
pub struct SlotPool {
    capacity: u32,
    running: HashMap<CommandId, DeviceSerial>,
    busy: HashSet<DeviceSerial>,
    /// Recently finished ids, oldest first, and the same as a set.
    recent: VecDeque<CommandId>,
    recent_set: HashSet<CommandId>,
}

impl SlotPool {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            running: HashMap::new(),
            busy: HashSet::new(),
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
        }
    }

    /// Takes a slot and the device for `id`, or says why not.
    pub fn admit(&mut self, id: &CommandId, device: &DeviceSerial) -> Result<(), Refusal> {
        if self.running.contains_key(id) {
            return Err(Refusal::Running);
        }
        if self.recent_set.contains(id) {
            return Err(Refusal::Done);
        }
        if self.busy.contains(device) {
            let holder = self
                .running
                .iter()
                .find(|(_, d)| *d == device)
                .map_or_else(|| CommandId::from(""), |(c, _)| c.clone());
            return Err(Refusal::DeviceBusy(holder));
        }
        if self.free() == 0 {
            return Err(Refusal::NoFreeSlot);
        }
        self.running.insert(id.clone(), device.clone());
        self.busy.insert(device.clone());
        Ok(())
    }

    /// Frees `id`'s slot and device and remembers it as done.
    pub fn release(&mut self, id: &CommandId) {
        if let Some(device) = self.running.remove(id) {
            self.busy.remove(&device);
        }
        if self.recent_set.insert(id.clone()) {
            self.recent.push_back(id.clone());
            if self.recent.len() > RECENT_LIMIT
                && let Some(old) = self.recent.pop_front()
            {
                self.recent_set.remove(&old);
            }
        }
    }

    pub fn free(&self) -> u32 {
        self.capacity
            .saturating_sub(u32::try_from(self.running.len()).unwrap_or(u32::MAX))
    }

    /// Running command ids, sorted so heartbeats are stable.
    pub fn running(&self) -> Vec<CommandId> {
        let mut ids: Vec<_> = self.running.keys().cloned().collect();
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> CommandId {
        CommandId::from(s)
    }

    fn dev(s: &str) -> DeviceSerial {
        DeviceSerial::from(s)
    }

    #[test]
    fn admits_up_to_capacity() {
        let mut p = SlotPool::new(2);
        assert_eq!(p.admit(&id("a"), &dev("1")), Ok(()));
        assert_eq!(p.admit(&id("b"), &dev("2")), Ok(()));
        assert_eq!(p.admit(&id("c"), &dev("3")), Err(Refusal::NoFreeSlot));
        p.release(&id("a"));
        assert_eq!(p.free(), 1);
        assert_eq!(p.admit(&id("c"), &dev("3")), Ok(()));
    }

    #[test]
    fn one_command_per_device() {
        let mut p = SlotPool::new(5);
        p.admit(&id("a"), &dev("1")).unwrap();
        assert_eq!(p.admit(&id("b"), &dev("1")), Err(Refusal::DeviceBusy(id("a"))));
        p.release(&id("a"));
        assert_eq!(p.admit(&id("b"), &dev("1")), Ok(()));
    }

    #[test]
    fn duplicates_are_told_apart_from_conflicts() {
        let mut p = SlotPool::new(5);
        p.admit(&id("a"), &dev("1")).unwrap();
        assert_eq!(p.admit(&id("a"), &dev("1")), Err(Refusal::Running));
        p.release(&id("a"));
        assert_eq!(p.admit(&id("a"), &dev("1")), Err(Refusal::Done));
    }

    #[test]
    fn recent_ids_are_bounded() {
        let mut p = SlotPool::new(1);
        for i in 0..=RECENT_LIMIT {
            let c = id(&i.to_string());
            p.admit(&c, &dev("1")).unwrap();
            p.release(&c);
        }
        // The oldest was forgotten, so it would run again.
        assert_eq!(p.admit(&id("0"), &dev("1")), Ok(()));
        assert_eq!(p.admit(&id("1"), &dev("2")), Err(Refusal::Done));
    }
}
