//! Container probes, run from the host to the pod IP like the real kubelet's. Does I/O.
//!
//! # Flow
//! The startup probe runs first (no other probe runs before it succeeds; `failureThreshold` failures kill the
//! container). Then readiness and liveness run side by side: readiness sets the container's `ready`
//! (initially false), `failureThreshold` consecutive liveness failures kill the container. Each probe waits
//! `initialDelaySeconds`, then probes every `periodSeconds` with `timeoutSeconds`; a result flips after
//! `successThreshold` consecutive successes or `failureThreshold` consecutive failures. Defaults are the
//! Kubernetes ones: period 10 s, timeout 1 s, success 1, failure 3. HTTP probes succeed on status 200..=399.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a probe runs against.
#[derive(Debug, Clone)]
pub(crate) struct ProbeTarget {
    pub(crate) ip: IpAddr,
    pub(crate) container: Container,
    pub(crate) pid: u32,
    pub(crate) env: Vec<(String, String)>,
}

/// What the probes report while the container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProbeEvent {
    Started,
    Ready(bool),
    /// A readiness probe reached its failure threshold (message).
    Failed(String),
}

/// An HTTP response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body (lossy UTF-8).
    pub body: String,
}

/// A plain HTTP/1.0 GET with a timeout (the connection is closed by the server after the response, so no
/// chunked encoding). Used by HTTP probes and handy for tests that query Prometheus at a pod IP.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    let request = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut request =
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.20\r\nAccept: */*\r\n");
        for (name, value) in headers {
            let _ = write!(request, "{name}: {value}\r\n");
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok(HttpResponse { status, body })
    };
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
}

fn seconds(value: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(value.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0).unwrap_or(default))
}

fn count(value: Option<i32>) -> u32 {
    value.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0).unwrap_or(0)
}

fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => {
            if let Ok(p) = name.parse::<u16>() {
                return Ok(p);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("port {name:?} not found in container"))
        }
    }
}

/// Runs one probe once; `Err` carries the failure message.
pub(crate) async fn probe_once(probe: &Probe, target: &ProbeTarget) -> Result<(), String> {
    let timeout = seconds(probe.timeout_seconds, 1);
    if let Some(http) = &probe.http_get {
        if http.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("https")) {
            return Err("HTTPS probes are not supported by the process kubelet".to_owned());
        }
        let port = resolve_port(&http.port, &target.container)?;
        let ip = http.host.as_deref().and_then(|h| h.parse().ok()).unwrap_or(target.ip);
        let path = http.path.clone().unwrap_or_else(|| "/".to_owned());
        let headers: Vec<(String, String)> =
            http.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect();
        let response = http_get(SocketAddr::new(ip, port), &path, &headers, timeout)
            .await
            .map_err(|e| format!("Get \"http://{ip}:{port}{path}\": {e}"))?;
        return if (200..400).contains(&response.status) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {}", response.status))
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(&tcp.port, &target.container)?;
        let ip = tcp.host.as_deref().and_then(|h| h.parse().ok()).unwrap_or(target.ip);
        return match tokio::time::timeout(timeout, TcpStream::connect(SocketAddr::new(ip, port))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {ip}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {ip}:{port}: i/o timeout")),
        };
    }
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err("exec probe without command".to_owned());
        }
        // Enter the container's network, mount and UTS namespaces, with its environment.
        let output = tokio::process::Command::new("nsenter")
            .args(["-t", &target.pid.to_string(), "-n", "-m", "-u", "--"])
            .args(&command)
            .env_clear()
            .envs(target.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .kill_on_drop(true)
            .output();
        return match tokio::time::timeout(timeout, output).await {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(format!(
                "command {command:?} exited with {}: {}",
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).trim()
            )),
            Ok(Err(e)) => Err(format!("command {command:?}: {e}")),
            Err(_) => Err(format!("command {command:?} timed out")),
        };
    }
    Err("probe has no handler".to_owned())
}

/// When a probe loop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Startup: `Ok` once it succeeds, `Err` once it fails.
    Settled,
    /// Liveness: `Err` once it fails.
    Failure,
    /// Readiness: never.
    Never,
}

/// Runs one probe; a result settles after `successThreshold` successes or `failureThreshold` failures in a
/// row. `on_result` sees every settled result.
async fn run_probe(
    probe: &Probe,
    target: &ProbeTarget,
    kind: &str,
    until: Until,
    on_result: &(dyn Fn(Result<(), String>) + Send + Sync),
) -> Result<(), String> {
    tokio::time::sleep(Duration::from_secs(count(probe.initial_delay_seconds).into())).await;
    let period = seconds(probe.period_seconds, 10);
    let success_threshold = count(probe.success_threshold).max(1);
    let failure_threshold = count(probe.failure_threshold);
    let failure_threshold = if failure_threshold == 0 { 3 } else { failure_threshold };
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match probe_once(probe, target).await {
            Ok(()) => {
                failures = 0;
                successes += 1;
                if successes >= success_threshold {
                    on_result(Ok(()));
                    if until == Until::Settled {
                        return Ok(());
                    }
                }
            }
            Err(message) => {
                successes = 0;
                failures += 1;
                tracing::debug!(kind, container = %target.container.name, %message, "probe failed");
                if failures >= failure_threshold {
                    let message = format!("{kind} probe failed: {message}");
                    if failures == failure_threshold {
                        on_result(Err(message.clone()));
                    }
                    if until != Until::Never {
                        return Err(message);
                    }
                }
            }
        }
    }
}

/// Runs all probes of a running container. Returns only when the container must be killed (startup or liveness
/// failure), with the reason; the caller aborts it when the container stops.
pub(crate) async fn drive(target: ProbeTarget, report: &(dyn Fn(ProbeEvent) + Send + Sync)) -> String {
    let container = target.container.clone();
    if let Some(startup) = &container.startup_probe
        && let Err(message) = run_probe(startup, &target, "Startup", Until::Settled, &|_| {}).await
    {
        return message;
    }
    report(ProbeEvent::Started);
    let readiness = async {
        if let Some(probe) = &container.readiness_probe {
            let on_result = |result: Result<(), String>| match result {
                Ok(()) => report(ProbeEvent::Ready(true)),
                Err(message) => {
                    report(ProbeEvent::Ready(false));
                    report(ProbeEvent::Failed(message));
                }
            };
            let _ = run_probe(probe, &target, "Readiness", Until::Never, &on_result).await;
        } else {
            report(ProbeEvent::Ready(true));
        }
        std::future::pending::<()>().await;
    };
    let liveness = async {
        match &container.liveness_probe {
            Some(probe) => {
                run_probe(probe, &target, "Liveness", Until::Failure, &|_| {}).await.err().unwrap_or_default()
            }
            None => std::future::pending::<String>().await,
        }
    };
    tokio::select! {
        () = readiness => String::new(),
        message = liveness => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_ports_resolve_through_the_container() {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "prometheus", "ports": [{"name": "web", "containerPort": 9090}]
        }))
        .unwrap();
        assert_eq!(resolve_port(&IntOrString::String("web".to_owned()), &container), Ok(9090));
        assert_eq!(resolve_port(&IntOrString::Int(8080), &container), Ok(8080));
        assert!(resolve_port(&IntOrString::String("metrics".to_owned()), &container).is_err());
    }
}
