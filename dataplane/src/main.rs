//! `reflow-dataplane`: the MCP gateway binary. `serve` (the default) runs the gateway on a folder
//! of manifests; `token` mints a development token; `bridge` exposes one STDIO server over
//! authenticated Streamable HTTP; `audit query` reads the Postgres audit log. The command line
//! only: every command is a function of `reflow_dataplane::app`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use reflow_dataplane::app;
use reflow_dataplane::config::parse_duration;
use reflow_telemetry::LogFormat;

/// mimalloc (the default `mimalloc` feature): ~14 % fewer instructions per `tools/call` than
/// glibc's malloc in the gateway bench's profile, for the same number of allocations, and the
/// soak's memory per idle session stays within its budget (README, issue #24).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Reflow's MCP gateway data plane (with no subcommand: `serve`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr: `pretty`, or `json` (one object per line, with `trace_id` and
    /// `span_id` inside traced requests when OTEL_EXPORTER_OTLP_ENDPOINT turns tracing on).
    #[arg(
        long,
        env = "REFLOW_LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP on --listen (the default command).
    Serve(ServeArgs),
    /// Print an HS256 token signed with the config's `dev` secret.
    Token(TokenArgs),
    /// Expose one STDIO MCP server as Streamable HTTP: `bridge --listen ADDR -- CMD ARGS…`.
    Bridge(BridgeArgs),
    /// Copy this binary to DIR/reflow-dataplane (an MCPInstance init container does this so a
    /// STDIO server's own container can run the bridge).
    InstallBridge {
        /// Destination folder (a shared emptyDir in the instance Pod).
        dir: PathBuf,
    },
    /// Read the Postgres audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Print matching audit events as JSON lines, newest first.
    Query(AuditQueryArgs),
}

#[derive(Args)]
struct AuditQueryArgs {
    /// File holding the Postgres URL (or set REFLOW_DATABASE_URL).
    #[arg(long, env = "REFLOW_DATABASE_URL_FILE")]
    database_url_file: Option<PathBuf>,
    #[arg(long)]
    user: Option<String>,
    /// `namespace/name` of a Target.
    #[arg(long)]
    target: Option<String>,
    #[arg(long, value_parser = ["allow", "deny"])]
    decision: Option<String>,
    /// JSON-RPC method, e.g. tools/call.
    #[arg(long)]
    method: Option<String>,
    /// Mcp-Session-Id.
    #[arg(long)]
    session: Option<String>,
    /// Only events newer than this: 15m, 8h, 1d or seconds.
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    #[arg(long, default_value_t = 100)]
    limit: i64,
}

#[derive(Args)]
struct BridgeArgs {
    /// Address to bind; the bound address is printed as `listening on http://ADDR`.
    #[arg(long, env = "REFLOW_BRIDGE_LISTEN", default_value = "127.0.0.1:8090")]
    listen: String,
    /// File holding the bearer token clients must present (else the env var `--token-env`).
    #[arg(long, env = "REFLOW_BRIDGE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Env var holding the token itself; must start with `REFLOW_`, which the child never sees.
    #[arg(long, default_value = BRIDGE_TOKEN_ENV)]
    token_env: String,
    /// Path MCP is served at.
    #[arg(long, default_value = "/mcp")]
    path: String,
    /// Time the server gets to answer `initialize`.
    #[arg(long, env = "REFLOW_BRIDGE_INIT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    init_timeout: Duration,
    /// Time the server gets to answer any other request.
    #[arg(long, env = "REFLOW_BRIDGE_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// The STDIO server and its arguments (after `--`), run directly, never through a shell.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Env var holding the bridge's bearer token itself (when no --token-file is given).
const BRIDGE_TOKEN_ENV: &str = "REFLOW_BRIDGE_TOKEN";

#[derive(Args)]
struct ServeArgs {
    /// Folder of Target/Policy/Credential/Secret manifests (standalone mode); watched for changes.
    #[arg(
        long,
        env = "REFLOW_MANIFESTS",
        required_unless_present = "controller",
        conflicts_with = "controller"
    )]
    manifests: Option<PathBuf>,
    /// Controller base URL (controller mode): snapshots are streamed from it instead of a folder.
    #[arg(long, env = "REFLOW_CONTROLLER", requires = "controller_token_file")]
    controller: Option<String>,
    /// File holding the bearer token for the controller's API.
    #[arg(long, env = "REFLOW_CONTROLLER_TOKEN_FILE")]
    controller_token_file: Option<PathBuf>,
    /// This dataplane's name on the controller (defaults to a random `dataplane-…`).
    #[arg(long, env = "POD_NAME")]
    dataplane_name: Option<String>,
    /// Where the last good snapshot from the controller is kept, sealed with the sealing key.
    #[arg(long, env = "REFLOW_SNAPSHOT_CACHE")]
    snapshot_cache: Option<PathBuf>,
    /// Opt-in: fail `/readyz` once cut off from the controller this long (e.g. `10m`). Off by
    /// default: during a controller outage every dataplane would go unready at once.
    #[arg(long, env = "REFLOW_CUTOFF_UNREADY_AFTER", value_parser = parse_duration, requires = "controller")]
    cutoff_unready_after: Option<Duration>,
    /// Address to bind; port 0 picks a free one. The bound address is printed on stdout as
    /// `listening on http://ADDR`.
    #[arg(long, env = "REFLOW_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Gateway configuration (YAML): auth, gateway, audit, sealingKeyFile, dev.
    #[arg(long, env = "REFLOW_CONFIG")]
    config: PathBuf,
    /// INSECURE, local experiments only: skip authentication and treat every request as USER.
    #[arg(long, env = "REFLOW_INSECURE_DEV_USER", value_name = "USER")]
    insecure_dev_user: Option<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// Gateway configuration with a `dev` block.
    #[arg(long, env = "REFLOW_CONFIG")]
    config: PathBuf,
    #[command(flatten)]
    mint: reflow_host::cli::MintArgs,
}

/// `reflow-dataplane [--log-format F] --config …` means `serve`: the word is inserted before
/// parsing, so `serve`'s flags (several read env vars, such as POD_NAME in a pod) are only ever
/// parsed for `serve` and never stand in the way of another subcommand.
fn with_default_subcommand(mut args: Vec<OsString>) -> Vec<OsString> {
    let command = Cli::command();
    let names: Vec<&str> = command
        .get_subcommands()
        .map(clap::Command::get_name)
        .chain(["help"])
        .collect();
    let mut i = 1;
    while let Some(arg) = args.get(i).and_then(|a| a.to_str()) {
        match arg {
            // The one global flag may come before the subcommand.
            "--log-format" => i += 2,
            a if a.starts_with("--log-format=") => i += 1,
            "-h" | "--help" | "-V" | "--version" => return args,
            a if names.contains(&a) => return args,
            _ => break,
        }
    }
    args.insert(i.min(args.len()), OsString::from("serve"));
    args
}

fn main() -> anyhow::Result<()> {
    // SAFETY: first thing in main, before any thread exists.
    unsafe {
        reflow_dataplane::process_guard::seal(&[
            reflow_dataplane::config::SEALING_KEY_ENV,
            reflow_dataplane::config::DATABASE_URL_ENV,
            reflow_dataplane::postgres::REPLICA_TOKEN_ENV,
        ])
    };
    let cli = Cli::parse_from(with_default_subcommand(std::env::args_os().collect()));
    // Installed once, before any TLS client (JWKS, upstreams, the OTLP exporter) is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let telemetry = reflow_telemetry::init("reflow-dataplane", cli.log_format)?;
    let result = run(cli);
    // Outside the runtime (it has ended): the exporter flushes on its own thread.
    telemetry.shutdown();
    result
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = || tokio::runtime::Runtime::new().context("starting the tokio runtime");
    match cli.command {
        Command::Token(args) => {
            let request = args.mint.request().context("token scope")?;
            app::mint_dev_token(&args.config, &request)?;
        }
        Command::InstallBridge { dir } => app::install_bridge(&dir)?,
        Command::Bridge(args) => runtime()?.block_on(app::run_bridge(args.into()))?,
        Command::Audit(AuditCommand::Query(args)) => {
            runtime()?.block_on(app::audit_query(args.into()))?;
        }
        Command::Serve(args) => runtime()?.block_on(app::serve(args.into()))?,
    }
    Ok(())
}

impl From<ServeArgs> for app::ServeOptions {
    fn from(a: ServeArgs) -> Self {
        Self {
            manifests: a.manifests,
            controller: a.controller,
            controller_token_file: a.controller_token_file,
            dataplane_name: a.dataplane_name,
            snapshot_cache: a.snapshot_cache,
            cutoff_unready_after: a.cutoff_unready_after,
            listen: a.listen,
            config: a.config,
            insecure_dev_user: a.insecure_dev_user,
        }
    }
}

impl From<BridgeArgs> for app::BridgeOptions {
    fn from(a: BridgeArgs) -> Self {
        Self {
            listen: a.listen,
            token_file: a.token_file,
            token_env: a.token_env,
            path: a.path,
            init_timeout: a.init_timeout,
            request_timeout: a.request_timeout,
            command: a.command,
        }
    }
}

impl From<AuditQueryArgs> for app::AuditQuery {
    fn from(a: AuditQueryArgs) -> Self {
        Self {
            database_url_file: a.database_url_file,
            user: a.user,
            target: a.target,
            decision: a.decision,
            method: a.method,
            session: a.session,
            since: a.since,
            limit: a.limit,
        }
    }
}
