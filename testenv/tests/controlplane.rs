//! The test environment against the real thing: a Kubernetes 1.20 control plane, s3s-fs, PostgreSQL and the
//! process supervisor. The control-plane tests share `ControlPlane::shared()` and use a namespace each.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt as _, RetryConfig};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_testenv::controlplane::{ALICE_USER, FIELD_MANAGER, OPERATOR_SA_USER};
use tsdb_operator_testenv::process::{ProcessBuilder, Workdir, pid_is_alive};
use tsdb_operator_testenv::{ControlPlane, Postgres, S3Server};

/// Polls `check` every 100 ms until it returns `Some`, for at most `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn control_plane_serves_the_admin_and_denies_users_without_bindings() {
    let cp = ControlPlane::shared();
    assert!(cp.server_url().starts_with("https://127.0.0.1:"));
    assert!(cp.kubeconfig_path().is_file());
    assert!(cp.started_in() < Duration::from_secs(90));

    let client = cp.client();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "20"));
    let namespaces: Api<Namespace> = Api::all(client);
    assert!(namespaces.get_opt("default").await.unwrap().is_some());

    for user in [ALICE_USER, OPERATOR_SA_USER] {
        let as_user: Api<Namespace> = Api::all(cp.client_for_user(user).unwrap());
        let err = as_user.list(&ListParams::default()).await.unwrap_err();
        assert_eq!(status_code(&err), Some(403), "{user}: {err}");
    }
    let impersonated: Api<Namespace> = Api::all(cp.client_impersonating("mallory", &["team-a"]).unwrap());
    let err = impersonated.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(status_code(&err), Some(403), "{err}");
    assert!(err.to_string().contains("mallory"), "{err}");

    let bogus: Api<Namespace> = Api::all(cp.client_with_token("not-a-token").unwrap());
    let err = bogus.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(status_code(&err), Some(401), "{err}");
}

#[tokio::test]
async fn a_kubeconfig_file_of_a_premade_user_authenticates_as_that_user() {
    let cp = ControlPlane::shared();
    let path = cp.kubeconfig_path_for(ALICE_USER).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    let err = pods.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(status_code(&err), Some(403), "{err}");
    assert!(err.to_string().contains("\"alice\""), "{err}");
}

#[tokio::test]
async fn a_service_account_token_authenticates_as_the_service_account() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("sa-token").await;
    let token = cp.service_account_token(&ns, "probe").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(cp.client_with_token(&token).unwrap(), &ns);
    let err = pods.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(status_code(&err), Some(403), "{err}");
    assert!(err.to_string().contains(&format!("system:serviceaccount:{ns}:probe")), "{err}");
}

#[tokio::test]
async fn namespaces_are_fresh_and_ready_for_pods() {
    let cp = ControlPlane::shared();
    let a = cp.namespace("Fresh_NS.test").await;
    let b = cp.namespace("Fresh_NS.test").await;
    assert_ne!(a, b);
    assert!(a.starts_with("fresh-ns-test-"), "{a}");
    // The default service account has its token already, so a pod is admitted right away.
    let pods: Api<Pod> = Api::namespaced(cp.client(), &a);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "p" },
        "spec": { "containers": [{ "name": "c", "image": "busybox" }] }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
}

#[test]
fn a_dropped_control_plane_leaves_no_process_and_no_files() {
    let cp = ControlPlane::start().unwrap();
    let workdir = cp.workdir().to_owned();
    // Also in the etcd data dir on /dev/shm.
    let marker = workdir.file_name().unwrap().to_string_lossy().into_owned();
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
        })
        .collect();
    // Four supervisors and four programs at least (etcd, apiserver, controller-manager, scheduler).
    assert!(pids.len() >= 8, "{pids:?}");
    drop(cp);
    assert!(pids.iter().all(|pid| !pid_is_alive(*pid)), "left running: {pids:?}");
    assert!(wait_gone(&workdir, Duration::from_secs(10)), "{} was not removed", workdir.display());
}

const SEED_CLUSTER: &str = r#"
apiVersion: observability.merlionos.org/v1
kind: PrometheusCluster
metadata:
  name: demo
spec:
  replicas: 2
  retention: 15d
  storage:
    size: 20Gi
  backup:
    enabled: true
    bucket: tsdb-backups
    schedule: "0 */6 * * *"
"#;

#[tokio::test]
async fn project_crds_install_and_a_seed_cluster_is_read_back_with_its_defaults() {
    let cp = ControlPlane::shared();
    cp.install_project_crds().await.unwrap();
    // A second install is a no-op, as when several tests install them; the committed YAML is the same.
    cp.install_project_crds().await.unwrap();
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crds/crds.yaml")).unwrap();
    cp.install_crds_yaml(&committed).await.unwrap();
    let ns = cp.namespace("crd").await;

    let gvk = GroupVersionKind::gvk("observability.merlionos.org", "v1", "PrometheusCluster");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "prometheusclusters");
    let dynamic: Api<DynamicObject> = Api::namespaced_with(cp.client(), &ns, &resource);
    let object: DynamicObject = serde_yaml::from_str(SEED_CLUSTER).unwrap();
    dynamic.create(&PostParams::default(), &object).await.unwrap();

    // Defaults come from the CRD schema, applied by the API server.
    let raw = dynamic.get("demo").await.unwrap();
    let spec = &raw.data["spec"];
    assert_eq!(spec["replicas"], 2);
    assert_eq!(spec["image"], tsdb_operator_core::crd::cluster::DEFAULT_IMAGE);
    assert_eq!(spec["scrapeInterval"], "30s");
    assert_eq!(spec["evaluationInterval"], "30s");
    assert_eq!(spec["thanos"]["enabled"], false);
    assert_eq!(spec["backup"]["schedule"], "0 */6 * * *");

    let typed: Api<PrometheusCluster> = Api::namespaced(cp.client(), &ns);
    let cluster = typed.get("demo").await.unwrap();
    assert_eq!(cluster.spec.replicas, 2);
    assert_eq!(cluster.spec.retention, "15d");
    assert_eq!(cluster.spec.storage.size.0, "20Gi");
    assert!(cluster.spec.backup.enabled);
    assert_eq!(cluster.spec.backup.bucket, "tsdb-backups");
    assert!(cluster.status.is_none());

    // The schema rejects what it should.
    let mut bad: DynamicObject = serde_yaml::from_str(SEED_CLUSTER).unwrap();
    bad.metadata.name = Some("bad".into());
    bad.data["spec"]["replicas"] = serde_json::json!("two");
    let err = dynamic.create(&PostParams::default(), &bad).await.unwrap_err();
    assert_eq!(status_code(&err), Some(422), "{err}");
}

#[tokio::test]
async fn a_statefulset_gets_pods_and_claims_from_the_real_controller_manager() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("sts").await;
    let client = cp.client();
    let sts: StatefulSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": { "name": "demo" },
        "spec": {
            "serviceName": "demo",
            "replicas": 2,
            "podManagementPolicy": "Parallel",
            "selector": { "matchLabels": { "app": "demo" } },
            "template": {
                "metadata": { "labels": { "app": "demo" } },
                "spec": { "containers": [{
                    "name": "prometheus",
                    "image": "prom/prometheus:v2.55.1",
                    "volumeMounts": [{ "name": "data", "mountPath": "/prometheus" }]
                }] }
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": "data" },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": { "requests": { "storage": "1Gi" } }
                }
            }]
        }
    }))
    .unwrap();
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    statefulsets.patch("demo", &params, &Patch::Apply(&sts)).await.unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let names = eventually("two pods", Duration::from_secs(30), || async {
        let mut names: Vec<String> =
            pods.list(&ListParams::default()).await.ok()?.items.into_iter().filter_map(|p| p.metadata.name).collect();
        names.sort();
        (names.len() == 2).then_some(names)
    })
    .await;
    assert_eq!(names, ["demo-0", "demo-1"]);
    let claim_names = eventually("two claims", Duration::from_secs(30), || async {
        let mut names: Vec<String> =
            claims.list(&ListParams::default()).await.ok()?.items.into_iter().filter_map(|c| c.metadata.name).collect();
        names.sort();
        (names.len() == 2).then_some(names)
    })
    .await;
    assert_eq!(claim_names, ["data-demo-0", "data-demo-1"]);

    // No kubelet and no nodes here: the pods stay Pending, owned by the StatefulSet.
    let pod = pods.get("demo-0").await.unwrap();
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    let owner = &pod.metadata.owner_references.unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("StatefulSet", "demo"));

    // Applying the same object again changes nothing in the spec.
    let generation = statefulsets.get("demo").await.unwrap().metadata.generation;
    statefulsets.patch("demo", &params, &Patch::Apply(&sts)).await.unwrap();
    assert_eq!(statefulsets.get("demo").await.unwrap().metadata.generation, generation);

    // The garbage collector removes the pods of a deleted StatefulSet.
    statefulsets.delete("demo", &DeleteParams::background()).await.unwrap();
    eventually("pods to be collected", Duration::from_mins(1), || async {
        pods.list(&ListParams::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_watch_delivers_changes() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("watch").await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(cp.client(), &ns);
    let stream = kube::runtime::watcher(cms.clone(), kube::runtime::watcher::Config::default());
    let mut stream = std::pin::pin!(kube::runtime::WatchStreamExt::applied_objects(stream));
    let cm = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "seen" }, "data": { "k": "v" }
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    // The namespace also has the `kube-root-ca.crt` ConfigMap the controller manager publishes.
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(cm) = stream.next().await {
            if cm.unwrap().metadata.name.as_deref() == Some("seen") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(seen);
}

fn s3_store(s3: &S3Server) -> object_store::Result<impl ObjectStore> {
    AmazonS3Builder::new()
        .with_endpoint(s3.endpoint())
        .with_allow_http(true)
        .with_bucket_name(s3.bucket())
        .with_region(s3.region())
        .with_access_key_id(s3.access_key())
        .with_secret_access_key(s3.secret_key())
        .with_retry(RetryConfig { max_retries: 0, retry_timeout: Duration::from_secs(2), ..RetryConfig::default() })
        .with_client_options(ClientOptions::new().with_allow_http(true).with_timeout(Duration::from_secs(2)))
        .build()
}

#[tokio::test]
async fn s3_server_stores_objects_and_fails_while_stopped_or_frozen() {
    let s3 = S3Server::start().unwrap();
    let store = s3_store(&s3).unwrap();
    let path = ObjectPath::from("backups/demo/manifest.json");
    store.put(&path, bytes::Bytes::from_static(b"{\"ok\":true}").into()).await.unwrap();
    let body = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&body[..], b"{\"ok\":true}");
    assert!(s3.data_dir().join(s3.bucket()).join("backups/demo/manifest.json").is_file());

    // Wrong credentials are refused.
    let intruder = AmazonS3Builder::new()
        .with_endpoint(s3.endpoint())
        .with_allow_http(true)
        .with_bucket_name(s3.bucket())
        .with_region(s3.region())
        .with_access_key_id(s3.access_key())
        .with_secret_access_key("wrong")
        .with_retry(RetryConfig { max_retries: 0, ..RetryConfig::default() })
        .build()
        .unwrap();
    assert!(intruder.get(&path).await.is_err());

    s3.stop().unwrap();
    assert!(!s3.is_running());
    let err = store.get(&path).await.unwrap_err();
    assert!(!err.to_string().is_empty());
    assert!(store.put(&ObjectPath::from("x"), bytes::Bytes::from_static(b"x").into()).await.is_err());

    s3.restart().unwrap();
    let body = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&body[..], b"{\"ok\":true}", "data survives an outage");

    s3.freeze().unwrap();
    let started = Instant::now();
    assert!(store.get(&path).await.is_err(), "a frozen server answers nothing");
    assert!(started.elapsed() >= Duration::from_secs(1));
    s3.thaw().unwrap();
    // The request that timed out may still be in the server's backlog; it answers again within moments.
    let mut last = None;
    for _ in 0..20 {
        match store.get(&path).await {
            Ok(_) => {
                last = None;
                break;
            }
            Err(e) => {
                eprintln!("s3s-fs after thaw: {e}; retrying");
                last = Some(e);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(last.is_none(), "still failing after thaw: {last:?}");

    // The environment variables configure an AWS client, too.
    let mut from_env = AmazonS3Builder::new().with_bucket_name(s3.bucket());
    for (key, value) in s3.env() {
        from_env = from_env.with_config(key.to_ascii_lowercase().parse().unwrap(), value);
    }
    let body = from_env.build().unwrap().get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&body[..], b"{\"ok\":true}");

    let other = s3.create_bucket("second").unwrap();
    assert_ne!(other, s3.bucket());
}

#[tokio::test]
async fn a_fresh_postgres_database_is_usable_and_private() {
    use sqlx::Connection as _;

    let dsn = Postgres::fresh_database("testenv").unwrap();
    let other = Postgres::fresh_database("testenv").unwrap();
    assert_ne!(dsn, other);

    let mut conn = sqlx::PgConnection::connect(&dsn).await.unwrap();
    sqlx::query("CREATE TABLE audit (id BIGSERIAL PRIMARY KEY, what TEXT NOT NULL)").execute(&mut conn).await.unwrap();
    sqlx::query("INSERT INTO audit (what) VALUES ($1)").bind("hello").execute(&mut conn).await.unwrap();
    let (what,): (String,) = sqlx::query_as("SELECT what FROM audit").fetch_one(&mut conn).await.unwrap();
    assert_eq!(what, "hello");
    conn.close().await.unwrap();

    let mut conn = sqlx::PgConnection::connect(&other).await.unwrap();
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM information_schema.tables WHERE table_name = 'audit'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 0, "databases are not shared");
    conn.close().await.unwrap();

    let pg = Postgres::local().unwrap();
    for dsn in [dsn, other] {
        let name = dsn.rsplit('/').next().unwrap();
        pg.drop_database(name).unwrap();
        assert_eq!(
            pg.psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")).unwrap(),
            "0"
        );
    }
}

const HELPER_ENV: &str = "TSDB_TESTENV_LIFELINE_HELPER";

fn wait_gone(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while path.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Starts a supervised `sleep`. Run by itself it checks that dropping stops it; run as the helper of
/// `supervised_processes_die_with_a_killed_test_binary` it reports the PID and waits to be killed.
#[test]
fn lifeline_helper_supervises_a_sleep() {
    let workdir = Workdir::create("lifeline").unwrap();
    let sleeper = ProcessBuilder::new("sleeper", "/bin/sleep").arg("600").spawn(&workdir).unwrap();
    let pid = sleeper.pid();
    if std::env::var_os(HELPER_ENV).is_some() {
        println!("LIFELINE {pid} {}", workdir.path().display());
        std::thread::sleep(Duration::from_mins(10));
    }
    let dir = workdir.path().to_owned();
    drop(sleeper);
    assert!(!pid_is_alive(pid));
    drop(workdir);
    assert!(wait_gone(&dir, Duration::from_secs(10)));
}

#[test]
fn supervised_processes_die_with_a_killed_test_binary() {
    use std::io::BufRead as _;

    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lifeline_helper_supervises_a_sleep", "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(helper.stdout.take().unwrap());
    let line = stdout
        .lines()
        .map(Result::unwrap)
        .find_map(|l| l.split_once("LIFELINE ").map(|(_, rest)| rest.to_owned()))
        .unwrap();
    // libtest prints the test name on the same line.
    let mut fields = line.split(' ');
    let pid: u32 = fields.next().unwrap().parse().unwrap();
    let dir = fields.next().unwrap().to_owned();
    assert!(pid_is_alive(pid));

    helper.kill().unwrap(); // SIGKILL: no destructor, no atexit
    helper.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while pid_is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!pid_is_alive(pid), "sleep {pid} outlived its test binary");
    assert!(wait_gone(Path::new(&dir), Duration::from_secs(15)), "{dir} outlived its test binary");
}
