//! The dataplane's controller client against a scripted controller on loopback: it presents its
//! token and name, applies a valid snapshot and reports it, refuses a tampered one (keeping the
//! last good snapshot) and says why, and reconnects after the stream breaks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Json, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use reflow_crds::wire::{
    APPLIED_PATH, AppliedReport, DATAPLANE_HEADER, Outcome, WATCH_PATH, WatchFrame,
};
use reflow_crds::{SealingKey, Snapshot};
use reflow_dataplane::controller_client::{self, Backoff, ControllerConfig};
use reflow_dataplane::source::{SnapshotStore, compile_dir};
use secrecy::SecretString;
use tokio::sync::mpsc;

mod support;

#[derive(Clone)]
struct Fake {
    /// Lines to send on the next watch connection; the stream ends when the sender is dropped.
    streams: Arc<Mutex<Vec<mpsc::Receiver<Vec<u8>>>>>,
    connects: Arc<Mutex<Vec<(String, String)>>>,
    reports: Arc<Mutex<Vec<AppliedReport>>>,
    observed: Arc<Mutex<Vec<reflow_crds::observed::ObservedReport>>>,
}

async fn watch(State(f): State<Fake>, headers: HeaderMap) -> Response {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    f.connects
        .lock()
        .unwrap()
        .push((h("authorization"), h(DATAPLANE_HEADER)));
    let next = f.streams.lock().unwrap().pop();
    let Some(rx) = next else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
    });
    Body::from_stream(stream).into_response()
}

async fn applied(State(f): State<Fake>, Json(r): Json<AppliedReport>) -> StatusCode {
    f.reports.lock().unwrap().push(r);
    StatusCode::NO_CONTENT
}

/// The fake controller on loopback: each watch connection takes the next of `streams` (popped
/// from the end); applied and observed reports are recorded.
async fn serve_fake(
    streams: Vec<mpsc::Receiver<Vec<u8>>>,
) -> (Fake, String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let fake = Fake {
        streams: Arc::new(Mutex::new(streams)),
        connects: Arc::default(),
        reports: Arc::default(),
        observed: Arc::default(),
    };
    let app = Router::new()
        .route(WATCH_PATH, get(watch))
        .route(APPLIED_PATH, post(applied))
        .route(reflow_crds::observed::OBSERVED_PATH, post(observed))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, url, server)
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..500 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn snapshot(dir_name: &str, url: &str, key: &SealingKey, version: u64) -> Snapshot {
    let dir = support::temp_dir().join(dir_name);
    std::fs::create_dir_all(&dir).unwrap();
    support::write_single_target(&dir, "fx", &support::target_yaml("fx", url, 1000));
    compile_dir(&dir, key).unwrap().with_version(version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_good_snapshots_refuses_tampered_ones_and_reconnects() {
    let key = SealingKey::from_bytes(&[5; 32]);
    let good = snapshot("good", "http://127.0.0.1:9/a", &key, 10);
    let next = snapshot("next", "http://127.0.0.1:9/b", &key, 11);
    assert_ne!(good.hash(), next.hash());

    // A frame whose snapshot was altered after hashing: the url changes, the hash does not.
    let mut tampered = WatchFrame::snapshot_line(&next).unwrap();
    let text = String::from_utf8(tampered.clone()).unwrap();
    tampered = text
        .replace("127.0.0.1:9/b", "evil.example:9/b")
        .into_bytes();
    assert_ne!(tampered, WatchFrame::snapshot_line(&next).unwrap());

    let (tx1, rx1) = mpsc::channel(8);
    let (tx2, rx2) = mpsc::channel(8);
    // Popped from the end: the first connection gets rx1.
    let (fake, url, server) = serve_fake(vec![rx2, rx1]).await;

    let cache = support::temp_dir().join("cache.sealed");
    let store = SnapshotStore::new();
    let _client = controller_client::spawn(
        ControllerConfig {
            url,
            token: SecretString::from("tok-123"),
            dataplane: "dp-a".into(),
            cache: Some(cache.clone()),
            key: key.clone(),
            backoff: Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(100),
            },
            observed: Default::default(),
            link: std::sync::Arc::new(reflow_dataplane::controller_client::ControllerLink::new(
                None,
            )),
        },
        store.clone(),
    );

    tx1.send(WatchFrame::heartbeat_line()).await.unwrap();
    tx1.send(WatchFrame::snapshot_line(&good).unwrap())
        .await
        .unwrap();
    wait_until("the good snapshot", || store.is_ready()).await;
    assert_eq!(store.load().hash(), good.hash());
    wait_until("its report", || !fake.reports.lock().unwrap().is_empty()).await;
    let r = fake.reports.lock().unwrap()[0].clone();
    assert_eq!(
        (r.dataplane.as_str(), r.version, r.outcome),
        ("dp-a", 10, Outcome::Applied)
    );
    assert_eq!(
        fake.connects.lock().unwrap()[0],
        ("Bearer tok-123".to_owned(), "dp-a".to_owned())
    );
    // The sealed cache now holds it.
    wait_until("the cache file", || cache.exists()).await;

    tx1.send(tampered).await.unwrap();
    wait_until("the refusal", || fake.reports.lock().unwrap().len() == 2).await;
    let r = fake.reports.lock().unwrap()[1].clone();
    assert_eq!((r.version, r.outcome), (11, Outcome::Refused));
    assert!(
        r.message
            .as_deref()
            .unwrap_or_default()
            .contains("hash mismatch"),
        "{r:?}"
    );
    assert_eq!(
        store.load().hash(),
        good.hash(),
        "the last good snapshot stays"
    );
    let cached = controller_client::read_cache(&cache, &key).unwrap();
    assert_eq!(
        cached.hash(),
        good.hash(),
        "a refused snapshot is never cached"
    );

    // The stream breaks; the client reconnects and takes the next snapshot.
    drop(tx1);
    tx2.send(WatchFrame::snapshot_line(&next).unwrap())
        .await
        .unwrap();
    wait_until("the next snapshot", || store.load().hash() == next.hash()).await;
    assert_eq!(fake.connects.lock().unwrap().len(), 2);
    wait_until("its report", || fake.reports.lock().unwrap().len() == 3).await;
    assert_eq!(fake.reports.lock().unwrap()[2].outcome, Outcome::Applied);
    server.abort();
}

#[tokio::test]
async fn a_garbage_line_breaks_the_stream_but_not_the_snapshot() {
    let key = SealingKey::from_bytes(&[6; 32]);
    let good = snapshot("good2", "http://127.0.0.1:9/a", &key, 1);
    let (tx1, rx1) = mpsc::channel(8);
    let (fake, url, server) = serve_fake(vec![rx1]).await;
    let store = SnapshotStore::new();
    let _client = controller_client::spawn(
        ControllerConfig {
            url,
            token: SecretString::from("t"),
            dataplane: "dp-b".into(),
            cache: None,
            key,
            backoff: Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(50),
            },
            observed: Default::default(),
            link: std::sync::Arc::new(reflow_dataplane::controller_client::ControllerLink::new(
                None,
            )),
        },
        store.clone(),
    );
    tx1.send(WatchFrame::snapshot_line(&good).unwrap())
        .await
        .unwrap();
    wait_until("the snapshot", || store.is_ready()).await;
    tx1.send(b"{not json\n".to_vec()).await.unwrap();
    // The client drops the stream and keeps reconnecting (the fake answers 503 from now on).
    wait_until("reconnect attempts", || {
        fake.connects.lock().unwrap().len() >= 3
    })
    .await;
    assert_eq!(store.load().hash(), good.hash());
    server.abort();
}

async fn observed(
    State(f): State<Fake>,
    Json(r): Json<reflow_crds::observed::ObservedReport>,
) -> StatusCode {
    f.observed.lock().unwrap().push(r);
    StatusCode::NO_CONTENT
}

/// Issue #18 item 5 and item 4: while connected, the client reports what the gateway observed
/// of each upstream (only Targets of the served snapshot, URLs cleaned); once the stream is
/// gone the link says so, the snapshot age grows, and only a link with the opt-in limit turns
/// "cut off too long" (what fails `/readyz`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observations_are_reported_and_a_cut_off_link_says_so() {
    let key = SealingKey::from_bytes(&[7; 32]);
    let good = snapshot("good3", "http://127.0.0.1:9/a", &key, 1);
    let target = good.targets()[0].clone();
    let (tx1, rx1) = mpsc::channel(8);
    let (fake, url, server) = serve_fake(vec![rx1]).await;
    let store = SnapshotStore::new();
    let observations = Arc::new(reflow_dataplane::observed::Observations::default());
    let strict = Arc::new(controller_client::ControllerLink::new(Some(
        Duration::from_millis(300),
    )));
    let lenient = controller_client::ControllerLink::new(None);
    let _client = controller_client::spawn(
        ControllerConfig {
            url,
            token: SecretString::from("t"),
            dataplane: "dp-c".into(),
            cache: None,
            key,
            backoff: Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(50),
            },
            observed: observations.clone(),
            link: strict.clone(),
        },
        store.clone(),
    );
    tx1.send(WatchFrame::snapshot_line(&good).unwrap())
        .await
        .unwrap();
    wait_until("the snapshot", || store.is_ready()).await;
    assert!(strict.connected());
    assert!(strict.cut_off_too_long().is_none());

    observations.record_failure(
        &target.namespace,
        &target.name,
        reflow_crds::observed::ObservedReason::UpstreamUnreachable,
        "POST http://user:secret@up.example/mcp?api_key=k1 failed",
    );
    observations.record_failure(
        "elsewhere",
        "not-served",
        reflow_crds::observed::ObservedReason::NotReady,
        "x",
    );
    wait_until("an observation report", || {
        !fake.observed.lock().unwrap().is_empty()
    })
    .await;
    let report = fake.observed.lock().unwrap()[0].clone();
    assert_eq!(report.dataplane, "dp-c");
    assert_eq!(report.targets.len(), 1, "only served Targets: {report:?}");
    let t = &report.targets[0];
    assert!(!t.reachable);
    assert_eq!(
        t.error.as_deref(),
        Some("POST http://up.example/mcp failed")
    );
    assert!(report.validate().is_ok());

    // The stream ends; the fake refuses reconnects from now on.
    drop(tx1);
    wait_until("the link to drop", || !strict.connected()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(strict.snapshot_age() >= Duration::from_millis(300));
    assert!(strict.cut_off_too_long().is_some(), "opted in: unready");
    assert!(
        lenient.cut_off_too_long().is_none(),
        "default: never unready"
    );
    assert_eq!(
        store.load().hash(),
        good.hash(),
        "still serving the last good snapshot"
    );
    server.abort();
}

const BIN: &str = env!("CARGO_BIN_EXE_reflow-dataplane");

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("REFLOW_SEALING_KEY")
        .env_remove("REFLOW_MANIFESTS")
        .env_remove("REFLOW_CONTROLLER")
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn controller_mode_flags_are_checked_at_start() {
    let dir = support::temp_dir();
    let config = dir.join("gateway.yaml");
    std::fs::write(&config, "gateway: {allowedHosts: [localhost]}\n").unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "t").unwrap();
    let (config, token) = (config.to_str().unwrap(), token.to_str().unwrap());

    let (ok, err) = run(
        &[
            "--config",
            config,
            "--manifests",
            "/tmp",
            "--controller",
            "http://127.0.0.1:1",
            "--controller-token-file",
            token,
        ],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("cannot be used with"), "{err}");

    let (ok, err) = run(
        &["--config", config, "--controller", "http://127.0.0.1:1"],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("--controller-token-file"), "{err}");

    // The snapshot's credentials are sealed under the controller's key: no key, no start.
    let (ok, err) = run(
        &[
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--insecure-dev-user",
            "u",
            "--controller",
            "http://127.0.0.1:1",
            "--controller-token-file",
            token,
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("controller mode needs the sealing key"),
        "{err}"
    );
}

/// Issue #18 item 5 through the real binary: with `--cutoff-unready-after`, `/readyz` turns 503
/// once the dataplane has been cut off from the controller that long, and `/metrics` shows the
/// link down; it keeps serving its last good snapshot meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_fails_readiness_when_cut_off_only_past_the_opt_in_limit() {
    let key_b64 = SealingKey::generate_base64();
    let key = SealingKey::from_base64(&key_b64).unwrap();
    let good = snapshot("good4", "http://127.0.0.1:9/a", &key, 1);
    let (tx1, rx1) = mpsc::channel(8);
    let (_fake, url, server) = serve_fake(vec![rx1]).await;
    tx1.send(WatchFrame::snapshot_line(&good).unwrap())
        .await
        .unwrap();

    let dir = support::temp_dir();
    let config = dir.join("gateway.yaml");
    std::fs::write(&config, "gateway: {}\n").unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "t").unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--insecure-dev-user", "u", "--controller", &url])
        .args(["--controller-token-file", token.to_str().unwrap()])
        .args(["--cutoff-unready-after", "1s", "--dataplane-name", "dp-r"])
        .env("REFLOW_SEALING_KEY", &key_b64)
        .env_remove("REFLOW_MANIFESTS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the dataplane starts");
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a listening line in time")
        .unwrap()
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_owned();
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let req = http.get(format!("{base}{path}"));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let mut ready = 0;
    for _ in 0..200 {
        ready = get("/readyz").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 200, "ready once the snapshot is applied");
    assert!(
        get("/metrics")
            .await
            .1
            .contains("reflow_controller_link_up 1")
    );

    // The stream ends and reconnects are refused: past 1 s cut off, readiness fails.
    drop(tx1);
    let mut last = (0, String::new());
    for _ in 0..100 {
        last = get("/readyz").await;
        if last.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, 503, "{}", last.1);
    assert!(last.1.contains("cut off from the controller"), "{}", last.1);
    let metrics = get("/metrics").await.1;
    assert!(metrics.contains("reflow_controller_link_up 0"), "{metrics}");
    assert!(
        !metrics.contains("reflow_snapshot_age_seconds 0\n"),
        "{metrics}"
    );
    child.kill().await.unwrap();
    server.abort();
}
