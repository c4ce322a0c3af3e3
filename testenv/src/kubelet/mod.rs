//! A process kubelet: plays the kubelet of N nodes against a real control plane and runs pods as local
//! processes in their own network and mount namespaces. Does I/O (it is all I/O).
//!
//! ```text
//!                 kube-apiserver (real)                           host (root)
//!   Node + Lease  <-- node.rs: register, heartbeat every 10 s
//!   PV            <-- pv.rs: one PV per pending PVC (dir under state/pv)
//!   CM, Secret    --> cache.rs: watched, in memory ----------+
//!   Pod (watch)   --> mod.rs: dispatch by UID                 |
//!                       `-> pod.rs: one worker per pod        v
//!                            network.rs  bridge tsdbbrI 10.213.I.1/24, netns tsdb-I-S + veth per pod
//!                            service.rs  Service kubernetes: ClusterIP:443 in each netns -> the API server
//!                            volumes.rs  ConfigMap/Secret/downwardAPI/projected (atomic ..data), emptyDir, PVC
//!                            runtime.rs  ip netns exec + private mount ns + bind mounts, exec the program
//!                                        (an unpacked image: inside its root filesystem, as its user)
//!                            images.rs   image -> local program (Prometheus 2/3, tsdb-operator, host tools)
//!                                        or an unpacked image (root filesystem, entrypoint, user)
//!                            env.rs      env, envFrom, fieldRef, $(VAR) expansion
//!                            probes.rs   startup / readiness / liveness from the host to the pod IP
//!   Pod status    <-- status.rs: phase, IPs, conditions, containerStatuses (status subresource)
//!                     faults.rs: freeze / thaw / kill containers, cut pods off the network
//! ```
//!
//! The kubelet runs on its own thread with its own Tokio runtime and its own API client, so one instance can
//! serve many `#[tokio::test]`s (each with its own runtime) in a test binary. A watchdog process kills
//! everything it started and removes its network if the owning process dies without shutting it down.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tsdb_operator_testenv::kubelet::Error> {
//! use tsdb_operator_testenv::kubelet::Kubelet;
//! let kubelet = Kubelet::builder(std::path::PathBuf::from("/tmp/kubeconfig")).nodes(3).start().await?;
//! kubelet.faults().freeze("default", "web-0", "prometheus")?;
//! kubelet.shutdown().await;
//! # Ok(()) }
//! ```

mod cache;
mod env;
mod events;
mod faults;
mod images;
mod network;
mod node;
mod pod;
mod probes;
mod pv;
mod runtime;
mod service;
mod status;
mod volumes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use env::expand;
pub use faults::Faults;
pub use images::{ImageMap, ImageProgram};
pub use node::Allocatable;
pub use probes::{HttpResponse, http_get};
pub use pv::PROVISIONER;
pub use runtime::process_alive;

/// Errors of the process kubelet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building the API client failed.
    #[error("failed to build the kubernetes client")]
    Client(#[source] kube::Error),
    /// Reading the kubeconfig failed.
    #[error("failed to load kubeconfig {path}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// An API call failed.
    #[error("failed to {action} {object}")]
    Api {
        /// What was done.
        action: &'static str,
        /// On what.
        object: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// A command exited with an error.
    #[error("failed to run `{command}`: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr.
        stderr: String,
    },
    /// A command could not be started.
    #[error("failed to start `{command}`")]
    Spawn {
        /// The command.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file operation failed.
    #[error("failed to {action} {path}")]
    Io {
        /// What was done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Every subnet index is claimed (or the requested one is).
    #[error("failed to claim a pod subnet (requested index {requested:?}): all are claimed by live kubelets")]
    NoFreeSubnet {
        /// The index asked for, if any.
        requested: Option<u8>,
    },
    /// All 253 pod IPs of the subnet are in use.
    #[error("failed to allocate a pod IP in 10.213.{index}.0/24: all in use")]
    NoFreePodIp {
        /// The subnet index.
        index: u8,
    },
    /// The pod does not run on this kubelet.
    #[error("failed to find pod {namespace}/{name} on this kubelet")]
    UnknownPod {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The container has no running process.
    #[error("failed to find a running process for container {container} of pod {namespace}/{name}")]
    ContainerNotRunning {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// Container name.
        container: String,
    },
    /// The pod uses the host network: it has no veth to cut.
    #[error("failed to cut pod {namespace}/{name} off the network: it uses the host network")]
    HostNetwork {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Sending a signal failed.
    #[error("failed to send {signal} to process group {pgid}")]
    Signal {
        /// The process group.
        pgid: u32,
        /// The signal.
        signal: &'static str,
    },
    /// The listener of the `kubernetes` Service could not be opened in a pod's network namespace.
    #[error("failed to listen on {address} in network namespace {netns} (the kubernetes Service)")]
    ServiceListener {
        /// The network namespace.
        netns: String,
        /// The Service's ClusterIP and port.
        address: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kubelet thread or runtime could not start, or stopped before it was ready.
    #[error("failed to start the kubelet thread")]
    Thread(#[source] Option<std::io::Error>),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the kubelet gets its API client from (it builds its own, on its own runtime).
#[derive(Debug, Clone)]
pub enum ClientSource {
    /// A client configuration.
    Config(Box<kube::Config>),
    /// A kubeconfig file.
    Kubeconfig(PathBuf),
}

impl From<kube::Config> for ClientSource {
    fn from(config: kube::Config) -> Self {
        Self::Config(Box::new(config))
    }
}

impl From<PathBuf> for ClientSource {
    fn from(path: PathBuf) -> Self {
        Self::Kubeconfig(path)
    }
}

impl From<&Path> for ClientSource {
    fn from(path: &Path) -> Self {
        Self::Kubeconfig(path.to_owned())
    }
}

/// Entry point: [`Kubelet::builder`].
#[derive(Debug)]
pub struct Kubelet;

impl Kubelet {
    /// A builder with the defaults: 3 nodes `tsdb-node-0..2`, a temporary state dir, the first free subnet,
    /// the default image map, back-off 10 s doubling to 5 min, heartbeats every 10 s.
    pub fn builder(source: impl Into<ClientSource>) -> KubeletBuilder {
        KubeletBuilder {
            source: source.into(),
            nodes: 3,
            node_prefix: "tsdb-node".to_owned(),
            state_dir: None,
            subnet_index: None,
            images: ImageMap::with_defaults(),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_mins(5),
            heartbeat: Duration::from_secs(10),
            allocatable: Allocatable::default(),
            shutdown_grace: Duration::from_secs(5),
            delete_nodes_on_shutdown: true,
        }
    }
}

/// Configures and starts a kubelet.
#[derive(Debug, Clone)]
pub struct KubeletBuilder {
    source: ClientSource,
    nodes: usize,
    node_prefix: String,
    state_dir: Option<PathBuf>,
    subnet_index: Option<u8>,
    images: ImageMap,
    backoff_base: Duration,
    backoff_max: Duration,
    heartbeat: Duration,
    allocatable: Allocatable,
    shutdown_grace: Duration,
    delete_nodes_on_shutdown: bool,
}

impl KubeletBuilder {
    /// Number of nodes.
    #[must_use]
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// Node names are `{prefix}-{i}`.
    #[must_use]
    pub fn node_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.node_prefix);
        self
    }

    /// Where PV directories, pod volumes and logs live (default: a temporary directory removed at shutdown).
    #[must_use]
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// The pod subnet `10.213.{index}.0/24` and bridge `tsdbbr{index}` (default: the first free index).
    #[must_use]
    pub fn subnet_index(mut self, index: u8) -> Self {
        self.subnet_index = Some(index);
        self
    }

    /// Maps images starting with `prefix` to a program; wins over the defaults.
    #[must_use]
    pub fn map_image(mut self, prefix: &str, program: ImageProgram) -> Self {
        self.images.map_image(prefix, program);
        self
    }

    /// The binary run for images whose repository ends in `tsdb-operator` (e.g. `target/debug/tsdb-operator`).
    #[must_use]
    pub fn operator_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.images.set_operator_binary(path.into());
        self
    }

    /// The Prometheus binary for images tagged `v{major}.*`.
    #[must_use]
    pub fn prometheus_binary(mut self, major: u8, path: impl Into<PathBuf>) -> Self {
        self.images.set_prometheus(major, path.into());
        self
    }

    /// Restart back-off: first restart immediate, then `base`, doubling up to `max` (kubelet: 10 s, 5 min).
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// Interval of lease renewals and node status updates.
    #[must_use]
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Capacity reported by each node.
    #[must_use]
    pub fn allocatable(mut self, allocatable: Allocatable) -> Self {
        self.allocatable = allocatable;
        self
    }

    /// Grace period of containers when the kubelet shuts down.
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Whether shutdown deletes the Node objects (default true; their pods are then garbage-collected).
    #[must_use]
    pub fn delete_nodes_on_shutdown(mut self, delete: bool) -> Self {
        self.delete_nodes_on_shutdown = delete;
        self
    }

    /// Starts the kubelet on its own thread; returns once the nodes are registered.
    pub async fn start(self) -> Result<KubeletHandle> {
        // kube is built with `ring`; when another dependency also enables `aws-lc-rs`, rustls cannot pick a
        // provider by itself. Installing one is a no-op if the process already did.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("process-kubelet".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
                match runtime {
                    Ok(runtime) => runtime.block_on(run(self, ready_tx, stop_rx)),
                    Err(err) => {
                        let _ = ready_tx.send(Err(Error::Thread(Some(err))));
                    }
                }
                let _ = done_tx.send(());
            })
            .map_err(|err| Error::Thread(Some(err)))?;
        let ready = ready_rx.await.map_err(|_| Error::Thread(None))??;
        Ok(KubeletHandle { ready, stop: stop_tx, done: Some(done_rx), thread: Some(thread) })
    }
}

/// What a started kubelet reports back.
#[derive(Debug, Clone)]
struct Ready {
    faults: Faults,
    nodes: Vec<String>,
    state_dir: PathBuf,
    subnet_index: u8,
    images: Arc<std::sync::RwLock<ImageMap>>,
}

/// A running kubelet. Dropping it stops the kubelet in the background; [`KubeletHandle::shutdown`] waits.
#[derive(Debug)]
pub struct KubeletHandle {
    ready: Ready,
    stop: watch::Sender<bool>,
    done: Option<oneshot::Receiver<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KubeletHandle {
    /// Fault injection and inspection of running pods.
    pub fn faults(&self) -> &Faults {
        &self.ready.faults
    }

    /// The node names.
    pub fn nodes(&self) -> &[String] {
        &self.ready.nodes
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.ready.state_dir
    }

    /// The pod subnet index (`10.213.{index}.0/24`).
    pub fn subnet_index(&self) -> u8 {
        self.ready.subnet_index
    }

    /// Maps images starting with `prefix` to a program from now on, winning over every earlier mapping (for
    /// images built while the tests run, e.g. an [`ImageProgram::unpacked`] one). Containers already running keep
    /// what they run.
    pub fn map_image(&self, prefix: &str, program: ImageProgram) {
        let mut images = self.ready.images.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        images.map_image_first(prefix, program);
    }

    /// Stops all pods (without deleting them), removes the network, and waits until done.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for KubeletHandle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Shared by all tasks of one kubelet.
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) images: Arc<std::sync::RwLock<ImageMap>>,
    pub(crate) network: network::Network,
    pub(crate) cache: Arc<cache::ObjectCache>,
    pub(crate) registry: Arc<faults::Registry>,
    pub(crate) state_dir: PathBuf,
    pub(crate) apiserver: Option<(String, u16)>,
    /// The `kubernetes` Service emulated in pod network namespaces (`None` if it could not be read).
    pub(crate) kubernetes_service: Option<service::KubernetesService>,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) shutdown_grace: Duration,
}

async fn client(source: &ClientSource) -> Result<(Client, Option<(String, u16)>)> {
    let config = match source {
        ClientSource::Config(config) => (**config).clone(),
        ClientSource::Kubeconfig(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|source| Error::Kubeconfig { path: path.clone(), source })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig { path: path.clone(), source })?
        }
    };
    let apiserver = config.cluster_url.host().map(|h| (h.to_owned(), config.cluster_url.port_u16().unwrap_or(443)));
    let client = Client::try_from(config).map_err(Error::Client)?;
    Ok((client, apiserver))
}

async fn run(builder: KubeletBuilder, ready: oneshot::Sender<Result<Ready>>, stop: watch::Receiver<bool>) {
    let (client, apiserver) = match client(&builder.source).await {
        Ok(client) => client,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let network = match network::Network::setup(builder.subnet_index).await {
        Ok(network) => network,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let index = network.index();
    let (state_dir, temporary) = match &builder.state_dir {
        Some(dir) => (dir.clone(), false),
        None => (std::env::temp_dir().join(format!("tsdb-process-kubelet-{index}-{}", std::process::id())), true),
    };
    let _ = std::fs::create_dir_all(runtime::pgid_dir(index));
    let mut watchdog = match std::fs::create_dir_all(&state_dir)
        .map_err(|source| Error::Io { action: "create", path: state_dir.clone(), source })
        .and_then(|()| runtime::spawn_watchdog(index, temporary.then_some(state_dir.as_path())))
    {
        Ok(watchdog) => watchdog,
        Err(err) => {
            network.teardown().await;
            let _ = ready.send(Err(err));
            return;
        }
    };
    let nodes: Vec<String> = (0..builder.nodes).map(|i| format!("{}-{i}", builder.node_prefix)).collect();
    let address = network.gateway().to_string();
    let since = match node::register(&client, &nodes, &address, &builder.allocatable).await {
        Ok(since) => since,
        Err(err) => {
            network.teardown().await;
            let _ = watchdog.kill();
            let _ = watchdog.wait();
            let _ = ready.send(Err(err));
            return;
        }
    };
    let kubernetes_service = service::KubernetesService::discover(&client, apiserver.clone()).await;
    let registry = Arc::new(faults::Registry::default());
    let images = Arc::new(std::sync::RwLock::new(builder.images.clone()));
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        images: Arc::clone(&images),
        network,
        cache: cache::ObjectCache::start(&client),
        registry: Arc::clone(&registry),
        state_dir: state_dir.clone(),
        apiserver,
        kubernetes_service,
        backoff_base: builder.backoff_base,
        backoff_max: builder.backoff_max,
        shutdown_grace: builder.shutdown_grace,
    });
    let background = [
        tokio::spawn(node::heartbeat_loop(
            client.clone(),
            nodes.clone(),
            address,
            builder.allocatable.clone(),
            since,
            builder.heartbeat,
        )),
        tokio::spawn(pv::run_provisioner(client.clone(), state_dir.clone(), nodes.clone())),
        tokio::spawn(pv::run_reclaimer(client.clone(), state_dir.clone())),
        tokio::spawn(pv::run_resizer(client.clone())),
    ];
    tracing::info!(?nodes, subnet = %format!("10.213.{index}.0/24"), state_dir = %state_dir.display(), "process kubelet ready");
    let _ = ready.send(Ok(Ready {
        faults: Faults { registry },
        nodes: nodes.clone(),
        state_dir: state_dir.clone(),
        subnet_index: index,
        images,
    }));
    let workers = dispatch_pods(&ctx, &nodes, stop).await;
    // Shutdown: every worker stops its containers; then the rest goes.
    let _ = tokio::time::timeout(builder.shutdown_grace + Duration::from_secs(10), futures::future::join_all(workers))
        .await;
    for task in background {
        task.abort();
    }
    if builder.delete_nodes_on_shutdown {
        node::deregister(&client, &nodes).await;
    }
    ctx.network.teardown().await;
    let _ = watchdog.kill();
    let _ = watchdog.wait();
    let _ = std::fs::remove_dir_all(runtime::pgid_dir(index));
    if temporary {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    tracing::info!("process kubelet stopped");
}

struct Worker {
    pod: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// Watches pods and runs one worker per pod bound to our nodes, until `stop`; returns the workers' tasks
/// (told to shut down).
async fn dispatch_pods(ctx: &Arc<Ctx>, nodes: &[String], mut stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let mut stream = watcher::watcher(pods, watcher::Config::default()).default_backoff().boxed();
    let mut workers: BTreeMap<String, Worker> = BTreeMap::new();
    let mut listed: Option<BTreeSet<String>> = None;
    let mut reap = tokio::time::interval(Duration::from_secs(1));
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = stop.wait_for(|s| *s) => break,
            _ = reap.tick() => {
                workers.retain(|_, w| !w.task.is_finished());
                continue;
            }
        };
        let Some(event) = event else { break };
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                tracing::debug!(error = %err, "pod watch error");
                continue;
            }
        };
        match event {
            Event::Init => listed = Some(BTreeSet::new()),
            Event::InitApply(pod) => {
                if let Some(listed) = listed.as_mut() {
                    listed.insert(pod.uid().unwrap_or_default());
                }
                handle_pod(ctx, nodes, &mut workers, &shutdown_rx, pod).await;
            }
            Event::InitDone => {
                let listed = listed.take().unwrap_or_default();
                for (uid, worker) in &workers {
                    if !listed.contains(uid) {
                        worker.pod.send_replace(None);
                    }
                }
            }
            Event::Apply(pod) => handle_pod(ctx, nodes, &mut workers, &shutdown_rx, pod).await,
            Event::Delete(pod) => {
                if let Some(worker) = workers.get(&pod.uid().unwrap_or_default()) {
                    worker.pod.send_replace(None);
                }
            }
        }
    }
    shutdown_tx.send_replace(true);
    workers.into_values().map(|w| w.task).collect()
}

async fn handle_pod(
    ctx: &Arc<Ctx>,
    nodes: &[String],
    workers: &mut BTreeMap<String, Worker>,
    shutdown: &watch::Receiver<bool>,
    pod: Pod,
) {
    let uid = pod.uid().unwrap_or_default();
    if let Some(worker) = workers.get(&uid) {
        worker.pod.send_replace(Some(pod));
        return;
    }
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    if !nodes.contains(&node) {
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let terminal = matches!(phase, Some("Succeeded" | "Failed"));
    if pod.metadata.deletion_timestamp.is_some() || terminal {
        if pod.metadata.deletion_timestamp.is_some() {
            // Nothing of it runs here: finish the deletion.
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(kube::api::Preconditions { uid: Some(uid), resource_version: None }),
                ..DeleteParams::default()
            };
            let _ = api.delete(&pod.name_any(), &params).await;
        }
        return;
    }
    let (tx, rx) = watch::channel(Some(pod));
    let task = tokio::spawn(pod::run_pod(Arc::clone(ctx), rx, shutdown.clone()));
    workers.insert(uid, Worker { pod: tx, task });
}
