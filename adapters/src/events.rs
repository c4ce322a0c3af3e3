//! The event bus: every action the operator takes is published as a typed [`OperatorEvent`]. Subscribers (the
//! audit log, later) get every event through [`EventBus::subscribe`]; the Kubernetes recorder turns them into
//! Events on the object (`kubectl describe`). I/O: the Kubernetes Events API.
//!
//! Publishing never waits for the API server: Kubernetes Events are written by a task of their own, in the order
//! they were published, so recording them adds no round trip to a reconcile (two `Created` events used to delay
//! the StatefulSet of a new cluster by two writes).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::{broadcast, mpsc};
use tsdb_operator_core::events::{Action, Actor, OperatorEvent};

/// Publishes operator events to subscribers and as Kubernetes Events.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<OperatorEvent>,
    recorder: Option<mpsc::Sender<(Event, ObjectReference)>>,
    identity: String,
}

/// Kubernetes Events waiting to be written; beyond this, new ones are dropped with a warning (they are a
/// courtesy for `kubectl describe`; subscribers of the bus still get every event).
const RECORDER_QUEUE: usize = 1024;

impl EventBus {
    /// A bus that also records Kubernetes Events through `client`, reported as `tsdb-operator` (seed name).
    /// Spawns the recording task, so it must be called within a Tokio runtime; the task ends when the last clone
    /// of the bus is dropped.
    pub fn new(client: Client, identity: &str) -> Self {
        let reporter = Reporter { controller: "tsdb-operator".into(), instance: Some(identity.to_owned()) };
        let recorder = Recorder::new(client, reporter);
        let (queue, mut pending) = mpsc::channel::<(Event, ObjectReference)>(RECORDER_QUEUE);
        tokio::spawn(async move {
            while let Some((event, reference)) = pending.recv().await {
                if let Err(e) = recorder.publish(&event, &reference).await {
                    tracing::warn!(error = %e, reason = event.reason, "failed to record a Kubernetes event");
                }
            }
        });
        let (tx, _) = broadcast::channel(4096);
        Self { tx, recorder: Some(queue), identity: identity.to_owned() }
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
    /// once, the Kubernetes Event is queued for the recording task. Failing to record it is logged, never returned:
    /// it must not fail the reconcile.
    pub fn publish(&self, reference: &ObjectReference, actor: Actor, action: Action) {
        let event = OperatorEvent {
            at: jiff::Timestamp::now().to_string(),
            namespace: reference.namespace.clone().unwrap_or_default(),
            name: reference.name.clone().unwrap_or_default(),
            kind: reference.kind.clone().unwrap_or_default(),
            actor,
            action: action.clone(),
        };
        tracing::info!(namespace = %event.namespace, name = %event.name, reason = action.reason(), "{}", action.message());
        // No receivers is fine: nobody subscribed yet.
        let _ = self.tx.send(event);
        if let Some(queue) = &self.recorder {
            let ev = Event {
                type_: if action.is_warning() { EventType::Warning } else { EventType::Normal },
                reason: action.reason().to_owned(),
                note: Some(truncate(&action.message(), 1000)),
                action: action.reason().to_owned(),
                secondary: None,
            };
            if let Err(e) = queue.try_send((ev, reference.clone())) {
                tracing::warn!(error = %e, "Kubernetes event dropped: the recording queue is full");
            }
        }
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
