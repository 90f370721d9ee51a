//! Cluster mode: reflectors over Targets, Policies, Credentials and the credential Secrets, in
//! all namespaces or a configured list. Any event schedules a debounced recompilation of the
//! whole model (after every reflector has listed once, so no partial model is ever published).
//!
//! Secrets are scoped by label: only Secrets carrying [`SECRET_LABEL`]`=true` are watched, so the
//! controller never lists every Secret in the cluster (and its RBAC can say so).

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use reflow_crds::api::{Credential, Policy, Target, TokenRevocation};
use reflow_crds::compile::ObjectReport;
use reflow_crds::{Inputs, SealingKey};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{Instrument, info, info_span, warn};

use super::{DEBOUNCE, compile_and_publish};
use crate::metrics::Metrics;
use crate::publish::Publisher;

/// The label a Secret needs for Credentials to read it.
pub const SECRET_LABEL: &str = "mcp.reflow.io/credential";

/// Which namespaces to watch.
#[derive(Clone, Debug)]
pub enum Namespaces {
    All,
    List(Vec<String>),
}

impl Namespaces {
    fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Namespaces::All => vec![Api::all(client.clone())],
            Namespaces::List(list) => list
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect(),
        }
    }
}

/// Readers of every reflector, one per kind and namespace.
#[derive(Clone, Default)]
pub struct Stores {
    pub targets: Vec<Store<Target>>,
    pub policies: Vec<Store<Policy>>,
    pub credentials: Vec<Store<Credential>>,
    pub secrets: Vec<Store<Secret>>,
    /// Cluster-scoped: one reflector whatever the namespaces.
    pub revocations: Vec<Store<TokenRevocation>>,
}

fn all<K: Resource + Clone>(stores: &[Store<K>]) -> Vec<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    stores
        .iter()
        .flat_map(|s| s.state())
        .map(|o| (*o).clone())
        .collect()
}

impl Stores {
    pub fn inputs(&self) -> Inputs {
        Inputs {
            targets: all(&self.targets),
            policies: all(&self.policies),
            credentials: all(&self.credentials),
            secrets: all(&self.secrets),
            revocations: all(&self.revocations),
        }
    }

    async fn wait_until_ready(&self) -> bool {
        for s in &self.targets {
            if s.wait_until_ready().await.is_err() {
                return false;
            }
        }
        for s in &self.policies {
            if s.wait_until_ready().await.is_err() {
                return false;
            }
        }
        for s in &self.credentials {
            if s.wait_until_ready().await.is_err() {
                return false;
            }
        }
        for s in &self.secrets {
            if s.wait_until_ready().await.is_err() {
                return false;
            }
        }
        for s in &self.revocations {
            if s.wait_until_ready().await.is_err() {
                return false;
            }
        }
        true
    }
}

/// Starts one reflector and returns its reader; every event pokes `tx`.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    tx: mpsc::Sender<()>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone + Default,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&Default::default()).into_owned();
    let stream = reflector::reflector(
        writer,
        watcher(api, config).default_backoff().modify(|o: &mut K| {
            // managedFields are large and never read here.
            o.meta_mut().managed_fields = None;
        }),
    );
    let span = info_span!("reflector", kind = %kind);
    tasks.push(tokio::spawn(
        async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(_) => {
                        let _ = tx.try_send(());
                    }
                    Err(e) => warn!(error = %e, "watch error; retrying with backoff"),
                }
            }
        }
        .instrument(span),
    ));
    reader
}

/// The running reflectors and compile loop; dropping it stops them.
pub struct ClusterSource {
    pub stores: Stores,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ClusterSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// In cluster mode, a missing Secret may just lack the label; say so where a person will look.
pub fn explain_secret_scoping(reports: &mut [ObjectReport]) {
    for r in reports {
        for c in &mut r.conditions {
            if c.reason == "SecretNotFound" && !c.message.contains(SECRET_LABEL) {
                c.message.push_str(&format!(
                    " (the controller only reads Secrets labelled {SECRET_LABEL}=true)"
                ));
            }
        }
    }
}

pub fn start(
    client: Client,
    namespaces: Namespaces,
    key: SealingKey,
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
) -> ClusterSource {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut tasks = Vec::new();
    let mut stores = Stores::default();
    for api in namespaces.apis::<Target>(&client) {
        stores.targets.push(reflect(
            api,
            watcher::Config::default(),
            tx.clone(),
            &mut tasks,
        ));
    }
    for api in namespaces.apis::<Policy>(&client) {
        stores.policies.push(reflect(
            api,
            watcher::Config::default(),
            tx.clone(),
            &mut tasks,
        ));
    }
    for api in namespaces.apis::<Credential>(&client) {
        stores.credentials.push(reflect(
            api,
            watcher::Config::default(),
            tx.clone(),
            &mut tasks,
        ));
    }
    let secret_config = watcher::Config::default().labels(&format!("{SECRET_LABEL}=true"));
    for api in namespaces.apis::<Secret>(&client) {
        stores
            .secrets
            .push(reflect(api, secret_config.clone(), tx.clone(), &mut tasks));
    }
    // Revocations refuse tokens gateway-wide; they are cluster-scoped (see the CRD).
    stores.revocations.push(reflect(
        Api::<TokenRevocation>::all(client.clone()),
        watcher::Config::default(),
        tx.clone(),
        &mut tasks,
    ));
    drop(tx);

    let loop_stores = stores.clone();
    tasks.push(tokio::spawn(
        async move {
            if !loop_stores.wait_until_ready().await {
                return;
            }
            info!("every reflector has listed once; compiling");
            loop {
                let mut inputs = loop_stores.inputs();
                let (k, p, m) = (key.clone(), publisher.clone(), metrics.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    // Users' grants are sealed in their Secrets; opened here, in memory only.
                    crate::grants::open_user_managed(&mut inputs, &k);
                    compile_and_publish(&inputs, &k, &p, &m, explain_secret_scoping)
                })
                .await;
                if rx.recv().await.is_none() {
                    return;
                }
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            }
        }
        .instrument(info_span!("cluster_source")),
    ));
    ClusterSource { stores, tasks }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflow_crds::compile::{ObjectKind, RESOLVED_REFS};

    #[test]
    fn a_missing_secret_names_the_label_the_controller_watches() {
        let mut r = ObjectReport::new(ObjectKind::Credential, "ns", "c", Some(1));
        r.set(
            RESOLVED_REFS,
            false,
            "SecretNotFound",
            "Secret \"gh\" not found in this namespace",
        );
        let mut other = ObjectReport::new(ObjectKind::Credential, "ns", "d", Some(1));
        other.set(
            RESOLVED_REFS,
            false,
            "SecretKeyNotFound",
            "Secret \"gh\" has no key \"x\"",
        );
        let mut reports = vec![r, other];
        explain_secret_scoping(&mut reports);
        explain_secret_scoping(&mut reports);
        let msg = &reports[0].conditions[0].message;
        assert!(
            msg.ends_with(
                "(the controller only reads Secrets labelled mcp.reflow.io/credential=true)"
            ),
            "{msg}"
        );
        assert_eq!(msg.matches(SECRET_LABEL).count(), 1, "added once");
        assert!(!reports[1].conditions[0].message.contains(SECRET_LABEL));
    }
}
