//! Postgres audit figures (`cargo bench -p reflow-e2e --bench postgres`), in one run on one
//! machine:
//!
//! * audit sink throughput: events/s from `record` until every event is a row (Postgres), and
//!   until every line is flushed (JSON lines to a file), same event count;
//! * the gateway's `tools/call` throughput at concurrency 32 with the embedded default (memory
//!   sessions, JSON-lines audit to a file) and with Postgres (sessions and audit), same fixture.
//!
//! Without `--bench` (`cargo test --benches`) a short smoke run only checks that everything
//! works. A cluster is started with initdb/pg_ctl on a free loopback port (see
//! `harness::postgres`); a failed call or a missing event exits 1.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reflow_crds::SealingKey;
use reflow_dataplane::audit::{AuditEvent, AuditSink, JsonLinesSink, new_event_id, now_ms};
use reflow_dataplane::postgres::{
    AuditSettings, Database, PgAuditSink, PgSessionStore, SessionSettings,
};
use reflow_dataplane::session::{MemorySessionStore, SessionStore};
use reflow_e2e::fixture_bin;
use reflow_e2e::harness::gateway::{StoresFactory, TestStores};
use reflow_e2e::harness::load::{self, McpSession};
use reflow_e2e::harness::{FixtureProcess, PolicyDoc, TestGateway, TestPostgres};
use secrecy::SecretString;
use serde_json::json;

struct Plan {
    events: usize,
    warmup: Duration,
    window: Duration,
}

const FULL: Plan = Plan {
    events: 200_000,
    warmup: Duration::from_millis(500),
    window: Duration::from_secs(5),
};
const SMOKE: Plan = Plan {
    events: 2_000,
    warmup: Duration::from_millis(100),
    window: Duration::from_millis(300),
};

type BenchResult<T> = Result<T, String>;

fn main() -> ExitCode {
    // Loopback traffic must never go through a proxy.
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        // SAFETY: single-threaded here, before any runtime or client exists.
        unsafe { std::env::remove_var(var) };
    }
    let plan = if std::env::args().any(|a| a == "--bench") {
        &FULL
    } else {
        &SMOKE
    };
    match run(plan) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postgres bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn event(i: usize) -> AuditEvent {
    AuditEvent {
        id: new_event_id(),
        time_ms: now_ms(),
        user: format!("user-{}", i % 50),
        session: Some("0123456789abcdef0123456789abcdef".into()),
        method: "tools/call".into(),
        target: Some("bench/fx".into()),
        name: Some("fx_echo".into()),
        decision: Some(if i.is_multiple_of(10) {
            "deny"
        } else {
            "allow"
        }),
        policy: Some("bench-allow".into()),
        outcome: "ok".into(),
        duration_ms: 0.25,
        trace_id: format!("{i:032x}"),
    }
}

fn database(url: &str) -> BenchResult<Database> {
    Database::new(&SecretString::from(url.to_owned()), 8).map_err(|e| e.to_string())
}

fn run(plan: &Plan) -> BenchResult<()> {
    let pg = TestPostgres::start().map_err(|e| e.to_string())?;
    let url = pg.url();
    let spill_root = reflow_e2e::harness::paths::target_dir()
        .join("pg-bench")
        .join(uuid::Uuid::new_v4().simple().to_string());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    // 1. Audit sinks on their own.
    let pg_rate = rt.block_on(async {
        let db = database(&url)?;
        db.connect_and_migrate(Duration::from_secs(60))
            .await
            .map_err(|e| e.to_string())?;
        // Room for every event, as for the JSON-lines sink below: this measures the writer.
        let mut settings = AuditSettings::new(spill_root.join("raw"));
        settings.capacity = plan.events;
        let sink = PgAuditSink::start(db.clone(), settings).map_err(|e| e.to_string())?;
        let started = Instant::now();
        for i in 0..plan.events {
            sink.record(event(i));
            // A producer faster than any request path; yield so the writer runs.
            if i % 1000 == 999 {
                tokio::task::yield_now().await;
            }
        }
        let client = db.client().await.map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let n: i64 = client
                .query_one("SELECT count(*) FROM reflow_audit_events", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if n as usize >= plan.events - sink.dropped() as usize {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("only {n} of {} events stored", plan.events));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed();
        if sink.dropped() > 0 {
            return Err(format!("{} events dropped (queue full)", sink.dropped()));
        }
        sink.close().await;
        Ok::<_, String>(plan.events as f64 / elapsed.as_secs_f64())
    })?;
    let file = spill_root.join("raw.jsonl");
    std::fs::create_dir_all(&spill_root).map_err(|e| e.to_string())?;
    let started = Instant::now();
    {
        let out = std::fs::File::create(&file).map_err(|e| e.to_string())?;
        let sink = JsonLinesSink::spawn(out, plan.events);
        for i in 0..plan.events {
            sink.record(event(i));
        }
        if sink.dropped() > 0 {
            return Err(format!("{} JSON-lines events dropped", sink.dropped()));
        }
        // Dropping writes what is queued and flushes.
    }
    let json_rate = plan.events as f64 / started.elapsed().as_secs_f64();

    // 2. The gateway at c=32, JSON lines + memory sessions vs Postgres audit + sessions.
    let fixture =
        FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "fx"]).map_err(|e| e.to_string())?;
    let jsonl_file = spill_root.join("gateway-audit.jsonl");
    let embedded: StoresFactory = Arc::new(move |_key: &SealingKey| {
        let out = std::fs::File::create(&jsonl_file).expect("audit file");
        TestStores::new(
            MemorySessionStore::new(Duration::from_secs(3600)) as Arc<dyn SessionStore>,
            Arc::new(JsonLinesSink::spawn(out, 65_536)) as Arc<dyn AuditSink>,
        )
    });
    let pg_url = url.clone();
    let spill = spill_root.join("gateway");
    let postgres: StoresFactory = Arc::new(move |key: &SealingKey| {
        let db = database(&pg_url).expect("database");
        let sessions: Arc<dyn SessionStore> = PgSessionStore::start(
            db.clone(),
            key.clone(),
            SessionSettings::new(Duration::from_secs(3600)),
            "bench".into(),
            None,
        );
        let audit = PgAuditSink::start(db, AuditSettings::new(spill.clone())).expect("sink");
        TestStores::new(sessions, audit as Arc<dyn AuditSink>)
    });
    let mut figures = Vec::new();
    for (name, stores) in [
        ("JSON-lines audit, memory sessions", embedded),
        ("Postgres audit and sessions", postgres),
    ] {
        let gw = TestGateway::builder()
            .target("fx", &fixture.mcp_url())
            .policy(
                PolicyDoc::allow("fx-all", "fx")
                    .everyone()
                    .rule("all", &["*"]),
            )
            .stores(stores)
            .start()
            .map_err(|e| e.to_string())?;
        let token = gw.token("bench", &[], &[]);
        let url = gw.mcp_url();
        let r = rt.block_on(async {
            let client = load::load_client().map_err(|e| e.to_string())?;
            let session = McpSession::open(&client, &url, Some(&token))
                .await
                .map_err(|e| e.to_string())?;
            let call = session.tool_call("fx_echo", json!({"text": "bench"}), "[fx] bench");
            let _ = load::closed_loop(&call, 32, plan.warmup).await;
            let r = load::closed_loop(&call, 32, plan.window).await;
            if r.tally.failed > 0 {
                return Err(format!(
                    "{name}: {} calls failed: {}",
                    r.tally.failed,
                    r.tally.first_error.unwrap_or_default()
                ));
            }
            Ok(r.rps())
        })?;
        figures.push((name, r));
        drop(gw);
    }
    let _ = std::fs::remove_dir_all(&spill_root);

    println!(
        "postgres bench ({} run)",
        if plan.events == FULL.events {
            "full"
        } else {
            "smoke"
        }
    );
    println!(
        "  audit sink, {} events:  Postgres {:>10.0} events/s   JSON lines {:>10.0} events/s",
        plan.events, pg_rate, json_rate
    );
    for (name, rps) in &figures {
        println!("  tools/call c=32, {name:<36} {rps:>8.0} req/s");
    }
    if let [(_, a), (_, b)] = figures.as_slice() {
        println!("  Postgres / JSON lines: {:.0} %", 100.0 * b / a);
    }
    Ok(())
}
