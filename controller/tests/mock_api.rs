//! The status writer, the lease and replica rosters against kube-rs's mock API server (`tower_test::mock::pair`):
//! each test states the exact calls (method, path, body) it expects, in order, and answers them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::{Api, Client};
use reflow_controller::fleet::{Fleet, Programmed};
use reflow_controller::lease::{self, LeaseConfig};
use reflow_controller::metrics::Metrics;
use reflow_controller::publish::{Published, Publisher};
use reflow_controller::roster::Rosters;
use reflow_controller::status::{Current, Lookup, StatusError, StatusWriter};
use reflow_crds::api::{ObjectStatus, Target, TargetStatus};
use reflow_crds::compile::ObjectKind;
use reflow_crds::loader::{Loaded, load_str};
use reflow_crds::wire::{AppliedReport, Outcome};
use reflow_crds::{SealingKey, compile};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn mock_client() -> (Client, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// The next call: asserts method and path (with query), returns the JSON body (Null if empty).
async fn expect(
    handle: &mut ApiHandle,
    method: Method,
    path: &str,
) -> (Value, mock::SendResponse<Response<Body>>) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
        .unwrap_or_else(|| panic!("client gone before {method} {path}"));
    assert_eq!(req.method(), method, "{}", req.uri());
    assert_eq!(req.uri().to_string(), path);
    let bytes = req.into_body().collect_bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (body, send)
}

fn respond(send: mock::SendResponse<Response<Body>>, code: StatusCode, body: Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).expect("json")))
            .expect("response"),
    );
}

fn not_found(send: mock::SendResponse<Response<Body>>) {
    respond(
        send,
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    );
}

/// No further call within a short while.
async fn expect_quiet(handle: &mut ApiHandle) {
    if let Ok(Some((req, _))) =
        tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await
    {
        panic!("unexpected call {} {}", req.method(), req.uri());
    }
}

const MANIFESTS: &str = r#"
apiVersion: mcp.reflow.io/v1alpha1
kind: Target
metadata: {name: gh, namespace: team, generation: 3}
spec: {transport: streamableHttp, url: "http://gh"}
---
apiVersion: mcp.reflow.io/v1alpha1
kind: Policy
metadata: {name: readers, namespace: team, generation: 2}
spec:
  targetRef: {name: gh}
  subjects: [{group: eng}]
  rules: [{kind: tool, names: ["get_*"]}]
  effect: Allow
---
apiVersion: mcp.reflow.io/v1alpha1
kind: Credential
metadata: {name: token, namespace: team, generation: 1}
spec:
  targetRef: {name: gh}
  subject: {default: true}
  headers: [{name: Authorization, secretKeyRef: {name: gh-token, key: token}}]
"#;

/// The object `kind`/`name` of [`MANIFESTS`] as the API server would return it, with `status`.
fn object_with_status(kind: &str, name: &str, patch: &Value) -> Value {
    use serde::Deserialize;
    let mut obj = serde_yaml::Deserializer::from_str(MANIFESTS)
        .filter_map(|d| serde_json::Value::deserialize(d).ok())
        .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"));
    obj["status"] = patch["status"].clone();
    obj
}

fn published() -> Published {
    let mut loaded = Loaded::default();
    load_str(std::path::Path::new("m.yaml"), MANIFESTS, &mut loaded).expect("manifests");
    let compiled = compile(&loaded.inputs, &SealingKey::from_bytes(&[3; 32])).expect("compile");
    let p = Publisher::new();
    p.publish(compiled).expect("publish");
    p.current().expect("published")
}

#[derive(Default)]
struct Objects(HashMap<(ObjectKind, String), Current>);

impl Objects {
    fn with(
        mut self,
        kind: ObjectKind,
        plural: &str,
        name: &str,
        status: Option<ObjectStatus>,
    ) -> Self {
        let reference = ObjectReference {
            api_version: Some("mcp.reflow.io/v1alpha1".into()),
            kind: Some(format!("{kind:?}")),
            name: Some(name.into()),
            namespace: Some("team".into()),
            uid: Some(format!("uid-{plural}-{name}")),
            ..ObjectReference::default()
        };
        self.0.insert(
            (kind, name.into()),
            Current {
                status,
                reference,
                target: None,
            },
        );
        self
    }

    /// The Target `name` of [`MANIFESTS`] as the cluster holds it, with `status`.
    fn with_target(mut self, name: &str, status: TargetStatus) -> Self {
        self = self.with(ObjectKind::Target, "targets", name, None);
        let obj = object_with_status("Target", name, &json!({"status": status}));
        let target: Target = serde_json::from_value(obj).expect("target");
        let cur = self
            .0
            .get_mut(&(ObjectKind::Target, name.into()))
            .expect("added");
        cur.status = Some(ObjectStatus {
            observed_generation: status.observed_generation,
            conditions: status.conditions.clone(),
        });
        cur.target = Some(Arc::new(target));
        self
    }
}

impl Lookup for Objects {
    fn current(&self, kind: ObjectKind, namespace: &str, name: &str) -> Option<Current> {
        (namespace == "team")
            .then(|| self.0.get(&(kind, name.to_owned())).cloned())
            .flatten()
    }
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} in {status}"))
}

fn writer(client: Client) -> StatusWriter {
    StatusWriter::new(client, "controller-0", Arc::new(Metrics::new()))
}

const FLEET: Programmed = Programmed {
    applied: 2,
    connected: 2,
    refused: Vec::new(),
    stale: Vec::new(),
};

#[tokio::test]
async fn status_patches_changed_objects_only_and_warns_once_per_new_failure() {
    let (client, mut handle) = mock_client();
    let p = published();
    // The Target already carries exactly the status the writer would compute: no call for it.
    let target_report = p
        .reports
        .iter()
        .find(|r| r.kind == ObjectKind::Target)
        .expect("target report");
    let (up_to_date, fields) = reflow_controller::status::desired_status(
        &p,
        target_report,
        &FLEET,
        &Default::default(),
        None,
        "t0",
    );
    let fields = fields.expect("a Target has fields");
    let objects = Objects::default()
        .with_target(
            "gh",
            TargetStatus {
                observed_generation: up_to_date.observed_generation,
                conditions: up_to_date.conditions,
                prefix: fields.prefix,
                tools: fields.tools,
                tool_digests: fields.tool_digests,
            },
        )
        .with(ObjectKind::Policy, "policies", "readers", None)
        .with(ObjectKind::Credential, "credentials", "token", None);

    let w = writer(client);
    let verifier = tokio::spawn(async move {
        let (body, send) = expect(
            &mut handle,
            Method::PATCH,
            "/apis/mcp.reflow.io/v1alpha1/namespaces/team/policies/readers/status?",
        )
        .await;
        assert_eq!(body["status"]["observedGeneration"], 2);
        assert_eq!(condition(&body, "Accepted")["status"], "True");
        let programmed = condition(&body, "Programmed");
        assert_eq!(programmed["status"], "True");
        assert_eq!(programmed["message"], "applied by 2 of 2 dataplanes");
        assert_eq!(programmed["observedGeneration"], 2);
        respond(
            send,
            StatusCode::OK,
            object_with_status("Policy", "readers", &body),
        );

        let (body, send) = expect(
            &mut handle,
            Method::PATCH,
            "/apis/mcp.reflow.io/v1alpha1/namespaces/team/credentials/token/status?",
        )
        .await;
        let refs = condition(&body, "ResolvedRefs");
        assert_eq!(refs["status"], "False");
        assert_eq!(refs["reason"], "SecretNotFound");
        assert_eq!(condition(&body, "Programmed")["status"], "True");
        respond(
            send,
            StatusCode::OK,
            object_with_status("Credential", "token", &body),
        );

        // The new failure becomes one Warning Event on the Credential.
        let (event, send) = expect(
            &mut handle,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/team/events?",
        )
        .await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "SecretNotFound");
        assert_eq!(event["regarding"]["name"], "token");
        assert_eq!(event["reportingController"], "reflow-controller");
        respond(send, StatusCode::CREATED, event);
        expect_quiet(&mut handle).await;
        handle
    });
    let patched = w.sync(&p, &FLEET, &objects).await.expect("sync");
    assert_eq!(patched, 2);
    verifier.await.expect("verifier");
}

#[tokio::test]
async fn a_failed_patch_is_reported_and_the_others_are_still_written() {
    let (client, mut handle) = mock_client();
    let p = published();
    let objects = Objects::default()
        .with(ObjectKind::Target, "targets", "gh", None)
        .with(ObjectKind::Policy, "policies", "readers", None);
    let w = writer(client);
    let verifier = tokio::spawn(async move {
        let (_, send) = expect(
            &mut handle,
            Method::PATCH,
            "/apis/mcp.reflow.io/v1alpha1/namespaces/team/targets/gh/status?",
        )
        .await;
        not_found(send);
        let (body, send) = expect(
            &mut handle,
            Method::PATCH,
            "/apis/mcp.reflow.io/v1alpha1/namespaces/team/policies/readers/status?",
        )
        .await;
        respond(
            send,
            StatusCode::OK,
            object_with_status("Policy", "readers", &body),
        );
        // The Credential is not in the cluster's view (deleted since the compile): skipped.
        expect_quiet(&mut handle).await;
    });
    let err = w
        .sync(&p, &FLEET, &objects)
        .await
        .expect_err("the 404 surfaces");
    assert!(
        matches!(
            err,
            StatusError::Patch {
                kind: ObjectKind::Target,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.label(), "patch");
    verifier.await.expect("verifier");
}

fn lease_cfg() -> LeaseConfig {
    LeaseConfig {
        namespace: "reflow-system".into(),
        name: "reflow-controller".into(),
        identity: "controller-0".into(),
        duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    }
}

fn lease_held_by(holder: &str, renewed: Timestamp) -> Value {
    serde_json::to_value(Lease {
        metadata: ObjectMeta {
            name: Some("reflow-controller".into()),
            namespace: Some("reflow-system".into()),
            resource_version: Some("41".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(1),
            ..LeaseSpec::default()
        }),
    })
    .expect("lease json")
}

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/reflow-system/leases";

#[tokio::test]
async fn lease_is_created_when_missing_then_followed_or_taken_over() {
    let (client, mut handle) = mock_client();
    let api: Api<Lease> = Api::namespaced(client, "reflow-system");
    let cfg = lease_cfg();
    let verifier = tokio::spawn(async move {
        // Missing: created with us as holder.
        let (_, send) = expect(
            &mut handle,
            Method::GET,
            &format!("{LEASE_PATH}/reflow-controller"),
        )
        .await;
        not_found(send);
        let (body, send) = expect(&mut handle, Method::POST, &format!("{LEASE_PATH}?")).await;
        assert_eq!(body["spec"]["holderIdentity"], "controller-0");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        respond(send, StatusCode::CREATED, body);

        // Held by a live peer: no write.
        let (_, send) = expect(
            &mut handle,
            Method::GET,
            &format!("{LEASE_PATH}/reflow-controller"),
        )
        .await;
        respond(
            send,
            StatusCode::OK,
            lease_held_by("controller-1", Timestamp::now()),
        );

        // Expired: taken over with the resourceVersion we read (optimistic concurrency)...
        let (_, send) = expect(
            &mut handle,
            Method::GET,
            &format!("{LEASE_PATH}/reflow-controller"),
        )
        .await;
        let stale = Timestamp::now() - Duration::from_secs(60);
        respond(send, StatusCode::OK, lease_held_by("controller-1", stale));
        let (body, send) = expect(
            &mut handle,
            Method::PUT,
            &format!("{LEASE_PATH}/reflow-controller?"),
        )
        .await;
        assert_eq!(body["metadata"]["resourceVersion"], "41");
        assert_eq!(body["spec"]["holderIdentity"], "controller-0");
        assert_eq!(body["spec"]["leaseTransitions"], 2);
        respond(send, StatusCode::OK, body);

        // ...and a lost race (409) is an error the caller treats as "not leading".
        let (_, send) = expect(
            &mut handle,
            Method::GET,
            &format!("{LEASE_PATH}/reflow-controller"),
        )
        .await;
        respond(send, StatusCode::OK, lease_held_by("controller-1", stale));
        let (_, send) = expect(
            &mut handle,
            Method::PUT,
            &format!("{LEASE_PATH}/reflow-controller?"),
        )
        .await;
        respond(
            send,
            StatusCode::CONFLICT,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
        );
    });
    assert!(lease::round(&api, &cfg).await.expect("create"));
    assert!(!lease::round(&api, &cfg).await.expect("follow"));
    assert!(lease::round(&api, &cfg).await.expect("take over"));
    let err = lease::round(&api, &cfg).await.expect_err("conflict");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    verifier.await.expect("verifier");
}

fn roster_lease_json(holder: &str, renewed: Timestamp, dataplanes: Value) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {
            "name": format!("reflow-controller-roster-{holder}"), "namespace": "reflow-system",
            "labels": {"mcp.reflow.io/roster-of": "reflow-controller"},
            "annotations": {"mcp.reflow.io/dataplanes": dataplanes.to_string()}
        },
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "renewTime": MicroTime(renewed)}
    })
}

fn applied(dataplane: &str, hash: &str) -> AppliedReport {
    AppliedReport {
        dataplane: dataplane.into(),
        version: 1,
        hash: hash.into(),
        outcome: Outcome::Applied,
        message: None,
    }
}

#[tokio::test]
async fn replicas_publish_rosters_and_the_holder_counts_every_replicas_dataplanes() {
    let (client, mut handle) = mock_client();
    let rosters = Rosters::new(client, lease_cfg());
    let fleet = Fleet::default();
    let _stream = fleet.connect("dp-a");
    assert!(fleet.report(applied("dp-a", "h1")));

    let verifier = tokio::spawn(async move {
        // This replica's roster: server-side applied under its own name, forced (it owns it).
        let (body, send) = expect(
            &mut handle,
            Method::PATCH,
            &format!(
                "{LEASE_PATH}/reflow-controller-roster-controller-0?&force=true&fieldManager=reflow-controller"
            ),
        )
        .await;
        assert_eq!(body["spec"]["holderIdentity"], "controller-0");
        assert_eq!(
            body["metadata"]["labels"]["mcp.reflow.io/roster-of"],
            "reflow-controller"
        );
        let roster: Value = serde_json::from_str(
            body["metadata"]["annotations"]["mcp.reflow.io/dataplanes"]
                .as_str()
                .expect("roster annotation"),
        )
        .expect("roster JSON");
        assert_eq!(roster[0]["name"], "dp-a");
        assert_eq!(roster[0]["last"]["hash"], "h1");
        respond(send, StatusCode::OK, body);

        // The holder reads every roster by label: its own, a live peer's and a dead peer's.
        let (_, send) = expect(
            &mut handle,
            Method::GET,
            &format!("{LEASE_PATH}?&labelSelector=mcp.reflow.io%2Froster-of%3Dreflow-controller"),
        )
        .await;
        let now = Timestamp::now();
        let dead = now - Duration::from_secs(60);
        let view =
            |r: AppliedReport| json!({"name": r.dataplane.clone(), "connected": true, "last": r});
        respond(
            send,
            StatusCode::OK,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList", "metadata": {},
            "items": [
                roster_lease_json("controller-0", now, json!([view(applied("dp-a", "h0"))])),
                roster_lease_json("controller-1", now, json!([view(applied("dp-b", "h1")),
                                                            view(applied("dp-c", "h0"))])),
                roster_lease_json("controller-2", dead, json!([view(applied("dp-d", "h1"))])),
            ]}),
        );

        // A failed list is an error (the status pass waits rather than under-count).
        let (_, send) = expect(
            &mut handle,
            Method::GET,
            &format!("{LEASE_PATH}?&labelSelector=mcp.reflow.io%2Froster-of%3Dreflow-controller"),
        )
        .await;
        respond(
            send,
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500, "message": "etcd unavailable"}),
        );
        expect_quiet(&mut handle).await;
    });

    rosters.publish(&fleet).await.expect("publish");
    let peers = rosters.peers().await.expect("peers");
    let names: Vec<_> = peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["dp-b", "dp-c"], "own and dead rosters are left out");
    let p = fleet.programmed_with("h1", &peers);
    assert_eq!((p.applied, p.connected), (2, 3), "{p:?}");
    let err = rosters.peers().await.expect_err("500");
    assert_eq!(err.label(), "list");
    verifier.await.expect("verifier");
}
