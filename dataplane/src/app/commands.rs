//! The binary's other commands: mint a development token, query the Postgres audit log,
//! install the bridge into an instance Pod, run the STDIO bridge.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reflow_crds::token::TokenRequest;
use secrecy::{ExposeSecret, SecretString};
use tracing::info;

use super::error::{AppError, Context};
use super::serve::{print_listening, shutdown_signal};
use crate::config::{Config, DATABASE_URL_ENV};
use crate::http::listener;
use crate::process_guard::secret_env;
use crate::{audit, auth, bridge, postgres, upstream};

/// Prints an HS256 token signed with the config's `dev` secret: the token alone on stdout
/// (scripts capture it), its id (for revocation) on stderr.
pub fn mint_dev_token(config: &Path, request: &TokenRequest) -> Result<(), AppError> {
    let config = Config::load(config)?;
    let dev = config.require_dev()?;
    let minted = auth::mint_token(&dev.secret, &dev.issuer, &dev.audience, request)
        .context("minting the token")?;
    eprintln!("jti: {}", minted.jti);
    println!("{}", minted.token);
    Ok(())
}

/// `audit query`: which events to print.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// File holding the Postgres URL (else the env var REFLOW_DATABASE_URL).
    pub database_url_file: Option<PathBuf>,
    pub user: Option<String>,
    pub target: Option<String>,
    pub decision: Option<String>,
    pub method: Option<String>,
    pub session: Option<String>,
    /// Only events newer than this.
    pub since: Option<Duration>,
    pub limit: i64,
}

/// Prints matching audit events as JSON lines, newest first.
pub async fn audit_query(args: AuditQuery) -> Result<(), AppError> {
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
        _ => {
            return Err(AppError::Invalid(format!(
                "pass --database-url-file or set {DATABASE_URL_ENV}"
            )));
        }
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
        serde_json::to_writer(&mut out, &row).context("stdout")?;
        out.write_all(b"\n").context("stdout")?;
    }
    out.flush().context("stdout")
}

/// Copies the running binary into `dir` atomically (write aside, then rename), executable.
pub fn install_bridge(dir: &Path) -> Result<(), AppError> {
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

/// `bridge`: what the STDIO bridge is given on its command line.
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    pub listen: String,
    pub token_file: Option<PathBuf>,
    /// Env var holding the token itself; must start with `REFLOW_`.
    pub token_env: String,
    pub path: String,
    pub init_timeout: Duration,
    pub request_timeout: Duration,
    /// The STDIO server and its arguments, run directly, never through a shell.
    pub command: Vec<String>,
}

/// Exposes one STDIO server as authenticated Streamable HTTP until a signal.
pub async fn run_bridge(args: BridgeOptions) -> Result<(), AppError> {
    if !args.token_env.starts_with(bridge::RESERVED_ENV_PREFIX) {
        return Err(AppError::Invalid(format!(
            "--token-env {} must start with {} so the token never reaches the child",
            args.token_env,
            bridge::RESERVED_ENV_PREFIX
        )));
    }
    if !args.path.starts_with('/') {
        return Err(AppError::Invalid("--path must start with /".into()));
    }
    let token = match &args.token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading token file {}", path.display()))?,
        None => std::env::var(&args.token_env)
            .with_context(|| format!("no --token-file and no {}", args.token_env))?,
    };
    let Some((command, rest)) = args.command.split_first() else {
        return Err(AppError::Invalid("no command given after --".into()));
    };
    let defaults = upstream::StdioConfig::default();
    let b = bridge::Bridge::new(bridge::BridgeConfig {
        command: command.clone(),
        args: rest.to_vec(),
        token: token.into(),
        init_timeout: args.init_timeout,
        request_timeout: args.request_timeout,
        stop_grace: Duration::from_millis(defaults.stop_grace_ms),
        stderr_lines_per_second: defaults.stderr_lines_per_second,
        restarts: defaults.backoff(),
    })
    .context("bridge")?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("listener address")?;
    info!(listen = %addr, command, "bridging");
    print_listening(&format!("http://{addr}"))?;
    let app = bridge::router_at(b.clone(), &args.path);
    let options = listener::ServeOptions::default();
    listener::serve(listener, app, options, async {
        let signal = shutdown_signal().await;
        info!(signal, "shutting down");
    })
    .await;
    b.shutdown().await;
    Ok(())
}
