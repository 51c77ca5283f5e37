//! How this relay announces itself to the channel service: a
//! `RelayRegistration` at `media-relay:<relay_id>` with a short TTL,
//! refreshed well within it, and the id in the `media-relays` set.
//!
//! A relay that dies stops refreshing and its record expires; readers prune
//! ids whose record is gone. A relay that stops cleanly removes both at once.
//! A failed write is logged and retried on the next tick, never fatal: the
//! relay keeps forwarding for the channels it already serves.
//!
//! When the relay starts draining the record is rewritten at once with
//! `draining` set, and kept fresh until the relay stops.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use relaymesh_proto::media_relay::v1::RelayRegistration;
use relaymesh_state::{SharedState, StateError};
use tokio_util::sync::CancellationToken;

/// Set of live relay ids.
pub const RELAYS_SET: &str = "media-relays";
/// How long a record outlives its last refresh.
pub const REGISTRATION_TTL: Duration = Duration::from_secs(15);
/// Three refreshes per TTL, so one missed write does not drop the relay.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The shared-state key of `relay_id`'s record.
pub fn registration_key(relay_id: &str) -> String {
    format!("media-relay:{relay_id}")
}

/// Writes `registration` now and every [`REFRESH_EVERY`] until `stop`,
/// then withdraws it; from `draining` on, the record says so.
pub async fn keep_registered(
    state: &SharedState,
    mut registration: RelayRegistration,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = draining.cancelled(), if !registration.draining => {
                registration.draining = true;
            }
            () = stop.cancelled() => break,
        }
        registration.refreshed_at_ms = unix_ms();
        if let Err(e) = register(state, &registration).await {
            tracing::warn!(relay_id = %registration.relay_id, error = %e, "media relay registration failed");
        }
    }
    if let Err(e) = withdraw(state, &registration.relay_id).await {
        tracing::warn!(relay_id = %registration.relay_id, error = %e, "media relay deregistration failed");
    }
}

async fn register(state: &SharedState, registration: &RelayRegistration) -> Result<(), StateError> {
    let key = registration_key(&registration.relay_id);
    state
        .set(&key, &registration.encode_to_vec(), Some(REGISTRATION_TTL))
        .await?;
    state.set_add(RELAYS_SET, &registration.relay_id, None).await
}

async fn withdraw(state: &SharedState, relay_id: &str) -> Result<(), StateError> {
    state.delete(&registration_key(relay_id)).await?;
    state.set_remove(RELAYS_SET, relay_id).await
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
