//! Discovery of what the API server serves, to render objects it accepts. I/O: the Kubernetes API.

use kube::Client;
use tsdb_operator_core::build::PdbApi;

/// Picks the PodDisruptionBudget API: `policy/v1` when served (Kubernetes 1.21 and later), else `policy/v1beta1`.
pub async fn discover_pdb_api(client: &Client) -> Result<PdbApi, kube::Error> {
    let resources = client.list_api_group_resources("policy/v1").await;
    match resources {
        Ok(list) if list.resources.iter().any(|r| r.name == "poddisruptionbudgets") => Ok(PdbApi::V1),
        Ok(_) => Ok(PdbApi::V1beta1),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(PdbApi::V1beta1),
        Err(e) => Err(e),
    }
}
