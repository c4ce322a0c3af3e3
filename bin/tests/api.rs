//! The REST API on the real API server: the operator serves it over HTTPS, every caller's ServiceAccount token is
//! reviewed by the API server, the roles of deploy/api-rbac.yaml decide who may do what, writes reach the API
//! server, and each one is in the audit trail (SQLite) with the ServiceAccount as the actor. No kubelet: pods stay
//! Pending, which the API does not need.

mod support;

use std::time::Duration;

use anyhow::{Context as _, Result};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use support::{Operator, eventually};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_testenv::process::{Workdir, free_port};

const LOCALHOST: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

struct Caller<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    token: Option<String>,
}

impl Caller<'_> {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    async fn get(&self, path: &str) -> Result<(u16, Value)> {
        self.send(reqwest::Method::GET, path, None).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, in order
async fn callers_get_what_rbac_grants_them_and_every_write_is_audited_as_them() -> Result<()> {
    let cp = support::control_plane_only();
    let client = cp.client();
    let ns = cp.namespace("api").await;
    let writer = cp.service_account_token(&ns, "writer").await?;
    let reader = cp.service_account_token(&ns, "reader").await?;
    let stranger = cp.service_account_token(&ns, "stranger").await?;
    support::bind_api_role(&client, &ns, "writer", "tsdb-operator-api-editor").await?;
    support::bind_api_role(&client, &ns, "reader", "tsdb-operator-api-viewer").await?;

    let workdir = Workdir::create(&format!("api-{ns}"))?;
    let port = free_port(LOCALHOST)?;
    let extra = [
        "--enable-api".to_owned(),
        format!("--api-address=127.0.0.1:{port}"),
        format!("--api-namespace={ns}"),
        format!("--leader-election-namespace={ns}"),
        format!("--audit-dsn=sqlite:{}", workdir.path().join("audit.db").display()),
        format!("--audit-spool-dir={}", workdir.path().join("spool").display()),
    ];
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let _operator = Operator::start_on(cp, &workdir, Some(&ns), &extra)?;

    // The operator's own certificate (no --api-tls-cert-dir): callers trust the authority it publishes in a
    // ConfigMap, which holds certificates only; the key stays in the Secret.
    let bundle = support::api_authority(&client, &ns, "tsdb-operator-api-ca").await?;
    assert!(!bundle.contains("PRIVATE KEY"), "{bundle}");
    let secret =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns).get("tsdb-operator-api-tls").await?;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let http = support::https_trusting(&bundle)?;
    let base = format!("https://127.0.0.1:{port}");
    let as_user = |token: Option<&str>| Caller { http: &http, base: &base, token: token.map(str::to_owned) };
    let (anonymous, stranger, reader, writer) =
        (as_user(None), as_user(Some(&stranger)), as_user(Some(&reader)), as_user(Some(&writer)));
    eventually("the API to answer", Duration::from_mins(1), || async {
        Ok(anonymous.get("/api/clusters").await.ok().map(|(status, _)| status))
    })
    .await?;

    // Who may do what.
    let (status, body) = anonymous.get("/api/clusters").await?;
    assert_eq!(status, 401, "{body}");
    let (status, _) = as_user(Some("made-up")).get("/api/clusters").await?;
    assert_eq!(status, 401);
    let (status, body) = stranger.get("/api/clusters").await?;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains(&format!("system:serviceaccount:{ns}:stranger")));
    let (status, body) = reader.get("/api/clusters").await?;
    assert_eq!((status, body.clone()), (200, json!([])), "{body}");
    let create = json!({"name": "web", "spec": {"replicas": 1, "retention": "1d", "storage": {"size": "1Gi"}}});
    let (status, body) = reader.send(reqwest::Method::POST, "/api/clusters", Some(create.clone())).await?;
    assert_eq!(status, 403, "{body}");

    // A bad spec is refused naming the field; nothing is created.
    let bad = json!({"name": "bad", "spec": {"replicas": 1, "retention": "forever"}});
    let (status, body) = writer.send(reqwest::Method::POST, "/api/clusters", Some(bad)).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("spec.retention"), "{body}");
    let clusters: Api<PrometheusCluster> = Api::namespaced(client.clone(), &ns);
    assert!(clusters.get_opt("bad").await?.is_none());

    // Create: the object is in the API server, and the operator reconciles it.
    let (status, body) = writer.send(reqwest::Method::POST, "/api/clusters", Some(create.clone())).await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["metadata"]["namespace"], json!(ns));
    let created = clusters.get("web").await?;
    assert_eq!(created.spec.replicas, 1);
    eventually("the operator to reconcile the cluster made through the API", Duration::from_mins(1), || async {
        Ok(clusters.get("web").await?.status.and_then(|s| s.phase))
    })
    .await?;
    let (status, _) = writer.send(reqwest::Method::POST, "/api/clusters", Some(create)).await?;
    assert_eq!(status, 409, "the name is taken");
    let (status, body) = reader.get("/api/clusters/web").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spec"]["retention"], "1d");
    let (status, body) = reader.get("/api/clusters").await?;
    assert_eq!((status, body.as_array().map(Vec::len)), (200, Some(1)), "{body}");

    // A backup: refused without storage, accepted with it, followable, and the operator sees the request.
    let (status, body) = writer.send(reqwest::Method::POST, "/api/clusters/web/backup", None).await?;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("spec.backup"), "{body}");
    let storage = json!({"spec": {"backup": {"enabled": true, "bucket": "b", "schedule": "0 0 1 1 *"}}});
    clusters.patch("web", &PatchParams::default(), &Patch::Merge(&storage)).await?;
    let (status, body) = reader.send(reqwest::Method::POST, "/api/clusters/web/backup", None).await?;
    assert_eq!(status, 403, "the viewer may not request backups: {body}");
    let (status, body) = writer.send(reqwest::Method::POST, "/api/clusters/web/backup", None).await?;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().context("id")?.to_owned();
    let annotations = clusters.get("web").await?.metadata.annotations.unwrap_or_default();
    assert_eq!(annotations.get("observability.merlionos.org/backup-now"), Some(&id), "{annotations:?}");
    let location = body["location"].as_str().context("location")?.to_owned();
    let (status, state) = reader.get(&location).await?;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["id"], json!(id));
    assert!(["Pending", "Running", "Failed", "Succeeded"].contains(&state["state"].as_str().unwrap_or("")), "{state}");

    // The audit trail: each write, with the ServiceAccount as the actor; readers of the trail need its permission.
    let actor = format!("system:serviceaccount:{ns}:writer");
    let rows = eventually("the API's writes in the audit trail", Duration::from_secs(30), || async {
        let (status, rows) = reader.get("/api/clusters/web/audit").await?;
        anyhow::ensure!(status == 200, "audit: {status} {rows}");
        let ops: Vec<String> = rows
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["operator"] == json!(actor))
            .filter_map(|r| Some(format!("{}/{}", r["operation"].as_str()?, r["result"].as_str()?)))
            .collect();
        Ok((ops.contains(&"create/success".to_owned()) && ops.contains(&"backup/success".to_owned())).then_some(ops))
    })
    .await?;
    assert!(rows.contains(&"create/error".to_owned()), "the refused create is recorded too: {rows:?}");
    let (status, _) = stranger.get("/api/clusters/web/audit").await?;
    assert_eq!(status, 403);

    // Cluster sets are cluster-scoped: a RoleBinding does not reach them, a ClusterRoleBinding does.
    let (status, body) = reader.get("/api/clustersets").await?;
    assert_eq!(status, 403, "{body}");
    let binding = format!("{ns}-reader-sets");
    cp.apply_yaml(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {binding}\nroleRef:\n  \
         apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: tsdb-operator-api-viewer\nsubjects:\n  \
         - kind: ServiceAccount\n    name: reader\n    namespace: {ns}\n"
    ))
    .await?;
    let sets = eventually("the reader to list cluster sets", Duration::from_mins(1), || async {
        let (status, body) = reader.get("/api/clustersets").await?;
        Ok((status == 200).then_some(body))
    })
    .await?;
    assert!(sets.is_array(), "{sets}");
    let (status, body) = reader.get("/api/clustersets/no-such-set").await?;
    assert_eq!(status, 404, "{body}");
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(client.clone())
        .delete(&binding, &kube::api::DeleteParams::default())
        .await?;

    // Delete.
    let (status, body) = writer.send(reqwest::Method::DELETE, "/api/clusters/web", None).await?;
    assert_eq!(status, 204, "{body}");
    eventually("the cluster to be gone", Duration::from_mins(1), || async {
        Ok(clusters.get_opt("web").await?.is_none().then_some(()))
    })
    .await?;
    let (status, _) = writer.send(reqwest::Method::DELETE, "/api/clusters/web", None).await?;
    assert_eq!(status, 404);
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    namespaces.delete(&ns, &kube::api::DeleteParams::background()).await?;
    Ok(())
}

/// A test's namespace, one ServiceAccount in it bound to an API role, and an operator serving the API for that
/// namespace on a free loopback port.
struct Served {
    ns: String,
    token: String,
    port: u16,
    operator: Operator,
    /// The operator's logs, kept while it runs.
    _workdir: Workdir,
}

/// [`Served`]: the ServiceAccount `user` bound to `role`, the operator started with the API flags and `extra` (given
/// the namespace and the test's work directory).
async fn serve_api(
    prefix: &str,
    (user, role): (&str, &str),
    extra: impl FnOnce(&str, &Workdir) -> Result<Vec<String>>,
) -> Result<Served> {
    let cp = support::control_plane_only();
    let ns = cp.namespace(prefix).await;
    let token = cp.service_account_token(&ns, user).await?;
    support::bind_api_role(&cp.client(), &ns, user, role).await?;
    let workdir = Workdir::create(&format!("api-{ns}"))?;
    let port = free_port(LOCALHOST)?;
    let mut args =
        vec!["--enable-api".to_owned(), format!("--api-address=127.0.0.1:{port}"), format!("--api-namespace={ns}")];
    args.extend(extra(&ns, &workdir)?);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let operator = Operator::start_on(cp, &workdir, Some(&ns), &args)?;
    Ok(Served { ns, token, port, operator, _workdir: workdir })
}

/// The operator's own API certificate through its life: a lost ConfigMap is published again, and a lost Secret
/// makes a new authority that is published beside the previous one; a caller who reads the ConfigMap again trusts
/// the certificate served after the rotation, and one who kept only the old authority does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_trust_the_published_authority_across_its_rotation() -> Result<()> {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let client = support::control_plane_only().client();
    let served = serve_api("api-ca", ("reader", "tsdb-operator-api-viewer"), |ns, _| {
        Ok(vec![format!("--leader-election-namespace={ns}"), "--webhook-certificate-check-seconds=1".to_owned()])
    })
    .await?;
    let (ns, token, port) = (served.ns.clone(), served.token.clone(), served.port);
    let url = format!("https://127.0.0.1:{port}/api/clusters");
    let answers = |bundle: String| {
        let (url, token) = (url.clone(), token.clone());
        async move {
            let http = support::https_trusting(&bundle)?;
            anyhow::Ok(http.get(&url).bearer_auth(&token).send().await?.status().as_u16())
        }
    };
    let first = support::api_authority(&client, &ns, "tsdb-operator-api-ca").await?;
    assert_eq!(first.matches("BEGIN CERTIFICATE").count(), 1, "{first}");
    eventually("the API to answer a caller trusting the authority", Duration::from_mins(1), || async {
        Ok((answers(first.clone()).await.ok() == Some(200)).then_some(()))
    })
    .await?;
    let unrelated = loopback_certificate()?.0;
    assert!(answers(unrelated).await.is_err(), "a caller trusting another authority is refused the handshake");

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    config_maps.delete("tsdb-operator-api-ca", &kube::api::DeleteParams::default()).await?;
    let again = support::api_authority(&client, &ns, "tsdb-operator-api-ca").await?;
    assert_eq!(again, first, "the same authority, published again");

    Api::<Secret>::namespaced(client.clone(), &ns)
        .delete("tsdb-operator-api-tls", &kube::api::DeleteParams::default())
        .await?;
    let rotated = eventually("a new authority in the ConfigMap", Duration::from_mins(1), || async {
        let bundle = support::api_authority(&client, &ns, "tsdb-operator-api-ca").await?;
        Ok((bundle != first).then_some(bundle))
    })
    .await?;
    assert_eq!(rotated.matches("BEGIN CERTIFICATE").count(), 2, "the new authority and the previous one");
    assert!(rotated.contains(first.trim()), "the previous authority is still trusted");
    eventually("the new certificate served and trusted through the new bundle", Duration::from_mins(1), || async {
        let (new, old) = (answers(rotated.clone()).await.ok(), answers(first.clone()).await.ok());
        Ok((new == Some(200) && old.is_none()).then_some(()))
    })
    .await?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .delete(&ns, &kube::api::DeleteParams::background())
        .await?;
    Ok(())
}

/// A certificate for 127.0.0.1 and the CA that issued it: (CA PEM, certificate PEM, key PEM).
fn loopback_certificate() -> Result<(String, String, String)> {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "api-test-ca");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate()?)?;
    let key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &ca)?;
    Ok((ca.pem(), leaf.pem(), key.serialize_pem()))
}

/// A TLS connection to the API that trusts `ca`.
async fn tls_connection(port: u16, ca: &str) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect((LOCALHOST, port)).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    Ok(support::tls_client(ca.as_bytes())?.connect(name, tcp).await?)
}

/// One request of the bad-request corpus and the status it must get.
struct Bad {
    method: reqwest::Method,
    path: String,
    authorization: Option<String>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    want: u16,
}

fn corpus(token: &str) -> Vec<Bad> {
    let bearer = Some(format!("Bearer {token}"));
    let bad = |method: reqwest::Method, path: &str, authorization: Option<String>, want: u16| Bad {
        method,
        path: path.to_owned(),
        authorization,
        content_type: None,
        body: Vec::new(),
        want,
    };
    let post = |body: Vec<u8>, content_type: &'static str, want: u16| Bad {
        body,
        content_type: Some(content_type),
        ..bad(reqwest::Method::POST, "/api/clusters", bearer.clone(), want)
    };
    let mut deep = "[".repeat(10_000).into_bytes();
    deep.extend("]".repeat(10_000).bytes());
    let mut all = vec![
        bad(reqwest::Method::GET, "/api/clusters", None, 401),
        bad(reqwest::Method::GET, "/api/clusters", Some("Basic YWRtaW46YWRtaW4=".to_owned()), 401),
        post(b"{\"name\": \"x\", \"spec\": {}}".to_vec(), "application/json", 401),
        post(Vec::new(), "application/json", 400),
        post(b"\xff\xfe{\"name\": \"\xc3\x28\"}".to_vec(), "application/json", 400),
        post(deep, "application/json", 400),
        post(b"{\"name\": \"x\", \"spec\": {\"replicas\": 1}}".to_vec(), "text/plain", 415),
        post(b"{\"name\": \"x\", \"spec\": {\"replicas\": \"many\"}}".to_vec(), "application/json", 400),
        post(vec![b' '; 2 << 20], "application/json", 413),
        bad(reqwest::Method::GET, "/api/clusters/..%2F..%2Fsecrets", bearer.clone(), 400),
        bad(reqwest::Method::GET, "/api/namespaces/Not_A_Namespace/clusters", bearer.clone(), 400),
        bad(reqwest::Method::GET, "/api/clusters/no-such-cluster", bearer.clone(), 404),
        bad(reqwest::Method::POST, "/api/clusters/no-such-cluster/backup", bearer.clone(), 404),
        bad(reqwest::Method::PUT, "/api/clusters", bearer.clone(), 405),
        bad(reqwest::Method::GET, "/api/no-such-route", None, 404),
    ];
    // Made-up tokens: the first of each is reviewed by the API server, the rest come from the answer cache.
    all[2].authorization = Some("Bearer made-up-token".to_owned());
    all
}

/// Fault table row 18 over a real socket, against the running operator: 10,000 requests of a hand-made corpus
/// (no or a made-up token, empty, invalid UTF-8, 10,000-deep, oversized and mistyped bodies, bad names, unknown
/// routes and methods) each get their 4xx, never a 5xx, and the operator's memory is where it was before them; a
/// 100 MB body is refused or cut off; slow clients (no TLS handshake, headers or a body that never finish) are cut
/// off within the timeouts while a good request is still answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, in order
async fn bad_and_slow_requests_get_4xx_or_are_cut_off_and_memory_stays_where_it_was() -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let (ca, cert, key) = loopback_certificate()?;
    let served = serve_api("api-faults", ("writer", "tsdb-operator-api-editor"), |_, workdir| {
        let certs = workdir.path().join("certs");
        std::fs::create_dir_all(&certs)?;
        std::fs::write(certs.join("tls.crt"), cert)?;
        std::fs::write(certs.join("tls.key"), key)?;
        Ok(vec![format!("--api-tls-cert-dir={}", certs.display())])
    })
    .await?;
    let (ns, token, port) = (served.ns.clone(), served.token.clone(), served.port);
    let pid = served.operator.process.pid();
    let client = support::control_plane_only().client();
    // Connections are kept alive and reused: the server says `Connection: close` on the answers after which it
    // closes (a body it did not read), so no request is sent on a connection the server is closing.
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?)
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = format!("https://127.0.0.1:{port}");
    let good = || {
        let request = http.get(format!("{base}/api/clusters")).bearer_auth(&token);
        async move { anyhow::Ok(request.send().await?.status().as_u16()) }
    };
    eventually("the API to answer", Duration::from_mins(1), || async {
        Ok((good().await.ok() == Some(200)).then_some(()))
    })
    .await?;

    let corpus = corpus(&token);
    let send = |i: usize| {
        let bad = &corpus[i % corpus.len()];
        let request = || {
            let mut request = http.request(bad.method.clone(), format!("{base}{}", bad.path)).body(bad.body.clone());
            if let Some(a) = &bad.authorization {
                request = request.header(reqwest::header::AUTHORIZATION, a);
            }
            if let Some(t) = bad.content_type {
                request = request.header(reqwest::header::CONTENT_TYPE, t);
            }
            request
        };
        async move {
            let sent = std::time::Instant::now();
            let response = request().send().await;
            let status = response.as_ref().map(|r| r.status().as_u16()).ok();
            let text = match response {
                Ok(r) => r.text().await.unwrap_or_default(),
                // Cut off while still sending more than the limit: a closed connection, as good as 413.
                Err(_) if bad.want == 413 => return (i, Some(413), "connection closed".to_owned()),
                Err(e) => format!("after {:?}: {e:?}", sent.elapsed()),
            };
            (i, status, text)
        }
    };
    let want = |i: usize| {
        let bad = &corpus[i % corpus.len()];
        (bad.want, format!("{} {}", bad.method, bad.path))
    };
    let baseline = support::ten_thousand_bad_requests("bad requests over TLS", pid, send, want).await?;

    // A 100 MB body: refused (413) or the connection cut after the first MiB; never read in full.
    for authorization in [Some(format!("Bearer {token}")), None] {
        let mut request = http
            .post(format!("{base}/api/clusters"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(vec![b'['; 100 << 20]);
        if let Some(a) = authorization.as_ref() {
            request = request.header(reqwest::header::AUTHORIZATION, a);
        }
        match request.send().await {
            Ok(r) => assert!([401, 413].contains(&r.status().as_u16()), "100 MB body: {}", r.status()),
            Err(e) => eprintln!("100 MB body: connection cut ({e})"),
        }
    }
    assert!(support::rss_kib(pid)? < baseline + 32 * 1024, "the 100 MB bodies were not kept");

    // Slow clients: 30 connections that never start TLS, 30 that never finish their headers, one that never
    // finishes its body. A good request is answered meanwhile; each slow one is cut off within the timeouts.
    let mut silent = Vec::new();
    for _ in 0..30 {
        silent.push(tokio::net::TcpStream::connect((LOCALHOST, port)).await?);
    }
    let mut partial = Vec::new();
    for _ in 0..30 {
        let mut stream = tls_connection(port, &ca).await?;
        stream.write_all(b"GET /api/clusters HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await?;
        stream.flush().await?;
        partial.push(stream);
    }
    let mut slow_body = tls_connection(port, &ca).await?;
    let head = format!(
        "POST /api/clusters HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: \
         application/json\r\nContent-Length: 1000\r\n\r\n{{\"name\""
    );
    slow_body.write_all(head.as_bytes()).await?;
    slow_body.flush().await?;
    let answered = std::time::Instant::now();
    assert_eq!(good().await?, 200, "a good request among slow clients");
    assert!(answered.elapsed() < Duration::from_secs(3), "answered in {:?}", answered.elapsed());
    let limit = Duration::from_secs(15);
    for (i, stream) in silent.iter_mut().enumerate() {
        assert!(support::closed_within(stream, limit).await.is_some(), "silent connection {i} still open");
    }
    for (i, stream) in partial.iter_mut().enumerate() {
        assert!(
            support::closed_within(stream, limit).await.is_some(),
            "connection {i} with unfinished headers still open"
        );
    }
    let answer = support::closed_within(&mut slow_body, limit).await.context("the unfinished body was not cut off")?;
    assert!(answer.starts_with("HTTP/1.1 4"), "an unfinished body gets a 4xx: {answer}");
    assert_eq!(good().await?, 200, "the API still answers");

    drop(served);
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    namespaces.delete(&ns, &kube::api::DeleteParams::background()).await?;
    Ok(())
}
