//! Fault injection for tests, and the registry of running pods it works on. Does I/O (signals, `ip link`).
//!
//! Pods are addressed by namespace and name, containers by name. A frozen container (SIGSTOP to its process
//! group) keeps its sockets open but answers nothing, so its probes time out; a killed one (SIGKILL) is
//! restarted per `restartPolicy`; an unreachable pod has the host end of its veth set down, so neither the host
//! (probes, tests) nor other pods reach it, and it reaches nothing (its connections to the `kubernetes` Service
//! stall too), until made reachable again.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;

use super::{Error, Result, network, runtime};

/// What the kubelet knows about a running pod, for fault injection and inspection.
#[derive(Debug, Clone)]
pub(crate) struct PodEntry {
    pub(crate) uid: String,
    pub(crate) ip: IpAddr,
    pub(crate) veth_host: Option<String>,
    /// Whether the pod is on the network, for the `kubernetes` Service in its namespace (`None` for `hostNetwork`).
    pub(crate) link: Option<Arc<tokio::sync::watch::Sender<bool>>>,
    /// Container name -> PID (= process group) of its running process.
    pub(crate) containers: BTreeMap<String, u32>,
    pub(crate) dir: PathBuf,
}

/// The running pods, by (namespace, name).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) pods: Mutex<BTreeMap<(String, String), PodEntry>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), PodEntry>> {
        self.pods.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn insert(&self, namespace: &str, name: &str, entry: PodEntry) {
        self.lock().insert((namespace.to_owned(), name.to_owned()), entry);
    }

    /// Removes the entry if it still belongs to the pod with this UID (a recreated pod of the same name may
    /// already have replaced it).
    pub(crate) fn remove(&self, namespace: &str, name: &str, uid: &str) {
        let mut pods = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        if pods.get(&key).is_some_and(|e| e.uid == uid) {
            pods.remove(&key);
        }
    }

    pub(crate) fn set_pid(&self, namespace: &str, name: &str, container: &str, pid: Option<u32>) {
        if let Some(entry) = self.lock().get_mut(&(namespace.to_owned(), name.to_owned())) {
            match pid {
                Some(pid) => entry.containers.insert(container.to_owned(), pid),
                None => entry.containers.remove(container),
            };
        }
    }

    fn entry(&self, namespace: &str, name: &str) -> Result<PodEntry> {
        self.lock()
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| Error::UnknownPod { namespace: namespace.to_owned(), name: name.to_owned() })
    }
}

/// Fault injection on the pods of one kubelet. Get it from [`super::KubeletHandle::faults`].
#[derive(Debug, Clone)]
pub struct Faults {
    pub(crate) registry: Arc<Registry>,
}

impl Faults {
    /// The PID of a container's running process (its process group), if it runs.
    pub fn pid(&self, namespace: &str, pod: &str, container: &str) -> Option<u32> {
        self.registry.entry(namespace, pod).ok()?.containers.get(container).copied()
    }

    /// The pod's IP (`None` if the pod does not run here).
    pub fn pod_ip(&self, namespace: &str, pod: &str) -> Option<IpAddr> {
        self.registry.entry(namespace, pod).ok().map(|e| e.ip)
    }

    /// The container's log (all its runs), as written to stdout and stderr.
    pub fn logs(&self, namespace: &str, pod: &str, container: &str) -> Result<String> {
        let entry = self.registry.entry(namespace, pod)?;
        let dir = entry.dir.join("containers").join(container);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|source| Error::Io { action: "read", path: dir.clone(), source })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort_by_key(|p| p.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u32>().ok()));
        Ok(files.iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect())
    }

    /// Where the kubelet keeps a pod's volume on the host (an emptyDir's files, a ConfigMap's payload), for
    /// reading what a container wrote there.
    pub fn volume_path(&self, namespace: &str, pod: &str, volume: &str) -> Result<PathBuf> {
        Ok(self.registry.entry(namespace, pod)?.dir.join("volumes").join(volume))
    }

    fn signal(&self, namespace: &str, pod: &str, container: &str, signal: Signal) -> Result<()> {
        let pid = self.pid(namespace, pod, container).ok_or_else(|| Error::ContainerNotRunning {
            namespace: namespace.to_owned(),
            name: pod.to_owned(),
            container: container.to_owned(),
        })?;
        runtime::signal_group(pid, signal)
    }

    /// Freezes a container (SIGSTOP to its process group).
    pub fn freeze(&self, namespace: &str, pod: &str, container: &str) -> Result<()> {
        self.signal(namespace, pod, container, Signal::SIGSTOP)
    }

    /// Thaws a frozen container (SIGCONT).
    pub fn thaw(&self, namespace: &str, pod: &str, container: &str) -> Result<()> {
        self.signal(namespace, pod, container, Signal::SIGCONT)
    }

    /// Kills a container (SIGKILL); the kubelet restarts it per `restartPolicy`.
    pub fn kill(&self, namespace: &str, pod: &str, container: &str) -> Result<()> {
        self.signal(namespace, pod, container, Signal::SIGKILL)
    }

    /// Cuts the pod off the network (the host end of its veth goes down).
    pub async fn make_unreachable(&self, namespace: &str, pod: &str) -> Result<()> {
        self.set_link(namespace, pod, false).await
    }

    /// Undoes [`Faults::make_unreachable`].
    pub async fn make_reachable(&self, namespace: &str, pod: &str) -> Result<()> {
        self.set_link(namespace, pod, true).await
    }

    async fn set_link(&self, namespace: &str, pod: &str, up: bool) -> Result<()> {
        let entry = self.registry.entry(namespace, pod)?;
        let veth = entry
            .veth_host
            .ok_or_else(|| Error::HostNetwork { namespace: namespace.to_owned(), name: pod.to_owned() })?;
        network::set_link(&veth, up).await?;
        if let Some(link) = entry.link {
            link.send_replace(up);
        }
        Ok(())
    }
}
