//! `process-kubelet`: runs the process kubelet against a cluster, for the local demo.
//!
//! `process-kubelet --kubeconfig K --nodes 3 --state-dir D [--operator-binary target/debug/tsdb-operator]`
//! runs until SIGINT/SIGTERM, then stops all pods and removes its network.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tsdb_operator_testenv::kubelet::{ImageProgram, Kubelet};

/// Plays the kubelet of N nodes and runs pods as local processes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Kubeconfig of the cluster.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Node names are `{prefix}-{i}`.
    #[arg(long, default_value = "tsdb-node")]
    node_prefix: String,
    /// Where PV directories, pod volumes and logs live; kept across restarts.
    #[arg(long)]
    state_dir: PathBuf,
    /// Pod subnet 10.213.INDEX.0/24 (default: the first free one).
    #[arg(long)]
    subnet_index: Option<u8>,
    /// Binary run for `*tsdb-operator` images.
    #[arg(long)]
    operator_binary: Option<PathBuf>,
    /// Extra image mappings `PREFIX=PATH` (the image's entrypoint becomes PATH).
    #[arg(long = "map-image", value_parser = parse_mapping)]
    map_image: Vec<(String, PathBuf)>,
    /// Restart back-off base in seconds (doubling to 300).
    #[arg(long, default_value_t = 10)]
    backoff_seconds: u64,
    /// Delete the Node objects on exit.
    #[arg(long)]
    delete_nodes: bool,
}

fn parse_mapping(s: &str) -> Result<(String, PathBuf), String> {
    let (prefix, path) = s.split_once('=').ok_or_else(|| format!("expected PREFIX=PATH, got {s:?}"))?;
    Ok((prefix.to_owned(), PathBuf::from(path)))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut builder = Kubelet::builder(args.kubeconfig.clone())
        .nodes(args.nodes)
        .node_prefix(&args.node_prefix)
        .state_dir(&args.state_dir)
        .backoff(Duration::from_secs(args.backoff_seconds), Duration::from_mins(5))
        .delete_nodes_on_shutdown(args.delete_nodes);
    if let Some(index) = args.subnet_index {
        builder = builder.subnet_index(index);
    }
    if let Some(path) = args.operator_binary {
        builder = builder.operator_binary(path.canonicalize().context("operator binary")?);
    }
    for (prefix, path) in args.map_image {
        builder = builder.map_image(&prefix, ImageProgram::binary(path));
    }
    let kubelet = builder.start().await.context("failed to start the process kubelet")?;
    println!(
        "process kubelet: nodes {:?}, pod subnet 10.213.{}.0/24, state {}",
        kubelet.nodes(),
        kubelet.subnet_index(),
        kubelet.state_dir().display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    kubelet.shutdown().await;
    Ok(())
}
