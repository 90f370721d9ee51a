//! What the console tests share: an in-process gateway with the console on, in front of the
//! reflow-fixture (Target `e2e/tools`), trusting the e2e HS256 issuer and, when given, a real
//! oidc-provider; raw MCP calls as a given token; screenshots under target/.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reflow_crds::SealingKey;
use reflow_dataplane::app::{App, AppConfig};
use reflow_dataplane::audit::{AuditSink, MemorySink};
use reflow_dataplane::auth::{AuthConfig, Authenticator, IssuerConfig};
use reflow_dataplane::console::{Admins, ConsoleConfig, OidcConfig};
use reflow_dataplane::mcp::GatewayConfig;
use reflow_dataplane::postgres::Database;
use reflow_dataplane::session::{MemorySessionStore, SessionStore};
use reflow_dataplane::source::{self, SnapshotStore};
use reflow_e2e::harness::console_web::{ConsoleAt, ConsoleWeb};
use reflow_e2e::harness::gateway::{AUDIENCE, HS256_SECRET, ISSUER, PolicyDoc, target_yaml};
use reflow_e2e::harness::{FixtureProcess, paths};
use secrecy::SecretString;
use serde_json::{Value, json};

pub const ADMIN_GROUP: &str = "reflow-admins";

/// Policies: alice may call `echo`, bob `add`, admins everything; alice is denied `fail`.
pub fn manifests(fixture_url: &str) -> String {
    [
        target_yaml("tools", "streamableHttp", fixture_url),
        PolicyDoc::allow("alice-echo", "tools")
            .user("alice")
            .rule("tool", &["echo"])
            .to_yaml(),
        PolicyDoc::allow("bob-add", "tools")
            .user("bob")
            .rule("tool", &["add"])
            .to_yaml(),
        PolicyDoc::allow("admins-all", "tools")
            .group(ADMIN_GROUP)
            .rule("all", &["*"])
            .to_yaml(),
        PolicyDoc::deny("alice-no-fail", "tools")
            .user("alice")
            .rule("tool", &["fail"])
            .priority(10)
            .to_yaml(),
    ]
    .join("---\n")
}

pub struct Options {
    /// The oidc-provider's issuer URL: trusted for tokens, used for the console login.
    pub oidc_issuer: Option<String>,
    /// Audit and sessions in this database.
    pub database_url: Option<String>,
}

pub struct ConsoleGw {
    pub addr: SocketAddr,
    pub app: App,
    pub audit: MemorySink,
    runtime: Option<tokio::runtime::Runtime>,
    _fixture: FixtureProcess,
    dir: PathBuf,
}

impl Drop for ConsoleGw {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The audience of the IdP's access tokens for this gateway (an RFC 8707 resource: a URL).
pub fn resource(addr: SocketAddr) -> String {
    format!("http://{addr}/mcp")
}

fn auth(oidc_issuer: Option<&str>, addr: SocketAddr) -> Authenticator {
    let mut hs = IssuerConfig::new(ISSUER, [AUDIENCE]);
    hs.hs256_secret = Some(SecretString::from(HS256_SECRET));
    let mut issuers = vec![hs];
    if let Some(iss) = oidc_issuer {
        let mut op = IssuerConfig::new(iss, [resource(addr)]);
        op.discovery = true;
        issuers.push(op);
    }
    Authenticator::new(AuthConfig::new(issuers)).expect("authenticator")
}

/// The console's configuration for `addr` (OIDC when `issuer` is given).
pub fn console_config(addr: SocketAddr, issuer: Option<&str>) -> ConsoleConfig {
    ConsoleConfig {
        enabled: true,
        dev_login: true,
        admins: Admins {
            groups: vec![ADMIN_GROUP.to_owned()],
            ..Admins::default()
        },
        oidc: issuer.map(|iss| OidcConfig {
            issuer: iss.to_owned(),
            client_id: "console".to_owned(),
            client_secret_file: None,
            redirect_url: format!("http://{addr}/console/callback"),
            scopes: Vec::new(),
            resource: Some(resource(addr)),
        }),
        ..ConsoleConfig::default()
    }
}

impl ConsoleGw {
    /// Serves on `listener` (bound first, so the IdP can know the redirect URL).
    pub fn start(listener: std::net::TcpListener, opts: Options) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let fixture = FixtureProcess::spawn(["--listen", "127.0.0.1:0"]).expect("fixture");
        let dir =
            std::env::temp_dir().join(format!("reflow-console-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("all.yaml"), manifests(&fixture.mcp_url())).expect("manifests");
        let key = SealingKey::from_base64(&SealingKey::generate_base64()).expect("key");
        let snapshots = SnapshotStore::new();
        snapshots.publish(source::compile_dir(&dir, &key).expect("compile"));
        let addr = listener.local_addr().expect("addr");
        let config = GatewayConfig {
            console: console_config(addr, opts.oidc_issuer.as_deref()),
            ..GatewayConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let audit = MemorySink::default();
        let app = runtime.block_on(async {
            let (sessions, sink, database): (
                Arc<dyn SessionStore>,
                Arc<dyn AuditSink>,
                Option<Database>,
            ) = match &opts.database_url {
                Some(url) => pg_stores(url, &key, &dir).await,
                None => (
                    MemorySessionStore::new(Duration::from_secs(600)),
                    Arc::new(audit.clone()),
                    None,
                ),
            };
            let mut parts = AppConfig::new(
                config,
                snapshots,
                sessions,
                Arc::new(auth(opts.oidc_issuer.as_deref(), addr)),
                sink,
                key.clone(),
            );
            parts.console.database = database;
            parts.console.dataplane = "dataplane-e2e".to_owned();
            App::build(parts).expect("app")
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let service = app.service();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, service).await;
        });
        Self {
            addr,
            app,
            audit,
            runtime: Some(runtime),
            _fixture: fixture,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.as_ref().expect("runtime").block_on(f)
    }
}

async fn pg_stores(
    url: &str,
    key: &SealingKey,
    dir: &std::path::Path,
) -> (Arc<dyn SessionStore>, Arc<dyn AuditSink>, Option<Database>) {
    use reflow_dataplane::postgres::{AuditSettings, PgAuditSink, PgSessionStore, SessionSettings};
    let db = Database::new(&SecretString::from(url.to_owned()), 8).expect("database");
    db.connect_and_migrate(Duration::from_secs(30))
        .await
        .expect("migrate");
    let audit =
        PgAuditSink::start(db.clone(), AuditSettings::new(dir.join("spill"))).expect("audit");
    let sessions = PgSessionStore::start(
        db.clone(),
        key.clone(),
        SessionSettings::new(Duration::from_secs(600)),
        "replica-e2e".to_owned(),
        None,
    );
    (sessions, audit, Some(db))
}

/// An HS256 token of the e2e issuer.
pub fn token(user: &str, groups: &[&str]) -> String {
    let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
    reflow_dataplane::auth::mint_dev_token(
        &SecretString::from(HS256_SECRET),
        ISSUER,
        AUDIENCE,
        user,
        &groups,
        &[],
        Duration::from_secs(600),
    )
    .expect("token")
}

/// A minimal MCP client over raw HTTP: one session, JSON answers.
pub struct Mcp {
    http: reqwest::Client,
    url: String,
    token: String,
    pub session: Option<String>,
    next_id: u64,
}

impl Mcp {
    pub fn new(gw: &ConsoleGw, token: String) -> Self {
        Self {
            http: reflow_e2e::harness::http_client().expect("http"),
            url: gw.url("/mcp"),
            token,
            session: None,
            next_id: 1,
        }
    }

    /// POSTs one message; (status, body as JSON or Null).
    pub async fn send(&mut self, method: &str, params: Value, notification: bool) -> (u16, Value) {
        let mut body = json!({"jsonrpc": "2.0", "method": method, "params": params});
        if !notification {
            body["id"] = json!(self.next_id);
            self.next_id += 1;
        }
        let mut req = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(&body);
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        let resp = req.send().await.expect("gateway answers");
        let status = resp.status().as_u16();
        if let Some(sid) = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            self.session = Some(sid.to_owned());
        }
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text)
            .or_else(|_| {
                // An SSE answer: the data line of the response.
                text.lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| serde_json::from_str(d.trim()))
                    .next_back()
                    .unwrap_or(Ok(Value::Null))
            })
            .unwrap_or(Value::Null);
        (status, json)
    }

    /// initialize + initialized; panics unless the gateway accepts.
    pub async fn open(&mut self, client: &str) {
        let (status, body) = self
            .send(
                "initialize",
                json!({"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": client, "version": "1.0"}}),
                false,
            )
            .await;
        assert_eq!(status, 200, "initialize: {body}");
        self.send("notifications/initialized", json!({}), true)
            .await;
    }

    pub async fn call(&mut self, tool: &str, args: Value) -> (u16, Value) {
        self.send(
            "tools/call",
            json!({"name": tool, "arguments": args}),
            false,
        )
        .await
    }
}

/// Where the console screenshots go (referenced by the README).
pub fn screenshot_path(name: &str) -> PathBuf {
    paths::target_dir()
        .join("console-screenshots")
        .join(format!("{name}.png"))
}

/// A console client without a browser (the harness's), at a [`ConsoleGw`].
pub type Web = ConsoleWeb;

impl ConsoleAt for ConsoleGw {
    fn console_base(&self) -> String {
        self.url("")
    }
}
