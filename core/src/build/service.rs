//! Part of the **build** step: the headless Service `<name>` that governs the StatefulSet (stable pod DNS names
//! `<pod>.<name>.<ns>.svc`). Pure: no I/O.
//!
//! Ports: `http` 9090 (seed), plus `agent` 9091 so the agent's metrics can be scraped through the Service, and
//! with Thanos `thanos-grpc` 10901 / `thanos-http` 10902 so Thanos Query can discover the sidecars with a DNS SRV
//! lookup (`dnssrv+_thanos-grpc._tcp.<name>.<ns>.svc`). The selector is the StatefulSet's (both seed labels), so
//! another workload that only shares the instance label is never selected.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::BuildContext;
use crate::constants::ports;

/// Renders the headless Service `<name>`.
pub fn build_service(ctx: &BuildContext<'_>) -> Service {
    let mut service_ports = Vec::with_capacity(4);
    service_ports.push(port(ports::PROMETHEUS_NAME, ports::PROMETHEUS));
    service_ports.push(port(ports::AGENT_NAME, ports::AGENT));
    if ctx.thanos_enabled() {
        service_ports.push(port(THANOS_GRPC_NAME, ports::THANOS_GRPC));
        service_ports.push(port(THANOS_HTTP_NAME, ports::THANOS_HTTP));
    }
    Service {
        metadata: ctx.object_meta(ctx.name.to_owned()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(false),
            selector: Some(ctx.selector_labels()),
            ports: Some(service_ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Name of the Thanos sidecar's gRPC port (seed).
pub const THANOS_GRPC_NAME: &str = "thanos-grpc";
/// Name of the Thanos sidecar's HTTP port (seed).
pub const THANOS_HTTP_NAME: &str = "thanos-http";

fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: number,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}
