//! Asynchronous, ordered fan-out of channel events.
//!
//! A request that raises an event (a chat message, a join) returns as soon as
//! the event is queued: the sender's ACK does not wait for delivery. Events
//! of one channel go to one shard, whose worker delivers them in the order
//! they were queued; each delivery is one registry read for all recipients
//! and one publish per gateway replica that holds any (`Delivery`).
//!
//! Queues are bounded: when a shard is full, the request waits for room
//! (backpressure on the producer) rather than dropping events or growing
//! without limit. On shutdown the workers deliver what is queued, then stop.

use std::future::Future;
use std::hash::BuildHasher;

use relaymesh_proto::client::v1::LivechatResponse;
use relaymesh_state::{ConnectionId, Delivery, Envelope, event_envelope};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Events queued per shard before producers wait.
const SHARD_QUEUE: usize = 4096;

/// One event for some members of one channel.
pub struct FanoutJob {
    pub channel_id: String,
    /// Session (connection) ids of the recipients.
    pub recipients: Vec<ConnectionId>,
    pub event: LivechatResponse,
    /// The trace context of the call that raised the event: the fan-out
    /// runs on its own task, where that call's span is not current.
    pub traceparent: String,
}

/// Where the workers hand each event: [`Delivery`] (registry read, one
/// publish per replica). A seam so a test can stall delivery and see that
/// requests do not wait for it.
pub trait Deliver: Clone + Send + Sync + 'static {
    /// Sends `envelope` to `conns`; returns those no replica holds.
    fn send_to_connections(
        &self,
        conns: &[ConnectionId],
        envelope: Envelope,
    ) -> impl Future<Output = relaymesh_state::Result<Vec<ConnectionId>>> + Send;
}

impl Deliver for Delivery {
    fn send_to_connections(
        &self,
        conns: &[ConnectionId],
        envelope: Envelope,
    ) -> impl Future<Output = relaymesh_state::Result<Vec<ConnectionId>>> + Send {
        Delivery::send_to_connections(self, conns, envelope)
    }
}

/// What the worker reports back: recipients that no gateway holds any more.
pub type GoneSessions = mpsc::UnboundedSender<(String, ConnectionId)>;

pub struct Fanout {
    shards: Vec<mpsc::Sender<FanoutJob>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Fanout {
    /// Starts `shards` workers on `tracker`. Sessions found gone are sent on
    /// `gone`, so the service can remove them from their channels.
    /// On `shutdown` the workers deliver what is queued, then stop.
    pub fn start(
        shards: usize,
        delivery: impl Deliver,
        tracker: &TaskTracker,
        gone: GoneSessions,
        shutdown: CancellationToken,
    ) -> Self {
        let mut senders = Vec::with_capacity(shards.max(1));
        for _ in 0..shards.max(1) {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE);
            tracker.spawn(run_shard(rx, delivery.clone(), gone.clone(), shutdown.clone()));
            senders.push(tx);
        }
        Self {
            shards: senders,
            hasher: Default::default(),
        }
    }

    /// Queues `job` behind earlier events of its channel.
    pub async fn push(&self, job: FanoutJob) {
        if job.recipients.is_empty() {
            return;
        }
        let hash = self.hasher.hash_one(&job.channel_id);
        let shard = &self.shards[(hash % self.shards.len() as u64) as usize];
        if shard.send(job).await.is_err() {
            tracing::warn!("fan-out stopped; event not delivered");
        }
    }
}

async fn run_shard(
    mut rx: mpsc::Receiver<FanoutJob>,
    delivery: impl Deliver,
    gone: GoneSessions,
    shutdown: CancellationToken,
) {
    loop {
        let job = tokio::select! {
            job = rx.recv() => job,
            () = shutdown.cancelled() => {
                // Take no more; deliver what is already queued.
                rx.close();
                rx.recv().await
            }
        };
        let Some(job) = job else { break };
        let started = std::time::Instant::now();
        let mut envelope = event_envelope(job.event, false);
        envelope.traceparent = job.traceparent;
        match delivery.send_to_connections(&job.recipients, envelope).await {
            Ok(missing) => {
                for conn in missing {
                    let _ = gone.send((job.channel_id.clone(), conn));
                }
            }
            Err(err) => tracing::warn!(channel_id = %job.channel_id, error = %err, "event delivery failed"),
        }
        metrics::histogram!("relaymesh_channel_fanout_seconds").record(started.elapsed().as_secs_f64());
    }
}
