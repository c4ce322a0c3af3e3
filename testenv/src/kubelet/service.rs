//! The `kubernetes` Service inside pod network namespaces, emulating what kube-proxy does for this one Service:
//! a pod connects to its ClusterIP and port (`10.0.0.1:443` with `--service-cluster-ip-range=10.0.0.0/24`) and
//! reaches the API server. Does I/O (`ip`, sockets, a thread that enters the pod's network namespace).
//!
//! # How
//! - At startup [`KubernetesService::discover`] reads the Service `default/kubernetes` (the API server creates it
//!   with the first IP of the service range) for its ClusterIP and `https` port.
//! - Per sandbox [`KubernetesService::serve_in`] adds the ClusterIP to the namespace's `lo`, opens a TCP listener
//!   on ClusterIP:port inside the namespace (from a short-lived thread that enters it with setns(2); a socket
//!   stays in the namespace it was created in, whatever thread uses it later), and forwards each accepted
//!   connection to the API server address the kubelet uses itself, from the host namespace. TLS passes through
//!   untouched: the client verifies the API server's certificate, which names the ClusterIP and
//!   `kubernetes.default.svc`.
//!
//! # Guarantees
//! - [`ServiceProxy::stop`] (at sandbox removal) ends the listener and every forwarded connection and closes the
//!   listening socket, which would otherwise keep the network namespace alive. Dropping a [`ServiceProxy`]
//!   cancels it too.
//! - While the pod is cut off the network ([`super::Faults::make_unreachable`]) its connections to the Service
//!   stall, as over a link that is down: nothing is relayed in either direction and no new connection to the API
//!   server is made until the pod is reachable again.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};
use nix::sched::CloneFlags;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::{Error, Result, network};

/// Where `ip netns` keeps its named network namespaces.
const NETNS_DIR: &str = "/var/run/netns";
/// How long startup waits for the Service `default/kubernetes`.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a forwarded connection waits for the API server to accept it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `kubernetes` Service as pods see it, and where its traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KubernetesService {
    /// The Service's ClusterIP (the first IP of the service range).
    pub(crate) cluster_ip: IpAddr,
    /// Its `https` port (443).
    pub(crate) port: u16,
    /// `(host, port)` of the API server as the kubelet reaches it.
    upstream: (String, u16),
}

/// The ClusterIP and `https` port (else the first port) of a Service; `None` for a headless one.
pub(crate) fn address_of(service: &Service) -> Option<(IpAddr, u16)> {
    let spec = service.spec.as_ref()?;
    let ip = spec.cluster_ip.as_deref()?.parse().ok()?;
    let ports = spec.ports.as_deref().unwrap_or_default();
    let port = ports.iter().find(|p| p.name.as_deref() == Some("https")).or_else(|| ports.first())?.port;
    Some((ip, u16::try_from(port).ok()?))
}

impl KubernetesService {
    /// Reads the Service `default/kubernetes`, waiting up to 10 s for it. `None` (pods in their own network
    /// namespace then cannot reach the API server) if it does not come, or if the API server's address is not
    /// known.
    pub(crate) async fn discover(client: &Client, upstream: Option<(String, u16)>) -> Option<Self> {
        let upstream = upstream?;
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let deadline = tokio::time::Instant::now() + DISCOVER_TIMEOUT;
        let problem = loop {
            let problem = match services.get_opt("kubernetes").await {
                Ok(Some(service)) => match address_of(&service) {
                    Some((cluster_ip, port)) => return Some(Self { cluster_ip, port, upstream }),
                    None => break "it has no ClusterIP or port".to_owned(),
                },
                Ok(None) => "not found".to_owned(),
                Err(err) => err.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                break problem;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        tracing::warn!(
            %problem,
            "cannot emulate the Service default/kubernetes: pods in their own network namespace will not reach the \
             API server"
        );
        None
    }

    /// `(ClusterIP, port)`: where pods reach the API server.
    pub(crate) fn address(&self) -> (IpAddr, u16) {
        (self.cluster_ip, self.port)
    }

    /// Makes the Service reachable inside the network namespace `netns` until the returned proxy is stopped.
    /// `link` tells whether the pod is on the network (see the module docs).
    pub(crate) async fn serve_in(&self, netns: &str, link: watch::Receiver<bool>) -> Result<ServiceProxy> {
        let prefix = if self.cluster_ip.is_ipv4() { 32 } else { 128 };
        let cidr = format!("{}/{prefix}", self.cluster_ip);
        network::ip(&["-n", netns, "addr", "add", &cidr, "dev", "lo"]).await?;
        let path = Path::new(NETNS_DIR).join(netns);
        let address = SocketAddr::new(self.cluster_ip, self.port);
        let listener = listen_in(path.clone(), address)
            .await
            .and_then(TcpListener::from_std)
            .map_err(|source| Error::ServiceListener { netns: netns.to_owned(), address, source })?;
        let task = tokio::spawn(accept_loop(listener, self.upstream.clone(), link));
        Ok(ServiceProxy { task })
    }
}

/// Opens a non-blocking TCP listener on `address` inside the network namespace at `path`. The namespace is entered
/// by a thread of its own that ends right after, so no thread of the kubelet (Tokio's blocking pool included)
/// ever changes its namespace.
async fn listen_in(path: PathBuf, address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let joined = tokio::task::spawn_blocking(move || {
        std::thread::Builder::new()
            .name("netns-listen".to_owned())
            .spawn(move || bind_in(&path, address))?
            .join()
            .map_err(|_| std::io::Error::other("the thread entering the network namespace panicked"))?
    })
    .await;
    joined.map_err(std::io::Error::other)?
}

/// Runs on a thread of its own: enters the namespace (for this thread only) and binds there.
fn bind_in(path: &Path, address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let namespace = std::fs::File::open(path)?;
    nix::sched::setns(&namespace, CloneFlags::CLONE_NEWNET)?;
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The forwarder of one sandbox. [`ServiceProxy::stop`] ends it; so does dropping it.
#[derive(Debug)]
pub(crate) struct ServiceProxy {
    task: JoinHandle<()>,
}

impl ServiceProxy {
    /// Stops accepting, ends every forwarded connection and waits until the listening socket is closed.
    pub(crate) async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections until cancelled; each is relayed by a task of `connections`, which are cancelled with it.
async fn accept_loop(listener: TcpListener, upstream: (String, u16), link: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((inbound, _)) => {
                    connections.spawn(relay(inbound, upstream.clone(), link.clone()));
                }
                Err(err) => {
                    // Out of file descriptors, say: do not spin.
                    tracing::debug!(error = %err, "kubernetes Service: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Waits until the pod's link is `up`; `false` once the sandbox is gone.
async fn link_becomes(link: &mut watch::Receiver<bool>, up: bool) -> bool {
    link.wait_for(|state| *state == up).await.is_ok()
}

/// Relays one connection to the API server until either side closes it.
async fn relay(mut inbound: TcpStream, upstream: (String, u16), mut link: watch::Receiver<bool>) {
    if !link_becomes(&mut link, true).await {
        return;
    }
    let connect = TcpStream::connect((upstream.0.as_str(), upstream.1));
    let mut outbound = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "kubernetes Service: cannot connect to the API server");
            return;
        }
        Err(_) => {
            tracing::debug!("kubernetes Service: the API server did not accept a connection within 10 s");
            return;
        }
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
    tokio::pin!(copy);
    loop {
        // While the pod is cut off the copy is not polled: nothing moves, as over a link that is down.
        if !link_becomes(&mut link, true).await {
            return;
        }
        tokio::select! {
            _ = &mut copy => return,
            alive = link_becomes(&mut link, false) => if !alive { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_is_the_cluster_ip_and_the_https_port() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.0.0.1", "ports": [
                {"name": "metrics", "port": 8080}, {"name": "https", "port": 443, "targetPort": 6443}
            ]}
        }))
        .unwrap();
        assert_eq!(address_of(&service), Some((IpAddr::from([10, 0, 0, 1]), 443)));
        let headless: Service =
            serde_json::from_value(serde_json::json!({"spec": {"clusterIP": "None", "ports": [{"port": 80}]}}))
                .unwrap();
        assert_eq!(address_of(&headless), None);
    }
}
