//! `reflow-dataplane`: the MCP gateway binary. `serve` (the default) runs the gateway on a folder
//! of manifests; `token` mints a development token. Wiring only; everything else is the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use reflow_crds::{Identity, SealingKey};
use reflow_dataplane::config::{AuditTarget, Config, SEALING_KEY_ENV, parse_duration};
use reflow_dataplane::{audit, auth, authn, controller_client, gateway, metrics, session, source};
use tracing::{error, info, warn};

/// How long open connections get to finish after SIGTERM/SIGINT.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    version,
    about = "Reflow's MCP gateway data plane",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `serve` flags, also accepted without the subcommand.
    #[command(flatten)]
    serve: Option<ServeArgs>,
    #[arg(
        long,
        env = "REFLOW_LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP on --listen (the default command).
    Serve(ServeArgs),
    /// Print an HS256 token signed with the config's `dev` secret.
    Token(TokenArgs),
}

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
    #[arg(long, env = "REFLOW_TOKEN_USER")]
    user: String,
    #[arg(long = "group", env = "REFLOW_TOKEN_GROUPS", value_delimiter = ',')]
    groups: Vec<String>,
    #[arg(long = "role", env = "REFLOW_TOKEN_ROLES", value_delimiter = ',')]
    roles: Vec<String>,
    /// Lifetime: 8h, 30m, 90s, 1d or seconds.
    #[arg(long, env = "REFLOW_TOKEN_TTL", default_value = "8h", value_parser = parse_duration)]
    ttl: Duration,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match (cli.command, cli.serve) {
        (Some(Command::Token(args)), _) => token(&args),
        (Some(Command::Serve(args)), _) | (None, Some(args)) => {
            // Installed once, before any TLS client (JWKS, upstreams) is built.
            let _ = rustls::crypto::ring::default_provider().install_default();
            tokio::runtime::Runtime::new()
                .context("starting the tokio runtime")?
                .block_on(serve(args))
        }
        (None, None) => bail!("nothing to do: pass --manifests and --config (see --help)"),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs on stderr; stdout carries the `listening on` line and stdout audit events.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let dev = config.require_dev()?;
    let token = auth::mint_dev_token(
        &dev.secret,
        &dev.issuer,
        &dev.audience,
        &args.user,
        &args.groups,
        &args.roles,
        args.ttl,
    )
    .context("minting the dev token")?;
    println!("{token}");
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let auth: Arc<dyn authn::Authenticate> = match &args.insecure_dev_user {
        Some(user) => {
            error!(
                user,
                "INSECURE: --insecure-dev-user disables authentication; every request is {user}. Never use this outside a laptop."
            );
            Arc::new(authn::FixedIdentity(Identity::new(
                user.as_str(),
                Vec::<String>::new(),
                Vec::<String>::new(),
            )))
        }
        None => {
            let authenticator = auth::Authenticator::new(config.require_auth()?.clone())
                .with_context(|| format!("config {}", config.path.display()))?;
            let warm = authenticator.clone();
            tokio::spawn(async move { warm.warm_up().await });
            Arc::new(authenticator)
        }
    };
    let env_key = std::env::var(SEALING_KEY_ENV).ok();
    let key = match config.sealing_key(env_key.as_deref())? {
        Some(k) => k,
        None if args.controller.is_some() => bail!(
            "controller mode needs the sealing key the controller uses (sealingKeyFile or {SEALING_KEY_ENV})"
        ),
        None => {
            warn!(
                "no sealing key (sealingKeyFile or {SEALING_KEY_ENV}); using a random one for this process"
            );
            SealingKey::from_base64(&SealingKey::generate_base64())
                .context("generating a sealing key")?
        }
    };
    let snapshots = source::SnapshotStore::new();
    let _source = start_source(&args, &key, &snapshots)?;

    let sessions =
        session::MemorySessionStore::new(Duration::from_secs(config.gateway.session_idle_seconds));
    let sweeper = sessions.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            sweeper.sweep();
        }
    });
    let capacity = config.audit.capacity;
    let audit: Arc<dyn audit::AuditSink> = match &config.audit.target {
        AuditTarget::Stdout => Arc::new(audit::JsonLinesSink::spawn(std::io::stdout(), capacity)),
        AuditTarget::File(p) => Arc::new(audit::JsonLinesSink::spawn(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening audit file {}", p.display()))?,
            capacity,
        )),
    };
    let gw = gateway::Gateway::new(gateway::Parts {
        config: config.gateway.clone(),
        snapshots,
        sessions,
        auth,
        audit,
        metrics: Arc::new(metrics::Metrics::new()),
        key,
    })?;

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    info!(listen = %addr, "serving");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, gateway::router(gw)).with_graceful_shutdown(async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    });
    let mut server = tokio::spawn(server.into_future());
    tokio::select! {
        done = &mut server => return Ok(done.context("server task")??),
        signal = shutdown_signal() => info!(signal, "shutting down"),
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(DRAIN, server).await {
        Ok(done) => done.context("server task")??,
        Err(_) => warn!(after = ?DRAIN, "connections still open; exiting anyway"),
    }
    Ok(())
}

/// Starts the snapshot source (folder watch or controller stream); it runs while the returned
/// guard is held.
fn start_source(
    args: &ServeArgs,
    key: &SealingKey,
    snapshots: &Arc<source::SnapshotStore>,
) -> anyhow::Result<Box<dyn std::any::Any + Send>> {
    if let Some(url) = &args.controller {
        let token_file = args
            .controller_token_file
            .as_ref()
            .context("--controller needs --controller-token-file")?;
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("controller token file {}", token_file.display()))?;
        let dataplane = args.dataplane_name.clone().unwrap_or_else(|| {
            format!(
                "dataplane-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        });
        info!(controller = %url, dataplane, "following the controller");
        let client = controller_client::spawn(
            controller_client::ControllerConfig {
                url: url.clone(),
                token: token.trim().to_owned().into(),
                dataplane,
                cache: args.snapshot_cache.clone(),
                key: key.clone(),
                backoff: controller_client::Backoff::default(),
            },
            snapshots.clone(),
        );
        return Ok(Box::new(client));
    }
    let dir = args
        .manifests
        .as_ref()
        .context("pass --manifests DIR or --controller URL")?;
    check_manifests_dir(dir)?;
    let watch = source::watch_manifests(dir.clone(), key.clone(), snapshots.clone())
        .with_context(|| format!("manifests {}", dir.display()))?;
    Ok(Box::new(watch))
}

/// A missing or unreadable folder fails at start with the path in the message.
fn check_manifests_dir(dir: &Path) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(dir).with_context(|| format!("manifests folder {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("manifests folder {} is not a folder", dir.display());
    }
    Ok(())
}

/// Resolves with the name of the first SIGTERM or SIGINT.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the gateway");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
