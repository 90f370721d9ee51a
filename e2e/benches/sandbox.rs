//! The cost of the STDIO sandbox behind `make bench`: spawn + `initialize` time, and the
//! latency of sequential `tools/call echo`, of one reflow-fixture child with the sandbox
//! (Landlock ruleset, seccomp, rlimits built before fork, applied in the child) and without it,
//! measured alternately in the same run so both share the machine's noise.
//!
//! `cargo bench -p reflow-e2e --bench sandbox` measures (cargo passes `--bench`); without it
//! (`cargo test --benches`) a short smoke run checks both kinds of child answer. A failed
//! spawn or call exits 1. On a kernel without Landlock ABI 6 only the unsandboxed half runs.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reflow_crds::snapshot::StdioSandbox;
use reflow_dataplane::upstream::stdio::sandbox::{MIN_LANDLOCK_ABI, kernel_landlock_abi};
use reflow_dataplane::upstream::stdio::{
    ChildEnv, ChildProcess, ChildSandbox, ChildSpec, Protected,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(30);

fn spec(fixture: &Path, home: &Path, sandboxed: bool) -> ChildSpec {
    ChildSpec {
        command: fixture.to_string_lossy().into_owned(),
        args: vec!["--stdio".into()],
        env: ChildEnv::base(home),
        home: Some(home.to_path_buf()),
        sandbox: sandboxed.then(|| ChildSandbox {
            settings: StdioSandbox::default(),
            protected: Protected::default(),
        }),
        label: "bench".into(),
        stderr_lines_per_second: 10,
        unrouted: None,
        on_exit: None,
    }
}

/// Spawns and initializes one child; returns it and the time it took.
async fn start(
    fixture: &Path,
    root: &Path,
    n: usize,
    sandboxed: bool,
) -> (Arc<ChildProcess>, Duration) {
    let home = root.join(format!("{n}"));
    let t = Instant::now();
    let child = ChildProcess::spawn(spec(fixture, &home, sandboxed)).unwrap_or_else(|e| fail(&e));
    let params = json!({"protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "0"}});
    child
        .initialize(&params, TIMEOUT)
        .await
        .unwrap_or_else(|e| fail(&e));
    (child, t.elapsed())
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("sandbox bench: {e}");
    std::process::exit(1)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn line(what: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let p50 = percentile(&v, 0.5);
    println!(
        "  {what:<28} n={:<5} p50 {:>9.3?}  p90 {:>9.3?}  p99 {:>9.3?}",
        v.len(),
        p50,
        percentile(&v, 0.9),
        percentile(&v, 0.99)
    );
    p50
}

async fn run(fixture: &Path, spawns: usize, calls: usize, with_sandbox: bool) {
    let root = std::env::temp_dir().join(format!("reflow-sandbox-bench-{}", std::process::id()));
    let kinds: &[bool] = if with_sandbox {
        &[false, true]
    } else {
        &[false]
    };
    let mut spawn_times = [Vec::new(), Vec::new()];
    let mut n = 0;
    for _ in 0..spawns {
        for &sb in kinds {
            n += 1;
            let (child, took) = start(fixture, &root, n, sb).await;
            spawn_times[usize::from(sb)].push(took);
            child.stop(Duration::from_millis(500)).await;
        }
    }
    let mut children = Vec::new();
    for &sb in kinds {
        n += 1;
        children.push((sb, start(fixture, &root, n, sb).await.0));
    }
    let mut call_times = [Vec::new(), Vec::new()];
    let params = json!({"name": "echo", "arguments": {"text": "x"}});
    for block in 0..calls.div_ceil(50) {
        for (sb, child) in &children {
            for _ in 0..50.min(calls - block * 50) {
                let t = Instant::now();
                let r = child
                    .request("tools/call", Some(&params), TIMEOUT)
                    .await
                    .unwrap_or_else(|e| fail(&e));
                if r.get("result").is_none() {
                    fail(&format!("echo failed: {r:?}"));
                }
                call_times[usize::from(*sb)].push(t.elapsed());
            }
        }
    }
    for (_, c) in &children {
        c.stop(Duration::from_millis(500)).await;
    }
    let _ = std::fs::remove_dir_all(&root);
    println!("STDIO child sandbox cost (reflow-fixture --stdio, spawn = spawn + initialize):");
    let s0 = line("spawn, unsandboxed", std::mem::take(&mut spawn_times[0]));
    let c0 = line(
        "tools/call, unsandboxed",
        std::mem::take(&mut call_times[0]),
    );
    if with_sandbox {
        let s1 = line("spawn, sandboxed", std::mem::take(&mut spawn_times[1]));
        let c1 = line("tools/call, sandboxed", std::mem::take(&mut call_times[1]));
        println!(
            "  sandbox adds: spawn p50 {:+.3?} ms, call p50 {:+.1?} µs",
            (s1.as_secs_f64() - s0.as_secs_f64()) * 1e3,
            (c1.as_secs_f64() - c0.as_secs_f64()) * 1e6
        );
    }
}

fn main() -> ExitCode {
    let measuring = std::env::args().any(|a| a == "--bench");
    let fixture = reflow_e2e::harness::fixture_bin().unwrap_or_else(|e| fail(&e));
    let abi = kernel_landlock_abi();
    let with_sandbox = abi >= MIN_LANDLOCK_ABI;
    if !with_sandbox {
        println!(
            "kernel Landlock ABI {abi} < {MIN_LANDLOCK_ABI}: no sandboxed figures (spawns are refused there)"
        );
    }
    let (spawns, calls) = if measuring { (30, 2_000) } else { (2, 20) };
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| fail(&e));
    rt.block_on(run(&fixture, spawns, calls, with_sandbox));
    ExitCode::SUCCESS
}
