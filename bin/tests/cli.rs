//! `tsdb-ctl validate` and `tsdb-ctl plan` on the fixtures: exit codes, messages, and output that kubectl or yq
//! can read (multi-document YAML of valid Kubernetes objects).

#![allow(clippy::unwrap_used)] // test helpers

use std::process::Command;

fn ctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tsdb-ctl"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("tsdb-ctl runs")
}

#[test]
fn validate_accepts_every_valid_fixture() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/clusters")).unwrap() {
        let path = entry.unwrap().path();
        let out = ctl(&["validate", "-f", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn validate_exits_1_with_the_seed_message_and_the_field() {
    let out = ctl(&["validate", "-f", "fixtures/clusters-invalid/zero-replicas.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.replicas: Invalid value: 0: must be >= 1"), "{stderr}");
}

/// The name is checked as the operator checks it: it names the Service and the StatefulSet.
#[test]
fn validate_refuses_a_name_the_operator_cannot_use() {
    let out = ctl(&["validate", "-f", "fixtures/clusters-invalid/uppercase-name.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("metadata.name: Invalid value: \"Prod.Cluster\": must start with a lowercase letter"),
        "{stderr}"
    );
}

#[test]
fn validate_reports_a_missing_file_clearly() {
    let out = ctl(&["validate", "-f", "does-not-exist.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed to read does-not-exist.yaml"));
}

fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect()
}

#[test]
fn plan_prints_the_objects_to_apply_with_steps_as_comments() {
    let out = ctl(&["plan", "-f", "fixtures/clusters/typical.yaml", "--pdb-api", "v1beta1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("# tsdb-ctl plan: PrometheusCluster monitoring/prod: 4 step(s)"), "{stdout}");
    let docs = documents(&stdout);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"]);
    assert!(docs.iter().all(|d| d["metadata"]["namespace"] == "monitoring"));
    assert_eq!(docs[3]["apiVersion"], "policy/v1beta1");
}

#[test]
fn plan_takes_the_operators_backup_flags_that_the_pods_depend_on() {
    let secrets = |args: &[&str]| {
        let out = ctl(&[&["plan", "-f", "fixtures/clusters/readme-sample.yaml"][..], args].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let docs = documents(&String::from_utf8(out.stdout).unwrap());
        let sts = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap().clone();
        let volumes = sts["spec"]["template"]["spec"]["volumes"].as_array().cloned().unwrap_or_default();
        volumes.iter().filter_map(|v| v["secret"]["secretName"].as_str().map(String::from)).collect::<Vec<_>>()
    };
    assert!(!secrets(&[]).iter().any(|s| s.ends_with("-s3-credentials")), "{:?}", secrets(&[]));
    let shared = secrets(&["--s3-credentials-secret", "tsdb-system/s3"]);
    assert!(shared.iter().any(|s| s == "demo-s3-credentials"), "{shared:?}");
}

#[test]
fn plan_against_the_observed_state_lists_only_what_changes() {
    // Observed = what the plan would create, as a kubectl `List`; then the spec changes replicas.
    let first = ctl(&["plan", "-f", "fixtures/clusters/typical.yaml"]);
    let items = documents(&String::from_utf8(first.stdout).unwrap());
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let dir = std::env::temp_dir().join(format!("tsdb-ctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let observed = dir.join("observed.yaml");
    std::fs::write(&observed, serde_yaml::to_string(&list).unwrap()).unwrap();

    let same = ctl(&[
        "plan",
        "-f",
        "fixtures/clusters/typical.yaml",
        "--observed",
        observed.to_str().unwrap(),
        "--output",
        "steps",
    ]);
    assert!(same.status.success());
    assert_eq!(String::from_utf8(same.stdout).unwrap().trim(), "[]", "nothing to do against its own output");

    let changed = dir.join("changed.yaml");
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/clusters/typical.yaml")).unwrap();
    std::fs::write(&changed, text.replace("replicas: 2", "replicas: 1")).unwrap();
    let out =
        ctl(&["plan", "-f", changed.to_str().unwrap(), "--observed", observed.to_str().unwrap(), "--output", "steps"]);
    let steps = documents(&String::from_utf8(out.stdout).unwrap()).remove(0);
    let steps: Vec<(String, String)> = steps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["action"].as_str().unwrap().to_owned(), s["kind"].as_str().unwrap().to_owned()))
        .collect();
    assert!(steps.contains(&("apply".into(), "StatefulSet".into())), "{steps:?}");
    assert!(steps.contains(&("delete".into(), "PodDisruptionBudget".into())), "{steps:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A step as `tsdb-ctl plan --output steps` prints it: action, kind, name, reason.
type PlannedStep = (String, String, String, String);

/// The exit code, steps and stderr of `tsdb-ctl plan --output steps` for `file`.
fn planned_steps(file: &str, extra: &[&str]) -> (Option<i32>, Vec<PlannedStep>, String) {
    let mut args = vec!["plan", "-f", file, "--output", "steps"];
    args.extend_from_slice(extra);
    let out = ctl(&args);
    let text = String::from_utf8(out.stdout).unwrap();
    let steps = documents(&text)
        .first()
        .and_then(|d| d.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let field = |f: &str| s[f].as_str().unwrap().to_owned();
            (field("action"), field("kind"), field("name"), field("reason"))
        })
        .collect();
    (out.status.code(), steps, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn plan_gives_the_operators_decision_for_every_fixture() {
    use tsdb_operator_core::build::{BuildSettings, PdbApi};
    use tsdb_operator_core::decide::{ClusterObservation, decide_cluster};
    use tsdb_operator_core::plan::Step;
    let settings =
        BuildSettings { agent_image: "example.org/agent:test".into(), pdb_api: PdbApi::V1, ..BuildSettings::default() };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/clusters");
    let mut compared = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let mut pc: tsdb_operator_core::crd::PrometheusCluster =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        pc.metadata.namespace.get_or_insert_with(|| "default".into());
        let children = std::collections::BTreeMap::new();
        let decision =
            decide_cluster(&ClusterObservation::of(&pc, &children), &settings, k8s_openapi::jiff::Timestamp::now());
        let expected: Vec<PlannedStep> = decision
            .steps()
            .map(|s| {
                let (action, reason) = match s {
                    Step::Apply { reason, .. } => ("apply", reason.to_string()),
                    Step::Delete { .. } => ("delete", "NotDesired".to_owned()),
                    Step::Resize { size, .. } => ("resize", format!("storage request {size}")),
                    Step::Orphan { .. } => ("orphan", "VolumeClaimTemplateChanged".to_owned()),
                };
                (action.to_owned(), s.key().kind.clone(), s.key().name.clone(), reason)
            })
            .collect();
        let (code, steps, stderr) =
            planned_steps(path.to_str().unwrap(), &["--agent-image", "example.org/agent:test", "--pdb-api", "v1"]);
        assert_eq!(code, Some(0), "{}: {stderr}", path.display());
        assert!(!steps.is_empty(), "{}: a new cluster has steps", path.display());
        assert_eq!(steps, expected, "{}", path.display());
        compared += 1;
    }
    assert!(compared >= 5, "every fixture was compared");
}

#[test]
fn plan_says_when_the_operator_would_do_nothing_paused_or_name_conflict() {
    let dir = std::env::temp_dir().join(format!("tsdb-ctl-nothing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/clusters/typical.yaml")).unwrap();
    let paused = dir.join("paused.yaml");
    std::fs::write(&paused, text.replace("spec:\n", "spec:\n  paused: true\n")).unwrap();
    let out = ctl(&["plan", "-f", paused.to_str().unwrap()]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("monitoring/prod: paused (spec.paused is true), nothing to do"), "{stdout}");
    assert!(documents(&stdout).is_empty(), "no object to apply: {stdout}");

    // A Service named like the cluster that another controller owns.
    let observed = dir.join("observed.yaml");
    std::fs::write(
        &observed,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: prod\n  namespace: monitoring\n  ownerReferences:\n  \
         - {apiVersion: apps/v1, kind: Deployment, name: web, uid: u1, controller: true}\n",
    )
    .unwrap();
    let out = ctl(&["plan", "-f", "fixtures/clusters/typical.yaml", "--observed", observed.to_str().unwrap()]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "a conflict fails the dry run: {stdout}");
    assert!(stdout.contains("name conflict, nothing to do: Service prod exists but is not owned"), "{stdout}");
    assert!(documents(&stdout).is_empty(), "no object to apply: {stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn operator(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tsdb-operator"))
        .args(args)
        .env_remove("TSDB_AUDIT_DSN")
        .env_remove("KUBECONFIG")
        .output()
        .expect("tsdb-operator runs")
}

#[test]
fn the_operator_takes_the_seed_flags_and_refuses_what_it_cannot_use_by_name() {
    // Accepted: the run gets as far as reading the (missing) kubeconfig.
    let kubeconfig = "--kubeconfig=/nonexistent/tsdb-operator-test/kubeconfig";
    let out = operator(&[
        "-leader-elect=true",
        "--enable-ha=false",
        "--enable-backup",
        "--metrics-secure=false",
        "--zap-log-level=debug",
        "--zap-encoder=json",
        kubeconfig,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("failed to read kubeconfig"), "{stderr}");

    // The REST API is accepted with Go's boolean spellings (and its flags), as far as the kubeconfig.
    let out = operator(&["--enable-api=True", "--api-address=127.0.0.1:0", "--api-namespace=monitoring", kubeconfig]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("failed to read kubeconfig"), "{stderr}");
    // A database the audit trail cannot use is named with the fix, before connecting, its password hidden.
    let out = operator(&["--audit-dsn=mysql://audit:secret@db/audit", kubeconfig]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--audit-dsn") && stderr.contains("sqlite:") && !stderr.contains("secret"), "{stderr}");
    assert!(!stderr.contains("kubeconfig"), "refused before connecting: {stderr}");

    // As in Go, a bare boolean does not take the next argument, and a wrong spelling says which are right.
    let out = operator(&["--leader-elect", "false", kubeconfig]);
    assert_eq!(out.status.code(), Some(2));
    let out = operator(&["--enable-ha=yes", kubeconfig]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use true or false"));
}

/// `promtool` of the given Prometheus major version, installed by scripts/install-deps.sh.
fn promtool(major: u8) -> Command {
    let var = format!("TSDB_PROMTOOL{major}_BIN");
    let path = std::env::var(&var).expect("$TSDB_PROMTOOL<major>_BIN is set: source ~/.cache/tsdb-operator/env.sh");
    let mut cmd = Command::new(path);
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/monitoring"));
    cmd
}

#[test]
fn the_shipped_alerts_load_and_fire_as_their_unit_tests_say_and_every_dashboard_query_parses() {
    for major in [2, 3] {
        for args in [&["check", "rules", "alerts.yaml"][..], &["test", "rules", "alerts_test.yaml"]] {
            let out = promtool(major).args(args).output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "promtool {major} {args:?}:\n{text}");
            assert!(text.contains("SUCCESS"), "promtool {major} {args:?}:\n{text}");
        }
    }
    // Each dashboard query as a recording rule: `promtool check rules` parses it as Prometheus would.
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/monitoring/grafana-dashboard.json")).unwrap();
    let mut rules = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has a query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            rules.push(serde_json::json!({"record": format!("dashboard:q{}", rules.len()), "expr": expr}));
        }
    }
    let file = std::env::temp_dir().join(format!("tsdb-dashboard-queries-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string()).unwrap();
    for major in [2, 3] {
        let out = promtool(major).arg("check").arg("rules").arg(&file).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains(&format!("{} rules found", rules.len())), "{text}");
    }
    std::fs::remove_file(&file).unwrap();
    // A broken query is caught (the check above can fail).
    let bad = std::env::temp_dir().join(format!("tsdb-dashboard-bad-{}.json", std::process::id()));
    std::fs::write(&bad, r#"{"groups":[{"name":"d","rules":[{"record":"d:q","expr":"sum by (le (x)"}]}]}"#).unwrap();
    assert!(!promtool(3).arg("check").arg("rules").arg(&bad).output().unwrap().status.success());
    std::fs::remove_file(&bad).unwrap();
}

#[test]
fn migrate_turns_the_walkthroughs_prometheus_and_agent_into_clusters_that_validate_and_plan() {
    let out = ctl(&["migrate", "-f", "fixtures/prometheus-operator/prometheus.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("default/prometheus: not carried over: spec.alerting.alertmanagers[0].bearerTokenFile:"),
        "{stderr}"
    );
    assert!(!stderr.contains("spec.ruleSelector"), "the rule selector is carried over: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let docs: Vec<serde_json::Value> =
        serde_yaml::Deserializer::from_str(&stdout).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    assert_eq!(docs.len(), 2, "{stdout}");
    assert_eq!(docs[0]["kind"], "PrometheusCluster");
    assert_eq!(docs[0]["spec"]["storage"]["size"], "40Gi");
    assert_eq!(docs[0]["spec"]["ruleSelector"]["matchLabels"]["team"], "frontend");
    assert_eq!(docs[0]["spec"]["alerting"]["alertmanagers"][0]["name"], "alertmanager-operated");
    assert_eq!(docs[1]["spec"]["mode"], "Agent");
    assert_eq!(
        docs[1]["spec"]["remoteWrite"][0]["url"],
        "http://my-greptimedb-frontend.default:4000/v1/prometheus/write?db=public"
    );
    let migrated = std::env::temp_dir().join(format!("tsdb-ctl-migrated-{}.yaml", std::process::id()));
    std::fs::write(&migrated, &stdout).unwrap();
    let validated = ctl(&["validate", "-f", migrated.to_str().unwrap()]);
    assert!(validated.status.success(), "{}", String::from_utf8_lossy(&validated.stderr));
    let planned = ctl(&["plan", "-f", migrated.to_str().unwrap()]);
    std::fs::remove_file(&migrated).unwrap();
    assert!(planned.status.success(), "{}", String::from_utf8_lossy(&planned.stderr));
    let plan = String::from_utf8_lossy(&planned.stdout);
    assert!(plan.contains("--agent") || plan.contains("--enable-feature=agent"), "the agent's StatefulSet: {plan}");
    assert!(plan.contains("kind: ServiceAccount") && plan.contains("name: prometheus-agent"), "{plan}");
    assert!(plan.contains("rules_*.yml") && plan.contains("alertmanager-operated"), "rules and alerting: {plan}");

    let refused = ctl(&["migrate", "-f", "fixtures/clusters/minimal.yaml"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not a monitoring.coreos.com Prometheus"));
}
