//! Probes of Prometheus replicas at their pod IP, as the operator sees them: `GET /-/healthy`, then
//! `GET /-/ready`, each with a timeout. I/O: HTTP.
//!
//! The result is the core's [`ProbeResult`]: `Unreachable` when `/-/healthy` does not answer (refused, reset,
//! timed out: a frozen process accepts connections but never answers), `Unhealthy` when it answers with an error
//! status, `NotReady` when it is healthy but `/-/ready` is not 2xx (WAL replay answers 503), `Ready` otherwise.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tsdb_operator_core::heal::ProbeResult;

/// Probes replicas over HTTP.
#[derive(Clone, Debug)]
pub struct Prober {
    client: reqwest::Client,
}

impl Default for Prober {
    fn default() -> Self {
        Self::new()
    }
}

impl Prober {
    /// A prober with a fresh connection per probe (as the kubelet probes: a kept-alive connection would hide a
    /// process that stopped accepting) and no proxy.
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .user_agent("tsdb-operator-healer")
            .build()
            .unwrap_or_default();
        Self { client }
    }

    /// Probes the Prometheus at `ip:port`; each request may take at most `timeout`.
    pub async fn probe(&self, ip: IpAddr, port: u16, timeout: Duration) -> ProbeResult {
        let base = format!("http://{}", SocketAddr::new(ip, port));
        match self.get(&format!("{base}/-/healthy"), timeout).await {
            Err(detail) => return ProbeResult::Unreachable { detail },
            Ok(status) if !status.is_success() => {
                return ProbeResult::Unhealthy { detail: status.to_string() };
            }
            Ok(_) => {}
        }
        match self.get(&format!("{base}/-/ready"), timeout).await {
            Ok(status) if status.is_success() => ProbeResult::Ready,
            Ok(status) => ProbeResult::NotReady { detail: status.to_string() },
            Err(detail) => ProbeResult::NotReady { detail },
        }
    }

    async fn get(&self, url: &str, timeout: Duration) -> Result<reqwest::StatusCode, String> {
        let response = self.client.get(url).timeout(timeout).send().await.map_err(|e| describe(&e))?;
        let status = response.status();
        // Drain a small body so the connection closes cleanly; its content does not matter.
        let _ = tokio::time::timeout(timeout, response.bytes()).await;
        Ok(status)
    }
}

/// A short description of a transport error: timed out, refused, or the error with its sources.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let mut out = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A tiny server answering `/-/healthy` and `/-/ready` with the given status codes; `None` never answers.
    async fn server(healthy: Option<u16>, ready: u16) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let code = if req.starts_with("GET /-/healthy") { healthy } else { Some(ready) };
                    let Some(code) = code else {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    };
                    let resp = format!("HTTP/1.1 {code} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        addr
    }

    async fn probe(healthy: Option<u16>, ready: u16) -> ProbeResult {
        let addr = server(healthy, ready).await;
        Prober::new().probe(addr.ip(), addr.port(), Duration::from_millis(500)).await
    }

    #[tokio::test]
    async fn healthy_and_ready_is_ready() {
        assert_eq!(probe(Some(200), 200).await, ProbeResult::Ready);
    }

    #[tokio::test]
    async fn wal_replay_503_is_not_ready_not_a_failure_of_health() {
        assert!(matches!(probe(Some(200), 503).await, ProbeResult::NotReady { detail } if detail.contains("503")));
    }

    #[tokio::test]
    async fn error_status_on_healthy_is_unhealthy() {
        assert!(matches!(probe(Some(500), 200).await, ProbeResult::Unhealthy { .. }));
    }

    #[tokio::test]
    async fn a_server_that_accepts_but_never_answers_is_unreachable() {
        let result = probe(None, 200).await;
        assert_eq!(result, ProbeResult::Unreachable { detail: "timed out".into() });
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let result = Prober::new().probe(addr.ip(), addr.port(), Duration::from_millis(500)).await;
        assert!(matches!(result, ProbeResult::Unreachable { .. }), "{result:?}");
    }
}
