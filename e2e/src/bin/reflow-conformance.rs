//! `reflow-conformance` (`make conformance`): the official MCP conformance suite's server
//! scenarios against `reflow-fixture --conformance` directly and through the gateway's
//! single-target endpoint, printed side by side: once with the 0.1.16 suite (the stateful eras),
//! once with the 0.2.0 alpha suite's `--requirements 2026-07-28` (the stateless revision). Everything runs on loopback, bounded, and the
//! processes it starts are stopped by PID when it ends.
//!
//! Exit status: 0 when the fixture passes every scenario of both runs (the gateway's gaps are reported, and
//! are fatal only with `--strict`), 1 otherwise, 2 when the suite could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use reflow_e2e::harness::conformance::{
    self, CONFORMANCE_2026_SPEC, CONFORMANCE_SPEC, Comparison, NODE22_SPEC, REVISION_2026, Suite,
};
use reflow_e2e::harness::{fixture_bin, paths};

#[derive(Debug, Parser)]
#[command(
    name = "reflow-conformance",
    about = "Runs the MCP conformance suite against the fixture and the gateway"
)]
struct Args {
    /// Where results go (one folder per run); default target/conformance/<unix time>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also fail when the gateway fails a scenario the fixture passes.
    #[arg(long)]
    strict: bool,
}

/// Installs one pinned suite.
type Installer = fn() -> reflow_e2e::harness::Result<Suite>;

/// One suite's comparison, printed: the table, every failing check, the gateway's gaps.
/// Returns whether the fixture passed everything and the gateway's gaps.
fn report(title: &str, cmp: &Comparison) -> (bool, Vec<String>) {
    println!("\n{title}\n\n{}", cmp.table());
    for (side, report) in [("fixture", &cmp.fixture), ("gateway", &cmp.gateway)] {
        for (name, verdict) in report {
            for failure in &verdict.failures {
                println!("{side} {name}: {failure}");
            }
        }
    }
    let fixture_failures: Vec<&String> = cmp
        .fixture
        .iter()
        .filter(|(_, v)| !v.ok())
        .map(|(n, _)| n)
        .collect();
    let gaps = cmp.gateway_gaps();
    println!(
        "\nthe gateway fails {} scenario(s) the fixture passes{}",
        gaps.len(),
        if gaps.is_empty() {
            String::new()
        } else {
            format!(": {}", gaps.join(", "))
        }
    );
    if !fixture_failures.is_empty() {
        eprintln!("reflow-conformance: the fixture fails {fixture_failures:?} ({title})");
    }
    (fixture_failures.is_empty(), gaps)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let out = args.out.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        paths::target_dir()
            .join("conformance")
            .join(now.to_string())
    });
    eprintln!(
        "reflow-conformance: {CONFORMANCE_SPEC} and {CONFORMANCE_2026_SPEC} on {NODE22_SPEC}; results in {}",
        out.display()
    );
    let runs: [(String, Installer, PathBuf); 2] = [
        (
            format!("{CONFORMANCE_SPEC}, every server scenario (stateful eras)"),
            Suite::install,
            out.clone(),
        ),
        (
            format!("{CONFORMANCE_2026_SPEC}, --requirements {REVISION_2026} (stateless)"),
            Suite::install_2026,
            out.join(REVISION_2026),
        ),
    ];
    let mut fixture_ok = true;
    let mut gaps = 0;
    for (title, install, dir) in runs {
        let compared = install().and_then(|suite| {
            let fixture = fixture_bin()?;
            conformance::compare(&suite, &fixture, &dir)
        });
        let cmp = match compared {
            Ok(cmp) => cmp,
            Err(e) => {
                eprintln!("reflow-conformance: {e}");
                return ExitCode::from(2);
            }
        };
        let (ok, run_gaps) = report(&title, &cmp);
        fixture_ok &= ok;
        gaps += run_gaps.len();
    }
    if !fixture_ok {
        return ExitCode::FAILURE;
    }
    if args.strict && gaps > 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
