//! `reflow-dataplane`: the MCP gateway binary. `serve` (the default) runs the gateway on a folder
//! of manifests; `token` mints a development token; `bridge` exposes one STDIO server over
//! authenticated Streamable HTTP; `audit query` reads the Postgres audit log. Wiring only;
//! everything else is the library.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};
use reflow_crds::{Identity, SealingKey};
use reflow_dataplane::config::{
    AuditTarget, Config, DATABASE_URL_ENV, SEALING_KEY_ENV, parse_duration,
};
use reflow_dataplane::process_guard::secret_env;
use reflow_dataplane::{
    audit, auth, authn, controller_client, gateway, listener, metrics, net, postgres, session,
    source,
};
use reflow_telemetry::LogFormat;
use secrecy::{ExposeSecret, SecretString};
use tracing::{error, info, warn};

/// How long open connections get to finish after SIGTERM/SIGINT.
const DRAIN: Duration = Duration::from_secs(10);

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
    mint: reflow_crds::token::cli::MintArgs,
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
    unsafe { reflow_dataplane::process_guard::seal(&[SEALING_KEY_ENV, DATABASE_URL_ENV]) };
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
    match cli.command {
        Command::Token(args) => token(&args),
        Command::InstallBridge { dir } => install_bridge(&dir),
        Command::Bridge(args) => tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")?
            .block_on(bridge(args)),
        Command::Audit(AuditCommand::Query(args)) => tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")?
            .block_on(audit_query(args)),
        Command::Serve(args) => tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")?
            .block_on(serve(args)),
    }
}

fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let dev = config.require_dev()?;
    let request = args.mint.request().context("token scope")?;
    let minted = auth::mint_token(&dev.secret, &dev.issuer, &dev.audience, &request)
        .context("minting the token")?;
    // The token alone on stdout (scripts capture it); its id, for revocation, on stderr.
    eprintln!("jti: {}", minted.jti);
    println!("{}", minted.token);
    Ok(())
}

async fn audit_query(args: AuditQueryArgs) -> anyhow::Result<()> {
    let url = match (
        secret_env(DATABASE_URL_ENV).map(|s| s.expose_secret().to_owned()),
        &args.database_url_file,
    ) {
        (Some(url), _) if !url.trim().is_empty() => SecretString::from(url.trim().to_owned()),
        (_, Some(f)) => SecretString::from(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        _ => bail!("pass --database-url-file or set {DATABASE_URL_ENV}"),
    };
    let db = postgres::Database::new(&url, 2)?;
    let since_ms = args.since.map(|d| {
        let now = i64::try_from(audit::now_ms()).unwrap_or(i64::MAX);
        now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    });
    let filter = postgres::AuditFilter {
        user: args.user,
        target: args.target,
        decision: args.decision,
        method: args.method,
        session: args.session,
        since_ms,
        until_ms: None,
        limit: args.limit,
    };
    let rows = postgres::query_audit(&db, &filter).await?;
    let mut out = std::io::stdout().lock();
    for row in rows {
        serde_json::to_writer(&mut out, &row)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Sessions, audit and the notification bus, in Postgres when a database is configured.
struct Stores {
    sessions: Arc<dyn session::SessionStore>,
    audit: Arc<dyn audit::AuditSink>,
    /// Closed (flushed or spilled) on shutdown.
    pg_audit: Option<Arc<postgres::PgAuditSink>>,
    /// Only with a database: one replica needs no bus (its own streams are all there is).
    bus: Option<Arc<dyn postgres::NotificationBus>>,
}

async fn stores(config: &Config, key: &SealingKey) -> anyhow::Result<Stores> {
    let idle = Duration::from_secs(config.gateway.session_idle_seconds);
    let env_url = secret_env(DATABASE_URL_ENV).map(|s| s.expose_secret().to_owned());
    let db = match config.database_url(env_url.as_deref())? {
        Some(url) => {
            let max = config.database.as_ref().map_or(16, |d| d.max_connections);
            let db = postgres::Database::new(&url, max)?;
            // Several replicas may start together: the migrations take a lock.
            db.connect_and_migrate(Duration::from_secs(60))
                .await
                .context("preparing the database")?;
            info!("sessions and audit in Postgres");
            Some(db)
        }
        None => None,
    };
    let capacity = config.audit.capacity;
    let mut pg_audit = None;
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
        AuditTarget::Postgres(pg) => {
            let Some(db) = &db else {
                bail!("audit sink postgres needs a database URL");
            };
            let mut settings = postgres::AuditSettings::new(pg.spill_dir.clone());
            settings.batch_size = pg.batch_size;
            settings.capacity = capacity.max(pg.batch_size);
            settings.policy = pg.failure_policy;
            let sink = postgres::PgAuditSink::start(db.clone(), settings)?;
            if let Some(retention) = pg.retention {
                let db = db.clone();
                tokio::spawn(async move {
                    loop {
                        match postgres::purge_expired_audit(&db, retention).await {
                            Ok(Some(n)) if n > 0 => info!(deleted = n, "audit retention"),
                            Ok(_) => {}
                            Err(e) => warn!(error = %e, "audit retention job failed"),
                        }
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                });
            }
            pg_audit = Some(sink.clone());
            sink
        }
    };
    let (sessions, bus): (
        Arc<dyn session::SessionStore>,
        Option<Arc<dyn postgres::NotificationBus>>,
    ) = match db {
        Some(db) => {
            let bus = postgres::PgBus::start(db.clone());
            let replica = uuid::Uuid::new_v4().simple().to_string();
            let store = postgres::PgSessionStore::start(
                db,
                key.clone(),
                postgres::SessionSettings::new(idle),
                replica,
                Some(bus.session_changes()),
            );
            (store, Some(bus as Arc<dyn postgres::NotificationBus>))
        }
        None => {
            let store = session::MemorySessionStore::new(idle);
            let sweeper = store.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    sweeper.sweep();
                }
            });
            (store, None)
        }
    };
    Ok(Stores {
        sessions,
        audit,
        pg_audit,
        bus,
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(&args.config)?;
    if let Some(dir) = &args.manifests {
        // Standalone manifests hold Secrets: no STDIO child may read them.
        config.gateway.stdio.protected.add(dir, "manifests folder");
    }
    let auth: Arc<dyn authn::Authenticate> = match &args.insecure_dev_user {
        Some(_) if !net::is_loopback_listen(&args.listen) => bail!(
            "--insecure-dev-user serves without authentication: refused on {}, which is not a loopback address (use 127.0.0.1, [::1] or localhost)",
            args.listen
        ),
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
    let env_key = secret_env(SEALING_KEY_ENV).map(|s| s.expose_secret().to_owned());
    for warning in config.warnings(env_key.is_some()) {
        warn!("{warning}");
    }
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

    let stores = stores(&config, &key).await?;
    let metrics = Arc::new(metrics::Metrics::new());
    let gw = gateway::Gateway::new(gateway::Parts {
        config: config.gateway.clone(),
        snapshots,
        sessions: stores.sessions.clone(),
        auth,
        audit: stores.audit.clone(),
        metrics: metrics.clone(),
        key,
    })?;
    if let Some(bus) = stores.bus.clone() {
        gw.attach_bus(bus);
    }
    if let Some(api) = controller_instances(&args)? {
        gw.use_controller_instances(api);
    }

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if config.gateway.tls.is_some() {
        "https"
    } else {
        "http"
    };
    info!(listen = %addr, scheme, "serving");
    let max_connections = config.gateway.http.max_connections;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let stopped = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let router = gateway::router(gw.clone());
    let options = listener::ServeOptions {
        timeouts: config.gateway.http.timeouts.clone(),
        max_connections,
        metrics: Some(metrics),
    };
    let mut server = match config.gateway.tls.clone() {
        Some(tls) => {
            let listener = gateway::TlsListener::new(listener, tls, max_connections)
                .context("TLS listener")?;
            tokio::spawn(listener::serve(listener, router, options, stopped))
        }
        None => {
            let listener = gateway::LimitedListener::new(listener, max_connections);
            tokio::spawn(listener::serve(listener, router, options, stopped))
        }
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {scheme}://{addr}")?;
        out.flush()?;
    }
    tokio::select! {
        done = &mut server => {
            gw.shutdown().await;
            return done.context("server task");
        }
        signal = shutdown_signal() => info!(signal, "shutting down"),
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(DRAIN, server).await {
        Ok(done) => done.context("server task")?,
        Err(_) => warn!(after = ?DRAIN, "connections still open; exiting anyway"),
    }
    gw.shutdown().await;
    if let Some(sink) = &stores.pg_audit {
        // Written, or spilled for the next start: never lost on a clean shutdown.
        sink.close().await;
    }
    Ok(())
}

/// Copies the running binary into `dir` atomically (write aside, then rename), executable.
fn install_bridge(dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let tmp = dir.join(".reflow-dataplane.partial");
    let dest = dir.join("reflow-dataplane");
    std::fs::copy(&exe, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
    println!("installed {}", dest.display());
    Ok(())
}

async fn bridge(args: BridgeArgs) -> anyhow::Result<()> {
    if !args
        .token_env
        .starts_with(reflow_dataplane::bridge::RESERVED_ENV_PREFIX)
    {
        bail!(
            "--token-env {} must start with {} so the token never reaches the child",
            args.token_env,
            reflow_dataplane::bridge::RESERVED_ENV_PREFIX
        );
    }
    if !args.path.starts_with('/') {
        bail!("--path must start with /");
    }
    let token = match &args.token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading token file {}", path.display()))?,
        None => std::env::var(&args.token_env)
            .with_context(|| format!("no --token-file and no {}", args.token_env))?,
    };
    let Some((command, rest)) = args.command.split_first() else {
        bail!("no command given after --");
    };
    let defaults = reflow_dataplane::upstream::StdioConfig::default();
    let b = reflow_dataplane::bridge::Bridge::new(reflow_dataplane::bridge::BridgeConfig {
        command: command.clone(),
        args: rest.to_vec(),
        token: token.into(),
        init_timeout: args.init_timeout,
        request_timeout: args.request_timeout,
        stop_grace: Duration::from_millis(defaults.stop_grace_ms),
        stderr_lines_per_second: defaults.stderr_lines_per_second,
        restarts: defaults.backoff(),
    })?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    info!(listen = %addr, command, "bridging");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    let app = reflow_dataplane::bridge::router_at(b.clone(), &args.path);
    let options = listener::ServeOptions::default();
    listener::serve(listener, app, options, async {
        let signal = shutdown_signal().await;
        info!(signal, "shutting down");
    })
    .await;
    b.shutdown().await;
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

/// In controller mode, `kubernetes` Targets are served through the controller's instance API
/// with the same URL and token as the snapshot stream.
fn controller_instances(
    args: &ServeArgs,
) -> anyhow::Result<Option<reflow_dataplane::upstream::instance::ControllerApi>> {
    let (Some(url), Some(token_file)) = (&args.controller, &args.controller_token_file) else {
        return Ok(None);
    };
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("controller token file {}", token_file.display()))?;
    Ok(Some(reflow_dataplane::upstream::instance::ControllerApi {
        url: url.clone(),
        token: token.trim().to_owned().into(),
    }))
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
