//! The event bus: every action the operator takes is published as a typed [`OperatorEvent`]. Subscribers (the
//! audit log, later) get every event through [`EventBus::subscribe`]; the Kubernetes recorder turns them into
//! Events on the object (`kubectl describe`). I/O: the Kubernetes Events API.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::broadcast;
use tsdb_operator_core::events::{Action, Actor, OperatorEvent};

/// Publishes operator events to subscribers and as Kubernetes Events.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<OperatorEvent>,
    recorder: Option<Recorder>,
    identity: String,
}

impl EventBus {
    /// A bus that also records Kubernetes Events through `client`, reported as `tsdb-operator` (seed name).
    pub fn new(client: Client, identity: &str) -> Self {
        let reporter = Reporter { controller: "tsdb-operator".into(), instance: Some(identity.to_owned()) };
        let (tx, _) = broadcast::channel(4096);
        Self { tx, recorder: Some(Recorder::new(client, reporter)), identity: identity.to_owned() }
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

    /// Publishes `action` about the object `reference`, caused by `actor`. Failing to record the Kubernetes
    /// Event is logged, never returned: it must not fail the reconcile.
    pub async fn publish(&self, reference: &ObjectReference, actor: Actor, action: Action) {
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
        if let Some(recorder) = &self.recorder {
            let ev = Event {
                type_: if action.is_warning() { EventType::Warning } else { EventType::Normal },
                reason: action.reason().to_owned(),
                note: Some(truncate(&action.message(), 1000)),
                action: action.reason().to_owned(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&ev, reference).await {
                tracing::warn!(error = %e, "failed to record a Kubernetes event");
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
