//! `reflow-fixture`: the MCP fixture server binary used by Reflow's end-to-end tests.
//! Parses the command line, sets up stderr logging and runs `reflow_e2e::fixture::run`.

use std::process::ExitCode;

use clap::Parser;
use reflow_e2e::fixture::{self, FixtureConfig};
use reflow_telemetry::LogFormat;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cfg = FixtureConfig::parse();
    let filter =
        EnvFilter::try_from_env("REFLOW_FIXTURE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Spans go to OTEL_EXPORTER_OTLP_ENDPOINT when it is set (the tracing e2e test).
    let telemetry =
        match reflow_telemetry::init_with_filter("reflow-fixture", LogFormat::Pretty, filter) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("reflow-fixture: {e}");
                return ExitCode::FAILURE;
            }
        };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("reflow-fixture: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(fixture::run(cfg));
    runtime.shutdown_background();
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reflow-fixture: {e}");
            ExitCode::FAILURE
        }
    }
}
