//! The API against in-memory fakes of its ports: who may do what, what each route answers, what the audit trail
//! keeps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use chrono::{DateTime, Utc};
use tower::ServiceExt as _;
use tsdb_operator_core::api::Access;
use tsdb_operator_core::audit::{AuditRecord, Filter};

use serde_json::json;

use super::*;
use crate::audit::store::Error as StoreError;

/// Tokens are user names; `grants` says which `verb resource[/sub] namespace` each user has.
#[derive(Default)]
struct FakeAuthorizer {
    grants: BTreeMap<String, BTreeSet<String>>,
    /// Reviews fail (the API server is down).
    down: bool,
}

fn grant(verb: &str, what: &str, namespace: &str) -> String {
    format!("{verb} {what} {namespace}")
}

impl Authorizer for FakeAuthorizer {
    async fn authenticate(&self, token: &str) -> Result<Option<Caller>, ports::ReviewError> {
        if self.down {
            return Err(ports::ReviewError {
                what: "TokenReview",
                source: kube::Error::LinesCodecMaxLineLengthExceeded,
            });
        }
        Ok(self.grants.contains_key(token).then(|| Caller {
            username: token.to_owned(),
            groups: vec!["team".to_owned()],
            ..Caller::default()
        }))
    }

    async fn authorize(&self, caller: &Caller, access: &Access) -> Result<bool, ports::ReviewError> {
        let what = match access.subresource {
            Some(sub) => format!("{}/{sub}", access.resource),
            None => access.resource.to_owned(),
        };
        let wanted = grant(access.verb, &what, access.namespace.as_deref().unwrap_or("*"));
        Ok(self.grants.get(&caller.username).is_some_and(|g| g.contains(&wanted)))
    }
}

/// Objects in memory, with resource versions and a number of forced conflicts for the next annotations.
#[derive(Default)]
struct FakeClusters {
    objects: Mutex<BTreeMap<(String, String), Value>>,
    version: AtomicUsize,
    conflicts: AtomicUsize,
}

fn not_found(name: &str) -> Failure {
    Failure { reason: "NotFound".to_owned(), code: 404, message: format!("prometheusclusters {name:?} not found") }
}

impl FakeClusters {
    fn put(&self, namespace: &str, mut object: Value) -> Value {
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        object["metadata"]["namespace"] = json!(namespace);
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{name}"));
        }
        self.objects.lock().unwrap().insert((namespace.to_owned(), name), object.clone());
        object
    }

    fn object(&self, namespace: &str, name: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(&(namespace.to_owned(), name.to_owned())).cloned()
    }
}

impl Clusters for FakeClusters {
    async fn list(&self, namespace: &str) -> Result<Vec<Value>, Failure> {
        Ok(self.objects.lock().unwrap().iter().filter(|((ns, _), _)| ns == namespace).map(|(_, o)| o.clone()).collect())
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Value, Failure> {
        self.object(namespace, name).ok_or_else(|| not_found(name))
    }

    async fn create(&self, namespace: &str, object: Value) -> Result<Value, Failure> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        if self.object(namespace, &name).is_some() {
            return Err(Failure {
                reason: "AlreadyExists".to_owned(),
                code: 409,
                message: format!("prometheusclusters {name:?} already exists"),
            });
        }
        Ok(self.put(namespace, object))
    }

    async fn delete(&self, namespace: &str, name: &str) -> Result<(), Failure> {
        self.objects
            .lock()
            .unwrap()
            .remove(&(namespace.to_owned(), name.to_owned()))
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }

    async fn annotate(
        &self,
        namespace: &str,
        name: &str,
        version: &str,
        key: &str,
        value: &str,
    ) -> Result<(), Failure> {
        let mut object = self.object(namespace, name).ok_or_else(|| not_found(name))?;
        let conflict = self.conflicts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if conflict || object["metadata"]["resourceVersion"] != json!(version) {
            // A concurrent writer got there first.
            self.put(namespace, object);
            return Err(Failure {
                reason: "Conflict".to_owned(),
                code: 409,
                message: "the object has been modified".to_owned(),
            });
        }
        object["metadata"]["annotations"][key] = json!(value);
        self.put(namespace, object);
        Ok(())
    }

    async fn list_sets(&self) -> Result<Vec<Value>, Failure> {
        Ok(vec![json!({"metadata": {"name": "fleet"}})])
    }

    async fn get_set(&self, name: &str) -> Result<Value, Failure> {
        if name == "fleet" { Ok(json!({"metadata": {"name": "fleet"}})) } else { Err(not_found(name)) }
    }
}

#[derive(Default)]
struct MemStore {
    rows: Mutex<Vec<AuditRecord>>,
}

impl AuditStore for MemStore {
    async fn insert(&self, records: &[AuditRecord]) -> Result<u64, StoreError> {
        self.rows.lock().unwrap().extend_from_slice(records);
        Ok(records.len() as u64)
    }

    async fn prune(&self, _: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn count(&self) -> Result<i64, StoreError> {
        Ok(i64::try_from(self.rows.lock().unwrap().len()).unwrap())
    }

    async fn query(&self, filter: &Filter) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(self
            .rows
            .lock()
            .unwrap()
            .iter()
            .rev()
            .filter(|r| filter.cluster.as_ref().is_none_or(|c| *c == r.cluster_name))
            .filter(|r| filter.namespace.as_ref().is_none_or(|n| *n == r.namespace))
            .cloned()
            .collect())
    }
}

struct Api {
    router: Router,
    clusters: Arc<FakeClusters>,
    store: Arc<MemStore>,
    _audit_task: tokio::task::JoinHandle<()>,
    _spool: tempdir::Dir,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!("tsdb-api-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            Self(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `admin` may do everything in `obs`; `reader` may only read clusters there; `ci` may only request backups.
fn authorizer() -> FakeAuthorizer {
    let mut grants = BTreeMap::new();
    let all = [
        grant("list", "prometheusclusters", "obs"),
        grant("get", "prometheusclusters", "obs"),
        grant("create", "prometheusclusters", "obs"),
        grant("delete", "prometheusclusters", "obs"),
        grant("create", "prometheusclusters/backup", "obs"),
        grant("get", "prometheusclusters/backup", "obs"),
        grant("get", "prometheusclusters/audit", "obs"),
        grant("list", "prometheusclustersets", "*"),
        grant("get", "prometheusclustersets", "*"),
    ];
    grants.insert("admin".to_owned(), all.into_iter().collect());
    grants.insert(
        "reader".to_owned(),
        [grant("list", "prometheusclusters", "obs"), grant("get", "prometheusclusters", "obs")].into_iter().collect(),
    );
    grants.insert("ci".to_owned(), [grant("create", "prometheusclusters/backup", "obs")].into_iter().collect());
    FakeAuthorizer { grants, down: false }
}

fn api(name: &str, authorizer: FakeAuthorizer, backups_enabled: bool, with_audit: bool) -> Api {
    let clusters = Arc::new(FakeClusters::default());
    let store = Arc::new(MemStore::default());
    let spool = tempdir::Dir::new(name);
    let (audit, task) = crate::audit::start(
        store.clone(),
        &spool.0,
        crate::audit::Limits::default(),
        crate::audit::AuditMetrics::default(),
    )
    .unwrap();
    let router = router(Parts {
        authorizer,
        clusters: clusters.clone(),
        audit_store: with_audit.then(|| store.clone()),
        audit: with_audit.then_some(audit),
        settings: Settings { namespace: "obs".to_owned(), backups_enabled },
    })
    // What the server (crate::http::serve_tls) adds to every router.
    .layer(axum::middleware::from_fn(crate::http::close_if_body_unread));
    Api { router, clusters, store, _audit_task: task, _spool: spool }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Api {
    async fn send(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut request = axum::http::Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(b) = body {
            request = request.header(header::CONTENT_TYPE, "application/json").header(header::CONTENT_LENGTH, b.len());
        }
        for (k, v) in extra {
            request = request.header(*k, *v);
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_owned()));
        let response = self.router.clone().oneshot(request.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 4 << 20).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Reply { status, headers, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null), text }
    }

    async fn records(&self, want: usize) -> Vec<AuditRecord> {
        for _ in 0..300 {
            if self.store.rows.lock().unwrap().len() >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.store.rows.lock().unwrap().clone()
    }
}

const CREATE: &str = r#"{"name": "web", "spec": {"replicas": 2, "retention": "15d"}}"#;

#[tokio::test]
async fn no_token_or_a_refused_one_is_401_and_a_missing_permission_is_403_naming_it() {
    let api = api("auth", authorizer(), true, true);
    let r = api.send("GET", "/api/clusters", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert_eq!(r.headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
    assert!(r.body["error"].as_str().unwrap().contains("bearer token is required"), "{}", r.text);
    let r = api.send("GET", "/api/clusters", Some("made-up"), None, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    // An unauthenticated write is answered before its body is read, and changes nothing.
    let r = api.send("POST", "/api/clusters", None, Some(CREATE), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(api.clusters.object("obs", "web").is_none());

    assert_eq!(r.headers.get(header::CONNECTION).unwrap(), "close", "the body was not read: the connection closes");

    let r = api.send("POST", "/api/clusters", Some("reader"), Some(CREATE), &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let message = r.body["error"].as_str().unwrap();
    assert!(message.contains("\"reader\" may not create prometheusclusters.observability.merlionos.org"), "{message}");
    assert!(message.contains("namespace \"obs\""), "{message}");
    assert!(api.clusters.object("obs", "web").is_none(), "a forbidden create creates nothing");
    // Reading in another namespace needs a grant there.
    let r = api.send("GET", "/api/namespaces/other/clusters", Some("reader"), None, &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = api.send("GET", "/api/clusters", Some("reader"), None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!([]));
    // The backup subresource is its own permission.
    let r = api.send("GET", "/api/clusters/web/audit", Some("ci"), None, &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert!(r.text.contains("prometheusclusters/audit"), "{}", r.text);
}

#[tokio::test]
async fn when_the_api_server_cannot_review_a_token_the_answer_is_503_not_401() {
    let api = api("down", FakeAuthorizer { down: true, ..authorizer() }, true, true);
    let r = api.send("GET", "/api/clusters", Some("admin"), None, &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
}

#[tokio::test]
async fn create_get_list_delete_as_the_seed_answers_them_and_each_write_is_audited_with_the_user_as_actor() {
    let api = api("crud", authorizer(), true, true);
    let r = api.send("POST", "/api/clusters", Some("admin"), Some(CREATE), &[("X-Operator", "jane")]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.headers.get(header::CONNECTION).is_none(), "the body was read: the connection stays open");
    assert_eq!(r.body["metadata"]["name"], "web");
    assert_eq!(r.body["spec"]["replicas"], 2);
    let stored = api.clusters.object("obs", "web").unwrap();
    assert_eq!(stored["kind"], "PrometheusCluster");
    assert_eq!(stored["apiVersion"], "observability.merlionos.org/v1");

    let r = api.send("POST", "/api/clusters", Some("admin"), Some(CREATE), &[]).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "a taken name: {}", r.text);

    let r = api.send("GET", "/api/clusters/web", Some("reader"), None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["metadata"]["uid"], "uid-web");
    let r = api.send("GET", "/api/namespaces/obs/clusters", Some("reader"), None, &[]).await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(1), "{}", r.text);
    let r = api.send("GET", "/api/clusters/nope", Some("reader"), None, &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert!(r.body["error"].as_str().unwrap().contains("nope"), "{}", r.text);

    let r = api.send("DELETE", "/api/clusters/web", Some("admin"), None, &[]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(api.clusters.object("obs", "web").is_none());
    let r = api.send("DELETE", "/api/clusters/web", Some("admin"), None, &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    let records = api.records(4).await;
    let ops: Vec<(&str, &str)> = records.iter().map(|r| (r.operation.as_str(), r.result.as_str())).collect();
    assert_eq!(ops, [("create", "success"), ("create", "error"), ("delete", "success"), ("delete", "error")]);
    for r in &records {
        assert_eq!(r.operator, "admin", "the authenticated user is the actor, never the header: {r:?}");
        assert_eq!(r.cluster_name, "web");
        assert_eq!(r.namespace, "obs");
    }
    assert!(records[0].detail.contains("X-Operator: jane"), "the header is a note: {:?}", records[0]);
    assert_eq!(records[0].object_uid, "uid-web");
    assert!(records[0].diff.contains("retention"), "a create keeps the spec sent: {:?}", records[0]);
}

#[tokio::test]
async fn a_bad_body_is_400_naming_the_field_and_creates_nothing() {
    let api = api("bad", authorizer(), true, true);
    for (body, needle) in [
        ("not json", "not JSON"),
        ("[1]", "JSON object"),
        (r#"{"spec": {}}"#, "name: Required value"),
        (r#"{"name": "web", "spec": {"replicas": -1}}"#, "replicas"),
        (r#"{"name": "web", "spec": {}, "extra": 1}"#, "extra: Forbidden"),
    ] {
        let r = api.send("POST", "/api/clusters", Some("admin"), Some(body), &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert!(r.body["error"].as_str().unwrap().contains(needle), "{needle:?} in {}", r.text);
    }
    assert!(api.clusters.objects.lock().unwrap().is_empty());
    let r =
        api.send("POST", "/api/clusters", Some("admin"), None, &[(header::CONTENT_TYPE.as_str(), "text/yaml")]).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.text);
    let huge = format!(r#"{{"name": "web", "spec": {{"x": "{}"}}}}"#, "a".repeat(MAX_BODY_BYTES + 1));
    let r = api.send("POST", "/api/clusters", Some("admin"), Some(&huge), &[]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
    let r = api.send("GET", "/api/nothing-here", Some("admin"), None, &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body["error"].is_string(), "a JSON error: {}", r.text);
}

#[tokio::test]
async fn a_backup_request_annotates_the_cluster_once_despite_conflicts_and_its_state_can_be_followed() {
    let api = api("backup", authorizer(), true, true);
    api.clusters.put("obs", json!({"metadata": {"name": "bare"}, "spec": {}}));
    let r = api.send("POST", "/api/clusters/bare/backup", Some("ci"), None, &[]).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.text.contains("spec.backup"), "the fix is named: {}", r.text);

    api.clusters.put("obs", json!({"metadata": {"name": "web"}, "spec": {"backup": {"enabled": true, "bucket": "b"}}}));
    api.clusters.conflicts.store(2, Ordering::SeqCst);
    let r = api.send("POST", "/api/clusters/web/backup", Some("ci"), None, &[]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("api-"), "{id}");
    assert_eq!(r.body["state"], "Pending");
    let location = r.headers.get(header::LOCATION).unwrap().to_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/namespaces/obs/clusters/web/backups/{id}"));
    let object = api.clusters.object("obs", "web").unwrap();
    assert_eq!(object["metadata"]["annotations"][annotations::BACKUP_NOW], json!(id));

    // `ci` may request but not read; `admin` follows it.
    assert_eq!(api.send("GET", &location, Some("ci"), None, &[]).await.status, StatusCode::FORBIDDEN);
    let r = api.send("GET", &location, Some("admin"), None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["state"], "Pending", "{}", r.text);
    // The operator took it and finished it.
    let mut object = api.clusters.object("obs", "web").unwrap();
    object["status"]["backup"]["lastRequestedBackup"] =
        json!({"request": id, "id": "20261204T120000Z", "state": "Succeeded"});
    api.clusters.put("obs", object);
    let r = api.send("GET", &location, Some("admin"), None, &[]).await;
    assert_eq!(r.body["state"], "Succeeded", "{}", r.text);
    assert_eq!(r.body["backupId"], "20261204T120000Z", "{}", r.text);
    let r = api.send("GET", "/api/clusters/web/backups/api-unknown", Some("admin"), None, &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    // A cluster that keeps changing: 409 after 3 tries, nothing annotated.
    api.clusters
        .put("obs", json!({"metadata": {"name": "busy"}, "spec": {"backup": {"enabled": true, "bucket": "b"}}}));
    api.clusters.conflicts.store(3, Ordering::SeqCst);
    let r = api.send("POST", "/api/clusters/busy/backup", Some("ci"), None, &[]).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(api.clusters.object("obs", "busy").unwrap()["metadata"]["annotations"].is_null());

    // A request for a cluster that is not there: 404, and recorded as well.
    let r = api.send("POST", "/api/clusters/gone/backup", Some("ci"), None, &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    let records = api.records(4).await;
    let backups: Vec<_> = records.iter().filter(|r| r.operation == "backup").collect();
    assert_eq!(backups.len(), 4, "{records:?}");
    assert_eq!(backups[0].result, "error", "a refused request is recorded too");
    assert_eq!(backups[1].result, "success");
    assert!(backups[1].detail.contains(&id), "{:?}", backups[1]);
    assert_eq!(backups[1].operator, "ci");
    assert_eq!((backups[3].cluster_name.as_str(), backups[3].result.as_str()), ("gone", "error"), "{:?}", backups[3]);
}

#[tokio::test]
async fn without_the_scheduler_a_backup_is_503_and_without_a_store_the_audit_route_is_503() {
    let api = api("off", authorizer(), false, false);
    api.clusters.put("obs", json!({"metadata": {"name": "web"}, "spec": {"backup": {"enabled": true, "bucket": "b"}}}));
    let r = api.send("POST", "/api/clusters/web/backup", Some("admin"), None, &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert!(r.text.contains("--enable-backup"), "{}", r.text);
    assert!(api.clusters.object("obs", "web").unwrap()["metadata"]["annotations"].is_null());
    let r = api.send("GET", "/api/clusters/web/audit", Some("admin"), None, &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert!(r.text.contains("--audit-dsn"), "{}", r.text);
}

#[tokio::test]
async fn the_audit_route_returns_the_clusters_records_newest_first_with_ids() {
    let api = api("trail", authorizer(), true, true);
    for body in [CREATE, r#"{"name": "other", "spec": {}}"#] {
        assert_eq!(api.send("POST", "/api/clusters", Some("admin"), Some(body), &[]).await.status, StatusCode::CREATED);
    }
    assert_eq!(api.send("DELETE", "/api/clusters/web", Some("admin"), None, &[]).await.status, StatusCode::NO_CONTENT);
    api.records(3).await;
    let r = api.send("GET", "/api/clusters/web/audit", Some("admin"), None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let rows = r.body.as_array().unwrap();
    let ops: Vec<&str> = rows.iter().map(|r| r["operation"].as_str().unwrap()).collect();
    assert_eq!(ops, ["delete", "create"], "only web's, newest first: {}", r.text);
    assert!(rows.iter().all(|r| r["id"].as_str().is_some_and(|id| id.starts_with("api-"))), "{}", r.text);
}

#[tokio::test]
async fn cluster_sets_are_read_cluster_wide() {
    let api = api("sets", authorizer(), true, true);
    let r = api.send("GET", "/api/clustersets", Some("admin"), None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body[0]["metadata"]["name"], "fleet");
    assert_eq!(api.send("GET", "/api/clustersets/fleet", Some("admin"), None, &[]).await.status, StatusCode::OK);
    assert_eq!(api.send("GET", "/api/clustersets/nope", Some("admin"), None, &[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.send("GET", "/api/clustersets", Some("reader"), None, &[]).await.status, StatusCode::FORBIDDEN);
}

/// Fault row 18, in process: hostile and malformed requests get a 4xx, never a 5xx or a panic.
#[tokio::test]
async fn a_hand_made_corpus_of_bad_requests_gets_4xx_never_5xx() {
    let api = api("corpus", authorizer(), true, true);
    api.clusters.put("obs", json!({"metadata": {"name": "web"}, "spec": {"backup": {"enabled": true, "bucket": "b"}}}));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!(r#"{{"name": "x", "spec": {}{}}}"#, "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let huge = "a".repeat(100 << 20);
    let invalid_utf8 = String::from_utf8_lossy(&[0x7b, 0xff, 0xfe, 0x7d]).into_owned();
    let bodies: [(&str, Option<&str>); 8] = [
        ("empty", Some("")),
        ("deep array", Some(&deep)),
        ("deep spec", Some(&deep_object)),
        ("100 MiB", Some(&huge)),
        ("invalid UTF-8", Some(&invalid_utf8)),
        ("null", Some("null")),
        ("name not a string", Some(r#"{"name": {"a": 1}}"#)),
        ("no body", None),
    ];
    for token in [None, Some("made-up"), Some("reader"), Some("admin")] {
        for (what, body) in &bodies {
            for path in ["/api/clusters", "/api/namespaces/obs/clusters", "/api/clusters/web/backup"] {
                let r = api.send("POST", path, token, *body, &[]).await;
                assert!(
                    r.status.is_client_error() || r.status.is_success(),
                    "{what} to {path} as {token:?}: {}",
                    r.status
                );
                assert!(r.body["error"].is_string() || r.status.is_success(), "{what}: a JSON error: {}", r.text);
            }
        }
    }
    for (what, method, path, headers) in [
        ("wrong content type", "POST", "/api/clusters", vec![(header::CONTENT_TYPE.as_str(), "text/plain")]),
        ("basic auth", "GET", "/api/clusters", vec![(header::AUTHORIZATION.as_str(), "Basic YTpi")]),
        ("a method no route has", "PUT", "/api/clusters/web", vec![]),
        ("a name that cannot exist", "GET", "/api/clusters/..%2F..%2Fetc", vec![]),
        ("a long path", "GET", &*format!("/api/clusters/{}", "n".repeat(10_000)), vec![]),
    ] {
        let token = (!headers.iter().any(|(k, _)| *k == header::AUTHORIZATION.as_str())).then_some("admin");
        let r = api.send(method, path, token, None, &headers).await;
        assert!(r.body["error"].is_string(), "{what}: a JSON error: {}", r.text);
        assert!(r.status.is_client_error(), "{what}: {} {}", r.status, r.text);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]

    /// Any bytes as a create's body: a 201 or a 4xx, never a 5xx or a panic.
    #[test]
    fn any_body_gets_an_answer_below_500(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let status = runtime.block_on(async {
            let api = api("fuzz", authorizer(), true, false);
            let request = axum::http::Request::builder()
                .method("POST")
                .uri("/api/clusters")
                .header(header::AUTHORIZATION, "Bearer admin")
                .body(Body::from(body))
                .unwrap();
            api.router.clone().oneshot(request).await.unwrap().status()
        });
        proptest::prop_assert!(status.is_client_error() || status == StatusCode::CREATED, "{}", status);
    }
}

/// `docs/openapi.json` is the served document; `TSDB_WRITE_OPENAPI=1` rewrites it after a change of the API.
#[tokio::test]
async fn the_served_openapi_document_is_the_committed_one() {
    let api = api("openapi", authorizer(), true, true);
    let r = api.send("GET", openapi::PATH, None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "served without a token: {}", r.text);
    assert_eq!(r.headers.get(header::CONTENT_TYPE).unwrap(), "application/json");
    assert_eq!(r.body, serde_json::to_value(openapi::document()).unwrap());
    assert_eq!(r.body["openapi"], json!("3.1.0"));
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let current = serde_json::to_string_pretty(&r.body).unwrap() + "\n";
    if std::env::var_os("TSDB_WRITE_OPENAPI").is_some() {
        std::fs::write(&committed, &current).unwrap();
    }
    let on_disk = std::fs::read_to_string(&committed).unwrap_or_default();
    assert!(
        on_disk == current,
        "docs/openapi.json is not the API's document; run TSDB_WRITE_OPENAPI=1 cargo test -p tsdb-operator-adapters \
         the_served_openapi_document and commit it"
    );
}

#[test]
fn every_schema_keeps_all_its_keywords_in_the_document() {
    for (name, given) in openapi::schemas_as_given() {
        let given = openapi::normalized(given);
        let converted: utoipa::openapi::RefOr<utoipa::openapi::Schema> =
            serde_json::from_value(given.clone()).unwrap_or_else(|e| panic!("{name}: {e}: {}", first_refused(&given)));
        let back = serde_json::to_value(converted).unwrap();
        assert!(back == given, "{name} changes on its way into the document: {}", difference(&back, &given, ""));
    }
}

/// Where `a` and `b` differ first, as a JSON pointer and the two values there.
fn difference(a: &Value, b: &Value, at: &str) -> String {
    if let (Value::Object(x), Value::Object(y)) = (a, b) {
        for key in x.keys().chain(y.keys()) {
            let (u, v) = (x.get(key).unwrap_or(&Value::Null), y.get(key).unwrap_or(&Value::Null));
            if u != v {
                return difference(u, v, &format!("{at}/{key}"));
            }
        }
    }
    format!("{at}: {a} vs {b}")
}

/// The innermost schema in `schema` that the document's types refuse (`schema` itself when its parts all pass).
fn first_refused(schema: &Value) -> String {
    let refused = |v: &Value| {
        v.is_object() && serde_json::from_value::<utoipa::openapi::RefOr<utoipa::openapi::Schema>>(v.clone()).is_err()
    };
    let mut parts: Vec<&Value> = Vec::new();
    if let Value::Object(fields) = schema {
        for (key, value) in fields {
            match (key.as_str(), value) {
                ("properties" | "$defs", Value::Object(named)) => parts.extend(named.values()),
                (_, Value::Array(items)) => parts.extend(items),
                _ => parts.push(value),
            }
        }
    }
    parts.into_iter().find(|p| refused(p)).map_or_else(|| schema.to_string(), first_refused)
}

/// Each documented operation reaches its handler (none is answered by the fallback or with 405), and each route
/// the seed has is documented.
#[tokio::test]
async fn every_documented_operation_is_served_and_every_route_documented() {
    let api = api("openapi-routes", authorizer(), true, true);
    api.clusters.put("obs", json!({"metadata": {"name": "web"}, "spec": {"backup": {"enabled": true, "bucket": "b"}}}));
    let operations = openapi::operations();
    for (i, (method, path)) in operations.iter().enumerate() {
        let method = serde_json::to_value(method).unwrap().as_str().unwrap().to_ascii_uppercase();
        let uri = path.replace("{namespace}", "obs").replace("{name}", "web").replace("{id}", "x");
        let create = format!(r#"{{"name": "made-{i}", "spec": {{"replicas": 1}}}}"#);
        let body = (method == "POST" && uri.ends_with("/clusters")).then_some(create.as_str());
        let r = api.send(&method, &uri, Some("admin"), body, &[]).await;
        assert!(
            !r.text.contains("no such route") && r.status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {} {}",
            r.status,
            r.text
        );
        assert!(r.status.is_success() || r.status == StatusCode::NOT_FOUND, "{method} {path}: {} {}", r.status, r.text);
    }
    let seed = [
        "GET /api/clusters",
        "POST /api/clusters",
        "GET /api/clusters/{name}",
        "DELETE /api/clusters/{name}",
        "POST /api/clusters/{name}/backup",
        "GET /api/clusters/{name}/audit",
        "GET /api/clustersets",
        "GET /api/clustersets/{name}",
    ];
    let documented: Vec<String> = operations
        .iter()
        .map(|(m, p)| format!("{} {p}", serde_json::to_value(m).unwrap().as_str().unwrap().to_ascii_uppercase()))
        .collect();
    for route in seed {
        assert!(documented.iter().any(|d| d == route), "{route} is not documented: {documented:?}");
        let namespaced = route.replacen("/api/", "/api/namespaces/{namespace}/", 1);
        assert!(route.contains("clustersets") || documented.contains(&namespaced), "{namespaced} is not documented");
    }
}
