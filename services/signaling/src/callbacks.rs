//! Server -> client callbacks (seed 001), brokered across replicas.
//!
//! A caller of `CallClient` waits on the signaling replica it reached (the
//! *owner*). The callback is kept in shared state under its one-time
//! requestId, with its owner, so the answer may reach any signaling replica
//! through any gateway replica: `ResolveCallback` takes the entry (an atomic
//! GETDEL, so an id matches exactly once) and publishes the answer on the
//! owner's settlement topic, where [`CallbackBroker::run_settlements`] hands
//! it to the waiting call. `DropSession` settles a closed connection's
//! callbacks at once; a replica that dies leaves entries that expire.
//!
//! This module never holds the waiter lock across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use prost_types::Value;
use relaymesh_proto::client::v1::{CopilotCallback, CopilotResponse, copilot_response::Event};
use relaymesh_proto::signaling::v1::{CallbackKind, CallbackSettlement, PendingCallback, callback_settlement::Outcome};
use relaymesh_state::{ConnectionId, Delivery, SessionRegistry, SharedState, Subscription, event_envelope};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::error::{Result, SignalingError};

/// The longest a caller may ask to wait for an answer.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a pending entry outlives its timeout, so the waiting replica
/// itself expires it (and a racing answer is seen), not Redis's clock.
const GRACE: Duration = Duration::from_secs(1);

fn pending_key(conn: &str, request_id: &str) -> String {
    format!("cb:{conn}:{request_id}")
}

fn connection_key(conn: &str) -> String {
    format!("cbs:{conn}")
}

fn settlement_topic(replica: &str) -> String {
    format!("cb-settle:{replica}")
}

/// The frame a callback of `kind` is sent as.
fn callback_event(kind: CallbackKind, request_id: String, data: Option<Value>) -> Option<CopilotResponse> {
    let cb = CopilotCallback { request_id, data };
    let event = match kind {
        CallbackKind::AvailableData => Event::RequestAvailableData(cb),
        CallbackKind::Api => Event::RequestApi(cb),
        CallbackKind::Clarification => Event::ClarificationRequest(cb),
        CallbackKind::Unspecified => return None,
    };
    Some(CopilotResponse { event: Some(event) })
}

/// Brokers the callbacks of one signaling replica.
pub struct CallbackBroker {
    state: SharedState,
    delivery: Delivery,
    /// This replica's name on its settlement topic.
    replica: String,
    /// Calls waiting here, by requestId.
    waiters: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    default_timeout: Duration,
}

/// Removes a waiter when its call ends, however it ends (answered, timed
/// out, or cancelled by its caller), so no entry outlives its call.
struct Waiting<'a> {
    broker: &'a CallbackBroker,
    request_id: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.broker.waiters().remove(&self.request_id);
    }
}

impl CallbackBroker {
    /// A broker whose settlement topic is live when this returns; run
    /// [`Self::run_settlements`] with the subscription.
    pub async fn start(
        state: SharedState,
        default_timeout: Duration,
    ) -> relaymesh_state::Result<(Arc<Self>, Subscription)> {
        let replica = uuid::Uuid::new_v4().simple().to_string();
        let settlements = state.subscribe(&settlement_topic(&replica)).await?;
        let registry = SessionRegistry::new(state.clone(), Duration::from_secs(60));
        let broker = Arc::new(Self {
            delivery: Delivery::new(state.clone(), registry),
            state,
            replica,
            waiters: Mutex::default(),
            default_timeout,
        });
        Ok((broker, settlements))
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Outcome>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands each settlement published for this replica to its waiting call,
    /// until `shutdown`.
    pub async fn run_settlements(self: Arc<Self>, mut settlements: Subscription, shutdown: CancellationToken) {
        loop {
            let bytes = tokio::select! {
                () = shutdown.cancelled() => return,
                msg = settlements.recv() => match msg {
                    Some(bytes) => bytes,
                    None => return,
                },
            };
            let Ok(settled) = CallbackSettlement::decode(bytes) else {
                metrics::counter!("relaymesh_signaling_settlements_corrupt_total").increment(1);
                continue;
            };
            if let Some(outcome) = settled.outcome {
                self.hand_over(&settled.request_id, outcome);
            }
        }
    }

    /// Gives `outcome` to the call waiting here for `request_id`, if any.
    fn hand_over(&self, request_id: &str, outcome: Outcome) {
        if let Some(waiter) = self.waiters().remove(request_id) {
            // The caller may have gone meanwhile; then nobody needs it.
            let _ = waiter.send(outcome);
        }
    }

    /// Sends a callback to `conn` and waits for its answer: returns the
    /// requestId it was sent under and the client's `data`.
    pub async fn call(
        &self,
        conn: &ConnectionId,
        kind: CallbackKind,
        data: Option<Value>,
        timeout: Option<Duration>,
    ) -> Result<(String, Option<Value>)> {
        let timeout = timeout.unwrap_or(self.default_timeout).min(MAX_TIMEOUT);
        if timeout.is_zero() {
            return Err(SignalingError::Invalid("timeout must be positive"));
        }
        if conn.as_str().is_empty() {
            return Err(SignalingError::Invalid("connection_id is required"));
        }
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let event =
            callback_event(kind, request_id.clone(), data).ok_or(SignalingError::Invalid("kind is required"))?;
        let (tx, mut rx) = oneshot::channel();
        self.waiters().insert(request_id.clone(), tx);
        let _waiting = Waiting {
            broker: self,
            request_id: request_id.clone(),
        };
        let key = pending_key(conn.as_str(), &request_id);
        let pending = PendingCallback {
            connection_id: conn.to_string(),
            owner: self.replica.clone(),
            kind: kind as i32,
            expires_at_ms: chrono::Utc::now().timestamp_millis()
                + i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
        };
        // Both records in one round trip (the two writes go out together).
        let (entry, index) = (pending.encode_to_vec(), connection_key(conn.as_str()));
        tokio::try_join!(
            self.state.set(&key, &entry, Some(timeout + GRACE)),
            self.state.set_add(&index, &request_id, Some(MAX_TIMEOUT + GRACE)),
        )?;
        let delivered = self
            .delivery
            .send_to_connection(conn, event_envelope(event, false))
            .await?;
        if !delivered {
            self.forget(conn, &request_id).await?;
            return Err(SignalingError::ConnectionClosed(conn.to_string()));
        }
        metrics::counter!("relaymesh_signaling_callbacks_total").increment(1);
        let outcome = match tokio::time::timeout(timeout, &mut rx).await {
            Ok(settled) => settled.ok(),
            Err(_) => {
                // Expire the id: a late answer now gets UNKNOWN_REQUEST_ID.
                // If the entry is already gone, an answer (or a close) took
                // it just now and its settlement is on the way.
                if self.forget(conn, &request_id).await? {
                    None
                } else {
                    tokio::time::timeout(GRACE, rx).await.ok().and_then(Result::ok)
                }
            }
        };
        match outcome {
            Some(Outcome::Answer(answer)) => Ok((request_id, Some(answer))),
            Some(Outcome::ConnectionClosed(_)) => Err(SignalingError::ConnectionClosed(conn.to_string())),
            None => {
                metrics::counter!("relaymesh_signaling_callback_timeouts_total").increment(1);
                Err(SignalingError::CallbackTimeout(request_id))
            }
        }
    }

    /// Removes a pending callback; true when it was still pending.
    async fn forget(&self, conn: &ConnectionId, request_id: &str) -> Result<bool> {
        let taken = self.state.take(&pending_key(conn.as_str(), request_id)).await?;
        self.state
            .set_remove(&connection_key(conn.as_str()), request_id)
            .await?;
        Ok(taken.is_some())
    }

    /// A client's answer: matched once, to its own connection's callback of
    /// the same kind, before it expires.
    pub async fn resolve(
        &self,
        conn: &ConnectionId,
        request_id: &str,
        kind: CallbackKind,
        data: Option<Value>,
    ) -> Result<()> {
        let unknown = || SignalingError::UnknownRequestId(request_id.to_owned());
        let key = pending_key(conn.as_str(), request_id);
        let bytes = self.state.take(&key).await?.ok_or_else(unknown)?;
        let pending = PendingCallback::decode(bytes.as_slice()).map_err(|_| unknown())?;
        let left = pending.expires_at_ms - chrono::Utc::now().timestamp_millis();
        if left <= 0 {
            return Err(unknown());
        }
        if pending.kind != kind as i32 {
            // Not this callback's answer: leave it pending for the right one.
            let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
            self.state.set(&key, &bytes, Some(left + GRACE)).await?;
            return Err(SignalingError::WrongAnswerType(request_id.to_owned()));
        }
        let outcome = Outcome::Answer(data.unwrap_or_default());
        let forget = async {
            let key = connection_key(conn.as_str());
            Ok::<_, SignalingError>(self.state.set_remove(&key, request_id).await?)
        };
        tokio::try_join!(forget, self.settle(&pending.owner, request_id, outcome))?;
        Ok(())
    }

    /// Fails every callback still waiting for `conn`; returns how many.
    pub async fn drop_session(&self, conn: &ConnectionId) -> Result<u32> {
        let set = connection_key(conn.as_str());
        let mut released = 0;
        for request_id in self.state.set_members(&set).await? {
            let Some(bytes) = self.state.take(&pending_key(conn.as_str(), &request_id)).await? else {
                continue;
            };
            if let Ok(pending) = PendingCallback::decode(bytes.as_slice()) {
                self.settle(&pending.owner, &request_id, Outcome::ConnectionClosed(true))
                    .await?;
                released += 1;
            }
        }
        self.state.delete(&set).await?;
        Ok(released)
    }

    async fn settle(&self, owner: &str, request_id: &str, outcome: Outcome) -> Result<()> {
        // The call waits on this replica (the usual case with one signaling
        // replica): hand the outcome over here, without a publish and the
        // settlement task's extra hop.
        if owner == self.replica {
            self.hand_over(request_id, outcome);
            return Ok(());
        }
        let settled = CallbackSettlement {
            request_id: request_id.to_owned(),
            outcome: Some(outcome),
        };
        self.state
            .publish(&settlement_topic(owner), Bytes::from(settled.encode_to_vec()))
            .await?;
        Ok(())
    }
}
