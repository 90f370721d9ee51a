//! The cost of the STDIO sandbox behind `make bench`: spawn + `initialize` time, and the
//! latency of sequential `tools/call echo`, of one reflow-fixture child without a sandbox, with
//! Landlock + seccomp + rlimits (built before fork, applied in the child), and with those plus
//! its own user/PID/mount namespaces (where the kernel allows them), measured alternately in
//! the same run so all share the machine's noise.
//!
//! `cargo bench -p reflow-e2e --bench sandbox` measures (cargo passes `--bench`); without it
//! (`cargo test --benches`) a short smoke run checks every kind of child answers. A failed
//! spawn or call exits 1. On a kernel without Landlock ABI 6 only the unsandboxed half runs.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reflow_crds::snapshot::StdioSandbox;
use reflow_dataplane::upstream::stdio::sandbox::{
    MIN_LANDLOCK_ABI, kernel_landlock_abi, namespaces_available,
};
use reflow_dataplane::upstream::stdio::{
    ChildEnv, ChildProcess, ChildSandbox, ChildSpec, NamespaceMode, Protected,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(30);

/// 0: no sandbox, 1: Landlock + seccomp + rlimits, 2: those and namespaces.
const KINDS: [&str; 3] = [
    "unsandboxed",
    "landlock+seccomp+rlimits",
    "+ user/pid/mount namespaces",
];

fn spec(fixture: &Path, home: &Path, kind: usize) -> ChildSpec {
    ChildSpec {
        command: fixture.to_string_lossy().into_owned(),
        args: vec!["--stdio".into()],
        env: ChildEnv::base(home),
        home: Some(home.to_path_buf()),
        sandbox: (kind > 0).then(|| ChildSandbox {
            settings: StdioSandbox::default(),
            protected: Protected::default(),
            namespaces: if kind == 2 {
                NamespaceMode::Required
            } else {
                NamespaceMode::Off
            },
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
    kind: usize,
) -> (Arc<ChildProcess>, Duration) {
    let home = root.join(format!("{n}"));
    let t = Instant::now();
    let child = ChildProcess::spawn(spec(fixture, &home, kind)).unwrap_or_else(|e| fail(&e));
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

async fn run(fixture: &Path, spawns: usize, calls: usize, kinds: &[usize]) {
    let root = std::env::temp_dir().join(format!("reflow-sandbox-bench-{}", std::process::id()));
    let mut spawn_times = [Vec::new(), Vec::new(), Vec::new()];
    let mut n = 0;
    for _ in 0..spawns {
        for &k in kinds {
            n += 1;
            let (child, took) = start(fixture, &root, n, k).await;
            spawn_times[k].push(took);
            child.stop(Duration::from_millis(500)).await;
        }
    }
    let mut children = Vec::new();
    for &k in kinds {
        n += 1;
        children.push((k, start(fixture, &root, n, k).await.0));
    }
    let mut call_times = [Vec::new(), Vec::new(), Vec::new()];
    let params = json!({"name": "echo", "arguments": {"text": "x"}});
    for block in 0..calls.div_ceil(50) {
        for (k, child) in &children {
            for _ in 0..50.min(calls - block * 50) {
                let t = Instant::now();
                let r = child
                    .request("tools/call", Some(&params), TIMEOUT)
                    .await
                    .unwrap_or_else(|e| fail(&e));
                if r.get("result").is_none() {
                    fail(&format!("echo failed: {r:?}"));
                }
                call_times[*k].push(t.elapsed());
            }
        }
    }
    for (_, c) in &children {
        c.stop(Duration::from_millis(500)).await;
    }
    let _ = std::fs::remove_dir_all(&root);
    println!("STDIO child sandbox cost (reflow-fixture --stdio, spawn = spawn + initialize):");
    let mut base = None;
    for &k in kinds {
        let s = line(
            &format!("spawn, {}", KINDS[k]),
            std::mem::take(&mut spawn_times[k]),
        );
        let c = line(
            &format!("tools/call, {}", KINDS[k]),
            std::mem::take(&mut call_times[k]),
        );
        match base {
            None => base = Some((s, c)),
            Some((s0, c0)) => println!(
                "  {} adds: spawn p50 {:+.3?} ms, call p50 {:+.1?} µs",
                KINDS[k],
                (s.as_secs_f64() - s0.as_secs_f64()) * 1e3,
                (c.as_secs_f64() - c0.as_secs_f64()) * 1e6
            ),
        }
    }
}

fn main() -> ExitCode {
    let measuring = std::env::args().any(|a| a == "--bench");
    let fixture = reflow_e2e::harness::fixture_bin().unwrap_or_else(|e| fail(&e));
    let abi = kernel_landlock_abi();
    let mut kinds = vec![0];
    if abi >= MIN_LANDLOCK_ABI {
        kinds.push(1);
        match namespaces_available() {
            Ok(()) => kinds.push(2),
            Err(why) => println!("no namespaced figures: {why}"),
        }
    } else {
        println!(
            "kernel Landlock ABI {abi} < {MIN_LANDLOCK_ABI}: no sandboxed figures (spawns are refused there)"
        );
    }
    let (spawns, calls) = if measuring { (30, 2_000) } else { (2, 20) };
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| fail(&e));
    rt.block_on(run(&fixture, spawns, calls, &kinds));
    ExitCode::SUCCESS
}
