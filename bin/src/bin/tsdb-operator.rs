//! `tsdb-operator`: the operator and its agent sidecar. Wiring only.
use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tsdb-operator", version, about = "Kubernetes operator for Prometheus clusters")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", tsdb_operator_core::crd::crds_yaml()?),
    }
    Ok(())
}
