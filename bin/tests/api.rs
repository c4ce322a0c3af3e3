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
        format!("--audit-dsn=sqlite:{}", workdir.path().join("audit.db").display()),
        format!("--audit-spool-dir={}", workdir.path().join("spool").display()),
    ];
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let _operator = Operator::start_on(cp, &workdir, Some(&ns), &extra)?;

    // The self-signed certificate of a loopback test server.
    let http = reqwest::Client::builder().danger_accept_invalid_certs(true).timeout(Duration::from_secs(20)).build()?;
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
