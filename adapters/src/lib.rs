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
pub mod agent_client;
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
        // Some errors (object_store's, reqwest's) already print their source: say it once.
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod error_chain_tests {
    use super::error_chain;

    #[derive(Debug)]
    struct Layer(String, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn a_source_the_message_already_ends_with_is_said_once() {
        let inner = Layer("404 Not Found".to_owned(), None);
        let middle = Layer("GET x: 404 Not Found".to_owned(), Some(Box::new(inner)));
        let outer = Layer("failed to get x".to_owned(), Some(Box::new(middle)));
        assert_eq!(error_chain(&outer), "failed to get x: GET x: 404 Not Found");
        let plain = Layer("a".to_owned(), Some(Box::new(Layer("b".to_owned(), None))));
        assert_eq!(error_chain(&plain), "a: b");
    }
}
