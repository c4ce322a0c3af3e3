//! The example controller (`examples/embed`), which embeds the core, reconciles every fixture as the operator
//! would: once it converged, the operator started on the same clusters changes none of the children, and
//! `tsdb-ctl plan` against what it created plans nothing.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::Value;
use support::{Operator, control_plane_only, eventually, metric_sum};
use tsdb_operator_core::build::{BuildSettings, DEFAULT_AGENT_IMAGE, PdbApi};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_core::decide;
use tsdb_operator_testenv::process::Workdir;

/// The fixtures, each in a namespace of its own.
fn fixtures() -> Vec<(String, Value)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/clusters");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(dir)
        .expect("the fixtures")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let name = p.file_stem().expect("a name").to_string_lossy().into_owned();
            (name, serde_yaml::from_str(&std::fs::read_to_string(&p).expect("readable")).expect("YAML"))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The children of cluster `name` in `ns` as the server holds them: `Kind/name` -> object.
async fn children(client: &Client, ns: &str, name: &str, pdb: &str) -> Result<BTreeMap<String, Value>> {
    let pdb_api = if pdb == "policy/v1beta1" { PdbApi::V1beta1 } else { PdbApi::V1 };
    let settings = BuildSettings { pdb_api, ..BuildSettings::default() };
    let mut out = BTreeMap::new();
    for key in decide::children_to_read(name, &settings) {
        let (group, version) = key.api_version.split_once('/').unwrap_or(("", key.api_version.as_str()));
        let plural = format!("{}s", key.kind.to_ascii_lowercase());
        let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, &key.kind), &plural);
        if let Some(o) = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar).get_opt(&key.name).await? {
            let mut value = serde_json::to_value(o)?;
            value["apiVersion"] = Value::String(ar.api_version.clone());
            value["kind"] = Value::String(key.kind.clone());
            out.insert(format!("{}/{}", key.kind, key.name), value);
        }
    }
    Ok(out)
}

fn applied_parts(children: &BTreeMap<String, Value>) -> BTreeMap<&String, Value> {
    children.iter().map(|(k, v)| (k, applied_part(v))).collect()
}

/// An object without what others than its appliers write: its status (the StatefulSet and disruption controllers
/// update it), resourceVersion and managedFields.
fn applied_part(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(o) = object.as_object_mut() {
        o.remove("status");
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    object
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_core_reconciles_every_fixture_as_the_operator_would() -> Result<()> {
    let cp = control_plane_only();
    let client = cp.client();
    let pdb_api = if client.list_api_group_resources("policy/v1").await.is_ok() { PdbApi::V1 } else { PdbApi::V1beta1 };
    // The operator's defaults (its flags), so both render the same objects.
    let mut settings =
        BuildSettings { agent_image: DEFAULT_AGENT_IMAGE.to_owned(), pdb_api, ..BuildSettings::default() };
    settings.backup.region = "us-east-1".to_owned();

    let mut clusters = Vec::new();
    for (fixture, mut object) in fixtures() {
        let ns = cp.namespace("embed").await;
        object["metadata"]["namespace"] = Value::String(ns.clone());
        // Fixtures carry what the server sets (a uid, a status); a user applies spec and names only.
        for field in ["uid", "resourceVersion", "generation", "creationTimestamp"] {
            object["metadata"].as_object_mut().context("metadata")?.remove(field);
        }
        object.as_object_mut().context("an object")?.remove("status");
        // The test API server (1.20 built with a newer Go) takes an empty string for null and refuses it.
        if let Some(selector) = object.pointer_mut("/spec/nodeSelector").and_then(Value::as_object_mut) {
            selector.values_mut().filter(|v| *v == "").for_each(|v| *v = Value::String("true".to_owned()));
        }
        let name = object["metadata"]["name"].as_str().context("a name")?.to_owned();
        let api: Api<PrometheusCluster> = Api::namespaced(client.clone(), &ns);
        api.create(&PostParams::default(), &serde_json::from_value(object)?).await?;
        clusters.push((fixture, ns, name));
    }

    // The example controller until every cluster has its children and a status for its generation.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let example = tokio::spawn(tsdb_operator_embed_example::run(client.clone(), settings.clone(), None, async {
        let _ = stopped.await;
    }));
    for (fixture, ns, name) in &clusters {
        eventually(&format!("{fixture}: the example to reconcile it"), Duration::from_mins(2), || async {
            let pc = Api::<PrometheusCluster>::namespaced(client.clone(), ns).get(name).await?;
            let generation = pc.status.as_ref().and_then(|s| s.observed_generation);
            let done =
                children(&client, ns, name, pdb_api.api_version()).await?.contains_key(&format!("StatefulSet/{name}"));
            Ok((done && generation == pc.metadata.generation).then_some(()))
        })
        .await?;
    }
    let _ = stop.send(());
    example.await?;
    let mut before = BTreeMap::new();
    for (fixture, ns, name) in &clusters {
        before.insert(fixture.clone(), children(&client, ns, name, pdb_api.api_version()).await?);
    }

    // The operator on the same clusters: it reconciles each and changes no child.
    let workdir = Workdir::create("embed-tests")?;
    let operator = Operator::start_on(cp, &workdir, None, &["--enable-backup=false"])?;
    eventually("the operator to reconcile every cluster", Duration::from_mins(2), || async {
        let metrics = operator.metrics().await?;
        let done = metric_sum(&metrics, "tsdb_operator_reconcile_total{controller=\"prometheuscluster\"}");
        #[allow(clippy::cast_precision_loss)] // a handful of clusters
        let wanted = clusters.len() as f64;
        Ok((done >= wanted).then_some(()))
    })
    .await?;
    // One more resync's worth of time for a late apply to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (fixture, ns, name) in &clusters {
        let after = children(&client, ns, name, pdb_api.api_version()).await?;
        let (was, is) = (applied_parts(&before[fixture]), applied_parts(&after));
        ensure!(was == is, "{fixture}: the operator changed what the example created:\nbefore {was:#?}\nafter {is:#?}");
    }
    drop(operator);

    // tsdb-ctl plan against the same objects plans nothing.
    let dir = workdir.subdir("plan")?;
    for (fixture, ns, name) in &clusters {
        let pc = Api::<PrometheusCluster>::namespaced(client.clone(), ns).get(name).await?;
        let cluster_file = dir.join(format!("{fixture}-cluster.yaml"));
        std::fs::write(&cluster_file, serde_yaml::to_string(&pc)?)?;
        let items: Vec<&Value> = before[fixture].values().collect();
        let observed_file = dir.join(format!("{fixture}-observed.yaml"));
        std::fs::write(&observed_file, serde_yaml::to_string(&serde_json::json!({"kind": "List", "items": items}))?)?;
        let pdb = if pdb_api == PdbApi::V1 { "v1" } else { "v1beta1" };
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tsdb-ctl"))
            .args(["plan", "-f"])
            .arg(&cluster_file)
            .arg("--observed")
            .arg(&observed_file)
            .args(["--output", "steps", "--pdb-api", pdb, "--agent-image", DEFAULT_AGENT_IMAGE])
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "{fixture}: {}", String::from_utf8_lossy(&out.stderr));
        ensure!(stdout.trim() == "[]", "{fixture}: tsdb-ctl plans steps against the example's objects: {stdout}");
    }
    Ok(())
}
