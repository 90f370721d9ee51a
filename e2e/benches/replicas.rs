//! The added latency of a cross-replica hop (`cargo bench -p reflow-e2e --bench replicas`; `make
//! bench` runs it on a release dataplane): two `reflow-dataplane` processes on one throwaway
//! Postgres, one session opened on replica A, and the same `tools/call` sent one at a time to A
//! (served where the session lives) and to B (handed to A and the answer relayed back), in
//! alternating blocks so both paths share the machine's noise. Prints p50/p90/p99 of each and
//! the p50 the hop adds.
//!
//! Without `--bench` (`cargo test --benches`) a short smoke run only checks that both paths
//! answer. A failed call exits 1.

use std::process::ExitCode;
use std::time::Duration;

use reflow_crds::SealingKey;
use reflow_e2e::fixture_bin;
use reflow_e2e::harness::gateway::target_yaml;
use reflow_e2e::harness::load::{self, McpSession, Percentiles};
use reflow_e2e::harness::{DataplaneProcess, FixtureProcess, PolicyDoc, TestPostgres};
use secrecy::SecretString;
use serde_json::json;

const DEV_SECRET: &str = "reflow-replicas-bench-secret-0123456789abcdef";
const REPLICA_TOKEN: &str = "replica-token-for-the-bench-0123456789";

struct Plan {
    blocks: usize,
    per_block: usize,
}

const FULL: Plan = Plan {
    blocks: 10,
    per_block: 300,
};
const SMOKE: Plan = Plan {
    blocks: 2,
    per_block: 10,
};

type BenchResult<T> = Result<T, String>;

fn main() -> ExitCode {
    for var in ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"] {
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
            eprintln!("replicas bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config(
    dir: &std::path::Path,
    name: &str,
    key: &str,
    url: &str,
) -> BenchResult<std::path::PathBuf> {
    let write = |p: std::path::PathBuf, s: &str| std::fs::write(&p, s).map_err(|e| e.to_string());
    write(dir.join("sealing-key"), key)?;
    write(dir.join("db-url"), url)?;
    let path = dir.join(format!("{name}.yaml"));
    write(
        path.clone(),
        &format!(
            "dev: {{hs256Secret: {DEV_SECRET}}}\nsealingKeyFile: sealing-key\n\
             database: {{urlFile: db-url, maxConnections: 8}}\n\
             audit: {{spillDir: spill-{name}, failurePolicy: buffer}}\n"
        ),
    )?;
    Ok(path)
}

fn run(plan: &Plan) -> BenchResult<()> {
    let pg = TestPostgres::start().map_err(|e| e.to_string())?;
    let url = pg.create_database("replicas").map_err(|e| e.to_string())?;
    let fixture = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "one"])
        .map_err(|e| e.to_string())?;
    let dir = pg.dir().join("replicas-bench");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).map_err(|e| e.to_string())?;
    let docs = [
        target_yaml("one", "streamableHttp", &fixture.mcp_url()),
        PolicyDoc::allow("one-all", "one")
            .everyone()
            .rule("all", &["*"])
            .to_yaml(),
    ];
    std::fs::write(manifests.join("all.yaml"), docs.join("---\n")).map_err(|e| e.to_string())?;
    let key = SealingKey::generate_base64();
    let env = [
        ("REFLOW_REPLICA_TOKEN", REPLICA_TOKEN),
        ("RUST_LOG", "error"),
    ];
    let spawn = |name: &str| -> BenchResult<DataplaneProcess> {
        DataplaneProcess::spawn(&manifests, &config(&dir, name, &key, &url)?, &env)
            .map_err(|e| e.to_string())
    };
    let (a, b) = (spawn("a")?, spawn("b")?);
    let token = reflow_dataplane::auth::mint_dev_token(
        &SecretString::from(DEV_SECRET),
        "reflow-dev",
        "reflow",
        "bench",
        &[],
        &[],
        Duration::from_secs(3600),
    )
    .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (local, hop) = rt.block_on(async {
        let client = load::load_client().map_err(|e| e.to_string())?;
        let session = McpSession::open(&client, &a.mcp_url(), Some(&token))
            .await
            .map_err(|e| e.to_string())?;
        let args = json!({"text": "hop"});
        let here = session.tool_call("one_echo", args.clone(), "[one] hop");
        let there = session
            .at(&b.mcp_url())
            .tool_call("one_echo", args, "[one] hop");
        // Warm both paths (connections, caches) before measuring.
        for call in [&here, &there] {
            let mut w = Vec::new();
            let t = load::sequential(call, 20, &mut w).await;
            if t.failed > 0 {
                return Err(format!("warm-up failed: {:?}", t.first_error));
            }
        }
        let (mut local, mut hop) = (Vec::new(), Vec::new());
        for _ in 0..plan.blocks {
            for (call, samples) in [(&here, &mut local), (&there, &mut hop)] {
                let t = load::sequential(call, plan.per_block, samples).await;
                if t.failed > 0 {
                    return Err(format!("{} calls failed: {:?}", t.failed, t.first_error));
                }
            }
        }
        Ok::<_, String>((Percentiles::of(&local), Percentiles::of(&hop)))
    })?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let binary = std::env::var("REFLOW_DATAPLANE_BIN").unwrap_or_else(|_| "debug build".into());
    // The client's own build shows in both paths alike; say which it was.
    let client = if cfg!(debug_assertions) {
        "debug"
    } else {
        "optimized"
    };
    println!(
        "cross-replica hand-off, tools/call at concurrency 1 (dataplane {binary}; {client} \
         bench client)"
    );
    println!(
        "  {:<34} {:>9} {:>9} {:>9} {:>7}",
        "path", "p50 µs", "p90 µs", "p99 µs", "n"
    );
    for (name, p) in [
        ("direct to the session's owner", &local),
        ("via another replica (one hop)", &hop),
    ] {
        println!(
            "  {name:<34} {:>9.1} {:>9.1} {:>9.1} {:>7}",
            us(p.p50),
            us(p.p90),
            us(p.p99),
            p.n
        );
    }
    println!(
        "  p50 added by the hop              {:>9.1} µs",
        us(hop.p50) - us(local.p50)
    );
    Ok(())
}
