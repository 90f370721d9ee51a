//! The gateway bench's report: the tables and the budget verdicts, printed after a run.

use std::path::PathBuf;
use std::time::Duration;

use super::{
    ALLOCATOR, BUDGET_ADDED_P50_US, BUDGET_THROUGHPUT_RATIO, GATEWAY_PROFILES, PathFigures, Plan,
};

pub(crate) struct Report {
    pub(crate) measured: Vec<PathFigures>,
    pub(crate) audit_lines: u64,
    pub(crate) audit_dropped: u64,
    pub(crate) fixture: PathBuf,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn verdict(plan: &Plan, pass: bool) -> &'static str {
    match (plan.judged, pass) {
        (false, _) => "not judged (smoke run)",
        (true, true) => "PASS",
        (true, false) => "FAIL",
    }
}

impl Report {
    pub(crate) fn failures(&self) -> u64 {
        self.measured
            .iter()
            .map(|p| p.latency_tally.failed + p.throughput.tally.failed)
            .sum()
    }

    fn path(&self, name: &str) -> Option<&PathFigures> {
        self.measured.iter().find(|p| p.name == name)
    }

    pub(crate) fn print(&self, plan: &Plan, wall: Duration) {
        let bare = self.path("pass-through");
        let floor = self.path("byte-relay");
        // Judged on the gateway; a run filtered to a reference path shows that one instead.
        let Some(d) = self.path("direct") else {
            return;
        };
        let Some(g) = self.path("gateway").or(bare).or(floor) else {
            return;
        };
        // The headline verdict judges how the binary serves by default (thread-per-core with
        // hyper to the upstream) when that path ran; `gateway` (multi-thread) otherwise.
        let judged = self.path("gw-percore-h1").unwrap_or(g);
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        println!();
        println!(
            "gateway load run — {} — {profile} build, {cpus} CPUs, loopback",
            plan.name
        );
        println!("  upstream:     {} (echo)", self.fixture.display());
        println!("  allocator:    {ALLOCATOR} (the whole bench process, gateway included)");
        println!(
            "  gateway:      in-process, own runtime; HS256 JWT auth, Policy allowing echo, JSON-lines audit to a file"
        );
        for (name, what) in GATEWAY_PROFILES {
            println!("  {name:<14} {what}");
        }
        println!(
            "  gateway-stdio: the same gateway to a STDIO Target (the fixture with --stdio, one warm shared child)"
        );
        println!(
            "  pass-through: reference proxy on the gateway's runtime (axum + reqwest, bytes only, no auth/policy/audit)"
        );
        println!(
            "  byte-relay:   the floor: whole messages relayed on raw sockets, one upstream connection per client connection"
        );
        println!();
        println!(
            "  concurrency 1: {} sequential tools/call per path, blocks of {} alternating",
            plan.latency_calls, plan.block
        );
        println!(
            "  {:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "path", "p50 µs", "p90 µs", "p99 µs", "mean µs", "max µs", "failed"
        );
        for p in &self.measured {
            let l = &p.latency;
            println!(
                "  {:<14} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>7}",
                p.name,
                us(l.p50),
                us(l.p90),
                us(l.p99),
                us(l.mean),
                us(l.max),
                p.latency_tally.failed
            );
        }
        let added_row = |label: &str, a: &PathFigures, b: &PathFigures| {
            println!(
                "  {:<14} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                label,
                us(a.latency.p50) - us(b.latency.p50),
                us(a.latency.p90) - us(b.latency.p90),
                us(a.latency.p99) - us(b.latency.p99),
                us(a.latency.mean) - us(b.latency.mean),
            );
        };
        added_row("added by gw", g, d);
        if let Some(b) = bare {
            added_row("added by bare", b, d);
        }
        if let Some(f) = floor {
            added_row("added by relay", f, d);
        }
        if let Some(st) = self.path("gateway-stdio") {
            // The STDIO hop's own cost: the same gateway work, a child's pipes instead of HTTP.
            added_row("stdio vs http", st, g);
            added_row("stdio vs direct", st, d);
        }
        let added = us(judged.latency.p50) - us(d.latency.p50);
        println!();
        println!(
            "  concurrency {}: {:.1} s closed loop per path, one keep-alive HTTP/1.1 pool",
            plan.workers,
            plan.throughput_time.as_secs_f64()
        );
        println!(
            "  {:<14} {:>9} {:>10} {:>9} {:>7}",
            "path", "calls", "req/s", "vs direct", "failed"
        );
        let direct_rps = d.throughput.rps().max(1e-9);
        for p in &self.measured {
            let t = &p.throughput;
            println!(
                "  {:<14} {:>9} {:>10.0} {:>8.1}% {:>7}",
                p.name,
                t.tally.ok,
                t.rps(),
                t.rps() / direct_rps * 100.0,
                t.tally.failed
            );
        }
        let ratio = judged.throughput.rps() / direct_rps;
        println!();
        println!("  DESIGN.md §7 budgets ({} vs direct)", judged.name);
        println!(
            "  p50 added latency at c=1      {:>7.1} µs  (≤ {BUDGET_ADDED_P50_US} µs)  {}",
            added,
            verdict(plan, added <= BUDGET_ADDED_P50_US)
        );
        println!(
            "  throughput vs direct at c={:<3} {:>7.1} %   (≥ {:.0} %)     {}",
            plan.workers,
            ratio * 100.0,
            BUDGET_THROUGHPUT_RATIO * 100.0,
            verdict(plan, ratio >= BUDGET_THROUGHPUT_RATIO)
        );
        println!();
        println!(
            "  every gateway profile against the budgets (≤ {BUDGET_ADDED_P50_US} µs added p50, ≥ {:.0} % of direct)",
            BUDGET_THROUGHPUT_RATIO * 100.0
        );
        println!(
            "  {:<14} {:>12} {:>9} {:>11} {:>9}",
            "profile", "added p50", "", "vs direct", ""
        );
        for (name, _) in GATEWAY_PROFILES {
            let Some(p) = self.path(name) else { continue };
            let added = us(p.latency.p50) - us(d.latency.p50);
            let ratio = p.throughput.rps() / direct_rps;
            println!(
                "  {:<14} {:>9.1} µs {:>9} {:>9.1} % {:>9}",
                name,
                added,
                verdict(plan, added <= BUDGET_ADDED_P50_US),
                ratio * 100.0,
                verdict(plan, ratio >= BUDGET_THROUGHPUT_RATIO)
            );
        }
        for (label, r) in [
            ("axum+reqwest pass-through", bare),
            ("byte relay (floor)", floor),
        ] {
            if let Some(r) = r {
                println!(
                    "  the same budgets for the {label}: {:+.1} µs, {:.1} %",
                    us(r.latency.p50) - us(d.latency.p50),
                    r.throughput.rps() / direct_rps * 100.0
                );
            }
        }
        println!(
            "  audit: {} lines written, {} dropped, for {} successful gateway calls (warm-ups included)",
            self.audit_lines,
            self.audit_dropped,
            GATEWAY_PROFILES
                .iter()
                .map(|(name, _)| *name)
                .chain(["gateway-stdio"])
                .filter_map(|name| self.path(name))
                .map(|p| p.calls)
                .sum::<u64>()
        );
        for p in &self.measured {
            let first = p.latency_tally.first_error.as_ref().or(p
                .throughput
                .tally
                .first_error
                .as_ref());
            if let Some(e) = first {
                println!("  first {} failure: {e}", p.name);
            }
        }
        println!("  wall time {:.1} s", wall.as_secs_f64());
        println!();
    }
}
