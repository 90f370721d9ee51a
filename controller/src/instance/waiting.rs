//! Why an instance's Pod exists but its server cannot start, from the kubelet's container
//! waiting reasons, with a hint for the usual cause (a stock image that wants root, a writable
//! root filesystem or HOME under the securityContext the controller enforces).

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Waiting reasons that will not go away by waiting: the instance fails with them.
const STUCK: &[&str] = &[
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "ErrImageNeverPull",
];

/// The first container (init containers first) stuck in one of `STUCK`: the kubelet's reason,
/// and a message naming the container with the kubelet's words and a hint.
pub fn stuck(pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    let all = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    all.filter_map(waiting)
        .find(|(reason, _, _)| STUCK.contains(&reason.as_str()))
        .map(|(reason, container, detail)| {
            let mut message = format!("container {container:?} cannot start: {reason}");
            if !detail.is_empty() {
                message.push_str(&format!(" ({detail})"));
            }
            message.push_str(". ");
            message.push_str(hint(&reason, &detail));
            (reason, message)
        })
}

fn waiting(c: &ContainerStatus) -> Option<(String, String, String)> {
    let w = c.state.as_ref()?.waiting.as_ref()?;
    let reason = w.reason.clone()?;
    let detail: String = w
        .message
        .clone()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    Some((reason, c.name.clone(), detail))
}

fn hint(reason: &str, detail: &str) -> &'static str {
    match reason {
        "CreateContainerConfigError" if detail.contains("runAsNonRoot") => {
            "The image runs as root, and the controller runs every instance Pod as non-root: \
             use an image with a non-root USER, or set securityContext.runAsUser (e.g. 1000) on \
             the container in the Target's pod.template."
        }
        "CreateContainerConfigError" => {
            "Check the Secrets and ConfigMaps the pod.template references, and its securityContext."
        }
        "CrashLoopBackOff" => {
            "The server keeps exiting. Under the enforced securityContext the root filesystem is \
             read-only: mount an emptyDir at /tmp (and any cache folder), set HOME to it, and \
             read `kubectl logs` of the Pod for the server's own error."
        }
        "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" | "ErrImageNeverPull" => {
            "The image cannot be pulled: build and push it (`make images` prints the names) or \
             fix the Target's pod.template image and its imagePullSecrets."
        }
        _ => "Read `kubectl describe pod` and `kubectl logs` of the Pod.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "status": status}))
            .expect("a pod")
    }

    #[test]
    fn a_root_image_under_run_as_non_root_is_named_with_a_hint() {
        let p = pod(serde_json::json!({"containerStatuses": [{
            "name": "server", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "CreateContainerConfigError",
                "message": "container has runAsNonRoot and image will run as root (pod: \"p\", container: server)"}}}]}));
        let (reason, message) = stuck(&p).expect("stuck");
        assert_eq!(reason, "CreateContainerConfigError");
        assert!(
            message.contains("\"server\"") && message.contains("runAsUser"),
            "{message}"
        );
    }

    #[test]
    fn creating_or_running_containers_are_not_stuck() {
        let creating = pod(serde_json::json!({"containerStatuses": [{
            "name": "server", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
        assert!(stuck(&creating).is_none());
        assert!(stuck(&pod(serde_json::json!({}))).is_none());
        let crashing = pod(serde_json::json!({"initContainerStatuses": [{
            "name": "install-bridge", "image": "i", "imageID": "", "ready": false,
            "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}));
        let (reason, message) = stuck(&crashing).expect("stuck");
        assert_eq!(reason, "CrashLoopBackOff");
        assert!(message.contains("emptyDir"), "{message}");
    }
}
