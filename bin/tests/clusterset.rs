//! PrometheusClusterSet against the real control plane (the seed's scenarios): label selector, namespace
//! selector, backup-template overlay, opt-out, member wins, sorted members and phase counts, changes reflected
//! within seconds, and deleting a set leaves members untouched. No kubelet: members stay Provisioning. The operator
//! runs with only the RBAC of deploy/rbac.yaml (fault table, row 22).

mod support;

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{Operator, eventually};
use tsdb_operator_core::crd::{PrometheusCluster, PrometheusClusterSet};
use tsdb_operator_testenv::controlplane::OPERATOR_SA_USER;
use tsdb_operator_testenv::process::Workdir;

async fn create_namespace(client: &kube::Client, name: &str, labels: serde_json::Value) -> Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
    Ok(())
}

async fn create_cluster(
    client: &kube::Client,
    ns: &str,
    name: &str,
    labels: serde_json::Value,
    extra: serde_json::Value,
) -> Result<()> {
    let mut pc = json!({
        "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusCluster",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"replicas": 1, "storage": {"size": "1Gi"}}
    });
    if let Some(obj) = extra.as_object() {
        for (k, v) in obj {
            if k == "annotations" {
                pc["metadata"]["annotations"] = v.clone();
            } else {
                pc["spec"][k] = v.clone();
            }
        }
    }
    let api: Api<PrometheusCluster> = Api::namespaced(client.clone(), ns);
    api.patch(name, &PatchParams::apply("test-user").force(), &Patch::Apply(&pc)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_set_selects_overlays_and_counts_members_across_namespaces() -> Result<()> {
    let cp = support::control_plane_only();
    let client = cp.client();
    let workdir = Workdir::create("clusterset-tests")?;
    cp.apply_yaml(include_str!("../../deploy/rbac.yaml")).await?;
    let mut op = Operator::start_as(cp, OPERATOR_SA_USER, &workdir, None, &[])?;
    let suffix = tsdb_operator_testenv::process::random_hex(4);
    let (prod, dev) = (format!("prod-{suffix}"), format!("dev-{suffix}"));
    let team = format!("team-{suffix}");
    create_namespace(&client, &prod, json!({"env": "prod"})).await?;
    create_namespace(&client, &dev, json!({"env": "dev"})).await?;

    // Members: a plain one, one that opted out, one with its own backup (member wins); one with another team
    // label and one in a namespace the namespace selector excludes.
    create_cluster(&client, &prod, "b-plain", json!({"team": team}), json!({})).await?;
    create_cluster(
        &client,
        &prod,
        "a-optout",
        json!({"team": team}),
        json!({"annotations": {"observability.merlionos.org/clusterset-opt-out": "true"}}),
    )
    .await?;
    create_cluster(
        &client,
        &prod,
        "c-own",
        json!({"team": team}),
        json!({"backup": {"enabled": true, "bucket": "mine", "schedule": "@hourly"}}),
    )
    .await?;
    create_cluster(&client, &prod, "d-other", json!({"team": "someone-else"}), json!({})).await?;
    create_cluster(&client, &dev, "e-dev", json!({"team": team}), json!({})).await?;

    let set: PrometheusClusterSet = serde_json::from_value(json!({
        "apiVersion": "observability.merlionos.org/v1", "kind": "PrometheusClusterSet",
        "metadata": {"name": format!("fleet-{suffix}")},
        "spec": {
            "clusterSelector": {"matchLabels": {"team": team}},
            "namespaceSelector": {"matchLabels": {"env": "prod"}},
            "backupTemplate": {"bucket": "fleet-backups", "schedule": "0 3 * * *", "prefix": "fleet"}
        }
    }))?;
    let sets: Api<PrometheusClusterSet> = Api::all(client.clone());
    let set_name = format!("fleet-{suffix}");
    sets.create(&PostParams::default(), &set).await?;

    let status = eventually("the set status with 3 members", Duration::from_mins(1), || async {
        let s = sets.get(&set_name).await?.status.unwrap_or_default();
        Ok((s.member_count == 3 && s.phase_count.get("Provisioning") == Some(&3)).then_some(s))
    })
    .await?;
    let members: Vec<(String, String)> = status.members.iter().map(|m| (m.namespace.clone(), m.name.clone())).collect();
    assert_eq!(
        members,
        [
            (prod.clone(), "a-optout".to_owned()),
            (prod.clone(), "b-plain".to_owned()),
            (prod.clone(), "c-own".to_owned())
        ],
        "members are selected by labels and namespace labels, sorted by namespace then name"
    );
    assert_eq!(status.active_count, 0);
    assert_eq!(status.not_active.len(), 3);
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready condition");
    assert_eq!(ready.status, "False");

    let pcs: Api<PrometheusCluster> = Api::namespaced(client.clone(), &prod);
    let plain = eventually("the overlay on b-plain", Duration::from_secs(30), || async {
        let pc = pcs.get("b-plain").await?;
        Ok(pc.spec.backup.enabled.then_some(pc))
    })
    .await?;
    assert_eq!(plain.spec.backup.bucket, "fleet-backups");
    assert_eq!(plain.spec.backup.schedule, "0 3 * * *");
    assert_eq!(
        plain.metadata.annotations.unwrap_or_default().get("observability.merlionos.org/clusterset"),
        Some(&set_name)
    );
    let optout = pcs.get("a-optout").await?;
    assert!(!optout.spec.backup.enabled, "an opted-out member is never overlaid");
    let own = pcs.get("c-own").await?;
    assert_eq!(own.spec.backup.bucket, "mine", "a member's own backup wins");
    let other = pcs.get("d-other").await?;
    assert!(!other.spec.backup.enabled);
    let dev_member = Api::<PrometheusCluster>::namespaced(client.clone(), &dev).get("e-dev").await?;
    assert!(!dev_member.spec.backup.enabled, "namespace selector excludes dev");

    // A new matching cluster is reflected within seconds.
    create_cluster(&client, &prod, "f-new", json!({"team": team}), json!({})).await?;
    eventually("the new member", Duration::from_secs(15), || async {
        Ok((sets.get(&set_name).await?.status.unwrap_or_default().member_count == 4).then_some(()))
    })
    .await?;

    // Deleting the set leaves members and their overlaid backup in place.
    sets.delete(&set_name, &DeleteParams::default()).await?;
    eventually("the set to be gone", Duration::from_secs(30), || async {
        Ok(sets.get_opt(&set_name).await?.is_none().then_some(()))
    })
    .await?;
    let plain = pcs.get("b-plain").await?;
    assert!(plain.spec.backup.enabled && plain.spec.backup.bucket == "fleet-backups");
    // All of it under the least-privilege identity: nothing was refused on the way.
    assert!(op.process.is_running());
    let log = std::fs::read_to_string(op.process.log_path())?;
    assert!(!log.to_lowercase().contains("forbidden"), "the operator was refused something:\n{log}");
    Ok(())
}
