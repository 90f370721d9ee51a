//! Applies an instance's built children (server-side apply) and decides the Pod's phase: rolls a
//! Pod whose credentials or template changed, and reports a Pod the API server refuses or whose
//! server cannot start.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use reflow_crds::api::InstancePhase;
use tracing::info;

use super::MANAGER;
use super::children::{self, Children};

pub(super) enum PodOutcome {
    Phase(InstancePhase),
    /// The API server refused the Pod (Pod Security, a quota, a webhook): its message.
    Rejected(String),
    /// The Pod exists but a container cannot start (`waiting::stuck`): reason and message.
    Stuck(String, String),
}

/// Whether the refusal is the API server's answer about this Pod (4xx but conflicts), not a
/// transient failure to retry with backoff.
fn refused(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 409 && s.code != 429 => {
            Some(s.message.clone())
        }
        _ => None,
    }
}

pub(super) async fn children(
    client: &Client,
    ns: &str,
    built: &Children,
    fingerprint: &str,
) -> Result<PodOutcome, kube::Error> {
    let name = built.pod.name_any();
    let ssa = PatchParams::apply(MANAGER).force();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .patch(&name, &ssa, &Patch::Apply(&built.secret))
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let existing = pods.get_opt(&name).await?;
    let annotation = |pod: &Pod, key: &str| pod.annotations().get(key).cloned();
    let wanted_template = annotation(&built.pod, children::TEMPLATE_ANNOTATION);
    let mut stuck = None;
    let phase = match &existing {
        Some(p)
            if annotation(p, children::FINGERPRINT_ANNOTATION).as_deref() != Some(fingerprint) =>
        {
            // Pods are immutable where it matters: a credential change replaces the Pod.
            info!("credential fingerprint changed; rolling the pod");
            pods.delete(&name, &DeleteParams::default()).await?;
            InstancePhase::Pending
        }
        Some(p) if annotation(p, children::TEMPLATE_ANNOTATION) != wanted_template => {
            // A changed pod.template (image, resources, env) or bridge image: the running Pod
            // is replaced, as a Deployment would roll it; callers reconnect to the new one.
            info!("pod template changed; rolling the pod");
            pods.delete(&name, &DeleteParams::default()).await?;
            InstancePhase::Pending
        }
        Some(p) => {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                InstancePhase::Running
            } else {
                stuck = super::waiting::stuck(p);
                InstancePhase::Pending
            }
        }
        None => match pods.patch(&name, &ssa, &Patch::Apply(&built.pod)).await {
            Ok(_) => InstancePhase::Pending,
            Err(e) => match refused(&e) {
                Some(message) => return Ok(PodOutcome::Rejected(message)),
                None => return Err(e),
            },
        },
    };
    Api::<Service>::namespaced(client.clone(), ns)
        .patch(&name, &ssa, &Patch::Apply(&built.service))
        .await?;
    Api::<NetworkPolicy>::namespaced(client.clone(), ns)
        .patch(&name, &ssa, &Patch::Apply(&built.network_policy))
        .await?;
    Ok(match stuck {
        Some((reason, message)) => PodOutcome::Stuck(reason, message),
        None => PodOutcome::Phase(phase),
    })
}
