//! Backups end to end: real Prometheus pods (process kubelet) with known series, the real agent sidecar, the
//! s3s-fs S3 server, the operator's scheduler, `tsdb-ctl` and the declarative restore init container.
//!
//! The source cluster is itself created from a seed backup (blocks made by `promtool` from known samples), so its
//! data has persistent blocks: that is what makes the incremental case measurable. Pods reach the S3 server,
//! which listens on loopback, through a TCP forwarder on the pod bridge's host address.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use kube::Api;
use serde_json::json;
use support::backup::*;
use support::*;
use tsdb_operator_core::backup::manifest::Layout;
use tsdb_operator_core::crd::{Phase, PrometheusCluster};
use tsdb_operator_testenv::paths::{self, PrometheusMajor};
use tsdb_operator_testenv::process::{ProcessBuilder, free_port};
use tsdb_operator_testenv::s3::S3Server;

const READY: Duration = Duration::from_mins(3);
const SERIES: u64 = 2000;
const SAMPLES: u64 = 120;

/// From outside the pod (this test runs in the host's network namespace, the pod in its own): the admin and
/// lifecycle APIs are refused on the Prometheus port in every spelling, Prometheus' own loopback listener is not
/// reachable, and queries and federation work. Prometheus is still up afterwards.
async fn admin_and_lifecycle_apis_are_refused_from_outside(pod_ip: &str) -> Result<()> {
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
    let base = format!("http://{pod_ip}:9090");
    for (method, path) in [
        (reqwest::Method::POST, "/api/v1/admin/tsdb/snapshot"),
        (reqwest::Method::PUT, "/api/v1/admin/tsdb/snapshot"),
        (reqwest::Method::POST, "/api/v1/admin/tsdb/delete_series?match[]=up"),
        (reqwest::Method::POST, "/api/v1/admin/tsdb/clean_tombstones"),
        (reqwest::Method::POST, "/-/quit"),
        (reqwest::Method::PUT, "/-/quit"),
        (reqwest::Method::POST, "/-/reload"),
        (reqwest::Method::POST, "//api/v1/admin/tsdb/snapshot"),
        (reqwest::Method::POST, "/api/v1/%61dmin/tsdb/snapshot"),
        (reqwest::Method::POST, "/api/v1/query/../admin/tsdb/snapshot"),
    ] {
        let status = http.request(method.clone(), format!("{base}{path}")).send().await?.status();
        ensure!(status == reqwest::StatusCode::FORBIDDEN, "{method} {path} from outside the pod: {status}");
    }
    let direct =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((pod_ip.parse::<IpAddr>()?, 9089)))
            .await;
    ensure!(!matches!(direct, Ok(Ok(_))), "Prometheus' own port 9089 is reachable from outside the pod");
    // Federation (the pod may not have scraped itself yet).
    eventually("federation to return the up series", Duration::from_secs(30), || {
        let (http, url) = (http.clone(), format!("{base}/federate?match[]=up"));
        async move {
            let resp = http.get(url).send().await?;
            ensure!(resp.status().is_success(), "federation: {}", resp.status());
            Ok(resp.text().await?.contains("up{").then_some(()))
        }
    })
    .await?;
    let ready = http.get(format!("{base}/-/ready")).send().await?.status();
    ensure!(ready.is_success(), "Prometheus is still ready after the refused /-/quit: {ready}");
    Ok(())
}

/// The known series, checked by count, sample count and sum of values at `end + 1`.
async fn known_data(addr: &str, end: u64) -> Result<(u64, u64, u64)> {
    let scalar = |v: serde_json::Value| -> Result<u64> {
        let s = v[0]["value"][1].as_str().with_context(|| format!("no value in {v}"))?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // small whole numbers
        Ok(s.parse::<f64>()? as u64)
    };
    let window = format!("{}m", SAMPLES + 10);
    Ok((
        scalar(query(addr, &format!("count(last_over_time(backup_test[{window}]))"), end + 1).await?)?,
        scalar(query(addr, &format!("sum(count_over_time(backup_test[{window}]))"), end + 1).await?)?,
        scalar(query(addr, &format!("sum(sum_over_time(backup_test[{window}]))"), end + 1).await?)?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one story: seed, back up twice, restore three ways, break things
async fn backups_round_trip_incrementally_and_restore_into_new_clusters() -> Result<()> {
    let env = env();
    let s3 = S3Server::start()?;
    let fwd = Forwarder::to_s3(&s3).await?;
    let endpoint = fwd.endpoint();
    let ns = namespace("backup").await;
    create_credentials(&ns, &s3).await?;

    // A seed backup of known samples, made by promtool, uploaded in the backup format.
    let work = env.workdir.subdir(&format!("{ns}-seed"))?;
    let end = now_secs() - 3600;
    let sum = known_samples(&work.join("input.om"), SERIES, SAMPLES, end)?;
    let blocks_dir = work.join("blocks");
    promtool_blocks(&work.join("input.om"), &blocks_dir, &[])?;
    let store = s3_store(&s3, "tsdb")?;
    upload_seed(&store, &Layout::new("tsdb", &ns, "seed"), &blocks_dir, "20200101T000000Z").await?;

    let op = Operator::start(Some(&ns), &["--backup-tick-seconds=1", "--backup-gc-grace=0s"])?;

    // 1. Declarative restore: `src` starts from the seed backup and holds exactly the known samples.
    apply_cluster(
        &ns,
        &cluster_yaml("src", &endpoint, s3.bucket(), Some(json!({})), Some(("seed", "20200101T000000Z"))),
    )
    .await?;
    wait_phase(&ns, "src", Phase::Active, 1, READY).await?;
    let src_ip = pod_ip_of(&ns, "src-0")?;
    let src_addr = format!("{src_ip}:9090");
    let expected = (SERIES, SERIES * SAMPLES, sum);
    let got = eventually("known samples in src", Duration::from_secs(30), || {
        let a = src_addr.clone();
        async move { Ok(known_data(&a, end).await.ok().filter(|g| *g == expected)) }
    })
    .await?;
    eprintln!("src restored from the seed: (series, samples, sum) = {got:?}");
    admin_and_lifecycle_apis_are_refused_from_outside(&src_ip).await?;

    // 2. Two backups of src; the second reuses the persistent blocks.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let first = backup_now(&ns, "src", "one").await?;
    ensure!(first.last_backup_error.is_none(), "first backup failed: {first:?}");
    let second = backup_now(&ns, "src", "two").await?;
    ensure!(second.last_backup_error.is_none(), "second backup failed: {second:?}");
    let (total1, up1) = (first.last_backup_bytes.unwrap_or(0), first.last_backup_uploaded_bytes.unwrap_or(0));
    let (total2, up2) = (second.last_backup_bytes.unwrap_or(0), second.last_backup_uploaded_bytes.unwrap_or(0));
    eprintln!("backup 1: {total1} bytes, {up1} uploaded; backup 2: {total2} bytes, {up2} uploaded");
    ensure!(up1 == total1, "the first backup uploads everything");
    let seed_bytes: u64 = std::fs::read_dir(&blocks_dir)?
        .flatten()
        .flat_map(|b| walk(&b.path()))
        .filter(|(p, _)| p.contains("/chunks/") || p.ends_with("/index"))
        .map(|(_, s)| s)
        .sum();
    ensure!(
        u64::try_from(total2 - up2)? >= seed_bytes,
        "backup 2 reuses at least the seed blocks' index and chunks ({seed_bytes} bytes): reused {}",
        total2 - up2
    );
    let pc = Api::<PrometheusCluster>::namespaced(client(), &ns).get("src").await?;
    let healthy = pc.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "BackupHealthy")).cloned();
    ensure!(
        healthy.as_ref().is_some_and(|c| c.status == "True"),
        "BackupHealthy: {healthy:?} in {:?} managed {}",
        pc.status,
        serde_json::to_string(&pc.metadata.managed_fields)?
    );
    ensure!(pc.status.as_ref().and_then(|s| s.last_backup_time.as_ref()).is_some());
    let metrics = op.metrics().await?;
    for needle in [
        format!("tsdb_operator_backup_total{{namespace=\"{ns}\",cluster=\"src\",result=\"success\"}} 2"),
        "tsdb_operator_backup_last_success_timestamp_seconds".to_owned(),
        "tsdb_operator_backup_duration_seconds".to_owned(),
        "tsdb_operator_backup_bytes".to_owned(),
    ] {
        ensure!(metrics.contains(&needle), "metrics lack {needle}");
    }
    let left = namespace_snapshot_dirs(&ns).await?;
    ensure!(left.is_empty(), "snapshot directories left: {left:?}");

    // 3. tsdb-ctl list and verify; restore into a directory that a real Prometheus loads as is.
    let list = tsdb_ctl(&s3, &["list", "--cluster", &format!("{ns}/src")])?;
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    ensure!(list.status.success() && listed.lines().count() == 2, "list: {listed}");
    let id2 = second.last_backup_id.clone().context("second id")?;
    ensure!(listed.lines().next().is_some_and(|l| l.contains(&id2) && l.contains("Completed")), "{listed}");
    let verify = tsdb_ctl(&s3, &["verify", "--cluster", &format!("{ns}/src")])?;
    ensure!(verify.status.success(), "verify: {}", String::from_utf8_lossy(&verify.stderr));
    let dest = work.join("restored");
    let restore = tsdb_ctl(&s3, &["restore", "--cluster", &format!("{ns}/src"), "--dest", &dest.to_string_lossy()])?;
    ensure!(restore.status.success(), "restore: {}", String::from_utf8_lossy(&restore.stderr));
    let again = tsdb_ctl(&s3, &["restore", "--cluster", &format!("{ns}/src"), "--dest", &dest.to_string_lossy()])?;
    ensure!(!again.status.success(), "a non-empty destination is refused");
    ensure!(String::from_utf8_lossy(&again.stderr).contains("not empty"), "{}", String::from_utf8_lossy(&again.stderr));
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let mut local = ProcessBuilder::new("restored-prometheus", paths::prometheus(PrometheusMajor::V3)?)
        .arg(format!("--storage.tsdb.path={}", dest.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!("--config.file={}", write_empty_config(&work)?.display()))
        .arg("--storage.tsdb.retention.time=30d")
        .spawn(&env.workdir)?;
    let local_addr = format!("127.0.0.1:{port}");
    let got = eventually("known samples in the restored directory", Duration::from_secs(30), || {
        let a = local_addr.clone();
        async move { Ok(known_data(&a, end).await.ok()) }
    })
    .await?;
    local.stop()?;
    ensure!(got == expected, "tsdb-ctl restore: {got:?} != {expected:?}");

    // 4. Declarative restore of the latest backup into a new cluster: same series, same values.
    apply_cluster(&ns, &cluster_yaml("dst", &endpoint, s3.bucket(), None, Some(("src", &id2)))).await?;
    wait_phase(&ns, "dst", Phase::Active, 1, READY).await?;
    let dst_addr = format!("{}:9090", pod_ip_of(&ns, "dst-0")?);
    let got = eventually("known samples in dst", Duration::from_secs(30), || {
        let a = dst_addr.clone();
        async move { Ok(known_data(&a, end).await.ok()) }
    })
    .await?;
    ensure!(got == expected, "declarative restore: {got:?} != {expected:?}");
    // The self-scraped series of src up to the backup are in dst too.
    let t = now_secs() - 1;
    let up_in_src = query(&src_addr, "count(count_over_time(up[10m]))", t).await?;
    let up_in_dst = query(&dst_addr, "count(count_over_time(up[10m]))", t).await?;
    ensure!(up_in_src[0]["value"][1] == up_in_dst[0]["value"][1], "up series: src {up_in_src} dst {up_in_dst}");

    // 4b. dst's pod replaced (fault row 21): the restore init container runs again on the same volume, finds data
    // and leaves it alone; what dst scraped after its restore is still there and nothing was restored twice.
    let pods_api = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client(), &ns);
    let old_pod = pods_api.get("dst-0").await?;
    let scraped = |addr: String| async move {
        let t = now_secs();
        let v = query(&addr, "sum(count_over_time(up[1h]))", t).await?;
        anyhow::Ok(v[0]["value"][1].as_str().and_then(|x| x.parse::<f64>().ok()).unwrap_or_default())
    };
    let before = eventually("dst to scrape after its restore", Duration::from_secs(30), || async {
        let n = scraped(dst_addr.clone()).await?;
        Ok((n > 0.0).then_some(n))
    })
    .await?;
    // Persisted to the volume (the head's WAL), so the new pod replays it.
    pods_api.delete("dst-0", &kube::api::DeleteParams::default()).await?;
    eventually("a new dst-0", Duration::from_mins(2), || async {
        let pod = pods_api.get_opt("dst-0").await?;
        let ready = pod.as_ref().is_some_and(|p| p.metadata.uid != old_pod.metadata.uid && pod_ready(p));
        Ok(ready.then_some(()))
    })
    .await?;
    let log = env.kubelet.faults().logs(&ns, "dst-0", "restore")?;
    ensure!(log.contains("already holds data; nothing to restore"), "the init container left the volume alone: {log}");
    ensure!(!log.contains("restore complete"), "nothing restored twice: {log}");
    let dst_addr = format!("{}:9090", pod_ip_of(&ns, "dst-0")?);
    let got = eventually("known samples in dst after the new pod", Duration::from_mins(1), || {
        let a = dst_addr.clone();
        async move { Ok(known_data(&a, end).await.ok()) }
    })
    .await?;
    ensure!(got == expected, "the restored data after the new pod: {got:?} != {expected:?}");
    let after = scraped(dst_addr.clone()).await?;
    ensure!(after >= before, "what dst scraped before the new pod is kept: {after} < {before}");

    // 5. Faults: S3 down -> Failed with a reason, no manifest, no snapshot left; the next run succeeds.
    s3.stop()?;
    let failed = backup_now(&ns, "src", "three").await?;
    let error = failed.last_backup_error.clone().unwrap_or_default();
    ensure!(error.starts_with("StorageFailed"), "backup with S3 down: {failed:?}");
    ensure!(namespace_snapshot_dirs(&ns).await?.is_empty(), "snapshot left after a failed backup");
    let pc = Api::<PrometheusCluster>::namespaced(client(), &ns).get("src").await?;
    let cond = pc.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "BackupHealthy")).cloned();
    ensure!(cond.as_ref().is_some_and(|c| c.status == "False" && c.reason == "StorageFailed"), "{cond:?}");
    s3.restart()?;
    let manifests_before = store.list("tsdb").await?.iter().filter(|o| o.key.ends_with("manifest.json")).count();
    let recovered = backup_now(&ns, "src", "four").await?;
    ensure!(recovered.last_backup_id != second.last_backup_id, "the next backup succeeds: {recovered:?}");
    ensure!(
        recovered.last_successful_backup_time > failed.last_successful_backup_time,
        "the next backup succeeds: {recovered:?}"
    );
    // Retention keeps 2 of src; the seed backup is another cluster's and untouched.
    let manifests: Vec<String> =
        store.list("tsdb").await?.into_iter().map(|o| o.key).filter(|k| k.ends_with("manifest.json")).collect();
    ensure!(manifests.len() == 3 && manifests_before == 3, "manifests: {manifests:?}");

    // 6. One flipped byte: verify and restore fail naming the object; nothing is written.
    let chunk = walk(&s3.data_dir().join(s3.bucket()).join("tsdb").join(&ns).join("src").join("blocks"))
        .into_iter()
        .find(|(p, _)| p.contains("/chunks/"))
        .context("a chunk object")?;
    let original = std::fs::read(&chunk.0)?;
    let mut bytes = original.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&chunk.0, bytes)?;
    let name = chunk.0.rsplit_once("/blocks/").map(|(_, rest)| rest.to_owned()).unwrap_or_default();
    let verify = tsdb_ctl(&s3, &["verify", "--cluster", &format!("{ns}/src")])?;
    let stderr = String::from_utf8_lossy(&verify.stderr).to_string();
    ensure!(!verify.status.success() && stderr.contains(&name), "verify of a corrupted object: {stderr}");
    let dest2 = work.join("restored-corrupt");
    let restore = tsdb_ctl(&s3, &["restore", "--cluster", &format!("{ns}/src"), "--dest", &dest2.to_string_lossy()])?;
    let stderr = String::from_utf8_lossy(&restore.stderr).to_string();
    ensure!(!restore.status.success() && stderr.contains(&name), "restore of a corrupted object: {stderr}");
    ensure!(std::fs::read_dir(&dest2).map_or(0, Iterator::count) == 0, "nothing written on a failed restore");

    // 7. A missing object (fault row 4): the chunk put right, a block's index deleted; verify and restore fail
    // naming it; nothing is written.
    std::fs::write(&chunk.0, original)?;
    // The index of a block of backup id2, which step 8 restores.
    let src_dir = s3.data_dir().join(s3.bucket()).join("tsdb").join(&ns).join("src");
    let manifest: tsdb_operator_core::backup::manifest::Manifest =
        serde_json::from_slice(&std::fs::read(src_dir.join("backups").join(&id2).join("manifest.json"))?)?;
    let block = manifest.blocks.first().context("a block in the manifest")?;
    let name = format!("{}/index", block.ulid);
    std::fs::remove_file(src_dir.join("blocks").join(&name))?;
    let verify = tsdb_ctl(&s3, &["verify", "--cluster", &format!("{ns}/src")])?;
    let stderr = String::from_utf8_lossy(&verify.stderr).to_string();
    ensure!(!verify.status.success() && stderr.contains(&name), "verify with a missing object: {stderr}");
    let dest3 = work.join("restored-missing");
    let restore = tsdb_ctl(&s3, &["restore", "--cluster", &format!("{ns}/src"), "--dest", &dest3.to_string_lossy()])?;
    let stderr = String::from_utf8_lossy(&restore.stderr).to_string();
    eprintln!("restore with a missing object: {stderr}");
    ensure!(!restore.status.success() && stderr.contains(&name), "restore with a missing object: {stderr}");
    ensure!(std::fs::read_dir(&dest3).map_or(0, Iterator::count) == 0, "nothing written on a failed restore");

    // 8. The same backup restored declaratively into a new cluster: the restore init container fails naming the
    // object, Prometheus never starts, and the cluster does not claim to be Active.
    apply_cluster(&ns, &cluster_yaml("broken", &endpoint, s3.bucket(), None, Some(("src", &id2)))).await?;
    let pods_api = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client(), &ns);
    let log = eventually("the restore init container to fail naming the object", Duration::from_mins(2), || async {
        let Some(pod) = pods_api.get_opt("broken-0").await? else { return Ok(None) };
        let statuses = pod.status.and_then(|s| s.init_container_statuses).unwrap_or_default();
        let exit_code = |state: Option<&k8s_openapi::api::core::v1::ContainerState>| {
            state.and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code)
        };
        let failed = statuses.iter().any(|c| {
            c.name == "restore"
                && (exit_code(c.state.as_ref()).is_some_and(|code| code != 0)
                    || exit_code(c.last_state.as_ref()).is_some_and(|code| code != 0))
        });
        let log = env.kubelet.faults().logs(&ns, "broken-0", "restore").unwrap_or_default();
        Ok((failed && log.contains(&name)).then_some(log))
    })
    .await?;
    eprintln!("restore init container: {}", log.lines().last().unwrap_or_default());
    ensure!(env.kubelet.faults().pid(&ns, "broken-0", "prometheus").is_none(), "Prometheus never started");
    let broken = Api::<PrometheusCluster>::namespaced(client(), &ns).get("broken").await?;
    let phase = broken.status.and_then(|s| s.phase);
    ensure!(phase != Some(Phase::Active), "a cluster whose restore fails is not Active: {phase:?}");
    drop(fwd);
    Ok(())
}

fn write_empty_config(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("empty.yml");
    std::fs::write(&path, "global:\n  scrape_interval: 1m\n")?;
    Ok(path)
}

/// The snapshot API disabled: the agent reports a failed backup and uploads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_fails_and_uploads_nothing_when_the_snapshot_api_is_disabled() -> Result<()> {
    let env = env();
    let work = env.workdir.subdir("snapshot-disabled")?;
    let (data, bucket, token, config) = (work.join("data"), work.join("bucket"), work.join("token"), work.join("cfg"));
    for d in [&data, &bucket, &token, &config] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(token.join("token"), "t0ken")?;
    std::fs::write(config.join("prometheus.yml"), "global:\n  scrape_interval: 1s\n")?;
    let (pport, aport) = (free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?, free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?);
    let mut prom = ProcessBuilder::new("prometheus-no-admin", paths::prometheus(PrometheusMajor::V3)?)
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
        .arg(format!("--config.file={}", config.join("prometheus.yml").display()))
        .spawn(&env.workdir)?;
    let mut agent = start_agent("agent-no-admin", &work, pport, aport)?;
    let http = reqwest::Client::new();
    let request = json!({
        "id": "20260101T000000Z", "cluster": {"namespace": "ns", "name": "demo"},
        "store": {"kind": "Local", "dir": bucket.to_string_lossy(), "prefix": "p"},
    });
    let url = format!("http://127.0.0.1:{aport}/backup");
    // Unauthenticated requests are refused.
    let unauth = eventually("the agent to listen", Duration::from_secs(20), || {
        let (http, url, request) = (http.clone(), url.clone(), request.clone());
        async move { Ok(http.post(&url).json(&request).send().await.ok().map(|r| r.status().as_u16())) }
    })
    .await?;
    ensure!(unauth == 401, "unauthenticated: {unauth}");
    let started = eventually("Prometheus to be ready", Duration::from_secs(20), || {
        let (http, url, request) = (http.clone(), url.clone(), request.clone());
        async move {
            let ready = http
                .get(format!("http://127.0.0.1:{pport}/-/ready"))
                .send()
                .await
                .ok()
                .is_some_and(|r| r.status().is_success());
            if !ready {
                return Ok(None);
            }
            Ok(Some(http.post(&url).bearer_auth("t0ken").json(&request).send().await?.status().as_u16()))
        }
    })
    .await?;
    ensure!(started == 202, "start: {started}");
    let job: serde_json::Value = eventually("the job to finish", Duration::from_secs(20), || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let j: serde_json::Value =
                http.get(format!("{url}/20260101T000000Z")).bearer_auth("t0ken").send().await?.json().await?;
            Ok((j["state"] != "Running").then_some(j))
        }
    })
    .await?;
    agent.stop()?;
    prom.stop()?;
    ensure!(job["state"] == "Failed" && job["reason"] == "SnapshotFailed", "{job}");
    ensure!(job["message"].as_str().unwrap_or_default().contains("admin APIs disabled"), "{job}");
    ensure!(walk(&bucket).is_empty(), "nothing uploaded: {:?}", walk(&bucket));
    ensure!(snapshot_dirs(&data).is_empty(), "no snapshot directory");
    Ok(())
}

/// The agent as a pod runs it, in front of the Prometheus on `prometheus_port`, with the directories `data`,
/// `token` and `cfg` under `work`.
fn start_agent(
    name: &str,
    work: &Path,
    prometheus_port: u16,
    port: u16,
) -> Result<tsdb_operator_testenv::process::Supervised> {
    ProcessBuilder::new(name, operator_binary())
        .args(["agent", &format!("--config-dir={}", work.join("cfg").display())])
        .arg(format!("--prometheus-url=http://127.0.0.1:{prometheus_port}"))
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--data-dir={}", work.join("data").display()))
        .arg(format!("--token-dir={}", work.join("token").display()))
        .arg("--credentials-dir=/nonexistent")
        .spawn(&env().workdir)
}

/// A filesystem mounted for one test (a size-limited tmpfs, or a read-only bind mount), unmounted when dropped.
struct Mounted(PathBuf);

impl Mounted {
    fn run(args: &[&str], dir: &Path) -> Result<()> {
        let out = std::process::Command::new("mount").args(args).arg(dir).output()?;
        ensure!(out.status.success(), "mount {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// A tmpfs of `size` at `dir`.
    fn tmpfs(dir: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Self::run(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"], dir)?;
        Ok(Self(dir.to_owned()))
    }

    /// `dir` made read-only in place.
    fn read_only(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Self::run(&["--bind", &dir.to_string_lossy()], dir)?;
        let this = Self(dir.to_owned());
        Self::run(&["-o", "remount,bind,ro"], dir)?;
        Ok(this)
    }

    /// Takes every free byte with one file.
    fn fill(&self) -> Result<PathBuf> {
        let out = std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(&self.0).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let free: u64 = text.lines().last().context("df")?.trim().parse()?;
        let filler = self.0.join("filler");
        let out = std::process::Command::new("fallocate").args(["-l", &free.to_string()]).arg(&filler).output()?;
        ensure!(out.status.success(), "fallocate: {}", String::from_utf8_lossy(&out.stderr));
        Ok(filler)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A real Prometheus 3 scraping itself every second (so its head holds samples a snapshot must write) and the agent
/// in front of it, both as processes, as in a pod; the data directory is `<work>/data`, prepared by the test.
struct SnapshotRig {
    work: PathBuf,
    prom: tsdb_operator_testenv::process::Supervised,
    agent: tsdb_operator_testenv::process::Supervised,
    http: reqwest::Client,
    pport: u16,
    aport: u16,
}

impl SnapshotRig {
    async fn start(work: &Path) -> Result<Self> {
        let env = env();
        for d in ["data", "bucket", "token", "cfg"] {
            std::fs::create_dir_all(work.join(d))?;
        }
        std::fs::write(work.join("token/token"), "t0ken")?;
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (pport, aport) = (free_port(loopback)?, free_port(loopback)?);
        std::fs::write(
            work.join("cfg/prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{pport}']\n"
            ),
        )?;
        let prom = ProcessBuilder::new("prometheus-snapshot-fault", paths::prometheus(PrometheusMajor::V3)?)
            .arg(format!("--storage.tsdb.path={}", work.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
            .arg(format!("--config.file={}", work.join("cfg/prometheus.yml").display()))
            .arg("--web.enable-admin-api")
            .spawn(&env.workdir)?;
        let agent = start_agent("agent-snapshot-fault", work, pport, aport)?;
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build()?;
        let rig = Self { work: work.to_owned(), prom, agent, http, pport, aport };
        let query = format!("http://127.0.0.1:{pport}/api/v1/query?query=prometheus_tsdb_head_samples_appended_total");
        eventually("samples in Prometheus' head", Duration::from_mins(1), || async {
            let body: serde_json::Value = match rig.http.get(&query).send().await {
                Ok(r) => r.json().await?,
                Err(_) => return Ok(None),
            };
            let appended = body["data"]["result"][0]["value"][1].as_str().and_then(|v| v.parse::<f64>().ok());
            Ok(appended.filter(|n| *n > 100.0).map(|_| ()))
        })
        .await?;
        Ok(rig)
    }

    fn data(&self) -> PathBuf {
        self.work.join("data")
    }

    fn bucket(&self) -> PathBuf {
        self.work.join("bucket")
    }

    /// Asks the agent for backup `id` and waits for the job to end.
    async fn backup(&self, id: &str) -> Result<serde_json::Value> {
        let request = json!({
            "id": id, "cluster": {"namespace": "ns", "name": "fault", "uid": "5c3a-fault"},
            "store": {"kind": "Local", "dir": self.bucket().to_string_lossy(), "prefix": "p"},
        });
        let url = format!("http://127.0.0.1:{}/backup", self.aport);
        let started = eventually("the agent to take the job", Duration::from_secs(30), || async {
            Ok(self.http.post(&url).bearer_auth("t0ken").json(&request).send().await.ok().map(|r| r.status().as_u16()))
        })
        .await?;
        ensure!(started == 202, "start: {started}");
        eventually("the job to finish", Duration::from_mins(2), || async {
            let j: serde_json::Value =
                self.http.get(format!("{url}/{id}")).bearer_auth("t0ken").send().await?.json().await?;
            Ok((j["state"] != "Running").then_some(j))
        })
        .await
    }

    /// How often Prometheus was asked for a snapshot, from its own request counter.
    async fn snapshot_requests(&self) -> Result<u64> {
        let text = self.http.get(format!("http://127.0.0.1:{}/metrics", self.pport)).send().await?.text().await?;
        let calls = text
            .lines()
            .filter(|l| l.starts_with("prometheus_http_requests_total{"))
            .filter(|l| l.contains(r#"handler="/api/v1/admin/tsdb/snapshot""#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a small count
        Ok(calls as u64)
    }

    /// The fault's backup fails as it should: `SnapshotFailed` with Prometheus' reason containing `cause`, nothing
    /// uploaded, no snapshot directory left, one snapshot request (also 5 s later), Prometheus the same process
    /// and healthy.
    async fn fails_cleanly(&mut self, id: &str, cause: &str) -> Result<()> {
        let pid = self.prom.pid();
        let job = self.backup(id).await?;
        eprintln!("the job: {job}");
        ensure!(job["state"] == "Failed" && job["reason"] == "SnapshotFailed", "{job}");
        ensure!(job["message"].as_str().unwrap_or_default().contains(cause), "{cause} in {job}");
        ensure!(walk(&self.bucket()).is_empty(), "nothing uploaded: {:?}", walk(&self.bucket()));
        ensure!(snapshot_dirs(&self.data()).is_empty(), "no partial snapshot: {:?}", snapshot_dirs(&self.data()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        ensure!(self.snapshot_requests().await? == 1, "Prometheus was asked for one snapshot: no retry storm");
        ensure!(self.prom.is_running() && self.prom.pid() == pid, "Prometheus kept running");
        let healthy = self.http.get(format!("http://127.0.0.1:{}/-/healthy", self.pport)).send().await?.status();
        ensure!(healthy.is_success(), "Prometheus healthy: {healthy}");
        Ok(())
    }

    /// With the fault gone, the next backup succeeds with at least `blocks` blocks and leaves no snapshot.
    async fn recovers(&mut self, id: &str, blocks: u64) -> Result<()> {
        let job = self.backup(id).await?;
        ensure!(job["state"] == "Succeeded" && job["blocks"].as_u64() >= Some(blocks), "{job}");
        ensure!(!walk(&self.bucket()).is_empty(), "the backup uploaded");
        ensure!(snapshot_dirs(&self.data()).is_empty(), "the snapshot directory removed after the upload");
        self.agent.stop()?;
        self.prom.stop()?;
        Ok(())
    }
}

/// Fault row 5, ENOSPC: a snapshot on a full data volume (a 640 MiB tmpfs) fails cleanly and Prometheus keeps
/// running; once there is space again the next backup completes. (Writing the head block of a snapshot
/// preallocates a 512 MiB chunk segment, so a smaller filesystem never has room for one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_runs_out_of_space_fails_cleanly_and_prometheus_keeps_running() -> Result<()> {
    let work = env().workdir.subdir("snapshot-enospc")?;
    let volume = Mounted::tmpfs(&work.join("data"), "640m")?;
    let mut rig = SnapshotRig::start(&work).await?;
    let filler = volume.fill()?;
    rig.fails_cleanly("20260101T000000Z", "no space left on device").await?;
    std::fs::remove_file(&filler)?;
    rig.recovers("20260101T010000Z", 1).await?;
    drop(rig);
    drop(volume);
    Ok(())
}

/// Fault row 5, EXDEV: `snapshots/` on another filesystem than the blocks, so Prometheus cannot hard-link a block
/// into the snapshot; the partial snapshot it leaves is removed, and once the directory is back on the data volume
/// the next backup has the block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_across_filesystems_fails_cleanly() -> Result<()> {
    let work = env().workdir.subdir("snapshot-exdev")?;
    // Persisted blocks (two hours of one series, ending an hour ago), made by promtool before Prometheus starts.
    let data = work.join("data");
    std::fs::create_dir_all(&data)?;
    let input = work.join("fixture.om");
    known_samples(&input, 1, 120, now_secs() - 3600)?;
    promtool_blocks(&input, &data, &[])?;
    let other = Mounted::tmpfs(&data.join("snapshots"), "64m")?;
    let mut rig = SnapshotRig::start(&work).await?;
    rig.fails_cleanly("20260101T000000Z", "cross-device").await?;
    drop(other);
    rig.recovers("20260101T010000Z", 2).await?;
    Ok(())
}

/// Fault row 5, a read-only mount: `snapshots/` read-only, so Prometheus cannot create the snapshot; once it is
/// writable again the next backup completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_on_a_read_only_mount_fails_cleanly() -> Result<()> {
    let work = env().workdir.subdir("snapshot-erofs")?;
    let read_only = Mounted::read_only(&work.join("data/snapshots"))?;
    let mut rig = SnapshotRig::start(&work).await?;
    rig.fails_cleanly("20260101T000000Z", "read-only file system").await?;
    drop(read_only);
    rig.recovers("20260101T010000Z", 1).await?;
    Ok(())
}

/// Deleting a cluster never waits for the object store: with backups enabled and the S3 server stopped, the
/// PrometheusCluster is gone within a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_cluster_completes_while_the_object_store_is_down() -> Result<()> {
    let env = BackupEnv::start("delete-s3-down", &["--backup-tick-seconds=1"]).await?;
    let ns = env.ns.clone();
    apply_cluster(&ns, &env.cluster_yaml("gone", Some(json!({})), None)).await?;
    wait_phase(&ns, "gone", Phase::Active, 1, READY).await?;

    env.s3.stop()?;
    let api: Api<tsdb_operator_core::crd::PrometheusCluster> = Api::namespaced(client(), &ns);
    api.delete("gone", &kube::api::DeleteParams::default()).await?;
    eventually("the cluster to be deleted with S3 down", Duration::from_mins(1), || async {
        Ok(api.get_opt("gone").await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}

/// Operator-wide S3 credentials (`--s3-credentials-secret`, the chart's `s3.credentialsSecretName`): a cluster whose
/// backup names no `credentialsSecretRef` gets a copy of the operator's Secret, owned by the cluster, and backs up
/// to an S3 server that requires those keys; a change to the operator's Secret reaches the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_wide_credentials_reach_clusters_that_name_none() -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let s3 = S3Server::start()?;
    let fwd = Forwarder::to_s3(&s3).await?;
    let operator_ns = namespace("operator-creds").await;
    create_credentials(&operator_ns, &s3).await?;
    let ns = namespace("shared-creds").await;
    let shared = format!("--s3-credentials-secret={operator_ns}/s3-creds");
    let api_port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let api = [
        format!("--api-address=127.0.0.1:{api_port}"),
        format!("--api-namespace={ns}"),
        format!("--leader-election-namespace={ns}"),
    ];
    let _op =
        Operator::start(Some(&ns), &[&shared, "--backup-tick-seconds=1", "--enable-api", &api[0], &api[1], &api[2]])?;
    let mut yaml: serde_json::Value =
        serde_yaml::from_str(&cluster_yaml("shared", &fwd.endpoint(), s3.bucket(), Some(json!({})), None))?;
    yaml["spec"]["backup"].as_object_mut().context("backup")?.remove("credentialsSecretRef");
    apply_cluster(&ns, &serde_yaml::to_string(&yaml)?).await?;
    wait_phase(&ns, "shared", Phase::Active, 1, READY).await?;
    let id = successful_backup(&ns, "shared", "first").await?;
    eprintln!("backup {id} taken with the operator's credentials");

    let secrets: Api<Secret> = Api::namespaced(client(), &ns);
    let copy = secrets.get("shared-s3-credentials").await?;
    let cluster = Api::<PrometheusCluster>::namespaced(client(), &ns).get("shared").await?;
    let owned = copy.metadata.owner_references.iter().flatten().any(|o| Some(&o.uid) == cluster.metadata.uid.as_ref());
    ensure!(owned, "the copy is owned by the cluster: {:?}", copy.metadata.owner_references);
    let key = copy.data.as_ref().and_then(|d| d.get("AWS_ACCESS_KEY_ID")).map(|b| b.0.clone());
    ensure!(key.as_deref() == Some(s3.access_key().as_bytes()), "the copy holds the operator's key id");

    // Rotation: the operator's Secret changes, the copy follows.
    let patch = json!({"stringData": {"ROTATED": "yes"}});
    Api::<Secret>::namespaced(client(), &operator_ns)
        .patch("s3-creds", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await?;
    eventually("the copy to follow the operator's Secret", Duration::from_secs(30), || async {
        let copy = secrets.get("shared-s3-credentials").await?;
        Ok(copy.data.is_some_and(|d| d.contains_key("ROTATED")).then_some(()))
    })
    .await?;
    successful_backup(&ns, "shared", "second").await?;

    // A deleted copy is restored before the next backup, which succeeds.
    secrets.delete("shared-s3-credentials", &kube::api::DeleteParams::default()).await?;
    successful_backup(&ns, "shared", "third").await?;
    ensure!(secrets.get_opt("shared-s3-credentials").await?.is_some(), "the copy was restored");

    // A backup requested through the REST API by a ServiceAccount bound to the editor role: 202 with an id, taken
    // by the agent, its state followed to Succeeded with the backup's id, which is in the bucket.
    let token = env().cp.service_account_token(&ns, "ci").await?;
    bind_api_role(&client(), &ns, "ci", "tsdb-operator-api-editor").await?;
    let http = support::https_trusting(&support::api_authority(&client(), &ns, "tsdb-operator-api-ca").await?)?;
    let base = format!("https://127.0.0.1:{api_port}");
    let accepted = http.post(format!("{base}/api/clusters/shared/backup")).bearer_auth(&token).send().await?;
    ensure!(accepted.status().as_u16() == 202, "backup through the API: {}", accepted.text().await?);
    let accepted: serde_json::Value = accepted.json().await?;
    let location = accepted["location"].as_str().context("location")?.to_owned();
    let state = eventually("the API's backup request to finish", Duration::from_mins(2), || async {
        let state: serde_json::Value =
            http.get(format!("{base}{location}")).bearer_auth(&token).send().await?.json().await?;
        Ok(["Succeeded", "Failed"].contains(&state["state"].as_str().unwrap_or_default()).then_some(state))
    })
    .await?;
    ensure!(state["state"] == "Succeeded", "the API's backup request: {state}");
    let id = state["backupId"].as_str().context("backupId")?;
    ensure!(listed_backups(&s3, &ns, "shared")?.iter().any(|b| b.contains(id)), "backup {id} is in the bucket");
    Ok(())
}
