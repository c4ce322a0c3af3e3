//! Scheduled backups and retention end to end: real Prometheus pods (process kubelet), the real agent sidecar and
//! operator, s3s-fs behind a forwarder on the pod bridge.

mod support;

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use jiff::Timestamp;
use serde_json::json;
use support::backup::*;
use support::*;
use tsdb_operator_adapters::backup::catalogue::cluster_state;
use tsdb_operator_core::backup::manifest::Layout;
use tsdb_operator_core::crd::Phase;

const READY: Duration = Duration::from_mins(3);
const EVERY: Duration = Duration::from_secs(10);

/// `tsdb_operator_backup_total{result="success"}` of one cluster (0 before the first).
async fn successes(op: &Operator, ns: &str, name: &str) -> Result<u64> {
    let needle = format!("tsdb_operator_backup_total{{namespace=\"{ns}\",cluster=\"{name}\",result=\"success\"}} ");
    let metrics = op.metrics().await?;
    Ok(metrics.lines().find_map(|l| l.strip_prefix(&needle)).map_or(Ok(0), str::parse)?)
}

/// Waits until nothing runs, then checks that no backup starts or finishes for `quiet`.
async fn assert_no_backups_for(op: &Operator, ns: &str, name: &str, quiet: Duration) -> Result<()> {
    eventually("the running backup to finish", Duration::from_mins(1), || async {
        Ok(backup_status(ns, name).await?.running.is_none().then_some(()))
    })
    .await?;
    let (before, status) = (successes(op, ns, name).await?, backup_status(ns, name).await?);
    let deadline = tokio::time::Instant::now() + quiet;
    while tokio::time::Instant::now() < deadline {
        let now = backup_status(ns, name).await?;
        ensure!(now.running.is_none(), "a backup started: {now:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (after, last) = (successes(op, ns, name).await?, backup_status(ns, name).await?);
    ensure!(after == before, "{} backups ran", after - before);
    ensure!(last.last_schedule_time == status.last_schedule_time, "a slot was taken: {last:?}");
    Ok(())
}

/// Every `tsdb_operator_*` metric the shipped alerts and dashboard (deploy/monitoring) query is declared by this
/// running operator or the agent of `sched-0` (families without series are not exposed, so this also checks that
/// the counters alerts use start at zero), and the schedule's interval is exported for the overdue alert.
async fn shipped_monitoring_queries_declared_metrics(op: &Operator, ns: &str) -> Result<()> {
    let operator = op.metrics().await?;
    let interval = format!("tsdb_operator_backup_interval_seconds{{namespace=\"{ns}\",cluster=\"sched\"}} 10");
    ensure!(operator.lines().any(|l| l == interval), "{interval} in:\n{operator}");
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
    let agent = http.get(format!("http://{}:9091/metrics", pod_ip_of(ns, "sched-0")?)).send().await?.text().await?;
    let declared: std::collections::BTreeSet<&str> = [operator.as_str(), agent.as_str()]
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let shipped = [
        include_str!("../../deploy/monitoring/alerts.yaml"),
        include_str!("../../deploy/monitoring/grafana-dashboard.json"),
    ];
    let queried: std::collections::BTreeSet<&str> = shipped
        .iter()
        .flat_map(|t| t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("tsdb_operator_"))
        .collect();
    let undeclared: Vec<&&str> = queried
        .iter()
        .filter(|name| {
            !declared.contains(**name)
                && !["_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix).is_some_and(|base| declared.contains(base)))
        })
        .collect();
    ensure!(queried.len() >= 12, "the names were found: {queried:?}");
    ensure!(undeclared.is_empty(), "queried but declared by neither the operator nor the agent: {undeclared:?}");
    shipped_queries_run_on_a_prometheus_that_scraped_them(op, ns).await
}

/// A Prometheus on loopback scrapes this operator (as `job="tsdb-operator"`, the name the alerts expect) and the
/// agent of `sched-0` every second; then every dashboard query returns data (but the one that counts pods on a
/// refused configuration, empty while none is) and every alert expression evaluates and fires nothing in this
/// healthy scenario.
async fn shipped_queries_run_on_a_prometheus_that_scraped_them(op: &Operator, ns: &str) -> Result<()> {
    let env = env();
    let dir = env.workdir.subdir(&format!("monitoring-{ns}"))?;
    let port = tsdb_operator_testenv::process::free_port(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))?;
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n\
         - job_name: tsdb-operator\n  static_configs: [{{targets: ['127.0.0.1:{}']}}]\n\
         - job_name: tsdb-agents\n  static_configs: [{{targets: ['{}:9091'], labels: {{namespace: {ns}, pod: sched-0}}}}]\n",
        op.metrics_port,
        pod_ip_of(ns, "sched-0")?
    );
    std::fs::write(dir.join("prometheus.yml"), config)?;
    let prometheus = tsdb_operator_testenv::paths::prometheus(tsdb_operator_testenv::paths::PrometheusMajor::V3)?;
    let _prom = tsdb_operator_testenv::process::ProcessBuilder::new("monitoring-prometheus", prometheus)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .spawn(&env.workdir)?;
    let addr = format!("127.0.0.1:{port}");
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
    let run = |expr: String| {
        let (http, addr) = (http.clone(), addr.clone());
        async move {
            let v: serde_json::Value =
                http.get(format!("http://{addr}/api/v1/query")).query(&[("query", &expr)]).send().await?.json().await?;
            ensure!(v["status"] == "success", "{expr}: {v}");
            anyhow::Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
        }
    };
    // Both targets up for a few scrapes, so that rate() and increase() have two samples.
    eventually("both targets scraped 5 times", Duration::from_mins(1), || async {
        let r = run("min(count_over_time(up[1m])) >= 5 and min(up) == 1".to_owned()).await.unwrap_or_default();
        Ok((!r.is_empty()).then_some(()))
    })
    .await?;
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/monitoring/grafana-dashboard.json"))?;
    let mut empty = Vec::new();
    for target in dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
    {
        let expr = target["expr"].as_str().context("expr")?.to_owned();
        if run(expr.clone()).await?.is_empty() {
            empty.push(expr);
        }
    }
    let refused_config = "count(tsdb_operator_agent_config_last_reload_successful == 0)";
    ensure!(empty == [refused_config], "dashboard queries without data: {empty:#?}");
    let rules: serde_json::Value = serde_yaml::from_str(include_str!("../../deploy/monitoring/alerts.yaml"))?;
    for rule in rules["groups"][0]["rules"].as_array().context("rules")? {
        let expr = rule["expr"].as_str().context("expr")?.to_owned();
        let firing = run(expr.clone()).await?;
        ensure!(firing.is_empty(), "{} fires in a healthy scenario: {firing:?}", rule["alert"]);
    }
    Ok(())
}

/// `@every 10s` gets backups without any request; `suspend: true` stops the scheduled ones (an on-demand one
/// still runs), `suspend: false` resumes them, `enabled: false` stops them for good (a backup running at that
/// moment is still followed and recorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_run_on_their_own_and_stop_when_suspended_or_disabled() -> Result<()> {
    // With the audit trail on, so that its metrics are declared for the shipped alerts.
    let audit_dir = std::env::temp_dir().join(format!("tsdb-backup-schedule-audit-{}", std::process::id()));
    let audit_args = [
        format!("--audit-dsn=sqlite:{}", audit_dir.join("audit.db").display()),
        format!("--audit-spool-dir={}", audit_dir.join("spool").display()),
    ];
    std::fs::create_dir_all(&audit_dir)?;
    let BackupEnv { s3, fwd, ns, op } =
        BackupEnv::start("backup-schedule", &["--backup-tick-seconds=1", &audit_args[0], &audit_args[1]]).await?;
    let spec = |extra: serde_json::Value| {
        let mut b = json!({"schedule": "@every 10s", "retention": {"keepLast": 20}});
        if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        cluster_yaml("sched", &fwd.endpoint(), s3.bucket(), Some(b), None)
    };
    apply_cluster(&ns, &spec(json!({}))).await?;
    wait_phase(&ns, "sched", Phase::Active, 1, READY).await?;

    // Two scheduled backups, 10 s apart on the slot grid, with no annotation.
    eventually("two scheduled backups", Duration::from_mins(1), || async {
        Ok((successes(&op, &ns, "sched").await? >= 2).then_some(()))
    })
    .await?;
    shipped_monitoring_queries_declared_metrics(&op, &ns).await?;
    let status = backup_status(&ns, "sched").await?;
    ensure!(status.last_request.is_none(), "an on-demand request was recorded: {status:?}");
    let schedule_time = status.last_schedule_time.as_ref().map(|t| t.0).context("no lastScheduleTime")?;
    ensure!(
        std::time::Duration::try_from(Timestamp::now().duration_since(schedule_time))? < 3 * EVERY,
        "lastScheduleTime is stale: {schedule_time}"
    );
    let started = events(&ns, "sched", "BackupStarted").await?;
    ensure!(
        started.iter().all(|e| e.message.as_deref().is_some_and(|m| m.starts_with("scheduled backup"))),
        "{:?}",
        started.iter().map(|e| e.message.clone()).collect::<Vec<_>>()
    );
    let store = s3_store(&s3, PREFIX)?;
    let stored = only_referenced_objects(&store, &Layout::new(PREFIX, &ns, "sched")).await?;
    ensure!(stored.len() >= 2, "stored backups: {stored:?}");

    // Suspended: no scheduled backup for 2.5 intervals; an on-demand one still runs.
    apply_cluster(&ns, &spec(json!({"suspend": true}))).await?;
    assert_no_backups_for(&op, &ns, "sched", EVERY * 5 / 2).await?;
    let before = successes(&op, &ns, "sched").await?;
    successful_backup(&ns, "sched", "manual").await?;
    ensure!(successes(&op, &ns, "sched").await? == before + 1, "the on-demand backup was not counted");

    // Resumed: scheduled backups come back.
    apply_cluster(&ns, &spec(json!({"suspend": false}))).await?;
    let resumed = before + 2;
    eventually("a scheduled backup after resuming", Duration::from_mins(1), || async {
        Ok((successes(&op, &ns, "sched").await? >= resumed).then_some(()))
    })
    .await?;

    // Disabled while a (slowed-down) backup runs: that one is recorded, then none starts at all.
    fwd.throttle.set(16 << 10);
    let running = eventually("a scheduled backup to run", Duration::from_mins(1), || async {
        Ok(backup_status(&ns, "sched").await?.running)
    })
    .await?;
    apply_cluster(&ns, &spec(json!({"enabled": false}))).await?;
    fwd.throttle.set(0);
    let ended = eventually("the running backup to be recorded", Duration::from_mins(1), || async {
        let b = backup_status(&ns, "sched").await?;
        Ok(b.running.is_none().then_some(b))
    })
    .await?;
    let recorded =
        |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| t.map(|t| t.0) >= Some(running.start_time.0);
    ensure!(
        ended.last_backup_id.as_deref() == Some(running.id.as_str())
            || recorded(ended.last_failed_backup_time.as_ref()),
        "the backup running when disabled ({running:?}) was not recorded: {ended:?}"
    );
    assert_no_backups_for(&op, &ns, "sched", EVERY * 5 / 2).await?;
    let (manifests, _) = cluster_state(&store, &Layout::new(PREFIX, &ns, "sched")).await?;
    let newest = manifests.iter().map(|m| m.start_time).max().context("no backups")?;
    ensure!(
        Timestamp::now().duration_since(newest) >= jiff::SignedDuration::try_from(EVERY * 5 / 2)?,
        "a backup was stored after disabling: {newest}"
    );
    drop(op);
    let _ = std::fs::remove_dir_all(&audit_dir);
    Ok(())
}

/// `keepLast: 2` and `maxAge: 30s` with `--backup-gc-grace=0s`: a third backup deletes the first one and the
/// blocks only it referenced; a failed backup deletes nothing, so the newest complete backup stays listed and
/// verifiable past `maxAge`; the next success deletes the expired ones and keeps itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_backups_and_unreferenced_blocks_and_keeps_the_newest() -> Result<()> {
    let env = BackupEnv::start("backup-retention", &["--backup-tick-seconds=1", "--backup-gc-grace=0s"]).await?;
    let (s3, ns) = (&env.s3, env.ns.as_str());
    let retention = json!({"retention": {"keepLast": 2, "maxAge": "30s"}});
    apply_cluster(ns, &env.cluster_yaml("ret", Some(retention), None)).await?;
    wait_phase(ns, "ret", Phase::Active, 1, READY).await?;
    let store = s3_store(s3, PREFIX)?;
    let layout = Layout::new(PREFIX, ns, "ret");

    let mut ids = Vec::new();
    for token in ["b1", "b2", "b3"] {
        ids.push(successful_backup(ns, "ret", token).await?);
        // Backup ids have a resolution of one second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let (b1, b2, b3) = (&ids[0], &ids[1], &ids[2]);
    let kept = only_referenced_objects(&store, &layout).await?;
    ensure!(kept == [b2.clone(), b3.clone()], "keepLast 2 after three backups: {kept:?}");
    let objects = store.list(layout.root()).await?;
    ensure!(objects.iter().all(|o| !o.key.contains(&format!("/backups/{b1}/"))), "files of {b1} remain");

    // A failed backup applies no retention: b3 (the newest complete one) stays, even past maxAge.
    s3.stop()?;
    let failed = backup_now(ns, "ret", "b4").await?;
    ensure!(failed.last_backup_error.as_deref().is_some_and(|e| e.starts_with("StorageFailed")), "{failed:?}");
    s3.restart()?;
    let (manifests, _) = cluster_state(&store, &layout).await?;
    let b3_start = manifests.iter().find(|m| &m.id == b3).map(|m| m.start_time).context("b3 is gone")?;
    let expired = b3_start + jiff::SignedDuration::from_secs(31);
    if let Ok(wait) = std::time::Duration::try_from(expired.duration_since(Timestamp::now())) {
        tokio::time::sleep(wait).await;
    }
    let listed = listed_backups(s3, ns, "ret")?;
    ensure!(listed.len() == 2 && listed[0].contains(b3.as_str()), "listed past maxAge: {listed:?}");
    let verify = tsdb_ctl(s3, &["verify", "--cluster", &format!("{ns}/ret"), "--backup", b3])?;
    ensure!(verify.status.success(), "verify of {b3}: {}", String::from_utf8_lossy(&verify.stderr));

    // The next success expires b2 and b3 (older than 30 s) and keeps itself.
    let b5 = successful_backup(ns, "ret", "b5").await?;
    let kept = only_referenced_objects(&store, &layout).await?;
    ensure!(kept == [b5.clone()], "after maxAge: {kept:?}");
    let listed = listed_backups(s3, ns, "ret")?;
    ensure!(listed.len() == 1 && listed[0].contains(b5.as_str()), "listed: {listed:?}");

    // A manifest this operator cannot read (a newer format, a damaged file) holds back all garbage collection:
    // an unreferenced object survives the next backup, which says so in a RetentionHeld event; once the manifest
    // is gone, the next backup collects it.
    let unreadable = layout.full(&Layout::manifest_key("29991231T000000Z"));
    store.put(&unreadable, bytes::Bytes::from_static(b"{\"version\": 99, \"from\": \"the future\"}")).await?;
    let orphan = layout.full("blocks/01J00000000000000000000000/index");
    store.put(&orphan, bytes::Bytes::from_static(b"left by an interrupted upload")).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    successful_backup(ns, "ret", "b6").await?;
    ensure!(store.get(&orphan).await?.is_some(), "an unreferenced object was deleted while a manifest is unreadable");
    ensure!(store.get(&unreadable).await?.is_some(), "the unreadable manifest was deleted");
    let held = eventually("a RetentionHeld event", Duration::from_secs(30), || async {
        let events = events(ns, "ret", "RetentionHeld").await?;
        Ok(events.into_iter().filter_map(|e| e.message).find(|m| m.contains("29991231T000000Z")))
    })
    .await?;
    eprintln!("retention held: {held}");
    store.delete(&unreadable).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    successful_backup(ns, "ret", "b7").await?;
    ensure!(store.get(&orphan).await?.is_none(), "the unreferenced object is collected once nothing holds it");
    Ok(())
}
