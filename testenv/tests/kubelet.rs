//! The process kubelet against the real control plane: real Prometheus processes in pod network namespaces.
//!
//! One kubelet (3 nodes) serves all tests of this binary; each test works in its own namespace.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;
use tsdb_operator_testenv::ControlPlane;
use tsdb_operator_testenv::kubelet::{Kubelet, KubeletHandle, http_get, process_alive};

async fn kubelet() -> &'static KubeletHandle {
    static KUBELET: OnceCell<KubeletHandle> = OnceCell::const_new();
    // Both `ring` (kube) and `aws-lc-rs` (dev-dependencies) are linked into this binary: pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    KUBELET
        .get_or_init(|| async {
            let cp = ControlPlane::shared();
            Kubelet::builder(cp.kube_config())
                .nodes(3)
                .backoff(Duration::from_secs(1), Duration::from_secs(10))
                .start()
                .await
                .expect("the process kubelet starts")
        })
        .await
}

fn from_yaml<K: DeserializeOwned>(yaml: &str) -> K {
    serde_yaml::from_str(yaml).expect("valid test manifest")
}

async fn create<K>(client: &Client, namespace: &str, yaml: &str) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &from_yaml(yaml))
        .await
        .expect("create")
}

/// Polls `check` every 250 ms until it returns `Some`, at most `timeout`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

async fn ready_pod(pods: &Api<Pod>, name: &str, timeout: Duration) -> Pod {
    wait_for(&format!("pod {name} to be Ready"), timeout, || async {
        pods.get_opt(name).await.ok().flatten().filter(is_ready)
    })
    .await
}

async fn get(ip: IpAddr, path: &str) -> Option<(u16, String)> {
    let response = http_get(SocketAddr::new(ip, 9090), path, &[], Duration::from_secs(2))
        .await
        .inspect_err(|e| println!("GET http://{ip}:9090{path}: {e}"))
        .ok()?;
    Some((response.status, response.body))
}

/// `count_over_time(up[1m])` at a fixed time: the number of samples stored before it.
async fn samples_at(ip: IpAddr, at: i64) -> Option<u64> {
    let (status, body) = get(ip, &format!("/api/v1/query?query=count_over_time(up%5B1m%5D)&time={at}")).await?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let value = json["data"]["result"][0]["value"][1].as_str().and_then(|v| v.parse().ok());
    if status != 200 {
        println!("query at {ip}: HTTP {status}: {body}");
    }
    value
}

const PROMETHEUS_CONFIG: &str = r"
apiVersion: v1
kind: ConfigMap
metadata: {name: prometheus}
data:
  prometheus.yml: |
    global: {scrape_interval: 1s, evaluation_interval: 1s}
    scrape_configs:
    - job_name: self
      static_configs: [{targets: ['localhost:9090']}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_statefulset_becomes_ready_and_keeps_its_data_across_pod_deletion() {
    kubelet().await;
    let cp = ControlPlane::shared();
    let client = cp.client();
    let ns = cp.namespace("kubelet-sts").await;
    create::<ConfigMap>(&client, &ns, PROMETHEUS_CONFIG).await;
    create::<Service>(
        &client,
        &ns,
        r"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: web, port: 9090}]
",
    )
    .await;
    let started = Instant::now();
    create::<StatefulSet>(
        &client,
        &ns,
        r"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 2
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: prometheus
        image: prom/prometheus:v2.53.3
        args: [--config.file=/etc/prometheus/config/prometheus.yml, --storage.tsdb.path=/prometheus]
        ports: [{name: web, containerPort: 9090}]
        readinessProbe:
          httpGet: {path: /-/ready, port: web}
          periodSeconds: 1
        volumeMounts:
        - {name: config, mountPath: /etc/prometheus/config}
        - {name: data, mountPath: /prometheus}
      volumes:
      - name: config
        configMap: {name: prometheus}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
",
    )
    .await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    wait_for("2 ready replicas", Duration::from_mins(2), || async {
        let set = sets.get("web").await.ok()?;
        (set.status?.ready_replicas? == 2).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    println!(
        "MEASURE statefulset of 2 Prometheus 2.53 ready (PVC provisioned and bound, scheduled, started) in {elapsed:?}"
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut ips = BTreeMap::new();
    for name in ["web-0", "web-1"] {
        let pod = pods.get(name).await.unwrap();
        let ip = pod_ip(&pod).expect("pod IP");
        assert_eq!(get(ip, "/-/ready").await.map(|r| r.0), Some(200), "{name} at {ip} answers /-/ready");
        let status = pod.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(status.host_ip.is_some() && status.start_time.is_some());
        let container = &status.container_statuses.unwrap()[0];
        assert!(container.ready && container.started == Some(true));
        assert!(container.container_id.as_deref().is_some_and(|id| id.starts_with("process://")));
        ips.insert(name, ip);
    }
    assert_ne!(ips["web-0"], ips["web-1"], "each pod has its own IP");

    // Let web-0 scrape itself until it holds a few samples, and remember how many it had at that time.
    let ip = ips["web-0"];
    let (at, before) = wait_for("web-0 to scrape itself", Duration::from_secs(30), || async {
        let at = k8s_openapi::jiff::Timestamp::now().as_second();
        samples_at(ip, at).await.filter(|n| *n >= 3).map(|n| (at, n))
    })
    .await;
    let old_uid = pods.get("web-0").await.unwrap().metadata.uid;

    let deleted = Instant::now();
    pods.delete("web-0", &DeleteParams::default()).await.unwrap();
    let pod = wait_for("web-0 to come back Ready", Duration::from_secs(90), || async {
        pods.get_opt("web-0").await.ok().flatten().filter(|p| p.metadata.uid != old_uid && is_ready(p))
    })
    .await;
    println!("MEASURE web-0 deleted and back Ready (SIGTERM, WAL replay) in {:?}", deleted.elapsed());
    let ip = pod_ip(&pod).unwrap();
    let after = wait_for("samples after the restart", Duration::from_secs(20), || samples_at(ip, at)).await;
    assert_eq!(after, before, "the samples written before the deletion survive on the PersistentVolume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_map_change_appears_in_the_mounted_file() {
    let kubelet = kubelet().await;
    let cp = ControlPlane::shared();
    let client = cp.client();
    let ns = cp.namespace("kubelet-cm").await;
    create::<ConfigMap>(
        &client,
        &ns,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {app.conf: one}\n",
    )
    .await;
    create::<Pod>(
        &client,
        &ns,
        r"
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: busybox
    command: [sleep, '3600']
    volumeMounts: [{name: conf, mountPath: /etc/tsdb-kubelet-test/conf}]
  volumes: [{name: conf, configMap: {name: app}}]
",
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    ready_pod(&pods, "reader", Duration::from_mins(1)).await;
    let pid = kubelet.faults().pid(&ns, "reader", "main").expect("container runs");
    // Read the file the way the container sees it: inside its mount namespace.
    let read = || async move {
        let out = tokio::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "cat", "/etc/tsdb-kubelet-test/conf/app.conf"])
            .output()
            .await
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(read().await.as_deref(), Some("one"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut cm = cms.get("app").await.unwrap();
    cm.data = Some([("app.conf".to_owned(), "two".to_owned())].into());
    let changed = Instant::now();
    cms.replace("app", &PostParams::default(), &cm).await.unwrap();
    wait_for("the new content in the container", Duration::from_secs(30), || async {
        read().await.filter(|c| c == "two")
    })
    .await;
    println!("MEASURE ConfigMap change visible in the container after {:?}", changed.elapsed());
    pods.delete("reader", &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_stay_ready_for_two_minutes() {
    let kubelet = kubelet().await;
    let client = ControlPlane::shared().client();
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let until = Instant::now() + Duration::from_secs(125);
    while Instant::now() < until {
        for name in kubelet.nodes() {
            let node = nodes.get(name).await.unwrap();
            let ready = node.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
            assert_eq!(ready.status, "True", "node {name} is Ready");
            let lease = leases.get(name).await.unwrap();
            let renewed = lease.spec.unwrap().renew_time.unwrap().0;
            let age = k8s_openapi::jiff::Timestamp::now().duration_since(renewed);
            assert!(age.as_secs() < 25, "lease of {name} renewed {age:?} ago");
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pod_is_stopped_with_sigterm_then_sigkill_after_the_grace_period() {
    let kubelet = kubelet().await;
    let cp = ControlPlane::shared();
    let client = cp.client();
    let ns = cp.namespace("kubelet-delete").await;
    // `polite` exits on SIGTERM; `stubborn` ignores it and needs the SIGKILL after the grace period.
    for (name, script) in [("polite", "exec sleep 3600"), ("stubborn", "trap '' TERM; sleep 3600")] {
        create::<Pod>(
            &client,
            &ns,
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: main\n    \
                 image: busybox\n    command: [sh, -c, \"{script}\"]\n"
            ),
        )
        .await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for (name, grace, min, max) in [("polite", 30, 0, 10), ("stubborn", 3, 3, 15)] {
        let pod = ready_pod(&pods, name, Duration::from_mins(1)).await;
        let pid = kubelet.faults().pid(&ns, name, "main").expect("container runs");
        let container_id = pod.status.unwrap().container_statuses.unwrap()[0].container_id.clone();
        assert_eq!(container_id, Some(format!("process://{pid}")));
        assert!(process_alive(pid));
        let deleted = Instant::now();
        pods.delete(name, &DeleteParams { grace_period_seconds: Some(grace), ..DeleteParams::default() })
            .await
            .unwrap();
        wait_for(&format!("pod {name} to be gone"), Duration::from_secs(40), || async {
            pods.get_opt(name).await.ok().flatten().is_none().then_some(())
        })
        .await;
        let took = deleted.elapsed();
        println!("MEASURE pod {name} (grace {grace}s) removed in {took:?}");
        assert!(!process_alive(pid), "process {pid} of {name} is gone");
        assert!(took >= Duration::from_secs(min) && took < Duration::from_secs(max), "{name} took {took:?}");
        assert!(kubelet.faults().pod_ip(&ns, name).is_none(), "sandbox of {name} removed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_container_fails_its_probes_and_is_not_ready_until_thawed() {
    let kubelet = kubelet().await;
    let cp = ControlPlane::shared();
    let client = cp.client();
    let ns = cp.namespace("kubelet-freeze").await;
    create::<ConfigMap>(&client, &ns, PROMETHEUS_CONFIG).await;
    let started = Instant::now();
    create::<Pod>(
        &client,
        &ns,
        r"
apiVersion: v1
kind: Pod
metadata: {name: prom}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: prometheus
    image: quay.io/prometheus/prometheus:v3.5.0
    args: [--config.file=/etc/prometheus/config/prometheus.yml]
    ports: [{name: web, containerPort: 9090}]
    readinessProbe:
      httpGet: {path: /-/ready, port: web}
      periodSeconds: 1
      failureThreshold: 2
    volumeMounts: [{name: config, mountPath: /etc/prometheus/config}]
  volumes: [{name: config, configMap: {name: prometheus}}]
",
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = ready_pod(&pods, "prom", Duration::from_mins(1)).await;
    println!("MEASURE single Prometheus 3.5 pod Ready in {:?}", started.elapsed());
    let ip = pod_ip(&pod).unwrap();
    assert_eq!(get(ip, "/-/ready").await.map(|r| r.0), Some(200));

    kubelet.faults().freeze(&ns, "prom", "prometheus").unwrap();
    wait_for("the frozen pod to be not ready", Duration::from_secs(30), || async {
        pods.get_opt("prom").await.ok().flatten().filter(|p| !is_ready(p))
    })
    .await;
    assert_eq!(get(ip, "/-/ready").await, None, "a frozen Prometheus answers nothing");
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    let unhealthy = wait_for("an Unhealthy event", Duration::from_secs(10), || async {
        let list = events.list(&kube::api::ListParams::default().fields("involvedObject.name=prom")).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("Unhealthy"))
    })
    .await;
    assert!(unhealthy.message.unwrap().starts_with("Readiness probe failed: "));
    assert_eq!(unhealthy.source.unwrap().component.as_deref(), Some("kubelet"));

    kubelet.faults().thaw(&ns, "prom", "prometheus").unwrap();
    ready_pod(&pods, "prom", Duration::from_secs(30)).await;

    kubelet.faults().make_unreachable(&ns, "prom").await.unwrap();
    assert_eq!(get(ip, "/-/ready").await, None, "an unreachable pod answers nothing");
    wait_for("the unreachable pod to be not ready", Duration::from_secs(30), || async {
        pods.get_opt("prom").await.ok().flatten().filter(|p| !is_ready(p))
    })
    .await;
    kubelet.faults().make_reachable(&ns, "prom").await.unwrap();
    ready_pod(&pods, "prom", Duration::from_secs(30)).await;

    let restarts = |p: &Pod| p.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].restart_count;
    assert_eq!(restarts(&pods.get("prom").await.unwrap()), 0);
    kubelet.faults().kill(&ns, "prom", "prometheus").unwrap();
    let pod = wait_for("the killed container to be restarted and Ready", Duration::from_mins(1), || async {
        pods.get_opt("prom").await.ok().flatten().filter(|p| restarts(p) == 1 && is_ready(p))
    })
    .await;
    let last = pod.status.unwrap().container_statuses.unwrap()[0].last_state.clone().unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 137);
    pods.delete("prom", &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_env_and_unmapped_images_behave_like_kubernetes() {
    let kubelet = kubelet().await;
    let cp = ControlPlane::shared();
    let client = cp.client();
    let ns = cp.namespace("kubelet-misc").await;
    create::<ConfigMap>(&client, &ns, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: env}\ndata: {COLOR: blue}\n")
        .await;
    create::<Pod>(
        &client,
        &ns,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: app, labels: {tier: backend}}
spec:
  terminationGracePeriodSeconds: 2
  initContainers:
  - name: init
    image: busybox
    command: [sh, -c, 'echo initialized > /var/lib/tsdb-kubelet-test/work/marker']
    volumeMounts: [{name: work, mountPath: /var/lib/tsdb-kubelet-test/work}]
  containers:
  - name: main
    image: busybox
    command: [sh, -c]
    args: ['cat /var/lib/tsdb-kubelet-test/work/marker; echo "$(GREETING) $LITERAL"; echo "tier=$TIER ip=$POD_IP color=$COLOR"; exec sleep 3600']
    env:
    - {name: NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: GREETING, value: "hello $(NAME)"}
    - {name: LITERAL, value: "$$(NAME)"}
    - {name: TIER, valueFrom: {fieldRef: {fieldPath: "metadata.labels['tier']"}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    envFrom: [{configMapRef: {name: env}}]
    volumeMounts: [{name: work, mountPath: /var/lib/tsdb-kubelet-test/work}]
  volumes: [{name: work, emptyDir: {}}]
"#,
    )
    .await;
    create::<Pod>(
        &client,
        &ns,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: nginx}\nspec:\n  containers:\n  - {name: main, image: 'nginx:1.25'}\n",
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = ready_pod(&pods, "app", Duration::from_mins(1)).await;
    let init = &pod.status.as_ref().unwrap().init_container_statuses.as_ref().unwrap()[0];
    assert_eq!(init.state.as_ref().unwrap().terminated.as_ref().unwrap().reason.as_deref(), Some("Completed"));
    let ip = pod_ip(&pod).unwrap();
    let logs = wait_for("the container's output", Duration::from_secs(10), || async {
        kubelet.faults().logs(&ns, "app", "main").ok().filter(|l| l.lines().count() >= 3)
    })
    .await;
    assert_eq!(logs, format!("initialized\nhello app $(NAME)\ntier=backend ip={ip} color=blue\n"));

    let waiting = wait_for("nginx to wait for its image", Duration::from_secs(30), || async {
        let pod = pods.get_opt("nginx").await.ok().flatten()?;
        let state = pod.status?.container_statuses?.into_iter().next()?.state?.waiting?;
        (state.reason.as_deref() == Some("ErrImagePull")).then_some(state)
    })
    .await;
    assert!(waiting.message.unwrap().contains("map_image"));
    for name in ["app", "nginx"] {
        pods.delete(name, &DeleteParams::default()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_liveness_probe_restarts_the_container() {
    let kubelet = kubelet().await;
    let cp = ControlPlane::shared();
    let client = cp.client();
    let ns = cp.namespace("kubelet-liveness").await;
    create::<Pod>(
        &client,
        &ns,
        r"
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'touch /state/healthy; exec sleep 3600']
    livenessProbe:
      exec: {command: [test, -f, /state/healthy]}
      periodSeconds: 1
      failureThreshold: 2
    volumeMounts: [{name: state, mountPath: /state}]
  volumes: [{name: state, emptyDir: {}}]
",
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    ready_pod(&pods, "app", Duration::from_mins(1)).await;
    // The probe passes for a while, then the file goes (removed inside the container's mount namespace).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = |p: &Pod| p.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].clone();
    assert_eq!(status(&pods.get("app").await.unwrap()).restart_count, 0, "a passing liveness probe keeps it");
    let pid = kubelet.faults().pid(&ns, "app", "main").unwrap();
    let removed = tokio::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "rm", "/state/healthy"])
        .status()
        .await
        .unwrap();
    assert!(removed.success());
    let pod = wait_for("the container to be restarted", Duration::from_secs(30), || async {
        pods.get_opt("app").await.ok().flatten().filter(|p| status(p).restart_count == 1 && is_ready(p))
    })
    .await;
    let last = status(&pod).last_state.unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 143, "stopped with SIGTERM");
    assert!(last.message.unwrap().contains("Liveness probe failed"));
    assert!(!process_alive(pid));
    pods.delete("app", &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_pods_and_removes_the_network_and_nodes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = ControlPlane::shared();
    let client = cp.client();
    let ns = cp.namespace("kubelet-shutdown").await;
    let second = Kubelet::builder(cp.kube_config())
        .nodes(1)
        .node_prefix("tsdb-extra")
        .shutdown_grace(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let index = second.subnet_index();
    let state_dir = second.state_dir().to_owned();
    // Bound to the node directly, as a DaemonSet pod would be.
    create::<Pod>(
        &client,
        &ns,
        r"
apiVersion: v1
kind: Pod
metadata: {name: pinned}
spec:
  nodeName: tsdb-extra-0
  containers: [{name: main, image: busybox, command: [sleep, '3600']}]
",
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = ready_pod(&pods, "pinned", Duration::from_mins(1)).await;
    assert!(pod_ip(&pod).unwrap().to_string().starts_with(&format!("10.213.{index}.")));
    let pid = second.faults().pid(&ns, "pinned", "main").unwrap();
    second.shutdown().await;

    assert!(!process_alive(pid), "the container process is gone");
    let netns = tokio::process::Command::new("ip").args(["netns", "list"]).output().await.unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(!netns.contains(&format!("tsdb-{index}-")), "namespaces removed: {netns}");
    let links = tokio::process::Command::new("ip").args(["-o", "link", "show"]).output().await.unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&format!("tsdbbr{index}:")), "bridge removed");
    assert!(!state_dir.exists(), "temporary state dir removed");
    let nodes: Api<Node> = Api::all(client);
    wait_for("the node to be deleted", Duration::from_secs(10), || async {
        nodes.get_opt("tsdb-extra-0").await.ok().flatten().is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod_runs_in_the_host_namespace_with_its_volumes() {
    let kubelet = kubelet().await;
    let cp = ControlPlane::shared();
    let client = cp.client();
    let ns = cp.namespace("kubelet-hostnet").await;
    create::<ConfigMap>(&client, &ns, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: v}\n").await;
    create::<Pod>(
        &client,
        &ns,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: host}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'cat /etc/tsdb-kubelet-test/host/k; echo " $KUBERNETES_SERVICE_HOST"; ls /var/run/secrets/kubernetes.io/serviceaccount; exec sleep 3600']
    volumeMounts: [{name: c, mountPath: /etc/tsdb-kubelet-test/host}]
  volumes: [{name: c, configMap: {name: c}}]
"#,
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = ready_pod(&pods, "host", Duration::from_mins(1)).await;
    let status = pod.status.unwrap();
    assert_eq!(status.pod_ip, status.host_ip, "a hostNetwork pod has the node's IP");
    let logs = wait_for("the container's output", Duration::from_secs(10), || async {
        kubelet.faults().logs(&ns, "host", "main").ok().filter(|l| l.contains("token"))
    })
    .await;
    assert!(logs.starts_with("v 127.0.0.1\n"), "{logs}");
    assert!(!std::path::Path::new("/etc/tsdb-kubelet-test/host/k").exists(), "the mount stays in the container");
    pods.delete("host", &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_kubelet_binary_runs_pods_until_sigterm() {
    let cp = ControlPlane::shared();
    let client = cp.client();
    let ns = cp.namespace("kubelet-bin").await;
    let state_dir = std::env::temp_dir().join(format!("tsdb-kubelet-bin-{}", std::process::id()));
    let mut kubelet = tokio::process::Command::new(env!("CARGO_BIN_EXE_process-kubelet"))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(["--nodes", "1", "--node-prefix", "tsdb-bin", "--delete-nodes", "--state-dir"])
        .arg(&state_dir)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    create::<Pod>(
        &client,
        &ns,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: pinned}\nspec:\n  nodeName: tsdb-bin-0\n  containers: \
         [{name: main, image: busybox, command: [sleep, '3600']}]\n",
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = ready_pod(&pods, "pinned", Duration::from_mins(1)).await;
    let container_id = pod.status.unwrap().container_statuses.unwrap()[0].container_id.clone().unwrap();
    let pid: u32 = container_id.strip_prefix("process://").unwrap().parse().unwrap();
    assert!(process_alive(pid));

    let kubelet_pid = nix::unistd::Pid::from_raw(i32::try_from(kubelet.id().unwrap()).unwrap());
    nix::sys::signal::kill(kubelet_pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), kubelet.wait()).await.unwrap().unwrap();
    assert!(status.success(), "process-kubelet exits cleanly on SIGTERM: {status}");
    assert!(!process_alive(pid), "its container is gone");
    assert!(Api::<Node>::all(client).get_opt("tsdb-bin-0").await.unwrap().is_none(), "--delete-nodes");
    assert!(state_dir.join("pods").exists(), "the state dir given on the command line is kept");
    std::fs::remove_dir_all(&state_dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_of_a_wait_for_first_consumer_class_get_a_local_volume_on_the_chosen_node() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use k8s_openapi::api::storage::v1::StorageClass;
    kubelet().await;
    let cp = ControlPlane::shared();
    let client = cp.client();
    let ns = cp.namespace("kubelet-wffc").await;
    let class = format!("local-{ns}");
    Api::<StorageClass>::all(client.clone())
        .create(
            &PostParams::default(),
            &from_yaml(&format!(
                "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {{name: {class}}}\n\
                 provisioner: {}\nvolumeBindingMode: WaitForFirstConsumer\n",
                tsdb_operator_testenv::kubelet::PROVISIONER
            )),
        )
        .await
        .unwrap();
    create::<PersistentVolumeClaim>(
        &client,
        &ns,
        &format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data}}\nspec:\n  storageClassName: {class}\n  \
             accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 1Gi}}}}\n"
        ),
    )
    .await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let claim = claims.get("data").await.unwrap();
    assert_eq!(claim.status.unwrap().phase.as_deref(), Some("Pending"), "no volume before a pod uses the claim");
    create::<Pod>(
        &client,
        &ns,
        r"
apiVersion: v1
kind: Pod
metadata: {name: user}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - {name: main, image: busybox, command: [sleep, '3600'], volumeMounts: [{name: data, mountPath: /data}]}
  volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]
",
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = ready_pod(&pods, "user", Duration::from_mins(1)).await;
    let node = pod.spec.unwrap().node_name.unwrap();
    let volume = claims.get("data").await.unwrap().spec.unwrap().volume_name.unwrap();
    let pv = Api::<PersistentVolume>::all(client.clone()).get(&volume).await.unwrap().spec.unwrap();
    assert!(pv.local.is_some(), "a local volume");
    let terms = pv.node_affinity.unwrap().required.unwrap().node_selector_terms;
    assert_eq!(terms[0].match_expressions.as_ref().unwrap()[0].values, Some(vec![node]));
    pods.delete("user", &DeleteParams::default()).await.unwrap();
    Api::<StorageClass>::all(client).delete(&class, &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_containers_back_off_or_fail_per_restart_policy() {
    kubelet().await;
    let cp = ControlPlane::shared();
    let client = cp.client();
    let ns = cp.namespace("kubelet-crash").await;
    for (name, policy) in [("always", "Always"), ("never", "Never"), ("done", "OnFailure")] {
        let code = if name == "done" { 0 } else { 3 };
        create::<Pod>(
            &client,
            &ns,
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: {policy}\n  \
                 containers: [{{name: main, image: busybox, command: [sh, -c, 'exit {code}']}}]\n"
            ),
        )
        .await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let container = |p: &Pod| p.status.as_ref()?.container_statuses.as_ref()?.first().cloned();
    // Back-off 1 s doubling (test kubelet): the first restart is immediate, the next ones wait 1 s, 2 s, 4 s.
    // As in Kubernetes, restartCount counts the dead runs, also while the next start is backing off.
    let started = Instant::now();
    let crashing = wait_for("a CrashLoopBackOff after 4 runs", Duration::from_secs(40), || async {
        let pod = pods.get_opt("always").await.ok().flatten()?;
        let status = container(&pod)?;
        let waiting = status.state.as_ref()?.waiting.as_ref()?;
        (status.restart_count >= 4 && waiting.reason.as_deref() == Some("CrashLoopBackOff")).then_some(pod)
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(3), "restarts back off: {:?}", started.elapsed());
    assert_eq!(crashing.status.as_ref().unwrap().phase.as_deref(), Some("Running"), "Always restarts: Running");
    let last = container(&crashing).unwrap().last_state.unwrap().terminated.unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    for (name, phase) in [("never", "Failed"), ("done", "Succeeded")] {
        let pod = wait_for(&format!("{name} to be {phase}"), Duration::from_secs(30), || async {
            pods.get_opt(name)
                .await
                .ok()
                .flatten()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase))
        })
        .await;
        assert_eq!(container(&pod).unwrap().restart_count, 0);
    }
    for name in ["always", "never", "done"] {
        pods.delete(name, &DeleteParams::default()).await.unwrap();
    }
}

/// The line of `logs` that starts with `prefix`, without it.
fn log_line<'a>(logs: &'a str, prefix: &str) -> Option<&'a str> {
    logs.lines().find_map(|line| line.strip_prefix(prefix))
}

/// Creates the Role `name` with `verbs` on pods and binds it to the ServiceAccount `name`; waits until the API
/// server's authorizer grants the first verb to the ServiceAccount (RoleBindings take effect asynchronously).
async fn grant_on_pods(cp: &ControlPlane, client: &Client, ns: &str, name: &str, verbs: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let params = PostParams::default();
    let role: Role = serde_yaml::from_str(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {name}}}\n\
         rules: [{{apiGroups: [''], resources: [pods], verbs: [{verbs}]}}]\n"
    ))?;
    Api::<Role>::namespaced(client.clone(), ns).create(&params, &role).await?;
    let binding: RoleBinding = serde_yaml::from_str(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}}}\n\
         subjects: [{{kind: ServiceAccount, name: {name}, namespace: {ns}}}]\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}\n"
    ))?;
    Api::<RoleBinding>::namespaced(client.clone(), ns).create(&params, &binding).await?;
    let user = format!("system:serviceaccount:{ns}:{name}");
    let as_sa: Api<Pod> = Api::namespaced(
        cp.client_impersonating(&user, &["system:serviceaccounts", &format!("system:serviceaccounts:{ns}")])?,
        ns,
    );
    wait_for(&format!("{user} to be allowed to list pods"), Duration::from_secs(10), || async {
        as_sa.list(&kube::api::ListParams::default()).await.ok().map(drop)
    })
    .await;
    Ok(())
}

/// Deletes the pods and waits until they are gone (their processes stopped, their sandboxes removed).
async fn delete_pods(pods: &Api<Pod>, names: &[&str]) -> anyhow::Result<()> {
    for name in names {
        pods.delete(name, &DeleteParams { grace_period_seconds: Some(2), ..DeleteParams::default() }).await?;
    }
    for name in names {
        wait_for(&format!("pod {name} to be gone"), Duration::from_secs(30), || async {
            pods.get_opt(name).await.ok().flatten().is_none().then_some(())
        })
        .await;
    }
    Ok(())
}

/// The ClusterIP of the Service `default/kubernetes`.
async fn kubernetes_service_ip(client: &Client) -> anyhow::Result<String> {
    let service = Api::<Service>::namespaced(client.clone(), "default").get("kubernetes").await?;
    service.spec.and_then(|s| s.cluster_ip).ok_or_else(|| anyhow::anyhow!("the kubernetes Service has no ClusterIP"))
}

/// The HTTP status and the JSON body `API_CLIENT_SCRIPT` logged (the body between its first line and the status).
fn response(logs: &str) -> anyhow::Result<(&str, serde_json::Value)> {
    let (_, rest) = logs.split_once('\n').unwrap_or_default();
    let (body, status) =
        rest.rsplit_once("\nstatus ").ok_or_else(|| anyhow::anyhow!("no HTTP status in the output: {logs}"))?;
    Ok((status.trim(), serde_json::from_str(body)?))
}

/// Lists the pods of its own namespace from inside its network namespace, through the `kubernetes` Service, with
/// its service account token, and reports what it got.
const API_CLIENT_SCRIPT: &str = r#"d=/var/run/secrets/kubernetes.io/serviceaccount
echo "env $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT $KUBERNETES_SERVICE_PORT_HTTPS"
if [ ! -e "$d/token" ]; then echo "no token"; exit 0; fi
curl -sS --max-time 10 --cacert "$d/ca.crt" -H "Authorization: Bearer $(cat "$d/token")" \
  -w '\nstatus %{http_code}\n' "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/$(cat "$d/namespace")/pods"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_the_api_server_through_the_kubernetes_service_as_their_service_account() -> anyhow::Result<()> {
    let kubelet = kubelet().await;
    let cp = ControlPlane::shared();
    let client = cp.client();
    let ns = cp.namespace("kubelet-sa").await;
    // Each has its token Secret before a pod uses it (the ServiceAccount admission plugin refuses pods otherwise).
    for name in ["lister", "stranger"] {
        cp.service_account_token(&ns, name).await?;
    }
    grant_on_pods(cp, &client, &ns, "lister", "list").await?;
    // `lister` may list pods, `stranger` may not, `untokened` runs as `lister` without the token volume. `early`
    // mounts a token Secret that does not exist yet where the token goes, as a pod whose token Secret is late.
    let path = "/var/run/secrets/kubernetes.io/serviceaccount";
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for (name, account, automount) in [
        ("lister", "lister", true),
        ("stranger", "stranger", true),
        ("untokened", "lister", false),
        ("early", "lister", false),
    ] {
        let mut container =
            serde_json::json!({"name": "main", "image": "busybox", "command": ["sh", "-c", API_CLIENT_SCRIPT]});
        let mut volumes = serde_json::json!([]);
        if name == "early" {
            container["volumeMounts"] = serde_json::json!([{"name": "token", "mountPath": path}]);
            volumes = serde_json::json!([{"name": "token", "secret": {"secretName": "early-token"}}]);
        }
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "serviceAccountName": account,
                "automountServiceAccountToken": automount,
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 2,
                "containers": [container],
                "volumes": volumes,
            },
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }

    // The admission plugin added the token Secret's volume, mounted where clients look for it.
    let token_volume = |pod: &Pod| {
        let spec = pod.spec.clone().unwrap_or_default();
        let mount = spec.containers[0].volume_mounts.iter().flatten().find(|m| m.mount_path == path).cloned()?;
        let volume = spec.volumes.iter().flatten().find(|v| v.name == mount.name)?.clone();
        volume.secret?.secret_name
    };
    let lister = pods.get("lister").await?;
    let secret = token_volume(&lister).ok_or_else(|| anyhow::anyhow!("no token volume in {lister:?}"))?;
    assert!(secret.starts_with("lister-token-"), "the token Secret of lister: {secret}");
    assert_eq!(token_volume(&pods.get("untokened").await?), None, "automountServiceAccountToken: false");

    // Without its Secret a pod waits in ContainerCreating and starts nothing; once the Secret is there it runs.
    let waiting = wait_for("early to wait for its Secret", Duration::from_secs(30), || async {
        let pod = pods.get_opt("early").await.ok().flatten()?;
        let waiting = pod.status?.container_statuses?.into_iter().next()?.state?.waiting?;
        waiting.message.as_deref().is_some_and(|m| m.contains("\"early-token\" not found")).then_some(waiting)
    })
    .await;
    assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(kubelet.faults().pid(&ns, "early", "main"), None, "nothing started without the token");
    assert!(kubelet.faults().logs(&ns, "early", "main").unwrap_or_default().is_empty());
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let mut token = secrets.get(&secret).await?;
    token.metadata = kube::api::ObjectMeta { name: Some("early-token".to_owned()), ..Default::default() };
    token.type_ = Some("Opaque".to_owned());
    secrets.create(&PostParams::default(), &token).await?;

    let cluster_ip = kubernetes_service_ip(&client).await?;
    // The API server's serving certificate names the Service, as clients in pods address it.
    let san = tokio::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(cp.ca_cert_path())
        .output()
        .await?;
    let san = String::from_utf8_lossy(&san.stdout);
    for name in [format!("IP Address:{cluster_ip}"), "DNS:kubernetes.default.svc".to_owned()] {
        assert!(san.contains(&name), "{name} in the serving certificate: {san}");
    }
    let mut outputs = BTreeMap::new();
    for name in ["lister", "stranger", "untokened", "early"] {
        let logs = wait_for(&format!("the output of {name}"), Duration::from_mins(1), || async {
            kubelet.faults().logs(&ns, name, "main").ok().filter(|l| l.contains("status ") || l.contains("no token"))
        })
        .await;
        assert_eq!(log_line(&logs, "env "), Some(format!("{cluster_ip} 443 443").as_str()), "{name}: {logs}");
        outputs.insert(name, logs);
    }

    // TLS verified against the token's ca.crt (the certificate names the ClusterIP), the token authenticated.
    let (status, body) = response(&outputs["lister"])?;
    assert_eq!(status, "200", "{body}");
    let names: Vec<&str> =
        body["items"].as_array().into_iter().flatten().filter_map(|p| p["metadata"]["name"].as_str()).collect();
    assert!(names.contains(&"lister"), "lister lists its own pod: {names:?}");

    // The same request with another pod's token is that pod's identity, which has no Role.
    let (status, body) = response(&outputs["stranger"])?;
    assert_eq!(status, "403", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("User \"system:serviceaccount:{ns}:stranger\" cannot list resource \"pods\"")),
        "{body}"
    );
    assert!(outputs["untokened"].contains("no token"), "{}", outputs["untokened"]);
    let (status, body) = response(&outputs["early"])?;
    assert_eq!(status, "200", "early runs with the token once it is there: {body}");

    delete_pods(&pods, &["lister", "stranger", "untokened", "early"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_discovers_pods_with_in_cluster_kubernetes_sd() -> anyhow::Result<()> {
    kubelet().await;
    let cp = ControlPlane::shared();
    let client = cp.client();
    let ns = cp.namespace("kubelet-sd").await;
    cp.service_account_token(&ns, "prometheus").await?;
    grant_on_pods(cp, &client, &ns, "prometheus", "list, watch, get").await?;
    let config: ConfigMap = from_yaml(
        r"
apiVersion: v1
kind: ConfigMap
metadata: {name: prometheus}
data:
  prometheus.yml: |
    global: {scrape_interval: 1s}
    scrape_configs:
    - job_name: pods
      kubernetes_sd_configs: [{role: pod, namespaces: {own_namespace: true}}]
",
    );
    Api::<ConfigMap>::namespaced(client.clone(), &ns).create(&PostParams::default(), &config).await?;
    let pod: Pod = from_yaml(
        r"
apiVersion: v1
kind: Pod
metadata: {name: prom}
spec:
  serviceAccountName: prometheus
  terminationGracePeriodSeconds: 5
  containers:
  - name: prometheus
    image: quay.io/prometheus/prometheus:v3.5.0
    args: [--config.file=/etc/prometheus/config/prometheus.yml]
    ports: [{name: web, containerPort: 9090}]
    readinessProbe:
      httpGet: {path: /-/ready, port: web}
      periodSeconds: 1
    volumeMounts: [{name: config, mountPath: /etc/prometheus/config}]
  volumes: [{name: config, configMap: {name: prometheus}}]
",
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod).await?;
    let ip = pod_ip(&ready_pod(&pods, "prom", Duration::from_mins(1)).await)
        .ok_or_else(|| anyhow::anyhow!("the pod has no IP"))?;
    // Found through the API server (its own pod, port 9090), then scraped.
    let target = wait_for("Prometheus to discover and scrape its own pod", Duration::from_secs(30), || async {
        let (_, body) = get(ip, "/api/v1/targets").await?;
        let body: serde_json::Value = serde_json::from_str(&body).ok()?;
        body["data"]["activeTargets"]
            .as_array()?
            .iter()
            .find(|t| t["discoveredLabels"]["__meta_kubernetes_pod_name"] == "prom" && t["health"] == "up")
            .cloned()
    })
    .await;
    assert_eq!(target["discoveredLabels"]["__address__"], format!("{ip}:9090"), "{target}");
    assert_eq!(target["discoveredLabels"]["__meta_kubernetes_namespace"], ns.as_str(), "{target}");
    delete_pods(&pods, &["prom"]).await
}
