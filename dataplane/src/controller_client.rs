//! Controller mode: follows the controller's snapshot stream (`GET /v1/snapshots/watch`),
//! validates each snapshot, publishes the good ones into the `SnapshotStore`, reports what it did,
//! and keeps the last good snapshot sealed on local disk for starts while the controller is away.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reflow_crds::observed::{OBSERVED_PATH, ObservedReport};
use reflow_crds::wire::{
    APPLIED_PATH, AppliedReport, DATAPLANE_HEADER, FrameKind, Outcome, WATCH_PATH, WatchFrame,
};
use reflow_crds::{SealingKey, Snapshot};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::observed::Observations;
use crate::source::SnapshotStore;

/// AAD of the sealed cache file: a sealed credential value can never be passed off as a cache.
const CACHE_AAD: &str = "reflow/snapshot-cache/v1";
/// Longest a watch stream may stay silent (the controller sends heartbeats every 10 s).
const SILENCE: Duration = Duration::from_secs(35);
/// A report that takes longer is dropped; the next snapshot or reconnect reports again.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Observations are reported at most this often, and at least this often while connected (so
/// a controller replica that just took the stream learns them).
const OBSERVED_SETTLE: Duration = Duration::from_secs(1);
const OBSERVED_EVERY: Duration = Duration::from_secs(30);

/// The link to the controller as readiness and metrics see it (issue #18 item 5): a dataplane
/// cut off from the controller keeps serving its last good snapshot (static stability), which
/// may be older and more permissive than what the controller now publishes.
#[derive(Debug)]
pub struct ControllerLink {
    connected: AtomicBool,
    /// Last time the controller confirmed the served snapshot (a frame or heartbeat arrived).
    contact: Mutex<Instant>,
    /// Opt-in: fail readiness once cut off this long (`--cutoff-unready-after`).
    unready_after: Option<Duration>,
    warned: AtomicBool,
}

impl ControllerLink {
    pub fn new(unready_after: Option<Duration>) -> Self {
        Self {
            connected: AtomicBool::new(false),
            contact: Mutex::new(Instant::now()),
            unready_after,
            warned: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        *self.contact.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.connected.store(true, Ordering::Relaxed);
        if self.warned.swap(false, Ordering::Relaxed) {
            info!("back in contact with the controller");
        }
    }

    fn lost(&self) {
        self.connected.store(false, Ordering::Relaxed);
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Time since the controller last confirmed the served snapshot (since start before any
    /// contact).
    pub fn snapshot_age(&self) -> Duration {
        self.contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// `Some(how long)` when the opt-in limit is set and the link has been down longer.
    pub fn cut_off_too_long(&self) -> Option<Duration> {
        let limit = self.unready_after?;
        let age = self.snapshot_age();
        (!self.connected() && age > limit).then_some(age)
    }

    /// Logs once per outage that the dataplane is cut off (and, with the opt-in limit, unready).
    fn warn_if_cut_off(&self) {
        let age = self.snapshot_age();
        let threshold = self.unready_after.unwrap_or(Duration::from_secs(120));
        if !self.connected() && age > threshold && !self.warned.swap(true, Ordering::Relaxed) {
            error!(
                cut_off_seconds = age.as_secs(),
                unready = self.unready_after.is_some(),
                "cut off from the controller: serving a snapshot that may be out of date"
            );
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the controller: {0}")]
    Connect(String),
    #[error("the controller answered {0}")]
    Status(u16),
    #[error("the watch stream broke: {0}")]
    Stream(String),
    #[error("the watch stream was silent for {0:?}")]
    Silent(Duration),
    #[error("unreadable frame: {0}")]
    Frame(String),
    #[error("snapshot cache {path}: {message}")]
    Cache { path: PathBuf, message: String },
}

impl ClientError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Status(_) => "status",
            Self::Stream(_) => "stream",
            Self::Silent(_) => "silent",
            Self::Frame(_) => "frame",
            Self::Cache { .. } => "cache",
        }
    }
}

/// Exponential backoff with full jitter between reconnects.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(15),
        }
    }
}

impl Backoff {
    /// The wait before attempt `n` (0-based): uniformly random in [ceiling/2, ceiling], where the
    /// ceiling doubles from `initial` up to `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let half = ceiling / 2;
        let jitter_ms = rand::random_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

#[derive(Clone)]
pub struct ControllerConfig {
    /// Base URL, e.g. `http://reflow-controller:9090`.
    pub url: String,
    pub token: SecretString,
    /// This dataplane's name on the controller (its pod name).
    pub dataplane: String,
    /// Where the last good snapshot is kept, sealed; `None` keeps nothing on disk.
    pub cache: Option<PathBuf>,
    pub key: SealingKey,
    pub backoff: Backoff,
    /// What the gateway observed of each upstream, reported to the controller.
    pub observed: Arc<Observations>,
    pub link: Arc<ControllerLink>,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    format: String,
    sealed: reflow_crds::seal::SealedValue,
}

const CACHE_FORMAT: &str = "reflow-snapshot-cache/v1";

/// Writes `snapshot` sealed under `key`, atomically (temp file + rename), readable by the owner only.
pub fn write_cache(path: &Path, key: &SealingKey, snapshot: &Snapshot) -> Result<(), ClientError> {
    let err = |message: String| ClientError::Cache {
        path: path.to_owned(),
        message,
    };
    let json = String::from_utf8(snapshot.to_json().map_err(|e| err(e.to_string()))?)
        .map_err(|e| err(e.to_string()))?;
    let file = CacheFile {
        format: CACHE_FORMAT.to_owned(),
        sealed: key.seal(CACHE_AAD, &json),
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(|e| err(e.to_string()))?;
        f.write_all(&bytes).map_err(|e| err(e.to_string()))?;
        f.sync_all().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

/// Opens the sealed cache; fails if it is missing, sealed under another key, or invalid.
pub fn read_cache(path: &Path, key: &SealingKey) -> Result<Snapshot, ClientError> {
    let err = |message: String| ClientError::Cache {
        path: path.to_owned(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let file: CacheFile = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
    if file.format != CACHE_FORMAT {
        return Err(err(format!("unknown format {:?}", file.format)));
    }
    let json = key
        .open(CACHE_AAD, &file.sealed)
        .map_err(|e| err(e.to_string()))?;
    serde_json::from_str(json.expose_secret()).map_err(|e| err(e.to_string()))
}

/// The running stream follower; dropping it stops following (the store keeps its snapshot).
pub struct ControllerClient {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControllerClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Follows the controller forever. If the first attempt fails before any snapshot is active, the
/// sealed cache (if any) is published so the dataplane serves while the controller is away.
pub fn spawn(config: ControllerConfig, store: Arc<SnapshotStore>) -> ControllerClient {
    // reqwest panics when building a client with no rustls provider; the dataplane uses ring
    // everywhere, and installing it again is a no-op. Both tasks below build clients.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let span =
        info_span!("controller_client", controller = %config.url, dataplane = %config.dataplane);
    let reporter =
        tokio::spawn(report_observations(config.clone(), store.clone()).instrument(span.clone()));
    let task = tokio::spawn(
        async move {
            let _reporter = AbortOnDrop(reporter);
            follow(config, store).await;
        }
        .instrument(span),
    );
    ControllerClient { task }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Posts what the gateway observed of each upstream: after changes (settled), and every
/// [`OBSERVED_EVERY`] while the watch stream is up (the controller takes reports only from
/// dataplanes with an open stream). Also logs a long cut-off once.
async fn report_observations(config: ControllerConfig, store: Arc<SnapshotStore>) {
    let http = match reqwest::Client::builder().no_proxy().build() {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot build the observation reporter");
            return;
        }
    };
    let url = format!("{}{OBSERVED_PATH}", config.url.trim_end_matches('/'));
    let mut changes = config.observed.subscribe();
    let mut last_sent: Option<ObservedReport> = None;
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(OBSERVED_EVERY) => { last_sent = None; }
        }
        tokio::time::sleep(OBSERVED_SETTLE).await;
        changes.mark_unchanged();
        config.link.warn_if_cut_off();
        if !config.link.connected() || !store.is_ready() {
            last_sent = None;
            continue;
        }
        let report = config.observed.report(&config.dataplane, &store.load());
        if last_sent.as_ref() == Some(&report) {
            continue;
        }
        let sent = http
            .post(&url)
            .bearer_auth(config.token.expose_secret())
            .timeout(REPORT_TIMEOUT)
            .json(&report)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => last_sent = Some(report),
            Ok(r) => {
                warn!(
                    status = r.status().as_u16(),
                    "the controller did not take the observation report"
                );
                last_sent = None;
            }
            Err(e) => {
                warn!(error = %e.without_url(), "cannot send the observation report");
                last_sent = None;
            }
        }
    }
}

async fn follow(config: ControllerConfig, store: Arc<SnapshotStore>) {
    // reqwest panics when building a client with no rustls provider; the dataplane uses ring
    // everywhere, and installing it again is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = match reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot build the controller client");
            return;
        }
    };
    let mut attempt = 0u32;
    let mut cache_tried = false;
    loop {
        let mut received = false;
        let outcome = session(&http, &config, &store, &mut received).await;
        config.link.lost();
        config.link.warn_if_cut_off();
        match outcome {
            Ok(()) => info!("the controller closed the watch stream; reconnecting"),
            Err(e) if store.is_ready() => {
                warn!(error = %e, label = e.label(), "controller unavailable; serving the last good snapshot")
            }
            Err(e) => {
                warn!(error = %e, label = e.label(), "controller unavailable and no snapshot yet; not ready")
            }
        }
        if received {
            attempt = 0;
        }
        if !store.is_ready() && !cache_tried {
            cache_tried = true;
            if let Some(path) = &config.cache {
                let (p, k) = (path.clone(), config.key.clone());
                match tokio::task::spawn_blocking(move || read_cache(&p, &k)).await {
                    Ok(Ok(snapshot)) => {
                        info!(
                            hash = snapshot.hash(),
                            controller_version = snapshot.version(),
                            "serving the sealed snapshot cache until the controller is back"
                        );
                        store.publish(snapshot);
                    }
                    Ok(Err(e)) => warn!(error = %e, "no usable snapshot cache"),
                    Err(e) => error!(error = %e, "reading the snapshot cache panicked"),
                }
            }
        }
        tokio::time::sleep(config.backoff.delay(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

async fn session(
    http: &reqwest::Client,
    config: &ControllerConfig,
    store: &Arc<SnapshotStore>,
    received: &mut bool,
) -> Result<(), ClientError> {
    let url = format!("{}{WATCH_PATH}", config.url.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .bearer_auth(config.token.expose_secret())
        .header(DATAPLANE_HEADER, &config.dataplane)
        .send()
        .await
        .map_err(|e| ClientError::Connect(e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(ClientError::Status(resp.status().as_u16()));
    }
    debug!("watch stream open");
    config.link.touch();
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(SILENCE, body.next()).await {
            Err(_) => return Err(ClientError::Silent(SILENCE)),
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(ClientError::Stream(e.without_url().to_string())),
            Ok(Some(Ok(c))) => c,
        };
        config.link.touch();
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let frame: WatchFrame =
                serde_json::from_slice(&line).map_err(|e| ClientError::Frame(e.to_string()))?;
            if frame.kind != FrameKind::Snapshot {
                continue;
            }
            let (Some(version), Some(hash), Some(snapshot)) =
                (frame.version, frame.hash, frame.snapshot)
            else {
                return Err(ClientError::Frame(
                    "a snapshot frame needs version, hash and snapshot".to_owned(),
                ));
            };
            *received = true;
            let report = apply(config, store, version, &hash, &snapshot).await;
            send_report(http, config, report);
        }
    }
}

/// Validates and installs one snapshot; the report says what happened.
async fn apply(
    config: &ControllerConfig,
    store: &Arc<SnapshotStore>,
    version: u64,
    hash: &str,
    raw: &serde_json::value::RawValue,
) -> AppliedReport {
    let mut report = AppliedReport {
        dataplane: config.dataplane.clone(),
        version,
        hash: hash.to_owned(),
        outcome: Outcome::Applied,
        message: None,
    };
    if store.is_ready() && store.load().hash() == hash {
        debug!(version, "snapshot unchanged");
        return report;
    }
    match WatchFrame::open_snapshot(version, hash, raw) {
        Err(message) => {
            error!(version, %message, "refusing an invalid snapshot; keeping the last good one");
            report.outcome = Outcome::Refused;
            report.message = Some(message);
        }
        Ok(snapshot) => {
            if let Some(path) = &config.cache {
                let (p, k, s) = (path.clone(), config.key.clone(), snapshot.clone());
                match tokio::task::spawn_blocking(move || write_cache(&p, &k, &s)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(error = %e, "cannot write the snapshot cache"),
                    Err(e) => warn!(error = %e, "writing the snapshot cache panicked"),
                }
            }
            let local = store.publish(snapshot);
            info!(
                version,
                local_version = local,
                hash,
                "snapshot from the controller applied"
            );
        }
    }
    report
}

fn send_report(http: &reqwest::Client, config: &ControllerConfig, report: AppliedReport) {
    let url = format!("{}{APPLIED_PATH}", config.url.trim_end_matches('/'));
    let req = http
        .post(url)
        .bearer_auth(config.token.expose_secret())
        .timeout(REPORT_TIMEOUT)
        .json(&report);
    tokio::spawn(
        async move {
            match req.send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => warn!(
                    status = r.status().as_u16(),
                    "the controller did not take the applied report"
                ),
                Err(e) => warn!(error = %e.without_url(), "cannot send the applied report"),
            }
        }
        .in_current_span(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SealingKey {
        SealingKey::from_bytes(&[b; 32])
    }

    fn dir() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("reflow-cache-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_cache_round_trips_sealed_and_only_opens_with_its_key() {
        let d = dir();
        let path = d.join("snapshot.sealed");
        let snap = Snapshot::empty().with_version(42);
        write_cache(&path, &key(1), &snap).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("targets"),
            "the cache is sealed, not plain JSON"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let back = read_cache(&path, &key(1)).unwrap();
        assert_eq!((back.version(), back.hash()), (42, snap.hash()));
        assert!(matches!(
            read_cache(&path, &key(2)),
            Err(ClientError::Cache { .. })
        ));
        std::fs::write(
            &path,
            b"{\"format\":\"other\",\"sealed\":{\"sealed\":\"\",\"digest\":\"\"}}",
        )
        .unwrap();
        let e = read_cache(&path, &key(1)).unwrap_err();
        assert!(e.to_string().contains("unknown format"), "{e}");
        assert!(read_cache(&d.join("missing"), &key(1)).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for _ in 0..50 {
            let d0 = b.delay(0);
            assert!(
                d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100),
                "{d0:?}"
            );
            let d3 = b.delay(3);
            assert!(
                d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800),
                "{d3:?}"
            );
            let big = b.delay(40);
            assert!(
                big >= Duration::from_secs(1) && big <= Duration::from_secs(2),
                "{big:?}"
            );
        }
    }
}
