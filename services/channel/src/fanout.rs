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
//!
//! Where delivery waits on nothing (the in-memory backend: the registry and
//! every gateway's inbox are in this process, and a delivery only hands the
//! event to socket queues), an event for a few recipients
//! ([`INLINE_RECIPIENTS`]) whose shard has nothing queued or being
//! delivered is delivered in the caller's task, under the shard's turn, so
//! it is still in order with the channel's other events: a chat message's
//! own MESSAGE_EVENT is then in the sender's queue when its ACK is written,
//! and both go out in one write. Everything else, and every event on Redis,
//! goes through the shard's queue.

use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use relaymesh_proto::client::v1::LivechatResponse;
use relaymesh_state::{ConnectionId, Delivery, Envelope, event_envelope};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Events queued per shard before producers wait.
const SHARD_QUEUE: usize = 4096;

/// The most recipients an event delivered in the caller's task may have
/// (when delivery waits on nothing): handing an event to this many socket
/// queues costs about what queueing it for a worker does.
pub const INLINE_RECIPIENTS: usize = 32;

/// One event for some members of one channel.
pub struct FanoutJob {
    pub channel_id: String,
    /// Session (connection) ids of the recipients (a chat message's are
    /// the channel's kept member list, shared, not copied).
    pub recipients: Arc<[ConnectionId]>,
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

    /// Whether a delivery completes without waiting on I/O or another task,
    /// so a small one may run in the caller's task.
    fn immediate(&self) -> bool {
        false
    }
}

impl Deliver for Delivery {
    fn send_to_connections(
        &self,
        conns: &[ConnectionId],
        envelope: Envelope,
    ) -> impl Future<Output = relaymesh_state::Result<Vec<ConnectionId>>> + Send {
        Delivery::send_to_connections(self, conns, envelope)
    }

    fn immediate(&self) -> bool {
        self.in_process()
    }
}

/// What the worker reports back: recipients that no gateway holds any more.
pub type GoneSessions = mpsc::UnboundedSender<(String, ConnectionId)>;

pub struct Fanout<D = Delivery> {
    shards: Vec<Shard>,
    hasher: std::collections::hash_map::RandomState,
    /// What a job delivered in the caller's task (when delivery is
    /// immediate) is handed to, and where its gone recipients go.
    delivery: D,
    gone: GoneSessions,
}

struct Shard {
    queue: mpsc::Sender<FanoutJob>,
    turn: Arc<Turn>,
}

/// Who may deliver a shard's events now: its worker, or a caller
/// delivering inline while nothing is queued.
#[derive(Default)]
struct Turn {
    /// Jobs pushed to the queue and not yet delivered.
    queued: AtomicUsize,
    /// Held while one of the shard's events is being delivered.
    delivering: tokio::sync::Mutex<()>,
}

impl<D: Deliver> Fanout<D> {
    /// Starts `shards` workers on `tracker`. Sessions found gone are sent on
    /// `gone`, so the service can remove them from their channels.
    /// On `shutdown` the workers deliver what is queued, then stop.
    pub fn start(
        shards: usize,
        delivery: D,
        tracker: &TaskTracker,
        gone: GoneSessions,
        shutdown: CancellationToken,
    ) -> Self {
        let mut out = Vec::with_capacity(shards.max(1));
        for _ in 0..shards.max(1) {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE);
            let turn = Arc::new(Turn::default());
            tracker.spawn(run_shard(
                rx,
                turn.clone(),
                delivery.clone(),
                gone.clone(),
                shutdown.clone(),
            ));
            out.push(Shard { queue: tx, turn });
        }
        Self {
            shards: out,
            hasher: Default::default(),
            delivery,
            gone,
        }
    }

    /// Queues `job` behind earlier events of its channel; or, when delivery
    /// is immediate, the job small and its shard idle, delivers it now.
    pub async fn push(&self, job: FanoutJob) {
        if job.recipients.is_empty() {
            return;
        }
        let hash = self.hasher.hash_one(&job.channel_id);
        let shard = &self.shards[(hash % self.shards.len() as u64) as usize];
        if self.delivery.immediate()
            && job.recipients.len() <= INLINE_RECIPIENTS
            && let Ok(_turn) = shard.turn.delivering.try_lock()
            && shard.turn.queued.load(Ordering::SeqCst) == 0
        {
            // Nothing of this shard is queued or being delivered, and no
            // worker can start while the turn is held: in order.
            deliver(&self.delivery, &self.gone, job).await;
            return;
        }
        shard.turn.queued.fetch_add(1, Ordering::SeqCst);
        if shard.queue.send(job).await.is_err() {
            shard.turn.queued.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("fan-out stopped; event not delivered");
        }
    }
}

/// Delivers one job; recipients no replica holds are sent on `gone`.
async fn deliver(delivery: &impl Deliver, gone: &GoneSessions, job: FanoutJob) {
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
    // Registered at the first delivery, not looked up on every one.
    static FANOUT_SECONDS: LazyLock<metrics::Histogram> =
        LazyLock::new(|| metrics::histogram!("relaymesh_channel_fanout_seconds"));
    FANOUT_SECONDS.record(started.elapsed().as_secs_f64());
}

async fn run_shard(
    mut rx: mpsc::Receiver<FanoutJob>,
    turn: Arc<Turn>,
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
        let held = turn.delivering.lock().await;
        deliver(&delivery, &gone, job).await;
        turn.queued.fetch_sub(1, Ordering::SeqCst);
        drop(held);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use relaymesh_proto::client::v1::{MessageEvent, livechat_response::Event};
    use tokio::sync::Semaphore;

    use super::*;

    /// Records which events it delivered, in order; each delivery first
    /// takes a permit of `gate` (none: held until the test adds some).
    #[derive(Clone)]
    struct Recorder {
        delivered: Arc<Mutex<Vec<String>>>,
        gate: Arc<Semaphore>,
        immediate: bool,
    }

    impl Recorder {
        fn new(immediate: bool, permits: usize) -> Self {
            Self {
                delivered: Arc::default(),
                gate: Arc::new(Semaphore::new(permits)),
                immediate,
            }
        }

        fn delivered(&self) -> Vec<String> {
            self.delivered.lock().unwrap().clone()
        }
    }

    impl Deliver for Recorder {
        async fn send_to_connections(
            &self,
            _conns: &[ConnectionId],
            envelope: Envelope,
        ) -> relaymesh_state::Result<Vec<ConnectionId>> {
            self.gate.acquire().await.unwrap().forget();
            let Some(relaymesh_state::Body::Livechat(LivechatResponse {
                event: Some(Event::MessageEvent(m)),
            })) = envelope.body
            else {
                panic!("not a message event");
            };
            self.delivered.lock().unwrap().push(m.message_id);
            Ok(Vec::new())
        }

        fn immediate(&self) -> bool {
            self.immediate
        }
    }

    fn job(id: &str, recipients: usize) -> FanoutJob {
        FanoutJob {
            channel_id: "c".into(),
            recipients: (0..recipients).map(|i| ConnectionId::new(format!("s{i}"))).collect(),
            event: LivechatResponse {
                event: Some(Event::MessageEvent(MessageEvent {
                    message_id: id.into(),
                    ..MessageEvent::default()
                })),
            },
            traceparent: String::new(),
        }
    }

    fn start(delivery: &Recorder) -> (Fanout<Recorder>, TaskTracker) {
        let tracker = TaskTracker::new();
        let (gone, _) = mpsc::unbounded_channel();
        let fanout = Fanout::start(2, delivery.clone(), &tracker, gone, CancellationToken::new());
        (fanout, tracker)
    }

    async fn until_delivered(delivery: &Recorder, n: usize) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(5), async {
            while delivery.delivered().len() < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("events delivered");
        delivery.delivered()
    }

    #[tokio::test]
    async fn a_small_event_is_delivered_before_push_returns_only_when_delivery_is_immediate() {
        let immediate = Recorder::new(true, 100);
        let (fanout, _tracker) = start(&immediate);
        fanout.push(job("small", INLINE_RECIPIENTS)).await;
        // No yield since push: no worker has run.
        assert_eq!(immediate.delivered(), ["small"]);
        fanout.push(job("large", INLINE_RECIPIENTS + 1)).await;
        assert_eq!(immediate.delivered(), ["small"], "a large event goes through the queue");
        assert_eq!(until_delivered(&immediate, 2).await, ["small", "large"]);

        let queued = Recorder::new(false, 100);
        let (fanout, _tracker) = start(&queued);
        fanout.push(job("small", 1)).await;
        assert!(
            queued.delivered().is_empty(),
            "delivery that waits goes through the queue"
        );
        assert_eq!(until_delivered(&queued, 1).await, ["small"]);
    }

    #[tokio::test]
    async fn an_event_is_never_delivered_inline_ahead_of_one_queued_before_it() {
        let delivery = Recorder::new(true, 0);
        let (fanout, _tracker) = start(&delivery);
        let push = async |id: &str, recipients: usize| {
            tokio::time::timeout(Duration::from_secs(5), fanout.push(job(id, recipients)))
                .await
                .expect("push does not wait for a held delivery");
        };
        // Queued, not yet taken by its worker: the next small one queues too.
        push("first", INLINE_RECIPIENTS + 1).await;
        push("second", 1).await;
        // Taken and held at the gate, mid-delivery: the next queues too.
        tokio::task::yield_now().await;
        push("third", 1).await;
        assert!(delivery.delivered().is_empty());
        delivery.gate.add_permits(100);
        assert_eq!(until_delivered(&delivery, 3).await, ["first", "second", "third"]);
        // All delivered: the shard is idle again, and the next goes inline.
        push("fourth", 1).await;
        assert_eq!(delivery.delivered(), ["first", "second", "third", "fourth"]);
    }
}
