//! `make chaos`: a controller-fed `reflow-dataplane` with sessions and audit in Postgres, in
//! front of a fixture upstream, under steady load, while each dependency is killed and
//! restarted in turn: the upstream (SIGKILL, restarted on the same port), Postgres (fast stop,
//! started again) and the controller (SIGKILL, restarted on the same port). Prints the failed
//! requests per fault, the time to recover, and the audit events lost: every call answered with
//! a JSON-RPC reply carries its own trace id, and each must be in `reflow_audit_events` once
//! (spilled while Postgres was away and replayed after).
//!
//! Settings (environment): `CHAOS_WORKERS` (8), `CHAOS_PAUSE_MS` (10, between one worker's
//! calls), `CHAOS_DOWN_SECS` (5, how long each dependency stays down), `CHAOS_SETTLE_SECS` (5).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reflow_e2e::harness::gateway::target_yaml;
use reflow_e2e::harness::process::{ManagedChild, SpawnOptions};
use reflow_e2e::harness::{
    FixtureProcess, PolicyDoc, TestPostgres, controller_bin, dataplane_bin, fixture_bin,
};
use secrecy::SecretString;
use serde_json::{Value, json};

const DEV_SECRET: &str = "reflow-chaos-dev-secret-0123456789abcdef";
const CONTROLLER_TOKEN: &str = "reflow-chaos-controller-token-0123456789";
const DATAPLANE_NAME: &str = "chaos-dp";

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child printing `listening on http://ADDR` first: the child and ADDR.
fn spawn_listening(what: &str, cmd: &mut Command) -> (ManagedChild, String) {
    let opts = SpawnOptions {
        stdout_lines: true,
        ..SpawnOptions::default()
    };
    let child = ManagedChild::spawn(what, cmd, opts).unwrap_or_else(|e| panic!("{what}: {e}"));
    let line = child
        .next_line(Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{what}: unexpected first line {line:?}"))
        .to_owned();
    (child, addr)
}

fn controller(dir: &Path, listen: &str) -> (ManagedChild, String) {
    let mut cmd = Command::new(controller_bin().expect("reflow-controller binary"));
    cmd.arg("--manifests")
        .arg(dir.join("manifests"))
        .args(["--listen", listen])
        .arg("--token-file")
        .arg(dir.join("token"))
        .arg("--sealing-key-file")
        .arg(dir.join("key"))
        .env("RUST_LOG", "warn");
    spawn_listening("reflow-controller", &mut cmd)
}

fn dataplane(dir: &Path, controller: &str, db_url: &str, key: &str) -> (ManagedChild, String) {
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "dev: {{hs256Secret: {DEV_SECRET}}}\ndatabase: {{}}\naudit: {{spillDir: {}}}\n",
            dir.join("spill").display()
        ),
    )
    .expect("config");
    let mut cmd = Command::new(dataplane_bin().expect("reflow-dataplane binary"));
    cmd.args(["--controller", &format!("http://{controller}")])
        .arg("--controller-token-file")
        .arg(dir.join("token"))
        .args(["--dataplane-name", DATAPLANE_NAME])
        .arg("--snapshot-cache")
        .arg(dir.join("snapshot-cache"))
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .env("REFLOW_SEALING_KEY", key)
        .env("REFLOW_DATABASE_URL", db_url)
        .env("RUST_LOG", "warn");
    spawn_listening("reflow-dataplane", &mut cmd)
}

/// One call's fate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Ok,
    /// A JSON-RPC error reply (the upstream was away): answered, so audited.
    RpcError,
    /// Anything else: an HTTP error status or no answer.
    Failed,
}

struct Record {
    at: Instant,
    fate: Fate,
    trace: String,
}

struct Load {
    url: String,
    token: String,
    records: Mutex<Vec<Record>>,
    stop: AtomicBool,
    seq: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

impl Load {
    async fn post(
        &self,
        http: &reqwest::Client,
        sid: Option<&str>,
        trace: &str,
        body: &Value,
    ) -> Result<(u16, Option<String>, Value), String> {
        let mut req = http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
            .json(body);
        if let Some(s) = sid {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-06-18");
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let sid = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = resp.text().await.map_err(|e| e.to_string())?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, sid, value))
    }

    async fn open(&self, http: &reqwest::Client) -> Option<String> {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "reflow-chaos", "version": "1"}}});
        let trace = format!(
            "{:032x}",
            u128::from(self.seq.fetch_add(1, Ordering::Relaxed)) | 1 << 127
        );
        match self.post(http, None, &trace, &init).await {
            Ok((200, Some(sid), _)) => Some(sid),
            _ => None,
        }
    }

    /// One worker: a session, calls back to back (re-opening the session when it is refused).
    async fn worker(self: Arc<Self>, pause: Duration) {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let mut sid = None;
        while !self.stop.load(Ordering::Relaxed) {
            if sid.is_none() {
                sid = self.open(&http).await;
                if sid.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            let trace = format!(
                "{:032x}",
                0xc4a0_5000_0000_0000_0000_0000_0000_0000u128 | u128::from(n)
            );
            let body = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                "params": {"name": "one_echo", "arguments": {"text": trace}}});
            let fate = match self.post(&http, sid.as_deref(), &trace, &body).await {
                Ok((200, _, v))
                    if v.pointer("/result/content/0/text")
                        .and_then(Value::as_str)
                        .is_some_and(|t| t.contains(&trace)) =>
                {
                    Fate::Ok
                }
                Ok((200, _, v))
                    if v.get("error").is_some()
                        || v.pointer("/result/isError") == Some(&Value::Bool(true)) =>
                {
                    Fate::RpcError
                }
                other => {
                    if matches!(other, Ok((404, _, _))) {
                        sid = None;
                    }
                    self.first_failure
                        .lock()
                        .expect("lock")
                        .get_or_insert(format!("{other:?}"));
                    Fate::Failed
                }
            };
            self.records.lock().expect("lock").push(Record {
                at: Instant::now(),
                fate,
                trace,
            });
            tokio::time::sleep(pause).await;
        }
    }
}

/// One fault: when it started, when the dependency was back, and what recovery looked like.
struct Fault {
    name: &'static str,
    /// What "recovered" means for it.
    back: &'static str,
    start: Instant,
    cleared: Instant,
    recovered: Option<Duration>,
    end: Instant,
}

/// Time from `since` to the first successful call after it (`None` within `limit`).
async fn first_ok_after(load: &Load, since: Instant, limit: Duration) -> Option<Duration> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        let hit = load
            .records
            .lock()
            .expect("lock")
            .iter()
            .find(|r| r.at > since && r.fate == Fate::Ok)
            .map(|r| r.at - since);
        if hit.is_some() {
            return hit;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Time from `since` until the controller at `addr` lists this dataplane as connected and
/// having applied its snapshot.
async fn reconnected(addr: &str, since: Instant, limit: Duration) -> Option<Duration> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let until = Instant::now() + limit;
    while Instant::now() < until {
        let status: Option<Value> = match http
            .get(format!("http://{addr}/v1/status"))
            .bearer_auth(CONTROLLER_TOKEN)
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let back = status
            .as_ref()
            .and_then(|s| s["dataplanes"].as_array())
            .is_some_and(|d| {
                d.iter().any(|x| {
                    x["name"] == DATAPLANE_NAME && x["connected"] == true && !x["last"].is_null()
                })
            });
        if back {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Time from `since` until the gateway at `addr` reports its audit store writable again
/// (`reflow_audit_writable 1`: the spill replayed, events reach Postgres).
async fn audit_writable(addr: &str, since: Instant, limit: Duration) -> Option<Duration> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Ok(r) = http.get(format!("http://{addr}/metrics")).send().await
            && let Ok(text) = r.text().await
            && text.lines().any(|l| l.trim() == "reflow_audit_writable 1")
        {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

struct World {
    dir: PathBuf,
    pg: TestPostgres,
    fixture: Option<FixtureProcess>,
    fixture_addr: String,
    controller: Option<ManagedChild>,
    controller_addr: String,
    key: String,
}

fn setup() -> (World, ManagedChild, String) {
    let pg = TestPostgres::start().expect("postgres starts");
    let dir = pg.dir().join("chaos");
    std::fs::create_dir_all(dir.join("manifests")).expect("folders");
    std::fs::create_dir_all(dir.join("spill")).expect("folders");
    let key = reflow_crds::SealingKey::generate_base64();
    std::fs::write(dir.join("key"), &key).expect("key");
    std::fs::write(dir.join("token"), CONTROLLER_TOKEN).expect("token");
    let fixture =
        FixtureProcess::spawn_with(&fixture_bin().expect("fixture binary"), ["--name", "one"])
            .expect("fixture starts");
    let fixture_addr = fixture.addr().to_string();
    let docs = [
        target_yaml("one", "streamableHttp", &fixture.mcp_url()),
        PolicyDoc::allow("one-all", "one")
            .everyone()
            .rule("all", &["*"])
            .to_yaml(),
    ];
    std::fs::write(dir.join("manifests/all.yaml"), docs.join("---\n")).expect("manifests");
    let (ctl, controller_addr) = controller(&dir, "127.0.0.1:0");
    let (dp, dp_addr) = dataplane(&dir, &controller_addr, &pg.url(), &key);
    let world = World {
        dir,
        pg,
        fixture: Some(fixture),
        fixture_addr,
        controller: Some(ctl),
        controller_addr,
        key,
    };
    (world, dp, dp_addr)
}

/// Kills and restarts each dependency in turn while `load` runs; the faults in order.
async fn faults(
    w: &mut World,
    dp_addr: &str,
    load: &Arc<Load>,
    down: Duration,
    settle: Duration,
) -> Vec<Fault> {
    let mut out = Vec::new();
    // The upstream.
    let start = Instant::now();
    drop(w.fixture.take());
    tokio::time::sleep(down).await;
    let bin = fixture_bin().expect("fixture binary");
    w.fixture = Some(
        FixtureProcess::spawn_with(&bin, ["--name", "one", "--listen", &w.fixture_addr])
            .expect("fixture restarts on its port"),
    );
    let cleared = Instant::now();
    let recovered = first_ok_after(load, cleared, Duration::from_secs(60)).await;
    tokio::time::sleep(settle).await;
    out.push(Fault {
        name: "upstream killed",
        back: "first successful call",
        start,
        cleared,
        recovered,
        end: Instant::now(),
    });
    // Postgres.
    let start = Instant::now();
    w.pg.stop().expect("postgres stops");
    tokio::time::sleep(down).await;
    let metrics = reqwest::get(format!("http://{dp_addr}/metrics")).await;
    let text = match metrics {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    println!(
        "  while Postgres is down: {}",
        text.lines()
            .find(|l| l.starts_with("reflow_audit_writable"))
            .unwrap_or("no reflow_audit_writable line")
    );
    w.pg.start_again().expect("postgres starts again");
    let cleared = Instant::now();
    let recovered = audit_writable(dp_addr, cleared, Duration::from_secs(60)).await;
    tokio::time::sleep(settle).await;
    out.push(Fault {
        name: "Postgres stopped",
        back: "audit store writable (spill replayed)",
        start,
        cleared,
        recovered,
        end: Instant::now(),
    });
    // The controller.
    let start = Instant::now();
    drop(w.controller.take());
    tokio::time::sleep(down).await;
    let (ctl, _) = controller(&w.dir, &w.controller_addr);
    w.controller = Some(ctl);
    let cleared = Instant::now();
    let recovered = reconnected(&w.controller_addr, cleared, Duration::from_secs(60)).await;
    tokio::time::sleep(settle).await;
    out.push(Fault {
        name: "controller killed",
        back: "dataplane re-connected, snapshot applied",
        start,
        cleared,
        recovered,
        end: Instant::now(),
    });
    out
}

/// trace id → rows of `tools/call` in the audit table.
async fn audited(url: &str) -> Result<std::collections::HashMap<String, i64>, String> {
    let db = reflow_dataplane::postgres::Database::new(&SecretString::from(url.to_owned()), 2)
        .map_err(|e| e.to_string())?;
    let client = db.client().await.map_err(|e| e.to_string())?;
    let rows = client
        .query(
            "SELECT trace_id, count(*) FROM reflow_audit_events WHERE method = 'tools/call' GROUP BY trace_id",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let workers = env_num("CHAOS_WORKERS", 8) as usize;
    let pause = Duration::from_millis(env_num("CHAOS_PAUSE_MS", 10));
    let down = Duration::from_secs(env_num("CHAOS_DOWN_SECS", 5));
    let settle = Duration::from_secs(env_num("CHAOS_SETTLE_SECS", 5));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut world, _dp, dp_addr) = setup();
    println!(
        "chaos: {workers} workers against http://{dp_addr}/mcp; each fault lasts {down:?}; key {} bytes",
        world.key.len()
    );
    let token = reflow_dataplane::auth::mint_dev_token(
        &SecretString::from(DEV_SECRET),
        "reflow-dev",
        "reflow",
        "chaos",
        &[],
        &[],
        Duration::from_secs(3600),
    )
    .expect("token");
    let load = Arc::new(Load {
        url: format!("http://{dp_addr}/mcp"),
        token,
        records: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        seq: AtomicU64::new(0),
        first_failure: Mutex::new(None),
    });
    let ok = rt.block_on(async {
        let tasks: Vec<_> = (0..workers)
            .map(|_| tokio::spawn(load.clone().worker(pause)))
            .collect();
        tokio::time::sleep(settle).await;
        let steady_from = Instant::now();
        let faults = faults(&mut world, &dp_addr, &load, down, settle).await;
        load.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        report(&world, &load, steady_from, &faults).await
    });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn report(w: &World, load: &Load, steady_from: Instant, faults: &[Fault]) -> bool {
    // The load has stopped: the records are moved out (no lock held across the waits below).
    let records = std::mem::take(&mut *load.records.lock().expect("lock"));
    let answered: Vec<&Record> = records.iter().filter(|r| r.fate != Fate::Failed).collect();
    // The spill is replayed once the database is back: wait for every answered call's event.
    let mut found = std::collections::HashMap::new();
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        if let Ok(rows) = audited(&w.pg.url()).await {
            found = rows;
            if answered.iter().all(|r| found.contains_key(&r.trace)) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lost = answered
        .iter()
        .filter(|r| !found.contains_key(&r.trace))
        .count();
    let twice = found.values().filter(|n| **n > 1).count();
    println!(
        "\n| fault | calls during it | failed (HTTP error or none) | JSON-RPC errors | time to recover |"
    );
    println!("| --- | --- | --- | --- | --- |");
    let before = records.iter().filter(|r| r.at < steady_from).count();
    for f in faults {
        let during: Vec<&Record> = records
            .iter()
            .filter(|r| r.at >= f.start && r.at < f.end)
            .collect();
        let failed = during.iter().filter(|r| r.fate == Fate::Failed).count();
        let rpc = during.iter().filter(|r| r.fate == Fate::RpcError).count();
        let recovered = f.recovered.map_or("not within 60 s".to_owned(), |d| {
            format!(
                "{:.2} s to {} ({:.1} s down)",
                d.as_secs_f64(),
                f.back,
                (f.cleared - f.start).as_secs_f64()
            )
        });
        println!(
            "| {} | {} | {failed} | {rpc} | {recovered} |",
            f.name,
            during.len()
        );
    }
    println!("\n| figure | value |\n| --- | --- |");
    println!(
        "| calls made | {} ({before} before the first fault) |",
        records.len()
    );
    println!(
        "| calls answered (each must be audited) | {} |",
        answered.len()
    );
    println!(
        "| audit events found in Postgres for them | {} |",
        answered.len() - lost
    );
    println!("| audit events lost | {lost} |");
    println!("| audit events stored twice | {twice} |");
    if let Some(e) = load.first_failure.lock().expect("lock").as_ref() {
        println!("first failed call: {}", &e[..e.len().min(300)]);
    }
    let ok = lost == 0 && twice == 0 && faults.iter().all(|f| f.recovered.is_some());
    println!("\nchaos: {}", if ok { "PASS" } else { "FAIL" });
    ok
}
