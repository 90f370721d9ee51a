//! The STDIO sandbox against a hostile server, with the real gateway binary and the fixture's
//! `hostile` tool: bob's child tries to read alice's child's environment, the gateway's
//! environment, the sealing key and dev secret files and alice's HOME, and to signal alice's
//! child and the gateway, and to call keyctl and unshare (seccomp). Each attempt fails sandboxed;
//! the same child succeeds unsandboxed. With namespaces (the default where the kernel allows
//! them) the child is PID 2 under its own init, its /proc lists only that tree and its /tmp is
//! its own; with `namespaces: off` it is Landlock that refuses. Child stderr is logged with its
//! credential redacted. The namespaces are also checked with the gateway as an unprivileged user.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reflow_crds::SealingKey;
use reflow_dataplane::upstream::stdio::sandbox::{
    MIN_LANDLOCK_ABI, kernel_landlock_abi, namespaces_available,
};
use reflow_e2e::fixture_bin;
use reflow_e2e::harness::{DataplaneProcess, PolicyDoc, RawInit, RawSession};
use secrecy::SecretString;
use serde_json::{Value, json};

const DEV_SECRET: &str = "sandbox-test-dev-secret-0123456789abcdef";
const MARKER: &str = "REFLOW_SANDBOX_TEST_MARKER";
const EACCES: i64 = 13;
const EPERM: i64 = 1;
const ENOENT: i64 = 2;
const ESRCH: i64 = 3;

fn stdio_target(name: &str, extra: &str) -> String {
    let fixture = fixture_bin!().to_string_lossy().into_owned();
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: {name}, namespace: e2e}}\nspec:\n  transport: stdio\n  command: {}\n  args: [\"--stdio\", \"--hostile\"]\n  prefix: {name}\n  isolation: perUser\n  timeouts: {{requestMs: 20000, initMs: 30000}}\n{extra}",
        json!(fixture)
    )
}

fn credential(target: &str, user: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Credential\nmetadata: {{name: {target}-{user}, namespace: e2e}}\nspec:\n  targetRef: {{name: {target}}}\n  subject: {{user: {user}}}\n  env:\n    - name: API_TOKEN\n      secretKeyRef: {{name: tokens, key: {user}}}\n"
    )
}

/// The gateway's files: config (dev secret and sealing key files beside it) and manifests
/// with three Targets, `boxed` (default sandbox), `flat` (`sandbox.namespaces: off`) and
/// `open` (`sandbox.mode: off`).
fn gateway_files(dir: &Path, key: &str) -> (PathBuf, PathBuf) {
    let conf = dir.join("conf");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(conf.join("dev-secret"), DEV_SECRET).unwrap();
    std::fs::write(conf.join("sealing-key"), key).unwrap();
    std::fs::write(
        conf.join("config.yaml"),
        "dev: {hs256SecretFile: dev-secret}\nsealingKeyFile: sealing-key\n",
    )
    .unwrap();
    let mut docs = vec![
        "apiVersion: v1\nkind: Secret\nmetadata: {name: tokens, namespace: e2e}\nstringData:\n  alice: alice-child-secret\n  bob: bob-child-secret\n".to_owned(),
        stdio_target("boxed", ""),
        stdio_target("flat", "  sandbox: {namespaces: \"off\"}\n"),
        stdio_target("open", "  sandbox: {mode: \"off\"}\n"),
    ];
    for t in ["boxed", "flat", "open"] {
        docs.push(credential(t, "alice"));
        docs.push(credential(t, "bob"));
        docs.push(
            PolicyDoc::allow(&format!("all-{t}"), t)
                .everyone()
                .rule("all", &["*"])
                .to_yaml(),
        );
    }
    std::fs::write(manifests.join("all.yaml"), docs.join("---\n")).unwrap();
    (manifests, conf.join("config.yaml"))
}

/// One user's MCP session on the aggregated endpoint.
struct Session(RawSession);

impl Session {
    async fn open(url: &str, user: &str) -> Self {
        let token = reflow_dataplane::auth::mint_dev_token(
            &SecretString::from(DEV_SECRET),
            "reflow-dev",
            "reflow",
            user,
            &[],
            &[],
            Duration::from_secs(600),
        )
        .unwrap();
        let init = RawInit {
            protocol: "2025-06-18".to_owned(),
            initialized: false,
            ..RawInit::named("sandbox-test")
        };
        Self(RawSession::open(url, &token, init).await.unwrap())
    }

    /// Waits (bounded) until the aggregated tool list has `tool`.
    async fn wait_for_tool(&self, tool: &str, gw: &DataplaneProcess) {
        for _ in 0..100 {
            let list = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"});
            let reply = self.0.rpc(&list).await.unwrap();
            if reply.to_string().contains(&format!("\"{tool}\"")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{tool} never listed; gateway output:\n{}", gw.output());
    }

    /// tools/call; returns the result's text parsed as JSON, or the whole reply on an error.
    async fn call(&self, tool: &str, args: Value) -> Value {
        let reply = self
            .0
            .rpc(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": tool, "arguments": args}}))
            .await
            .unwrap();
        match reply["result"]["content"][0]["text"].as_str() {
            Some(text) => serde_json::from_str(text).unwrap_or(Value::String(text.to_owned())),
            None => reply,
        }
    }
}

/// The host pid of the one process whose environment has every one of `vars`.
fn host_pid_of(vars: &[&str]) -> u64 {
    let found = host_pids_with_all(vars);
    assert_eq!(found.len(), 1, "one process with {vars:?}: {found:?}");
    found[0]
}

fn host_pids_with(var: &str) -> Vec<u64> {
    host_pids_with_all(&[var])
}

fn host_pids_with_all(vars: &[&str]) -> Vec<u64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                let env: Vec<&[u8]> = env.split(|b| *b == 0).collect();
                vars.iter().all(|v| env.contains(&v.as_bytes()))
            })
        })
        .collect()
}

/// Every attack of bob's child on `target`, as (name, report).
async fn attacks(gw: &DataplaneProcess, target: &str, conf: &Path) -> Vec<(&'static str, Value)> {
    let url = gw.mcp_url();
    let alice = Session::open(&url, "alice").await;
    let bob = Session::open(&url, "bob").await;
    alice.wait_for_tool(&format!("{target}_hostile"), gw).await;
    let me = alice.call(&format!("{target}_whoami"), json!({})).await;
    let alice_home = me["env"]["HOME"].as_str().unwrap().to_owned();
    // Its pid as the host sees it (inside its PID namespace it would say 2).
    let alice_pid = host_pid_of(&[
        "API_TOKEN=alice-child-secret",
        &format!("HOME={alice_home}"),
    ]);
    let diary = format!("{alice_home}/diary");
    let wrote = alice
        .call(
            &format!("{target}_hostile"),
            json!({"action": "write", "path": diary, "text": "alice-diary"}),
        )
        .await;
    assert_eq!(wrote["ok"], true, "a child writes its own HOME: {wrote}");
    let hostile = format!("{target}_hostile");
    let read = |path: String| json!({"action": "read", "path": path});
    let mut out = Vec::new();
    for (name, args) in [
        (
            "sibling environ",
            read(format!("/proc/{alice_pid}/environ")),
        ),
        (
            "gateway environ",
            read(format!("/proc/{}/environ", gw.pid())),
        ),
        (
            "sealing key file",
            read(conf.join("sealing-key").display().to_string()),
        ),
        (
            "dev secret file",
            read(conf.join("dev-secret").display().to_string()),
        ),
        ("sibling home", read(diary.clone())),
        (
            "signal sibling",
            json!({"action": "kill", "pid": alice_pid}),
        ),
        ("signal gateway", json!({"action": "kill", "pid": gw.pid()})),
        ("syscall keyctl", json!({"action": "keyctl"})),
        ("syscall unshare", json!({"action": "unshare"})),
    ] {
        out.push((name, bob.call(&hostile, args).await));
    }
    // Still a working server: system files readable, its own tmp writable.
    let hosts = bob.call(&hostile, read("/etc/hosts".into())).await;
    assert_eq!(hosts["ok"], true, "system files stay readable: {hosts}");
    out
}

#[test]
fn a_hostile_stdio_child_is_contained_by_the_sandbox_and_not_without_it() {
    let abi = kernel_landlock_abi();
    let dir =
        std::env::temp_dir().join(format!("reflow-sandbox-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = SealingKey::generate_base64();
    let (manifests, config) = gateway_files(&dir, &key);
    let conf = config.parent().unwrap().to_path_buf();
    let marker = format!("{MARKER}=visible");
    let gw = DataplaneProcess::spawn(
        &manifests,
        &config,
        &[
            (MARKER, "visible"),
            ("REFLOW_SEALING_KEY", &key),
            // Child stderr is logged at info.
            ("RUST_LOG", "info"),
        ],
    )
    .expect("gateway starts");
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Unsandboxed, the very same child reads and signals everything (the tests run as root).
    let open = rt.block_on(attacks(&gw, "open", &conf));
    for (name, r) in &open {
        assert_eq!(r["ok"], true, "unsandboxed {name} should succeed: {r}");
    }
    let get = |rs: &[(&str, Value)], n: &str| rs.iter().find(|(k, _)| *k == n).unwrap().1.clone();
    let sibling = get(&open, "sibling environ");
    assert!(
        sibling["content"]
            .as_str()
            .unwrap()
            .contains("alice-child-secret")
    );
    let gw_env = get(&open, "gateway environ")["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        gw_env.contains(&marker),
        "the gateway's environ is readable unsandboxed"
    );
    // …but the gateway scrubbed the key from its environment after reading it.
    assert!(
        !gw_env.contains(&key),
        "the sealing key is still in the gateway's environ"
    );
    assert_eq!(get(&open, "sealing key file")["content"], key.as_str());
    assert_eq!(get(&open, "dev secret file")["content"], DEV_SECRET);
    assert_eq!(get(&open, "sibling home")["content"], "alice-diary");

    stderr_is_redacted(&rt, &gw);

    if abi < MIN_LANDLOCK_ABI {
        // Fail closed: the sandboxed Target refuses to spawn at all.
        let refused = rt.block_on(async {
            let s = Session::open(&gw.mcp_url(), "bob").await;
            s.call("boxed_whoami", json!({})).await
        });
        assert!(refused.to_string().contains("unsandboxed"), "{refused}");
        eprintln!(
            "SKIPPED the sandboxed half: kernel Landlock ABI {abi} < {MIN_LANDLOCK_ABI}; checked the refusal instead"
        );
        return;
    }
    // Landlock, seccomp and rlimits without namespaces: Landlock's refusals.
    let flat = rt.block_on(attacks(&gw, "flat", &conf));
    for (name, r) in &flat {
        assert_eq!(r["ok"], false, "sandboxed {name} must fail: {r}");
        let want = if name.starts_with("signal") || name.starts_with("syscall") {
            EPERM
        } else {
            EACCES
        };
        assert_eq!(
            r["errno"], want,
            "sandboxed {name} fails for the sandbox's reason: {r}"
        );
    }
    let open_view = rt.block_on(ns_view(&gw, "open"));
    let flat_view = rt.block_on(ns_view(&gw, "flat"));
    assert!(
        open_view.sees(gw.pid().into()),
        "unconfined, /proc shows the gateway"
    );
    assert_eq!(
        flat_view.listing["errno"], EACCES,
        "{:?}",
        flat_view.listing
    );
    assert_eq!(flat_view.tmp["errno"], EACCES, "{:?}", flat_view.tmp);
    assert!(flat_view.pid > 2, "no PID namespace with namespaces off");

    let boxed = rt.block_on(attacks(&gw, "boxed", &conf));
    if let Err(why) = namespaces_available() {
        eprintln!("SKIPPED the namespace half: {why}");
        return;
    }
    // In its own PID and mount namespaces the other processes and /tmp folders do not exist.
    for (name, r) in &boxed {
        assert_eq!(r["ok"], false, "sandboxed {name} must fail: {r}");
        let want: &[i64] = match *name {
            n if n.starts_with("syscall") => &[EPERM],
            n if n.starts_with("signal") => &[ESRCH],
            "sibling environ" | "gateway environ" => &[ENOENT],
            _ => &[ENOENT, EACCES],
        };
        assert!(
            want.contains(&r["errno"].as_i64().unwrap_or(0)),
            "namespaced {name} fails for the namespace's reason ({want:?}): {r}"
        );
    }
    let view = rt.block_on(ns_view(&gw, "boxed"));
    assert_eq!(view.pid, 2, "the server is PID 2 under its init");
    assert_eq!(
        view.pids(),
        [1, 2],
        "its /proc lists only its own tree: {:?}",
        view.listing
    );
    assert_eq!(
        view.tmp["ok"], true,
        "its private /tmp is writable: {:?}",
        view.tmp
    );
    assert!(
        !view.tmp_path.exists(),
        "the private /tmp is not the host's"
    );
    assert_eq!(
        view.kill_init["errno"], EPERM,
        "its init is out of reach: {:?}",
        view.kill_init
    );
    // Every child (namespaced or not) goes when the gateway goes.
    let children = host_pids_with("API_TOKEN=alice-child-secret");
    assert_eq!(
        children.len(),
        3,
        "alice's open, flat and boxed children: {children:?}"
    );
    drop(gw);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while children
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "children outlived the gateway: {children:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A child that prints its environment to stderr: the log has the line, not the credential.
fn stderr_is_redacted(rt: &tokio::runtime::Runtime, gw: &DataplaneProcess) {
    let printed = rt.block_on(async {
        let alice = Session::open(&gw.mcp_url(), "alice").await;
        alice
            .call("open_hostile", json!({"action": "stderr_env"}))
            .await
    });
    assert_eq!(printed["ok"], true, "{printed}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let logs = loop {
        let out = gw.output();
        if out.contains("hostile env:") || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let line = logs
        .lines()
        .find(|l| l.contains("hostile env:"))
        .unwrap_or_else(|| panic!("the child's stderr line was not logged:\n{logs}"));
    assert!(line.contains("API_TOKEN=[REDACTED]"), "{line}");
    assert!(
        !logs.contains("alice-child-secret"),
        "a credential reached the log"
    );
}

/// What bob's child on `target` sees of the process tree and /tmp.
struct NsView {
    pid: u64,
    listing: Value,
    tmp: Value,
    tmp_path: PathBuf,
    kill_init: Value,
}

impl NsView {
    fn pids(&self) -> Vec<u64> {
        let mut pids: Vec<u64> = self.listing["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids
    }

    fn sees(&self, pid: u64) -> bool {
        self.pids().contains(&pid)
    }
}

async fn ns_view(gw: &DataplaneProcess, target: &str) -> NsView {
    let bob = Session::open(&gw.mcp_url(), "bob").await;
    bob.wait_for_tool(&format!("{target}_hostile"), gw).await;
    let me = bob.call(&format!("{target}_whoami"), json!({})).await;
    let hostile = format!("{target}_hostile");
    let tmp_path = PathBuf::from(format!("/tmp/reflow-ns-{}", uuid::Uuid::new_v4().simple()));
    let view = NsView {
        pid: me["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {me}")),
        listing: bob
            .call(&hostile, json!({"action": "list", "path": "/proc"}))
            .await,
        tmp: bob
            .call(
                &hostile,
                json!({"action": "write", "path": tmp_path, "text": "x"}),
            )
            .await,
        tmp_path,
        kill_init: if target == "open" {
            Value::Null
        } else {
            bob.call(&hostile, json!({"action": "kill", "pid": 1}))
                .await
        },
    };
    if target == "open" {
        let _ = std::fs::remove_file(&view.tmp_path);
    }
    view
}

/// The same namespaces with the gateway running as nobody (65534): no privilege is needed.
/// Runs when the tests run as root (which can start it as another user).
#[test]
fn namespaces_need_no_privileges() {
    // SAFETY: a plain getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED: the tests do not run as root, so the gateway already ran unprivileged above"
        );
        return;
    }
    if kernel_landlock_abi() < MIN_LANDLOCK_ABI {
        eprintln!("SKIPPED: kernel Landlock ABI below {MIN_LANDLOCK_ABI}");
        return;
    }
    let dir =
        std::env::temp_dir().join(format!("reflow-sandbox-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = SealingKey::generate_base64();
    let (manifests, config) = gateway_files(&dir, &key);
    let homes = dir.join("homes");
    std::fs::create_dir_all(&homes).unwrap();
    std::os::unix::fs::chown(&homes, Some(65534), Some(65534)).unwrap();
    let mut conf = std::fs::read_to_string(&config).unwrap();
    conf.push_str(&format!(
        "gateway: {{stdio: {{homeRoot: {}, namespaces: required}}}}\n",
        json!(homes)
    ));
    std::fs::write(&config, conf).unwrap();
    let gw = DataplaneProcess::spawn_as(
        &manifests,
        &config,
        &[("REFLOW_SEALING_KEY", &key)],
        Some((65534, 65534)),
    )
    .expect("gateway starts as nobody");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let view = rt.block_on(ns_view(&gw, "boxed"));
    assert_eq!(
        view.pid,
        2,
        "PID namespace as nobody; gateway output:\n{}",
        gw.output()
    );
    assert_eq!(view.pids(), [1, 2], "{:?}", view.listing);
    assert_eq!(view.tmp["ok"], true, "{:?}", view.tmp);
    let env = rt.block_on(async {
        let bob = Session::open(&gw.mcp_url(), "bob").await;
        bob.call(
            "boxed_hostile",
            json!({"action": "read", "path": "/proc/1/environ"}),
        )
        .await
    });
    assert_eq!(
        env["ok"], false,
        "its init's (the gateway's) environ stays closed: {env}"
    );
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
