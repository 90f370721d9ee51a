//! The `reflow-dataplane` binary end to end: `token` mints a JWT that `serve` accepts, SIGTERM
//! stops it cleanly, and bad configs or a missing manifests folder fail at start with a clear
//! message. Every process listens on loopback only and is bounded in time.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_reflow-dataplane");
const SECRET: &str = "cli-test-secret-0123456789abcdef0123456789";
const DEADLINE: Duration = Duration::from_secs(30);

/// A fresh folder under the target dir with a config and an empty manifests folder.
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(config: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cli-{}", uuid::Uuid::new_v4().simple()));
        must(std::fs::create_dir_all(dir.join("manifests")));
        must(std::fs::write(dir.join("gateway.yaml"), config));
        Self { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.join("gateway.yaml")
    }

    fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn good_config() -> String {
    format!(
        "dev:\n  issuer: reflow-dev\n  audience: reflow\n  hs256Secret: {SECRET}\n\
         gateway:\n  allowedHosts: [127.0.0.1, localhost]\n\
         audit: {{sink: file, path: audit.jsonl}}\n"
    )
}

fn must<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Kills the child (by its PID, through the handle) if the test did not stop it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Running {
    /// Waits at most `limit` for the process to exit on its own.
    fn wait_for_exit(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
                Ok(None) => panic!("process {} still running after {limit:?}", self.0.id()),
                Err(e) => panic!("waiting for process: {e}"),
            }
        }
    }
}

/// Runs the binary to completion (at most `DEADLINE`); returns (status, stdout, stderr).
fn run(args: &[&str]) -> (ExitStatus, String, String) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-run-{}", uuid::Uuid::new_v4().simple()));
    must(std::fs::create_dir_all(&dir));
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let child = must(
        Command::new(BIN)
            .args(args)
            .env_remove("REFLOW_SEALING_KEY")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(must(std::fs::File::create(&out)))
            .stderr(must(std::fs::File::create(&err)))
            .spawn(),
    );
    let status = Running(child).wait_for_exit(DEADLINE);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let result = (status, read(&out), read(&err));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn token(config: &Path, user: &str, groups: &[&str]) -> String {
    let mut args = vec!["token", "--config", must_str(config), "--user", user];
    for g in groups {
        args.extend(["--group", g]);
    }
    args.extend(["--ttl", "10m"]);
    let (status, out, err) = run(&args);
    assert!(status.success(), "token failed: {err}");
    out.trim().to_owned()
}

fn must_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
}

/// Starts `serve` on 127.0.0.1:0 and returns it with the address it printed.
fn serve(fx: &Fixture) -> (Running, String) {
    let child = must(
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(fx.config())
            .arg("--manifests")
            .arg(fx.manifests())
            .env_remove("REFLOW_SEALING_KEY")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(must(std::fs::File::create(fx.dir.join("serve.log"))))
            .spawn(),
    );
    let mut running = Running(child);
    let stdout = running.0.stdout.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Some(stdout) = stdout else { return };
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on http://") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(addr) => (running, addr),
        Err(_) => {
            drop(running);
            let log = std::fs::read_to_string(fx.dir.join("serve.log")).unwrap_or_default();
            panic!("serve printed no `listening on` line within {DEADLINE:?}:\n{log}")
        }
    }
}

fn initialize() -> Value {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "cli-test", "version": "0"}
        }
    })
}

async fn post(addr: &str, bearer: Option<&str>) -> reqwest::Response {
    let client = must(
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build(),
    );
    let mut req = client
        .post(format!("http://{addr}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&initialize());
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    must(req.send().await)
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_token_is_accepted_by_serve_and_sigterm_stops_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fx = Fixture::new(&good_config());
    let jwt = token(&fx.config(), "alice", &["developers"]);
    assert_eq!(jwt.split('.').count(), 3, "not a JWT: {jwt}");

    let (mut gw, addr) = serve(&fx);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    let ok = post(&addr, Some(&jwt)).await;
    assert_eq!(ok.status(), 200);
    assert!(ok.headers().contains_key("mcp-session-id"));
    let body: Value = must(ok.json().await);
    assert_eq!(body["result"]["serverInfo"]["name"], "reflow", "{body}");

    let missing = post(&addr, None).await;
    assert_eq!(missing.status(), 401);
    assert!(missing.headers().contains_key("www-authenticate"));

    let forged = must(reflow_dataplane::auth::mint_dev_token(
        &SecretString::from("another-secret-0123456789abcdef0123456789"),
        "reflow-dev",
        "reflow",
        "alice",
        &["developers".to_owned()],
        &[],
        Duration::from_secs(600),
    ));
    assert_eq!(post(&addr, Some(&forged)).await.status(), 401);

    // Graceful shutdown on SIGTERM, sent to this child's PID only.
    let pid = gw.0.id().to_string();
    let killed = must(Command::new("kill").args(["-TERM", &pid]).status());
    assert!(killed.success());
    let status = gw.wait_for_exit(Duration::from_secs(15));
    assert!(status.success(), "exit after SIGTERM: {status}");

    let audit = std::fs::read_to_string(fx.dir.join("audit.jsonl")).unwrap_or_default();
    assert!(!audit.contains(SECRET) && !audit.contains(&jwt));
}

#[test]
fn cli_bad_config_fails_with_a_clear_message() {
    let fx = Fixture::new("autth: {}\n");
    let config = must_str(&fx.config()).to_owned();
    let manifests = must_str(&fx.manifests()).to_owned();
    let (status, out, err) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--config",
        &config,
        "--manifests",
        &manifests,
    ]);
    assert!(!status.success());
    assert!(err.contains("unknown field `autth`"), "{err}");
    assert!(err.contains(&config), "the message names the file: {err}");
    assert!(!out.contains("listening on"), "{out}");

    let weak = Fixture::new("dev: {hs256Secret: too-short}\n");
    let (status, _, err) = run(&["token", "--config", must_str(&weak.config()), "--user", "a"]);
    assert!(!status.success());
    assert!(err.contains("at least 32 bytes"), "{err}");
    assert!(
        !err.contains("too-short"),
        "the secret is never printed: {err}"
    );

    let no_dev = Fixture::new("gateway: {allowedHosts: [localhost]}\n");
    let (status, _, err) = run(&[
        "token",
        "--config",
        must_str(&no_dev.config()),
        "--user",
        "a",
    ]);
    assert!(!status.success());
    assert!(err.contains("no `dev` block"), "{err}");

    let (status, _, err) = run(&[
        "token",
        "--config",
        "/nonexistent/reflow.yaml",
        "--user",
        "a",
    ]);
    assert!(!status.success());
    assert!(
        err.contains("reading config /nonexistent/reflow.yaml"),
        "{err}"
    );
}

#[test]
fn cli_missing_manifests_folder_fails_at_start() {
    let fx = Fixture::new(&good_config());
    let missing = fx.dir.join("no-such-folder");
    let (status, out, err) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--config",
        must_str(&fx.config()),
        "--manifests",
        must_str(&missing),
    ]);
    assert!(!status.success());
    assert!(err.contains(must_str(&missing)), "{err}");
    assert!(!out.contains("listening on"), "{out}");
}

#[test]
fn cli_token_mints_scoped_tokens_and_prints_the_jti() {
    let fx = Fixture::new(&good_config());
    let config = must_str(&fx.config()).to_owned();
    let (status, out, err) = run(&[
        "token",
        "--config",
        &config,
        "--user",
        "ci-bot",
        "--target",
        "dev-tools/*",
        "--permission",
        "list",
        "--source-range",
        "10.0.0.0/8,127.0.0.1",
        "--window",
        "08:00-18:00",
        "--env",
        "staging",
        "--ttl",
        "15m",
    ]);
    assert!(status.success(), "{err}");
    let jti = err
        .lines()
        .find_map(|l| l.strip_prefix("jti: "))
        .unwrap_or_else(|| panic!("no jti on stderr: {err}"));
    let payload = out.trim().split('.').nth(1).unwrap_or_default();
    let claims: Value = must(serde_json::from_slice(&must(base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        payload,
    ))));
    assert_eq!(claims["jti"], jti);
    assert_eq!(claims["sub"], "ci-bot");
    assert_eq!(claims["env"], "staging");
    assert_eq!(
        claims["reflow"],
        json!({
            "targets": ["dev-tools/*"],
            "permissions": ["list"],
            "sourceRanges": ["10.0.0.0/8", "127.0.0.1"],
            "window": "08:00-18:00"
        })
    );
    let exp = claims["exp"].as_u64().unwrap_or_default();
    let iat = claims["iat"].as_u64().unwrap_or_default();
    assert_eq!(exp - iat, 900, "exp is always set");

    let (status, _, err) = run(&[
        "token",
        "--config",
        &config,
        "--user",
        "u",
        "--permission",
        "admin",
    ]);
    assert!(!status.success());
    assert!(err.contains("token scope"), "{err}");
    assert!(err.contains("permissions"), "{err}");
}

/// A pod's environment sets serve's env-backed flags (POD_NAME, REFLOW_CONFIG, …); other
/// subcommands run there with `kubectl exec` must not be taken for a half-configured `serve`.
#[test]
fn subcommands_run_in_a_pod_environment_and_no_subcommand_means_serve() {
    let fx = Fixture::new(&good_config());
    let config = must_str(&fx.config()).to_owned();
    let run_env = |args: &[&str]| {
        let out = must(
            Command::new(BIN)
                .args(args)
                .env("POD_NAME", "reflow-dataplane-7c9d")
                .env("REFLOW_CONTROLLER", "http://reflow-controller:9090")
                .env("REFLOW_SNAPSHOT_CACHE", "/var/cache/reflow/snapshot")
                .env_remove("REFLOW_SEALING_KEY")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .output(),
        );
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, out, err) = run_env(&["token", "--config", &config, "--user", "ops"]);
    assert!(status.success(), "token in a pod environment: {err}");
    assert_eq!(out.trim().split('.').count(), 3, "a JWT: {out}");
    let (status, _, err) = run_env(&[
        "--log-format",
        "json",
        "token",
        "--config",
        &config,
        "--user",
        "ops",
    ]);
    assert!(status.success(), "global flag before the subcommand: {err}");

    // No subcommand is `serve`: its own checks answer (here: the controller flag needs a token
    // file), not a parse error about a missing subcommand.
    let (status, _, err) = run_env(&["--config", &config]);
    assert!(!status.success());
    assert!(err.contains("--controller-token-file"), "{err}");
}

#[test]
fn cli_insecure_dev_user_is_refused_off_loopback() {
    let fx = Fixture::new(&good_config());
    let (status, out, err) = run(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--insecure-dev-user",
        "alice",
        "--config",
        must_str(&fx.config()),
        "--manifests",
        must_str(&fx.manifests()),
    ]);
    assert!(!status.success(), "served unauthenticated on 0.0.0.0");
    assert!(
        err.contains("--insecure-dev-user") && err.contains("not a loopback address"),
        "{err}"
    );
    assert!(!out.contains("listening on"), "{out}");
}
