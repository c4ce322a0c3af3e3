//! A real Kubernetes 1.20 control plane on loopback: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler, started from the binaries that `scripts/install-deps.sh` builds. Does I/O (processes,
//! files, HTTP).
//!
//! # Flow
//! [`ControlPlane::start`]:
//! 1. finds the binaries ([`crate::paths`]), creates a [`Workdir`] and an etcd data dir on `/dev/shm`;
//! 2. makes the service-account key pair with the `openssl` CLI and writes the token file
//!    (admin in `system:masters`, plus the users of [`TestUser`]);
//! 3. starts etcd on two free ports of 127.0.0.1 and waits for its client port;
//! 4. starts kube-apiserver (RBAC, token auth, self-signed serving cert generated in its cert dir) and
//!    waits until it listens;
//! 5. writes kubeconfigs (server CA = the generated `apiserver.crt`), starts kube-controller-manager and
//!    kube-scheduler with `--leader-elect=false`;
//! 6. waits for `/readyz`, the `default` namespace, and the `default` service account's token in it (which
//!    proves the controller manager's controllers are running).
//!
//! A port clash (another process grabbing a port between the probe and the bind) is retried with new ports.
//!
//! # Guarantees
//! - Every process is supervised ([`crate::process`]): stopped when the `ControlPlane` is dropped, and by
//!   its supervisor when the test process exits or is killed, even for the never-dropped
//!   [`ControlPlane::shared`] instance. The workdir and the etcd data dir are removed then too.
//! - No Tokio runtime is kept inside: [`ControlPlane::client`] hands out a fresh `kube::Client` bound to the
//!   caller's runtime, so one control plane serves many `#[tokio::test]`s.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use serde::Deserialize as _;

use crate::paths;
use crate::process::{ProcessBuilder, Supervised, Workdir, free_port, random_hex, sanitize, wait_for_port};

/// Field manager of the server-side applies done by the test environment.
pub const FIELD_MANAGER: &str = "tsdb-operator-testenv";
/// The admin user (group `system:masters`).
pub const ADMIN_USER: &str = "admin";
/// A user with no groups and no bindings: every request is forbidden until a test binds a role to it.
pub const ALICE_USER: &str = "alice";
/// A user that looks like the operator's service account `tsdb-system/tsdb-operator` to RBAC (RoleBindings
/// with a `ServiceAccount` subject match it), without needing the service account to exist.
pub const OPERATOR_SA_USER: &str = "system:serviceaccount:tsdb-system:tsdb-operator";

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const START_ATTEMPTS: usize = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A user of the static token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestUser {
    /// User name as the API server sees it.
    pub name: String,
    /// Bearer token.
    pub token: String,
    /// Groups besides `system:authenticated`, which the API server adds to every token user.
    pub groups: Vec<String>,
}

/// A running control plane. See the module docs.
#[derive(Debug)]
pub struct ControlPlane {
    server_url: String,
    kubeconfig: PathBuf,
    ca_cert: PathBuf,
    users: Vec<TestUser>,
    config: kube::Config,
    started_in: Duration,
    /// In start order; stopped in reverse. The API server is at [`APISERVER_AT`].
    processes: Mutex<Vec<Supervised>>,
    /// How to start the API server again after [`ControlPlane::stop_apiserver`].
    apiserver: ProcessBuilder,
    apiserver_addr: SocketAddr,
    apiserver_restarts: AtomicUsize,
    workdir: Workdir,
}

impl ControlPlane {
    /// Starts a control plane and waits until it is usable. Blocks (for about 5 s warm); may be called from
    /// inside or outside a Tokio runtime.
    pub fn start() -> Result<Self> {
        std::thread::Builder::new()
            .name("testenv-controlplane".into())
            .spawn(start_with_retries)
            .context("failed to spawn the control-plane start thread")?
            .join()
            .map_err(|_| anyhow!("the control-plane start thread panicked"))?
    }

    /// The control plane of this test binary, started on first use (thread-safe) and stopped by its
    /// supervisors when the test binary exits.
    ///
    /// # Panics
    /// If the control plane cannot be started; every later call panics with the same message.
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        match SHARED.get_or_init(|| Self::start().map_err(|e| format!("{e:#}"))) {
            Ok(cp) => cp,
            #[allow(clippy::panic)]
            Err(e) => panic!("failed to start the shared control plane: {e}"),
        }
    }

    /// A fresh admin client bound to the calling Tokio runtime.
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    pub fn client(&self) -> kube::Client {
        install_crypto_provider();
        #[allow(clippy::expect_used)]
        kube::Client::try_from(self.config.clone())
            .expect("a kube client from a validated config (inside a Tokio runtime)")
    }

    /// A fresh client authenticating as the pre-made user `user` (see [`ControlPlane::users`]).
    pub fn client_for_user(&self, user: &str) -> Result<kube::Client> {
        let token = self.token_for(user).ok_or_else(|| anyhow!("no pre-made user {user:?}"))?;
        self.client_with_token(token)
    }

    /// A fresh client authenticating with a bearer token, e.g. one from [`ControlPlane::service_account_token`].
    pub fn client_with_token(&self, token: &str) -> Result<kube::Client> {
        install_crypto_provider();
        let mut config = self.config.clone();
        config.auth_info = kube::config::AuthInfo { token: Some(token.to_owned().into()), ..Default::default() };
        Ok(kube::Client::try_from(config)?)
    }

    /// A fresh admin client impersonating any user and groups (the admin may impersonate anyone): the way
    /// to get an identity that is not in the token file.
    pub fn client_impersonating(&self, user: &str, groups: &[&str]) -> Result<kube::Client> {
        install_crypto_provider();
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups =
            (!groups.is_empty()).then(|| groups.iter().map(|g| (*g).to_owned()).collect());
        Ok(kube::Client::try_from(config)?)
    }

    /// The admin `kube::Config` (for code under test that builds its own clients).
    pub fn kube_config(&self) -> kube::Config {
        self.config.clone()
    }

    /// The admin kubeconfig file (context `testenv`, namespace `default`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The kubeconfig file of a pre-made user.
    pub fn kubeconfig_path_for(&self, user: &str) -> Option<PathBuf> {
        if user == ADMIN_USER {
            return Some(self.kubeconfig.clone());
        }
        self.token_for(user).map(|_| self.workdir.path().join(format!("kubeconfig-{}.yaml", sanitize(user))))
    }

    /// A self-contained kubeconfig (the CA inline, so it works inside a chroot) that authenticates with `token`
    /// (a ServiceAccount's, say) as `name`.
    pub fn kubeconfig_for_token(&self, name: &str, token: &str) -> Result<String> {
        let ca = std::fs::read(&self.ca_cert).with_context(|| format!("failed to read {}", self.ca_cert.display()))?;
        let ca = serde_json::json!({ "certificate-authority-data": k8s_openapi::ByteString(ca) });
        Ok(kubeconfig_yaml(&self.server_url, &ca, name, token))
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The API server's self-signed serving certificate (PEM; also its CA).
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        self.token_for(ADMIN_USER).unwrap_or_default()
    }

    /// The API server's audit log (JSON lines): one `ResponseComplete` entry per write request and per read of a
    /// Secret or ConfigMap (`ResponseStarted` too for watches).
    pub fn audit_log_path(&self) -> PathBuf {
        self.workdir.path().join("audit.log")
    }

    /// Write requests made by `user` (as authenticated) recorded in the audit log so far.
    pub fn audit_writes_by(&self, user: &str) -> Result<Vec<crate::audit::AuditEntry>> {
        crate::audit::writes_by(&self.audit_log_path(), user)
    }

    /// Every request made by `user` recorded in the audit log so far: writes, and reads of Secrets and ConfigMaps.
    pub fn audit_requests_by(&self, user: &str) -> Result<Vec<crate::audit::AuditEntry>> {
        crate::audit::requests_by(&self.audit_log_path(), user)
    }

    /// The users of the token file: [`ADMIN_USER`], [`ALICE_USER`], [`OPERATOR_SA_USER`].
    pub fn users(&self) -> &[TestUser] {
        &self.users
    }

    /// The token of a pre-made user.
    pub fn token_for(&self, user: &str) -> Option<&str> {
        self.users.iter().find(|u| u.name == user).map(|u| u.token.as_str())
    }

    /// The directory holding logs (`logs/`), configs and keys.
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// How long [`ControlPlane::start`] took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The last `lines` lines of a component's log (`etcd`, `kube-apiserver`, `kube-controller-manager`,
    /// `kube-scheduler`).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        crate::process::tail_of(&self.workdir.logs().join(format!("{component}.log")), lines)
    }

    /// Applies the CRDs with server-side apply and waits until each one is Established.
    pub async fn install_crds(&self, crds: &[CustomResourceDefinition]) -> Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for crd in crds {
            let name = crd.metadata.name.as_deref().ok_or_else(|| anyhow!("a CRD without metadata.name"))?;
            api.patch(name, &params, &Patch::Apply(crd))
                .await
                .with_context(|| format!("failed to apply CRD {name}"))?;
        }
        for crd in crds {
            let name = crd.metadata.name.as_deref().unwrap_or_default();
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(api.clone(), name, conditions::is_crd_established()),
            )
            .await
            .with_context(|| format!("CRD {name} was not Established within 30 s"))?
            .with_context(|| format!("failed to watch CRD {name}"))?;
        }
        Ok(())
    }

    /// Installs CRDs from a (multi-document) YAML stream such as `deploy/crds/crds.yaml`.
    pub async fn install_crds_yaml(&self, yaml: &str) -> Result<()> {
        let mut crds = Vec::new();
        for document in serde_yaml::Deserializer::from_str(yaml) {
            let value = serde_yaml::Value::deserialize(document).context("failed to parse CRD YAML")?;
            if value.is_null() {
                continue;
            }
            crds.push(
                serde_yaml::from_value::<CustomResourceDefinition>(value).context("not a CustomResourceDefinition")?,
            );
        }
        self.install_crds(&crds).await
    }

    /// Stops kube-apiserver (SIGTERM), as an outage would: clients get connection errors; etcd, the controllers
    /// and every other process keep running. Only for a control plane of its own (not [`ControlPlane::shared`]
    /// when other tests run in the same binary).
    pub fn stop_apiserver(&self) -> Result<()> {
        let mut processes = self.processes.lock().unwrap_or_else(PoisonError::into_inner);
        processes[APISERVER_AT].stop()?;
        Ok(())
    }

    /// Freezes kube-apiserver (SIGSTOP): it keeps its socket, so connections open but nothing is answered.
    pub fn freeze_apiserver(&self) -> Result<()> {
        self.processes.lock().unwrap_or_else(PoisonError::into_inner)[APISERVER_AT].freeze()
    }

    /// Resumes a frozen kube-apiserver (SIGCONT).
    pub fn thaw_apiserver(&self) -> Result<()> {
        self.processes.lock().unwrap_or_else(PoisonError::into_inner)[APISERVER_AT].thaw()
    }

    /// Starts kube-apiserver again after [`ControlPlane::stop_apiserver`], on the same address with the same
    /// certificates and tokens, and waits until `/readyz` answers `ok`.
    pub async fn start_apiserver(&self) -> Result<()> {
        let restart = self.apiserver_restarts.fetch_add(1, Ordering::Relaxed) + 1;
        let log = self.workdir.logs().join(format!("kube-apiserver-restart-{restart}.log"));
        let mut process = self.apiserver.clone().log_file(log).spawn(&self.workdir)?;
        let addr = self.apiserver_addr;
        let (process, waited) = tokio::task::spawn_blocking(move || {
            let waited = wait_for_port(&mut process, addr, READY_TIMEOUT);
            (process, waited)
        })
        .await?;
        self.processes.lock().unwrap_or_else(PoisonError::into_inner)[APISERVER_AT] = process;
        waited?;
        let client = self.client();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let request = http::Request::get("/readyz").body(Vec::new())?;
            if client.request_text(request).await.is_ok_and(|body| body.trim() == "ok") {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("kube-apiserver did not become ready again within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Applies every object of a (multi-document) YAML stream such as `deploy/rbac.yaml` with server-side apply as
    /// the admin, under the field manager `testenv`. Plurals are the kind in lower case plus `s`, which holds for
    /// the kinds tests apply (RBAC objects, namespaces, service accounts, the project's kinds).
    pub async fn apply_yaml(&self, yaml: &str) -> Result<()> {
        let client = self.client();
        for document in serde_yaml::Deserializer::from_str(yaml) {
            let value = serde_json::Value::deserialize(document).context("failed to parse YAML")?;
            if value.is_null() {
                continue;
            }
            let (api_version, kind) = (
                value["apiVersion"].as_str().context("an object without apiVersion")?,
                value["kind"].as_str().context("an object without kind")?,
            );
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let plural = format!("{}s", kind.to_ascii_lowercase());
            let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural);
            let name = value["metadata"]["name"].as_str().context("an object without metadata.name")?;
            let api: Api<DynamicObject> = match value["metadata"]["namespace"].as_str() {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            api.patch(name, &PatchParams::apply("testenv").force(), &Patch::Apply(&value))
                .await
                .with_context(|| format!("failed to apply {kind} {name}"))?;
        }
        Ok(())
    }

    /// Installs the project's CRDs (`tsdb_operator_core::crd::crds()`).
    pub async fn install_project_crds(&self) -> Result<()> {
        self.install_crds(&tsdb_operator_core::crd::crds()).await
    }

    /// Creates a fresh namespace `<prefix>-<random>` and waits until pods can be created in it (its
    /// `default` service account has a token).
    ///
    /// # Panics
    /// If the namespace cannot be created; see [`ControlPlane::try_namespace`].
    pub async fn namespace(&self, prefix: &str) -> String {
        match self.try_namespace(prefix).await {
            Ok(name) => name,
            #[allow(clippy::panic)]
            Err(e) => panic!("failed to create a test namespace: {e:#}"),
        }
    }

    /// [`ControlPlane::namespace`], returning errors.
    pub async fn try_namespace(&self, prefix: &str) -> Result<String> {
        let mut base = sanitize(prefix);
        base.truncate(50);
        let name = format!("{}-{}", base.trim_end_matches('-'), random_hex(4));
        let client = self.client();
        let ns =
            Namespace { metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() }, ..Default::default() };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("failed to create namespace {name}"))?;
        wait_for_service_account_token(&client, &name, "default", Duration::from_secs(30)).await?;
        Ok(name)
    }

    /// Creates the service account `namespace/name` if needed and returns its token (the controller
    /// manager's token controller makes it), for tests that need a real service-account identity.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String> {
        let client = self.client();
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        let sa = ServiceAccount {
            metadata: ObjectMeta { name: Some(name.to_owned()), ..Default::default() },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("failed to create service account {namespace}/{name}")),
        }
        wait_for_service_account_token(&client, namespace, name, Duration::from_secs(30)).await
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let processes = self.processes.get_mut().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut process) = processes.pop() {
            let _ = process.stop();
        }
    }
}

/// Index of kube-apiserver in [`ControlPlane::processes`] (after etcd).
const APISERVER_AT: usize = 1;

/// Waits until the service account exists and has a token secret; returns the token.
async fn wait_for_service_account_token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<String> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = String::from("no token secret yet");
    loop {
        // Transient API errors (a busy server) are retried until the deadline.
        match find_service_account_token(&sas, &secrets, name).await {
            Ok(Some(token)) => return Ok(token),
            Ok(None) => {}
            Err(e) => last_error = e.to_string(),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "service account {namespace}/{name} got no token within {timeout:?} ({last_error}; is \
                 kube-controller-manager running?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn find_service_account_token(
    sas: &Api<ServiceAccount>,
    secrets: &Api<k8s_openapi::api::core::v1::Secret>,
    name: &str,
) -> kube::Result<Option<String>> {
    let Some(sa) = sas.get_opt(name).await? else { return Ok(None) };
    for reference in sa.secrets.unwrap_or_default() {
        let Some(secret_name) = reference.name else { continue };
        if let Some(secret) = secrets.get_opt(&secret_name).await?
            && let Some(token) = secret.data.as_ref().and_then(|d| d.get("token"))
        {
            return Ok(Some(String::from_utf8_lossy(&token.0).into_owned()));
        }
    }
    Ok(None)
}

/// Selects rustls' `ring` provider for the process unless one is installed. Needed when the dependency graph
/// enables both `ring` and `aws-lc-rs` (object_store, sqlx and reqwest pull in the latter), in which case
/// rustls cannot choose by itself and kube's TLS setup panics.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race against another thread installing one is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn start_with_retries() -> Result<ControlPlane> {
    install_crypto_provider();
    let mut last = None;
    for _ in 0..START_ATTEMPTS {
        match start_once() {
            Ok(cp) => return Ok(cp),
            Err(e) if format!("{e:#}").contains("address already in use") => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no start attempt was made")))
}

struct Binaries {
    etcd: PathBuf,
    apiserver: PathBuf,
    controller_manager: PathBuf,
    scheduler: PathBuf,
    openssl: PathBuf,
}

impl Binaries {
    fn find() -> Result<Self> {
        Ok(Self {
            etcd: paths::etcd()?,
            apiserver: paths::kube_apiserver()?,
            controller_manager: paths::kube_controller_manager()?,
            scheduler: paths::kube_scheduler()?,
            openssl: paths::on_path("openssl")?,
        })
    }
}

fn start_once() -> Result<ControlPlane> {
    let began = Instant::now();
    let bin = Binaries::find()?;
    let workdir = Workdir::create("controlplane")?;
    let dir = workdir.path().to_owned();
    let mut processes = Vec::new();

    let (mut etcd, etcd_port) = spawn_etcd(&bin, &workdir)?;
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");

    // Keys and tokens, while etcd starts.
    let Credentials { sa_key, sa_pub, tokens, users } = write_credentials(&bin, &dir)?;

    wait_for_port(&mut etcd, SocketAddr::new(LOOPBACK, etcd_port), Duration::from_secs(30))?;
    let mut timings = vec![("etcd", began.elapsed())];
    processes.push(etcd);

    // kube-apiserver
    let cert_dir = workdir.subdir("apiserver-certs")?;
    let api_port = free_port(LOOPBACK)?;
    // Every write request, and every read of Secrets and ConfigMaps, is recorded with its user and user agent, so
    // tests can count what a client changed and see how it reads those.
    let audit_policy = dir.join("audit-policy.yaml");
    std::fs::write(&audit_policy, crate::audit::POLICY)
        .with_context(|| format!("failed to write {}", audit_policy.display()))?;
    let audit_log = dir.join("audit.log");
    let apiserver_builder = ProcessBuilder::new("kube-apiserver", &bin.apiserver)
        .arg(format!("--etcd-servers={etcd_url}"))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={api_port}"))
        .arg("--insecure-port=0")
        .arg(format!("--cert-dir={}", cert_dir.display()))
        .arg(format!("--token-auth-file={}", tokens.display()))
        .arg("--authorization-mode=RBAC")
        .arg(format!("--service-account-key-file={}", sa_pub.display()))
        .arg(format!("--service-account-signing-key-file={}", sa_key.display()))
        .arg("--service-account-issuer=https://kubernetes.default.svc")
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        .arg("--allow-privileged=true")
        .arg("--profiling=false")
        .arg(format!("--audit-policy-file={}", audit_policy.display()))
        .arg(format!("--audit-log-path={}", audit_log.display()))
        .arg("--audit-log-format=json")
        .arg("--audit-log-maxsize=0")
        .grace(Duration::from_secs(5));
    let mut apiserver = apiserver_builder.spawn(&workdir)?;
    let ca_cert = cert_dir.join("apiserver.crt");
    let wait_api = wait_for_port(&mut apiserver, SocketAddr::new(LOOPBACK, api_port), READY_TIMEOUT);
    processes.push(apiserver);
    wait_api?;
    timings.push(("apiserver listening", began.elapsed()));
    if !ca_cert.is_file() {
        bail!("kube-apiserver listens but wrote no {}", ca_cert.display());
    }

    let server_url = format!("https://127.0.0.1:{api_port}");
    let kubeconfig = dir.join("kubeconfig.yaml");
    let ca_path = serde_json::json!({ "certificate-authority": ca_cert });
    for user in &users {
        let path = if user.name == ADMIN_USER {
            kubeconfig.clone()
        } else {
            dir.join(format!("kubeconfig-{}.yaml", sanitize(&user.name)))
        };
        std::fs::write(&path, kubeconfig_yaml(&server_url, &ca_path, &user.name, &user.token))?;
    }

    // kube-controller-manager and kube-scheduler retry until the API server is ready.
    processes.extend(spawn_controllers(&bin, &workdir, &kubeconfig, &sa_key, &ca_cert)?);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let config = runtime.block_on(async {
        let kubeconfig = Kubeconfig::read_from(&kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        wait_until_usable(&config, &mut processes, began, &mut timings).await?;
        anyhow::Ok(config)
    });
    drop(runtime);
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            let mut message = format!("{e:#}");
            for p in &processes {
                let _ = write!(message, "\n--- last lines of {}:\n{}", p.log_path().display(), p.log_tail(15));
            }
            // Dropping `processes` and `workdir` stops and removes everything.
            bail!("{message}");
        }
    };

    let started_in = began.elapsed();
    let stages = timings.iter().map(|(stage, at)| format!("{stage} {at:.1?}")).collect::<Vec<_>>().join(", ");
    eprintln!(
        "tsdb-testenv: control plane ready in {started_in:.1?} ({stages}) at {server_url} (workdir {})",
        dir.display()
    );
    tracing::info!(?started_in, server = %server_url, workdir = %dir.display(), "control plane ready");
    Ok(ControlPlane {
        server_url,
        kubeconfig,
        ca_cert,
        users,
        config,
        started_in,
        processes: Mutex::new(processes),
        apiserver: apiserver_builder,
        apiserver_addr: SocketAddr::new(LOOPBACK, api_port),
        apiserver_restarts: AtomicUsize::new(0),
        workdir,
    })
}

fn spawn_etcd(bin: &Binaries, workdir: &Workdir) -> Result<(Supervised, u16)> {
    let data = workdir.fast_subdir("etcd")?;
    let port = free_port(LOOPBACK)?;
    let peer_port = free_port(LOOPBACK)?;
    let url = format!("http://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let etcd = ProcessBuilder::new("etcd", &bin.etcd)
        .arg("--name=testenv")
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls={url}"))
        .arg(format!("--advertise-client-urls={url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=testenv={peer_url}"))
        .arg("--snapshot-count=100000")
        .grace(Duration::from_secs(5))
        .spawn(workdir)?;
    Ok((etcd, port))
}

struct Credentials {
    sa_key: PathBuf,
    sa_pub: PathBuf,
    tokens: PathBuf,
    users: Vec<TestUser>,
}

/// The service-account key pair (`openssl` CLI) and the static token file.
fn write_credentials(bin: &Binaries, dir: &Path) -> Result<Credentials> {
    let sa_key = dir.join("sa.key");
    let sa_pub = dir.join("sa.pub");
    run(Command::new(&bin.openssl).args(["genrsa", "-out"]).arg(&sa_key).arg("2048"))?;
    run(Command::new(&bin.openssl).args(["rsa", "-pubout", "-in"]).arg(&sa_key).arg("-out").arg(&sa_pub))?;
    let users = vec![
        TestUser { name: ADMIN_USER.into(), token: random_hex(24), groups: vec!["system:masters".into()] },
        TestUser { name: ALICE_USER.into(), token: random_hex(24), groups: vec![] },
        TestUser {
            name: OPERATOR_SA_USER.into(),
            token: random_hex(24),
            groups: vec!["system:serviceaccounts".into(), "system:serviceaccounts:tsdb-system".into()],
        },
    ];
    let tokens = dir.join("tokens.csv");
    std::fs::write(&tokens, token_file(&users))?;
    Ok(Credentials { sa_key, sa_pub, tokens, users })
}

fn spawn_controllers(
    bin: &Binaries,
    workdir: &Workdir,
    kubeconfig: &Path,
    sa_key: &Path,
    ca_cert: &Path,
) -> Result<[Supervised; 2]> {
    let controller_manager = ProcessBuilder::new("kube-controller-manager", &bin.controller_manager)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--leader-elect=false")
        .arg(format!("--service-account-private-key-file={}", sa_key.display()))
        .arg(format!("--root-ca-file={}", ca_cert.display()))
        .arg("--bind-address=127.0.0.1")
        .arg("--secure-port=0")
        .arg("--port=0")
        .arg("--profiling=false")
        .grace(Duration::from_secs(5))
        .spawn(workdir)?;
    let scheduler = ProcessBuilder::new("kube-scheduler", &bin.scheduler)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--leader-elect=false")
        .arg("--bind-address=127.0.0.1")
        .arg("--secure-port=0")
        .arg("--port=0")
        .arg("--profiling=false")
        .grace(Duration::from_secs(5))
        .spawn(workdir)?;
    Ok([controller_manager, scheduler])
}

/// Waits for `/readyz`, the `default` namespace and the `default` service account's token.
async fn wait_until_usable(
    config: &kube::Config,
    processes: &mut [Supervised],
    began: Instant,
    timings: &mut Vec<(&'static str, Duration)>,
) -> Result<()> {
    let client = kube::Client::try_from(config.clone())?;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut last_error = String::new();
    let mut stage = "/readyz";
    loop {
        for p in processes.iter_mut() {
            p.check_running()?;
        }
        let ready = match stage {
            "/readyz" => {
                let request = http::Request::get("/readyz").body(Vec::new())?;
                match client.request_text(request).await {
                    Ok(body) if body.trim() == "ok" => true,
                    Ok(body) => {
                        last_error = body;
                        false
                    }
                    Err(e) => {
                        last_error = e.to_string();
                        false
                    }
                }
            }
            "namespace default" => match Api::<Namespace>::all(client.clone()).get_opt("default").await {
                Ok(found) => found.is_some(),
                Err(e) => {
                    last_error = e.to_string();
                    false
                }
            },
            _ => {
                wait_for_service_account_token(&client, "default", "default", deadline - tokio::time::Instant::now())
                    .await?;
                timings.push(("controller-manager", began.elapsed()));
                return Ok(());
            }
        };
        if ready {
            timings.push((if stage == "/readyz" { "readyz" } else { "default namespace" }, began.elapsed()));
            stage = if stage == "/readyz" { "namespace default" } else { "service account default/default" };
            continue;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the control plane was not ready within {READY_TIMEOUT:?} (waiting for {stage}: {last_error})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn run(command: &mut Command) -> Result<()> {
    let output = command.output().with_context(|| format!("failed to run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

/// `token,user,uid,"group1,group2"` lines.
fn token_file(users: &[TestUser]) -> String {
    users.iter().fold(String::new(), |mut out, u| {
        let uid = format!("{}-uid", sanitize(&u.name));
        if u.groups.is_empty() {
            let _ = writeln!(out, "{},{},{uid}", u.token, u.name);
        } else {
            let _ = writeln!(out, "{},{},{uid},\"{}\"", u.token, u.name, u.groups.join(","));
        }
        out
    })
}

/// A kubeconfig for `server`; `ca` is the cluster entry's CA field (`certificate-authority` with a path or
/// `certificate-authority-data`).
fn kubeconfig_yaml(server: &str, ca: &serde_json::Value, user: &str, token: &str) -> String {
    let mut cluster = serde_json::json!({ "server": server });
    if let (Some(c), Some(ca)) = (cluster.as_object_mut(), ca.as_object()) {
        c.extend(ca.clone());
    }
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "testenv", "cluster": cluster }],
        "users": [{ "name": user, "user": { "token": token } }],
        "contexts": [{ "name": "testenv", "context": { "cluster": "testenv", "user": user, "namespace": "default" } }],
        "current-context": "testenv",
    });
    serde_yaml::to_string(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_quotes_groups_and_omits_an_empty_group_column() {
        let users = vec![
            TestUser { name: "admin".into(), token: "t1".into(), groups: vec!["system:masters".into()] },
            TestUser { name: "alice".into(), token: "t2".into(), groups: vec![] },
            TestUser { name: "sa".into(), token: "t3".into(), groups: vec!["a".into(), "b".into()] },
        ];
        assert_eq!(
            token_file(&users),
            "t1,admin,admin-uid,\"system:masters\"\nt2,alice,alice-uid\nt3,sa,sa-uid,\"a,b\"\n"
        );
    }

    #[test]
    fn kubeconfig_is_readable_by_kube() {
        let yaml = kubeconfig_yaml(
            "https://127.0.0.1:6443",
            &serde_json::json!({"certificate-authority": "/tmp/ca.crt"}),
            "alice",
            "tok",
        );
        let parsed = Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("testenv"));
        assert_eq!(parsed.clusters[0].cluster.as_ref().unwrap().server.as_deref(), Some("https://127.0.0.1:6443"));
    }
}
