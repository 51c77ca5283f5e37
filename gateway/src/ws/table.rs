//! The connections this replica holds, and the slow-consumer policy that
//! applies when something is queued for one of them.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::ws::Utf8Bytes;
use relaymesh_state::{Body, ConnectionId, Envelope};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the connection task is asked to do by someone else.
#[derive(Debug)]
pub enum Outbound {
    Text(Utf8Bytes),
    Close(u16, String),
    /// A service has something for this connection's protocol adapter.
    Nudge(String),
}

pub struct ConnHandle {
    tx: mpsc::Sender<Outbound>,
    /// Cancelled when the connection's queue overflows with a frame that
    /// must not be dropped: the task then closes with `CLOSE_SLOW_CONSUMER`.
    evict: CancellationToken,
}

impl ConnHandle {
    pub fn new(tx: mpsc::Sender<Outbound>, evict: CancellationToken) -> Self {
        Self { tx, evict }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    Queued,
    /// The queue was full and the frame droppable: dropped, connection kept.
    Dropped,
    /// The queue was full and the frame not droppable: connection evicted.
    Evicted,
    /// Not held here (closed meanwhile, or never was).
    Unknown,
}

#[derive(Default)]
pub struct ConnectionTable {
    map: Mutex<HashMap<ConnectionId, ConnHandle>>,
}

impl ConnectionTable {
    pub fn insert(&self, id: ConnectionId, handle: ConnHandle) {
        self.lock().insert(id, handle);
    }

    pub fn remove(&self, id: &ConnectionId) {
        self.lock().remove(id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, ConnHandle>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `out` for `id` without waiting.
    ///
    /// Overflow policy: a droppable frame (a snapshot a later one replaces)
    /// is dropped and counted; any other frame evicts the connection, since
    /// a client that misses it would silently hold a wrong state.
    pub fn offer(&self, id: &ConnectionId, out: Outbound, droppable: bool) -> Offered {
        let map = self.lock();
        let Some(handle) = map.get(id) else {
            return Offered::Unknown;
        };
        match handle.tx.try_send(out) {
            Ok(()) => Offered::Queued,
            Err(mpsc::error::TrySendError::Closed(_)) => Offered::Unknown,
            Err(mpsc::error::TrySendError::Full(_)) if droppable => {
                metrics::counter!("gateway_frames_dropped_total").increment(1);
                Offered::Dropped
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("gateway_slow_consumer_evictions_total").increment(1);
                handle.evict.cancel();
                Offered::Evicted
            }
        }
    }

    /// Hands a delivery envelope to its connection.
    pub fn deliver(&self, env: Envelope) -> Offered {
        let id = ConnectionId::new(env.connection_id);
        match env.body {
            Some(Body::Text(text)) => self.offer(&id, Outbound::Text(text.into()), env.droppable),
            Some(Body::Close(c)) => {
                let code = u16::try_from(c.code).unwrap_or(1008);
                self.offer(&id, Outbound::Close(code, c.reason), false)
            }
            // A nudge is a hint ("pull now"): if the queue is full, the
            // adapter is busy and will pull anyway, so it may be dropped.
            Some(Body::Nudge(n)) => self.offer(&id, Outbound::Nudge(n.reason), true),
            None => Offered::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with(
        cap: usize,
    ) -> (
        ConnectionTable,
        ConnectionId,
        mpsc::Receiver<Outbound>,
        CancellationToken,
    ) {
        let table = ConnectionTable::default();
        let (tx, rx) = mpsc::channel(cap);
        let evict = CancellationToken::new();
        let id = ConnectionId::new("c");
        table.insert(id.clone(), ConnHandle::new(tx, evict.clone()));
        (table, id, rx, evict)
    }

    #[test]
    fn droppable_frames_are_dropped_when_full() {
        let (table, id, _rx, evict) = table_with(1);
        assert_eq!(table.offer(&id, Outbound::Text("a".into()), true), Offered::Queued);
        assert_eq!(table.offer(&id, Outbound::Text("b".into()), true), Offered::Dropped);
        assert!(!evict.is_cancelled());
    }

    #[test]
    fn other_frames_evict_a_full_connection() {
        let (table, id, _rx, evict) = table_with(1);
        table.offer(&id, Outbound::Text("a".into()), false);
        assert_eq!(table.offer(&id, Outbound::Text("b".into()), false), Offered::Evicted);
        assert!(evict.is_cancelled());
    }

    #[test]
    fn unknown_connections_are_reported() {
        let (table, _, _rx, _) = table_with(1);
        assert_eq!(
            table.offer(&ConnectionId::new("zz"), Outbound::Text("a".into()), false),
            Offered::Unknown
        );
    }
}
