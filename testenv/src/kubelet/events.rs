//! Kubelet events (`Pulled`, `Created`, `Started`, `Killing`, `Unhealthy`, `BackOff`, `Failed`, `FailedMount`)
//! on pods, with `source.component: kubelet` and the node as host. Does I/O, fire and forget: an event that
//! cannot be written is only logged.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

/// The pod an event is about.
#[derive(Debug, Clone)]
pub(crate) struct Subject {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) node: String,
}

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type {
    Normal,
    Warning,
}

/// The event object. Pure.
pub(crate) fn build_event(
    subject: &Subject,
    container: Option<&str>,
    kind: Type,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", subject.name, now.as_nanosecond())),
            namespace: Some(subject.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some(subject.name.clone()),
            namespace: Some(subject.namespace.clone()),
            uid: Some(subject.uid.clone()),
            field_path: container.map(|c| format!("spec.containers{{{c}}}")),
            ..ObjectReference::default()
        },
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        type_: Some(if kind == Type::Normal { "Normal" } else { "Warning" }.to_owned()),
        source: Some(EventSource { component: Some("kubelet".to_owned()), host: Some(subject.node.clone()) }),
        reporting_component: Some("kubelet".to_owned()),
        reporting_instance: Some(subject.node.clone()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: None::<MicroTime>,
        count: Some(1),
        ..Event::default()
    }
}

/// Writes an event in the background.
pub(crate) fn emit(
    client: &Client,
    subject: &Subject,
    container: Option<&str>,
    kind: Type,
    reason: &str,
    message: &str,
) {
    let event = build_event(subject, container, kind, reason, message, Timestamp::now());
    let api: Api<Event> = Api::namespaced(client.clone(), &subject.namespace);
    tokio::spawn(async move {
        if let Err(err) = api.create(&PostParams::default(), &event).await {
            tracing::debug!(error = %err, "event not written");
        }
    });
}
