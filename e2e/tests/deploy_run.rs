//! The chart's (and the kustomize dev overlay's) Deployments, run: the real `reflow-controller`
//! and `reflow-dataplane` binaries started with exactly the rendered args and env (paths moved
//! into a scratch folder, addresses onto loopback, the controller in folder mode since there is
//! no cluster), reading the rendered Secrets. The dataplane must follow the controller with the
//! shared token and sealing key, and serve MCP to a token minted the way NOTES.txt says.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reflow_e2e::harness::k8s_tools::run_tool;
use reflow_e2e::harness::manifests::Manifests;
use reflow_e2e::harness::process::{ManagedChild, SpawnOptions};
use reflow_e2e::harness::render::{self, NAMESPACE, Scratch, secret_value};
use reflow_e2e::harness::{controller_bin, dataplane_bin, http_client, paths};
use serde_json::{Value, json};

const START: Duration = Duration::from_secs(90);
const READY: Duration = Duration::from_secs(60);

/// Moves the pod's mount points into `root`.
struct Remap {
    root: String,
}

impl Remap {
    fn apply(&self, s: &str) -> String {
        if s == "/tmp" {
            return format!("{}/tmp", self.root);
        }
        s.replace("/etc/reflow/", &format!("{}/etc/", self.root))
            .replace("/var/cache/reflow/", &format!("{}/cache/", self.root))
    }
}

/// The container's args with paths remapped and `--listen` (and the rest `edit` changes)
/// replaced; its env with literal values remapped and downward-API fields filled in.
fn container_command(
    m: &Manifests,
    deployment: &str,
    remap: &Remap,
    edit: impl Fn(&str) -> Option<String>,
) -> (Vec<String>, Vec<(String, String)>) {
    let container = &m.get("Deployment", deployment)["spec"]["template"]["spec"]["containers"][0];
    let args = m
        .container_args(deployment)
        .iter()
        .map(|a| edit(a).unwrap_or_else(|| remap.apply(a)))
        .collect();
    let env = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("env name").to_owned();
            let value = match (
                &e["value"],
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            ) {
                (Value::String(v), _) => remap.apply(v),
                (_, Some("metadata.name")) => format!("{deployment}-test-0"),
                (_, Some("metadata.namespace")) => NAMESPACE.to_owned(),
                other => panic!("{deployment}: env {name} has an unexpected source {other:?}"),
            };
            (name, value)
        })
        .collect();
    (args, env)
}

fn spawn(
    what: &str,
    bin: &Path,
    args: &[String],
    env: &[(String, String)],
) -> (ManagedChild, String) {
    let mut cmd = Command::new(bin);
    cmd.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let opts = SpawnOptions {
        stdout_lines: true,
        ..SpawnOptions::default()
    };
    let child = ManagedChild::spawn(what, &mut cmd, opts).expect("spawn");
    let line = child.next_line(START).unwrap_or_else(|e| {
        // stderr may still be draining when stdout closes.
        std::thread::sleep(Duration::from_millis(500));
        panic!("{what} {args:?} {env:?}: {e}\n{}", child.output())
    });
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{what}: first line {line:?}\n{}", child.output()))
        .trim()
        .to_owned();
    (child, addr)
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "deploy-run-test", "version": "0"}}})
}

#[test]
fn the_chart_deployments_run_and_serve_mcp() {
    let m = render::helm_template(&[], &[]).unwrap_or_else(|e| panic!("{e}"));
    run_and_serve(&m, "chart");
}

#[test]
fn the_kustomize_dev_deployments_run_and_serve_mcp() {
    let m = render::kustomize("dev").unwrap_or_else(|e| panic!("{e}"));
    run_and_serve(&m, "kustomize-dev");
}

/// Starts both Deployments of `m` and talks MCP to the dataplane. Secrets are found by name
/// prefix: kustomize adds hash suffixes.
fn run_and_serve(m: &Manifests, name: &str) {
    let scratch = Scratch::new(&format!("run-{name}")).expect("scratch");
    let remap = Remap {
        root: scratch.path().display().to_string(),
    };
    // What the pods mount: the shared Secret's keys and the dataplane's config.
    let shared = m.get_prefixed("Secret", "reflow-secrets");
    for key in [
        "sealing-key",
        "controller-token",
        "token-issuer",
        "identity-signing-key",
    ] {
        let value = secret_value(shared, key).expect("shared secret key");
        scratch
            .write(&format!("etc/secrets/{key}"), &value)
            .expect("secret file");
    }
    let config = secret_value(
        m.get_prefixed("Secret", "reflow-dataplane-config"),
        "gateway.yaml",
    )
    .expect("gateway.yaml");
    scratch
        .write("etc/config/gateway.yaml", &remap.apply(&config))
        .expect("config file");
    std::fs::create_dir_all(scratch.path().join("cache")).expect("cache dir");
    std::fs::create_dir_all(scratch.path().join("tmp")).expect("tmp dir");

    // The controller, in folder mode on the sample manifests (no cluster here).
    let samples = paths::workspace_root().join("config/samples");
    let (mut ctrl_args, ctrl_env) = container_command(m, "reflow-controller", &remap, |a| {
        a.starts_with("--listen=")
            .then(|| "--listen=127.0.0.1:0".to_owned())
    });
    ctrl_args.push(format!("--manifests={}", samples.display()));
    let controller_bin = controller_bin().expect("reflow-controller");
    let (controller, ctrl_addr) =
        spawn("reflow-controller", &controller_bin, &ctrl_args, &ctrl_env);

    let (dp_args, dp_env) = container_command(m, "reflow-dataplane", &remap, |a| {
        if a.starts_with("--listen=") {
            Some("--listen=127.0.0.1:0".to_owned())
        } else if a.starts_with("--controller=") {
            Some(format!("--controller=http://{ctrl_addr}"))
        } else {
            None
        }
    });
    let (dataplane, dp_addr) = spawn(
        "reflow-dataplane",
        &dataplane_bin().expect("reflow-dataplane"),
        &dp_args,
        &dp_env,
    );

    // A token, the way NOTES.txt says: `reflow-controller token` with the pod's env.
    let mut mint = Command::new(&controller_bin);
    mint.args([
        "token",
        "--user",
        "alice",
        "--group",
        "developers",
        "--ttl",
        "10m",
    ]);
    for (k, v) in &ctrl_env {
        mint.env(k, v);
    }
    let minted = run_tool(
        "reflow-controller token",
        &mut mint,
        Duration::from_secs(30),
    )
    .expect("token runs");
    assert!(minted.success, "token: {}", minted.stderr);
    let token = minted.stdout.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let http = http_client().expect("client");
        // Ready means a snapshot from the controller is active.
        let deadline = Instant::now() + READY;
        loop {
            let r = http.get(format!("http://{dp_addr}/readyz")).send().await;
            if r.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dataplane never ready:\n{}\ncontroller:\n{}",
                dataplane.output(),
                controller.output()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let metrics = http
            .get(format!("http://{ctrl_addr}/metrics"))
            .send()
            .await
            .expect("controller metrics")
            .text()
            .await
            .expect("metrics text");
        assert!(
            metrics.contains("reflow_controller_dataplanes_connected 1"),
            "{metrics}"
        );
        // The sealed snapshot cache went where the chart's emptyDir is.
        assert!(scratch.path().join("cache/snapshot").is_file());

        let mcp = format!("http://{dp_addr}/mcp");
        let post = |host: &str, auth: Option<&str>| {
            let mut req = http
                .post(&mcp)
                .header("host", host)
                .header("accept", "application/json, text/event-stream")
                .json(&initialize());
            if let Some(token) = auth {
                req = req.bearer_auth(token);
            }
            req.send()
        };
        let service_host = format!("reflow-dataplane.{NAMESPACE}.svc:8080");
        let ok = post(&service_host, Some(&token)).await.expect("initialize");
        assert_eq!(ok.status(), 200);
        let body: Value = ok.json().await.expect("JSON reply");
        assert!(body["result"]["protocolVersion"].is_string(), "{body}");
        let anonymous = post(&service_host, None).await.expect("anonymous");
        assert_eq!(anonymous.status(), 401);
        // allowedHosts holds the Service's names and localhost, nothing else.
        let foreign = post("mcp.attacker.example", Some(&token))
            .await
            .expect("foreign host");
        assert!(foreign.status().is_client_error(), "{}", foreign.status());
        let local = post("localhost:8080", Some(&token))
            .await
            .expect("port-forward host");
        assert_eq!(local.status(), 200);
    });
    drop(dataplane);
    drop(controller);
}
