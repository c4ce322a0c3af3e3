//! Pod networking, the way a CNI bridge plugin does it. Does I/O (runs `ip`).
//!
//! One kubelet instance claims an index `I` (0..=250) and owns:
//! - the bridge `tsdbbrI` in the host namespace with `10.213.I.1/24` (the gateway, also the nodes' InternalIP),
//! - per pod a network namespace `tsdb-I-S` (S = slot 2..=254), a veth pair whose host end `tsvIhS` is enslaved
//!   to the bridge and whose pod end is renamed `eth0` with `10.213.I.S/24`, `lo` up and a default route via
//!   the bridge,
//! - per pod the `kubernetes` Service's ClusterIP on the namespace's `lo`, with a listener forwarding to the API
//!   server (see `service`).
//!
//! # Guarantees
//! - The index is claimed with an exclusive lock file `/run/tsdb-process-kubelet/I.pid` holding the owner's PID,
//!   so parallel test binaries never share a subnet.
//! - At startup everything left behind by dead owners (their namespaces, processes in them, veths, bridge) is
//!   removed.
//! - [`Network::teardown`] removes what this instance created; the watchdog (see `runtime`) does the same if the
//!   owning process dies.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::process::Command;
use tokio::sync::watch;

use super::service::{KubernetesService, ServiceProxy};
use super::{Error, Result};

/// Directory holding the lock files of the claimed subnet indexes.
pub(crate) const RUN_DIR: &str = "/run/tsdb-process-kubelet";
/// Highest subnet index (10.213.I.0/24).
const MAX_INDEX: u8 = 250;

/// The pod network of one kubelet instance.
#[derive(Debug)]
pub(crate) struct Network {
    index: u8,
    free_slots: Mutex<BTreeSet<u8>>,
}

/// The network sandbox of one pod: its namespace, its veth, its IP and the `kubernetes` Service in it.
#[derive(Debug)]
pub(crate) struct Sandbox {
    pub(crate) netns: String,
    pub(crate) veth_host: String,
    pub(crate) ip: Ipv4Addr,
    /// Whether the pod is on the network (false while [`super::Faults::make_unreachable`] holds).
    pub(crate) link: Arc<watch::Sender<bool>>,
    /// `(ClusterIP, port)` of the `kubernetes` Service inside the namespace, if it is emulated.
    pub(crate) kubernetes_service: Option<(IpAddr, u16)>,
    proxy: Option<ServiceProxy>,
    slot: u8,
}

impl Network {
    /// Removes what dead owners left behind, claims an index (the requested one or the first free one) and
    /// creates the bridge.
    pub(crate) async fn setup(requested: Option<u8>) -> Result<Self> {
        std::fs::create_dir_all(RUN_DIR).map_err(|source| Error::Io {
            action: "create",
            path: PathBuf::from(RUN_DIR),
            source,
        })?;
        remove_stale().await?;
        let index = claim_index(requested)?;
        let network = Self { index, free_slots: Mutex::new((2..=254).collect()) };
        let bridge = network.bridge();
        // A bridge of the same name without a live owner was removed above; `ip link add` fails if one remains.
        ip(&["link", "add", &bridge, "type", "bridge"]).await?;
        ip(&["addr", "add", &format!("{}/24", network.gateway()), "dev", &bridge]).await?;
        ip(&["link", "set", &bridge, "up"]).await?;
        Ok(network)
    }

    /// The claimed subnet index.
    pub(crate) fn index(&self) -> u8 {
        self.index
    }

    /// The bridge's name.
    pub(crate) fn bridge(&self) -> String {
        bridge_name(self.index)
    }

    /// The bridge's address: the pods' gateway and the nodes' InternalIP.
    pub(crate) fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.index, 1)
    }

    /// Prefix of this instance's network namespaces.
    pub(crate) fn netns_prefix(&self) -> String {
        netns_prefix(self.index)
    }

    /// Creates a network namespace joined to the bridge, with `service` (the `kubernetes` Service) reachable in
    /// it, and returns it.
    pub(crate) async fn create_sandbox(&self, service: Option<&KubernetesService>) -> Result<Sandbox> {
        let slot = {
            let mut free = self.free_slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            free.pop_first().ok_or(Error::NoFreePodIp { index: self.index })?
        };
        let mut sandbox = Sandbox {
            netns: format!("{}{slot}", self.netns_prefix()),
            veth_host: format!("tsv{}h{slot}", self.index),
            ip: Ipv4Addr::new(10, 213, self.index, slot),
            link: Arc::new(watch::channel(true).0),
            kubernetes_service: None,
            proxy: None,
            slot,
        };
        if let Err(err) = self.configure(&sandbox).await {
            self.remove_sandbox(sandbox).await;
            return Err(err);
        }
        if let Some(service) = service {
            match service.serve_in(&sandbox.netns, sandbox.link.subscribe()).await {
                Ok(proxy) => {
                    sandbox.proxy = Some(proxy);
                    sandbox.kubernetes_service = Some(service.address());
                }
                Err(err) => {
                    self.remove_sandbox(sandbox).await;
                    return Err(err);
                }
            }
        }
        Ok(sandbox)
    }

    async fn configure(&self, sandbox: &Sandbox) -> Result<()> {
        let ns = sandbox.netns.as_str();
        let peer = format!("tsv{}p{}", self.index, sandbox.slot);
        // Leftovers of an earlier pod in this slot would make `add` fail.
        let _ = ip(&["netns", "del", ns]).await;
        let _ = ip(&["link", "del", &sandbox.veth_host]).await;
        ip(&["netns", "add", ns]).await?;
        ip(&["link", "add", &sandbox.veth_host, "type", "veth", "peer", "name", &peer]).await?;
        ip(&["link", "set", &peer, "netns", ns]).await?;
        ip(&["-n", ns, "link", "set", &peer, "name", "eth0"]).await?;
        ip(&["-n", ns, "addr", "add", &format!("{}/24", sandbox.ip), "dev", "eth0"]).await?;
        ip(&["-n", ns, "link", "set", "eth0", "up"]).await?;
        ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
        ip(&["-n", ns, "route", "add", "default", "via", &self.gateway().to_string()]).await?;
        ip(&["link", "set", &sandbox.veth_host, "master", &self.bridge(), "up"]).await?;
        Ok(())
    }

    /// Stops the `kubernetes` Service in the sandbox, kills whatever still runs in it, deletes the namespace and
    /// the veth, and frees the IP.
    pub(crate) async fn remove_sandbox(&self, sandbox: Sandbox) {
        if let Some(proxy) = sandbox.proxy {
            proxy.stop().await;
        }
        remove_netns(&sandbox.netns).await;
        let _ = ip(&["link", "del", &sandbox.veth_host]).await;
        self.free_slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(sandbox.slot);
    }

    /// Removes every namespace of this instance, the bridge and the lock file.
    pub(crate) async fn teardown(&self) {
        remove_index(self.index).await;
    }
}

fn bridge_name(index: u8) -> String {
    format!("tsdbbr{index}")
}

fn netns_prefix(index: u8) -> String {
    format!("tsdb-{index}-")
}

fn lock_path(index: u8) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{index}.pid"))
}

/// Claims a subnet index by creating its lock file exclusively.
fn claim_index(requested: Option<u8>) -> Result<u8> {
    let candidates: Vec<u8> = match requested {
        Some(index) => vec![index],
        None => (0..=MAX_INDEX).collect(),
    };
    for index in candidates {
        let path = lock_path(index);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => {
                use std::io::Write;
                let mut file = file;
                file.write_all(std::process::id().to_string().as_bytes()).map_err(|source| Error::Io {
                    action: "write",
                    path: path.clone(),
                    source,
                })?;
                return Ok(index);
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(Error::Io { action: "create", path, source }),
        }
    }
    Err(Error::NoFreeSubnet { requested })
}

/// Whether a lock file's owner is alive.
fn owner_alive(index: u8) -> bool {
    let Ok(text) = std::fs::read_to_string(lock_path(index)) else {
        return false;
    };
    text.trim().parse::<u32>().is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes the namespaces, veths, bridges and lock files of indexes whose owner is dead.
async fn remove_stale() -> Result<()> {
    let mut indexes = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(RUN_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(index) = name.strip_suffix(".pid").and_then(|i| i.parse::<u8>().ok()) {
                indexes.insert(index);
            }
        }
    }
    for ns in list_netns().await {
        if let Some(index) = ns.strip_prefix("tsdb-").and_then(|rest| rest.split('-').next()?.parse::<u8>().ok()) {
            indexes.insert(index);
        }
    }
    let links = ip(&["-o", "link", "show"]).await?;
    for line in links.lines() {
        let name = line.split(':').nth(1).unwrap_or_default().trim();
        let name = name.split('@').next().unwrap_or_default();
        if let Some(index) = name.strip_prefix("tsdbbr").and_then(|i| i.parse::<u8>().ok()) {
            indexes.insert(index);
        }
    }
    for index in indexes {
        if !owner_alive(index) {
            tracing::info!(index, "removing the pod network left behind by a dead kubelet");
            remove_index(index).await;
        }
    }
    Ok(())
}

/// Removes everything of one index.
async fn remove_index(index: u8) {
    let prefix = netns_prefix(index);
    for ns in list_netns().await {
        if ns.starts_with(&prefix) {
            remove_netns(&ns).await;
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]).await {
        let veth_prefix = format!("tsv{index}h");
        for line in links.lines() {
            let name = line.split(':').nth(1).unwrap_or_default().trim();
            let name = name.split('@').next().unwrap_or_default();
            if name.starts_with(&veth_prefix) {
                let _ = ip(&["link", "del", name]).await;
            }
        }
    }
    let _ = ip(&["link", "del", &bridge_name(index)]).await;
    let _ = std::fs::remove_file(lock_path(index));
}

async fn list_netns() -> Vec<String> {
    ip(&["netns", "list"])
        .await
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Kills the processes in a namespace, then deletes it.
async fn remove_netns(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]).await {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _ = ip(&["netns", "del", ns]).await;
}

/// Sets the host end of a pod's veth down (`up = false`) or up.
pub(crate) async fn set_link(veth_host: &str, up: bool) -> Result<()> {
    ip(&["link", "set", veth_host, if up { "up" } else { "down" }]).await.map(drop)
}

/// Runs `ip` with the arguments and returns its stdout.
pub(crate) async fn ip(args: &[&str]) -> Result<String> {
    run("ip", args).await
}

/// Runs a command and returns its stdout; a non-zero exit is an error carrying stderr.
pub(crate) async fn run(program: &str, args: &[&str]) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| Error::Spawn { command: command.clone(), source })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Command { command, stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned() })
    }
}
