//! `embed-example [--namespace NS]`: reconciles PrometheusClusters with the core's decisions, using the
//! kubeconfig from the environment, until interrupted.

use tsdb_operator_core::build::BuildSettings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let namespace = std::env::args().skip_while(|a| a != "--namespace").nth(1);
    let client = kube::Client::try_default().await?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tsdb_operator_embed_example::run(client, BuildSettings::default(), namespace, shutdown).await;
    Ok(())
}
