//! Fault table row 18 for the agent sidecar, over real sockets: `tsdb-operator agent` in front of a real
//! Prometheus, as in a pod, without a control plane. Its own port takes backup requests from the operator (bearer
//! token); its Prometheus port is reachable by everything in the cluster.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Context as _, Result};
use support::eventually;
use tsdb_operator_testenv::paths::{self, PrometheusMajor};
use tsdb_operator_testenv::process::{ProcessBuilder, Workdir, free_port};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A bad request: which port (`true`: the agent's own), method, path, token, content type, body, wanted status.
struct Bad {
    own_port: bool,
    method: reqwest::Method,
    path: &'static str,
    token: Option<&'static str>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    want: u16,
}

fn corpus() -> Vec<Bad> {
    let backup = |token: Option<&'static str>, content_type: Option<&'static str>, body: &[u8], want: u16| Bad {
        own_port: true,
        method: reqwest::Method::POST,
        path: "/backup",
        token,
        content_type,
        body: body.to_vec(),
        want,
    };
    let json = Some("application/json");
    let token = Some("t0ken");
    let mut deep = "[".repeat(10_000).into_bytes();
    deep.extend("]".repeat(10_000).bytes());
    let proxied = |method: reqwest::Method, path: &'static str, body: Vec<u8>, want: u16| Bad {
        own_port: false,
        method,
        path,
        token: None,
        content_type: None,
        body,
        want,
    };
    vec![
        backup(None, json, br#"{"id": "x"}"#, 401),
        backup(Some("made-up"), json, br#"{"id": "x"}"#, 401),
        backup(None, json, &vec![b'x'; 1 << 20], 401),
        backup(token, json, b"", 400),
        backup(token, json, b"{not json", 400),
        backup(token, json, b"\xff\xfe{\"id\": \"\xc3\x28\"}", 400),
        backup(token, json, &deep, 422),
        backup(token, json, br#"{"id": 5}"#, 422),
        backup(token, json, &vec![b' '; 256 << 10], 413),
        backup(token, Some("text/plain"), br#"{"id": "x"}"#, 415),
        Bad { method: reqwest::Method::GET, path: "/backup/no-such-job", ..backup(token, None, b"", 404) },
        Bad { method: reqwest::Method::PUT, ..backup(token, None, b"", 405) },
        Bad { path: "/no-such-route", ..backup(None, None, b"", 404) },
        proxied(reqwest::Method::POST, "/api/v1/admin/tsdb/snapshot", Vec::new(), 403),
        proxied(reqwest::Method::POST, "/api/v1/admin/tsdb/delete_series?match[]=up", Vec::new(), 403),
        proxied(reqwest::Method::POST, "/-/quit", Vec::new(), 403),
        proxied(reqwest::Method::POST, "/api/v1/%61dmin/tsdb/snapshot", Vec::new(), 403),
        proxied(reqwest::Method::POST, "/api%2fv1%2fadmin/tsdb/snapshot", Vec::new(), 403),
        proxied(reqwest::Method::POST, "//api/v1/admin/tsdb/snapshot", Vec::new(), 403),
        proxied(reqwest::Method::POST, "/api/v1/query", vec![b'q'; 9 << 20], 413),
    ]
}

/// The agent's own port and its Prometheus port get 10,000 requests of a hand-made corpus (no or a made-up token,
/// empty, not JSON, invalid UTF-8, 10,000-deep, mistyped and oversized bodies, a wrong content type, unknown jobs,
/// routes and methods; Prometheus' admin and lifecycle APIs and a path that hides one): each gets its 4xx, never a
/// 5xx, and the agent's memory is where it was before them. A body that never finishes is cut off within 15 s while
/// a good request is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, in order
async fn bad_requests_to_the_agent_get_4xx_or_are_cut_off_and_memory_stays_where_it_was() -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let workdir = Workdir::create("agent-faults")?;
    let (data, token, config) = (workdir.subdir("data")?, workdir.subdir("token")?, workdir.subdir("cfg")?);
    std::fs::write(token.join("token"), "t0ken")?;
    std::fs::write(config.join("prometheus.yml"), "global:\n  scrape_interval: 15s\n")?;
    let (prometheus_port, own_port, proxy_port) = (free_port(LOCALHOST)?, free_port(LOCALHOST)?, free_port(LOCALHOST)?);
    let mut prometheus = ProcessBuilder::new("prometheus", paths::prometheus(PrometheusMajor::V3)?)
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
        .arg(format!("--config.file={}", config.join("prometheus.yml").display()))
        .spawn(&workdir)?;
    let mut agent = ProcessBuilder::new("agent", support::operator_binary())
        .args(["agent", &format!("--config-dir={}", config.display())])
        .arg(format!("--prometheus-url=http://127.0.0.1:{prometheus_port}"))
        .arg(format!("--listen=127.0.0.1:{own_port}"))
        .arg(format!("--proxy-listen=127.0.0.1:{proxy_port}"))
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--token-dir={}", token.display()))
        .arg("--credentials-dir=/nonexistent")
        .spawn(&workdir)?;
    let pid = agent.pid();
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build()?;
    let good = || {
        let request = http.get(format!("http://127.0.0.1:{proxy_port}/api/v1/query?query=up"));
        async move { anyhow::Ok(request.send().await?.status().as_u16()) }
    };
    eventually("Prometheus behind the agent to answer", Duration::from_mins(1), || async {
        Ok((good().await.ok() == Some(200)).then_some(()))
    })
    .await?;

    let corpus = corpus();
    let send = |i: usize| {
        let bad = &corpus[i % corpus.len()];
        let port = if bad.own_port { own_port } else { proxy_port };
        let mut request = http.request(bad.method.clone(), format!("http://127.0.0.1:{port}{}", bad.path));
        if let Some(t) = bad.token {
            request = request.bearer_auth(t);
        }
        if let Some(t) = bad.content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, t);
        }
        let request = request.body(bad.body.clone());
        async move {
            match request.send().await {
                Ok(r) => (i, Some(r.status().as_u16()), r.text().await.unwrap_or_default()),
                // Refused before its large body was read (413, or 401 before the body), the connection closed while
                // the client was still sending it: a closed connection is the answer, as good as the status.
                Err(_) if bad.want == 413 || bad.body.len() >= 64 << 10 => {
                    (i, Some(bad.want), "connection closed while the body was sent".to_owned())
                }
                Err(e) => (i, None, format!("{e:?}")),
            }
        }
    };
    let want = |i: usize| {
        let bad = &corpus[i % corpus.len()];
        let port = if bad.own_port { "agent port" } else { "Prometheus port" };
        (bad.want, format!("{} {} on the {port}", bad.method, bad.path))
    };
    support::ten_thousand_bad_requests("bad requests to the agent", pid, send, want).await?;

    // A backup request whose body never finishes is cut off within the body timeout; the agent still answers.
    let mut slow = tokio::net::TcpStream::connect((LOCALHOST, own_port)).await?;
    let head = "POST /backup HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer t0ken\r\ncontent-type: \
                application/json\r\ncontent-length: 1000\r\n\r\n{";
    slow.write_all(head.as_bytes()).await?;
    slow.flush().await?;
    let status = http.get(format!("http://127.0.0.1:{own_port}/healthz")).send().await?.status().as_u16();
    assert_eq!(status, 200, "the agent answers while a slow request waits");
    let cut = support::closed_within(&mut slow, Duration::from_secs(15))
        .await
        .context("a body that never finishes was not cut off within 15 s")?;
    assert!(cut.is_empty() || cut.starts_with("HTTP/1.1 4"), "an unfinished body gets a 4xx or nothing: {cut}");
    assert_eq!(good().await?, 200, "Prometheus still answers through the agent");
    agent.stop()?;
    prometheus.stop()?;
    Ok(())
}
