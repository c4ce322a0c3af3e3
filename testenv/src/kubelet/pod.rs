//! The pod worker: one task per pod bound to a node of this kubelet, from sandbox creation to the final delete.
//! Does I/O.
//!
//! # Flow
//! 1. Create the network sandbox (skipped for `hostNetwork`), write `Pending` with podIP, hostIP, startTime.
//! 2. Materialize volumes (retried while a ConfigMap, Secret or PVC is missing; containers wait in
//!    `ContainerCreating` with the reason as message).
//! 3. Run init containers one after another to success, then all containers side by side, each under a
//!    supervisor that starts the process, runs its probes, records its state and restarts it per
//!    `restartPolicy` with exponential back-off (`CrashLoopBackOff`).
//! 4. Meanwhile, ConfigMap/Secret changes and pod changes rewrite the atomically written volumes.
//! 5. On `deletionTimestamp`: SIGTERM to every container, SIGKILL after `deletionGracePeriodSeconds` (at least
//!    2 s, as the kubelet), write the final status, delete the pod with grace period 0, remove the sandbox. A pod
//!    that vanished (force deletion) is killed the same way; on kubelet shutdown pods are stopped but not deleted.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use nix::sys::signal::Signal;
use tokio::sync::{Notify, watch};

use super::Ctx;
use super::env::{PodFacts, build_env, expand};
use super::events::{self, Subject, Type};
use super::faults::PodEntry;
use super::network::Sandbox;
use super::probes::{ProbeEvent, ProbeTarget, drive};
use super::runtime::{self, LaunchSpec};
use super::status::{ContainerRecord, PodState, State, Terminated};
use super::volumes::{self, PreparedVolume};

/// The kubelet's minimum grace period when killing containers.
const MIN_GRACE: Duration = Duration::from_secs(2);
/// Running this long resets the restart back-off.
const BACKOFF_RESET: Duration = Duration::from_mins(10);

/// Why the pod's containers are stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// `deletionTimestamp` set: stop, then delete the pod object.
    Deleted,
    /// The pod object is gone.
    Vanished,
    /// The kubelet shuts down.
    Shutdown,
}

/// Which container of the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Init(usize),
    Main(usize),
}

struct PodRun {
    ctx: Arc<Ctx>,
    namespace: String,
    name: String,
    uid: String,
    pod: watch::Receiver<Option<Pod>>,
    state: Mutex<PodState>,
    dirty: Notify,
    dir: PathBuf,
    facts: PodFacts,
    pod_ip: IpAddr,
    netns: Option<String>,
    volumes: Mutex<BTreeMap<String, PreparedVolume>>,
    subject: Subject,
    /// `Some(grace)` once containers must stop.
    stop: watch::Sender<Option<Duration>>,
    last_written: Mutex<Option<serde_json::Value>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PodRun {
    /// Sets up the run of a pod and registers it.
    fn new(ctx: &Arc<Ctx>, pod: &Pod, pod_rx: watch::Receiver<Option<Pod>>, sandbox: Option<&Sandbox>) -> Arc<Self> {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network == Some(true);
        let host_ip = ctx.network.gateway();
        let pod_ip: IpAddr = sandbox.as_ref().map_or(host_ip, |s| s.ip).into();
        let dir = ctx.state_dir.join("pods").join(&uid);
        let hostname = if host_network { gethostname() } else { spec.hostname.clone().unwrap_or_else(|| name.clone()) };
        // Pods in their own network namespace reach the API server through the `kubernetes` Service, hostNetwork
        // pods at its real address.
        let apiserver = match sandbox.and_then(|s| s.kubernetes_service) {
            Some((ip, port)) => Some((ip.to_string(), port)),
            None => ctx.apiserver.clone(),
        };
        let facts = PodFacts { pod_ip: pod_ip.to_string(), host_ip: host_ip.to_string(), hostname, apiserver };
        let state = initial_state(&spec, host_ip.to_string(), pod_ip.to_string());
        ctx.registry.insert(
            &namespace,
            &name,
            PodEntry {
                uid: uid.clone(),
                ip: pod_ip,
                veth_host: sandbox.as_ref().map(|s| s.veth_host.clone()),
                link: sandbox.as_ref().map(|s| Arc::clone(&s.link)),
                containers: BTreeMap::new(),
                dir: dir.clone(),
            },
        );
        Arc::new(PodRun {
            ctx: Arc::clone(ctx),
            namespace,
            name,
            uid,
            pod: pod_rx,
            state: Mutex::new(state),
            dirty: Notify::new(),
            dir,
            facts,
            pod_ip,
            netns: sandbox.as_ref().map(|s| s.netns.clone()),
            volumes: Mutex::new(BTreeMap::new()),
            subject: Subject {
                namespace: pod.namespace().unwrap_or_default(),
                name: pod.name_any(),
                uid: pod.uid().unwrap_or_default(),
                node: spec.node_name.clone().unwrap_or_default(),
            },
            stop: watch::channel(None).0,
            last_written: Mutex::new(None),
        })
    }

    fn snapshot(&self) -> Pod {
        self.pod.borrow().clone().unwrap_or_default()
    }

    fn update(&self, slot: Slot, change: impl FnOnce(&mut ContainerRecord)) {
        {
            let mut state = lock(&self.state);
            let record = match slot {
                Slot::Init(i) => state.init.get_mut(i),
                Slot::Main(i) => state.main.get_mut(i),
            };
            if let Some(record) = record {
                change(record);
            }
        }
        self.dirty.notify_one();
    }

    fn set_waiting_all(&self, reason: &str, message: Option<&str>) {
        {
            let mut guard = lock(&self.state);
            let state = &mut *guard;
            for record in state.init.iter_mut().chain(state.main.iter_mut()) {
                if matches!(record.state, State::Waiting { .. }) {
                    record.state = State::Waiting { reason: reason.to_owned(), message: message.map(str::to_owned) };
                }
            }
        }
        self.dirty.notify_one();
    }

    fn event(&self, container: Option<&str>, kind: Type, reason: &str, message: &str) {
        events::emit(&self.ctx.client, &self.subject, container, kind, reason, message);
    }

    fn stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Writes the status if it changed since the last write.
    async fn write_status(&self) {
        let scheduled = self
            .pod
            .borrow()
            .as_ref()
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled").cloned());
        let status = lock(&self.state).build_status(scheduled, Timestamp::now());
        let value = serde_json::json!({ "status": status });
        if lock(&self.last_written).as_ref() == Some(&value) {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        match pods.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&value)).await {
            Ok(_) => *lock(&self.last_written) = Some(value),
            Err(err) => tracing::debug!(pod = %self.name, error = %err, "status write failed"),
        }
    }

    async fn status_writer(self: Arc<Self>) {
        loop {
            self.dirty.notified().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.write_status().await;
        }
    }
}

/// Runs a pod until it is deleted, vanishes or the kubelet shuts down.
pub(crate) async fn run_pod(
    ctx: Arc<Ctx>,
    mut pod_rx: watch::Receiver<Option<Pod>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(pod) = pod_rx.borrow_and_update().clone() else {
        return;
    };
    let name = pod.name_any();
    let sandbox = if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        None
    } else {
        let Some(sandbox) = create_sandbox(&ctx, &name, &mut shutdown).await else {
            return;
        };
        Some(sandbox)
    };
    let run = PodRun::new(&ctx, &pod, pod_rx.clone(), sandbox.as_ref());
    run.write_status().await;
    let writer = tokio::spawn(Arc::clone(&run).status_writer());
    let mut lifecycle = tokio::spawn(Arc::clone(&run).lifecycle());
    let mut changes = ctx.cache.subscribe();
    let mut lifecycle_done = false;
    let reason = loop {
        tokio::select! {
            result = &mut lifecycle, if !lifecycle_done => {
                lifecycle_done = true;
                if let Err(err) = result {
                    tracing::warn!(pod = %run.name, error = %err, "pod lifecycle task failed");
                }
            }
            result = pod_rx.changed() => {
                let current = pod_rx.borrow_and_update().clone();
                match (result, current) {
                    (Ok(()), Some(pod)) if pod.metadata.deletion_timestamp.is_some() => break StopReason::Deleted,
                    (Ok(()), Some(pod)) => {
                        volumes::refresh(&pod, ctx.cache.as_ref(), &run.facts, &run.dir);
                    }
                    _ => break StopReason::Vanished,
                }
            }
            change = changes.recv() => {
                if let Ok((kind, namespace, name)) = change {
                    let pod = run.snapshot();
                    if namespace == run.namespace && volumes::refers_to(&pod, kind, &name) {
                        let updated = volumes::refresh(&pod, ctx.cache.as_ref(), &run.facts, &run.dir);
                        if !updated.is_empty() {
                            tracing::info!(pod = %run.name, volumes = ?updated, "updated volumes");
                        }
                    }
                }
            }
            _ = shutdown.changed() => break StopReason::Shutdown,
        }
    };
    let grace = grace_for(reason, &run.snapshot(), &ctx);
    tracing::info!(pod = %run.name, ?reason, ?grace, "stopping pod");
    run.stop.send_replace(Some(grace));
    if !lifecycle_done {
        let _ = lifecycle.await;
    }
    writer.abort();
    if reason == StopReason::Deleted {
        run.write_status().await;
        finish_deletion(&ctx, &run).await;
    }
    teardown(&ctx, &run, sandbox).await;
}

async fn teardown(ctx: &Ctx, run: &PodRun, sandbox: Option<Sandbox>) {
    if let Some(sandbox) = sandbox {
        ctx.network.remove_sandbox(sandbox).await;
    }
    ctx.registry.remove(&run.namespace, &run.name, &run.uid);
    let _ = std::fs::remove_dir_all(&run.dir);
}

/// Creates the pod's network sandbox, retrying every 2 s; `None` if the kubelet shuts down meanwhile.
async fn create_sandbox(ctx: &Ctx, name: &str, shutdown: &mut watch::Receiver<bool>) -> Option<Sandbox> {
    loop {
        match ctx.network.create_sandbox(ctx.kubernetes_service.as_ref()).await {
            Ok(sandbox) => return Some(sandbox),
            Err(err) => {
                tracing::warn!(pod = %name, error = %err, "cannot create pod sandbox");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = shutdown.changed() => return None,
                }
            }
        }
    }
}

/// The state of a pod before anything ran.
fn initial_state(spec: &k8s_openapi::api::core::v1::PodSpec, host_ip: String, pod_ip: String) -> PodState {
    let has_init = !spec.init_containers.as_deref().unwrap_or_default().is_empty();
    PodState {
        host_ip,
        pod_ip: Some(pod_ip),
        start_time: Timestamp::now(),
        init: spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| ContainerRecord::new(&c.name, image_of(c), "PodInitializing"))
            .collect(),
        main: spec
            .containers
            .iter()
            .map(|c| {
                ContainerRecord::new(
                    &c.name,
                    image_of(c),
                    if has_init { "PodInitializing" } else { "ContainerCreating" },
                )
            })
            .collect(),
        restart_policy: spec.restart_policy.clone().unwrap_or_else(|| "Always".to_owned()),
        qos_class: super::status::qos_class(spec),
        transitions: BTreeMap::new(),
    }
}

/// Grace period for stopping the pod's containers.
fn grace_for(reason: StopReason, pod: &Pod, ctx: &Ctx) -> Duration {
    match reason {
        StopReason::Shutdown => ctx.shutdown_grace,
        _ => Duration::from_secs(
            pod.metadata
                .deletion_grace_period_seconds
                .or(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(30),
        )
        .max(MIN_GRACE),
    }
}

/// Deletes the pod object with grace period 0 (only this pod: UID precondition).
async fn finish_deletion(ctx: &Ctx, run: &PodRun) {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &run.namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: Some(run.uid.clone()), resource_version: None }),
        ..DeleteParams::default()
    };
    if let Err(err) = pods.delete(&run.name, &params).await {
        tracing::debug!(pod = %run.name, error = %err, "final delete failed");
    }
}

fn gethostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// How a container of an unpacked image runs: as the securityContext's user and group (the container's, then the
/// pod's, then the image's `USER`), on a read-only root when asked; `runAsNonRoot` refuses root as the kubelet does.
fn run_as(
    pod: &Pod,
    container: &Container,
    rootfs: &std::path::Path,
    user: (u32, u32),
) -> Result<runtime::Root, String> {
    let own = container.security_context.as_ref();
    let shared = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let id = |value: Option<i64>, default: u32| {
        value.map_or(Ok(default), |v| u32::try_from(v).map_err(|_| format!("invalid id {v}")))
    };
    let uid = id(own.and_then(|c| c.run_as_user).or_else(|| shared.and_then(|p| p.run_as_user)), user.0)?;
    let gid = id(own.and_then(|c| c.run_as_group).or_else(|| shared.and_then(|p| p.run_as_group)), user.1)?;
    let non_root = own.and_then(|c| c.run_as_non_root).or_else(|| shared.and_then(|p| p.run_as_non_root));
    if non_root == Some(true) && uid == 0 {
        return Err("container has runAsNonRoot and image will run as root".to_owned());
    }
    let read_only = own.and_then(|c| c.read_only_root_filesystem) == Some(true);
    Ok(runtime::Root { rootfs: rootfs.to_path_buf(), uid, gid, read_only })
}

fn image_of(container: &Container) -> &str {
    container.image.as_deref().unwrap_or_default()
}

impl PodRun {
    async fn lifecycle(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        self.ctx.cache.wait_synced().await;
        let mut last_mount_error: Option<String> = None;
        loop {
            let pod = self.snapshot();
            match volumes::prepare(&self.ctx.client, &pod, self.ctx.cache.as_ref(), &self.facts, &self.dir).await {
                Ok(prepared) => {
                    *lock(&self.volumes) = prepared;
                    break;
                }
                Err(message) => {
                    tracing::debug!(pod = %self.name, %message, "volumes not ready");
                    if last_mount_error.as_ref() != Some(&message) {
                        self.event(None, Type::Warning, "FailedMount", &message);
                        last_mount_error = Some(message.clone());
                    }
                    self.set_waiting_all("ContainerCreating", Some(&format!("MountVolume: {message}")));
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
            if self.stopping() {
                return;
            }
        }
        self.set_waiting_all("ContainerCreating", None);
        let spec = self.snapshot().spec.unwrap_or_default();
        for (i, container) in spec.init_containers.iter().flatten().enumerate() {
            match Arc::clone(&self).supervise(Slot::Init(i), container.clone()).await {
                Some(0) => {}
                _ => return,
            }
        }
        let mains =
            spec.containers.iter().enumerate().map(|(i, c)| Arc::clone(&self).supervise(Slot::Main(i), c.clone()));
        futures::future::join_all(mains).await;
    }

    /// Runs one container until it is done for good (its last exit code) or the pod stops (`None`).
    async fn supervise(self: Arc<Self>, slot: Slot, container: Container) -> Option<i32> {
        let mut stop = self.stop.subscribe();
        let mut backoff = self.ctx.backoff_base;
        let mut failures_since_reset = 0u32;
        loop {
            if self.stopping() {
                return None;
            }
            let exit = match self.start_and_wait(slot, &container, &mut stop).await {
                Run::Stopped => return None,
                Run::Waiting => {
                    let _ = stop.wait_for(Option::is_some).await;
                    return None;
                }
                Run::Retry => {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.wait_for(Option::is_some) => return None,
                    }
                }
                Run::Exited { code, ran } => {
                    if ran >= BACKOFF_RESET {
                        backoff = self.ctx.backoff_base;
                        failures_since_reset = 0;
                    }
                    code
                }
            };
            let policy = lock(&self.state).restart_policy.clone();
            let restart = match slot {
                Slot::Init(_) => exit != 0 && policy != "Never",
                Slot::Main(_) => policy == "Always" || (policy == "OnFailure" && exit != 0),
            };
            if !restart {
                return Some(exit);
            }
            // The first restart is immediate, then 1x, 2x, 4x ... the base, capped (kubelet back-off).
            let delay = if failures_since_reset == 0 { Duration::ZERO } else { backoff };
            if failures_since_reset > 0 {
                backoff = (backoff * 2).min(self.ctx.backoff_max);
            }
            failures_since_reset += 1;
            self.update(slot, |record| {
                if let State::Terminated(t) = record.state.clone() {
                    record.last = Some(t);
                }
                record.state = State::Waiting {
                    reason: if delay.is_zero() { "ContainerCreating" } else { "CrashLoopBackOff" }.to_owned(),
                    message: (!delay.is_zero()).then(|| {
                        format!(
                            "back-off {}s restarting failed container={} pod={}_{}({})",
                            delay.as_secs(),
                            container.name,
                            self.name,
                            self.namespace,
                            self.uid
                        )
                    }),
                };
                record.restart_count += 1;
            });
            if !delay.is_zero() {
                self.event(Some(&container.name), Type::Warning, "BackOff", "Back-off restarting failed container");
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(Option::is_some) => return None,
            }
        }
    }

    /// Starts the container once and waits for it to end.
    #[allow(clippy::too_many_lines)] // one linear story: resolve, start, probe, wait, record
    async fn start_and_wait(
        self: &Arc<Self>,
        slot: Slot,
        container: &Container,
        stop: &mut watch::Receiver<Option<Duration>>,
    ) -> Run {
        let image_name = image_of(container);
        let resolved =
            self.ctx.images.read().map_or_else(|e| e.into_inner().resolve(image_name), |m| m.resolve(image_name));
        let image = match resolved {
            Ok(image) => image,
            Err(err) => {
                self.event(
                    Some(&container.name),
                    Type::Warning,
                    "Failed",
                    &format!("Failed to pull image: {}", err.message),
                );
                self.update(slot, |r| {
                    r.state = State::Waiting { reason: err.reason.to_owned(), message: Some(err.message) }
                });
                return Run::Waiting;
            }
        };
        let pod = self.snapshot();
        let env = match build_env(&pod, container, self.ctx.cache.as_ref(), &self.facts) {
            Ok(env) => env,
            Err(message) => {
                self.update(slot, |r| {
                    r.state =
                        State::Waiting { reason: "CreateContainerConfigError".to_owned(), message: Some(message) };
                });
                return Run::Retry;
            }
        };
        let env_map: BTreeMap<String, String> = env.iter().cloned().collect();
        let lookup = |name: &str| env_map.get(name).cloned();
        let command: Vec<String> = container.command.iter().flatten().map(|s| expand(s, &lookup)).collect();
        let args: Vec<String> = container.args.iter().flatten().map(|s| expand(s, &lookup)).collect();
        let (program, program_args) = match image.argv(&command, &args) {
            Ok(resolved) => resolved,
            Err(message) => {
                self.update(slot, |r| {
                    r.state = State::Waiting { reason: "CreateContainerError".to_owned(), message: Some(message) }
                });
                return Run::Retry;
            }
        };
        let container_dir = self.dir.join("containers").join(&container.name);
        let mounts = {
            let volumes = lock(&self.volumes).clone();
            std::fs::create_dir_all(&container_dir)
                .map_err(|e| e.to_string())
                .and_then(|()| volumes::container_mounts(container, &volumes, &image, &container_dir))
                .and_then(|mut mounts| {
                    if self.netns.is_some() {
                        let etc = volumes::etc_mounts(&pod, &self.facts.pod_ip, &self.facts.hostname, &self.dir);
                        mounts.extend(etc.map_err(|e| format!("/etc/hosts: {e}"))?);
                    }
                    Ok(mounts)
                })
        };
        let mounts = match mounts {
            Ok(mounts) => mounts,
            Err(message) => {
                self.update(slot, |r| {
                    r.state = State::Waiting { reason: "CreateContainerConfigError".to_owned(), message: Some(message) }
                });
                return Run::Retry;
            }
        };
        let root = match image.root().map(|(rootfs, user)| run_as(&pod, container, rootfs, *user)).transpose() {
            Ok(root) => root,
            Err(message) => {
                self.update(slot, |r| {
                    r.state = State::Waiting { reason: "CreateContainerConfigError".to_owned(), message: Some(message) }
                });
                return Run::Retry;
            }
        };
        let restart = lock(&self.state).record(slot).map_or(0, |r| r.restart_count);
        let spec = LaunchSpec {
            program: program.clone(),
            args: program_args,
            env: env.clone(),
            workdir: container.working_dir.clone().or_else(|| image.work_dir().map(str::to_owned)),
            netns: self.netns.clone(),
            hostname: self.facts.hostname.clone(),
            mounts,
            log_path: container_dir.join(format!("{restart}.log")),
            root,
        };
        let started_at = Timestamp::now();
        let started = Instant::now();
        let mut child = match runtime::spawn(&spec) {
            Ok(child) => child,
            Err(err) => {
                let finished = Timestamp::now();
                self.update(slot, |r| {
                    r.state = State::Terminated(Terminated {
                        exit_code: 128,
                        signal: None,
                        reason: "StartError".to_owned(),
                        message: Some(err.to_string()),
                        started_at: Some(started_at),
                        finished_at: finished,
                        container_id: None,
                    });
                });
                return Run::Exited { code: 128, ran: Duration::ZERO };
            }
        };
        let pid = child.id().unwrap_or_default();
        self.event(
            Some(&container.name),
            Type::Normal,
            "Pulled",
            &format!("Container image {image_name:?} already present on machine"),
        );
        self.event(Some(&container.name), Type::Normal, "Created", &format!("Created container {}", container.name));
        self.event(Some(&container.name), Type::Normal, "Started", &format!("Started container {}", container.name));
        let container_id = format!("process://{pid}");
        runtime::record_pgid(self.ctx.network.index(), pid);
        self.ctx.registry.set_pid(&self.namespace, &self.name, &container.name, Some(pid));
        let is_init = matches!(slot, Slot::Init(_));
        self.update(slot, |r| {
            r.state = State::Running { started_at };
            r.container_id = Some(container_id.clone());
            r.image_id = format!("process://{}", program.display());
            r.started = is_init;
            r.ready = false;
        });
        let probes = (!is_init).then(|| {
            let target = ProbeTarget { ip: self.pod_ip, container: container.clone(), pid, env: env.clone() };
            let run = Arc::clone(self);
            let name = container.name.clone();
            tokio::spawn(async move {
                let report = |event: ProbeEvent| match event {
                    ProbeEvent::Started => run.update(slot, |r| r.started = true),
                    ProbeEvent::Ready(ready) => run.update(slot, |r| r.ready = ready && r.started),
                    ProbeEvent::Failed(message) => run.event(Some(&name), Type::Warning, "Unhealthy", &message),
                };
                drive(target, &report).await
            })
        });
        let mut probes = probes;
        let probe_failure = async {
            match probes.as_mut() {
                Some(handle) => handle.await.unwrap_or_default(),
                None => std::future::pending().await,
            }
        };
        let mut message = None;
        let outcome = tokio::select! {
            status = child.wait() => Outcome::Exited(status.ok()),
            failure = probe_failure => Outcome::ProbeFailed(failure),
            grace = stop.wait_for(Option::is_some) => Outcome::Stop(grace.ok().and_then(|g| *g).unwrap_or(MIN_GRACE)),
        };
        let status = match outcome {
            Outcome::Exited(status) => status,
            Outcome::ProbeFailed(failure) => {
                tracing::info!(pod = %self.name, container = %container.name, %failure, "killing container");
                self.event(Some(&container.name), Type::Warning, "Unhealthy", &failure);
                self.event(
                    Some(&container.name),
                    Type::Normal,
                    "Killing",
                    &format!("Container {} failed a probe, will be restarted", container.name),
                );
                message = Some(failure);
                let grace = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(30);
                kill(&mut child, pid, Duration::from_secs(grace).max(MIN_GRACE)).await
            }
            Outcome::Stop(grace) => {
                self.event(
                    Some(&container.name),
                    Type::Normal,
                    "Killing",
                    &format!("Stopping container {}", container.name),
                );
                kill(&mut child, pid, grace).await
            }
        };
        if let Some(handle) = probes {
            handle.abort();
        }
        // Whatever the container started in its process group goes with it.
        let _ = runtime::signal_group(pid, Signal::SIGKILL);
        runtime::forget_pgid(self.ctx.network.index(), pid);
        self.ctx.registry.set_pid(&self.namespace, &self.name, &container.name, None);
        let (code, signal) = match status {
            Some(status) => {
                use std::os::unix::process::ExitStatusExt;
                status.code().map_or_else(|| (128 + status.signal().unwrap_or(9), status.signal()), |c| (c, None))
            }
            None => (137, Some(9)),
        };
        let finished = Timestamp::now();
        self.update(slot, |r| {
            r.ready = false;
            r.state = State::Terminated(Terminated {
                exit_code: code,
                signal,
                reason: if code == 0 { "Completed" } else { "Error" }.to_owned(),
                message,
                started_at: Some(started_at),
                finished_at: finished,
                container_id: Some(container_id),
            });
        });
        if self.stopping() {
            return Run::Stopped;
        }
        Run::Exited { code, ran: started.elapsed() }
    }
}

/// What ended the wait for a running container.
enum Outcome {
    Exited(Option<std::process::ExitStatus>),
    ProbeFailed(String),
    Stop(Duration),
}

/// How one start of a container ended.
enum Run {
    /// The pod stops.
    Stopped,
    /// The container cannot start until something changes outside (an unmapped image).
    Waiting,
    /// A configuration error: try again shortly.
    Retry,
    /// The process exited.
    Exited { code: i32, ran: Duration },
}

/// SIGTERM to the container's process group, SIGKILL after the grace period; returns the exit status.
async fn kill(child: &mut tokio::process::Child, pgid: u32, grace: Duration) -> Option<std::process::ExitStatus> {
    let _ = runtime::signal_group(pgid, Signal::SIGTERM);
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return status.ok();
    }
    let _ = runtime::signal_group(pgid, Signal::SIGKILL);
    child.wait().await.ok()
}

impl PodState {
    fn record(&self, slot: Slot) -> Option<&ContainerRecord> {
        match slot {
            Slot::Init(i) => self.init.get(i),
            Slot::Main(i) => self.main.get(i),
        }
    }
}
