//! Backups interrupted in the middle of their upload: the S3 server frozen and then stopped, the S3 server down
//! or hanging for a few seconds, the agent killed, the operator killed. Real Prometheus pods (process kubelet), the real agent sidecar and operator, s3s-fs.
//!
//! Each cluster starts from a seed backup of about 13 MB of pseudo-random samples in one block (so its first
//! backup uploads a chunk file as a multipart upload), and the pods reach the S3 server through a forwarder
//! slowed down to 1 MiB/s while the fault is injected: the upload is really on the wire when it happens.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use serde_json::json;
use support::backup::*;
use support::*;
use tokio::sync::OnceCell;
use tsdb_operator_adapters::backup::store::Store;
use tsdb_operator_core::backup::manifest::Layout;
use tsdb_operator_core::crd::Phase;

const READY: Duration = Duration::from_mins(3);
const SEED_ID: &str = "20200101T000000Z";
/// Bandwidth of the forwarder while a fault is injected.
const SLOW: u64 = 1 << 20;
/// Arguments of every operator of these tests: a tick of 1 s, leftovers collected at the next success.
const OPERATOR_ARGS: [&str; 2] = ["--backup-tick-seconds=1", "--backup-gc-grace=0s"];
/// The agent's retry budget of one request (`Tuning::default().retry_budget`).
const RETRY_BUDGET: Duration = Duration::from_mins(1);

/// The seed blocks, made once per test binary: 1,000 series x 1,500 pseudo-random samples, one block.
async fn seed_blocks() -> Result<&'static std::path::Path> {
    static SEED: OnceCell<std::path::PathBuf> = OnceCell::const_new();
    let dir = SEED
        .get_or_try_init(|| async {
            let work = env().workdir.subdir("bulky-seed")?;
            let (input, blocks) = (work.join("input.om"), work.join("blocks"));
            let end = now_secs() - 3600;
            tokio::task::spawn_blocking(move || {
                bulky_samples(&input, 1000, 1500, end)?;
                promtool_blocks(&input, &blocks, &["--max-block-duration=24h"])?;
                std::fs::remove_file(&input)?;
                anyhow::Ok(blocks)
            })
            .await?
        })
        .await?;
    Ok(dir.as_path())
}

/// One test's world: its own S3 server, forwarder, namespace and operator, and the cluster `src` restored from the
/// bulky seed with backups on, Active.
struct World {
    env: BackupEnv,
    ns: String,
    store: Store,
    layout: Layout,
}

impl World {
    async fn start(label: &str) -> Result<Self> {
        let env = BackupEnv::start(label, &OPERATOR_ARGS).await?;
        let ns = env.ns.clone();
        let store = s3_store(&env.s3, PREFIX)?;
        upload_seed(&store, &Layout::new(PREFIX, &ns, "seed"), seed_blocks().await?, SEED_ID).await?;
        apply_cluster(&ns, &env.cluster_yaml("src", Some(json!({})), Some(("seed", SEED_ID)))).await?;
        wait_phase(&ns, "src", Phase::Active, 1, READY).await?;
        let layout = Layout::new(PREFIX, &ns, "src");
        Ok(Self { env, ns, store, layout })
    }

    /// Requests a backup through the slowed-down forwarder and waits until 2 MiB of it went over the wire.
    async fn slow_backup(&self, token: &str) -> Result<(String, String)> {
        self.env.fwd.throttle.set(SLOW);
        request_backup(&self.ns, "src", token).await?;
        wait_uploading(&self.env.fwd, &self.ns, "src", 2 << 20, Duration::from_mins(1)).await
    }

    /// Whether the S3 server's directory holds the manifest of `id` (works while the server is down).
    fn manifest_on_disk(&self, id: &str) -> bool {
        self.env.s3.data_dir().join(self.env.s3.bucket()).join(self.layout.full(&Layout::manifest_key(id))).exists()
    }

    /// Backup `id` is neither listed nor verifiable nor restorable.
    fn assert_not_a_backup(&self, id: &str) -> Result<()> {
        let cluster = format!("{}/src", self.ns);
        let listed = listed_backups(&self.env.s3, &self.ns, "src")?;
        ensure!(listed.iter().all(|l| !l.contains(id)), "the interrupted backup {id} is listed: {listed:?}");
        let verify = tsdb_ctl(&self.env.s3, &["verify", "--cluster", &cluster, "--backup", id])?;
        ensure!(!verify.status.success(), "verify of the interrupted backup {id} succeeded");
        let dest = env().workdir.subdir(&format!("{}-restore-{id}", self.ns))?;
        let restore = tsdb_ctl(
            &self.env.s3,
            &["restore", "--cluster", &cluster, "--backup", id, "--dest", &dest.to_string_lossy()],
        )?;
        ensure!(!restore.status.success(), "restore of the interrupted backup {id} succeeded");
        ensure!(walk(&dest).is_empty(), "a failed restore wrote {:?}", walk(&dest));
        Ok(())
    }

    /// No snapshot directory in the pod's data volume.
    async fn assert_no_snapshot_left(&self) -> Result<()> {
        let data = pod_data_dir(&self.ns, "src-0").await?;
        eventually("the snapshot directory to be removed", Duration::from_secs(20), || {
            let data = data.clone();
            async move {
                let left = snapshot_dirs(&data);
                ensure!(left.is_empty(), "snapshot directories left: {left:?}");
                Ok(Some(()))
            }
        })
        .await
    }
}

/// Frozen and then stopped S3 in the middle of an upload: the backup fails with `StorageFailed` within the
/// retry budget, writes no manifest, leaves no snapshot; the next run succeeds and its retention removes what the
/// failed one uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_fails_with_storage_failed_when_s3_stops_mid_upload_and_the_next_one_succeeds() -> Result<()> {
    let w = World::start("fault-s3").await?;
    let (id, _) = w.slow_backup("one").await?;

    w.env.s3.freeze()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.env.s3.stop()?;
    let stopped = Instant::now();
    let pid = w.env.op.process.pid();
    let (connections, cpu) = (w.env.fwd.connections(), cpu_ticks(pid)?);
    w.env.fwd.throttle.set(0);
    let failed = wait_request_done(&w.ns, "src", "one", RETRY_BUDGET + Duration::from_secs(30)).await?;
    let took = stopped.elapsed();
    let tries = w.env.fwd.connections() - connections;
    #[allow(clippy::cast_precision_loss)] // small counts
    let (rate, cpu_share) =
        (tries as f64 / took.as_secs_f64(), (cpu_ticks(pid)? - cpu) as f64 / 100.0 / took.as_secs_f64());
    eprintln!("MEASURE S3 stopped mid-upload -> backup recorded as failed: {took:?}: {:?}", failed.last_backup_error);
    eprintln!(
        "MEASURE during the outage: {tries} connections to S3 ({rate:.2}/s), operator CPU {:.2}% of a core",
        cpu_share * 100.0
    );
    // No spin: the retries back off (200 ms doubling to 10 s per request, a few requests in flight), and the
    // operator only follows the job once a tick.
    ensure!(rate < 5.0, "{tries} connections to S3 in {took:?} during the outage");
    ensure!(cpu_share < 0.05, "the operator used {:.1}% of a core during the outage", cpu_share * 100.0);
    let error = failed.last_backup_error.clone().unwrap_or_default();
    ensure!(error.starts_with("StorageFailed"), "backup with S3 stopped mid-upload: {failed:?}");
    ensure!(took < RETRY_BUDGET, "the failure took {took:?}, more than the retry budget");
    ensure!(failed.last_successful_backup_time.is_none(), "{failed:?}");
    ensure!(!w.manifest_on_disk(&id), "a manifest was written for the failed backup {id}");
    let cond = condition(&w.ns, "src", "BackupHealthy").await?;
    ensure!(cond.as_ref().is_some_and(|c| c.status == "False" && c.reason == "StorageFailed"), "{cond:?}");
    w.assert_no_snapshot_left().await?;

    w.env.s3.restart()?;
    let partial = w.store.list(w.layout.root()).await?;
    ensure!(!partial.is_empty(), "the interrupted upload stored nothing: the fault came too early");
    w.assert_not_a_backup(&id)?;
    let next_id = successful_backup(&w.ns, "src", "two").await?;
    let complete = only_referenced_objects(&w.store, &w.layout).await?;
    ensure!(complete == [next_id.clone()], "complete backups: {complete:?}");
    let verify = tsdb_ctl(&w.env.s3, &["verify", "--cluster", &format!("{}/src", w.ns), "--backup", &next_id])?;
    ensure!(verify.status.success(), "verify: {}", String::from_utf8_lossy(&verify.stderr));
    Ok(())
}

/// A short S3 outage in the middle of an upload, well inside the retry budget: the server stopped (SIGKILL) for
/// 5 s. The agent's retries carry the upload through and the backup completes. It is recorded as a success, with no
/// failure, verifies, and leaves no snapshot behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_s3_outage_mid_upload_is_retried_and_the_backup_completes() -> Result<()> {
    short_outage("fault-s3-short", Outage::Stopped).await
}

/// The same with the server hanging (SIGSTOP) for 5 s instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_s3_hang_mid_upload_is_ridden_out_and_the_backup_completes() -> Result<()> {
    short_outage("fault-s3-hang", Outage::Frozen).await
}

#[derive(Debug, Clone, Copy)]
enum Outage {
    Stopped,
    Frozen,
}

/// One multipart upload through 5 s of `outage`: the backup completes.
async fn short_outage(label: &str, outage: Outage) -> Result<()> {
    let w = World::start(label).await?;
    let (id, _) = w.slow_backup("one").await?;
    match outage {
        Outage::Stopped => w.env.s3.stop()?,
        Outage::Frozen => w.env.s3.freeze()?,
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    match outage {
        Outage::Stopped => w.env.s3.restart()?,
        Outage::Frozen => w.env.s3.thaw()?,
    }
    let back = Instant::now();
    w.env.fwd.throttle.set(0);
    let done = wait_request_done(&w.ns, "src", "one", RETRY_BUDGET + Duration::from_secs(30)).await?;
    eprintln!("MEASURE S3 back after 5 s {outage:?} mid-upload -> backup recorded: {:?}", back.elapsed());
    ensure!(
        done.last_backup_id.as_deref() == Some(id.as_str())
            && done.last_backup_error.is_none()
            && done.last_failed_backup_time.is_none()
            && done.last_successful_backup_time.is_some(),
        "the backup through 5 s of S3 {outage:?} did not complete: {done:?}"
    );
    ensure!(w.manifest_on_disk(&id), "no manifest for the completed backup {id}");
    let cond = condition(&w.ns, "src", "BackupHealthy").await?;
    ensure!(cond.as_ref().is_some_and(|c| c.status == "True"), "{cond:?}");
    let verify = tsdb_ctl(&w.env.s3, &["verify", "--cluster", &format!("{}/src", w.ns), "--backup", &id])?;
    ensure!(verify.status.success(), "verify: {}", String::from_utf8_lossy(&verify.stderr));
    w.assert_no_snapshot_left().await
}

/// The agent SIGKILLed in the middle of an upload: the operator records `AgentLost`, the interrupted backup is
/// never listed, verified or restored, the restarted agent removes the snapshot, and the next backup succeeds
/// and collects the leftovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_mid_upload_is_recorded_as_agent_lost_and_leaves_no_backup() -> Result<()> {
    let w = World::start("fault-agent").await?;
    let (id, pod) = w.slow_backup("one").await?;
    let agent_pid = env().kubelet.faults().pid(&w.ns, &pod, "agent").context("agent pid")?;
    env().kubelet.faults().kill(&w.ns, &pod, "agent")?;
    w.env.fwd.throttle.set(0);

    let lost = wait_request_done(&w.ns, "src", "one", Duration::from_mins(1)).await?;
    let error = lost.last_backup_error.clone().unwrap_or_default();
    ensure!(error.starts_with("AgentLost"), "backup with the agent killed: {lost:?}");
    let restarted = env().kubelet.faults().pid(&w.ns, &pod, "agent");
    ensure!(restarted.is_some_and(|p| p != agent_pid), "the agent was not restarted: {restarted:?}");
    let cond = condition(&w.ns, "src", "BackupHealthy").await?;
    ensure!(cond.as_ref().is_some_and(|c| c.status == "False" && c.reason == "AgentLost"), "{cond:?}");
    ensure!(!w.manifest_on_disk(&id), "a manifest was written for the interrupted backup {id}");
    let partial = w.store.list(w.layout.root()).await?;
    ensure!(!partial.is_empty(), "the interrupted upload stored nothing: the fault came too early");
    w.assert_not_a_backup(&id)?;
    w.assert_no_snapshot_left().await?;

    let next_id = successful_backup(&w.ns, "src", "two").await?;
    let complete = only_referenced_objects(&w.store, &w.layout).await?;
    ensure!(complete == [next_id], "complete backups: {complete:?}");
    w.assert_not_a_backup(&id)?;
    Ok(())
}

/// The operator SIGKILLed in the middle of an upload and started again: it follows the job recorded in
/// `status.backup.running` instead of starting another, and records its outcome once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_follows_the_running_backup_and_records_it_once() -> Result<()> {
    let mut w = World::start("fault-operator").await?;
    let (id, pod) = w.slow_backup("one").await?;
    // The start event is written in the background; wait for it so that the kill does not lose it.
    eventually("the BackupStarted event", Duration::from_secs(20), || async {
        Ok((!events(&w.ns, "src", "BackupStarted").await?.is_empty()).then_some(()))
    })
    .await?;
    w.env.op.process.kill()?;
    let listed = listed_backups(&w.env.s3, &w.ns, "src")?;
    ensure!(listed.is_empty(), "a running backup is listed: {listed:?}");
    let job = agent_job(&w.ns, "src", &pod, &id).await?.context("the agent lost the job")?;
    ensure!(job["state"] == "Running", "the job finished while the operator was down: {job}");

    w.env.op = Operator::start(Some(&w.ns), &OPERATOR_ARGS)?;
    w.env.fwd.throttle.set(0);
    let done = wait_request_done(&w.ns, "src", "one", Duration::from_mins(2)).await?;
    ensure!(done.last_backup_error.is_none(), "the followed backup failed: {done:?}");
    ensure!(done.last_backup_id.as_deref() == Some(id.as_str()), "another backup was recorded: {done:?}");
    let jobs = agent_get(&w.ns, "src", &pod, "/backup").await?.context("no job list")?;
    let ids: Vec<&str> = jobs.as_array().into_iter().flatten().filter_map(|j| j["id"].as_str()).collect();
    ensure!(ids == [id.as_str()], "the agent ran {ids:?}");
    let complete = only_referenced_objects(&w.store, &w.layout).await?;
    ensure!(complete == [id.clone()], "complete backups: {complete:?}");
    // Recorded once: one start, one success, no failure; the new operator counted it once.
    let count = |reason: &'static str| {
        let ns = w.ns.clone();
        async move { anyhow::Ok(events(&ns, "src", reason).await?.iter().map(|e| e.count.unwrap_or(1)).sum::<i32>()) }
    };
    eventually("the BackupSucceeded event", Duration::from_secs(20), || async {
        Ok((count("BackupSucceeded").await? > 0).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (started, succeeded, failed) =
        (count("BackupStarted").await?, count("BackupSucceeded").await?, count("BackupFailed").await?);
    ensure!(
        (started, succeeded, failed) == (1, 1, 0),
        "events started/succeeded/failed: {started}/{succeeded}/{failed}"
    );
    let metrics = w.env.op.metrics().await?;
    let needle = format!("tsdb_operator_backup_total{{namespace=\"{}\",cluster=\"src\",result=\"success\"}} 1", w.ns);
    ensure!(metrics.contains(&needle), "metrics lack {needle}");
    // (The error counter starts at 0, so that a first failure is an increase alerts see.)
    let errors = format!("tsdb_operator_backup_total{{namespace=\"{}\",cluster=\"src\",result=\"error\"}}", w.ns);
    let failures = metric_sum(&metrics, &errors);
    ensure!(failures < 0.5, "a failure was counted ({failures})");
    Ok(())
}

/// Fault row 22: the S3 credentials Secret rotated between backups. Wrong credentials fail the next backup with
/// `StorageFailed` and the S3 server's refusal in the message, and nothing retries on its own meanwhile; the
/// Secret put right is used by the next backup, with no restart of the pod, its containers or the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_s3_credentials_apply_to_the_next_backup_without_a_restart() -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::Api;
    use kube::api::{Patch, PatchParams};
    let mut env = BackupEnv::start("s3-rotate", &OPERATOR_ARGS).await?;
    let ns = env.ns.clone();
    apply_cluster(&ns, &env.cluster_yaml("src", Some(json!({})), None)).await?;
    wait_phase(&ns, "src", Phase::Active, 1, READY).await?;
    let pod_before = pods(&ns, "src").await?.remove(0);
    successful_backup(&ns, "src", "first").await?;

    let secrets: Api<Secret> = Api::namespaced(client(), &ns);
    let set_secret_key = |key: String| {
        let secrets = secrets.clone();
        async move {
            let patch = json!({"stringData": {"AWS_SECRET_ACCESS_KEY": key}});
            secrets.patch("s3-creds", &PatchParams::default(), &Patch::Merge(&patch)).await?;
            anyhow::Ok(())
        }
    };
    set_secret_key("not-the-secret-key".to_owned()).await?;
    // The kubelet refreshes the mounted Secret on its own schedule: ask until a backup sees the new key.
    let mut attempt = 0;
    let failed = eventually("a backup to fail with the wrong key", Duration::from_mins(2), || {
        attempt += 1;
        let (ns, token) = (ns.clone(), format!("wrong-{attempt}"));
        async move {
            let b = backup_now(&ns, "src", &token).await?;
            let failed_last =
                b.last_failed_backup_time.as_ref().map(|t| t.0) > b.last_successful_backup_time.as_ref().map(|t| t.0);
            Ok(failed_last.then_some(b))
        }
    })
    .await?;
    let error = failed.last_backup_error.clone().unwrap_or_default();
    eprintln!("wrong S3 key: {error}");
    let healthy = condition(&ns, "src", "BackupHealthy").await?.context("BackupHealthy")?;
    ensure!(healthy.status == "False" && healthy.reason == "StorageFailed", "{healthy:?}");
    ensure!(!error.is_empty(), "the failure says why");
    // Nothing retries on its own: no traffic to S3 for 15 s without a request.
    let bytes = env.fwd.upstream_bytes();
    tokio::time::sleep(Duration::from_secs(15)).await;
    ensure!(env.fwd.upstream_bytes() == bytes, "no request to S3 while no backup is asked for");

    set_secret_key(env.s3.secret_key().to_owned()).await?;
    backups_until_one_succeeds(&ns, "src", "fixed").await?;
    healthy_on_the_same_pod(&ns, "src", &pod_before).await?;
    ensure!(env.op.process.is_running(), "the operator was not restarted");
    Ok(())
}

/// Asks for backups of `name` (request tokens `<label>-1`, `-2`, ...) until one succeeds; how many were asked.
async fn backups_until_one_succeeds(ns: &str, name: &str, label: &str) -> Result<usize> {
    let mut attempt = 0;
    eventually(&format!("a backup to succeed ({label})"), Duration::from_mins(2), || {
        attempt += 1;
        let (ns, name, token) = (ns.to_owned(), name.to_owned(), format!("{label}-{attempt}"));
        async move {
            let b = backup_now(&ns, &name, &token).await?;
            let succeeded_last = b.last_successful_backup_time.as_ref().map(|t| t.0)
                >= b.last_failed_backup_time.as_ref().map(|t| t.0)
                && b.last_request.as_deref() == Some(token.as_str());
            Ok(succeeded_last.then_some(()))
        }
    })
    .await?;
    Ok(attempt)
}

/// `BackupHealthy=True`, and the cluster's pod is still `before` with no container restarted; the pod.
async fn healthy_on_the_same_pod(
    ns: &str,
    name: &str,
    before: &k8s_openapi::api::core::v1::Pod,
) -> Result<k8s_openapi::api::core::v1::Pod> {
    let healthy = condition(ns, name, "BackupHealthy").await?.context("BackupHealthy")?;
    ensure!(healthy.status == "True", "{healthy:?}");
    let pod = pods(ns, name).await?.remove(0);
    ensure!(pod.metadata.uid == before.metadata.uid, "the pod was not replaced");
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref());
    let restarts: i32 = statuses.map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum());
    ensure!(restarts == 0, "no container restarted");
    Ok(pod)
}

/// Fault row 22, the agent token rotated on real parts: after a good backup the cluster's `<name>-agent-token`
/// Secret gets a new token; backups keep working with it (the operator reads the Secret again when the agent refuses
/// the token it had, the agent reads the mounted file at each request), the old token is refused by the agent, and
/// neither the pod nor the operator is restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_agent_token_is_used_by_the_next_backup_and_the_old_one_is_refused() -> Result<()> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use kube::Api;
    use kube::api::{Patch, PatchParams};
    let mut env = BackupEnv::start("agent-token-rotate", &OPERATOR_ARGS).await?;
    let ns = env.ns.clone();
    apply_cluster(&ns, &env.cluster_yaml("src", Some(json!({})), None)).await?;
    wait_phase(&ns, "src", Phase::Active, 1, READY).await?;
    let pod_before = pods(&ns, "src").await?.remove(0);
    let first = successful_backup(&ns, "src", "first").await?;

    let secrets: Api<Secret> = Api::namespaced(client(), &ns);
    let token_of = |secret: &Secret| {
        let bytes = secret.data.as_ref().and_then(|d| d.get(tsdb_operator_core::backup::protocol::TOKEN_KEY));
        bytes.map(|b| String::from_utf8_lossy(&b.0).trim().to_owned()).unwrap_or_default()
    };
    let old = token_of(&secrets.get("src-agent-token").await?);
    ensure!(!old.is_empty(), "the operator made the agent token");
    let new = format!("rotated-{}", tsdb_operator_testenv::process::random_hex(16));
    let patch = json!({"data": {"token": ByteString(new.clone().into_bytes())}});
    secrets.patch("src-agent-token", &PatchParams::default(), &Patch::Merge(&patch)).await?;

    // The kubelet refreshes the mounted Secret on its own schedule: a backup asked before that may fail; ask until
    // one succeeds with the new token.
    let attempt = backups_until_one_succeeds(&ns, "src", "rotated").await?;
    eprintln!("backups after the rotation: {attempt} asked");
    ensure!(token_of(&secrets.get("src-agent-token").await?) == new, "the operator kept the rotated token");

    // The agent itself: the old token is refused, the new one accepted.
    let pod = healthy_on_the_same_pod(&ns, "src", &pod_before).await?;
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).context("pod IP")?;
    let url = format!("http://{ip}:{}/backup/{first}", tsdb_operator_core::constants::ports::AGENT);
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?;
    let with = |token: String| {
        let (http, url) = (http.clone(), url.clone());
        async move { anyhow::Ok(http.get(&url).bearer_auth(token).send().await?.status().as_u16()) }
    };
    ensure!(with(old).await? == 401, "the old token is refused");
    let answer = with(new).await?;
    ensure!(answer != 401 && answer != 503, "the new token is accepted: {answer}");

    ensure!(env.op.process.is_running(), "the operator was not restarted");
    Ok(())
}
