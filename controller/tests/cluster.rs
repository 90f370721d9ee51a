//! Against a real API server; `#[ignore]`d (run with `cargo test -p reflow-controller --test
//! cluster -- --ignored` and `KUBECONFIG` set). Applies the CRDs and `config/samples/`, runs the
//! cluster source, the lease and the status writer in-process, and waits for the conditions;
//! then creates an MCPInstance of a `kubernetes` Target and sees its Pod, Service, Secret and
//! NetworkPolicy.
//! Leaves the CRDs in place and deletes the samples' namespace at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use reflow_controller::fleet::Fleet;
use reflow_controller::instance;
use reflow_controller::lease::{self, LeaseConfig};
use reflow_controller::metrics::Metrics;
use reflow_controller::publish::Publisher;
use reflow_controller::roster::Rosters;
use reflow_controller::source::cluster::{self, Namespaces};
use reflow_controller::status::{self, StatusWriter};
use reflow_crds::SealingKey;
use reflow_crds::api::MCPInstance;
use reflow_crds::api::{Credential, Policy, Target};
use serde::Deserialize;

const NS: &str = "dev-tools";
const MANAGER: &str = "reflow-controller-it";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn docs(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("read");
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| serde_json::Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

async fn apply<K>(api: &Api<K>, doc: &serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let name = doc["metadata"]["name"].as_str().expect("name");
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(doc),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

fn condition(conds: &[reflow_crds::api::Condition], t: &str) -> Option<(String, Option<i64>)> {
    conds
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.observed_generation))
}

#[tokio::test]
#[ignore = "needs a cluster: set KUBECONFIG and pass --ignored"]
async fn samples_get_accepted_and_resolved_conditions_from_the_lease_holder() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    assert!(std::env::var_os("KUBECONFIG").is_some(), "set KUBECONFIG");
    let client = Client::try_default().await.expect("cluster");

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for f in ["targets", "policies", "credentials", "mcpinstances"] {
        for d in docs(&root().join(format!("crds/yaml/{f}.yaml"))) {
            apply(&crds, &d).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // CRDs become Established
    let namespaces: Api<Namespace> = Api::all(client.clone());
    apply(
        &namespaces,
        &serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    .await;
    let samples = root().join("config/samples");
    let mut files: Vec<_> = std::fs::read_dir(&samples)
        .expect("samples")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        for d in docs(&f) {
            match d["kind"].as_str() {
                Some("Secret") => apply(&Api::<Secret>::namespaced(client.clone(), NS), &d).await,
                Some("Target") => apply(&Api::<Target>::namespaced(client.clone(), NS), &d).await,
                Some("Policy") => apply(&Api::<Policy>::namespaced(client.clone(), NS), &d).await,
                Some("Credential") => {
                    apply(&Api::<Credential>::namespaced(client.clone(), NS), &d).await
                }
                _ => {}
            }
        }
    }

    let key = SealingKey::from_bytes(&[4; 32]);
    let publisher = Arc::new(Publisher::new());
    let metrics = Arc::new(Metrics::new());
    let source = cluster::start(
        client.clone(),
        Namespaces::List(vec![NS.into()]),
        key.clone(),
        publisher.clone(),
        metrics.clone(),
    );
    let lease_config = LeaseConfig {
        namespace: NS.into(),
        name: "reflow-controller-it".into(),
        identity: "it-0".into(),
        duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(2),
    };
    let (leading, lease_task) = lease::spawn(client.clone(), lease_config.clone());
    let fleet = Fleet::default();
    let rosters = Rosters::new(client.clone(), lease_config);
    let roster_task = rosters.clone().spawn_publisher(fleet.clone());
    let writer = StatusWriter::new(client.clone(), "it-0", metrics);
    let status_task = status::spawn(
        writer,
        Arc::new(source.stores.clone()),
        publisher.subscribe(),
        fleet,
        Some(rosters),
        leading,
    );

    let policies: Api<Policy> = Api::namespaced(client.clone(), NS);
    let credentials: Api<Credential> = Api::namespaced(client.clone(), NS);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = policies
            .list(&Default::default())
            .await
            .expect("list policies");
        let cs = credentials
            .list(&Default::default())
            .await
            .expect("list credentials");
        let done = !ps.items.is_empty()
            && ps.items.iter().all(|p| {
                let conds = p
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                condition(&conds, "Accepted") == Some(("True".into(), p.metadata.generation))
                    && condition(&conds, "Programmed").is_some()
            })
            && cs.items.iter().all(|c| {
                let conds = c
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                condition(&conds, "ResolvedRefs").map(|c| c.0) == Some("True".into())
            });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "conditions did not become true: {:?}",
            ps.items
                .iter()
                .map(|p| (p.name_any(), p.status.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        publisher
            .current()
            .is_some_and(|p| !p.snapshot.targets().is_empty())
    );

    // A kubernetes Target and an MCPInstance for it: the reconciler creates its children.
    let pod_target = serde_json::json!({
        "apiVersion": "mcp.reflow.io/v1alpha1", "kind": "Target",
        "metadata": {"name": "podded", "namespace": NS},
        "spec": {"transport": "kubernetes", "isolation": "perUser", "pod": {
            "transport": "streamableHttp", "port": 8080,
            "template": {"spec": {"containers": [{"name": "server", "image": "registry.invalid/mcp:1"}]}}}}
    });
    apply(&Api::<Target>::namespaced(client.clone(), NS), &pod_target).await;
    let compiled_by = Instant::now() + Duration::from_secs(30);
    let snapshot = loop {
        if let Some(s) = publisher
            .current()
            .map(|p| p.snapshot)
            .filter(|s| s.target(NS, "podded").is_some())
        {
            break s;
        }
        assert!(Instant::now() < compiled_by, "Target podded never compiled");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let instances: Api<MCPInstance> = Api::namespaced(client.clone(), NS);
    apply(
        &instances,
        &serde_json::json!({
            "apiVersion": "mcp.reflow.io/v1alpha1", "kind": "MCPInstance",
            "metadata": {"name": "podded-alice", "namespace": NS},
            "spec": {"targetRef": {"name": "podded"}, "isolationKey": "alice"}
        }),
    )
    .await;
    let inst = instances.get("podded-alice").await.expect("instance");
    let config = instance::InstanceConfig {
        bridge_image: "registry.invalid/reflow-dataplane:test".into(),
        dataplane_labels: [(
            "app.kubernetes.io/name".to_owned(),
            "reflow-dataplane".to_owned(),
        )]
        .into(),
        dataplane_namespace: "reflow-system".into(),
        key: key.clone(),
    };
    instance::reconcile_with(&inst, &snapshot, &client, &config, Timestamp::now())
        .await
        .expect("reconcile");
    let child = "mcpi-podded-alice";
    let pod = Api::<Pod>::namespaced(client.clone(), NS)
        .get(child)
        .await
        .expect("pod");
    assert_eq!(pod.owner_references()[0].name, "podded-alice");
    Api::<Service>::namespaced(client.clone(), NS)
        .get(child)
        .await
        .expect("service");
    Api::<Secret>::namespaced(client.clone(), NS)
        .get(child)
        .await
        .expect("secret");
    Api::<NetworkPolicy>::namespaced(client.clone(), NS)
        .get(child)
        .await
        .expect("network policy");
    let status = instances
        .get("podded-alice")
        .await
        .expect("instance")
        .status
        .expect("status");
    assert_eq!(
        status.endpoint.as_deref(),
        Some("http://mcpi-podded-alice.dev-tools.svc:8080/mcp")
    );

    lease_task.abort();
    roster_task.abort();
    status_task.abort();
    drop(source);
    let _ = namespaces.delete(NS, &DeleteParams::default()).await;
}
