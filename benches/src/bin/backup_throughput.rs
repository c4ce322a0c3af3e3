//! Backup and restore throughput of the real adapters against the test S3 server (s3s-fs) on loopback, each as a
//! ratio to a plain `object_store` transfer of the same bytes to the same server, and the bytes an incremental
//! backup uploads.
//!
//! The data directory is made once by `promtool tsdb create-blocks-from openmetrics` (pseudo-random samples, so
//! the TSDB holds about 9 bytes per sample) and cached; a real Prometheus 3.5 serves it (compaction off, nothing
//! scraped). Per iteration, in an order that rotates from one iteration to the next:
//! - **backup**: `take::take_backup` (catalogue, snapshot through the admin API, upload with hashing, manifest,
//!   retention) into a fresh cluster root;
//! - **plain upload**: the same block files with `object_store::buffered::BufWriter` (its defaults: 10 MiB
//!   buffer, 8 parts in flight), one file at a time and two at a time;
//! - **restore**: `restore::restore` of that backup into an empty directory (download, SHA-256 check, fsync,
//!   move into place);
//! - **plain download**: every object of the manifest with `get` streamed into a file, one at a time, four at a
//!   time (the restore's concurrency), and four at a time with an fsync of each file.
//!
//! Reported: medians of the rates, the ratios to the faster plain transfer, and the CPU seconds per GiB of this
//! process and of the S3 server (less noisy than rates on a shared machine). Then one more backup into the last
//! root: the incremental case.
//!
//! `cargo run --release -p tsdb-operator-benches --bin backup_throughput -- --mib 256 --blocks 4 --iterations 7`
//! Options: `--mib N` (size of the generated data, 256), `--blocks N` (4), `--iterations N` (3),
//! `--data DIR` (cache of the generated data; `target/bench-backup-<mib>MiB-<blocks>`), `--restore-dir DIR`
//! (where restores go; the work directory under the system temp dir), and the upload tuning `--part-mib N`,
//! `--parts-in-flight N`, `--files-in-flight N` (the agent's defaults otherwise).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::ObjectStore;
use object_store::ObjectStoreExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use tokio::io::AsyncWriteExt as _;
use tsdb_operator_adapters::backup::restore;
use tsdb_operator_adapters::backup::store::{self, Credentials, Tuning};
use tsdb_operator_adapters::backup::take::{Progress, TakeConfig, take_backup};
use tsdb_operator_core::backup::manifest::{Layout, SourceCluster};
use tsdb_operator_core::backup::protocol::{BackupRequest, JobState, StoreLocation};
use tsdb_operator_core::backup::restore::plan_restore;
use tsdb_operator_testenv::openmetrics::write_random_samples;
use tsdb_operator_testenv::paths::{self, PrometheusMajor};
use tsdb_operator_testenv::process::{ProcessBuilder, Workdir, free_port};
use tsdb_operator_testenv::s3::S3Server;

const MIB: f64 = 1_048_576.0;
/// Samples per series in a block: one every 15 s for just under 2 h, so each input makes exactly one block.
const SAMPLES: u64 = 480;
/// Bytes a pseudo-random sample takes in a block (measured with promtool: 8.9-9.4).
const BYTES_PER_SAMPLE: u64 = 9;

struct Options {
    mib: u64,
    blocks: u64,
    iterations: usize,
    data: Option<PathBuf>,
    restore_dir: Option<PathBuf>,
    tuning: Tuning,
}

fn options() -> Result<Options> {
    let mut o =
        Options { mib: 256, blocks: 4, iterations: 3, data: None, restore_dir: None, tuning: Tuning::default() };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--mib" => o.mib = value()?.parse()?,
            "--blocks" => o.blocks = value()?.parse()?,
            "--iterations" => o.iterations = value()?.parse()?,
            "--data" => o.data = Some(value()?.into()),
            "--restore-dir" => o.restore_dir = Some(value()?.into()),
            "--part-mib" => o.tuning.part_size = value()?.parse::<usize>()? << 20,
            "--parts-in-flight" => o.tuning.parts_in_flight = value()?.parse()?,
            "--files-in-flight" => o.tuning.files_in_flight = value()?.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

/// Makes (or finds) the data directory: `blocks` blocks of about `mib / blocks` MiB, 2 h apart.
async fn data_dir(o: &Options, scratch: &Path) -> Result<PathBuf> {
    let dir = o.data.clone().unwrap_or_else(|| PathBuf::from(format!("target/bench-backup-{}MiB-{}", o.mib, o.blocks)));
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(std::fs::canonicalize(&dir)?);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let series = (o.mib << 20) / BYTES_PER_SAMPLE / SAMPLES / o.blocks;
    // Blocks 4 h apart on the 2 h grid, ending two days ago at the latest.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let first = (now - 2 * 86_400 - o.blocks * 4 * 3600) / 7200 * 7200;
    let promtool = paths::promtool(PrometheusMajor::V3)?;
    let t = Instant::now();
    eprintln!("generating {} blocks of {series} series x {SAMPLES} samples into {}", o.blocks, dir.display());
    // Two at a time: the machine has two cores.
    for pair in (0..o.blocks).collect::<Vec<_>>().chunks(2) {
        let jobs: Vec<_> = pair
            .iter()
            .map(|&b| {
                let (input, out, promtool) = (scratch.join(format!("block-{b}.om")), dir.clone(), promtool.clone());
                tokio::task::spawn_blocking(move || -> Result<()> {
                    let mut text = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&input)?);
                    let start = first + b * 4 * 3600;
                    write_random_samples(&mut text, "bench_bulk", series, SAMPLES, start, 15, 0x9e37_79b9 ^ b)?;
                    std::io::Write::flush(&mut text)?;
                    drop(text);
                    let run = std::process::Command::new(&promtool)
                        .args(["tsdb", "create-blocks-from", "openmetrics"])
                        .arg(&input)
                        .arg(&out)
                        .output()?;
                    std::fs::remove_file(&input)?;
                    ensure!(run.status.success(), "promtool: {}", String::from_utf8_lossy(&run.stderr));
                    Ok(())
                })
            })
            .collect();
        for j in jobs {
            j.await??;
        }
    }
    std::fs::write(&done, "")?;
    eprintln!("generated in {:.0} s", t.elapsed().as_secs_f64());
    Ok(std::fs::canonicalize(&dir)?)
}

/// Every file of every block under `dir` (not the WAL or the head's chunks).
fn block_files(dir: &Path) -> Result<Vec<(PathBuf, String, u64)>> {
    let mut out = Vec::new();
    for block in std::fs::read_dir(dir)? {
        let block = block?;
        if !block.path().join("meta.json").is_file() {
            continue;
        }
        let mut stack = vec![block.path()];
        while let Some(d) = stack.pop() {
            for f in std::fs::read_dir(&d)? {
                let f = f?;
                let meta = f.metadata()?;
                if meta.is_dir() {
                    stack.push(f.path());
                } else {
                    let rel = f.path().strip_prefix(dir)?.to_string_lossy().into_owned();
                    out.push((f.path(), rel, meta.len()));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A plain `object_store` client of the server: the builder's defaults, path-style, plain HTTP.
fn plain_client(s3: &S3Server) -> Result<Arc<dyn ObjectStore>> {
    Ok(Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(s3.endpoint())
            .with_bucket_name(s3.bucket())
            .with_region(s3.region())
            .with_access_key_id(s3.access_key())
            .with_secret_access_key(s3.secret_key())
            .with_virtual_hosted_style_request(false)
            .with_allow_http(true)
            .build()?,
    ))
}

async fn plain_upload_one(client: &Arc<dyn ObjectStore>, path: &Path, key: String) -> Result<u64> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut writer = BufWriter::new(client.clone(), ObjectPath::from(key));
    let bytes = tokio::io::copy(&mut file, &mut writer).await?;
    writer.shutdown().await?;
    Ok(bytes)
}

/// Uploads `files` under `prefix`, `at_once` files at a time.
async fn plain_upload(
    client: &Arc<dyn ObjectStore>,
    files: &[(PathBuf, String, u64)],
    prefix: &str,
    at_once: usize,
) -> Result<u64> {
    let sizes: Vec<u64> = futures::stream::iter(files)
        .map(|(path, rel, _)| plain_upload_one(client, path, format!("{prefix}/{rel}")))
        .buffer_unordered(at_once)
        .try_collect()
        .await?;
    Ok(sizes.iter().sum())
}

async fn plain_download_one(client: &Arc<dyn ObjectStore>, key: &str, dest: &Path, sync: bool) -> Result<u64> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let mut file = tokio::fs::File::create(dest).await?;
    let mut stream = client.get(&ObjectPath::from(key)).await?.into_stream();
    let mut bytes = 0;
    while let Some(chunk) = stream.try_next().await? {
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    if sync {
        file.sync_all().await?;
    }
    Ok(bytes)
}

/// Downloads `keys`, `at_once` objects at a time; `sync`: each file is synced to disk (as a restore does).
async fn plain_download(
    client: &Arc<dyn ObjectStore>,
    keys: &[(String, PathBuf)],
    at_once: usize,
    sync: bool,
) -> Result<u64> {
    let sizes: Vec<u64> = futures::stream::iter(keys)
        .map(|(key, dest)| plain_download_one(client, key, dest, sync))
        .buffer_unordered(at_once)
        .try_collect()
        .await?;
    Ok(sizes.iter().sum())
}

/// CPU seconds (user + system) a process has used so far; `None` when it is gone.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The PID of the s3s-fs process listening on `port`.
fn s3_pid(port: u16) -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_s3 = args.first().is_some_and(|a| a.ends_with(b"s3s-fs"));
        let on_port = args.windows(2).any(|w| w[0] == b"--port" && w[1] == port.to_string().as_bytes());
        (is_s3 && on_port).then(|| e.file_name().to_string_lossy().into_owned())
    })
}

/// Bytes in MiB.
#[allow(clippy::cast_precision_loss)] // sizes far below 2^52
fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// CPU seconds per GiB between two `(client, server)` readings.
fn per_gib(before: (f64, f64), after: (f64, f64), bytes: u64) -> (f64, f64) {
    let gib = mib(bytes) / 1024.0;
    ((after.0 - before.0) / gib, (after.1 - before.1) / gib)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[allow(clippy::too_many_lines)] // one measurement, top to bottom
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let o = options()?;
    let workdir = Workdir::create("backup-bench")?;
    let data = data_dir(&o, &workdir.fast_subdir("inputs")?).await?;
    let files = block_files(&data)?;
    let data_bytes: u64 = files.iter().map(|f| f.2).sum();

    let s3 = S3Server::start()?;
    let port = free_port(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))?;
    let config = workdir.subdir("config")?.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1m\n")?;
    let mut prometheus = ProcessBuilder::new("prometheus", paths::prometheus(PrometheusMajor::V3)?)
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!("--config.file={}", config.display()))
        .args(["--web.enable-admin-api", "--storage.tsdb.retention.time=100y"])
        .args(["--storage.tsdb.min-block-duration=2h", "--storage.tsdb.max-block-duration=2h"])
        .spawn(&workdir)?;
    let prometheus_url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_mins(2);
    while !http.get(format!("{prometheus_url}/-/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
        prometheus.check_running()?;
        ensure!(Instant::now() < deadline, "Prometheus did not become ready: {}", prometheus.log_tail(20));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let credentials_dir = workdir.subdir("credentials")?;
    std::fs::write(credentials_dir.join("AWS_ACCESS_KEY_ID"), s3.access_key())?;
    std::fs::write(credentials_dir.join("AWS_SECRET_ACCESS_KEY"), s3.secret_key())?;
    let location = StoreLocation::S3 {
        bucket: s3.bucket().to_owned(),
        region: s3.region().to_owned(),
        endpoint: s3.endpoint(),
        prefix: "bench".to_owned(),
    };
    let take = TakeConfig { prometheus_url, data_dir: data.clone(), credentials_dir, tuning: o.tuning.clone() };
    let creds = Credentials {
        access_key_id: s3.access_key().to_owned(),
        secret_access_key: s3.secret_key().to_owned(),
        session_token: None,
    };
    let ours = store::open(&location, Some(&creds), &o.tuning)?;
    let plain = plain_client(&s3)?;
    let restores = match &o.restore_dir {
        Some(dir) => dir.join(format!("backup-bench-{}", std::process::id())),
        None => workdir.subdir("restores")?,
    };
    std::fs::create_dir_all(&restores)?;

    println!("data: {} blocks, {} files, {:.1} MiB; tuning {:?}", o.blocks, files.len(), mib(data_bytes), o.tuning);
    // Rates in MiB/s per variant: backup, plain upload 1 and 2 files at a time; restore, plain download 1 and 4
    // objects at a time (the restore's own concurrency).
    let mut rates: [Vec<f64>; 7] = Default::default();
    // CPU seconds per GiB moved, of this process (the client) and of the S3 server, per variant.
    let mut cpu: [Vec<(f64, f64)>; 7] = Default::default();
    let server = s3_pid(s3.addr().port()).context("the s3s-fs process")?;
    let cpu_now = || (cpu_seconds("self").unwrap_or_default(), cpu_seconds(&server).unwrap_or_default());
    let rate = |bytes: u64, secs: f64| mib(bytes) / secs;
    let mut last: Option<(Layout, BackupRequest)> = None;
    for i in 0..o.iterations {
        let cluster = format!("c{i}");
        let layout = Layout::new("bench", "bench", &cluster);
        let req = BackupRequest {
            id: format!("20260101T00000{i}Z"),
            cluster: SourceCluster { namespace: "bench".into(), name: cluster.clone(), ..SourceCluster::default() },
            store: location.clone(),
            retention: tsdb_operator_core::backup::retention::RetentionPolicy::default(),
        };
        let mut line = format!("iteration {i}:");
        // The order rotates from one iteration to the next.
        for step in 0..3 {
            let variant = (step + i) % 3;
            let (t, c) = (Instant::now(), cpu_now());
            let bytes = match variant {
                0 => {
                    let job = take_backup(&take, &req, &Arc::new(Progress::default())).await;
                    ensure!(job.state == JobState::Succeeded, "backup failed: {job:?}");
                    job.total_bytes
                }
                n => plain_upload(&plain, &files, &format!("plain/{i}-{n}"), n).await?,
            };
            let secs = t.elapsed().as_secs_f64();
            rates[variant].push(rate(bytes, secs));
            cpu[variant].push(per_gib(c, cpu_now(), bytes));
            let _ =
                write!(line, " {}: {:.1} MiB in {secs:.2} s;", ["backup", "plain x1", "plain x2"][variant], mib(bytes));
        }
        let manifest = restore::read_manifest(&ours, &layout, &req.id).await?;
        let items = plan_restore(&manifest)?;
        for step in 0..4 {
            let variant = (step + i) % 4;
            let dest = restores.join(format!("{i}-{variant}"));
            let keys: Vec<(String, PathBuf)> =
                items.iter().map(|item| (layout.full(&item.key), dest.join(&item.dest))).collect();
            let (t, c) = (Instant::now(), cpu_now());
            let bytes = match variant {
                0 => restore::restore(&ours, &layout, &req.id, &dest, false, None).await?.bytes,
                1 => plain_download(&plain, &keys, 1, false).await?,
                2 => plain_download(&plain, &keys, 4, false).await?,
                _ => plain_download(&plain, &keys, 4, true).await?,
            };
            let secs = t.elapsed().as_secs_f64();
            ensure!(bytes == manifest.total_bytes(), "{bytes} bytes restored of {}", manifest.total_bytes());
            rates[3 + variant].push(rate(bytes, secs));
            cpu[3 + variant].push(per_gib(c, cpu_now(), bytes));
            let _ = write!(
                line,
                " {}: {secs:.2} s;",
                ["restore", "download x1", "download x4", "download x4+fsync"][variant]
            );
            std::fs::remove_dir_all(&dest)?;
        }
        println!("{line}");
        // Keep the last root for the incremental backup; drop the other objects.
        if let Some((previous, _)) = last.replace((layout, req)) {
            for o in ours.list(previous.root()).await? {
                ours.delete(&o.key).await?;
            }
        }
        let stale: Vec<_> = plain.list(Some(&ObjectPath::from("plain"))).try_collect().await?;
        for o in stale {
            plain.delete(&o.location).await?;
        }
    }

    let (_, first) = last.context("no iterations")?;
    let req = BackupRequest { id: "20260102T000000Z".into(), ..first };
    let t = Instant::now();
    let job = take_backup(&take, &req, &Arc::new(Progress::default())).await;
    ensure!(job.state == JobState::Succeeded, "incremental backup failed: {job:?}");
    let incremental_secs = t.elapsed().as_secs_f64();
    prometheus.stop()?;

    let [backup, up1, up2, restore_rate, down1, down4, down4_sync] = rates.map(median);
    println!("CPU seconds per GiB, client / S3 server (medians):");
    let names = [
        "backup",
        "plain upload x1",
        "plain upload x2",
        "restore",
        "plain download x1",
        "plain download x4",
        "plain download x4 + fsync",
    ];
    for (name, samples) in names.iter().zip(cpu) {
        let (client, server): (Vec<f64>, Vec<f64>) = samples.into_iter().unzip();
        println!("  {name}: {:.2} / {:.2}", median(client), median(server));
    }
    println!("medians of {} iterations (MiB/s):", o.iterations);
    println!(
        "  backup {backup:.1}; plain upload 1 file at a time {up1:.1}, 2 at a time {up2:.1}; ratio to the faster plain \
         upload {:.2}",
        backup / up1.max(up2)
    );
    println!(
        "  restore {restore_rate:.1}; plain download 1 object at a time {down1:.1}, 4 at a time {down4:.1}, 4 at a time \
         with fsync {down4_sync:.1}; ratio to the faster plain download {:.2}, to the one with fsync {:.2}",
        restore_rate / down1.max(down4),
        restore_rate / down4_sync
    );
    println!(
        "  incremental backup of unchanged data: {} of {} bytes uploaded ({:.4}%) in {incremental_secs:.2} s",
        job.uploaded_bytes,
        job.total_bytes,
        mib(job.uploaded_bytes) * 100.0 / mib(job.total_bytes.max(1))
    );
    Ok(())
}
