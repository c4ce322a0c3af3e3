//! The operator and the agent sidecar are two processes built from this one crate. Their modules must not import
//! each other: what crosses the process boundary is HTTP, with the wire types in the core
//! (`tsdb_operator_core::reload::AgentStatus`, `tsdb_operator_core::backup::protocol`). This test reads the
//! sources and fails on an import across the boundary, naming the file and the line.

use std::path::{Path, PathBuf};

/// Modules that run only in the agent sidecar.
const AGENT_SIDE: [&str; 4] = ["agent.rs", "backup/agent.rs", "backup/take.rs", "web_proxy.rs"];

/// Modules that run only in the operator (files, or folders with every file in them).
const OPERATOR_SIDE: [&str; 10] = [
    "agent_client.rs",
    "api",
    "audit",
    "controller",
    "events.rs",
    "kube",
    "leader.rs",
    "prober.rs",
    "secure_metrics.rs",
    "webhook.rs",
];

/// Paths an agent-side module may not name: the operator's modules.
const AGENT_MAY_NOT_NAME: [&str; 10] = [
    "crate::agent_client",
    "crate::api",
    "crate::audit",
    "crate::controller",
    "crate::events",
    "crate::kube",
    "crate::leader",
    "crate::prober",
    "crate::secure_metrics",
    "crate::webhook",
];

/// Paths an operator-side module may not name: the agent's modules.
const OPERATOR_MAY_NOT_NAME: [&str; 5] =
    ["crate::agent::", "crate::agent;", "crate::backup::agent", "crate::backup::take", "crate::web_proxy"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files(entry: &str) -> Vec<PathBuf> {
    let path = src().join(entry);
    if path.is_dir() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&path)
            .expect("the module folder is readable")
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .collect();
        found.sort();
        found
    } else {
        assert!(path.is_file(), "{} is listed as a module but does not exist", path.display());
        vec![path]
    }
}

/// Lines of the files of `modules` that name one of `forbidden`, as `file:line: text`.
fn crossings(modules: &[&str], forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in modules.iter().flat_map(|m| files(m)) {
        let text = std::fs::read_to_string(&file).expect("the source file is readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if forbidden.iter().any(|f| code.contains(f)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, code));
            }
        }
    }
    found
}

#[test]
fn agent_modules_do_not_import_the_operator() {
    let found = crossings(&AGENT_SIDE, &AGENT_MAY_NOT_NAME);
    assert!(found.is_empty(), "agent-side modules import operator-side ones:\n{}", found.join("\n"));
}

#[test]
fn operator_modules_do_not_import_the_agent() {
    let found = crossings(&OPERATOR_SIDE, &OPERATOR_MAY_NOT_NAME);
    assert!(found.is_empty(), "operator-side modules import agent-side ones:\n{}", found.join("\n"));
}

#[test]
fn the_check_finds_an_import_across_the_boundary() {
    // controller/cluster.rs names the operator's own client module; were it listed as forbidden, it is found.
    let found = crossings(&["controller"], &["crate::agent_client"]);
    assert!(!found.is_empty(), "the check would not see a crossing");
}
