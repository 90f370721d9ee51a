//! `make soak`: many concurrent MCP sessions held by the real `reflow-dataplane` binary in front
//! of a fixture upstream on loopback, a share of them active, for minutes. Prints memory per idle
//! session, RSS over time, latency of the active ones and errors, and exits non-zero when a
//! budget is missed (DESIGN.md §7: ≤ 16 KiB per idle session, 10,000 sessions per dataplane).
//!
//! Settings (environment): `SOAK_SESSIONS` (10000), `SOAK_ACTIVE` (1000), `SOAK_SECS` (600),
//! `SOAK_INTERVAL_MS` (1000: each active session calls a tool once per interval),
//! `SOAK_SAMPLE_SECS` (30), `SOAK_USERS` (100), `SOAK_THREAD_PER_CORE` (0: the gateway serves
//! on one multi-thread runtime instead of its default thread-per-core with `directUpstream`). Binaries: `REFLOW_DATAPLANE_BIN`,
//! `REFLOW_FIXTURE_BIN` (else the ones in the target folder).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reflow_e2e::harness::gateway::target_yaml;
use reflow_e2e::harness::load::{McpSession, Percentiles, load_client};
use reflow_e2e::harness::{DataplaneProcess, FixtureProcess, PolicyDoc, fixture_bin};
use secrecy::SecretString;
use serde_json::json;

const DEV_SECRET: &str = "reflow-soak-dev-secret-0123456789abcdef";
const BUDGET_PER_IDLE_SESSION: f64 = 16.0 * 1024.0;

struct Settings {
    sessions: usize,
    active: usize,
    duration: Duration,
    interval: Duration,
    sample: Duration,
    users: usize,
}

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Settings {
    fn from_env() -> Self {
        let sessions = env_num("SOAK_SESSIONS", 10_000).max(10) as usize;
        Self {
            sessions,
            active: (env_num("SOAK_ACTIVE", 1_000) as usize).min(sessions),
            duration: Duration::from_secs(env_num("SOAK_SECS", 600)),
            interval: Duration::from_millis(env_num("SOAK_INTERVAL_MS", 1_000).max(1)),
            sample: Duration::from_secs(env_num("SOAK_SAMPLE_SECS", 30).max(1)),
            users: env_num("SOAK_USERS", 100).max(1) as usize,
        }
    }
}

/// Resident set size of `pid` in bytes (`VmRSS` of /proc/PID/status).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Open files: the soft limit raised to the hard one (the gateway child inherits it).
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

fn token(user: &str) -> String {
    reflow_dataplane::auth::mint_dev_token(
        &SecretString::from(DEV_SECRET),
        "reflow-dev",
        "reflow",
        user,
        &[],
        &[],
        Duration::from_secs(24 * 3600),
    )
    .expect("minting a dev token")
}

/// The fixture and the gateway in front of it, limits sized for the run.
fn start(s: &Settings, dir: &std::path::Path) -> (FixtureProcess, DataplaneProcess) {
    let bin = fixture_bin().expect("reflow-fixture binary");
    let fixture = FixtureProcess::spawn_with(&bin, ["--name", "one"]).expect("fixture starts");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests folder");
    let docs = [
        target_yaml("one", "streamableHttp", &fixture.mcp_url()),
        PolicyDoc::allow("one-all", "one")
            .everyone()
            .rule("all", &["*"])
            .to_yaml(),
    ];
    std::fs::write(manifests.join("all.yaml"), docs.join("---\n")).expect("manifests");
    let per_user = s.sessions.div_ceil(s.users) + 10;
    // The gateway's default serving (thread-per-core with hyper to the upstream), or
    // `SOAK_THREAD_PER_CORE=0`: one multi-thread runtime and reqwest's pool.
    let per_core = match std::env::var("SOAK_THREAD_PER_CORE").is_ok_and(|v| v == "0") {
        true => ", threadPerCore: false, directUpstream: false",
        false => "",
    };
    let config = format!(
        "dev: {{hs256Secret: {DEV_SECRET}}}\naudit: {{sink: file, path: {}}}\ngateway:\n  sessionIdleSeconds: {}\n  limits: {{sessionsPerUser: {per_user}, sessionsTotal: {}, inFlightPerUser: 256}}\n  http: {{maxConnections: {}, maxConcurrentRequests: 0{per_core}}}\n",
        dir.join("audit.jsonl").display(),
        s.duration.as_secs() * 2 + 600,
        s.sessions + 100,
        s.active * 2 + 1_000,
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).expect("config");
    let gw = DataplaneProcess::spawn(&manifests, &path, &[]).expect("gateway starts");
    (fixture, gw)
}

/// Opens `n` sessions, 64 at a time, spread over the users.
async fn open_sessions(
    client: &reqwest::Client,
    url: &str,
    tokens: &[String],
    first: usize,
    n: usize,
) -> Vec<McpSession> {
    use futures::StreamExt;
    futures::stream::iter(first..first + n)
        .map(|i| {
            let token = tokens[i % tokens.len()].clone();
            async move {
                McpSession::open(client, url, Some(&token))
                    .await
                    .unwrap_or_else(|e| panic!("session {i}: {e}"))
            }
        })
        .buffered(64)
        .collect()
        .await
}

struct Active {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

/// Each active session calls `echo` once per interval (phase-shifted) until the deadline.
async fn run_active(sessions: &[McpSession], s: &Settings, done: Arc<AtomicU64>) -> Active {
    let deadline = Instant::now() + s.duration;
    let interval = s.interval;
    let n = sessions.len().max(1) as u32;
    let tasks: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(i, session)| {
            let call = session.tool_call("one_echo", json!({"text": "soak"}), "[one] soak");
            let done = done.clone();
            let offset = interval * i as u32 / n;
            tokio::spawn(async move {
                let mut out = Active {
                    latencies: Vec::new(),
                    errors: 0,
                    first_error: None,
                };
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while Instant::now() < deadline {
                    tick.tick().await;
                    let t0 = Instant::now();
                    let r = call.once().await;
                    out.latencies.push(t0.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = r {
                        out.errors += 1;
                        out.first_error.get_or_insert(e);
                    }
                }
                out
            })
        })
        .collect();
    let mut all = Active {
        latencies: Vec::new(),
        errors: 0,
        first_error: None,
    };
    for t in tasks {
        let part = t.await.expect("active task");
        all.latencies.extend(part.latencies);
        all.errors += part.errors;
        if all.first_error.is_none() {
            all.first_error = part.first_error;
        }
    }
    all
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() -> ExitCode {
    let s = Settings::from_env();
    let nofile = raise_nofile();
    let dir = std::env::temp_dir().join(format!("reflow-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("work folder");
    let (_fixture, gw) = start(&s, &dir);
    let pid = gw.pid();
    let url = gw.mcp_url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(soak(&s, pid, &url, nofile));
    let _ = std::fs::remove_dir_all(&dir);
    code
}

async fn soak(s: &Settings, pid: u32, url: &str, nofile: u64) -> ExitCode {
    // Idle keep-alive connections are let go before the gateway's own idle timer (30 s) closes
    // them, as a well-configured client does: otherwise a request can race the server's close.
    let _ = load_client();
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(2048)
        .pool_idle_timeout(Duration::from_secs(20))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("load client");
    let tokens: Vec<String> = (0..s.users)
        .map(|u| token(&format!("soak-user-{u}")))
        .collect();
    println!(
        "soak: {} sessions ({} active, one call each per {:?}) for {:?}; gateway pid {pid}; nofile {nofile}",
        s.sessions, s.active, s.interval, s.duration
    );
    // Warm-up: the active sessions first, each called a few times, so pools, caches and the
    // upstream links exist before the idle sessions are measured.
    let started = Instant::now();
    let active = open_sessions(&client, url, &tokens, 0, s.active).await;
    for session in active.iter().take(200) {
        let call = session.tool_call("one_echo", json!({"text": "soak"}), "[one] soak");
        call.once().await.expect("warm-up call");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let base = rss(pid);
    let idle_n = s.sessions - s.active;
    let idle = open_sessions(&client, url, &tokens, s.active, idle_n).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let with_idle = rss(pid);
    let per_idle = with_idle.saturating_sub(base) as f64 / idle_n.max(1) as f64;
    println!(
        "opened {} sessions in {:.1?}: RSS {:.1} MiB before the {idle_n} idle ones, {:.1} MiB after: {:.0} B per idle session",
        s.sessions,
        started.elapsed(),
        mib(base),
        mib(with_idle),
        per_idle
    );
    let done = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, sample, end) = (done.clone(), s.sample, Instant::now() + s.duration);
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut samples = Vec::new();
            while Instant::now() < end {
                tokio::time::sleep(sample.min(end.saturating_duration_since(Instant::now()))).await;
                let r = rss(pid);
                let calls = done.load(Ordering::Relaxed);
                println!(
                    "  t={:>4}s  RSS {:>7.1} MiB  calls {calls}",
                    t0.elapsed().as_secs(),
                    mib(r)
                );
                samples.push((t0.elapsed(), r));
            }
            samples
        })
    };
    let result = run_active(&active, s, done).await;
    let samples = sampler.await.expect("sampler");
    // The idle sessions were held all along: a sample of them still answers.
    let mut idle_lost = 0;
    for session in idle.iter().step_by((idle_n / 200).max(1)) {
        if session.request("ping", json!({})).await.is_err() {
            idle_lost += 1;
        }
    }
    report(s, &result, &samples, base, with_idle, per_idle, idle_lost)
}

fn report(
    s: &Settings,
    result: &Active,
    samples: &[(Duration, u64)],
    base: u64,
    with_idle: u64,
    per_idle: f64,
    idle_lost: usize,
) -> ExitCode {
    let p = Percentiles::of(&result.latencies);
    // Flat after warm-up: the first quarter of the run warms up; growth is the last sample
    // over the first one after it.
    let warm = samples.get(samples.len() / 4).map_or(0, |x| x.1);
    let last = samples.last().map_or(0, |x| x.1);
    let max_after = samples[samples.len() / 4..]
        .iter()
        .map(|x| x.1)
        .max()
        .unwrap_or(0);
    let growth = if warm > 0 {
        (last as f64 / warm as f64 - 1.0) * 100.0
    } else {
        0.0
    };
    let rate = result.latencies.len() as f64 / s.duration.as_secs_f64().max(1e-9);
    println!("\n| figure | value |\n| --- | --- |");
    println!(
        "| sessions held (idle + active) | {} ({} + {}) |",
        s.sessions,
        s.sessions - s.active,
        s.active
    );
    println!("| duration | {} s |", s.duration.as_secs());
    println!(
        "| calls made by the active sessions | {} ({rate:.0}/s) |",
        result.latencies.len()
    );
    println!("| errors | {} |", result.errors);
    println!("| idle sessions lost (sampled by ping at the end) | {idle_lost} |");
    println!(
        "| latency of active calls p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        ms(p.p50),
        ms(p.p99),
        ms(p.max)
    );
    println!(
        "| RSS before idle sessions / with all sessions | {:.1} / {:.1} MiB |",
        mib(base),
        mib(with_idle)
    );
    println!(
        "| memory per idle session | {:.1} KiB (budget 16 KiB) |",
        per_idle / 1024.0
    );
    println!(
        "| RSS after warm-up / at the end / max after warm-up | {:.1} / {:.1} / {:.1} MiB ({growth:+.1} %) |",
        mib(warm),
        mib(last),
        mib(max_after)
    );
    if let Some(e) = &result.first_error {
        println!("first error: {e}");
    }
    let ok = result.errors == 0 && idle_lost == 0 && per_idle <= BUDGET_PER_IDLE_SESSION;
    println!("\nsoak: {}", if ok { "PASS" } else { "FAIL" });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
