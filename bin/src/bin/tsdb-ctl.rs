//! `tsdb-ctl`: command-line tool. `validate` and `plan` work offline on files (a dry run for CI review);
//! `list`, `verify` and `restore` work on the backups in object storage. Wiring only: the logic is in the core
//! and the adapters.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;
use tsdb_operator_core::build::{self, BuildSettings, PdbApi};
use tsdb_operator_core::crd::PrometheusCluster;
use tsdb_operator_core::decide::{self, ClusterObservation, Outcome};
use tsdb_operator_core::monitors::{ObservedMonitors, PodMonitor, PrometheusRule, ServiceMonitor};
use tsdb_operator_core::plan::{ChildKey, Step};
use tsdb_operator_core::storage::{self, ObservedClaim};
use tsdb_operator_core::validate;

#[path = "../store_args.rs"]
mod store_args;
use store_args::{BackupArgs, StoreArgs};

#[derive(Parser)]
#[command(name = "tsdb-ctl", version, about = "Command-line tool of tsdb-operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check PrometheusCluster manifests; exits 1 and prints every field error when one is invalid.
    Validate {
        /// File with one or more PrometheusCluster documents ("-" for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Turn prometheus-operator `Prometheus` and `PrometheusAgent` objects into PrometheusClusters (YAML on standard
    /// output); every field that could not be carried over is named on standard error. Exits 1 when a result does
    /// not validate.
    Migrate {
        /// File with one or more Prometheus or PrometheusAgent documents ("-" for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Print what the operator would apply and the steps it would take, as multi-document YAML.
    Plan {
        /// File with one or more PrometheusCluster documents ("-" for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Objects as they exist now (multi-document YAML or a `kind: List`, e.g. from `kubectl get -o yaml`).
        #[arg(long)]
        observed: Option<PathBuf>,
        /// What to print: the manifests to apply (with the steps as comments) or the steps as YAML data.
        #[arg(long, value_enum, default_value_t = Output::Manifests)]
        output: Output,
        /// PodDisruptionBudget API of the target server.
        #[arg(long, value_enum, default_value_t = PdbVersion::V1)]
        pdb_api: PdbVersion,
        /// Image of the agent sidecar.
        #[arg(long, default_value = build::DEFAULT_AGENT_IMAGE)]
        agent_image: String,
        /// The operator's backup flags that the rendered pods depend on; give the operator's values.
        #[command(flatten)]
        backup: PlanBackupArgs,
    },
    #[command(flatten)]
    Backup(BackupCommand),
    /// Print the audit trail: who changed what, and what the operator did, newest first.
    Audit(AuditArgs),
}

/// `tsdb-ctl audit`.
#[derive(Args)]
struct AuditArgs {
    /// The operator's --audit-dsn (`sqlite:/path/audit.db` or `postgres://...`).
    #[arg(long, env = "TSDB_AUDIT_DSN", hide_env_values = true)]
    dsn: String,
    /// Only this namespace.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Only this cluster (or set) name.
    #[arg(long)]
    cluster: Option<String>,
    /// Only this actor: a user name, or the operator's identity.
    #[arg(long)]
    actor: Option<String>,
    /// Only this operation (`create`, `update`, or an operator action such as `Scaled`, `BackupSucceeded`).
    #[arg(long)]
    operation: Option<String>,
    /// Only records at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Only records before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// At most this many records.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = AuditOutput::Table)]
    output: AuditOutput,
}

#[derive(Clone, Copy, ValueEnum)]
enum AuditOutput {
    /// Aligned columns.
    Table,
    /// A JSON array of records.
    Json,
}

async fn cmd_audit(args: AuditArgs) -> Result<ExitCode> {
    use tsdb_operator_adapters::audit::store::{AuditStore as _, SqlStore};
    for (flag, time) in [("--since", &args.since), ("--until", &args.until)] {
        if let Some(t) = time {
            t.parse::<k8s_openapi::jiff::Timestamp>()
                .with_context(|| format!("{flag} {t:?}: give an RFC 3339 time such as 2026-12-03T10:00:00Z"))?;
        }
    }
    let store = SqlStore::connect(&args.dsn).await?;
    let filter = tsdb_operator_core::audit::Filter {
        namespace: args.namespace,
        cluster: args.cluster,
        actor: args.actor,
        operation: args.operation,
        since: args.since,
        until: args.until,
        limit: args.limit,
    };
    let records = store.query(&filter).await?;
    match args.output {
        AuditOutput::Json => println!("{}", serde_json::to_string_pretty(&records)?),
        AuditOutput::Table => {
            let mut rows = vec![[
                "TIME".to_owned(),
                "NAMESPACE".to_owned(),
                "NAME".to_owned(),
                "ACTOR".to_owned(),
                "OPERATION".to_owned(),
                "RESULT".to_owned(),
                "DETAIL".to_owned(),
            ]];
            for r in &records {
                let detail = if r.diff.is_empty() || r.diff == "[]" {
                    r.detail.clone()
                } else {
                    format!("{} {}", r.diff, r.detail)
                };
                rows.push([
                    r.timestamp.clone(),
                    r.namespace.clone(),
                    r.cluster_name.clone(),
                    r.operator.clone(),
                    r.operation.clone(),
                    r.result.clone(),
                    detail.trim().to_owned(),
                ]);
            }
            let mut widths = [0; 6];
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row.iter()) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            for row in rows {
                let mut line = String::new();
                for (cell, w) in row.iter().zip(widths) {
                    let _ = write!(line, "{cell:<w$}  ");
                }
                line.push_str(&row[6]);
                println!("{line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The operator's backup flags, as `tsdb-operator` takes them.
#[derive(Args)]
struct PlanBackupArgs {
    /// The operator's --s3-endpoint.
    #[arg(long, default_value = "")]
    s3_endpoint: String,
    /// The operator's --s3-region.
    #[arg(long, default_value = "us-east-1")]
    s3_region: String,
    /// The operator's --backup-dir.
    #[arg(long, default_value = "")]
    backup_dir: String,
    /// The operator's --s3-credentials-secret (clusters naming no credentialsSecretRef then mount its copy).
    #[arg(long, default_value = "")]
    s3_credentials_secret: String,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// List the complete backups (all pages), newest first: time, size, manifest key, blocks, status.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this cluster (NAMESPACE/NAME).
        #[arg(long)]
        cluster: Option<String>,
        /// Print at most this many backups.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Check a backup: its manifest and the size and SHA-256 of every object; exits 1 naming the first bad one.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        which: BackupArgs,
    },
    /// Restore a backup into a data directory Prometheus loads as is (blocks directly under it), verifying
    /// every file before anything appears there. Refuses a non-empty directory without --force.
    Restore {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        which: BackupArgs,
        /// The data directory to write.
        #[arg(long, default_value = "./restore")]
        dest: PathBuf,
        /// Write into a non-empty directory (blocks with the same ULID are replaced).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Manifests,
    Steps,
}

#[derive(Clone, Copy, ValueEnum)]
enum PdbVersion {
    V1,
    V1beta1,
}

fn read_input(path: &Path) -> Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("failed to read standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))
    }
}

/// Every YAML document in `text`, with `kind: List` documents expanded into their items.
fn documents(text: &str, source: &Path) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(doc)
            .with_context(|| format!("{}: document {} is not valid YAML", source.display(), i + 1))?;
        if value.is_null() {
            continue;
        }
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            out.extend(value.get("items").and_then(Value::as_array).cloned().unwrap_or_default());
        } else {
            out.push(value);
        }
    }
    Ok(out)
}

fn clusters(path: &Path) -> Result<Vec<PrometheusCluster>> {
    let docs = documents(&read_input(path)?, path)?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.get("kind").and_then(Value::as_str) != Some("PrometheusCluster") {
            continue;
        }
        let pc: PrometheusCluster = serde_json::from_value(doc)
            .with_context(|| format!("{}: document {} is not a valid PrometheusCluster", path.display(), i + 1))?;
        out.push(pc);
    }
    if out.is_empty() {
        bail!("{}: no PrometheusCluster documents found", path.display());
    }
    Ok(out)
}

fn id(pc: &PrometheusCluster) -> String {
    format!("{}/{}", pc.metadata.namespace.as_deref().unwrap_or("default"), pc.metadata.name.as_deref().unwrap_or("?"))
}

fn cmd_migrate(file: &Path) -> Result<ExitCode> {
    let mut failed = false;
    let mut out = String::new();
    for source in documents(&read_input(file)?, file)? {
        let migrated = tsdb_operator_core::migrate::migrate(&source)?;
        let pc = &migrated.cluster;
        for left in &migrated.not_carried {
            eprintln!("{}: not carried over: {left}", id(pc));
        }
        if let Err(errors) = validate::cluster(pc) {
            failed = true;
            for e in &errors {
                eprintln!("{}: {e}", id(pc));
            }
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(pc)?);
    }
    print!("{out}");
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn cmd_validate(file: &Path) -> Result<ExitCode> {
    let mut failed = false;
    for pc in clusters(file)? {
        match validate::cluster(&pc) {
            Ok(_) => println!("{}: valid", id(&pc)),
            Err(errors) => {
                failed = true;
                for e in &errors {
                    eprintln!("{}: {e}", id(&pc));
                }
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// One step of `tsdb-ctl plan -o steps`; `namespace` only for an object in another namespace than the cluster's.
fn step_json(cluster: &str, step: &Step, action: &str, reason: &str) -> Value {
    let key = step.key();
    let mut out = serde_json::json!({
        "cluster": cluster,
        "action": action,
        "apiVersion": key.api_version,
        "kind": key.kind,
        "name": key.name,
        "reason": reason,
    });
    if let (Some(ns), Some(map)) = (&key.namespace, out.as_object_mut()) {
        map.insert("namespace".to_owned(), Value::String(ns.clone()));
    }
    out
}

/// The observed documents the operator would read for `pc`: its children in its namespace and the objects of
/// `elsewhere` (discovery objects in other namespaces), keyed as the operator keys them.
fn observed_for(pc: &PrometheusCluster, observed: &[Value], elsewhere: &[ChildKey]) -> BTreeMap<ChildKey, Value> {
    let name = pc.metadata.name.clone().unwrap_or_default();
    let ns = pc.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let children = decide::children_to_read(&name, &BuildSettings::default());
    observed
        .iter()
        .filter_map(|o| {
            let kind = o.get("kind").and_then(Value::as_str).unwrap_or_default();
            let oname = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            let ons = o.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
            let mut key = ChildKey::of(o)?;
            if ons == ns && children.iter().any(|c| c.kind == kind && c.name == oname) {
                return Some((key, o.clone()));
            }
            let theirs =
                elsewhere.iter().any(|c| c.kind == kind && c.name == oname && c.namespace.as_deref() == Some(ons));
            theirs.then(|| {
                key.namespace = Some(ons.to_owned());
                (key, o.clone())
            })
        })
        .collect()
}

/// The ServiceMonitors, PodMonitors, PrometheusRules and Namespaces among the observed documents (documents of a kind that does
/// not decode are reported). Without any, no monitor is chosen.
fn observed_monitors(observed: &[Value]) -> Result<Monitors> {
    let of_kind =
        |kind: &'static str| observed.iter().filter(move |o| o.get("kind").and_then(Value::as_str) == Some(kind));
    let decode = |o: &Value| {
        let id = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
        (o.clone(), id)
    };
    let mut services = Vec::new();
    for (o, id) in of_kind("ServiceMonitor").map(decode) {
        services.push(serde_json::from_value(o).with_context(|| format!("ServiceMonitor {id}"))?);
    }
    let mut pods = Vec::new();
    for (o, id) in of_kind("PodMonitor").map(decode) {
        pods.push(serde_json::from_value(o).with_context(|| format!("PodMonitor {id}"))?);
    }
    let mut rules = Vec::new();
    for (o, id) in of_kind("PrometheusRule").map(decode) {
        rules.push(serde_json::from_value(o).with_context(|| format!("PrometheusRule {id}"))?);
    }
    let namespaces = of_kind("Namespace")
        .filter_map(|o| {
            let name = o.pointer("/metadata/name").and_then(Value::as_str)?.to_owned();
            let labels = o.pointer("/metadata/labels").cloned().and_then(|l| serde_json::from_value(l).ok());
            Some((name, labels.unwrap_or_default()))
        })
        .collect();
    Ok(Monitors { services, pods, rules, namespaces })
}

/// The monitors and namespaces among the observed documents.
struct Monitors {
    services: Vec<ServiceMonitor>,
    pods: Vec<PodMonitor>,
    rules: Vec<PrometheusRule>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl Monitors {
    fn observed(&self) -> ObservedMonitors<'_> {
        ObservedMonitors {
            service_monitors: Some(&self.services),
            pod_monitors: Some(&self.pods),
            prometheus_rules: Some(&self.rules),
            namespaces: &self.namespaces,
            secrets: None,
        }
    }
}

/// The cluster's data volume claims among the observed documents.
fn observed_claims(pc: &PrometheusCluster, observed: &[Value]) -> Vec<ObservedClaim> {
    let name = pc.metadata.name.clone().unwrap_or_default();
    let ns = pc.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let text = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
    observed
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some("PersistentVolumeClaim"))
        .filter(|o| o.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default") == ns)
        .filter_map(|o| {
            let claim = text(o, "/metadata/name")?;
            storage::is_data_claim_of(&name, &claim).then(|| ObservedClaim {
                name: claim,
                storage_class_name: text(o, "/spec/storageClassName"),
                requested: text(o, "/spec/resources/requests/storage"),
                capacity: text(o, "/status/capacity/storage"),
            })
        })
        .collect()
}

/// `allowVolumeExpansion` of StorageClass `class` among the observed documents; `None` when it is not there.
fn class_expansion(class: &str, observed: &[Value]) -> Option<bool> {
    observed
        .iter()
        .find(|o| {
            o.get("kind").and_then(Value::as_str) == Some("StorageClass")
                && o.pointer("/metadata/name").and_then(Value::as_str) == Some(class)
        })
        .map(|o| o.get("allowVolumeExpansion").and_then(Value::as_bool) == Some(true))
}

/// The dry run: the operator's own decision ([`decide::decide_cluster`]) for each cluster in `file`, against the
/// observed objects in `observed` (Secrets and pods are not observed, so no problem is reported for them).
fn cmd_plan(file: &Path, observed: Option<&Path>, output: Output, settings: &BuildSettings) -> Result<ExitCode> {
    let observed_docs = match observed {
        Some(p) => documents(&read_input(p)?, p)?,
        None => Vec::new(),
    };
    let monitors = observed_monitors(&observed_docs)?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut out = String::new();
    let mut failed = false;
    let mut steps_out = Vec::new();
    for mut pc in clusters(file)? {
        pc.metadata.namespace.get_or_insert_with(|| "default".to_owned());
        let elsewhere = decide::reads_with_monitors(&pc, Some(&monitors.observed())).elsewhere;
        let children = observed_for(&pc, &observed_docs, &elsewhere);
        let claims = observed_claims(&pc, &observed_docs);
        let class_allows_expansion = storage::class_to_check(&pc.spec.storage, &claims)
            .and_then(|class| class_expansion(&class, &observed_docs));
        let observation = ClusterObservation {
            cluster: &pc,
            children: &children,
            pods: &[],
            claims: &claims,
            class_allows_expansion,
            secrets: None,
            agent_problems: &[],
            monitors: Some(monitors.observed()),
        };
        let decision = decide::decide_cluster(&observation, settings, now);
        let steps: Vec<&Step> = decision.steps().collect();
        match &decision.outcome {
            Outcome::Rejected { message } => {
                failed = true;
                eprintln!("{}: {message}", id(&pc));
                continue;
            }
            Outcome::NameConflict { message } => {
                failed = true;
                writeln!(
                    out,
                    "# tsdb-ctl plan: PrometheusCluster {}: name conflict, nothing to do: {message}",
                    id(&pc)
                )?;
                continue;
            }
            Outcome::Paused => {
                writeln!(
                    out,
                    "# tsdb-ctl plan: PrometheusCluster {}: paused (spec.paused is true), nothing to do",
                    id(&pc)
                )?;
                continue;
            }
            Outcome::Reconcile => {}
        }
        writeln!(out, "# tsdb-ctl plan: PrometheusCluster {}: {} step(s)", id(&pc), steps.len())?;
        if let Some(c) = decision.status.conditions.iter().find(|c| {
            c.type_ == tsdb_operator_core::constants::conditions::PROGRESSING
                && c.status == "False"
                && c.reason != tsdb_operator_core::constants::reasons::RECONCILED
        }) {
            writeln!(out, "# {}: {}", c.reason, c.message)?;
        }
        for (i, step) in steps.iter().enumerate() {
            let (action, reason) = match step {
                Step::Apply { reason, .. } => ("apply", reason.to_string()),
                Step::Delete { .. } => ("delete", "NotDesired".to_owned()),
                Step::Resize { size, .. } => ("resize", format!("storage request {size}")),
                Step::Orphan { .. } => ("orphan", "VolumeClaimTemplateChanged".to_owned()),
            };
            writeln!(out, "# step {}: {action} {} ({reason})", i + 1, step.key())?;
            steps_out.push(step_json(&id(&pc), step, action, &reason));
        }
        for event in decision.stages.iter().flat_map(|s| &s.events).chain(&decision.events) {
            writeln!(out, "# event {}: {}", event.reason(), event.message())?;
        }
        for step in &steps {
            if let Step::Apply { manifest, .. } = step {
                let mut m = manifest.clone();
                if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.entry("namespace")
                        .or_insert_with(|| Value::String(pc.metadata.namespace.clone().unwrap_or_default()));
                }
                out.push_str("---\n");
                out.push_str(&serde_yaml::to_string(&m)?);
            }
        }
    }
    match output {
        Output::Manifests => print!("{out}"),
        Output::Steps => print!("{}", serde_yaml::to_string(&steps_out)?),
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn mib(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)] // display only
    let m = bytes as f64 / f64::from(1u32 << 20);
    format!("{m:.1} MiB")
}

async fn cmd_backup(command: BackupCommand) -> Result<ExitCode> {
    use tsdb_operator_adapters::backup::{catalogue, restore};
    match command {
        BackupCommand::List { store: args, cluster, limit } => {
            let store = args.open()?;
            let entries = match &cluster {
                Some(c) => {
                    let (ns, name) = c.split_once('/').context("--cluster: write it as NAMESPACE/NAME")?;
                    let layout = tsdb_operator_core::backup::manifest::Layout::new(&args.prefix, ns, name);
                    catalogue::list_cluster_backups(&store, &layout).await?
                }
                None => catalogue::list_backups(&store, &args.prefix).await?,
            };
            for e in entries.iter().take(limit.unwrap_or(usize::MAX)) {
                match &e.manifest {
                    Ok(m) => println!(
                        "{}  {:>10}  {}  blocks={}  Completed",
                        m.start_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        m.total_bytes(),
                        e.manifest_key,
                        m.blocks.len()
                    ),
                    Err(reason) => println!(
                        "{}  {:>10}  {}  blocks=?  Invalid: {reason}",
                        e.stored.last_modified.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        0,
                        e.manifest_key
                    ),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Verify { store: args, which } => {
            let store = args.open()?;
            let (layout, id) = store_args::find_backup(&store, &args, &which).await?;
            let m = restore::verify(&store, &layout, &id, None).await?;
            println!(
                "backup {id} under {} is complete: {} blocks, {} files, {} verified",
                layout.root(),
                m.blocks.len(),
                m.file_count(),
                mib(m.total_bytes())
            );
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Restore { store: args, which, dest, force } => {
            let store = args.open()?;
            let (layout, id) = store_args::find_backup(&store, &args, &which).await?;
            eprintln!("restoring backup {id} of {} into {}", layout.root(), dest.display());
            let last = std::sync::Mutex::new(0u64);
            let progress: restore::ProgressFn = std::sync::Arc::new(move |p: restore::Progress| {
                let pct = (p.bytes_done * 100).checked_div(p.bytes_total).unwrap_or(100);
                let mut last = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if pct >= *last + 10 || p.files_done == p.files_total {
                    *last = pct;
                    eprintln!(
                        "  {pct:>3}%  {}/{} files  {} of {}",
                        p.files_done,
                        p.files_total,
                        mib(p.bytes_done),
                        mib(p.bytes_total)
                    );
                }
            });
            let done = restore::restore(&store, &layout, &id, &dest, force, Some(progress)).await?;
            println!(
                "restored backup {id}: {} blocks, {} files, {} into {}",
                done.blocks,
                done.files,
                mib(done.bytes),
                dest.display()
            );
            println!(
                "Next steps: the blocks are directly under {0}; start Prometheus with --storage.tsdb.path={0}, or \
                 create a new PrometheusCluster with spec.restore (see docs/backup.md)",
                dest.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs an async command on a small runtime.
fn block_on(command: impl std::future::Future<Output = Result<ExitCode>>) -> Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the runtime")?
        .block_on(command)
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Backup(command) => block_on(cmd_backup(command)),
        Command::Audit(args) => block_on(cmd_audit(args)),
        Command::Validate { file } => cmd_validate(&file),
        Command::Migrate { file } => cmd_migrate(&file),
        Command::Plan { file, observed, output, pdb_api, agent_image, backup } => {
            let pdb_api = match pdb_api {
                PdbVersion::V1 => PdbApi::V1,
                PdbVersion::V1beta1 => PdbApi::V1beta1,
            };
            cmd_plan(
                &file,
                observed.as_deref(),
                output,
                &BuildSettings {
                    agent_image,
                    pdb_api,
                    backup: tsdb_operator_core::backup::protocol::BackupDefaults {
                        endpoint: backup.s3_endpoint,
                        region: backup.s3_region,
                        local_dir: backup.backup_dir,
                        shared_credentials: !backup.s3_credentials_secret.is_empty(),
                    },
                },
            )
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Each cause once (some errors already print their source).
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}", tsdb_operator_adapters::error_chain(e));
            ExitCode::FAILURE
        }
    }
}
