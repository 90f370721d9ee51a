//! What one MCPInstance becomes: a Secret (the Target's env, the resolved Credential env values
//! and the bridge token), a Pod (the Target's template under a restricted security context, with
//! limits, and the bridge in front of a STDIO server), a ClusterIP Service and a NetworkPolicy
//! admitting only dataplane pods.
//! Pure: every object carries an owner reference to the instance so deletion cascades.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvFromSource, Pod, PodSecurityContext, PodSpec,
    PodTemplateSpec, ResourceRequirements, SeccompProfile, Secret, SecretEnvSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use reflow_crds::api::MCPInstance;
use reflow_crds::compile::pod_security;
use reflow_crds::snapshot::{PodTemplate, PodTransport};
use sha2::{Digest, Sha256};

/// The digest of what a Pod is built from (its spec and labels, not the credential values,
/// which the fingerprint covers): the same template always gives the same digest.
fn template_hash(
    spec: &PodSpec,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<String, BuildError> {
    let bytes =
        serde_json::to_vec(&(spec, labels)).map_err(|e| BuildError::Template(e.to_string()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .take(10)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Labels every child carries; the instance label selects the Pod.
pub const INSTANCE_LABEL: &str = "mcp.reflow.io/instance";
pub const TARGET_LABEL: &str = "mcp.reflow.io/target";
/// On the Pod: the credential fingerprint it was started with (a change rolls the Pod).
pub const FINGERPRINT_ANNOTATION: &str = "mcp.reflow.io/credential-fingerprint";
/// On the Pod: a digest of the spec and labels it was built with; a changed `pod.template` (or
/// a new bridge image) gives another digest, and rolls the Pod like a Deployment would.
pub const TEMPLATE_ANNOTATION: &str = "mcp.reflow.io/pod-template-hash";
/// The env var holding the per-instance token the bridge demands from dataplanes.
pub const BRIDGE_TOKEN_ENV: &str = "REFLOW_BRIDGE_TOKEN";
const BRIDGE_VOLUME: &str = "reflow-bridge";
/// Where both dataplane image variants (`images/dataplane.Dockerfile`) put the binary.
pub const BRIDGE_IMAGE_BINARY: &str = "/usr/local/bin/reflow-dataplane";
const BRIDGE_DIR: &str = "/reflow";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("pod.template is not a valid PodTemplateSpec: {0}")]
    Template(String),
    #[error("pod.template has no containers")]
    NoContainer,
    #[error("the STDIO server container needs `command` so the bridge can start it")]
    NoCommand,
    #[error("the MCPInstance has no uid yet")]
    NoUid,
    #[error("{0}")]
    NotRestricted(String),
}

impl BuildError {
    /// The `Ready=False` reason an instance reports for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotRestricted(_) => "PodTemplateNotRestricted",
            Self::NoUid => "NoUid",
            Self::Template(_) | Self::NoContainer | Self::NoCommand => "InvalidPodTemplate",
        }
    }
}

/// Cluster-wide settings of the instance reconciler.
#[derive(Clone, Debug)]
pub struct InstanceConfig {
    /// Image holding `reflow-dataplane` (the bridge).
    pub bridge_image: String,
    /// Labels of dataplane pods, the only ones the NetworkPolicy admits.
    pub dataplane_labels: BTreeMap<String, String>,
    /// Namespace of the dataplane pods.
    pub dataplane_namespace: String,
    /// Opens the callers' Credential values for the instance Secret (the snapshot's key).
    pub key: reflow_crds::SealingKey,
}

pub struct Children {
    pub secret: Secret,
    pub pod: Pod,
    pub service: Service,
    pub network_policy: NetworkPolicy,
}

/// Longest Service name (an RFC 1035 label) and longest label value.
const MAX_LABEL: usize = 63;

/// `name` if it fits in `max` characters, else a prefix of it and 10 hex digits of its digest:
/// distinct long names stay distinct, and the result still ends alphanumeric.
fn fit(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let digest: String = Sha256::digest(name.as_bytes())
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep = name
        .get(..max - 11)
        .unwrap_or_default()
        .trim_end_matches(['-', '.']);
    format!("{keep}-{digest}")
}

/// The name of every child of `inst` (a Service name, so at most 63 characters).
pub fn child_name(inst: &MCPInstance) -> String {
    format!("mcpi-{}", fit(&inst.name_any(), MAX_LABEL - 5))
}

/// The instance label's value (label values are limited to 63 characters too).
fn instance_label(inst: &MCPInstance) -> String {
    fit(&inst.name_any(), MAX_LABEL)
}

/// `http://svc.ns.svc:port/path`, where dataplanes reach the instance.
pub fn endpoint(inst: &MCPInstance, pod: &PodTemplate) -> String {
    format!(
        "http://{}.{}.svc:{}{}",
        child_name(inst),
        inst.namespace().unwrap_or_default(),
        pod.port,
        pod.path
    )
}

fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

fn default_limits(c: &mut Container) {
    let r = c
        .resources
        .get_or_insert_with(ResourceRequirements::default);
    let limits = r.limits.get_or_insert_with(BTreeMap::new);
    limits
        .entry("cpu".into())
        .or_insert_with(|| Quantity("500m".into()));
    limits
        .entry("memory".into())
        .or_insert_with(|| Quantity("256Mi".into()));
    let requests = r.requests.get_or_insert_with(BTreeMap::new);
    requests
        .entry("cpu".into())
        .or_insert_with(|| Quantity("50m".into()));
    requests
        .entry("memory".into())
        .or_insert_with(|| Quantity("64Mi".into()));
}

pub fn build(
    inst: &MCPInstance,
    target: &PodTemplate,
    env: &[(String, String)],
    fingerprint: &str,
    bridge_token: &str,
    cfg: &InstanceConfig,
) -> Result<Children, BuildError> {
    let owner = inst.controller_owner_ref(&()).ok_or(BuildError::NoUid)?;
    // The compiler refuses such Targets already; checked again where the Pod is made, so no
    // path (an older snapshot, a future source) can hand the host to a template.
    let forbidden = pod_security::violations(&target.template);
    if !forbidden.is_empty() {
        return Err(BuildError::NotRestricted(pod_security::describe(
            &forbidden,
        )));
    }
    let name = child_name(inst);
    let ns = inst.namespace();
    let labels = BTreeMap::from([
        (INSTANCE_LABEL.to_owned(), instance_label(inst)),
        (TARGET_LABEL.to_owned(), inst.spec.target_ref.name.clone()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "reflow-controller".to_owned(),
        ),
    ]);
    let meta = |annotations: Option<BTreeMap<String, String>>| ObjectMeta {
        name: Some(name.clone()),
        namespace: ns.clone(),
        labels: Some(labels.clone()),
        annotations,
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    };

    let mut data: BTreeMap<String, ByteString> = env
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
        .collect();
    data.insert(
        BRIDGE_TOKEN_ENV.into(),
        ByteString(bridge_token.as_bytes().to_vec()),
    );
    let secret = Secret {
        metadata: meta(None),
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Secret::default()
    };

    let template: PodTemplateSpec = serde_json::from_value(target.template.clone())
        .map_err(|e| BuildError::Template(e.to_string()))?;
    let spec = pod_spec(template.spec.unwrap_or_default(), target, &name, cfg)?;
    let mut pod_meta = meta(Some(BTreeMap::from([(
        FINGERPRINT_ANNOTATION.to_owned(),
        fingerprint.to_owned(),
    )])));
    if let Some(extra) = template.metadata.and_then(|m| m.labels) {
        let l = pod_meta.labels.get_or_insert_with(BTreeMap::new);
        for (k, v) in extra {
            l.entry(k).or_insert(v);
        }
    }
    let hash = template_hash(&spec, pod_meta.labels.as_ref())?;
    pod_meta
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(TEMPLATE_ANNOTATION.to_owned(), hash);
    let pod = Pod {
        metadata: pod_meta,
        spec: Some(spec),
        status: None,
    };

    let selector = BTreeMap::from([(INSTANCE_LABEL.to_owned(), instance_label(inst))]);
    Ok(Children {
        secret,
        pod,
        service: service(meta(None), selector.clone(), target.port),
        network_policy: network_policy(meta(None), selector, target.port, cfg),
    })
}

/// The template's PodSpec made safe to run: no service-account token, the restricted security
/// context and default limits on every container, the Secret as env, the bridge for STDIO.
fn pod_spec(
    mut spec: PodSpec,
    target: &PodTemplate,
    name: &str,
    cfg: &InstanceConfig,
) -> Result<PodSpec, BuildError> {
    if spec.containers.is_empty() {
        return Err(BuildError::NoContainer);
    }
    spec.automount_service_account_token = Some(false);
    spec.enable_service_links = Some(false);
    let psc = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    psc.run_as_non_root = Some(true);
    psc.seccomp_profile = Some(SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    });
    let env_from = EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: name.to_owned(),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    };
    let server = &mut spec.containers[0];
    server.env_from.get_or_insert_with(Vec::new).push(env_from);
    server.ports = Some(vec![ContainerPort {
        name: Some("mcp".into()),
        container_port: i32::from(target.port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }]);
    if target.transport == PodTransport::Stdio {
        wrap_stdio(&mut spec, target, cfg)?;
    }
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        c.security_context = Some(restricted());
        default_limits(c);
    }
    Ok(spec)
}

/// A sidecar cannot reach another container's stdin, so the bridge wraps the server in its own
/// container: an init container copies the dataplane binary into a shared volume and the server
/// starts as `reflow-dataplane bridge … -- <command>`.
fn wrap_stdio(
    spec: &mut PodSpec,
    target: &PodTemplate,
    cfg: &InstanceConfig,
) -> Result<(), BuildError> {
    let server = spec.containers.first_mut().ok_or(BuildError::NoContainer)?;
    let mut command = server.command.clone().ok_or(BuildError::NoCommand)?;
    command.extend(server.args.clone().unwrap_or_default());
    server.command = Some(vec![format!("{BRIDGE_DIR}/reflow-dataplane")]);
    let mut args = vec![
        "bridge".to_owned(),
        "--listen".to_owned(),
        format!("0.0.0.0:{}", target.port),
        "--path".to_owned(),
        target.path.clone(),
        "--token-env".to_owned(),
        BRIDGE_TOKEN_ENV.to_owned(),
        "--".to_owned(),
    ];
    args.extend(command);
    server.args = Some(args);
    server
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: BRIDGE_VOLUME.into(),
            mount_path: BRIDGE_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: BRIDGE_VOLUME.into(),
        empty_dir: Some(Default::default()),
        ..Volume::default()
    });
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .push(Container {
            name: "reflow-bridge-install".into(),
            image: Some(cfg.bridge_image.clone()),
            command: Some(vec![
                BRIDGE_IMAGE_BINARY.into(),
                "install-bridge".into(),
                BRIDGE_DIR.into(),
            ]),
            volume_mounts: Some(vec![VolumeMount {
                name: BRIDGE_VOLUME.into(),
                mount_path: BRIDGE_DIR.into(),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        });
    Ok(())
}

fn service(metadata: ObjectMeta, selector: BTreeMap<String, String>, port: u16) -> Service {
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("mcp".into()),
                port: i32::from(port),
                target_port: Some(IntOrString::String("mcp".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn network_policy(
    metadata: ObjectMeta,
    selector: BTreeMap<String, String>,
    port: u16,
    cfg: &InstanceConfig,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(cfg.dataplane_labels.clone()),
                        match_expressions: None,
                    }),
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "kubernetes.io/metadata.name".to_owned(),
                            cfg.dataplane_namespace.clone(),
                        )])),
                        match_expressions: None,
                    }),
                    ip_block: None,
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(i32::from(port))),
                    protocol: Some("TCP".into()),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflow_crds::api::{InstanceSpec, LocalRef};

    fn named(name: &str) -> MCPInstance {
        MCPInstance::new(
            name,
            InstanceSpec {
                target_ref: LocalRef { name: "t".into() },
                isolation_key: "k".into(),
                credential_fingerprint: None,
                identity: None,
            },
        )
    }

    #[test]
    fn child_names_and_labels_fit_in_63_characters_and_stay_distinct() {
        assert_eq!(child_name(&named("gh-alice")), "mcpi-gh-alice");
        assert_eq!(instance_label(&named("gh-alice")), "gh-alice");
        // A 30-character Target with the dataplane's 33-character key.
        let key = "0123456789abcdef-fedcba9876543210";
        let a = named(&format!("{}-{key}", "a".repeat(30)));
        let b = named(&format!("{}-{key}", "a".repeat(31)));
        for inst in [&a, &b] {
            let (child, label) = (child_name(inst), instance_label(inst));
            assert!(child.len() <= 63 && label.len() <= 63, "{child} {label}");
            assert!(child.starts_with("mcpi-aaaa"));
            assert!(child.ends_with(|c: char| c.is_ascii_alphanumeric()));
        }
        assert_ne!(child_name(&a), child_name(&b));
        assert_ne!(instance_label(&a), instance_label(&b));
    }

    #[test]
    fn a_template_asking_for_the_host_builds_no_pod() {
        let cfg = InstanceConfig {
            bridge_image: "b".into(),
            dataplane_labels: BTreeMap::new(),
            dataplane_namespace: "ns".into(),
            key: reflow_crds::SealingKey::from_bytes(&[1; 32]),
        };
        let mut inst = named("gh-alice");
        inst.metadata.uid = Some("u".into());
        let template = |spec: serde_json::Value| PodTemplate {
            template: serde_json::json!({ "spec": spec }),
            transport: PodTransport::StreamableHttp,
            port: 8080,
            path: "/mcp".into(),
        };
        let host = template(
            serde_json::json!({"hostPID": true, "containers": [{"name": "s", "image": "i"}]}),
        );
        let err = build(&inst, &host, &[], "f", "t", &cfg)
            .err()
            .expect("refused");
        assert_eq!(err.reason(), "PodTemplateNotRestricted");
        assert!(err.to_string().contains("spec.hostPID"), "{err}");
        let plain = template(serde_json::json!({"containers": [{"name": "s", "image": "i"}]}));
        assert!(build(&inst, &plain, &[], "f", "t", &cfg).is_ok());
    }

    /// The init container runs the binary where the images put it (it ran `/reflow-dataplane`,
    /// which no image has, so every STDIO instance Pod failed in its init container).
    #[test]
    fn the_bridge_installer_runs_the_binary_where_the_images_put_it() {
        let dockerfile = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/dataplane.Dockerfile"),
        )
        .expect("images/dataplane.Dockerfile");
        let copies = format!("COPY --from=build /reflow-dataplane {BRIDGE_IMAGE_BINARY}");
        assert_eq!(
            dockerfile.matches(&copies).count(),
            2,
            "both variants (runtime, stdio) must carry {BRIDGE_IMAGE_BINARY}"
        );
        let cfg = InstanceConfig {
            bridge_image: "b".into(),
            dataplane_labels: BTreeMap::new(),
            dataplane_namespace: "ns".into(),
            key: reflow_crds::SealingKey::from_bytes(&[1; 32]),
        };
        let mut inst = named("gh-alice");
        inst.metadata.uid = Some("u".into());
        let stdio = PodTemplate {
            template: serde_json::json!({"spec": {"containers": [{"name": "s", "image": "i", "command": ["srv"]}]}}),
            transport: PodTransport::Stdio,
            port: 8080,
            path: "/mcp".into(),
        };
        let built = build(&inst, &stdio, &[], "f", "t", &cfg).expect("built");
        let init = &built.pod.spec.expect("spec").init_containers.expect("init")[0];
        assert_eq!(
            init.command
                .as_ref()
                .and_then(|c| c.first())
                .map(String::as_str),
            Some(BRIDGE_IMAGE_BINARY)
        );
    }
}
