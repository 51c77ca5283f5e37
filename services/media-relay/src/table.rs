//! The relay table: which SSRC belongs to which channel, where each member
//! was last heard from, and who may speak.
//!
//! Two views of one table. The control plane (AddPeer, RemovePeer,
//! SetFloor, the idle sweep) edits [`Tables`] under a mutex and then
//! publishes an immutable [`Routes`] copy. The forwarding loops read only
//! their own [`RoutesReader`]: per batch one atomic load tells whether a
//! newer copy exists, so a packet takes no lock and writes no shared cache
//! line except its sender's `last_seen`, and that at most once a
//! millisecond. Only a changed source address (first packet, NAT
//! rebinding) goes through the mutex, to latch it and publish again.
//!
//! Publishing rebuilds the whole copy: O(peers) per change, some tens of
//! microseconds per thousand peers, paid by control-plane calls only.
//!
//! The SSRC is the only identity a packet carries, so whoever sends with a
//! member's SSRC moves that member's latched address. SRTP at the endpoints
//! protects what is said, not where it is routed.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::error::{MediaRelayError, Result};
use crate::rtp::Ssrc;

/// What to do with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Send it to the addresses handed to the caller.
    Forward,
    /// No member holds this SSRC.
    UnknownSsrc,
    /// The channel is floor-controlled and the sender does not hold it.
    NoFloor,
}

/// Whether AddPeer created the peer or found it already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    New,
    AlreadyMember,
}

/// Who may speak in a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Floor {
    /// Everyone's packets are forwarded.
    Open,
    /// Only the holder's packets are forwarded; `None` silences everyone.
    Held(Option<Ssrc>),
}

struct Peer {
    channel_id: Arc<str>,
    user_id: String,
    addr: Option<SocketAddr>,
    /// Milliseconds since the table's epoch; shared with every published
    /// copy, where the forwarding loops store it.
    last_seen_ms: Arc<AtomicU64>,
}

/// A channel member as the forwarding loop needs it: the address is copied
/// here so fan-out reads one contiguous list.
struct Member {
    ssrc: Ssrc,
    addr: Option<SocketAddr>,
}

struct Channel {
    members: Vec<Member>,
    floor: Floor,
    /// The version of the last floor applied (`SetFloorRequest.floor_version`).
    floor_version: u64,
}

/// What a floor request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorApplied {
    Applied,
    /// Older than the floor already applied (`current`): ignored.
    Stale {
        current: u64,
    },
}

/// The control plane's view, behind the mutex.
#[derive(Default)]
struct Tables {
    peers: HashMap<Ssrc, Peer>,
    channels: HashMap<Arc<str>, Channel>,
}

/// The forwarding loops' view: an immutable copy of [`Tables`].
#[derive(Default)]
pub struct Routes {
    peers: HashMap<Ssrc, PeerRoute>,
}

struct PeerRoute {
    channel: Arc<ChannelRoute>,
    addr: Option<SocketAddr>,
    last_seen_ms: Arc<AtomicU64>,
}

struct ChannelRoute {
    floor: Floor,
    /// Latched members only: (ssrc, address).
    members: Box<[(Ssrc, SocketAddr)]>,
}

/// The last published [`Routes`] and its generation, bumped under the
/// same mutex so the two are read together.
struct Published {
    routes: Mutex<(u64, Arc<Routes>)>,
    /// Readable without the mutex: has anything changed since generation g?
    generation: AtomicU64,
}

/// SSRC -> peer and channel -> members, shared by the forwarding loops, the
/// gRPC service and the idle sweeper.
pub struct RelayTable {
    tables: Mutex<Tables>,
    published: Published,
    epoch: Instant,
}

/// One forwarding loop's copy of the routes.
pub struct RoutesReader {
    generation: u64,
    routes: Arc<Routes>,
}

impl Default for RelayTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayTable {
    pub fn new() -> Self {
        Self {
            tables: Mutex::default(),
            published: Published {
                routes: Mutex::new((0, Arc::default())),
                generation: AtomicU64::new(0),
            },
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since this table was created: the clock `last_seen` is
    /// kept in. Monotonic, so a wall-clock step never evicts everyone.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    // A writer that panicked left every map consistent (each operation
    // mutates after all checks), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes `tables` as the routes every reader picks up next.
    fn publish(&self, tables: &Tables) {
        let routes = Arc::new(tables.routes());
        let mut published = self.published.routes.lock().unwrap_or_else(PoisonError::into_inner);
        published.0 += 1;
        published.1 = routes;
        self.published.generation.store(published.0, Ordering::Release);
    }

    /// A reader holding the current routes.
    pub fn reader(&self) -> RoutesReader {
        let published = self.published.routes.lock().unwrap_or_else(PoisonError::into_inner);
        RoutesReader {
            generation: published.0,
            routes: Arc::clone(&published.1),
        }
    }

    /// Brings `reader` up to date: one atomic load when nothing changed.
    pub fn refresh(&self, reader: &mut RoutesReader) {
        if self.published.generation.load(Ordering::Acquire) != reader.generation {
            *reader = self.reader();
        }
    }

    /// Latches `ssrc` at `from` (its packets now come from there) and
    /// publishes the change.
    fn latch(&self, ssrc: Ssrc, from: SocketAddr) {
        let mut tables = self.lock();
        // The peer may have been removed since the reader's copy was made.
        let Some(peer) = tables.peers.get_mut(&ssrc) else {
            return;
        };
        if peer.addr == Some(from) {
            return;
        }
        peer.addr = Some(from);
        let channel_id = Arc::clone(&peer.channel_id);
        if let Some(member) = tables
            .channels
            .get_mut(&channel_id)
            .and_then(|c| c.members.iter_mut().find(|m| m.ssrc == ssrc))
        {
            member.addr = Some(from);
        }
        self.publish(&tables);
    }

    /// Decides where a packet from `ssrc` at `from` goes, marks the sender
    /// seen and latches its address. `dests` is cleared and filled with
    /// every other member's latched address. (The forwarding loops use
    /// [`RoutesReader::route`]; this is the same with a fresh reader.)
    pub fn route(&self, ssrc: Ssrc, from: SocketAddr, now_ms: u64, dests: &mut Vec<SocketAddr>) -> Route {
        dests.clear();
        self.reader().route(self, ssrc, from, now_ms, |dest| dests.push(*dest))
    }

    /// Adds `ssrc` to `channel_id` for `user_id`. Re-adding the same SSRC
    /// to the same channel for the same user changes nothing; an SSRC held
    /// by anyone else is refused unless its holder has been idle past
    /// `idle_timeout_ms` (then it is dead, whether or not swept yet).
    pub fn add_peer(
        &self,
        channel_id: &str,
        ssrc: Ssrc,
        user_id: &str,
        now_ms: u64,
        idle_timeout_ms: u64,
    ) -> Result<Added> {
        if channel_id.is_empty() {
            return Err(MediaRelayError::InvalidArgument("channel_id is empty"));
        }
        if ssrc.0 == 0 {
            // 0 means "nobody" in SetFloor, so no member may use it.
            return Err(MediaRelayError::InvalidArgument("ssrc 0 is reserved"));
        }
        let mut tables = self.lock();
        if let Some(existing) = tables.peers.get(&ssrc) {
            if &*existing.channel_id == channel_id && existing.user_id == user_id {
                existing.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
                return Ok(Added::AlreadyMember);
            }
            let idle = now_ms.saturating_sub(existing.last_seen_ms.load(Ordering::Relaxed));
            if idle <= idle_timeout_ms {
                return Err(MediaRelayError::SsrcInUse { ssrc });
            }
            tables.remove(ssrc);
        }
        let channel_id: Arc<str> = match tables.channels.get_key_value(channel_id) {
            Some((key, _)) => Arc::clone(key),
            None => Arc::from(channel_id),
        };
        tables
            .channels
            .entry(Arc::clone(&channel_id))
            .or_insert_with(|| Channel {
                members: Vec::new(),
                floor: Floor::Open,
                floor_version: 0,
            })
            .members
            .push(Member { ssrc, addr: None });
        tables.peers.insert(
            ssrc,
            Peer {
                channel_id,
                user_id: user_id.to_owned(),
                addr: None,
                last_seen_ms: Arc::new(AtomicU64::new(now_ms)),
            },
        );
        self.publish(&tables);
        Ok(Added::New)
    }

    /// Forgets `ssrc`, which must be a member of `channel_id`. A channel
    /// left with no members is forgotten with its floor state.
    pub fn remove_peer(&self, channel_id: &str, ssrc: Ssrc) -> Result<()> {
        let mut tables = self.lock();
        match tables.peers.get(&ssrc) {
            Some(peer) if &*peer.channel_id == channel_id => {
                tables.remove(ssrc);
                self.publish(&tables);
                Ok(())
            }
            _ => Err(MediaRelayError::UnknownPeer {
                channel_id: channel_id.to_owned(),
                ssrc,
            }),
        }
    }

    /// Sets who may speak in `channel_id`. With `floor_controlled`, only
    /// `holder` (a member) is forwarded, and `None` forwards nobody.
    pub fn set_floor(
        &self,
        channel_id: &str,
        floor_controlled: bool,
        holder: Option<Ssrc>,
        version: u64,
    ) -> Result<FloorApplied> {
        let mut tables = self.lock();
        let Some(channel) = tables.channels.get_mut(channel_id) else {
            return Err(MediaRelayError::UnknownChannel(channel_id.to_owned()));
        };
        if version != 0 && version < channel.floor_version {
            return Ok(FloorApplied::Stale {
                current: channel.floor_version,
            });
        }
        channel.floor = if floor_controlled {
            if let Some(ssrc) = holder
                && !channel.members.iter().any(|m| m.ssrc == ssrc)
            {
                return Err(MediaRelayError::HolderNotMember {
                    channel_id: channel_id.to_owned(),
                    ssrc,
                });
            }
            Floor::Held(holder)
        } else {
            Floor::Open
        };
        channel.floor_version = channel.floor_version.max(version);
        self.publish(&tables);
        Ok(FloorApplied::Applied)
    }

    /// Removes every peer not seen for more than `idle_timeout_ms`; returns
    /// them as (channel, ssrc) for logging.
    pub fn evict_idle(&self, now_ms: u64, idle_timeout_ms: u64) -> Vec<(Arc<str>, Ssrc)> {
        let is_idle = |p: &Peer| now_ms.saturating_sub(p.last_seen_ms.load(Ordering::Relaxed)) > idle_timeout_ms;
        let mut tables = self.lock();
        // A sweep that finds nothing publishes nothing.
        if !tables.peers.values().any(is_idle) {
            return Vec::new();
        }
        let idle: Vec<Ssrc> = tables
            .peers
            .iter()
            .filter(|(_, p)| is_idle(p))
            .map(|(ssrc, _)| *ssrc)
            .collect();
        let evicted = idle.into_iter().filter_map(|ssrc| tables.remove(ssrc)).collect();
        self.publish(&tables);
        evicted
    }

    /// (peers, channels) currently known.
    pub fn counts(&self) -> (usize, usize) {
        let tables = self.lock();
        (tables.peers.len(), tables.channels.len())
    }
}

impl RoutesReader {
    /// Routes a packet from `ssrc` at `from`: marks the sender seen,
    /// latches a changed address (through the table's mutex, the one rare
    /// case), applies the floor and hands each other latched member's
    /// address to `dest`.
    ///
    /// A packet refused for lack of the floor still latches and refreshes
    /// its sender: in a push-to-talk channel listeners send keepalives
    /// precisely so the relay learns where to reach them.
    pub fn route(
        &mut self,
        table: &RelayTable,
        ssrc: Ssrc,
        from: SocketAddr,
        now_ms: u64,
        dest: impl FnMut(&SocketAddr),
    ) -> Route {
        let Some(peer) = self.routes.peers.get(&ssrc) else {
            return Route::UnknownSsrc;
        };
        // Coarse: one store per millisecond at most, so readers of the
        // cache line (the sweeper) rarely see it move.
        if peer.last_seen_ms.load(Ordering::Relaxed) < now_ms {
            peer.last_seen_ms.store(now_ms, Ordering::Relaxed);
        }
        if peer.addr == Some(from) {
            return peer.channel.fan_out(ssrc, dest);
        }
        table.latch(ssrc, from);
        table.refresh(self);
        // After a latch the peer may be gone; route by the newest copy.
        match self.routes.peers.get(&ssrc) {
            Some(peer) => peer.channel.fan_out(ssrc, dest),
            None => Route::UnknownSsrc,
        }
    }
}

impl ChannelRoute {
    /// Applies the floor rule for a packet from `sender` and hands every
    /// other latched member's address to `dest`.
    fn fan_out(&self, sender: Ssrc, mut dest: impl FnMut(&SocketAddr)) -> Route {
        if let Floor::Held(holder) = self.floor
            && holder != Some(sender)
        {
            return Route::NoFloor;
        }
        for (ssrc, addr) in self.members.iter() {
            if *ssrc != sender {
                dest(addr);
            }
        }
        Route::Forward
    }
}

impl Tables {
    /// The immutable copy the forwarding loops read.
    fn routes(&self) -> Routes {
        let channels: HashMap<&str, Arc<ChannelRoute>> = self
            .channels
            .iter()
            .map(|(id, c)| {
                let members = c.members.iter().filter_map(|m| Some((m.ssrc, m.addr?))).collect();
                (
                    &**id,
                    Arc::new(ChannelRoute {
                        floor: c.floor,
                        members,
                    }),
                )
            })
            .collect();
        let peers = self
            .peers
            .iter()
            .filter_map(|(ssrc, p)| {
                let channel = Arc::clone(channels.get(&*p.channel_id)?);
                let route = PeerRoute {
                    channel,
                    addr: p.addr,
                    last_seen_ms: Arc::clone(&p.last_seen_ms),
                };
                Some((*ssrc, route))
            })
            .collect();
        Routes { peers }
    }

    /// Removes `ssrc` from the peers and its channel, dropping the channel
    /// when it empties and releasing the floor if `ssrc` held it.
    fn remove(&mut self, ssrc: Ssrc) -> Option<(Arc<str>, Ssrc)> {
        let peer = self.peers.remove(&ssrc)?;
        if let Entry::Occupied(mut entry) = self.channels.entry(Arc::clone(&peer.channel_id)) {
            let channel = entry.get_mut();
            channel.members.retain(|m| m.ssrc != ssrc);
            if channel.floor == Floor::Held(Some(ssrc)) {
                channel.floor = Floor::Held(None);
            }
            if channel.members.is_empty() {
                entry.remove();
            }
        }
        Some((peer.channel_id, ssrc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: u64 = 1_000;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A table with `ssrcs` in channel "c", each latched at port 1000+ssrc.
    fn latched(ssrcs: &[u32]) -> RelayTable {
        let table = RelayTable::new();
        let mut dests = Vec::new();
        for &s in ssrcs {
            table.add_peer("c", Ssrc(s), &format!("u{s}"), 0, IDLE).unwrap();
            table.route(Ssrc(s), addr(1000 + s as u16), 0, &mut dests);
        }
        table
    }

    fn route(table: &RelayTable, ssrc: u32, from: SocketAddr) -> (Route, Vec<SocketAddr>) {
        let mut dests = Vec::new();
        let r = table.route(Ssrc(ssrc), from, 0, &mut dests);
        dests.sort();
        (r, dests)
    }

    #[test]
    fn packet_goes_to_every_other_latched_member() {
        let table = latched(&[1, 2, 3]);
        assert_eq!(
            route(&table, 1, addr(1001)),
            (Route::Forward, vec![addr(1002), addr(1003)])
        );
    }

    #[test]
    fn members_without_an_address_are_skipped() {
        let table = latched(&[1]);
        table.add_peer("c", Ssrc(2), "u2", 0, IDLE).unwrap();
        assert_eq!(route(&table, 2, addr(1002)), (Route::Forward, vec![addr(1001)]));
        assert_eq!(route(&table, 1, addr(1001)), (Route::Forward, vec![addr(1002)]));
    }

    #[test]
    fn unknown_ssrc_is_reported() {
        let table = latched(&[1]);
        assert_eq!(route(&table, 9, addr(9)), (Route::UnknownSsrc, vec![]));
    }

    #[test]
    fn address_change_is_followed() {
        let table = latched(&[1, 2]);
        route(&table, 2, addr(2222));
        assert_eq!(route(&table, 1, addr(1001)), (Route::Forward, vec![addr(2222)]));
    }

    #[test]
    fn channels_do_not_leak_into_each_other() {
        let table = latched(&[1, 2]);
        table.add_peer("other", Ssrc(3), "u3", 0, IDLE).unwrap();
        route(&table, 3, addr(1003));
        assert_eq!(route(&table, 1, addr(1001)), (Route::Forward, vec![addr(1002)]));
        assert_eq!(route(&table, 3, addr(1003)), (Route::Forward, vec![]));
    }

    #[test]
    fn re_adding_same_ssrc_channel_and_user_is_idempotent() {
        let table = latched(&[1, 2]);
        assert_eq!(table.add_peer("c", Ssrc(1), "u1", 0, IDLE), Ok(Added::AlreadyMember));
        assert_eq!(table.counts(), (2, 1));
        // The latched address survives.
        assert_eq!(route(&table, 2, addr(1002)), (Route::Forward, vec![addr(1001)]));
    }

    #[test]
    fn ssrc_of_a_live_member_is_refused_to_anyone_else() {
        let table = latched(&[1]);
        let in_use = Err(MediaRelayError::SsrcInUse { ssrc: Ssrc(1) });
        assert_eq!(table.add_peer("c", Ssrc(1), "someone-else", 0, IDLE), in_use);
        assert_eq!(table.add_peer("d", Ssrc(1), "u1", 0, IDLE), in_use);
    }

    #[test]
    fn ssrc_of_an_idle_member_can_be_taken_over() {
        let table = latched(&[1]);
        assert_eq!(table.add_peer("d", Ssrc(1), "u9", IDLE + 1, IDLE), Ok(Added::New));
        assert_eq!(table.counts(), (1, 1));
    }

    #[test]
    fn empty_channel_and_ssrc_zero_are_invalid() {
        let table = RelayTable::new();
        assert!(matches!(
            table.add_peer("", Ssrc(1), "u", 0, IDLE),
            Err(MediaRelayError::InvalidArgument(_))
        ));
        assert!(matches!(
            table.add_peer("c", Ssrc(0), "u", 0, IDLE),
            Err(MediaRelayError::InvalidArgument(_))
        ));
    }

    #[test]
    fn removed_peer_is_forgotten_and_empty_channel_dropped() {
        let table = latched(&[1, 2]);
        table.remove_peer("c", Ssrc(1)).unwrap();
        assert_eq!(route(&table, 1, addr(1001)).0, Route::UnknownSsrc);
        assert_eq!(route(&table, 2, addr(1002)), (Route::Forward, vec![]));
        table.remove_peer("c", Ssrc(2)).unwrap();
        assert_eq!(table.counts(), (0, 0));
    }

    #[test]
    fn removing_a_peer_from_the_wrong_channel_is_unknown_peer() {
        let table = latched(&[1]);
        assert!(matches!(
            table.remove_peer("d", Ssrc(1)),
            Err(MediaRelayError::UnknownPeer { .. })
        ));
        assert!(matches!(
            table.remove_peer("c", Ssrc(5)),
            Err(MediaRelayError::UnknownPeer { .. })
        ));
    }

    #[test]
    fn floor_holder_alone_is_forwarded() {
        let table = latched(&[1, 2, 3]);
        table.set_floor("c", true, Some(Ssrc(1)), 0).unwrap();
        assert_eq!(
            route(&table, 1, addr(1001)),
            (Route::Forward, vec![addr(1002), addr(1003)])
        );
        assert_eq!(route(&table, 2, addr(1002)).0, Route::NoFloor);
    }

    #[test]
    fn floor_without_holder_forwards_nobody() {
        let table = latched(&[1, 2]);
        table.set_floor("c", true, None, 0).unwrap();
        assert_eq!(route(&table, 1, addr(1001)).0, Route::NoFloor);
        assert_eq!(route(&table, 2, addr(1002)).0, Route::NoFloor);
    }

    #[test]
    fn uncontrolled_floor_forwards_everyone_again() {
        let table = latched(&[1, 2]);
        table.set_floor("c", true, None, 0).unwrap();
        table.set_floor("c", false, None, 0).unwrap();
        assert_eq!(route(&table, 2, addr(1002)), (Route::Forward, vec![addr(1001)]));
    }

    #[test]
    fn refused_packet_still_latches_its_sender() {
        let table = latched(&[1, 2]);
        table.set_floor("c", true, Some(Ssrc(1)), 0).unwrap();
        assert_eq!(route(&table, 2, addr(2222)).0, Route::NoFloor);
        assert_eq!(route(&table, 1, addr(1001)), (Route::Forward, vec![addr(2222)]));
    }

    #[test]
    fn removing_the_holder_silences_the_channel() {
        let table = latched(&[1, 2]);
        table.set_floor("c", true, Some(Ssrc(1)), 0).unwrap();
        table.remove_peer("c", Ssrc(1)).unwrap();
        assert_eq!(route(&table, 2, addr(1002)).0, Route::NoFloor);
    }

    #[test]
    fn a_floor_older_than_the_one_applied_is_ignored() {
        let table = latched(&[1, 2]);
        assert_eq!(
            table.set_floor("c", true, Some(Ssrc(2)), 7).unwrap(),
            FloorApplied::Applied
        );
        // A replica's earlier change, arriving late: 2 keeps the floor.
        assert_eq!(
            table.set_floor("c", true, Some(Ssrc(1)), 5).unwrap(),
            FloorApplied::Stale { current: 7 }
        );
        assert_eq!(route(&table, 2, addr(1002)), (Route::Forward, vec![addr(1001)]));
        assert_eq!(route(&table, 1, addr(1001)).0, Route::NoFloor);
        // The same version again, a newer one, and an unversioned one apply.
        assert_eq!(table.set_floor("c", true, None, 7).unwrap(), FloorApplied::Applied);
        assert_eq!(
            table.set_floor("c", true, Some(Ssrc(1)), 9).unwrap(),
            FloorApplied::Applied
        );
        assert_eq!(route(&table, 1, addr(1001)), (Route::Forward, vec![addr(1002)]));
        assert_eq!(table.set_floor("c", false, None, 0).unwrap(), FloorApplied::Applied);
        assert_eq!(route(&table, 2, addr(1002)).0, Route::Forward);
    }

    #[test]
    fn floor_on_unknown_channel_or_for_a_stranger_is_refused() {
        let table = latched(&[1]);
        assert!(matches!(
            table.set_floor("nope", true, None, 0),
            Err(MediaRelayError::UnknownChannel(_))
        ));
        assert!(matches!(
            table.set_floor("c", true, Some(Ssrc(7)), 0),
            Err(MediaRelayError::HolderNotMember { .. })
        ));
    }

    #[test]
    fn idle_peers_are_evicted_and_active_ones_kept() {
        let table = latched(&[1, 2]);
        let mut dests = Vec::new();
        table.route(Ssrc(2), addr(1002), IDLE + 5, &mut dests);
        let evicted = table.evict_idle(IDLE + 5, IDLE);
        assert_eq!(evicted, vec![(Arc::from("c"), Ssrc(1))]);
        assert_eq!(table.counts(), (1, 1));
        assert!(table.evict_idle(IDLE + 5, IDLE).is_empty());
    }
}
