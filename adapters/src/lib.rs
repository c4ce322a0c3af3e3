//! # tsdb-operator-adapters
//!
//! Ports to the outside world and their real implementations. The core decides; adapters observe and execute.
//!
//! ```text
//!  watch ──► controller::cluster::reconcile
//!              ├─ kube::children::observe_*      (reads by name / label)
//!              ├─ core: validate, build, plan, status
//!              ├─ kube::children::execute_step   (server-side apply, one field manager)
//!              └─ events::EventBus::publish      (Kubernetes Events + subscribers such as the audit log)
//! ```

pub mod agent;
pub mod backup;
pub mod controller;
pub mod events;
pub mod http;
pub mod kube;
pub mod leader;
pub mod metrics;
pub mod prober;
