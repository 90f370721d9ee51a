//! The gateway load run behind `make bench` (DESIGN.md §7): `tools/call echo` on one
//! reflow-fixture, directly and through an in-process gateway (HS256 bearer auth, a Policy
//! allowing `echo`, JSON-lines audit to a file), side by side in the same run.
//!
//! * concurrency 1: sequential calls in alternating blocks (direct, gateway, direct, …) so both
//!   paths share the machine's noise; p50/p90/p99 each and the p50 added by the gateway.
//! * concurrency 32: a fixed time per path, 32 closed-loop workers on one keep-alive HTTP/1.1
//!   pool; requests/s each and the ratio.
//!
//! `cargo bench -p reflow-e2e --bench gateway` runs the full measurement (cargo passes `--bench`)
//! and always exits 0 on budget misses: a bench reports. Without `--bench` (`cargo test
//! --benches`) a short smoke run only checks that every call on both paths succeeds. Either way
//! a failed call, or a gateway that cannot start, exits 1.
//!
//! The fixture is a child process (loopback, killed by PID on drop); the gateway runs on its own
//! multi-thread tokio runtime on its own threads, the load client on another. A third path, a
//! bare pass-through proxy (axum + reqwest, no parsing, no auth/policy/audit) on the gateway's
//! runtime, is measured as a reference: the cost of the second HTTP exchange alone on this machine.
//! Beside it, a byte relay (`harness::byte_relay`: whole messages moved between a client
//! connection and an upstream connection of its own, no HTTP library) on the same runtime: the
//! floor any proxy on this machine stands on, so a miss can be told apart as the hop itself, the
//! HTTP stack, or the gateway's own work.
//!
//! `REFLOW_BENCH_PATHS=direct,gateway` (comma-separated path names) measures only those paths,
//! for profiling one of them; `direct` must be among them for figures to print.
//! A fourth path goes through the same gateway to a STDIO Target (the same fixture binary with
//! `--stdio`, one warm shared child): the cost of a STDIO hop next to the HTTP one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reflow_crds::SealingKey;
use reflow_dataplane::app::{App, AppConfig};
use reflow_dataplane::audit::{AuditSink, JsonLinesSink};
use reflow_dataplane::auth::{AuthConfig, Authenticator, mint_dev_token};
use reflow_dataplane::http::{LimitedListener, listener, percore};
use reflow_dataplane::mcp::GatewayConfig;
use reflow_dataplane::session::MemorySessionStore;
use reflow_dataplane::source::{self, SnapshotStore};
use reflow_e2e::harness::load::{self, McpSession, Percentiles, Tally, Throughput};
use reflow_e2e::harness::{FixtureProcess, byte_relay};
use serde_json::json;
use tokio::sync::oneshot;

/// The allocator profile: `--features mimalloc` puts the whole bench process (gateway included)
/// on mimalloc; `make bench` runs the gateway paths once with it, beside the system allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Which allocator this bench process runs on (printed with the figures).
const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system (glibc)"
};

/// DESIGN.md §7 budgets.
const BUDGET_ADDED_P50_US: f64 = 100.0;
const BUDGET_THROUGHPUT_RATIO: f64 = 0.50;

const ISSUER: &str = "reflow-bench";
const AUDIENCE: &str = "reflow";
const NAMESPACE: &str = "bench";
const TARGET: &str = "fx";
/// The STDIO Target (same fixture binary, `--stdio`, same server name so echo answers alike).
const STDIO_TARGET: &str = "fxstdio";
const ECHO_TEXT: &str = "bench";

/// The gateway paths, each one profile of the same in-process gateway (same App, same Target,
/// same auth, policy and audit), judged against the budgets side by side.
const GATEWAY_PROFILES: [(&str, &str); 3] = [
    (
        "gateway",
        "threadPerCore off: one multi-thread runtime, served by listener::serve",
    ),
    (
        "gw-percore",
        "thread-per-core: one current-thread runtime, SO_REUSEPORT listener and upstream pool per CPU",
    ),
    (
        "gw-percore-h1",
        "the binary's default: thread-per-core, upstream POSTs on hyper's HTTP/1 client directly",
    ),
];

struct Plan {
    name: &'static str,
    /// Whether the figures are judged against the budgets (not for the smoke run).
    judged: bool,
    /// Sequential calls per path before measuring (connections, caches, upstream session).
    warmup_calls: usize,
    /// Sequential calls measured per path.
    latency_calls: usize,
    /// Calls per block; blocks alternate between the paths.
    block: usize,
    workers: usize,
    /// Closed-loop time per path before measuring (fills the pools).
    throughput_warmup: Duration,
    /// Closed-loop time measured per path.
    throughput_time: Duration,
}

const FULL: Plan = Plan {
    name: "full",
    judged: true,
    warmup_calls: 300,
    latency_calls: 2_000,
    block: 100,
    workers: 32,
    throughput_warmup: Duration::from_millis(500),
    throughput_time: Duration::from_secs(5),
};

const SMOKE: Plan = Plan {
    name: "smoke (cargo test; run `cargo bench -p reflow-e2e --bench gateway` for figures)",
    judged: false,
    warmup_calls: 5,
    latency_calls: 20,
    block: 10,
    workers: 32,
    throughput_warmup: Duration::ZERO,
    throughput_time: Duration::from_millis(500),
};

/// `REFLOW_BENCH_CALLS=N`: N sequential calls per path and no concurrent phase, for counting
/// instructions under `valgrind --tool=callgrind` (two runs with different N, divided by the
/// difference, give the instructions of one call; see the README's performance section).
fn counting_plan() -> Option<Plan> {
    let n: usize = std::env::var("REFLOW_BENCH_CALLS").ok()?.parse().ok()?;
    Some(Plan {
        name: "counting (REFLOW_BENCH_CALLS)",
        judged: false,
        warmup_calls: 20,
        latency_calls: n,
        block: n.max(1),
        workers: 32,
        throughput_warmup: Duration::ZERO,
        throughput_time: Duration::ZERO,
    })
}

type BenchResult<T> = Result<T, String>;

fn main() -> ExitCode {
    keep_loopback_off_proxies();
    let counting = counting_plan();
    let plan = match &counting {
        Some(p) => p,
        None if std::env::args().any(|a| a == "--bench") => &FULL,
        None => &SMOKE,
    };
    let started = Instant::now();
    let outcome = run(plan);
    match outcome {
        Ok(report) => {
            report.print(plan, started.elapsed());
            if report.failures() == 0 {
                ExitCode::SUCCESS
            } else {
                eprintln!("gateway bench: some calls failed (see above)");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("gateway bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The gateway's upstream client honours proxy variables; loopback traffic must never leave.
fn keep_loopback_off_proxies() {
    let proxied = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if proxied {
        // SAFETY: first thing in main, before any other thread exists.
        unsafe {
            std::env::set_var("NO_PROXY", "127.0.0.1,localhost");
            std::env::set_var("no_proxy", "127.0.0.1,localhost");
        }
    }
}

fn run(plan: &Plan) -> BenchResult<Report> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The fixture cargo built for this bench's profile (release under `cargo bench`).
    let bin = std::env::var_os("REFLOW_FIXTURE_BIN")
        .map_or_else(|| reflow_e2e::fixture_bin!(), PathBuf::from);
    let fixture = FixtureProcess::spawn_with(&bin, ["--listen", "127.0.0.1:0", "--name", TARGET])
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;

    let dir = std::env::temp_dir().join(format!(
        "reflow-bench-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let _cleanup = RemoveOnDrop(dir.clone());
    write_manifests(&dir, &fixture.mcp_url(), &bin)?;

    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let auth: AuthConfig = serde_json::from_value(json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "hs256Secret": secret}]
    }))
    .map_err(|e| format!("auth config: {e}"))?;
    let token = {
        let secret = auth.issuers[0]
            .hs256_secret
            .as_ref()
            .ok_or("auth config lost its secret")?;
        mint_dev_token(
            secret,
            ISSUER,
            AUDIENCE,
            "bench-user",
            &["bench".to_owned()],
            &[],
            Duration::from_secs(3600),
        )
        .map_err(|e| format!("minting a token: {e}"))?
    };

    let gw = GatewayThread::start(
        dir.join("manifests"),
        auth,
        dir.join("audit.jsonl"),
        fixture.mcp_url(),
        fixture.addr(),
    )?;

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("load-client")
        .build()
        .map_err(|e| format!("client runtime: {e}"))?;
    let paths = [
        Path {
            name: "direct",
            url: fixture.mcp_url(),
            token: None,
            tool: "echo".to_owned(),
        },
        Path {
            name: "pass-through",
            url: format!("http://{}/mcp", gw.passthrough),
            token: None,
            tool: "echo".to_owned(),
        },
        Path {
            name: "byte-relay",
            url: format!("http://{}/mcp", gw.relay),
            token: None,
            tool: "echo".to_owned(),
        },
        Path {
            name: "gateway",
            url: format!("http://{}/mcp", gw.addr),
            token: Some(token.clone()),
            tool: format!("{TARGET}_echo"),
        },
        Path {
            name: "gw-percore",
            url: format!("http://{}/mcp", gw.percore),
            token: Some(token.clone()),
            tool: format!("{TARGET}_echo"),
        },
        Path {
            name: "gw-percore-h1",
            url: format!("http://{}/mcp", gw.percore_h1),
            token: Some(token.clone()),
            tool: format!("{TARGET}_echo"),
        },
        Path {
            name: "gateway-stdio",
            url: format!("http://{}/mcp", gw.addr),
            token: Some(token),
            tool: format!("{STDIO_TARGET}_echo"),
        },
    ];
    // `REFLOW_BENCH_PATHS=direct,gateway` measures only those paths (to profile one of them).
    let only = std::env::var("REFLOW_BENCH_PATHS").ok();
    let paths: Vec<Path> = paths
        .into_iter()
        .filter(|p| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|n| n == p.name))
        })
        .collect();
    let measured = client_rt.block_on(measure(plan, &paths));
    client_rt.shutdown_timeout(Duration::from_secs(1));
    let measured = measured?;

    let audit_dropped = gw.audit.dropped();
    gw.stop();
    // The writer has flushed every line it received once its runtime is gone.
    let audit_lines = std::fs::read_to_string(dir.join("audit.jsonl"))
        .map(|s| s.lines().count() as u64)
        .unwrap_or(0);
    drop(fixture);
    Ok(Report {
        measured,
        audit_lines,
        audit_dropped,
        fixture: bin,
    })
}

/// Manifests for two Targets (the HTTP fixture, and the fixture binary as a STDIO server) and
/// Policies allowing `echo` on both to everyone.
fn write_manifests(
    dir: &std::path::Path,
    fixture_url: &str,
    fixture_bin: &std::path::Path,
) -> BenchResult<()> {
    let command = json!(fixture_bin.to_string_lossy());
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).map_err(|e| format!("{}: {e}", manifests.display()))?;
    let yaml = format!(
        "apiVersion: mcp.reflow.io/v1alpha1
kind: Target
metadata: {{name: {TARGET}, namespace: {NAMESPACE}}}
spec:
  transport: streamableHttp
  url: {fixture_url}
  prefix: {TARGET}
  timeouts: {{requestMs: 10000}}
---
apiVersion: mcp.reflow.io/v1alpha1
kind: Policy
metadata: {{name: allow-echo, namespace: {NAMESPACE}}}
spec:
  targetRef: {{name: {TARGET}}}
  subjects: [{{everyone: true}}]
  rules: [{{kind: tool, names: [\"echo\"]}}]
  effect: Allow
  priority: 0
---
apiVersion: mcp.reflow.io/v1alpha1
kind: Target
metadata: {{name: {STDIO_TARGET}, namespace: {NAMESPACE}}}
spec:
  transport: stdio
  command: {command}
  args: [\"--stdio\", \"--name\", \"{TARGET}\"]
  prefix: {STDIO_TARGET}
  timeouts: {{requestMs: 10000}}
---
apiVersion: mcp.reflow.io/v1alpha1
kind: Policy
metadata: {{name: allow-echo-stdio, namespace: {NAMESPACE}}}
spec:
  targetRef: {{name: {STDIO_TARGET}}}
  subjects: [{{everyone: true}}]
  rules: [{{kind: tool, names: [\"echo\"]}}]
  effect: Allow
  priority: 0
"
    );
    let path = manifests.join("bench.yaml");
    std::fs::write(&path, yaml).map_err(|e| format!("{}: {e}", path.display()))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The gateway on its own tokio runtime and threads, wired like `reflow-dataplane` but with the
/// JWT authenticator.
struct GatewayThread {
    addr: SocketAddr,
    percore: SocketAddr,
    percore_h1: SocketAddr,
    passthrough: SocketAddr,
    relay: SocketAddr,
    audit: Arc<JsonLinesSink>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Where the gateway and the two reference proxies listen.
struct Listening {
    gateway: SocketAddr,
    /// The same gateway served thread-per-core (`http::percore`).
    percore: SocketAddr,
    /// ... and with hyper's HTTP/1 client directly to the upstream (`upstream::h1`).
    percore_h1: SocketAddr,
    passthrough: SocketAddr,
    relay: SocketAddr,
    audit: Arc<JsonLinesSink>,
}

type Started = BenchResult<Listening>;

impl GatewayThread {
    fn start(
        manifests: PathBuf,
        auth: AuthConfig,
        audit_file: PathBuf,
        upstream: String,
        upstream_addr: SocketAddr,
    ) -> BenchResult<Self> {
        let (ready_tx, ready_rx) = std_mpsc::channel::<Started>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("gateway-main".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("gateway")
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("gateway runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(serve_gateway(
                    manifests,
                    auth,
                    audit_file,
                    (upstream, upstream_addr),
                    ready_tx,
                    stop_rx,
                ));
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| format!("gateway thread: {e}"))?;
        match ready_rx.recv_timeout(Duration::from_secs(15)) {
            Ok(Ok(l)) => Ok(Self {
                addr: l.gateway,
                percore: l.percore,
                percore_h1: l.percore_h1,
                passthrough: l.passthrough,
                relay: l.relay,
                audit: l.audit,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(e) => {
                // Its thread is left to finish on its own; the process is about to exit.
                drop(stop_tx);
                Err(format!("gateway did not start: {e}"))
            }
        }
    }

    fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GatewayThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn serve_gateway(
    manifests: PathBuf,
    auth: AuthConfig,
    audit_file: PathBuf,
    (upstream, upstream_addr): (String, SocketAddr),
    ready: std_mpsc::Sender<Started>,
    stop: oneshot::Receiver<()>,
) {
    let (stop_cores_tx, stop_cores) = tokio::sync::watch::channel(false);
    let built = async {
        let key = SealingKey::from_base64(&SealingKey::generate_base64())
            .map_err(|e| format!("sealing key: {e}"))?;
        let snapshots = SnapshotStore::new();
        let snapshot =
            source::compile_dir(&manifests, &key).map_err(|e| format!("manifests: {e}"))?;
        if snapshot.target(NAMESPACE, TARGET).is_none() {
            return Err(format!(
                "the manifests in {} compiled to no target",
                manifests.display()
            ));
        }
        snapshots.publish(snapshot);
        let authenticator = Authenticator::new(auth).map_err(|e| format!("auth: {e}"))?;
        let file = std::fs::File::create(&audit_file)
            .map_err(|e| format!("{}: {e}", audit_file.display()))?;
        let audit = Arc::new(JsonLinesSink::spawn(file, 4096));
        let config = GatewayConfig::default();
        let config_http = config.http.clone();
        let sessions = MemorySessionStore::new(Duration::from_secs(config.session_idle_seconds));
        let gw = App::build(AppConfig::new(
            config,
            snapshots,
            sessions,
            Arc::new(authenticator),
            audit.clone() as Arc<dyn AuditSink>,
            key,
        ))
        .map_err(|e| format!("gateway: {e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("gateway listen: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let options = listener::ServeOptions {
            timeouts: config_http.timeouts.clone(),
            max_connections: config_http.max_connections,
            metrics: Some(gw.gateway().metrics.clone()),
        };
        let start_cores = |direct_upstream| {
            percore::serve(
                (SocketAddr::from(([127, 0, 0, 1], 0)), None),
                percore::Cores::all(direct_upstream),
                gw.router(),
                options.clone(),
                stop_cores.clone(),
            )
            .map_err(|e| format!("per-core listen: {e}"))
        };
        let percore = start_cores(false)?;
        let percore_h1 = start_cores(true)?;
        let bare = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("pass-through listen: {e}"))?;
        let bare_addr = bare.local_addr().map_err(|e| e.to_string())?;
        let proxy = Passthrough {
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(90))
                .build()
                .map_err(|e| format!("pass-through client: {e}"))?,
            upstream,
        };
        let bare_app = axum::Router::new()
            .route("/mcp", axum::routing::post(pass_through))
            .with_state(proxy);
        tokio::spawn(async move {
            let _ = axum::serve(bare, bare_app).await;
        });
        let relay = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("byte relay listen: {e}"))?;
        let relay_addr = relay.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(byte_relay::serve(relay, upstream_addr));
        let listening = Listening {
            gateway: addr,
            percore: percore.addr,
            percore_h1: percore_h1.addr,
            passthrough: bare_addr,
            relay: relay_addr,
            audit,
        };
        Ok((listener, listening, gw, options, [percore, percore_h1]))
    }
    .await;
    let (listener, listening, gw, options, cores) = match built {
        Ok(parts) => parts,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(listening));
    // Served exactly like the reflow-dataplane binary does (its connection loop and timers).
    let listener = LimitedListener::new(listener, options.max_connections);
    let stopped = async move {
        let _ = stop.await;
    };
    listener::serve(listener, gw.router(), options, stopped).await;
    let _ = stop_cores_tx.send(true);
    // The serving threads block while draining: off this runtime's worker.
    let _ = tokio::task::spawn_blocking(move || cores.map(percore::PerCore::join)).await;
}

/// The reference proxy: forwards the body and the MCP headers, returns the upstream's bytes.
#[derive(Clone)]
struct Passthrough {
    http: reqwest::Client,
    upstream: String,
}

const FORWARDED: [&str; 4] = [
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
];

async fn pass_through(
    axum::extract::State(p): axum::extract::State<Passthrough>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut req = p.http.post(&p.upstream).body(body);
    for name in FORWARDED {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v.clone());
        }
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = resp.status();
    let mut out = axum::http::HeaderMap::new();
    for name in ["content-type", "mcp-session-id"] {
        if let Some(v) = resp.headers().get(name) {
            out.insert(name, v.clone());
        }
    }
    match resp.bytes().await {
        Ok(bytes) => (status, out, bytes).into_response(),
        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// One way of reaching the fixture's `echo`.
struct Path {
    name: &'static str,
    url: String,
    token: Option<String>,
    tool: String,
}

struct PathFigures {
    name: &'static str,
    /// Every successful call on this path, warm-ups included (the gateway audits each).
    calls: u64,
    latency: Percentiles,
    /// Failures at concurrency 1 (warm-up included).
    latency_tally: Tally,
    throughput: Throughput,
}

async fn measure(plan: &Plan, paths: &[Path]) -> BenchResult<Vec<PathFigures>> {
    let client = load::load_client().map_err(|e| e.to_string())?;
    let expect = format!("[{TARGET}] {ECHO_TEXT}");
    let mut calls = Vec::with_capacity(paths.len());
    for p in paths {
        let session = McpSession::open(&client, &p.url, p.token.as_deref())
            .await
            .map_err(|e| format!("{} session: {e}", p.name))?;
        // The tool must be listed (for the gateway: the policy allows it) before anything is timed.
        let listed = session
            .request("tools/list", json!({}))
            .await
            .map_err(|e| format!("{} tools/list: {e}", p.name))?;
        let listed_names: Vec<&str> = listed
            .pointer("/result/tools")
            .and_then(|t| t.as_array())
            .map(|a| a.iter().filter_map(|t| t["name"].as_str()).collect())
            .unwrap_or_default();
        if !listed_names.contains(&p.tool.as_str()) {
            return Err(format!("{} does not list {}: {listed}", p.name, p.tool));
        }
        calls.push(session.tool_call(&p.tool, json!({"text": ECHO_TEXT}), &expect));
    }
    let n = calls.len();
    let mut figures: Vec<PathFigures> = paths
        .iter()
        .map(|p| PathFigures {
            name: p.name,
            calls: 0,
            latency: Percentiles::default(),
            latency_tally: Tally::default(),
            throughput: Throughput {
                tally: Tally::default(),
                elapsed: Duration::ZERO,
            },
        })
        .collect();
    let absorb = |f: &mut PathFigures, t: Tally| {
        f.calls += t.ok;
        f.latency_tally.failed += t.failed;
        if f.latency_tally.first_error.is_none() {
            f.latency_tally.first_error = t.first_error;
        }
    };

    // Warm-up: connections, the token cache, the gateway's upstream session.
    for (f, call) in figures.iter_mut().zip(&calls) {
        absorb(
            f,
            load::sequential(call, plan.warmup_calls, &mut Vec::new()).await,
        );
    }

    // Concurrency 1, alternating blocks so every path sees the same noise.
    let mut samples: Vec<Vec<Duration>> = (0..n)
        .map(|_| Vec::with_capacity(plan.latency_calls))
        .collect();
    let mut done = 0;
    while done < plan.latency_calls {
        let k = plan.block.min(plan.latency_calls - done);
        for ((f, call), s) in figures.iter_mut().zip(&calls).zip(samples.iter_mut()) {
            absorb(f, load::sequential(call, k, s).await);
        }
        done += k;
    }
    for (f, s) in figures.iter_mut().zip(&samples) {
        f.latency = Percentiles::of(s);
    }

    // Concurrency N: one fixed window per path, each preceded by its own warm-up.
    for (f, call) in figures.iter_mut().zip(&calls) {
        if plan.throughput_time.is_zero() {
            continue;
        }
        if !plan.throughput_warmup.is_zero() {
            let w = load::closed_loop(call, plan.workers, plan.throughput_warmup).await;
            if w.tally.failed > 0 {
                return Err(format!(
                    "{}: {} calls failed while warming up at c={}: {}",
                    f.name,
                    w.tally.failed,
                    plan.workers,
                    w.tally.first_error.unwrap_or_default()
                ));
            }
            f.calls += w.tally.ok;
        }
        let r = load::closed_loop(call, plan.workers, plan.throughput_time).await;
        f.calls += r.tally.ok;
        f.throughput = r;
    }
    Ok(figures)
}

#[path = "gateway/report.rs"]
mod report;
use report::Report;
