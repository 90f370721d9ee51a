//! Deleting every MCPInstance (the chart's pre-delete hook runs `reflow-controller
//! delete-instances`): their Pods, Services, NetworkPolicies and credential Secrets follow by owner.

use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use reflow_crds::api::MCPInstance;
use tracing::info;

/// Deletes the MCPInstances in `namespaces` (every namespace when empty); returns how many.
pub async fn delete_all(client: &Client, namespaces: &[String]) -> Result<usize, kube::Error> {
    let apis: Vec<Api<MCPInstance>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let mut deleted = 0;
    for api in apis {
        for inst in api.list(&ListParams::default()).await? {
            let ns = inst.namespace().unwrap_or_default();
            let name = inst.name_any();
            let scoped: Api<MCPInstance> = Api::namespaced(client.clone(), &ns);
            match scoped.delete(&name, &DeleteParams::background()).await {
                Ok(_) => deleted += 1,
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
            info!(namespace = %ns, instance = %name, "instance deleted; its children follow");
        }
    }
    Ok(deleted)
}
