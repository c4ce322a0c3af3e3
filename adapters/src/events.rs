//! The event bus: every action the operator takes is published as a typed [`OperatorEvent`]. Subscribers (the
//! audit log, later) get every event through [`EventBus::subscribe`]; the Kubernetes recorder turns them into
//! Events on the object (`kubectl describe`). I/O: the Kubernetes Events API.
//!
//! Publishing never waits for the API server: Kubernetes Events are written by tasks of their own (each object's in
//! the order they were published), so recording them adds no round trip to a reconcile (two `Created` events used
//! to delay the StatefulSet of a new cluster by two writes).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::{broadcast, mpsc};
use tsdb_operator_core::events::{Action, Actor, OperatorEvent};

/// Publishes operator events to subscribers and as Kubernetes Events.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<OperatorEvent>,
    recorder: Option<Arc<RecorderQueues>>,
    identity: String,
}

/// Kubernetes Events waiting to be written, in [`RECORDERS`] queues, each written in order by a task of its own;
/// the events of one object always go through the same queue, so they are written in the order they happened.
struct RecorderQueues {
    queues: Vec<mpsc::Sender<(Event, ObjectReference)>>,
    dropped: AtomicU64,
}

/// Recording tasks (writes in flight to the API server).
const RECORDERS: usize = 4;
/// Kubernetes Events waiting per recording task; beyond this, new ones are dropped and counted (they are a
/// courtesy for `kubectl describe`, like client-go's rate-limited recorder; subscribers of the bus still get
/// every event).
const RECORDER_QUEUE: usize = 1024;

impl EventBus {
    /// A bus that also records Kubernetes Events through `client`, reported as `tsdb-operator` (seed name).
    /// Spawns the recording tasks, so it must be called within a Tokio runtime; they end when the last clone of
    /// the bus is dropped.
    pub fn new(client: Client, identity: &str) -> Self {
        let reporter = Reporter { controller: "tsdb-operator".into(), instance: Some(identity.to_owned()) };
        let recorder = Recorder::new(client, reporter);
        let queues = (0..RECORDERS)
            .map(|_| {
                let (queue, mut pending) = mpsc::channel::<(Event, ObjectReference)>(RECORDER_QUEUE);
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    while let Some((event, reference)) = pending.recv().await {
                        if let Err(e) = recorder.publish(&event, &reference).await {
                            tracing::warn!(error = %e, reason = event.reason, "failed to record a Kubernetes event");
                        }
                    }
                });
                queue
            })
            .collect();
        let (tx, _) = broadcast::channel(4096);
        let recorder = Arc::new(RecorderQueues { queues, dropped: AtomicU64::new(0) });
        Self { tx, recorder: Some(recorder), identity: identity.to_owned() }
    }

    /// A bus without Kubernetes Events (tests, dry runs).
    pub fn detached(identity: &str) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self { tx, recorder: None, identity: identity.to_owned() }
    }

    /// Receives every event published from now on. A subscriber that falls more than 4096 events behind is told
    /// how many it missed (`RecvError::Lagged`), so no loss is silent.
    pub fn subscribe(&self) -> broadcast::Receiver<OperatorEvent> {
        self.tx.subscribe()
    }

    /// The operator's identity used as the actor of its own actions.
    pub fn operator_actor(&self) -> Actor {
        Actor::Operator { identity: self.identity.clone() }
    }

    /// Publishes `action` about the object `reference`, caused by `actor`, without waiting: subscribers get it at
    /// once, the Kubernetes Event is queued for a recording task. Failing to record it is logged, never returned:
    /// it must not fail the reconcile.
    pub fn publish(&self, reference: &ObjectReference, actor: Actor, action: Action) {
        tracing::info!(namespace = ?reference.namespace, name = ?reference.name, reason = action.reason(), "{}", action.message());
        if let Some(recorder) = &self.recorder {
            let message = action.message();
            // kube's recorder (like client-go's events.k8s.io recorder) folds events with the same type, reason,
            // action and object into one series that keeps the first note: "created ConfigMap/x (x4)" would hide
            // the Service and the StatefulSet, "phase is Provisioning (x2)" the change to Active. With the message
            // as the action (at most 128 bytes), only identical events form a series, as with core/v1 events.
            let event = Event {
                type_: if action.is_warning() { EventType::Warning } else { EventType::Normal },
                reason: action.reason().to_owned(),
                note: Some(truncate(&message, 1000)),
                action: truncate(&message, 125),
                secondary: None,
            };
            let mut hasher = std::hash::DefaultHasher::new();
            (&reference.namespace, &reference.name).hash(&mut hasher);
            let queue = &recorder.queues[usize::try_from(hasher.finish() % RECORDERS as u64).unwrap_or(0)];
            if queue.try_send((event, reference.clone())).is_err() {
                let dropped = recorder.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "Kubernetes events dropped: the recording queues are full");
                }
            }
        }
        let event = OperatorEvent {
            at: jiff::Timestamp::now().to_string(),
            namespace: reference.namespace.clone().unwrap_or_default(),
            name: reference.name.clone().unwrap_or_default(),
            kind: reference.kind.clone().unwrap_or_default(),
            uid: reference.uid.clone().unwrap_or_default(),
            actor,
            action,
        };
        // No receivers is fine: nobody subscribed yet.
        let _ = self.tx.send(event);
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
