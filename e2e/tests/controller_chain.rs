//! The whole distribution chain with no cluster: a controller compiling a manifests folder,
//! two dataplanes following it over loopback HTTP, and a real `reflow-fixture` upstream.
//! A Policy edit reaches both dataplanes (the time is measured and printed); a broken edit keeps
//! the last good snapshot and shows in the controller's status; with the controller stopped the
//! dataplanes keep serving, and a restarted dataplane serves from its sealed cache.
//!
//! Controller and dataplanes each run on their own tokio runtime so that stopping one (dropping
//! its runtime) closes its sockets for real, as a process exit would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reflow_controller::fleet::Fleet;
use reflow_controller::metrics::Metrics as ControllerMetrics;
use reflow_controller::publish::Publisher;
use reflow_controller::server::{self, ApiState};
use reflow_controller::source::manifests;
use reflow_controller::token::ApiToken;
use reflow_crds::SealingKey;
use reflow_dataplane::app::{App, AppConfig};
use reflow_dataplane::audit::MemorySink;
use reflow_dataplane::auth::{AuthConfig, Authenticator, IssuerConfig, mint_dev_token};
use reflow_dataplane::controller_client::{self, Backoff, ControllerConfig};
use reflow_dataplane::mcp::GatewayConfig;
use reflow_dataplane::session::MemorySessionStore;
use reflow_dataplane::source::SnapshotStore;
use reflow_e2e::fixture_bin;
use reflow_e2e::harness::FixtureProcess;
use reflow_e2e::harness::gateway::{AUDIENCE, HS256_SECRET, ISSUER, PolicyDoc, target_yaml};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::runtime::Runtime;

const TOKEN: &str = "chain-test-controller-token";
const POLICY_FILE: &str = "policy.yaml";

fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let d =
            std::env::temp_dir().join(format!("reflow-{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).expect("temp dir");
        Self(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Controller {
    addr: SocketAddr,
    rt: Option<Runtime>,
}

impl Controller {
    fn start(dir: &Path, key: &SealingKey) -> Self {
        let rt = runtime("chain-controller");
        let addr = rt.block_on(async {
            let publisher = Arc::new(Publisher::new());
            let metrics = Arc::new(ControllerMetrics::new());
            let source = manifests::watch(
                dir.to_owned(),
                key.clone(),
                publisher.clone(),
                metrics.clone(),
            )
            .expect("manifests compile");
            let app = server::router(ApiState {
                published: publisher.subscribe(),
                fleet: Fleet::default(),
                token: ApiToken::new(&SecretString::from(TOKEN)).expect("token"),
                metrics,
                heartbeat: server::HEARTBEAT,
                instances: None,
                grants: None,
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move {
                let _keep = (source, publisher);
                let _ = axum::serve(listener, app).await;
            });
            addr
        });
        Self { addr, rt: Some(rt) }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it the way a crash would: every task and socket goes at once.
    fn stop(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

struct Dataplane {
    addr: SocketAddr,
    store: Arc<SnapshotStore>,
    rt: Option<Runtime>,
}

impl Dataplane {
    fn start(name: &str, controller: &str, key: &SealingKey, cache: &Path) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = runtime(name);
        let store = SnapshotStore::new();
        let addr = rt.block_on(async {
            let mut issuer = IssuerConfig::new(ISSUER, [AUDIENCE]);
            issuer.hs256_secret = Some(SecretString::from(HS256_SECRET));
            let auth = Authenticator::new(AuthConfig::new(vec![issuer])).expect("authenticator");
            let gw = App::build(AppConfig::new(
                GatewayConfig::default(),
                store.clone(),
                MemorySessionStore::new(Duration::from_secs(600)),
                Arc::new(auth),
                Arc::new(MemorySink::default()),
                key.clone(),
            ))
            .expect("gateway");
            let client = controller_client::spawn(
                ControllerConfig {
                    url: controller.to_owned(),
                    token: SecretString::from(TOKEN),
                    dataplane: name.to_owned(),
                    cache: Some(cache.to_owned()),
                    key: key.clone(),
                    backoff: Backoff {
                        initial: Duration::from_millis(50),
                        max: Duration::from_millis(400),
                    },
                    observed: Default::default(),
                    link: std::sync::Arc::new(
                        reflow_dataplane::controller_client::ControllerLink::new(None),
                    ),
                },
                store.clone(),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let app = gw.router();
            tokio::spawn(async move {
                let _keep = client;
                let _ = axum::serve(listener, app).await;
            });
            addr
        });
        Self {
            addr,
            store,
            rt: Some(rt),
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A raw MCP client: initialize then tools/list on the aggregated endpoint.
struct Client {
    rt: Runtime,
    http: reqwest::Client,
    token: String,
}

impl Client {
    fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let token = mint_dev_token(
            &SecretString::from(HS256_SECRET),
            ISSUER,
            AUDIENCE,
            "alice",
            &[],
            &[],
            Duration::from_secs(600),
        )
        .expect("token");
        Self {
            rt: runtime("chain-client"),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            token,
        }
    }

    async fn rpc(
        &self,
        base: &str,
        sid: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<(Option<String>, Value), String> {
        let mut req = self
            .http
            .post(format!("{base}/mcp"))
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}));
        if let Some(s) = sid {
            req = req.header("mcp-session-id", s);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let sid = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        Ok((
            sid,
            serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?,
        ))
    }

    /// Tool names alice sees on `dp`, or why the dataplane could not answer.
    fn tools(&self, dp: &Dataplane) -> Result<Vec<String>, String> {
        let base = format!("http://{}", dp.addr);
        self.rt.block_on(async {
            let (sid, _) = self
                .rpc(&base, None, "initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "chain", "version": "1"}}))
                .await?;
            let (_, list) = self.rpc(&base, sid.as_deref(), "tools/list", json!({})).await?;
            let mut names: Vec<String> = list["result"]["tools"]
                .as_array()
                .ok_or_else(|| format!("no tools in {list}"))?
                .iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect();
            names.sort();
            Ok(names)
        })
    }

    fn get(&self, url: &str, token: Option<&str>) -> (u16, String) {
        self.rt.block_on(async {
            let mut req = self.http.get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            }
        })
    }

    fn status(&self, controller: &Controller) -> Value {
        let (code, body) = self.get(&format!("{}/v1/status", controller.url()), Some(TOKEN));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }
}

/// Polls until `check` holds or `limit` passes; returns the time it took.
fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn write_policy(dir: &Path, tools: &[&str]) {
    let doc = PolicyDoc::allow("alice-tools", "fx")
        .user("alice")
        .rule("tool", tools);
    std::fs::write(dir.join(POLICY_FILE), doc.to_yaml()).expect("write policy");
}

#[test]
fn controller_to_two_dataplanes_edits_outages_and_the_sealed_cache() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let fixture =
        FixtureProcess::spawn_with(&fixture_bin!(), Vec::<&str>::new()).expect("fixture starts");
    let manifests = TempDir::new("chain-manifests");
    let caches = TempDir::new("chain-caches");
    std::fs::write(
        manifests.0.join("target.yaml"),
        target_yaml("fx", "streamableHttp", &fixture.mcp_url()),
    )
    .expect("write target");
    write_policy(&manifests.0, &["echo"]);
    let key = SealingKey::from_bytes(&[9; 32]);
    let client = Client::new();

    let controller = Controller::start(&manifests.0, &key);
    // The API wants the token.
    let (code, _) = client.get(&format!("{}/v1/status", controller.url()), Some("wrong"));
    assert_eq!(code, 401);
    let (code, _) = client.get(&format!("{}/readyz", controller.url()), None);
    assert_eq!(code, 200);

    let cache = |n: &str| caches.0.join(format!("{n}.snapshot"));
    let dp1 = Dataplane::start("dp-1", &controller.url(), &key, &cache("dp-1"));
    let mut dp2 = Dataplane::start("dp-2", &controller.url(), &key, &cache("dp-2"));
    let both_see = |want: &[&str], dp1: &Dataplane, dp2: &Dataplane| {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        client.tools(dp1).as_ref() == Ok(&want) && client.tools(dp2).as_ref() == Ok(&want)
    };
    assert!(
        wait_for(Duration::from_secs(20), || both_see(
            &["fx_echo"],
            &dp1,
            &dp2
        ))
        .is_some(),
        "both dataplanes serve the first snapshot: {:?} / {:?}\n{}",
        client.tools(&dp1),
        client.tools(&dp2),
        client.status(&controller)
    );
    let programmed = wait_for(Duration::from_secs(10), || {
        let s = client.status(&controller);
        s["programmed"]["applied"] == 2 && s["programmed"]["connected"] == 2
    });
    assert!(
        programmed.is_some(),
        "Programmed 2 of 2: {}",
        client.status(&controller)
    );
    let s = client.status(&controller);
    let policy = s["objects"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["kind"] == "Policy"))
        .cloned()
        .expect("policy status");
    let prog = policy["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Programmed"))
        .cloned()
        .expect("Programmed condition");
    assert_eq!(prog["status"], "True", "{prog}");
    assert_eq!(prog["message"], "applied by 2 of 2 dataplanes");

    // Edit the Policy: both dataplanes enforce the new rules. Measured from the file write to
    // the moment both answer tools/list with the new set.
    let mut figures = Vec::new();
    for (i, tools) in [&["echo", "add"][..], &["add"][..], &["echo", "add"][..]]
        .iter()
        .enumerate()
    {
        let expect: Vec<String> = tools.iter().map(|t| format!("fx_{t}")).collect::<Vec<_>>();
        let mut expect_sorted = expect.clone();
        expect_sorted.sort();
        let want: Vec<&str> = expect_sorted.iter().map(String::as_str).collect();
        write_policy(&manifests.0, tools);
        let took = wait_for(Duration::from_secs(10), || both_see(&want, &dp1, &dp2))
            .unwrap_or_else(|| {
                panic!(
                    "edit {i} not enforced: {:?} / {:?}",
                    client.tools(&dp1),
                    client.tools(&dp2)
                )
            });
        figures.push(took);
    }
    println!(
        "policy edit to enforcement on both dataplanes: {:?} (DESIGN budget 1 s, includes the {:?} debounce)",
        figures,
        reflow_controller::source::DEBOUNCE
    );

    // A broken edit: the controller keeps the last good snapshot and says why.
    std::fs::write(manifests.0.join(POLICY_FILE), "apiVersion: mcp.reflow.io/v1alpha1\nkind: Policy\nmetadata: {name: alice-tools, namespace: e2e}\nspec: {effect: Maybe}\n").expect("write");
    let reported = wait_for(Duration::from_secs(10), || {
        client.status(&controller)["sourceError"]
            .as_str()
            .is_some_and(|e| e.contains(POLICY_FILE))
    });
    assert!(
        reported.is_some(),
        "status reports the broken file: {}",
        client.status(&controller)
    );
    assert_eq!(
        client.tools(&dp1),
        Ok(vec!["fx_add".to_owned(), "fx_echo".to_owned()])
    );
    assert_eq!(
        client.tools(&dp2),
        Ok(vec!["fx_add".to_owned(), "fx_echo".to_owned()])
    );

    // The controller goes away: both keep serving the last good snapshot.
    let version_before = dp2.store.load().hash().to_owned();
    controller.stop();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        client.tools(&dp1),
        Ok(vec!["fx_add".to_owned(), "fx_echo".to_owned()])
    );
    assert_eq!(
        client.tools(&dp2),
        Ok(vec!["fx_add".to_owned(), "fx_echo".to_owned()])
    );

    // A dataplane restarted while the controller is down serves from its sealed cache.
    let url_down = format!("http://{}", dp1.addr).replace(&dp1.addr.port().to_string(), "1");
    drop(dp2);
    dp2 = Dataplane::start("dp-2", &url_down, &key, &cache("dp-2"));
    let served = wait_for(Duration::from_secs(10), || {
        client.tools(&dp2) == Ok(vec!["fx_add".to_owned(), "fx_echo".to_owned()])
    });
    assert!(
        served.is_some(),
        "restarted dataplane serves its cache: {:?}",
        client.tools(&dp2)
    );
    assert_eq!(dp2.store.load().hash(), version_before);

    // A dataplane with no cache and no controller is not ready and serves nothing.
    let dp3 = Dataplane::start("dp-3", &url_down, &key, &cache("dp-3"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!dp3.store.is_ready());
    let (code, _) = client.get(&format!("http://{}/readyz", dp3.addr), None);
    assert_eq!(code, 503);

    // A cache sealed under another key is not used.
    let dp4 = Dataplane::start(
        "dp-4",
        &url_down,
        &SealingKey::from_bytes(&[1; 32]),
        &cache("dp-1"),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !dp4.store.is_ready(),
        "a cache sealed with another key must not open"
    );
}

/// `initialize` with `token` on `dp`; the HTTP status (0 when the dataplane did not answer).
fn init_status(client: &Client, dp: &Dataplane, token: &str) -> u16 {
    let base = format!("http://{}", dp.addr);
    client.rt.block_on(async {
        client
            .http
            .post(format!("{base}/mcp"))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "chain", "version": "1"}}}))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    })
}

#[test]
fn a_token_revocation_reaches_both_dataplanes_with_one_push() {
    let fixture =
        FixtureProcess::spawn_with(&fixture_bin!(), Vec::<&str>::new()).expect("fixture starts");
    let manifests = TempDir::new("revoke-manifests");
    let caches = TempDir::new("revoke-caches");
    std::fs::write(
        manifests.0.join("target.yaml"),
        target_yaml("fx", "streamableHttp", &fixture.mcp_url()),
    )
    .expect("write target");
    write_policy(&manifests.0, &["echo"]);
    let key = SealingKey::from_bytes(&[7; 32]);
    let controller = Controller::start(&manifests.0, &key);
    let a = Dataplane::start("revoke-a", &controller.url(), &key, &caches.0.join("a"));
    let b = Dataplane::start("revoke-b", &controller.url(), &key, &caches.0.join("b"));
    let client = Client::new();
    let mint = |user: &str| {
        reflow_dataplane::auth::mint_token(
            &SecretString::from(HS256_SECRET),
            ISSUER,
            AUDIENCE,
            &reflow_dataplane::auth::TokenRequest {
                user: user.to_owned(),
                ttl: Duration::from_secs(600),
                ..Default::default()
            },
        )
        .expect("token")
    };
    let (lost, kept) = (mint("alice"), mint("alice"));
    for dp in [&a, &b] {
        assert!(
            wait_for(Duration::from_secs(10), || init_status(
                &client,
                dp,
                &lost.token
            ) == 200)
            .is_some(),
            "the dataplane never served the token before the revocation"
        );
    }

    let written = Instant::now();
    std::fs::write(
        manifests.0.join("revoke.yaml"),
        format!(
            "apiVersion: mcp.reflow.io/v1alpha1\nkind: TokenRevocation\nmetadata: {{name: lost}}\nspec:\n  tokenIds: [{}]\n",
            lost.jti
        ),
    )
    .expect("write revocation");
    for (name, dp) in [("a", &a), ("b", &b)] {
        wait_for(Duration::from_secs(5), || {
            init_status(&client, dp, &lost.token) == 401
        })
        .unwrap_or_else(|| panic!("dataplane {name} still accepts the revoked token"));
        // A figure, not an assertion: the 1 s budget is judged from the printed numbers.
        eprintln!(
            "revocation enforced on dataplane {name} {:?} after the manifest was written",
            written.elapsed()
        );
        assert_eq!(
            init_status(&client, dp, &kept.token),
            200,
            "other tokens still work"
        );
    }
    let status = client.status(&controller);
    assert!(
        status.to_string().contains("lost"),
        "the revocation's status is reported: {status}"
    );
    drop(controller);
}
