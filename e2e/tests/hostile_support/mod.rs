//! What the hostile-client tests share: the real gateway binary on loopback with a dev issuer,
//! tokens for it, and a bare MCP `initialize`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use reflow_e2e::harness::DataplaneProcess;
use secrecy::SecretString;
use serde_json::{Value, json};

pub const DEV_SECRET: &str = "hostile-inputs-dev-secret-0123456789";

pub struct Gw {
    pub process: DataplaneProcess,
    pub dir: PathBuf,
    pub addr: SocketAddr,
}

impl Gw {
    /// `gateway_yaml` is the body of the config's `gateway:` mapping (flow style).
    pub fn start(name: &str, gateway_yaml: &str) -> Self {
        Self::start_with(name, gateway_yaml, "")
    }

    /// As [`Gw::start`], with `manifests` (YAML documents) in the manifests folder.
    pub fn start_with(name: &str, gateway_yaml: &str, manifests_yaml: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "reflow-hostile-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).expect("manifests dir");
        if !manifests_yaml.is_empty() {
            std::fs::write(manifests.join("all.yaml"), manifests_yaml).expect("manifests");
        }
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!("dev: {{hs256Secret: {DEV_SECRET}}}\ngateway: {gateway_yaml}\n"),
        )
        .expect("config");
        let process = DataplaneProcess::spawn(&manifests, &config, &[]).expect("gateway starts");
        let addr = process
            .mcp_url()
            .strip_prefix("http://")
            .and_then(|a| a.strip_suffix("/mcp"))
            .and_then(|a| a.parse().ok())
            .expect("gateway address");
        Self { process, dir, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn token(user: &str) -> String {
    reflow_dataplane::auth::mint_dev_token(
        &SecretString::from(DEV_SECRET),
        "reflow-dev",
        "reflow",
        user,
        &[],
        &[],
        Duration::from_secs(600),
    )
    .expect("token")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn initialize_body(client_info: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": client_info}})
}

/// POSTs `body` to `/mcp` as `user` (in `session` when given): status, headers, body text.
pub async fn post(
    http: &reqwest::Client,
    gw: &Gw,
    user: &str,
    session: Option<&str>,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    post_to(http, gw, "/mcp", user, session, body).await
}

/// As [`post`], to `path` (`/mcp/<namespace>/<target>` for a single-Target endpoint).
pub async fn post_to(
    http: &reqwest::Client,
    gw: &Gw,
    path: &str,
    user: &str,
    session: Option<&str>,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = http
        .post(gw.url(path))
        .bearer_auth(token(user))
        .header("accept", "application/json, text/event-stream")
        .json(body);
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let resp = req.send().await.expect("gateway answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap_or_default())
}

/// A new session for `user`: its id.
pub async fn open_session(http: &reqwest::Client, gw: &Gw, user: &str) -> Result<String, u16> {
    let (status, headers, _) = post(
        http,
        gw,
        user,
        None,
        &initialize_body(json!({"name": "hostile", "version": "0"})),
    )
    .await;
    if status != 200 {
        return Err(status);
    }
    Ok(headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("session id")
        .to_owned())
}

/// A gateway with `gateway_yaml` in front of one fixture Target (`one`, with its `one_slow`
/// tool) under the given policies (YAML documents; none: everyone may use everything); the
/// fixture lives as long as the returned handle.
pub fn gateway_to_fixture_with(
    name: &str,
    gateway_yaml: &str,
    policies: &[String],
) -> (reflow_e2e::harness::FixtureProcess, Gw) {
    use reflow_e2e::fixture_bin;
    use reflow_e2e::harness::gateway::target_yaml;
    use reflow_e2e::harness::{FixtureProcess, PolicyDoc};

    let fixture = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "one"]).expect("fixture");
    let mut manifests = vec![target_yaml("one", "streamableHttp", &fixture.mcp_url())];
    if policies.is_empty() {
        manifests.push(
            PolicyDoc::allow("one-all", "one")
                .everyone()
                .rule("all", &["*"])
                .to_yaml(),
        );
    }
    manifests.extend(policies.iter().cloned());
    let gw = Gw::start_with(name, gateway_yaml, &manifests.join("---\n"));
    (fixture, gw)
}
