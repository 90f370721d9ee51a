//! The `reflow-controller` binary in folder mode: prints its address, serves readiness and the
//! token-gated status, stops on SIGTERM; a bad sealing key or a missing folder fails at start.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_reflow-controller");
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("reflow-ctl-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn command(dir: &std::path::Path, key: &str) -> Command {
    let mut c = Command::new(BIN);
    c.args([
        "--manifests",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
    .env("REFLOW_CONTROLLER_TOKEN", "cli-token")
    .env("REFLOW_SEALING_KEY", key)
    .env_remove("REFLOW_CONTROLLER_TOKEN_FILE")
    .env_remove("REFLOW_SEALING_KEY_FILE");
    c
}

/// A bare HTTP/1.1 GET; returns the status line and body.
fn get(addr: &str, path: &str, token: Option<&str>) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[test]
fn folder_mode_serves_and_stops_on_sigterm() {
    let dir = temp_dir("serve");
    std::fs::write(
        dir.join("t.yaml"),
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {name: a, namespace: ns}\nspec: {transport: streamableHttp, url: 'http://127.0.0.1:9/mcp'}\n",
    )
    .unwrap();
    let mut child = Kill(
        command(&dir, KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect(&line)
        .to_owned();

    assert!(get(&addr, "/readyz", None).0.contains("200"));
    assert!(get(&addr, "/v1/status", None).0.contains("401"));
    let (status, body) = get(&addr, "/v1/status", Some("cli-token"));
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("\"Target\""), "{body}");
    assert!(!body.contains(KEY) && !body.contains("cli-token"));

    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_key_or_a_missing_folder_fails_at_start() {
    let dir = temp_dir("bad");
    let out = command(&dir, "not-a-key").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sealing key"), "{err}");
    assert!(
        !err.contains("not-a-key"),
        "the key is never printed: {err}"
    );

    let out = command(&dir.join("missing"), KEY).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing"),
        "the message names the folder: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `reflow-controller token`: the same minting as `reflow-dataplane token` (one implementation,
/// in `reflow_crds::token`), with the secret from a file such as a mounted Secret.
#[test]
fn token_subcommand_mints_scoped_tokens_for_a_trusted_issuer() {
    let dir = temp_dir("token");
    let secret = "cluster-token-secret-0123456789abcdef";
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let out = Command::new(BIN)
        .args(["token", "--secret-file"])
        .arg(&secret_file)
        .args([
            "--issuer",
            "https://reflow.example/api-tokens",
            "--audience",
            "reflow",
            "--user",
            "ci-bot",
            "--group",
            "ci",
            "--ttl",
            "15m",
            "--target",
            "dev-tools/*",
            "--permission",
            "list",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let jti = stderr
        .lines()
        .find_map(|l| l.strip_prefix("jti: "))
        .unwrap_or_else(|| panic!("no jti on stderr: {stderr}"));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_audience(&["reflow"]);
    v.set_issuer(&["https://reflow.example/api-tokens"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &v,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["sub"], "ci-bot");
    assert_eq!(claims["groups"], serde_json::json!(["ci"]));
    assert_eq!(claims["jti"], jti);
    assert_eq!(
        claims["reflow"],
        serde_json::json!({"targets": ["dev-tools/*"], "permissions": ["list"]})
    );
    let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 900);

    // What the gateway would refuse is refused here; so is a weak secret.
    let bad = Command::new(BIN)
        .args(["token", "--secret-file"])
        .arg(&secret_file)
        .args(["--user", "u", "--permission", "admin"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("token scope"));
    std::fs::write(&secret_file, "tiny-s3cret").unwrap();
    let weak = Command::new(BIN)
        .args(["token", "--secret-file"])
        .arg(&secret_file)
        .args(["--user", "u"])
        .output()
        .unwrap();
    assert!(!weak.status.success());
    let err = String::from_utf8_lossy(&weak.stderr);
    assert!(err.contains("at least 32 bytes"), "{err}");
    assert!(
        !err.contains("tiny-s3cret"),
        "the secret never appears in errors: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--log-format json`: every log line is one JSON object; an unknown format is refused.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = temp_dir("json");
    let mut child = Kill(
        command(&dir, KEY)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on http://"), "{line}");
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    while child.0.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Exited: its stderr is at EOF.
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("folder mode"))),
        "{stderr}"
    );

    let out = command(&dir, KEY)
        .args(["--log-format", "yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--log-format"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
