//! `kubernetes` Targets end to end on loopback: an in-test stand-in for the controller's instance
//! API (answering `ensure` 202 then 200 with endpoint and bridge token, exactly as the controller
//! does, and recording `used`) in front of REAL bridges (`reflow-dataplane bridge` over
//! `reflow-fixture --stdio`). A tools/call through the gateway reaches the caller's own instance
//! with its token; alice and bob (different Credentials) get different instances; the bridge
//! tokens never reach audit or logs; a failing, slow, unknown or never-ready instance gives the
//! client a clear error in bounded time; without a controller the Target answers an error.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use reflow_crds::instance_wire::{BridgeToken, EnsureRequest, EnsureResponse, UsedRequest};
use reflow_dataplane::mcp::GatewayConfig;
use reflow_dataplane::upstream::instance::{ControllerApi, InstancesConfig};
use serde_json::{Value, json};
use support::{Harness, policy_yaml, start_gateway, start_gateway_instances, temp_dir};

const BIN: &str = env!("CARGO_BIN_EXE_reflow-dataplane");
const CONTROLLER_TOKEN: &str = "controller-api-token-for-the-test";
const TOKEN_A: &str = "bridge-token-AAAA-0123456789abcdef";
const TOKEN_B: &str = "bridge-token-BBBB-0123456789abcdef";

fn fixture_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REFLOW_FIXTURE_BIN") {
        return PathBuf::from(p);
    }
    Path::new(BIN)
        .parent()
        .map(|d| d.join("reflow-fixture"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("reflow-fixture not found; run `cargo build -p reflow-e2e --bin reflow-fixture` or set REFLOW_FIXTURE_BIN")
        })
}

/// Everything the gateway logs, at every level, for the whole test binary.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn bounded<F: Future<Output = ()>>(f: F) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .expect("test timed out");
}

/// One bridge process standing in for one instance pod: its token, and `INSTANCE` and
/// `GITHUB_TOKEN` in its environment as the instance Secret would put them. Killed by PID
/// (through its handle) on drop.
struct BridgeProc {
    child: Child,
    url: String,
}

impl Drop for BridgeProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl BridgeProc {
    fn start(token: &str, instance: &str, github_token: &str) -> Self {
        Self::start_with(token, instance, github_token, &[])
    }

    /// A bridge whose fixture gets `extra` arguments too.
    fn start_with(token: &str, instance: &str, github_token: &str, extra: &[&str]) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("instances-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("token");
        std::fs::write(&token_file, token).unwrap();
        let mut child = Command::new(BIN)
            .args(["bridge", "--listen", "127.0.0.1:0", "--token-file"])
            .arg(&token_file)
            .args(["--request-timeout", "5s", "--"])
            .arg(fixture_bin())
            .args(["--stdio", "--name", instance])
            .args(extra)
            .env("INSTANCE", instance)
            .env("GITHUB_TOKEN", github_token)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("bridge printed no listening line");
        let addr = line.strip_prefix("listening on ").expect("listening line");
        Self {
            child,
            url: format!("{addr}/mcp"),
        }
    }
}

/// The stand-in controller: per Target, how `ensure` answers.
#[derive(Default)]
struct Standin {
    /// Instance endpoints and tokens, handed to keys in the order they first ask.
    bridges: Mutex<Vec<(String, String)>>,
    ensures: Mutex<Vec<EnsureRequest>>,
    assigned: Mutex<HashMap<String, usize>>,
    used: Mutex<Vec<UsedRequest>>,
    /// `late`: starting (202) until this instant, set on its first ensure.
    late_ready_at: Mutex<Option<Instant>>,
}

async fn ensure(
    State(s): State<Arc<Standin>>,
    headers: HeaderMap,
    Json(req): Json<EnsureRequest>,
) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {CONTROLLER_TOKEN}"))
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let name = format!("{}-{}", req.target, req.isolation_key);
    let asked_before = {
        let mut seen = s.ensures.lock().unwrap();
        let before = seen
            .iter()
            .filter(|r| r.isolation_key == req.isolation_key)
            .count();
        seen.push(req.clone());
        before
    };
    match req.target.as_str() {
        // What the controller answers when the Kubernetes API fails.
        "broken" => (StatusCode::BAD_GATEWAY, "kubernetes API: internal detail\n").into_response(),
        "gone" => (
            StatusCode::NOT_FOUND,
            format!(
                "no accepted Target t/{} in the served snapshot\n",
                req.target
            ),
        )
            .into_response(),
        // What a controller running from a manifests folder answers.
        "folder" => (
            StatusCode::NOT_IMPLEMENTED,
            "per-identity instances need a cluster; this controller runs from a manifests folder\n",
        )
            .into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(20)).await;
            StatusCode::ACCEPTED.into_response()
        }
        "late"
            if *s
                .late_ready_at
                .lock()
                .unwrap()
                .get_or_insert_with(|| Instant::now() + Duration::from_secs(3))
                > Instant::now() =>
        {
            (
                StatusCode::ACCEPTED,
                Json(EnsureResponse {
                    name,
                    phase: reflow_crds::api::InstancePhase::Pending,
                    endpoint: None,
                    token: None,
                }),
            )
                .into_response()
        }
        "late" => {
            let (endpoint, token) = s.bridges.lock().unwrap()[0].clone();
            (
                StatusCode::OK,
                Json(EnsureResponse {
                    name,
                    phase: reflow_crds::api::InstancePhase::Running,
                    endpoint: Some(endpoint),
                    token: Some(BridgeToken::new(token)),
                }),
            )
                .into_response()
        }
        "stuck" => (
            StatusCode::ACCEPTED,
            Json(EnsureResponse {
                name,
                phase: reflow_crds::api::InstancePhase::Pending,
                endpoint: None,
                token: None,
            }),
        )
            .into_response(),
        // A new instance starts: 202 first, then 200 once "running".
        _ if asked_before == 0 => (
            StatusCode::ACCEPTED,
            Json(EnsureResponse {
                name,
                phase: reflow_crds::api::InstancePhase::Pending,
                endpoint: None,
                token: None,
            }),
        )
            .into_response(),
        _ => {
            let i = {
                let mut assigned = s.assigned.lock().unwrap();
                let next = assigned.len();
                *assigned.entry(req.isolation_key.clone()).or_insert(next)
            };
            let (endpoint, token) = s.bridges.lock().unwrap()[i].clone();
            (
                StatusCode::OK,
                Json(EnsureResponse {
                    name,
                    phase: reflow_crds::api::InstancePhase::Running,
                    endpoint: Some(endpoint),
                    token: Some(BridgeToken::new(token)),
                }),
            )
                .into_response()
        }
    }
}

async fn used(State(s): State<Arc<Standin>>, Json(req): Json<UsedRequest>) -> StatusCode {
    s.used.lock().unwrap().push(req);
    StatusCode::NO_CONTENT
}

async fn start_standin(s: Arc<Standin>) -> String {
    let app = axum::Router::new()
        .route("/v1/instances/ensure", post(ensure))
        .route("/v1/instances/used", post(used))
        .with_state(s);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn kubernetes_target(name: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  transport: kubernetes\n  isolation: perUser\n  prefix: {name}\n  timeouts: {{requestMs: 5000}}\n  pod:\n    transport: stdio\n    template: {{spec: {{containers: [{{name: server, image: registry.invalid/gh:1, command: [gh-mcp]}}]}}}}\n---\n{}",
        policy_yaml(&format!("all-{name}"), name, "Allow", &["*"], 0)
    )
}

const CREDENTIALS: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: t}\nstringData: {alice: ghp-alice, bob: ghp-bob}\n---\napiVersion: mcp.reflow.io/v1alpha1\nkind: Credential\nmetadata: {name: alice-gh, namespace: t}\nspec:\n  targetRef: {name: gh}\n  subject: {user: alice}\n  env: [{name: GITHUB_TOKEN, secretKeyRef: {name: keys, key: alice}}]\n---\napiVersion: mcp.reflow.io/v1alpha1\nkind: Credential\nmetadata: {name: bob-gh, namespace: t}\nspec:\n  targetRef: {name: gh}\n  subject: {user: bob}\n  env: [{name: GITHUB_TOKEN, secretKeyRef: {name: keys, key: bob}}]\n";

fn instances_config(ready_ms: u64) -> GatewayConfig {
    instances_config_with(ready_ms, 5_000)
}

fn instances_config_with(ready_ms: u64, list_wait_ms: u64) -> GatewayConfig {
    GatewayConfig {
        instances: InstancesConfig {
            ready_timeout_ms: ready_ms,
            request_timeout_ms: 1_000,
            poll_initial_ms: 50,
            poll_max_ms: 200,
            used_interval_ms: 60_000,
            list_wait_ms,
        },
        ..GatewayConfig::default()
    }
}

/// A gateway serving `targets`, through the controller stand-in at `controller` when given.
async fn gateway(targets: &[&str], ready_ms: u64, controller: Option<&str>) -> Harness {
    gateway_with(targets, instances_config(ready_ms), controller).await
}

async fn gateway_with(
    targets: &[&str],
    config: GatewayConfig,
    controller: Option<&str>,
) -> Harness {
    let dir = temp_dir();
    for t in targets {
        std::fs::write(dir.join(format!("{t}.yaml")), kubernetes_target(t)).unwrap();
    }
    std::fs::write(dir.join("credentials.yaml"), CREDENTIALS).unwrap();
    let h = match controller {
        Some(url) => start_gateway_instances(dir, config, controller_api(url)).await,
        None => start_gateway(dir, config).await,
    };
    // The folder watch compiles asynchronously: wait until the Targets are served.
    let end = Instant::now() + Duration::from_secs(10);
    while targets
        .iter()
        .any(|t| h.gw.snapshots.load().target("t", t).is_none())
    {
        assert!(Instant::now() < end, "targets never compiled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h
}

fn controller_api(url: &str) -> ControllerApi {
    ControllerApi {
        url: url.to_owned(),
        token: CONTROLLER_TOKEN.to_owned().into(),
    }
}

async fn whoami(h: &Harness, user: &str) -> Value {
    let sid = h.open("/mcp/t/gh", user).await;
    let r = h
        .rpc(
            "/mcp/t/gh",
            user,
            Some(&sid),
            "tools/call",
            json!({"name": "whoami", "arguments": {}}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let text = r.body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {}", r.body));
    serde_json::from_str(text).unwrap()
}

#[tokio::test]
async fn each_caller_reaches_their_own_instance_through_the_bridge_with_its_token() {
    let logs = logs();
    bounded(async {
        let a = BridgeProc::start(TOKEN_A, "instance-a", "ghp-alice");
        let b = BridgeProc::start(TOKEN_B, "instance-b", "ghp-bob");
        let standin = Arc::new(Standin {
            bridges: Mutex::new(vec![
                (a.url.clone(), TOKEN_A.to_owned()),
                (b.url.clone(), TOKEN_B.to_owned()),
            ]),
            ..Standin::default()
        });
        let controller = start_standin(standin.clone()).await;
        let h = gateway(&["gh"], 20_000, Some(&controller)).await;

        // Alice's first call waits through the 202 and lands on the first instance; the bridge
        // admitted the gateway, so the token was sent.
        let alice = whoami(&h, "alice").await;
        assert_eq!(alice["env"]["INSTANCE"], "instance-a", "{alice}");
        assert_eq!(alice["env"]["GITHUB_TOKEN"], "ghp-alice");
        let bob = whoami(&h, "bob").await;
        assert_eq!(bob["env"]["INSTANCE"], "instance-b", "{bob}");
        assert_eq!(bob["env"]["GITHUB_TOKEN"], "ghp-bob");
        // A new session of alice's reuses her cached instance: no further ensure.
        let again = whoami(&h, "alice").await;
        assert_eq!(again["env"]["INSTANCE"], "instance-a");

        let ensures = standin.ensures.lock().unwrap().clone();
        let key_of = |user: &str| -> Vec<String> {
            ensures
                .iter()
                .filter(|r| r.identity.as_ref().is_some_and(|i| i.user == user))
                .map(|r| r.isolation_key.clone())
                .collect()
        };
        let (ka, kb) = (key_of("alice"), key_of("bob"));
        assert_eq!(ka.len(), 2, "202 then 200, then cached: {ensures:?}");
        assert_eq!(kb.len(), 2, "{ensures:?}");
        assert_eq!(ka[0], ka[1]);
        assert_ne!(ka[0], kb[0], "different credentials, different instances");
        for r in &ensures {
            assert_eq!((r.namespace.as_str(), r.target.as_str()), ("t", "gh"));
            let fp = r.credential_fingerprint.as_deref().expect("fingerprint");
            assert_eq!(fp.len(), 64);
            assert!(
                r.isolation_key.ends_with(&fp[..16]),
                "the instance name carries the credential fingerprint: {r:?}"
            );
        }
        assert_ne!(
            ensures[0].credential_fingerprint,
            ensures[2].credential_fingerprint
        );

        // Use is reported once per instance (throttled), in the background.
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let mut names: Vec<String> = standin
                .used
                .lock()
                .unwrap()
                .iter()
                .map(|u| format!("{}/{}", u.namespace, u.name))
                .collect();
            names.sort();
            if names.len() >= 2 {
                assert_eq!(
                    names,
                    vec![
                        format!("t/gh-{}", (&ka[0]).min(&kb[0])),
                        format!("t/gh-{}", (&ka[0]).max(&kb[0]))
                    ]
                );
                break;
            }
            assert!(Instant::now() < end, "use never reported: {names:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The tokens never reach audit or the logs (which did record the instances).
        let events = h.audit.events();
        let calls: Vec<_> = events.iter().filter(|e| e.method == "tools/call").collect();
        assert_eq!(calls.len(), 3, "{events:?}");
        assert!(calls.iter().all(|e| e.outcome == "ok"));
        let audit = serde_json::to_string(&events).unwrap();
        let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(logged.contains("instance ready"), "logs were captured");
        for secret in [TOKEN_A, TOKEN_B, CONTROLLER_TOKEN, "ghp-alice", "ghp-bob"] {
            assert!(!audit.contains(secret), "{secret} in audit");
            assert!(!logged.contains(secret), "{secret} in logs");
        }
        let metrics = h
            .http
            .get(format!("{}/metrics", h.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for secret in [TOKEN_A, TOKEN_B] {
            assert!(!metrics.contains(secret), "{secret} in metrics");
        }
        drop((a, b));
    })
    .await;
}

#[tokio::test]
async fn an_instance_that_stops_answering_is_ensured_again() {
    bounded(async {
        let a = BridgeProc::start(TOKEN_A, "instance-a", "ghp-alice");
        let standin = Arc::new(Standin {
            bridges: Mutex::new(vec![(a.url.clone(), TOKEN_A.to_owned())]),
            ..Standin::default()
        });
        let controller = start_standin(standin.clone()).await;
        let h = gateway(&["gh"], 20_000, Some(&controller)).await;
        assert_eq!(whoami(&h, "alice").await["env"]["INSTANCE"], "instance-a");
        assert_eq!(standin.ensures.lock().unwrap().len(), 2);

        // The pod is replaced: the old bridge is gone, the new one listens elsewhere with
        // another token. The cached instance refuses connections, so the gateway asks again.
        drop(a);
        let replaced = BridgeProc::start(TOKEN_B, "instance-a2", "ghp-alice");
        standin.bridges.lock().unwrap()[0] = (replaced.url.clone(), TOKEN_B.to_owned());
        assert_eq!(whoami(&h, "alice").await["env"]["INSTANCE"], "instance-a2");
        assert_eq!(
            standin.ensures.lock().unwrap().len(),
            3,
            "exactly one more ensure"
        );
        let calls: Vec<String> = h
            .audit
            .events()
            .into_iter()
            .filter(|e| e.method == "tools/call")
            .map(|e| e.outcome)
            .collect();
        assert_eq!(calls, ["ok", "ok"]);
    })
    .await;
}

#[tokio::test]
async fn a_failing_slow_unknown_or_never_ready_instance_is_a_clear_error_in_bounded_time() {
    bounded(async {
        let standin = Arc::new(Standin::default());
        let controller = start_standin(standin.clone()).await;
        let h = gateway(
            &["broken", "gone", "folder", "slow", "stuck"],
            1_500,
            Some(&controller),
        )
        .await;
        for (target, reason, says, within) in [
            ("broken", "instance_refused", "HTTP 502", 2),
            ("gone", "instance_refused", "no accepted Target t/gone", 2),
            (
                "folder",
                "instance_refused",
                "HTTP 501): per-identity instances need a cluster",
                2,
            ),
            ("slow", "instance_unreachable", "no answer within", 3),
            (
                "stuck",
                "instance_not_ready",
                "did not become ready within",
                3,
            ),
        ] {
            let path = format!("/mcp/t/{target}");
            let sid = h.open(&path, "alice").await;
            let started = Instant::now();
            let r = h
                .rpc(
                    &path,
                    "alice",
                    Some(&sid),
                    "tools/call",
                    json!({"name": "whoami", "arguments": {}}),
                )
                .await;
            let took = started.elapsed();
            assert!(took < Duration::from_secs(within), "{target} took {took:?}");
            assert_eq!(r.status, 200);
            let err = &r.body["error"];
            assert_eq!(err["data"]["reason"], reason, "{target}: {}", r.body);
            let message = err["message"].as_str().unwrap();
            assert!(message.contains(says), "{target}: {message}");
            assert!(
                !message.contains("internal detail"),
                "server error bodies are not passed on: {message}"
            );
            let audited = h
                .audit
                .events()
                .into_iter()
                .find(|e| {
                    e.method == "tools/call" && e.target.as_deref() == Some(&format!("t/{target}"))
                })
                .unwrap_or_else(|| panic!("{target} not audited"));
            assert_eq!(audited.outcome, reason);
        }
        // `stuck` was polled with backoff, not hammered: at most ~1.5 s / 50-200 ms.
        let polls = standin
            .ensures
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.target == "stuck")
            .count();
        assert!((2..=15).contains(&polls), "{polls} polls");
    })
    .await;
}

/// Issue #18 item 3: an instance that never becomes ready stalled every tools/list for the
/// whole `readyTimeoutMs` (~118 s on a cluster) and then answered no tools and no hint. Now a
/// list waits `listWaitMs` for it: the aggregated list answers with the other Targets' tools,
/// the Target's own endpoint answers an error naming why, both are audited, and a later list
/// includes an instance that became ready meanwhile. Fails without the bound (the list takes
/// the 60 s ready timeout).
#[tokio::test]
async fn a_never_ready_instance_does_not_stall_lists_and_is_named() {
    bounded(async {
        let bridge = BridgeProc::start(TOKEN_A, "instance-late", "ghp-alice");
        let standin = Arc::new(Standin {
            bridges: Mutex::new(vec![(bridge.url.clone(), TOKEN_A.to_owned())]),
            ..Standin::default()
        });
        let controller = start_standin(standin.clone()).await;
        let h = gateway_with(
            &["stuck", "late"],
            instances_config_with(60_000, 1_000),
            Some(&controller),
        )
        .await;

        let sid = h.open("/mcp", "alice").await;
        let started = Instant::now();
        let tools = h.tool_names("/mcp", "alice", &sid).await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(4),
            "the aggregated list took {took:?}"
        );
        assert!(tools.is_empty(), "neither instance is ready yet: {tools:?}");
        for target in ["t/stuck", "t/late"] {
            assert!(
                h.audit.events().iter().any(|e| e.method == "tools/list"
                    && e.target.as_deref() == Some(target)
                    && e.outcome == "upstream_unavailable"),
                "{target}'s absence is audited"
            );
        }
        let observed = h.gw.observed.report("dp", &h.gw.snapshots.load());
        let stuck = observed
            .targets
            .iter()
            .find(|t| t.name == "stuck")
            .expect("observed");
        assert!(!stuck.reachable);
        assert_eq!(
            stuck.reason,
            Some(reflow_crds::observed::ObservedReason::NotReady)
        );

        // The Target's own endpoint says why instead of an empty list.
        let sid_one = h.open("/mcp/t/stuck", "alice").await;
        let started = Instant::now();
        let r = h
            .rpc(
                "/mcp/t/stuck",
                "alice",
                Some(&sid_one),
                "tools/list",
                json!({}),
            )
            .await;
        assert!(started.elapsed() < Duration::from_secs(4));
        let message = r.body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("an error: {}", r.body));
        assert!(message.contains("t/stuck is not ready"), "{message}");
        assert_eq!(r.body["error"]["code"], -32603);

        // `late` becomes ready after 3 s: a later list includes its tools.
        tokio::time::sleep(Duration::from_millis(3_200)).await;
        let tools = h.tool_names("/mcp", "alice", &sid).await;
        assert!(tools.contains(&"late_echo".to_owned()), "{tools:?}");
        assert!(!tools.iter().any(|t| t.starts_with("stuck_")), "{tools:?}");
        drop(bridge);
    })
    .await;
}

#[tokio::test]
async fn without_a_controller_a_kubernetes_target_answers_an_error_at_once() {
    bounded(async {
        let h = gateway(&["gh"], 20_000, None).await;
        let sid = h.open("/mcp/t/gh", "alice").await;
        let started = Instant::now();
        let r = h
            .rpc(
                "/mcp/t/gh",
                "alice",
                Some(&sid),
                "tools/call",
                json!({"name": "whoami", "arguments": {}}),
            )
            .await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            r.body["error"]["data"]["reason"], "instance_no_controller",
            "{}",
            r.body
        );
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("need the controller")
        );
        let audited = h
            .audit
            .events()
            .into_iter()
            .find(|e| e.method == "tools/call")
            .expect("audited");
        assert_eq!(audited.outcome, "instance_no_controller");
    })
    .await;
}

const WATCHED: &str = "test://watched-resource";

/// The fixture's report through session `sid` of alice on `/mcp/t/sub`.
async fn whoami_on(h: &Harness, sid: &str) -> Value {
    let r = h
        .rpc(
            "/mcp/t/sub",
            "alice",
            Some(sid),
            "tools/call",
            json!({"name": "whoami", "arguments": {}}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let text = r.body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {}", r.body));
    serde_json::from_str(text).unwrap()
}

async fn subscription(h: &Harness, sid: &str, method: &str) {
    let r = h
        .rpc(
            "/mcp/t/sub",
            "alice",
            Some(sid),
            method,
            json!({"uri": WATCHED}),
        )
        .await;
    assert_eq!(r.body["result"], json!({}), "{method}: {}", r.body);
}

#[tokio::test]
async fn a_shared_instance_counts_subscriptions_and_runs_at_the_most_verbose_level() {
    let logs = logs();
    bounded(async {
        let bridge =
            BridgeProc::start_with(TOKEN_A, "instance-sub", "ghp-alice", &["--conformance"]);
        let standin = Arc::new(Standin {
            bridges: Mutex::new(vec![(bridge.url.clone(), TOKEN_A.to_owned())]),
            ..Standin::default()
        });
        let controller = start_standin(standin.clone()).await;
        let dir = temp_dir();
        let target = format!(
            "{}\n---\n{}",
            kubernetes_target("sub").split("\n---\n").next().unwrap(),
            "apiVersion: mcp.reflow.io/v1alpha1\nkind: Policy\nmetadata: {name: all-sub, namespace: t}\nspec:\n  targetRef: {name: sub}\n  subjects: [{everyone: true}]\n  rules: [{kind: all, names: [\"*\"]}]\n  effect: Allow\n"
        );
        std::fs::write(dir.join("sub.yaml"), target).unwrap();
        let h =
            start_gateway_instances(dir, instances_config(20_000), controller_api(&controller))
                .await;
        let end = Instant::now() + Duration::from_secs(10);
        while h.gw.snapshots.load().target("t", "sub").is_none() {
            assert!(Instant::now() < end, "target never compiled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Three sessions of alice: one instance (her isolation key) serves them all.
        let [s1, s2, watcher] = [
            h.open("/mcp/t/sub", "alice").await,
            h.open("/mcp/t/sub", "alice").await,
            h.open("/mcp/t/sub", "alice").await,
        ];
        assert_eq!(whoami_on(&h, &watcher).await["env"]["INSTANCE"], "instance-sub");
        subscription(&h, &s1, "resources/subscribe").await;
        subscription(&h, &s2, "resources/subscribe").await;
        assert_eq!(whoami_on(&h, &watcher).await["subscriptions"], json!([WATCHED]));
        // s1 leaves: s2 still listens, so the instance keeps the subscription.
        subscription(&h, &s1, "resources/unsubscribe").await;
        assert_eq!(whoami_on(&h, &watcher).await["subscriptions"], json!([WATCHED]));
        // The last one leaving reaches the instance.
        subscription(&h, &s2, "resources/unsubscribe").await;
        assert_eq!(whoami_on(&h, &watcher).await["subscriptions"], json!([]));

        // A session that ends releases its subscription like an unsubscribe.
        subscription(&h, &s1, "resources/subscribe").await;
        assert_eq!(whoami_on(&h, &watcher).await["subscriptions"], json!([WATCHED]));
        assert_eq!(h.delete_session("/mcp/t/sub", "alice", &s1).await, 200);
        let end = Instant::now() + Duration::from_secs(20);
        while whoami_on(&h, &watcher).await["subscriptions"] != json!([]) {
            assert!(Instant::now() < end, "the ended session's subscription stayed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The instance runs at the most verbose level its sessions asked for, and back when
        // the most verbose one ends.
        let set = |sid: String, level: &'static str| {
            let h = &h;
            async move {
                let r = h
                    .rpc("/mcp/t/sub", "alice", Some(&sid), "logging/setLevel", json!({"level": level}))
                    .await;
                assert_eq!(r.body["result"], json!({}), "{}", r.body);
            }
        };
        assert_eq!(whoami_on(&h, &s2).await["logLevel"], "info");
        set(s2.clone(), "error").await;
        assert_eq!(whoami_on(&h, &watcher).await["logLevel"], "error");
        set(watcher.clone(), "debug").await;
        assert_eq!(whoami_on(&h, &s2).await["logLevel"], "debug");
        assert_eq!(h.delete_session("/mcp/t/sub", "alice", &watcher).await, 200);
        let end = Instant::now() + Duration::from_secs(20);
        while whoami_on(&h, &s2).await["logLevel"] != "error" {
            assert!(Instant::now() < end, "the instance stayed at the ended session's level");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Releasing outside a request sent the bridge token again; it is never logged.
        let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(!logged.contains(TOKEN_A));
    })
    .await;
}
