//! `serve`: loads the configuration, starts the snapshot source and the stores, builds the
//! `App` and serves it on the listener until SIGTERM/SIGINT, then drains.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reflow_crds::{Identity, SealingKey};
use tracing::{error, info, warn};

use super::error::{AppError, Context};
use super::{App, AppConfig, stores};
use crate::config::{Config, SEALING_KEY_ENV};
use crate::http::listener;
use crate::process_guard::secret_env;
use crate::upstream::instance::ControllerApi;
use crate::{auth, authn, controller_client, http, source};
use secrecy::ExposeSecret;

/// How long open connections get to finish after SIGTERM/SIGINT.
const DRAIN: Duration = Duration::from_secs(10);

/// What `reflow-dataplane serve` is given on its command line.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Folder of manifests (standalone mode), watched for changes.
    pub manifests: Option<PathBuf>,
    /// Controller base URL (controller mode).
    pub controller: Option<String>,
    /// File holding the bearer token for the controller's API.
    pub controller_token_file: Option<PathBuf>,
    /// This dataplane's name on the controller (defaults to a random `dataplane-…`).
    pub dataplane_name: Option<String>,
    /// Where the last good snapshot from the controller is kept, sealed.
    pub snapshot_cache: Option<PathBuf>,
    /// Opt-in: `/readyz` fails once cut off from the controller this long.
    pub cutoff_unready_after: Option<Duration>,
    /// Address to bind; port 0 picks a free one.
    pub listen: String,
    /// Gateway configuration (YAML).
    pub config: PathBuf,
    /// INSECURE: skip authentication and treat every request as this user.
    pub insecure_dev_user: Option<String>,
}

/// Runs the gateway until a signal, printing `listening on SCHEME://ADDR` once bound.
pub async fn serve(opts: ServeOptions) -> Result<(), AppError> {
    let mut config = Config::load(&opts.config)?;
    if let Some(dir) = &opts.manifests {
        // Standalone manifests hold Secrets: no STDIO child may read them.
        config.gateway.stdio.protected.add(dir, "manifests folder");
    }
    let auth = authenticator(&opts, &config)?;
    let key = sealing_key(&opts, &config)?;
    let snapshots = source::SnapshotStore::new();
    let observed = Arc::new(crate::observed::Observations::default());
    let link = opts.controller.is_some().then(|| {
        Arc::new(controller_client::ControllerLink::new(
            opts.cutoff_unready_after,
        ))
    });
    let _source = start_source(&opts, &key, &snapshots, (&observed, link.as_ref()))?;

    // `_reserved` holds a port-0 listen's concrete port for thread-per-core until serve returns.
    let (early, addr, _reserved) =
        bind_early(&opts.listen, config.gateway.http.thread_per_core).await?;
    let scheme = if config.gateway.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let stores = stores(&config, &key, &format!("{scheme}://{addr}")).await?;
    let mut app_config = AppConfig::new(
        config.gateway.clone(),
        snapshots,
        stores.sessions.clone(),
        auth,
        stores.audit.clone(),
        key,
    );
    app_config.bus = stores.bus.clone();
    app_config.replicas = stores.replicas.clone();
    app_config.instances = controller_instances(&opts)?;
    app_config.observed = observed;
    app_config.controller_link = link;
    wire_console_and_connections(&opts, &stores, &mut app_config);
    let app = App::build(app_config)?;

    let max_connections = config.gateway.http.max_connections;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let router = app.router();
    let options = listener::ServeOptions {
        timeouts: config.gateway.http.timeouts.clone(),
        max_connections,
        metrics: Some(app.gateway().metrics.clone()),
    };
    let (addr, mut server) = if config.gateway.http.thread_per_core {
        let at = addr;
        let cores = http::percore::Cores::all(config.gateway.http.direct_upstream);
        let tls = config.gateway.tls.clone();
        let served = http::percore::serve((at, tls), cores, router, options, stop_rx)
            .with_context(|| format!("binding {} on {} cores", opts.listen, cores.count))?;
        let addr = served.addr;
        (addr, tokio::task::spawn_blocking(move || served.join()))
    } else {
        let listener = match early {
            Some(l) => l,
            None => bind(&opts.listen).await?,
        };
        let addr = listener.local_addr().context("listener address")?;
        let server = serve_plain(
            listener,
            config.gateway.tls.clone(),
            router,
            options,
            stop_rx,
        )?;
        (addr, server)
    };
    info!(listen = %addr, scheme, "serving");
    print_listening(&format!("{scheme}://{addr}"))?;
    tokio::select! {
        done = &mut server => {
            app.shutdown().await;
            done.context("server task")?;
            return Ok(());
        }
        signal = shutdown_signal() => info!(signal, "shutting down"),
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(DRAIN, server).await {
        Ok(done) => done.context("server task")?,
        Err(_) => warn!(after = ?DRAIN, "connections still open; exiting anyway"),
    }
    app.shutdown().await;
    if let Some(sink) = &stores.pg_audit {
        // Written, or spilled for the next start: never lost on a clean shutdown.
        sink.close().await;
    }
    Ok(())
}

/// The console's reads (database, this dataplane's name) and, in standalone mode, the folder
/// where users' connections are kept.
fn wire_console_and_connections(
    opts: &ServeOptions,
    stores: &super::Stores,
    app_config: &mut AppConfig,
) {
    app_config.console.database = stores.database.clone();
    if let Some(name) = opts
        .dataplane_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
    {
        app_config.console.dataplane = name;
    }
    if let Some(api) = &app_config.instances {
        // Controller mode: the controller writes connections as Secrets and Credentials.
        match crate::connect::ControllerGrants::new(&api.url, api.token.clone()) {
            Ok(g) => app_config.grant_store = Some(Arc::new(g)),
            Err(e) => warn!(error = %e, "connecting users' credentials is not available"),
        }
    } else if opts.controller.is_none()
        && let Some(dir) = &opts.manifests
    {
        app_config.connections = Some(crate::connect::ConnectionStore::in_manifests(
            dir,
            app_config.key.clone(),
        ));
    }
}

/// Serves on one plain (or TLS) listener until `stop` turns true.
fn serve_plain(
    listener: tokio::net::TcpListener,
    tls: Option<http::TlsConfig>,
    router: axum::Router,
    options: listener::ServeOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, AppError> {
    let max_connections = options.max_connections;
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    Ok(match tls {
        Some(tls) => {
            let listener =
                http::TlsListener::new(listener, tls, max_connections).context("TLS listener")?;
            tokio::spawn(listener::serve(listener, router, options, stopped))
        }
        None => {
            let listener = http::LimitedListener::new(listener, max_connections);
            tokio::spawn(listener::serve(listener, router, options, stopped))
        }
    })
}

/// The listener, bound before the stores start so replicas advertise the address they really
/// serve on, and that address. Thread-per-core binds its own `SO_REUSEPORT` listeners later, on
/// the resolved address, so nothing listens here for it; a port-0 listen is first turned into a
/// concrete port by a bound, not listening, `SO_REUSEPORT` socket (returned, to be held until
/// the cores have bound), so every core binds that one port and replicas advertise it.
async fn bind_early(listen: &str, thread_per_core: bool) -> Result<Early, AppError> {
    if thread_per_core {
        let at = resolve_listen(listen).await?;
        if at.port() != 0 {
            return Ok((None, at, None));
        }
        let socket = if at.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .context("socket")?;
        socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
        socket.set_reuseport(true).context("SO_REUSEPORT")?;
        socket
            .bind(at)
            .with_context(|| format!("binding {listen}"))?;
        let addr = socket.local_addr().context("listener address")?;
        return Ok((None, addr, Some(socket)));
    }
    let listener = bind(listen).await?;
    let addr = listener.local_addr().context("listener address")?;
    Ok((Some(listener), addr, None))
}

/// The plain listener (or none for thread-per-core), the address served, and a reserved port.
type Early = (
    Option<tokio::net::TcpListener>,
    std::net::SocketAddr,
    Option<tokio::net::TcpSocket>,
);

/// A plain TCP listener on `listen`.
async fn bind(listen: &str) -> Result<tokio::net::TcpListener, AppError> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))
}

/// The first address `listen` (`host:port`) resolves to.
async fn resolve_listen(listen: &str) -> Result<std::net::SocketAddr, AppError> {
    tokio::net::lookup_host(listen)
        .await
        .with_context(|| format!("resolving {listen}"))?
        .next()
        .ok_or_else(|| AppError::Invalid(format!("{listen} resolves to no address")))
}

/// `listening on URL` alone on stdout: scripts and tests wait for it.
pub(super) fn print_listening(url: &str) -> Result<(), AppError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {url}").context("stdout")?;
    out.flush().context("stdout")
}

fn authenticator(
    opts: &ServeOptions,
    config: &Config,
) -> Result<Arc<dyn authn::Authenticate>, AppError> {
    Ok(match &opts.insecure_dev_user {
        Some(_) if !http::net::is_loopback_listen(&opts.listen) => {
            return Err(AppError::Invalid(format!(
                "--insecure-dev-user serves without authentication: refused on {}, which is not a loopback address (use 127.0.0.1, [::1] or localhost)",
                opts.listen
            )));
        }
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
    })
}

fn sealing_key(opts: &ServeOptions, config: &Config) -> Result<SealingKey, AppError> {
    let env_key = secret_env(SEALING_KEY_ENV).map(|s| s.expose_secret().to_owned());
    for warning in config.warnings(env_key.is_some()) {
        warn!("{warning}");
    }
    Ok(match config.sealing_key(env_key.as_deref())? {
        Some(k) => k,
        None if opts.controller.is_some() => {
            return Err(AppError::Invalid(format!(
                "controller mode needs the sealing key the controller uses (sealingKeyFile or {SEALING_KEY_ENV})"
            )));
        }
        None => {
            warn!(
                "no sealing key (sealingKeyFile or {SEALING_KEY_ENV}); using a random one for this process"
            );
            SealingKey::from_base64(&SealingKey::generate_base64())
                .context("generating a sealing key")?
        }
    })
}

/// Starts the snapshot source (folder watch or controller stream); it runs while the returned
/// guard is held.
fn start_source(
    opts: &ServeOptions,
    key: &SealingKey,
    snapshots: &Arc<source::SnapshotStore>,
    (observed, link): (
        &Arc<crate::observed::Observations>,
        Option<&Arc<controller_client::ControllerLink>>,
    ),
) -> Result<Box<dyn std::any::Any + Send>, AppError> {
    if let (Some(url), Some(link)) = (&opts.controller, link) {
        let token_file = opts
            .controller_token_file
            .as_ref()
            .context("--controller needs --controller-token-file")?;
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("controller token file {}", token_file.display()))?;
        let dataplane = opts.dataplane_name.clone().unwrap_or_else(|| {
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
                cache: opts.snapshot_cache.clone(),
                key: key.clone(),
                backoff: controller_client::Backoff::default(),
                observed: observed.clone(),
                link: link.clone(),
            },
            snapshots.clone(),
        );
        return Ok(Box::new(client));
    }
    let dir = opts
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
fn controller_instances(opts: &ServeOptions) -> Result<Option<ControllerApi>, AppError> {
    let (Some(url), Some(token_file)) = (&opts.controller, &opts.controller_token_file) else {
        return Ok(None);
    };
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("controller token file {}", token_file.display()))?;
    Ok(Some(ControllerApi {
        url: url.clone(),
        token: token.trim().to_owned().into(),
    }))
}

/// A missing or unreadable folder fails at start with the path in the message.
fn check_manifests_dir(dir: &Path) -> Result<(), AppError> {
    let meta =
        std::fs::metadata(dir).with_context(|| format!("manifests folder {}", dir.display()))?;
    if !meta.is_dir() {
        return Err(AppError::Invalid(format!(
            "manifests folder {} is not a folder",
            dir.display()
        )));
    }
    Ok(())
}

/// Resolves with the name of the first SIGTERM or SIGINT.
pub async fn shutdown_signal() -> &'static str {
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
