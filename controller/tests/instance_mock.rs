//! The MCPInstance reconciler against kube-rs's mock API server: the exact calls for a first
//! reconcile (children applied with owner references, the caller's resolved Credential values in
//! the Secret, a restricted Pod with the bridge in front of the STDIO server, status), a
//! credential roll, a fingerprint that no longer resolves, idle GC, a Target that is not there;
//! and the ensure API (fingerprint check, endpoint and bridge token once running).

use std::time::Duration;

use http::{Method, Request, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::controller::Action;
use reflow_controller::instance::{self, InstanceConfig};
use reflow_crds::api::{InstanceIdentity, InstanceSpec, LocalRef, MCPInstance};
use reflow_crds::loader::{Loaded, load_str};
use reflow_crds::{SealingKey, Snapshot, compile};
use serde_json::{Value, json};

mod mock_support;

use mock_support::{
    ApiHandle, CORE, INSTANCES, SSA, expect, expect_quiet, mock_client, not_found, respond,
};

const TARGET: &str = r#"
apiVersion: mcp.reflow.io/v1alpha1
kind: Target
metadata: {name: gh, namespace: team}
spec:
  transport: kubernetes
  isolation: perUser
  env: [{name: GITHUB_TOOLSETS, value: repos}]
  lifetimes: {idleSeconds: 600}
  pod:
    transport: stdio
    port: 8080
    template:
      metadata: {labels: {app: gh-mcp}}
      spec:
        containers:
          - name: server
            image: ghcr.io/github/github-mcp-server:1
            command: [github-mcp-server]
            args: [stdio]
---
apiVersion: v1
kind: Secret
metadata: {name: keys, namespace: team}
stringData: {alice: ghp-alice-value, bob: ghp-bob-value}
---
apiVersion: mcp.reflow.io/v1alpha1
kind: Credential
metadata: {name: alice-gh, namespace: team}
spec:
  targetRef: {name: gh}
  subject: {user: alice}
  env: [{name: GITHUB_TOKEN, secretKeyRef: {name: keys, key: alice}}]
---
apiVersion: mcp.reflow.io/v1alpha1
kind: Credential
metadata: {name: bob-gh, namespace: team}
spec:
  targetRef: {name: gh}
  subject: {user: bob}
  env: [{name: GITHUB_TOKEN, secretKeyRef: {name: keys, key: bob}}]
"#;

/// The sealing key the snapshot is compiled with (the controller's own).
const KEY: [u8; 32] = [2; 32];

/// What `user`'s Credentials for team/gh resolve to, as a dataplane with the same snapshot
/// computes it.
fn fingerprint_of(user: &str) -> String {
    snapshot()
        .target("team", "gh")
        .expect("target")
        .credentials
        .resolve(&reflow_crds::Identity::new(
            user,
            Vec::<String>::new(),
            Vec::<String>::new(),
        ))
        .fingerprint
        .to_hex()
}

/// How a Secret's `data` carries `s` (base64, as k8s-openapi writes it).
fn b64(s: &str) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec())).expect("bytes")
}

fn snapshot() -> Snapshot {
    let mut loaded = Loaded::default();
    load_str(std::path::Path::new("t.yaml"), TARGET, &mut loaded).expect("target");
    let c = compile(&loaded.inputs, &SealingKey::from_bytes(&KEY)).expect("compile");
    assert!(c.problems().next().is_none(), "{:?}", c.reports);
    c.snapshot
}

fn instance(target: &str, created: Timestamp, fingerprint: &str) -> MCPInstance {
    let mut i = MCPInstance::new(
        "gh-alice",
        InstanceSpec {
            target_ref: LocalRef {
                name: target.into(),
            },
            isolation_key: "alice".into(),
            credential_fingerprint: Some(fingerprint.into()),
            identity: Some(InstanceIdentity {
                user: "alice".into(),
                ..InstanceIdentity::default()
            }),
        },
    );
    i.metadata.namespace = Some("team".into());
    i.metadata.uid = Some("uid-1".into());
    i.metadata.generation = Some(1);
    i.metadata.creation_timestamp = Some(Time(created));
    i
}

fn config() -> InstanceConfig {
    InstanceConfig {
        bridge_image: "ghcr.io/reflow-mcp/dataplane:test".into(),
        dataplane_labels: [(
            "app.kubernetes.io/name".to_owned(),
            "reflow-dataplane".to_owned(),
        )]
        .into(),
        dataplane_namespace: "reflow-system".into(),
        key: SealingKey::from_bytes(&KEY),
    }
}

fn owned_by_instance(obj: &Value) {
    let o = &obj["metadata"]["ownerReferences"][0];
    assert_eq!(
        (o["kind"].as_str(), o["name"].as_str(), o["uid"].as_str()),
        (Some("MCPInstance"), Some("gh-alice"), Some("uid-1"))
    );
    assert_eq!(o["controller"], true);
    assert_eq!(obj["metadata"]["name"], "mcpi-gh-alice");
}

#[tokio::test]
async fn first_reconcile_applies_every_child_and_reports_pending() {
    let (client, mut h) = mock_client();
    let fp = fingerprint_of("alice");
    let inst = instance("gh", Timestamp::now(), &fp);
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
        owned_by_instance(&secret);
        assert_eq!(secret["data"]["GITHUB_TOOLSETS"], b64("repos"));
        assert_eq!(
            secret["data"]["GITHUB_TOKEN"],
            b64("ghp-alice-value"),
            "alice's resolved Credential value, opened for the pod"
        );
        assert!(
            secret["data"]["REFLOW_BRIDGE_TOKEN"]
                .as_str()
                .is_some_and(|t| t.len() > 20)
        );
        respond(send, StatusCode::OK, &secret);

        let (_, send) = expect(&mut h, Method::GET, &format!("{CORE}/pods/mcpi-gh-alice")).await;
        not_found(send);
        let (pod, send) = expect(
            &mut h,
            Method::PATCH,
            &format!("{CORE}/pods/mcpi-gh-alice{SSA}"),
        )
        .await;
        owned_by_instance(&pod);
        assert_eq!(
            pod["metadata"]["annotations"]["mcp.reflow.io/credential-fingerprint"],
            fp.as_str()
        );
        assert!(
            !pod.to_string().contains("ghp-alice-value"),
            "values only in the Secret"
        );
        assert_eq!(
            pod["metadata"]["labels"]["mcp.reflow.io/instance"],
            "gh-alice"
        );
        assert_eq!(
            pod["metadata"]["labels"]["app"], "gh-mcp",
            "template labels kept"
        );
        let spec = &pod["spec"];
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        let server = &spec["containers"][0];
        assert_eq!(server["command"], json!(["/reflow/reflow-dataplane"]));
        assert_eq!(
            server["args"],
            json!([
                "bridge",
                "--listen",
                "0.0.0.0:8080",
                "--path",
                "/mcp",
                "--token-env",
                "REFLOW_BRIDGE_TOKEN",
                "--",
                "github-mcp-server",
                "stdio"
            ])
        );
        assert_eq!(server["envFrom"][0]["secretRef"]["name"], "mcpi-gh-alice");
        for c in [server, &spec["initContainers"][0]] {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{c}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert!(c["resources"]["limits"]["memory"].is_string());
        }
        assert_eq!(
            spec["initContainers"][0]["image"],
            "ghcr.io/reflow-mcp/dataplane:test"
        );
        respond(send, StatusCode::OK, &pod);

        let (svc, send) = expect(
            &mut h,
            Method::PATCH,
            &format!("{CORE}/services/mcpi-gh-alice{SSA}"),
        )
        .await;
        owned_by_instance(&svc);
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(
            svc["spec"]["selector"]["mcp.reflow.io/instance"],
            "gh-alice"
        );
        respond(send, StatusCode::OK, &svc);

        let (np, send) = expect(
            &mut h,
            Method::PATCH,
            &format!(
                "/apis/networking.k8s.io/v1/namespaces/team/networkpolicies/mcpi-gh-alice{SSA}"
            ),
        )
        .await;
        owned_by_instance(&np);
        let from = &np["spec"]["ingress"][0]["from"][0];
        assert_eq!(
            from["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
            "reflow-dataplane"
        );
        assert_eq!(
            from["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "reflow-system"
        );
        assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 8080);
        respond(send, StatusCode::OK, &np);

        let (status, send) = expect(
            &mut h,
            Method::PATCH,
            &format!("{INSTANCES}/gh-alice/status?"),
        )
        .await;
        assert_eq!(status["status"]["phase"], "Pending");
        assert_eq!(
            status["status"]["endpoint"],
            "http://mcpi-gh-alice.team.svc:8080/mcp"
        );
        assert_eq!(status["status"]["conditions"][0]["reason"], "PodNotReady");
        assert_eq!(status["status"]["observedGeneration"], 1);
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "mcp.reflow.io/v1alpha1", "kind": "MCPInstance", "metadata": {"name": "gh-alice"}, "spec": {"targetRef": {"name": "gh"}, "isolationKey": "alice"}}),
        );
        expect_quiet(&mut h).await;
    });
    let action = instance::reconcile_with(&inst, &snapshot(), &client, &config(), Timestamp::now())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    verifier.await.expect("verifier");
}

#[tokio::test]
async fn a_credential_change_rolls_the_pod_with_new_secret_content_and_keeps_the_bridge_token() {
    let (client, mut h) = mock_client();
    // The pod runs with "fp-1"; the instance now wants alice's current credentials.
    let inst = instance("gh", Timestamp::now(), &fingerprint_of("alice"));
    let verifier = tokio::spawn(async move {
        let (_, send) = expect(
            &mut h,
            Method::GET,
            &format!("{CORE}/secrets/mcpi-gh-alice"),
        )
        .await;
        // "old-token" in base64.
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mcpi-gh-alice"}, "data": {"REFLOW_BRIDGE_TOKEN": "b2xkLXRva2Vu"}}),
        );
        let (secret, send) = expect(
            &mut h,
            Method::PATCH,
            &format!("{CORE}/secrets/mcpi-gh-alice{SSA}"),
        )
        .await;
        assert_eq!(
            secret["data"]["REFLOW_BRIDGE_TOKEN"], "b2xkLXRva2Vu",
            "the token survives"
        );
        assert_eq!(secret["data"]["GITHUB_TOKEN"], b64("ghp-alice-value"));
        respond(send, StatusCode::OK, &secret);
        let (_, send) = expect(&mut h, Method::GET, &format!("{CORE}/pods/mcpi-gh-alice")).await;
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mcpi-gh-alice", "annotations": {"mcp.reflow.io/credential-fingerprint": "fp-1"}}}),
        );
        let (_, send) = expect(
            &mut h,
            Method::DELETE,
            &format!("{CORE}/pods/mcpi-gh-alice?"),
        )
        .await;
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mcpi-gh-alice"}}),
        );
        let (svc, send) = expect(
            &mut h,
            Method::PATCH,
            &format!("{CORE}/services/mcpi-gh-alice{SSA}"),
        )
        .await;
        respond(send, StatusCode::OK, &svc);
        let (np, send) = expect(
            &mut h,
            Method::PATCH,
            &format!(
                "/apis/networking.k8s.io/v1/namespaces/team/networkpolicies/mcpi-gh-alice{SSA}"
            ),
        )
        .await;
        respond(send, StatusCode::OK, &np);
        let (status, send) = expect(
            &mut h,
            Method::PATCH,
            &format!("{INSTANCES}/gh-alice/status?"),
        )
        .await;
        assert_eq!(status["status"]["phase"], "Pending");
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "mcp.reflow.io/v1alpha1", "kind": "MCPInstance", "metadata": {"name": "gh-alice"}, "spec": {"targetRef": {"name": "gh"}, "isolationKey": "alice"}}),
        );
        expect_quiet(&mut h).await;
    });
    instance::reconcile_with(&inst, &snapshot(), &client, &config(), Timestamp::now())
        .await
        .expect("reconcile");
    verifier.await.expect("verifier");
}

/// What one reconcile did to the Pod, answered by a mock API server that has `existing`.
struct PodOutcome {
    applied: Option<Value>,
    deleted: bool,
    phase: Value,
}

/// Serves one reconcile's calls (Secret, Pod, Service, NetworkPolicy, status) with `existing`
/// as the Pod the API holds.
async fn serve_reconcile(h: &mut ApiHandle, existing: Option<Value>) -> PodOutcome {
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
    let (mut applied, mut deleted, mut service_done) = (None, false, false);
    match existing {
        None => {
            not_found(send);
            let (pod, send) =
                expect(h, Method::PATCH, &format!("{CORE}/pods/mcpi-gh-alice{SSA}")).await;
            respond(send, StatusCode::OK, &pod);
            applied = Some(pod);
        }
        Some(pod) => {
            respond(send, StatusCode::OK, &pod);
            // Either the Pod goes, or the reconcile moves on to the Service.
            let (req, send) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
                .await
                .expect("a call after the pod GET")
                .expect("client alive");
            let call = (req.method().clone(), req.uri().to_string());
            if call.0 == Method::DELETE {
                assert_eq!(call.1, format!("{CORE}/pods/mcpi-gh-alice?"));
                respond(send, StatusCode::OK, &pod);
                deleted = true;
            } else {
                assert_eq!(
                    call,
                    (Method::PATCH, format!("{CORE}/services/mcpi-gh-alice{SSA}"))
                );
                respond(
                    send,
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "Service"}),
                );
                service_done = true;
            }
        }
    }
    if !service_done {
        let (svc, send) = expect(
            h,
            Method::PATCH,
            &format!("{CORE}/services/mcpi-gh-alice{SSA}"),
        )
        .await;
        respond(send, StatusCode::OK, &svc);
    }
    let (np, send) = expect(
        h,
        Method::PATCH,
        &format!("/apis/networking.k8s.io/v1/namespaces/team/networkpolicies/mcpi-gh-alice{SSA}"),
    )
    .await;
    respond(send, StatusCode::OK, &np);
    let (status, send) = expect(h, Method::PATCH, &format!("{INSTANCES}/gh-alice/status?")).await;
    respond(
        send,
        StatusCode::OK,
        &json!({"apiVersion": "mcp.reflow.io/v1alpha1", "kind": "MCPInstance", "metadata": {"name": "gh-alice"}, "spec": {"targetRef": {"name": "gh"}, "isolationKey": "alice"}}),
    );
    PodOutcome {
        applied,
        deleted,
        phase: status["status"]["phase"].clone(),
    }
}

/// `pod` as the API would hold it once running and ready.
fn running(mut pod: Value) -> Value {
    pod["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
    pod
}

#[tokio::test]
async fn a_changed_pod_template_rolls_the_pod_and_an_unchanged_one_leaves_it_running() {
    let (client, mut h) = mock_client();
    let inst = instance("gh", Timestamp::now(), &fingerprint_of("alice"));
    let newer = {
        let yaml = TARGET.replace("github-mcp-server:1", "github-mcp-server:2");
        let mut loaded = Loaded::default();
        load_str(std::path::Path::new("t.yaml"), &yaml, &mut loaded).expect("target");
        compile(&loaded.inputs, &SealingKey::from_bytes(&KEY))
            .expect("compile")
            .snapshot
    };
    let verifier = tokio::spawn(async move {
        let first = serve_reconcile(&mut h, None).await;
        let pod = first.applied.expect("the pod is applied");
        let hash = pod["metadata"]["annotations"]["mcp.reflow.io/pod-template-hash"].clone();
        assert!(hash.as_str().is_some_and(|h| h.len() == 20), "{pod}");
        // The same template: the running Pod stays.
        let same = serve_reconcile(&mut h, Some(running(pod.clone()))).await;
        assert!(!same.deleted);
        assert_eq!(same.phase, "Running");
        // Another image: the Pod is replaced, and the instance waits for the new one.
        let rolled = serve_reconcile(&mut h, Some(running(pod))).await;
        assert!(rolled.deleted);
        assert_eq!(rolled.phase, "Pending");
        expect_quiet(&mut h).await;
        hash
    });
    let now = Timestamp::now();
    for snapshot in [snapshot(), snapshot(), newer] {
        instance::reconcile_with(&inst, &snapshot, &client, &config(), now)
            .await
            .expect("reconcile");
    }
    let hash = verifier.await.expect("verifier");
    assert_ne!(hash, Value::Null);
}

#[tokio::test]
async fn an_idle_instance_is_deleted_and_its_children_follow() {
    let (client, mut h) = mock_client();
    let created = Timestamp::now() - Duration::from_secs(601);
    let inst = instance("gh", created, &fingerprint_of("alice"));
    let verifier = tokio::spawn(async move {
        let (body, send) = expect(&mut h, Method::DELETE, &format!("{INSTANCES}/gh-alice?")).await;
        assert_eq!(body["propagationPolicy"], "Background");
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "mcp.reflow.io/v1alpha1", "kind": "MCPInstance", "metadata": {"name": "gh-alice"}, "spec": {"targetRef": {"name": "gh"}, "isolationKey": "alice"}}),
        );
        expect_quiet(&mut h).await;
    });
    let action = instance::reconcile_with(&inst, &snapshot(), &client, &config(), Timestamp::now())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::await_change());
    verifier.await.expect("verifier");

    // Recent use keeps it: `lastUsed` counts instead of the creation time.
    let mut used = instance("gh", created, &fingerprint_of("alice"));
    used.status = Some(reflow_crds::api::InstanceStatus {
        last_used: Some(Timestamp::now().to_string()),
        ..Default::default()
    });
    let lifetimes = snapshot().target("team", "gh").expect("target").lifetimes;
    assert_eq!(instance::expired(&used, &lifetimes, Timestamp::now()), None);
    assert_eq!(
        instance::expired(&inst, &lifetimes, Timestamp::now()),
        Some("IdleTimeout")
    );
}

#[tokio::test]
async fn credentials_that_no_longer_resolve_to_the_fingerprint_are_refused_without_touching_children()
 {
    let (client, mut h) = mock_client();
    // Created for credentials the served snapshot no longer resolves to (bob's, say).
    let inst = instance("gh", Timestamp::now(), &fingerprint_of("bob"));
    let verifier = tokio::spawn(async move {
        let (status, send) = expect(
            &mut h,
            Method::PATCH,
            &format!("{INSTANCES}/gh-alice/status?"),
        )
        .await;
        assert_eq!(status["status"]["phase"], "Failed");
        let c = &status["status"]["conditions"][0];
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("False"), Some("CredentialMismatch"))
        );
        assert!(!status.to_string().contains("ghp-"), "no values in status");
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "mcp.reflow.io/v1alpha1", "kind": "MCPInstance", "metadata": {"name": "gh-alice"}, "spec": {"targetRef": {"name": "gh"}, "isolationKey": "alice"}}),
        );
        // The refusal is an Event too; no Secret, Pod, Service or NetworkPolicy call: alice's
        // values never reach a pod started for other credentials.
        let (event, send) = expect(
            &mut h,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/team/events?",
        )
        .await;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Warning"), Some("CredentialMismatch"))
        );
        respond(send, StatusCode::CREATED, &event);
        expect_quiet(&mut h).await;
    });
    let action = instance::reconcile_with(&inst, &snapshot(), &client, &config(), Timestamp::now())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    verifier.await.expect("verifier");
}

#[tokio::test]
async fn a_missing_target_fails_the_instance_without_touching_children() {
    let (client, mut h) = mock_client();
    let inst = instance("nope", Timestamp::now(), &fingerprint_of("alice"));
    let verifier = tokio::spawn(async move {
        let (status, send) = expect(
            &mut h,
            Method::PATCH,
            &format!("{INSTANCES}/gh-alice/status?"),
        )
        .await;
        assert_eq!(status["status"]["phase"], "Failed");
        let c = &status["status"]["conditions"][0];
        assert_eq!(
            (
                c["type"].as_str(),
                c["status"].as_str(),
                c["reason"].as_str()
            ),
            (Some("Ready"), Some("False"), Some("TargetNotFound"))
        );
        not_found(send);
        expect_quiet(&mut h).await;
    });
    let err = instance::reconcile_with(&inst, &snapshot(), &client, &config(), Timestamp::now())
        .await
        .expect_err("the status patch 404 surfaces");
    assert_eq!(err.label(), "kube");
    verifier.await.expect("verifier");
}

mod ensure_api {
    use super::*;
    use axum::body::Body as AxumBody;
    use reflow_controller::fleet::Fleet;
    use reflow_controller::metrics::Metrics;
    use reflow_controller::publish::Publisher;
    use reflow_controller::server::{ApiState, router};
    use reflow_controller::token::ApiToken;
    use secrecy::SecretString;
    use std::sync::Arc;
    use tower::ServiceExt;

    fn app(client: Option<Client>) -> (axum::Router, Publisher) {
        let mut loaded = Loaded::default();
        load_str(std::path::Path::new("t.yaml"), TARGET, &mut loaded).unwrap();
        let publisher = Publisher::new();
        publisher
            .publish(compile(&loaded.inputs, &SealingKey::from_bytes(&KEY)).unwrap())
            .unwrap();
        let state = ApiState {
            published: publisher.subscribe(),
            fleet: Fleet::default(),
            token: ApiToken::new(&SecretString::from("tok")).unwrap(),
            metrics: Arc::new(Metrics::new()),
            heartbeat: Duration::from_secs(10),
            instances: client,
            grants: None,
        };
        (router(state), publisher)
    }

    fn post(path: &str, body: Value) -> Request<AxumBody> {
        Request::builder()
            .method("POST")
            .uri(path)
            .header("authorization", "Bearer tok")
            .header("content-type", "application/json")
            .body(AxumBody::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    async fn read(resp: axum::response::Response) -> (StatusCode, String) {
        let code = resp.status();
        let b = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (code, String::from_utf8_lossy(&b).into_owned())
    }

    fn alice_request() -> Value {
        json!({"namespace": "team", "target": "gh", "isolationKey": "alice",
               "credentialFingerprint": fingerprint_of("alice"), "identity": {"user": "alice"}})
    }

    fn applied(generation: i64, status: Value) -> Value {
        json!({"apiVersion": "mcp.reflow.io/v1alpha1", "kind": "MCPInstance",
               "metadata": {"name": "gh-alice", "namespace": "team", "uid": "uid-1", "generation": generation},
               "spec": {"targetRef": {"name": "gh"}, "isolationKey": "alice",
                        "credentialFingerprint": fingerprint_of("alice"), "identity": {"user": "alice"}},
               "status": status})
    }

    #[tokio::test]
    async fn ensure_applies_the_instance_and_answers_with_endpoint_and_token_once_running() {
        let (client, mut h) = mock_client();
        let (app, _p) = app(Some(client));
        let verifier = tokio::spawn(async move {
            let (_, send) = expect(&mut h, Method::GET, &format!("{INSTANCES}/gh-alice")).await;
            not_found(send);
            let (doc, send) =
                expect(&mut h, Method::PATCH, &format!("{INSTANCES}/gh-alice{SSA}")).await;
            assert_eq!(
                doc["spec"],
                json!({"targetRef": {"name": "gh"}, "isolationKey": "alice",
                       "credentialFingerprint": fingerprint_of("alice"),
                       "identity": {"user": "alice"}}),
                "the identity travels so the reconciler can resolve alice's values"
            );
            respond(
                send,
                StatusCode::OK,
                &applied(
                    1,
                    json!({"phase": "Running", "observedGeneration": 1,
                           "endpoint": "http://mcpi-gh-alice.team.svc:8080/mcp"}),
                ),
            );
            let (_, send) = expect(
                &mut h,
                Method::GET,
                &format!("{CORE}/secrets/mcpi-gh-alice"),
            )
            .await;
            respond(
                send,
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mcpi-gh-alice"},
                        "data": {"REFLOW_BRIDGE_TOKEN": b64("tok-for-alice"), "GITHUB_TOKEN": b64("ghp-alice-value")}}),
            );
            let (doc, send) = expect(
                &mut h,
                Method::PATCH,
                &format!("{INSTANCES}/gh-alice/status?"),
            )
            .await;
            assert!(
                doc["status"]["lastUsed"]
                    .as_str()
                    .is_some_and(|t| t.parse::<Timestamp>().is_ok()),
                "{doc}"
            );
            respond(send, StatusCode::OK, &applied(1, json!({})));
            expect_quiet(&mut h).await;
        });
        let (code, body) = read(
            app.clone()
                .oneshot(post("/v1/instances/ensure", alice_request()))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (
                v["name"].as_str(),
                v["endpoint"].as_str(),
                v["token"].as_str()
            ),
            (
                Some("gh-alice"),
                Some("http://mcpi-gh-alice.team.svc:8080/mcp"),
                Some("tok-for-alice")
            )
        );
        assert!(!body.contains("ghp-alice-value"), "only the bridge token");
        let (code, _) = read(
            app.clone()
                .oneshot(post(
                    "/v1/instances/used",
                    json!({"namespace": "team", "name": "gh-alice"}),
                ))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::NO_CONTENT);
        verifier.await.unwrap();
    }

    #[tokio::test]
    async fn ensure_leaves_a_matching_instance_alone_and_answers_202_until_it_runs() {
        let (client, mut h) = mock_client();
        let (app, _p) = app(Some(client));
        let verifier = tokio::spawn(async move {
            // Running, but the status describes generation 1 and the spec is at 2: the pod may
            // still hold other credentials, so no endpoint yet.
            let (_, send) = expect(&mut h, Method::GET, &format!("{INSTANCES}/gh-alice")).await;
            respond(
                send,
                StatusCode::OK,
                &applied(
                    2,
                    json!({"phase": "Running", "observedGeneration": 1,
                           "endpoint": "http://mcpi-gh-alice.team.svc:8080/mcp"}),
                ),
            );
            // Pending at the current generation.
            let (_, send) = expect(&mut h, Method::GET, &format!("{INSTANCES}/gh-alice")).await;
            respond(
                send,
                StatusCode::OK,
                &applied(2, json!({"phase": "Pending", "observedGeneration": 2})),
            );
            // Failed at the current generation: an error naming the reason, not a wait.
            let (_, send) = expect(&mut h, Method::GET, &format!("{INSTANCES}/gh-alice")).await;
            respond(
                send,
                StatusCode::OK,
                &applied(
                    2,
                    json!({"phase": "Failed", "observedGeneration": 2,
                           "conditions": [{"type": "Ready", "status": "False", "reason": "NotKubernetes", "message": "uses transport stdio"}]}),
                ),
            );
            expect_quiet(&mut h).await;
        });
        for (want, phase) in [
            (StatusCode::ACCEPTED, Some("Pending")),
            (StatusCode::ACCEPTED, Some("Pending")),
            (StatusCode::BAD_GATEWAY, None),
        ] {
            let (code, body) = read(
                app.clone()
                    .oneshot(post("/v1/instances/ensure", alice_request()))
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(code, want, "{body}");
            match phase {
                Some(p) => {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(v["phase"], p);
                    assert!(
                        v.get("endpoint").is_none() && v.get("token").is_none(),
                        "{v}"
                    );
                }
                None => assert!(
                    body.contains("NotKubernetes: uses transport stdio"),
                    "{body}"
                ),
            }
        }
        verifier.await.unwrap();
    }

    #[tokio::test]
    async fn an_instance_refused_for_its_stored_identity_is_repaired_by_a_caller_who_resolves_to_it()
     {
        let (client, mut h) = mock_client();
        let (app, _p) = app(Some(client));
        let verifier = tokio::spawn(async move {
            // Same fingerprint as alice's, but stored for someone whose Credentials have since
            // changed: the reconciler refused it.
            let mut found = applied(
                2,
                json!({"phase": "Failed", "observedGeneration": 2,
                       "conditions": [{"type": "Ready", "status": "False", "reason": "CredentialMismatch", "message": "stale"}]}),
            );
            found["spec"]["identity"] = json!({"user": "carol"});
            let (_, send) = expect(&mut h, Method::GET, &format!("{INSTANCES}/gh-alice")).await;
            respond(send, StatusCode::OK, &found);
            let (doc, send) =
                expect(&mut h, Method::PATCH, &format!("{INSTANCES}/gh-alice{SSA}")).await;
            assert_eq!(doc["spec"]["identity"], json!({"user": "alice"}));
            respond(
                send,
                StatusCode::OK,
                &applied(3, json!({"phase": "Failed", "observedGeneration": 2})),
            );
            expect_quiet(&mut h).await;
        });
        let (code, body) = read(
            app.clone()
                .oneshot(post("/v1/instances/ensure", alice_request()))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        verifier.await.unwrap();
    }

    #[tokio::test]
    async fn a_fingerprint_the_controller_does_not_resolve_is_refused_with_409() {
        let (client, mut h) = mock_client();
        let (app, _p) = app(Some(client));
        for fp in [json!(fingerprint_of("bob")), json!("00"), Value::Null] {
            let mut req = alice_request();
            req["credentialFingerprint"] = fp.clone();
            let (code, body) = read(
                app.clone()
                    .oneshot(post("/v1/instances/ensure", req))
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(code, StatusCode::CONFLICT, "{fp}: {body}");
            assert!(body.contains("fingerprint mismatch"), "{body}");
        }
        // Bob's fingerprint is right for bob.
        let mut bob = alice_request();
        bob["identity"] = json!({"user": "bob"});
        bob["credentialFingerprint"] = json!(fingerprint_of("alice"));
        let (code, _) = read(
            app.clone()
                .oneshot(post("/v1/instances/ensure", bob))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            code,
            StatusCode::CONFLICT,
            "alice's fingerprint is not bob's"
        );
        expect_quiet(&mut h).await;
    }

    #[tokio::test]
    async fn ensure_refuses_what_it_cannot_serve_without_calling_the_api() {
        let (client, mut h) = mock_client();
        let (app, _p) = app(Some(client));
        for (req, want) in [
            (
                json!({"namespace": "team", "target": "nope", "isolationKey": "alice"}),
                StatusCode::NOT_FOUND,
            ),
            (
                json!({"namespace": "other", "target": "gh", "isolationKey": "alice"}),
                StatusCode::NOT_FOUND,
            ),
            (
                json!({"namespace": "team", "target": "gh", "isolationKey": "Alice!"}),
                StatusCode::BAD_REQUEST,
            ),
            (
                json!({"namespace": "team", "target": "gh", "isolationKey": ""}),
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let (code, body) = read(
                app.clone()
                    .oneshot(post("/v1/instances/ensure", req.clone()))
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(code, want, "{req}: {body}");
        }
        let mut unauth = post("/v1/instances/ensure", json!({}));
        unauth.headers_mut().remove("authorization");
        assert_eq!(
            app.clone().oneshot(unauth).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        expect_quiet(&mut h).await;

        // Folder mode has no cluster to create pods in.
        let (folder, _p) = super::ensure_api::app(None);
        let req = json!({"namespace": "team", "target": "gh", "isolationKey": "alice"});
        let (code, _) = read(
            folder
                .oneshot(post("/v1/instances/ensure", req))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::NOT_IMPLEMENTED);
    }
}
