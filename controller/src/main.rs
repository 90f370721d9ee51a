//! `reflow-controller`: compiles Targets, Policies and Credentials (from the cluster, or from a
//! manifests folder with `--manifests`) and streams snapshots to dataplanes; `token` mints a
//! gateway API token. Wiring only.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use reflow_controller::fleet::Fleet;
use reflow_controller::metrics::Metrics;
use reflow_controller::publish::Publisher;
use reflow_controller::roster::Rosters;
use reflow_controller::server::{self, ApiState};
use reflow_controller::source::{cluster, manifests};
use reflow_controller::token::ApiToken;
use reflow_controller::{instance, lease, status};
use reflow_crds::SealingKey;
use reflow_crds::api::MCPInstance;
use secrecy::SecretString;
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    version,
    about = "Reflow's control plane",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Compile this folder of manifests instead of watching a cluster (no Kubernetes needed).
    #[arg(long, env = "REFLOW_MANIFESTS")]
    manifests: Option<PathBuf>,
    /// Namespaces to watch in cluster mode (comma-separated); all namespaces when empty.
    #[arg(long, env = "REFLOW_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Address of the API (watch stream, reports, health, metrics); port 0 picks a free one. The
    /// bound address is printed on stdout as `listening on http://ADDR`.
    #[arg(long, env = "REFLOW_LISTEN", default_value = "0.0.0.0:9090")]
    listen: String,
    /// File holding the bearer token dataplanes present (or REFLOW_CONTROLLER_TOKEN).
    #[arg(long, env = "REFLOW_CONTROLLER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// File holding the base64 AES-256 sealing key shared with dataplanes (or REFLOW_SEALING_KEY).
    #[arg(long, env = "REFLOW_SEALING_KEY_FILE")]
    sealing_key_file: Option<PathBuf>,
    /// This replica's name (lease holder identity, event reporter).
    #[arg(long, env = "POD_NAME", default_value = "reflow-controller")]
    identity: String,
    /// Namespace and name of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "reflow-system")]
    lease_namespace: String,
    #[arg(long, env = "REFLOW_LEASE_NAME", default_value = "reflow-controller")]
    lease_name: String,
    /// Image with `reflow-dataplane`, run as the bridge in MCPInstance pods of STDIO servers.
    #[arg(
        long,
        env = "REFLOW_BRIDGE_IMAGE",
        default_value = "ghcr.io/reflow-mcp/reflow-dataplane:latest"
    )]
    bridge_image: String,
    /// Namespace of the dataplane pods (the only ones MCPInstance NetworkPolicies admit; they
    /// must carry app.kubernetes.io/name=reflow-dataplane).
    #[arg(
        long,
        env = "REFLOW_DATAPLANE_NAMESPACE",
        default_value = "reflow-system"
    )]
    dataplane_namespace: String,
    /// Log lines on stderr: `pretty`, or `json` (one object per line, with `trace_id` and
    /// `span_id` inside traced spans when OTEL_EXPORTER_OTLP_ENDPOINT turns tracing on).
    #[arg(long, env = "REFLOW_LOG_FORMAT", value_enum, default_value = "pretty")]
    log_format: reflow_telemetry::LogFormat,
    /// Seconds before an access token expires that the lease holder refreshes a user's oauth2
    /// grant (cluster mode).
    #[arg(long, env = "REFLOW_REFRESH_BEFORE", default_value_t = 60)]
    refresh_before: u64,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Mint a gateway API token (HS256, with `exp` and `jti`) for an issuer the dataplanes trust.
    Token(Box<TokenArgs>),
    /// Delete every MCPInstance (in `--namespaces`, else all); their Pods, Services,
    /// NetworkPolicies and credential Secrets follow. The chart runs it before `helm uninstall`.
    DeleteInstances(DeleteInstancesArgs),
}

#[derive(clap::Args)]
struct DeleteInstancesArgs {
    #[arg(long, env = "REFLOW_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
}

async fn delete_instances(args: &DeleteInstancesArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let n = instance::cleanup::delete_all(&client, &args.namespaces)
        .await
        .context("deleting MCPInstances")?;
    println!("deleted {n} MCPInstance(s)");
    Ok(())
}

#[derive(clap::Args)]
struct TokenArgs {
    /// File holding the issuer's HS256 secret (at least 32 bytes), e.g. a mounted Secret.
    #[arg(long, env = "REFLOW_TOKEN_SECRET_FILE")]
    secret_file: PathBuf,
    #[arg(long, env = "REFLOW_TOKEN_ISSUER", default_value = "reflow")]
    issuer: String,
    #[arg(long, env = "REFLOW_TOKEN_AUDIENCE", default_value = "reflow")]
    audience: String,
    #[command(flatten)]
    mint: reflow_host::cli::MintArgs,
}

/// Prints the token on stdout and its id (what a TokenRevocation names) on stderr.
fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let secret = std::fs::read_to_string(&args.secret_file)
        .with_context(|| format!("token secret {}", args.secret_file.display()))?;
    let request = args.mint.request().context("token scope")?;
    let minted = reflow_crds::token::mint_token(
        &SecretString::from(secret.trim().to_owned()),
        &args.issuer,
        &args.audience,
        &request,
    )
    .context("minting the token")?;
    eprintln!("jti: {}", minted.jti);
    println!("{}", minted.token);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Token(args)) = &cli.command {
        return token(args);
    }
    // Installed once, before the kube client or the OTLP exporter builds its TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(Command::DeleteInstances(args)) = &cli.command {
        return tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")?
            .block_on(delete_instances(args));
    }
    let telemetry = reflow_telemetry::init("reflow-controller", cli.log_format)?;
    let result = tokio::runtime::Runtime::new()
        .context("starting the tokio runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    // After the runtime has ended: the exporter flushes on its own thread.
    telemetry.shutdown();
    result
}

fn secret_from(file: Option<&PathBuf>, env: &str, what: &str) -> anyhow::Result<String> {
    if let Ok(v) = std::env::var(env) {
        return Ok(v);
    }
    let Some(file) = file else {
        bail!("{what}: pass its file or set {env}");
    };
    std::fs::read_to_string(file).with_context(|| format!("{what} {}", file.display()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let token = ApiToken::new(&SecretString::from(secret_from(
        cli.token_file.as_ref(),
        "REFLOW_CONTROLLER_TOKEN",
        "controller token",
    )?))?;
    let key = SealingKey::from_base64(&secret_from(
        cli.sealing_key_file.as_ref(),
        "REFLOW_SEALING_KEY",
        "sealing key",
    )?)
    .context("sealing key")?;
    let publisher = Arc::new(Publisher::new());
    let metrics = Arc::new(Metrics::new());
    let fleet = Fleet::default();

    // Held for the life of the process: dropping a source stops it.
    let mut guards: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let mut instance_client = None;
    let mut shutdown: Option<Shutdown> = None;
    match &cli.manifests {
        Some(dir) => {
            info!(dir = %dir.display(), "folder mode: no cluster, status at /v1/status");
            guards.push(Box::new(
                manifests::watch(dir.clone(), key.clone(), publisher.clone(), metrics.clone())
                    .with_context(|| format!("manifests {}", dir.display()))?,
            ));
        }
        None => {
            let mode = start_cluster_mode(&cli, &key, &publisher, &metrics, &fleet).await?;
            guards.extend(mode.guards);
            instance_client = Some(mode.client);
            shutdown = Some(mode.shutdown);
        }
    }

    // Listening for SIGTERM before announcing the address: a supervisor (or a test) that stops
    // the process right after must get the orderly shutdown, not the default disposition.
    let term = sigterm();
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let addr = listener.local_addr()?;
    info!(listen = %addr, "serving");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    let app = server::router(ApiState {
        published: publisher.subscribe(),
        fleet,
        token,
        metrics,
        heartbeat: server::HEARTBEAT,
        grants: instance_client
            .as_ref()
            .map(|_| reflow_controller::grants::GrantsApi::new(key.clone())),
        instances: instance_client,
    });
    tokio::select! {
        r = axum::serve(listener, app) => r.context("serving")?,
        _ = tokio::signal::ctrl_c() => warn!("interrupted; shutting down"),
        _ = term => info!("SIGTERM; shutting down"),
    }
    // Writers stop first, then the Lease goes back: a successor takes over within a second
    // instead of waiting out this replica's term.
    drop(guards);
    if let Some(s) = shutdown {
        s.run().await;
    }
    Ok(())
}

/// What a replica hands back on the way out: its Lease (if it holds it) and its roster.
struct Shutdown {
    client: kube::Client,
    lease: lease::LeaseConfig,
    rosters: Rosters,
}

impl Shutdown {
    async fn run(self) {
        let bounded = Duration::from_secs(3);
        match tokio::time::timeout(bounded, lease::release(self.client, &self.lease)).await {
            Ok(Ok(true)) => info!("lease released"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(error = %e, "lease not released"),
            Err(_) => warn!("lease release timed out"),
        }
        match tokio::time::timeout(bounded, self.rosters.withdraw()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "roster not deleted"),
            Err(_) => warn!("roster deletion timed out"),
        }
    }
}

/// What cluster mode runs besides the API: held until shutdown.
struct ClusterMode {
    guards: Vec<Box<dyn std::any::Any + Send>>,
    client: kube::Client,
    shutdown: Shutdown,
}

/// Cluster mode: the watch source, the lease, rosters, the status writer and the MCPInstance
/// controller.
async fn start_cluster_mode(
    cli: &Cli,
    key: &SealingKey,
    publisher: &Arc<Publisher>,
    metrics: &Arc<Metrics>,
    fleet: &Fleet,
) -> anyhow::Result<ClusterMode> {
    let mut guards: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (use --manifests DIR to run without a cluster)")?;
    let namespaces = if cli.namespaces.is_empty() {
        cluster::Namespaces::All
    } else {
        cluster::Namespaces::List(cli.namespaces.clone())
    };
    let source = cluster::start(
        client.clone(),
        namespaces,
        key.clone(),
        publisher.clone(),
        metrics.clone(),
    );
    let lease_config = lease::LeaseConfig {
        namespace: cli.lease_namespace.clone(),
        name: cli.lease_name.clone(),
        identity: cli.identity.clone(),
        duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    };
    let (leading, lease_task) = lease::spawn(client.clone(), lease_config.clone());
    // Every replica publishes the dataplanes it serves; the lease holder counts them all.
    let lease_config_for_release = lease_config.clone();
    let rosters = Rosters::new(client.clone(), lease_config);
    let rosters_for_release = rosters.clone();
    let roster_task = rosters.clone().spawn_publisher(fleet.clone());
    let writer = status::StatusWriter::new(client.clone(), &cli.identity, metrics.clone());
    let status_task = status::spawn(
        writer,
        Arc::new(source.stores.clone()),
        publisher.subscribe(),
        fleet.clone(),
        Some(rosters),
        leading.clone(),
    );
    guards.push(Box::new(AbortOnDrop(roster_task)));
    // Users' oauth2 grants: refreshed by the lease holder only.
    let refresher = reflow_controller::refresher::Refresher {
        client: client.clone(),
        secrets: source.stores.secrets.clone(),
        key: key.clone(),
        published: publisher.subscribe(),
        leading: leading.clone(),
        metrics: metrics.clone(),
        config: reflow_controller::refresher::RefreshConfig {
            before: Duration::from_secs(cli.refresh_before),
            ..Default::default()
        },
    }
    .spawn();
    guards.push(Box::new(AbortOnDrop(refresher)));
    let shutdown = Shutdown {
        client: client.clone(),
        lease: lease_config_for_release,
        rosters: rosters_for_release,
    };
    let ctx = Arc::new(instance::Context {
        client: client.clone(),
        leading,
        published: publisher.subscribe(),
        config: instance::InstanceConfig {
            bridge_image: cli.bridge_image.clone(),
            dataplane_labels: [(
                "app.kubernetes.io/name".to_owned(),
                "reflow-dataplane".to_owned(),
            )]
            .into(),
            dataplane_namespace: cli.dataplane_namespace.clone(),
            key: key.clone(),
        },
        metrics: metrics.clone(),
    });
    let instances_task = tokio::spawn(run_instances(
        client.clone(),
        namespaces_for_instances(&cli.namespaces),
        ctx,
    ));
    guards.push(Box::new(AbortOnDrop(instances_task)));
    guards.push(Box::new(source));
    guards.push(Box::new(AbortOnDrop(lease_task)));
    guards.push(Box::new(AbortOnDrop(status_task)));
    Ok(ClusterMode {
        guards,
        client,
        shutdown,
    })
}

/// The MCPInstance controller (kube-runtime): reconciles on instance changes and on changes
/// of the Pods it owns.
async fn run_instances(
    client: kube::Client,
    namespaces: Option<Vec<String>>,
    ctx: Arc<instance::Context>,
) {
    use futures::StreamExt;
    use kube::runtime::{Controller, watcher};
    let apis: Vec<(kube::Api<MCPInstance>, kube::Api<Pod>)> = match namespaces {
        None => vec![(kube::Api::all(client.clone()), kube::Api::all(client))],
        Some(list) => list
            .iter()
            .map(|ns| {
                (
                    kube::Api::namespaced(client.clone(), ns),
                    kube::Api::namespaced(client.clone(), ns),
                )
            })
            .collect(),
    };
    let runs = apis.into_iter().map(|(instances, pods)| {
        // Every instance again when what Pods are built from changes (a new pod.template).
        let pod_inputs = tokio_stream::wrappers::WatchStream::new(ctx.published.clone())
            .map(|p| p.map(|p| instance::pod_inputs_digest(&p.snapshot)))
            .scan(None, |last, digest| {
                let changed = digest.is_some() && *last != digest;
                *last = digest;
                futures::future::ready(Some(changed))
            })
            .filter(|changed| futures::future::ready(*changed))
            .map(|_| ());
        Controller::new(instances, watcher::Config::default())
            .owns(
                pods,
                watcher::Config::default().labels(instance::children::INSTANCE_LABEL),
            )
            .reconcile_all_on(pod_inputs)
            .run(instance::reconcile, instance::error_policy, ctx.clone())
            .for_each(|_| async {})
    });
    futures::future::join_all(runs).await;
}

fn namespaces_for_instances(list: &[String]) -> Option<Vec<String>> {
    (!list.is_empty()).then(|| list.to_vec())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Registers the SIGTERM handler now (not at first poll) and resolves when one arrives.
fn sigterm() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let registered = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut s) = registered {
            s.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}
