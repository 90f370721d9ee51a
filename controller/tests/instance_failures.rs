//! Issue #18 items 1–2 and issue #17's pod template rule, against kube-rs's mock API server: a
//! Failed instance whose status already says so is not rewritten (no write loop); a Pod the API
//! server refuses fails the instance with a condition and an Event; a Target asking for the host
//! gets no Pod, and its instances say why; a Pod whose container cannot start (a root image
//! under runAsNonRoot) fails the instance with the kubelet's reason, a hint and an Event.

use std::time::Duration;

use http::{Method, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use reflow_controller::instance::{self, InstanceConfig};
use reflow_crds::api::{
    Condition, InstanceIdentity, InstancePhase, InstanceSpec, InstanceStatus, LocalRef, MCPInstance,
};
use reflow_crds::loader::{Loaded, load_str};
use reflow_crds::{Compiled, SealingKey, compile};
use serde_json::{Value, json};

mod mock_support;

use mock_support::{
    ApiHandle, CORE, INSTANCES, SSA, expect, expect_quiet, mock_client, not_found, respond,
};

const KEY: [u8; 32] = [3; 32];
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team/events?";

fn target(name: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: {name}, namespace: team}}\n\
         spec:\n  transport: kubernetes\n  isolation: perUser\n  pod:\n    transport: streamableHttp\n\
         \x20   template:\n      spec: {{{spec_extra}containers: [{{name: s, image: registry.invalid/s:1}}]}}\n"
    )
}

fn compiled(yaml: &str) -> Compiled {
    let mut loaded = Loaded::default();
    load_str(std::path::Path::new("t.yaml"), yaml, &mut loaded).expect("load");
    compile(&loaded.inputs, &SealingKey::from_bytes(&KEY)).expect("compile")
}

fn instance(target: &str, status: Option<InstanceStatus>) -> MCPInstance {
    let mut i = MCPInstance::new(
        "gh-alice",
        InstanceSpec {
            target_ref: LocalRef {
                name: target.into(),
            },
            isolation_key: "alice".into(),
            credential_fingerprint: None,
            identity: Some(InstanceIdentity {
                user: "alice".into(),
                ..InstanceIdentity::default()
            }),
        },
    );
    i.metadata.namespace = Some("team".into());
    i.metadata.uid = Some("uid-1".into());
    i.metadata.generation = Some(1);
    i.metadata.creation_timestamp = Some(Time(Timestamp::now()));
    i.status = status;
    i
}

fn failed(reason: &str, message: &str) -> InstanceStatus {
    InstanceStatus {
        observed_generation: Some(1),
        phase: InstancePhase::Failed,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(1),
            last_transition_time: Some("2026-01-01T00:00:00Z".into()),
        }],
        ..InstanceStatus::default()
    }
}

fn config() -> InstanceConfig {
    InstanceConfig {
        bridge_image: "registry.invalid/dataplane:test".into(),
        dataplane_labels: [(
            "app.kubernetes.io/name".to_owned(),
            "reflow-dataplane".to_owned(),
        )]
        .into(),
        dataplane_namespace: "reflow-system".into(),
        key: SealingKey::from_bytes(&KEY),
    }
}

/// The Failed status patch and its Warning Event; returns the Ready condition written.
async fn expect_failed(h: &mut ApiHandle) -> Value {
    let (status, send) = expect(h, Method::PATCH, &format!("{INSTANCES}/gh-alice/status?")).await;
    assert_eq!(status["status"]["phase"], "Failed");
    respond(
        send,
        StatusCode::OK,
        &json!({"apiVersion": "mcp.reflow.io/v1alpha1", "kind": "MCPInstance",
        "metadata": {"name": "gh-alice"}, "spec": {"targetRef": {"name": "gh"}, "isolationKey": "alice"}}),
    );
    let cond = status["status"]["conditions"][0].clone();
    let (event, send) = expect(h, Method::POST, EVENTS).await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], cond["reason"]);
    respond(send, StatusCode::CREATED, &event);
    cond
}

/// Issue #18 item 1: each status write's watch event starts the next reconcile, so a reconcile
/// that rewrites an unchanged Failed status (or stamps a new lastTransitionTime) loops forever.
#[tokio::test]
async fn a_failed_instance_whose_status_already_says_so_is_not_rewritten() {
    let c = compiled(&target("gh", ""));
    for (inst, reason) in [
        (
            instance(
                "nope",
                Some(failed(
                    "TargetNotFound",
                    "no accepted Target \"nope\" in this namespace",
                )),
            ),
            "TargetNotFound",
        ),
        (
            {
                let mut i = instance("gh", Some(failed("CredentialMismatch", "")));
                i.spec.credential_fingerprint = Some("0".repeat(64));
                i
            },
            "CredentialMismatch",
        ),
    ] {
        let (client, mut h) = mock_client();
        let quiet = tokio::spawn(async move { expect_quiet(&mut h).await });
        // CredentialMismatch's message is long: take the one the controller writes.
        let inst = if reason == "CredentialMismatch" {
            let (client2, mut h2) = mock_client();
            let verifier = tokio::spawn(async move {
                let (status, send) = expect(
                    &mut h2,
                    Method::PATCH,
                    &format!("{INSTANCES}/gh-alice/status?"),
                )
                .await;
                respond(send, StatusCode::OK, &json!({}));
                status
            });
            let mut fresh = inst.clone();
            fresh.status = None;
            let _ = instance::reconcile_with(
                &fresh,
                &c.snapshot,
                &client2,
                &config(),
                Timestamp::now(),
            )
            .await;
            let written = verifier.await.expect("verifier");
            let mut i = inst;
            let mut s: InstanceStatus =
                serde_json::from_value(written["status"].clone()).expect("status");
            s.conditions[0].last_transition_time = Some("2026-01-01T00:00:00Z".into());
            i.status = Some(s);
            i
        } else {
            inst
        };
        let action =
            instance::reconcile_with(&inst, &c.snapshot, &client, &config(), Timestamp::now())
                .await
                .expect("reconcile");
        assert_eq!(action, Action::requeue(Duration::from_secs(60)), "{reason}");
        quiet.await.unwrap_or_else(|e| panic!("{reason}: {e}"));
    }
}

/// Issue #18 item 2: a Pod refused by the API server (Pod Security here) fails the instance with
/// the server's message, as a condition and an Event, instead of leaving it without a phase.
#[tokio::test]
async fn a_pod_the_api_server_refuses_fails_the_instance_with_a_condition_and_an_event() {
    let c = compiled(&target("gh", ""));
    let (client, mut h) = mock_client();
    let verifier = tokio::spawn(async move {
        let (_, send) = expect(
            &mut h,
            Method::GET,
            &format!("{CORE}/secrets/mcpi-gh-alice"),
        )
        .await;
        not_found(send);
        let (secret, send) = expect(
            &mut h,
            Method::PATCH,
            &format!("{CORE}/secrets/mcpi-gh-alice{SSA}"),
        )
        .await;
        respond(send, StatusCode::OK, &secret);
        let (_, send) = expect(&mut h, Method::GET, &format!("{CORE}/pods/mcpi-gh-alice")).await;
        not_found(send);
        let (_, send) = expect(
            &mut h,
            Method::PATCH,
            &format!("{CORE}/pods/mcpi-gh-alice{SSA}"),
        )
        .await;
        respond(
            send,
            StatusCode::FORBIDDEN,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Forbidden", "code": 403,
            "message": "pods \"mcpi-gh-alice\" is forbidden: violates PodSecurity \"restricted:latest\": restricted volume types"}),
        );
        let cond = expect_failed(&mut h).await;
        assert_eq!(cond["reason"], "PodRejected");
        assert!(
            cond["message"]
                .as_str()
                .unwrap_or_default()
                .contains("violates PodSecurity"),
            "{cond}"
        );
        // No Service or NetworkPolicy for a Pod that does not exist.
        expect_quiet(&mut h).await;
    });
    let action = instance::reconcile_with(
        &instance("gh", None),
        &c.snapshot,
        &client,
        &config(),
        Timestamp::now(),
    )
    .await
    .expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    verifier.await.expect("verifier");
}

/// Issue #17: a Target whose template asks for the host is not served, and an instance of it
/// says so by name (condition and Event) and gets no Secret, Pod or Service.
#[tokio::test]
async fn an_instance_of_a_target_asking_for_the_host_gets_no_pod_and_a_clear_condition() {
    for (extra, field) in [
        ("hostNetwork: true, ", "spec.hostNetwork"),
        ("hostPID: true, ", "spec.hostPID"),
        ("hostIPC: true, ", "spec.hostIPC"),
        ("nodeName: n1, ", "spec.nodeName"),
        ("volumes: [{name: r, hostPath: {path: /}}], ", "hostPath"),
    ] {
        let c = compiled(&target("gh", extra));
        assert!(c.snapshot.target("team", "gh").is_none(), "{field} served");
        let (client, mut h) = mock_client();
        let verifier = tokio::spawn(async move {
            let cond = expect_failed(&mut h).await;
            expect_quiet(&mut h).await;
            cond
        });
        instance::reconcile_against(
            &instance("gh", None),
            &c.snapshot,
            &c.reports,
            &client,
            &config(),
            Timestamp::now(),
        )
        .await
        .expect("reconcile");
        let cond = verifier.await.expect("verifier");
        assert_eq!(cond["reason"], "TargetNotAccepted", "{field}");
        let message = cond["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("PodTemplateNotRestricted") && message.contains(field),
            "{message}"
        );
    }
}

/// Issue #18 item 8: a stock image that runs as root cannot start under the enforced
/// `runAsNonRoot`; the kubelet says so only on the Pod. The instance fails with that reason, a
/// hint, and an Event, so the caller and `kubectl get mcpinstance` see why there are no tools.
#[tokio::test]
async fn a_pod_whose_container_cannot_start_fails_the_instance_with_a_hint_and_an_event() {
    let c = compiled(&target("gh", ""));
    let (client, mut h) = mock_client();
    let verifier = tokio::spawn(async move {
        // First reconcile: the children are created; the Pod is pending.
        let pod = reconcile_children(&mut h, None).await;
        let (status, send) = expect(
            &mut h,
            Method::PATCH,
            &format!("{INSTANCES}/gh-alice/status?"),
        )
        .await;
        assert_eq!(status["status"]["phase"], "Pending", "{status}");
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "mcp.reflow.io/v1alpha1",
            "kind": "MCPInstance", "metadata": {"name": "gh-alice"},
            "spec": {"targetRef": {"name": "gh"}, "isolationKey": "alice"}}),
        );
        // Second: the kubelet refused to create the container.
        let mut stuck = pod;
        stuck["status"] = json!({"containerStatuses": [{
            "name": "s", "image": "registry.invalid/s:1", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"waiting": {"reason": "CreateContainerConfigError",
            "message": "container has runAsNonRoot and image will run as root (pod: \"mcpi-gh-alice_team\", container: s)"}}}]});
        reconcile_children(&mut h, Some(stuck)).await;
        let cond = expect_failed(&mut h).await;
        assert_eq!(cond["reason"], "CreateContainerConfigError");
        let message = cond["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("image will run as root") && message.contains("runAsUser"),
            "{message}"
        );
        expect_quiet(&mut h).await;
    });
    let inst = instance("gh", None);
    for _ in 0..2 {
        instance::reconcile_with(&inst, &c.snapshot, &client, &config(), Timestamp::now())
            .await
            .expect("reconcile");
    }
    verifier.await.expect("verifier");
}

/// Serves one reconcile's child calls up to the status write; `existing` is the Pod the API
/// holds. Returns the Pod applied (or `existing`).
async fn reconcile_children(h: &mut ApiHandle, existing: Option<Value>) -> Value {
    let (_, send) = expect(h, Method::GET, &format!("{CORE}/secrets/mcpi-gh-alice")).await;
    not_found(send);
    let (secret, send) = expect(
        h,
        Method::PATCH,
        &format!("{CORE}/secrets/mcpi-gh-alice{SSA}"),
    )
    .await;
    respond(send, StatusCode::OK, &secret);
    let (_, send) = expect(h, Method::GET, &format!("{CORE}/pods/mcpi-gh-alice")).await;
    let pod = match existing {
        Some(pod) => {
            respond(send, StatusCode::OK, &pod);
            pod
        }
        None => {
            not_found(send);
            let (pod, send) =
                expect(h, Method::PATCH, &format!("{CORE}/pods/mcpi-gh-alice{SSA}")).await;
            respond(send, StatusCode::OK, &pod);
            pod
        }
    };
    let (svc, send) = expect(
        h,
        Method::PATCH,
        &format!("{CORE}/services/mcpi-gh-alice{SSA}"),
    )
    .await;
    respond(send, StatusCode::OK, &svc);
    let (np, send) = expect(
        h,
        Method::PATCH,
        &format!("/apis/networking.k8s.io/v1/namespaces/team/networkpolicies/mcpi-gh-alice{SSA}"),
    )
    .await;
    respond(send, StatusCode::OK, &np);
    pod
}
