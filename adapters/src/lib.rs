//! # tsdb-operator-adapters
//!
//! Ports to the outside world and their real implementations. The core decides; adapters observe and execute.
//!
//! ```text
//!  watch ──► controller::cluster::reconcile
//!              ├─ kube::children::observe_*      (reads by name / label)
//!              ├─ core: decide::decide_cluster (validate, build, plan, status, events, next check)
//!              ├─ kube::children::execute_step   (server-side apply, one field manager)
//!              └─ events::EventBus::publish      (Kubernetes Events + subscribers such as the audit log)
//! ```

pub mod agent;
mod answer_cache;
pub mod api;
pub mod audit;
pub mod backup;
pub mod certificate;
pub mod controller;
pub mod events;
pub mod http;
pub mod kube;
pub mod leader;
pub mod metrics;
pub mod prober;
pub mod secure_metrics;
pub mod tls;
pub mod web_proxy;
pub mod webhook;

/// Renders an error with its sources, for logs and conditions.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
