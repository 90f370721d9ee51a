//! The MCPInstance reconciler against kube-rs's mock API server: the exact calls for a first
//! reconcile (children applied with owner references, a restricted Pod with the bridge in front
//! of the STDIO server, status), a credential roll, idle GC, and a Target that is not there.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use reflow_controller::instance::{self, InstanceConfig};
use reflow_crds::api::{InstanceSpec, LocalRef, MCPInstance};
use reflow_crds::loader::{Loaded, load_str};
use reflow_crds::{SealingKey, Snapshot, compile};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

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
"#;

fn snapshot() -> Snapshot {
    let mut loaded = Loaded::default();
    load_str(std::path::Path::new("t.yaml"), TARGET, &mut loaded).expect("target");
    let c = compile(&loaded.inputs, &SealingKey::from_bytes(&[2; 32])).expect("compile");
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
    }
}

fn mock_client() -> (Client, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

async fn expect(
    h: &mut ApiHandle,
    method: Method,
    path: &str,
) -> (Value, SendResponse<Response<Body>>) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
        .unwrap_or_else(|| panic!("client gone before {method} {path}"));
    assert_eq!(
        (req.method().clone(), req.uri().to_string()),
        (method, path.to_owned())
    );
    let bytes = req.into_body().collect_bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("json")
    };
    (body, send)
}

fn respond(send: SendResponse<Response<Body>>, code: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).expect("json")))
            .expect("response"),
    );
}

fn not_found(send: SendResponse<Response<Body>>) {
    respond(
        send,
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
    );
}

async fn expect_quiet(h: &mut ApiHandle) {
    if let Ok(Some((req, _))) =
        tokio::time::timeout(Duration::from_millis(300), h.next_request()).await
    {
        panic!("unexpected call {} {}", req.method(), req.uri());
    }
}

const SSA: &str = "?&force=true&fieldManager=reflow-controller";
const CORE: &str = "/api/v1/namespaces/team";
const INSTANCES: &str = "/apis/mcp.reflow.io/v1alpha1/namespaces/team/mcpinstances";

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
    let inst = instance("gh", Timestamp::now(), "fp-1");
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
        assert!(secret["data"]["GITHUB_TOOLSETS"].is_string());
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
            "fp-1"
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
async fn a_credential_change_rolls_the_pod_and_keeps_the_bridge_token() {
    let (client, mut h) = mock_client();
    let inst = instance("gh", Timestamp::now(), "fp-2");
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

#[tokio::test]
async fn an_idle_instance_is_deleted_and_its_children_follow() {
    let (client, mut h) = mock_client();
    let created = Timestamp::now() - Duration::from_secs(601);
    let inst = instance("gh", created, "fp-1");
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
    let mut used = instance("gh", created, "fp-1");
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
async fn a_missing_target_fails_the_instance_without_touching_children() {
    let (client, mut h) = mock_client();
    let inst = instance("nope", Timestamp::now(), "fp-1");
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
            .publish(compile(&loaded.inputs, &SealingKey::from_bytes(&[2; 32])).unwrap())
            .unwrap();
        let state = ApiState {
            published: publisher.subscribe(),
            fleet: Fleet::default(),
            token: ApiToken::new(&SecretString::from("tok")).unwrap(),
            metrics: Arc::new(Metrics::new()),
            heartbeat: Duration::from_secs(10),
            instances: client,
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

    #[tokio::test]
    async fn ensure_applies_the_instance_and_answers_with_its_endpoint_once_running() {
        let (client, mut h) = mock_client();
        let (app, _p) = app(Some(client));
        let verifier = tokio::spawn(async move {
            let (doc, send) =
                expect(&mut h, Method::PATCH, &format!("{INSTANCES}/gh-alice{SSA}")).await;
            assert_eq!(
                doc["spec"],
                json!({"targetRef": {"name": "gh"}, "isolationKey": "alice", "credentialFingerprint": "fp-9"})
            );
            let mut obj = doc.clone();
            obj["status"] =
                json!({"phase": "Running", "endpoint": "http://mcpi-gh-alice.team.svc:8080/mcp"});
            respond(send, StatusCode::OK, &obj);
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
            respond(send, StatusCode::OK, &obj);
            expect_quiet(&mut h).await;
        });
        let req = json!({"namespace": "team", "target": "gh", "isolationKey": "alice", "credentialFingerprint": "fp-9"});
        let (code, body) = read(
            app.clone()
                .oneshot(post("/v1/instances/ensure", req))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["endpoint"], "http://mcpi-gh-alice.team.svc:8080/mcp");
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
