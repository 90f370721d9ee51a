//! The Reflow gateway in-process for whole-system tests: built from a temporary manifests folder
//! (Targets, Policies, Credentials, Secrets), the real JWT `Authenticator` with an HS256 test
//! issuer, an inspectable `MemorySink` audit and a fresh `SealingKey`, served on 127.0.0.1:0.
//!
//! It runs on its own multi-threaded tokio runtime, so tests stay synchronous (`#[test]`) and can
//! block on peers such as the Python SDK client while the gateway keeps serving. Dropping a
//! `TestGateway` aborts the server task, stops the runtime and removes the folder. Do not drop it
//! from inside an async context.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reflow_crds::SealingKey;
use reflow_dataplane::app::{App, AppConfig};
use reflow_dataplane::audit::{AuditEvent, AuditSink, MemorySink};
use reflow_dataplane::auth::{AuthConfig, Authenticator, IssuerConfig, mint_dev_token};
use reflow_dataplane::mcp::{Gateway, GatewayConfig};
use reflow_dataplane::postgres::NotificationBus;
use reflow_dataplane::session::{MemorySessionStore, SessionStore};
use reflow_dataplane::source::{self, SnapshotStore};
use secrecy::SecretString;
use serde_json::json;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::error::{HarnessError, Result};

/// The namespace every object of a test gateway lives in.
pub const NAMESPACE: &str = "e2e";
/// The trusted test issuer (`iss`).
pub const ISSUER: &str = "https://issuer.e2e.reflow.test";
/// The audience the gateway accepts (`aud`).
pub const AUDIENCE: &str = "reflow-e2e";
/// The test issuer's HS256 secret (at least 32 bytes).
pub const HS256_SECRET: &str = "reflow-e2e-hs256-secret-0123456789abcdef";
/// How long tokens from [`TestGateway::token`] are valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(600);

const MANIFEST_FILE: &str = "manifests.yaml";

/// A Policy document, written as YAML into the manifests folder.
#[derive(Debug, Clone)]
pub struct PolicyDoc {
    name: String,
    target: String,
    effect: &'static str,
    priority: i32,
    subjects: Vec<String>,
    rules: Vec<String>,
}

impl PolicyDoc {
    fn new(name: &str, target: &str, effect: &'static str) -> Self {
        Self {
            name: name.to_owned(),
            target: target.to_owned(),
            effect,
            priority: 0,
            subjects: Vec::new(),
            rules: Vec::new(),
        }
    }

    /// An `Allow` policy `name` on Target `target`.
    pub fn allow(name: &str, target: &str) -> Self {
        Self::new(name, target, "Allow")
    }

    /// A `Deny` policy `name` on Target `target`.
    pub fn deny(name: &str, target: &str) -> Self {
        Self::new(name, target, "Deny")
    }

    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    pub fn everyone(mut self) -> Self {
        self.subjects.push("{everyone: true}".to_owned());
        self
    }

    pub fn user(mut self, user: &str) -> Self {
        self.subjects.push(format!("{{user: {}}}", quoted(user)));
        self
    }

    pub fn group(mut self, group: &str) -> Self {
        self.subjects.push(format!("{{group: {}}}", quoted(group)));
        self
    }

    pub fn role(mut self, role: &str) -> Self {
        self.subjects.push(format!("{{role: {}}}", quoted(role)));
        self
    }

    /// A rule: `kind` is `tool`, `resource`, `prompt` or `all`; `names` are anchored globs.
    pub fn rule(mut self, kind: &str, names: &[&str]) -> Self {
        let names = names.iter().map(|n| quoted(n)).collect::<Vec<_>>();
        self.rules
            .push(format!("{{kind: {kind}, names: [{}]}}", names.join(", ")));
        self
    }

    pub fn to_yaml(&self) -> String {
        format!(
            "apiVersion: mcp.reflow.io/v1alpha1\nkind: Policy\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n  targetRef: {{name: {target}}}\n  subjects: [{subjects}]\n  rules: [{rules}]\n  effect: {effect}\n  priority: {priority}\n",
            name = self.name,
            target = self.target,
            subjects = self.subjects.join(", "),
            rules = self.rules.join(", "),
            effect = self.effect,
            priority = self.priority,
        )
    }
}

/// A JSON string is a valid YAML flow scalar.
fn quoted(s: &str) -> String {
    json!(s).to_string()
}

/// A Target document: `transport` is `streamableHttp`, `sse` or `auto`; the prefix is the name.
pub fn target_yaml(name: &str, transport: &str, url: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n  transport: {transport}\n  url: {url}\n  prefix: {name}\n  timeouts: {{connectMs: 5000, requestMs: 20000, initMs: 20000}}\n"
    )
}

/// A Credential injecting header `header` (value from Secret `secret`, key `key`) into calls to
/// `target` by the callers `subject` names (`user: alice`, `group: developers`, `default: true`).
pub fn credential_header_yaml(
    name: &str,
    target: &str,
    subject: &str,
    header: &str,
    secret: &str,
    key: &str,
) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Credential\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n  targetRef: {{name: {target}}}\n  subject: {{{subject}}}\n  headers:\n    - name: {header}\n      secretKeyRef: {{name: {secret}, key: {key}}}\n"
    )
}

/// A v1 Secret with `stringData`.
pub fn secret_yaml(name: &str, data: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nstringData:\n"
    );
    for (k, v) in data {
        yaml.push_str(&format!("  {k}: {}\n", quoted(v)));
    }
    yaml
}

/// Builds the session store, audit sink and (optionally) notification bus of a gateway, on the
/// gateway's runtime (Postgres stores spawn their background tasks there), from its sealing key.
pub type StoresFactory = Arc<dyn Fn(&SealingKey) -> TestStores + Send + Sync>;

/// What a [`StoresFactory`] makes: the stores `App::build` is given.
pub struct TestStores {
    pub sessions: Arc<dyn SessionStore>,
    pub audit: Arc<dyn AuditSink>,
    /// The bus to other replicas sharing the sessions; none for a lone gateway.
    pub bus: Option<Arc<dyn NotificationBus>>,
}

impl TestStores {
    /// Sessions and audit, no bus.
    pub fn new(sessions: Arc<dyn SessionStore>, audit: Arc<dyn AuditSink>) -> Self {
        Self {
            sessions,
            audit,
            bus: None,
        }
    }
}

/// Collects manifests and settings, then [`start`](Self::start)s the gateway.
#[derive(Clone, Default)]
pub struct GatewayBuilder {
    docs: Vec<String>,
    config: GatewayConfig,
    sealing_key: Option<String>,
    stores: Option<StoresFactory>,
}

impl std::fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("docs", &self.docs)
            .field("config", &self.config)
            .field("custom_stores", &self.stores.is_some())
            .finish_non_exhaustive()
    }
}

impl GatewayBuilder {
    /// A Streamable HTTP Target `name` (prefix `name`) at `url`.
    pub fn target(self, name: &str, url: &str) -> Self {
        self.target_with(name, "streamableHttp", url)
    }

    /// A Target with an explicit transport (`streamableHttp`, `sse`, `auto`).
    pub fn target_with(self, name: &str, transport: &str, url: &str) -> Self {
        self.manifest(target_yaml(name, transport, url))
    }

    pub fn policy(self, policy: PolicyDoc) -> Self {
        self.manifest(policy.to_yaml())
    }

    /// See [`credential_header_yaml`].
    pub fn credential_header(
        self,
        name: &str,
        target: &str,
        subject: &str,
        header: &str,
        (secret, key): (&str, &str),
    ) -> Self {
        self.manifest(credential_header_yaml(
            name, target, subject, header, secret, key,
        ))
    }

    pub fn secret(self, name: &str, data: &[(&str, &str)]) -> Self {
        self.manifest(secret_yaml(name, data))
    }

    /// Any YAML document (written verbatim, separated by `---`).
    pub fn manifest(mut self, yaml: impl Into<String>) -> Self {
        self.docs.push(yaml.into());
        self
    }

    pub fn config(mut self, config: GatewayConfig) -> Self {
        self.config = config;
        self
    }

    /// The sealing key (base64), so several gateways can share sealed state (sessions in one
    /// database). A fresh key otherwise.
    pub fn sealing_key(mut self, base64: impl Into<String>) -> Self {
        self.sealing_key = Some(base64.into());
        self
    }

    /// Session store and audit sink other than memory (e.g. Postgres). With these,
    /// [`TestGateway::audit_events`] sees nothing.
    pub fn stores(mut self, factory: StoresFactory) -> Self {
        self.stores = Some(factory);
        self
    }

    /// Writes the manifests, compiles them and starts serving on 127.0.0.1:0.
    pub fn start(self) -> Result<TestGateway> {
        TestGateway::start(self)
    }
}

/// Removes a folder when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running in-process gateway. See the module docs.
pub struct TestGateway {
    addr: SocketAddr,
    audit: MemorySink,
    snapshots: Arc<SnapshotStore>,
    key: SealingKey,
    gateway: Arc<Gateway>,
    server: JoinHandle<()>,
    runtime: Option<Runtime>,
    dir: TempDir,
}

impl std::fmt::Debug for TestGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestGateway")
            .field("addr", &self.addr)
            .field("dir", &self.dir.0)
            .finish_non_exhaustive()
    }
}

fn other(what: &str) -> impl Fn(&dyn std::fmt::Display) -> HarnessError + '_ {
    move |e| HarnessError::Other(format!("{what}: {e}"))
}

impl TestGateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    fn start(b: GatewayBuilder) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        init_logging();
        let dir = TempDir(
            std::env::temp_dir().join(format!("reflow-e2e-gw-{}", uuid::Uuid::new_v4().simple())),
        );
        std::fs::create_dir_all(&dir.0).map_err(|e| HarnessError::io(&dir.0, e))?;
        let file = dir.0.join(MANIFEST_FILE);
        std::fs::write(&file, b.docs.join("---\n")).map_err(|e| HarnessError::io(&file, e))?;

        let key_text = b
            .sealing_key
            .clone()
            .unwrap_or_else(SealingKey::generate_base64);
        let key = SealingKey::from_base64(&key_text).map_err(|e| other("sealing key")(&e))?;
        let snapshot =
            source::compile_dir(&dir.0, &key).map_err(|e| other("compiling manifests")(&e))?;
        let snapshots = SnapshotStore::new();
        snapshots.publish(snapshot);

        let mut issuer = IssuerConfig::new(ISSUER, [AUDIENCE]);
        issuer.hs256_secret = Some(SecretString::from(HS256_SECRET));
        let authenticator = Authenticator::new(AuthConfig::new(vec![issuer]))
            .map_err(|e| other("authenticator")(&e))?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("e2e-gateway")
            .enable_all()
            .build()
            .map_err(|e| other("gateway runtime")(&e))?;
        let audit = MemorySink::default();
        let config = b.config;
        let stores = b.stores.clone();
        let (app, listener) = runtime.block_on(async {
            let stores = match stores {
                Some(make) => make(&key),
                None => TestStores::new(
                    MemorySessionStore::new(Duration::from_secs(config.session_idle_seconds)),
                    Arc::new(audit.clone()),
                ),
            };
            let mut parts = AppConfig::new(
                config,
                snapshots.clone(),
                stores.sessions,
                Arc::new(authenticator),
                stores.audit,
                key.clone(),
            );
            parts.bus = stores.bus;
            let app = App::build(parts).map_err(|e| other("gateway")(&e))?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| other("gateway listen")(&e))?;
            Ok::<_, HarnessError>((app, listener))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| other("gateway address")(&e))?;
        let service = app.service();
        let server = runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, service).await {
                eprintln!("test gateway stopped serving: {e}");
            }
        });
        let gateway = app.gateway().clone();
        Ok(Self {
            addr,
            audit,
            snapshots,
            key,
            gateway,
            server,
            runtime: Some(runtime),
            dir,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The aggregated endpoint, `…/mcp`.
    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.base_url())
    }

    /// One Target's endpoint, `…/mcp/e2e/{target}` (unprefixed names).
    pub fn target_url(&self, target: &str) -> String {
        format!("{}/mcp/{NAMESPACE}/{target}", self.base_url())
    }

    /// The gateway itself (metrics, sessions, snapshots).
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Runs `fut` to completion on the gateway's runtime (from synchronous test code).
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        match &self.runtime {
            Some(rt) => rt.block_on(fut),
            None => unreachable!("the runtime lives until drop"),
        }
    }

    /// The manifests folder.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Replaces the manifests and publishes their compilation.
    pub fn replace_manifests(&self, docs: &[String]) -> Result<()> {
        let file = self.dir.0.join(MANIFEST_FILE);
        std::fs::write(&file, docs.join("---\n")).map_err(|e| HarnessError::io(&file, e))?;
        let snapshot = source::compile_dir(&self.dir.0, &self.key)
            .map_err(|e| other("compiling manifests")(&e))?;
        self.snapshots.publish(snapshot);
        Ok(())
    }

    /// A valid token from the test issuer for `user` with `groups` and `roles`.
    pub fn token(&self, user: &str, groups: &[&str], roles: &[&str]) -> String {
        mint(ISSUER, HS256_SECRET, user, groups, roles)
    }

    /// A well-formed, correctly signed token from an issuer the gateway does not trust.
    pub fn foreign_issuer_token(&self, user: &str) -> String {
        mint(
            "https://untrusted.e2e.reflow.test",
            HS256_SECRET,
            user,
            &[],
            &[],
        )
    }

    /// A token from the right issuer signed with the wrong secret.
    pub fn wrongly_signed_token(&self, user: &str) -> String {
        mint(
            ISSUER,
            "not-the-e2e-secret-but-also-32-bytes-long!",
            user,
            &[],
            &[],
        )
    }

    /// A token from the test issuer that expired an hour ago (well past the leeway).
    pub fn expired_token(&self, user: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": user, "groups": [], "roles": [],
            "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(HS256_SECRET.as_bytes()),
        )
        .expect("HS256 signing cannot fail")
    }

    /// Every audit event so far.
    pub fn audit_events(&self) -> Vec<AuditEvent> {
        self.audit.events()
    }

    /// Waits (bounded) for an audit event matching `pred` and returns it.
    pub fn wait_for_audit(
        &self,
        timeout: Duration,
        pred: impl Fn(&AuditEvent) -> bool,
    ) -> Option<AuditEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.audit.events().into_iter().find(|e| pred(e)) {
                return Some(ev);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Gateway logs go to the test output when `REFLOW_E2E_GATEWAY_LOG` is set (an `EnvFilter`
/// directive such as `reflow_dataplane=debug`); silent otherwise.
fn init_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("REFLOW_E2E_GATEWAY_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

fn mint(issuer: &str, secret: &str, user: &str, groups: &[&str], roles: &[&str]) -> String {
    let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    mint_dev_token(
        &SecretString::from(secret),
        issuer,
        AUDIENCE,
        user,
        &groups,
        &roles,
        TOKEN_TTL,
    )
    .expect("the test secret is strong and the TTL positive")
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.server.abort();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
