//! Which gateway replicas are alive, and the cleanup of one that died.
//!
//! Each gateway renews a liveness key with a short TTL (`{gw:<id>}:alive`,
//! [`GatewayLiveness::DEFAULT_TTL`], renewed every
//! [`GatewayLiveness::DEFAULT_PERIOD`]) and is listed in the set of known
//! gateways (`gateways`). The registry lists each gateway's sessions in
//! `{gw:<id>}:sessions` (connection id -> entry). A known gateway whose
//! liveness key expired is dead; any replica may then claim its cleanup
//! (`{gw:<id>}:claim`, `SET NX`), and exactly one gets its sessions: the
//! claim admits one, and the sessions hash is taken atomically besides.
//!
//! The per-gateway keys share the hash tag `{gw:<id>}`, so on a cluster
//! they live in one slot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::{GatewayId, Result, SessionEntry, SessionRegistry, SharedState, hash_tag};

const KNOWN_GATEWAYS: &str = "gateways";

/// A claim outlives any cleanup; a replica that died mid-cleanup is
/// replaced by the next claimer after it.
const CLAIM_TTL: Duration = Duration::from_secs(60);

/// How soon a failed re-registration after a reconnect is tried again.
const REASSERT_RETRY: Duration = Duration::from_millis(50);

pub(crate) fn sessions_key(gateway: &str) -> String {
    hash_tag(&format!("gw:{gateway}"), "sessions")
}

fn alive_key(gateway: &str) -> String {
    hash_tag(&format!("gw:{gateway}"), "alive")
}

fn claim_key(gateway: &str) -> String {
    hash_tag(&format!("gw:{gateway}"), "claim")
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The first heartbeat of this replica.
    Started,
    /// The liveness key was renewed in time.
    Alive,
    /// The liveness key had expired (the replica stalled longer than the
    /// TTL, or the backend lost it): others may have cleaned up its
    /// sessions as dead. Its held sessions have been written again.
    Revived,
}

/// One gateway replica's view of gateway liveness. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GatewayLiveness {
    state: SharedState,
    registry: SessionRegistry,
    gateway: GatewayId,
    ttl: Duration,
    started: std::sync::Arc<AtomicBool>,
}

impl GatewayLiveness {
    pub const DEFAULT_TTL: Duration = Duration::from_secs(3);
    pub const DEFAULT_PERIOD: Duration = Duration::from_secs(1);

    /// `registry` is the one the gateway registers its sessions through.
    pub fn new(registry: SessionRegistry, gateway: GatewayId) -> Self {
        Self {
            state: registry.state().clone(),
            registry,
            gateway,
            ttl: Self::DEFAULT_TTL,
            started: std::sync::Arc::default(),
        }
    }

    /// A TTL other than [`Self::DEFAULT_TTL`]; beat at a third of it.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    #[cfg(test)]
    pub(crate) fn registry_for_test(&self) -> &SessionRegistry {
        &self.registry
    }

    pub fn gateway(&self) -> &GatewayId {
        &self.gateway
    }

    /// Renews this replica's liveness. On [`Beat::Revived`] the held
    /// sessions are written again, since a cleaner may have removed them.
    pub async fn heartbeat(&self) -> Result<Beat> {
        let key = alive_key(self.gateway.as_str());
        let was_absent = self.state.set_nx(&key, b"1", Some(self.ttl)).await?;
        if !was_absent {
            self.state.set(&key, b"1", Some(self.ttl)).await?;
        }
        self.state.set_add(KNOWN_GATEWAYS, self.gateway.as_str(), None).await?;
        let first = !self.started.swap(true, Ordering::SeqCst);
        Ok(match (first, was_absent) {
            (true, _) => Beat::Started,
            (false, false) => Beat::Alive,
            (false, true) => {
                self.registry.reassert().await?;
                Beat::Revived
            }
        })
    }

    /// Known gateways (other than this one) whose liveness expired.
    pub async fn dead_gateways(&self) -> Result<Vec<GatewayId>> {
        let known: Vec<String> = self
            .state
            .set_members(KNOWN_GATEWAYS)
            .await?
            .into_iter()
            .filter(|g| g != self.gateway.as_str())
            .collect();
        let keys: Vec<String> = known.iter().map(|g| alive_key(g)).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let alive = self.state.get_many(&keys).await?;
        Ok(known
            .into_iter()
            .zip(alive)
            .filter(|(_, a)| a.is_none())
            .map(|(g, _)| GatewayId::new(g))
            .collect())
    }

    /// Claims the cleanup of dead gateway `gateway`: Some(its sessions) to
    /// exactly one caller across replicas, None to the others (and when it
    /// is alive after all). The sessions are already gone from the registry
    /// when this returns; the caller removes them from what they were in
    /// (channels, lobbies, matches).
    pub async fn claim_cleanup(&self, gateway: &GatewayId) -> Result<Option<Vec<SessionEntry>>> {
        let id = gateway.as_str();
        if gateway == &self.gateway || self.state.get(&alive_key(id)).await?.is_some() {
            return Ok(None);
        }
        let claimed = self
            .state
            .set_nx(&claim_key(id), self.gateway.as_str().as_bytes(), Some(CLAIM_TTL))
            .await?;
        if !claimed {
            return Ok(None);
        }
        let mut sessions = Vec::new();
        for (conn, bytes) in self.state.hash_take_all(&sessions_key(id)).await? {
            match SessionEntry::decode(bytes.as_slice()) {
                Ok(entry) => sessions.push(entry),
                Err(err) => {
                    tracing::warn!(gateway_id = id, connection_id = conn, error = %err, "corrupt session entry skipped")
                }
            }
        }
        for entry in &sessions {
            if let Err(err) = self.registry.unregister(entry).await {
                // It expires with its TTL anyway.
                tracing::warn!(connection_id = %entry.connection_id, error = %err, "dead session not unregistered");
            }
        }
        self.state.set_remove(KNOWN_GATEWAYS, id).await?;
        sessions.sort_by_key(|e| e.connected_at_ms);
        tracing::info!(
            gateway_id = id,
            sessions = sessions.len(),
            "claimed the cleanup of a dead gateway"
        );
        Ok(Some(sessions))
    }

    /// Stops beating: a stopped replica counts as dead at once, and its
    /// sessions not unregistered by then are cleaned up by the others.
    pub async fn retire(&self) -> Result<()> {
        self.state.delete(&alive_key(self.gateway.as_str())).await?;
        Ok(())
    }

    /// Beats every third of the TTL, and at once after the backend
    /// reconnected (then also writes every held session again), until
    /// `stop`; then retires.
    pub async fn run(self, stop: CancellationToken) {
        let mut reconnected = self.state.reconnected();
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut listening = true;
        // Set by a reconnect; cleared once the sessions are written again
        // (a backend that answers PING may still refuse writes for a while,
        // e.g. a cluster whose nodes have not agreed on the slots yet).
        let mut reassert_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
                () = tokio::time::sleep(REASSERT_RETRY), if reassert_since.is_some() => {}
                changed = reconnected.changed(), if listening => {
                    listening = changed.is_ok();
                    if listening {
                        reassert_since.get_or_insert_with(tokio::time::Instant::now);
                    }
                }
            }
            if let Some(since) = reassert_since {
                match self.registry.reassert().await {
                    Ok(n) => {
                        reassert_since = None;
                        tracing::info!(
                            sessions = n,
                            after_ms = since.elapsed().as_millis(),
                            "shared state reconnected: live sessions registered again"
                        );
                    }
                    Err(err) => tracing::debug!(error = %err, "re-registering live sessions failed; retrying"),
                }
            }
            match self.heartbeat().await {
                Ok(Beat::Revived) => {
                    tracing::warn!(gateway_id = %self.gateway, "liveness had lapsed; sessions registered again");
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(gateway_id = %self.gateway, error = %err, "liveness heartbeat failed"),
            }
        }
        if let Err(err) = self.retire().await {
            tracing::warn!(gateway_id = %self.gateway, error = %err, "liveness not retired");
        }
    }
}
