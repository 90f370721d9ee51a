//! Shared by the replica tests: three (or more) `reflow-dataplane` processes on one throwaway
//! Postgres, a conformance fixture and a stateful STDIO Target, behind the harness's
//! round-robin balancer; raw HTTP helpers for what the SDKs do not expose (event ids, resuming a
//! GET stream at a chosen replica).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use reflow_crds::SealingKey;
use reflow_e2e::fixture_bin;
use reflow_e2e::harness::gateway::target_yaml;
use reflow_e2e::harness::{
    DataplaneProcess, FixtureProcess, PolicyDoc, RoundRobin, SseReader, TestPostgres,
};
use secrecy::SecretString;
use serde_json::{Value, json};

pub const DEV_SECRET: &str = "reflow-replicas-dev-secret-0123456789abcdef";
pub const REPLICA_TOKEN: &str = "replica-token-for-the-e2e-test-0123456789";
pub const BOTH: &str = "application/json, text/event-stream";
pub const WAIT: Duration = Duration::from_secs(30);
/// How long a silent replica takes to count as dead in these tests.
pub const DEAD_AFTER_MS: u64 = 2_000;

/// Three replicas, their database, their upstreams and the balancer in front.
pub struct Cluster {
    pub lb: RoundRobin,
    pub replicas: Vec<DataplaneProcess>,
    pub fixture: FixtureProcess,
    pub db_url: String,
    pub dir: PathBuf,
    // Dropped last: the replicas' database.
    pub pg: TestPostgres,
}

impl Cluster {
    /// `n` replicas of one manifests folder: Target `cf` (the conformance fixture over HTTP,
    /// speaking the stateful era so a stateless client's call is parked), Target `st` (the
    /// fixture over STDIO, `stateful: true`: one child per session) and Target `sh` (the same,
    /// not stateful: one child shared by every session).
    pub fn start(n: usize) -> Self {
        let pg = TestPostgres::start().expect("postgres starts");
        let db_url = pg.create_database("replicas").expect("database");
        let fixture = FixtureProcess::spawn_with(
            &fixture_bin!(),
            ["--conformance", "--era", "stateful", "--name", "cf"],
        )
        .expect("fixture");
        let dir = pg.dir().join("replicas");
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).expect("manifests dir");
        std::fs::write(manifests.join("all.yaml"), manifests_yaml(&fixture)).expect("manifests");
        let key = SealingKey::generate_base64();
        let replicas: Vec<_> = (0..n)
            .map(|i| {
                let config = replica_config(&dir, &format!("r{i}"), &key, &db_url);
                DataplaneProcess::spawn(
                    &manifests,
                    &config,
                    &[
                        ("REFLOW_REPLICA_TOKEN", REPLICA_TOKEN),
                        ("RUST_LOG", "warn"),
                    ],
                )
                .expect("replica starts")
            })
            .collect();
        let lb = RoundRobin::start(replicas.iter().map(DataplaneProcess::addr).collect())
            .expect("balancer");
        Self {
            lb,
            replicas,
            fixture,
            db_url,
            dir,
            pg,
        }
    }

    /// `http://balancer/mcp`.
    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.lb.url())
    }

    /// The replica (index) that owns `key` (`s:<session>`), by its registered address.
    pub fn owner_of(&self, key: &str) -> Option<usize> {
        let rows = psql(
            &self.db_url,
            &format!(
                "SELECT r.address FROM reflow_owners o JOIN reflow_replicas r ON r.id = o.replica \
                 WHERE o.key = '{key}'"
            ),
        );
        let address = rows.trim();
        self.replicas
            .iter()
            .position(|r| address == format!("http://{}", r.addr()))
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(DataplaneProcess::addr).collect()
    }
}

fn manifests_yaml(fixture: &FixtureProcess) -> String {
    let stdio = format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: st, namespace: e2e}}\n\
         spec:\n  transport: stdio\n  command: {}\n  args: [--stdio, --conformance, --name, st]\n  prefix: st\n  \
         stateful: true\n  isolation: shared\n  timeouts: {{requestMs: 20000, initMs: 30000}}\n",
        fixture_bin!().display()
    );
    // The same fixture over STDIO, not stateful: one child shared by every session.
    let shared = stdio
        .replace("name: st,", "name: sh,")
        .replace("--name, st]", "--name, sh]")
        .replace("prefix: st", "prefix: sh")
        .replace("  stateful: true\n", "");
    [
        target_yaml("cf", "streamableHttp", &fixture.mcp_url()),
        stdio,
        shared,
        PolicyDoc::allow("cf-all", "cf")
            .everyone()
            .rule("all", &["*"])
            .to_yaml(),
        PolicyDoc::allow("st-all", "st")
            .everyone()
            .rule("all", &["*"])
            .to_yaml(),
        PolicyDoc::allow("sh-all", "sh")
            .everyone()
            .rule("all", &["*"])
            .to_yaml(),
    ]
    .join("---\n")
}

/// One replica's config: dev issuer, shared sealing key and database, its own spill folder,
/// short heartbeat and death timings.
fn replica_config(dir: &std::path::Path, name: &str, key: &str, url: &str) -> PathBuf {
    std::fs::write(dir.join("sealing-key"), key).expect("key file");
    std::fs::write(dir.join("db-url"), url).expect("url file");
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "dev: {{hs256Secret: {DEV_SECRET}}}\nsealingKeyFile: sealing-key\n\
             database: {{urlFile: db-url, maxConnections: 8}}\n\
             audit: {{spillDir: spill-{name}, failurePolicy: buffer}}\n\
             gateway:\n  replicas: {{heartbeatMs: 300, deadAfterMs: {DEAD_AFTER_MS}, \
             connectTimeoutMs: 500, responseTimeoutMs: 20000}}\n"
        ),
    )
    .expect("config");
    config
}

pub fn dev_token(user: &str) -> String {
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

/// One query through `psql` (the test's Postgres), its unaligned output.
pub fn psql(url: &str, sql: &str) -> String {
    let bin = reflow_e2e::harness::postgres::postgres_bin_dir().expect("postgres binaries");
    let out = std::process::Command::new(bin.join("psql"))
        .args([url, "-XAtq", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An HTTP client that never reuses connections (the balancer closes them anyway).
pub fn http() -> reqwest::Client {
    // The harness client installs the crypto provider reqwest needs.
    reflow_e2e::harness::http_client().expect("http client");
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// POSTs one JSON-RPC message; the response.
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    sid: Option<&str>,
    accept: &str,
    body: Value,
) -> reqwest::Response {
    let mut req = http
        .post(url)
        .bearer_auth(token)
        .header("accept", accept)
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body);
    if let Some(sid) = sid {
        req = req.header("mcp-session-id", sid);
    }
    req.send().await.expect("balancer answers")
}

/// `initialize` + `notifications/initialized`; the session id.
pub async fn open_session(http: &reqwest::Client, url: &str, token: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "replicas-e2e", "version": "1"}}});
    let resp = post(http, url, token, None, BOTH, init).await;
    assert_eq!(resp.status(), 200);
    let sid = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("a session id")
        .to_owned();
    let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let resp = post(http, url, token, Some(&sid), BOTH, done).await;
    assert_eq!(resp.status(), 202);
    sid
}

/// Opens the session's GET stream (through the balancer), resuming after `last` if given.
pub async fn get_stream(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    sid: &str,
    last: Option<&str>,
) -> reqwest::Response {
    let mut req = http
        .get(url)
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .header("mcp-session-id", sid);
    if let Some(last) = last {
        req = req.header("last-event-id", last);
    }
    req.send().await.expect("balancer answers")
}

/// What one `cf_test_tool_with_logging` call says on the session's GET stream.
pub const LOGGED: [&str; 3] = [
    "Tool execution started",
    "Tool processing data",
    "Tool execution completed",
];

/// `calls` JSON-only calls of `cf_test_tool_with_logging`: the upstream's three log messages
/// per call belong on the session's GET stream.
pub async fn emit(http: &reqwest::Client, url: &str, token: &str, sid: &str, calls: usize) {
    for i in 0..calls {
        let call = json!({"jsonrpc": "2.0", "id": 100 + i, "method": "tools/call",
            "params": {"name": "cf_test_tool_with_logging", "arguments": {}}});
        let resp = post(http, url, token, Some(sid), "application/json", call).await;
        assert_eq!(resp.status(), 200);
        let reply: Value = resp.json().await.expect("a JSON reply");
        assert!(reply["result"]["content"][0]["text"].is_string(), "{reply}");
    }
}

/// Reads `stream` until `want` labelled messages arrived (or `WAIT` passes); each message's
/// label and the id of the event that carried it.
pub async fn read_labels(stream: &mut SseReader, want: usize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    while got.len() < want {
        let Ok(Some(event)) = stream.next_event(WAIT).await else {
            break;
        };
        let Ok(msg) = event.json() else { continue };
        if msg["method"] == "notifications/message"
            && let Some(label) = msg["params"]["data"].as_str()
        {
            got.push((label.to_owned(), event.id.clone().unwrap_or_default()));
        }
    }
    got
}
