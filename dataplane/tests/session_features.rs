//! Session features through the gateway against the real `reflow-fixture` (HTTP and `--stdio`):
//! `logging/setLevel` fan-out and per-session filtering, refcounted resource subscriptions on a
//! shared STDIO child. Needs the fixture built (`cargo build -p reflow-e2e --bin
//! reflow-fixture`, done by `make test`) or `REFLOW_FIXTURE_BIN`.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reflow_dataplane::mcp::GatewayConfig;
use reflow_dataplane::session::MemorySessionStore;
use reflow_dataplane::upstream::StdioConfig;
use reflow_dataplane::upstream::stdio::NamespaceMode;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const WATCHED: &str = "test://watched-resource";
/// How long a stream that should stay quiet is watched.
const QUIET: Duration = Duration::from_millis(600);

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .expect("test timed out");
}

fn fixture_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REFLOW_FIXTURE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("reflow-fixture"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("reflow-fixture not found near {}; run `cargo build -p reflow-e2e --bin reflow-fixture` or set REFLOW_FIXTURE_BIN", exe.display())
        })
}

/// A policy allowing every kind of item to everyone on `target`.
fn allow_all(target: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Policy\nmetadata: {{name: all-{target}, namespace: t}}\nspec:\n  targetRef: {{name: {target}}}\n  subjects: [{{everyone: true}}]\n  rules: [{{kind: all, names: [\"*\"]}}]\n  effect: Allow\n  priority: 0\n"
    )
}

fn stdio_target(name: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  transport: stdio\n  command: {:?}\n  args: [{}]\n  prefix: {name}\n  isolation: shared\n",
        fixture_bin().to_string_lossy(),
        args.join(", ")
    )
}

async fn gateway_with(docs: &[(&str, String)]) -> Harness {
    gateway_on(docs, MemorySessionStore::new(Duration::from_secs(3600))).await
}

/// A gateway on a session store the test holds (to expire sessions).
async fn gateway_on(
    docs: &[(&str, String)],
    sessions: std::sync::Arc<MemorySessionStore>,
) -> Harness {
    let dir = temp_dir();
    for (file, doc) in docs {
        std::fs::write(dir.join(file), doc).unwrap();
    }
    let config = GatewayConfig {
        stdio: StdioConfig {
            sweep_ms: 100,
            stop_grace_ms: 300,
            // These tests tell children apart by the pid they report; in its own PID
            // namespace every child is PID 2 (namespaces: e2e/tests/sandbox.rs).
            namespaces: NamespaceMode::Off,
            ..StdioConfig::default()
        },
        ..GatewayConfig::default()
    };
    let h = start_gateway_with(dir, config, sessions).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !h.gw.snapshots.is_ready() || h.gw.snapshots.load().targets().is_empty() {
        assert!(Instant::now() < deadline, "snapshot never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h
}

/// A gateway with one shared STDIO Target `fx` running the fixture with `args`.
async fn stdio_gateway(args: &[&str]) -> Harness {
    gateway_with(&[
        ("target.yaml", stdio_target("fx", args)),
        ("policy.yaml", allow_all("fx")),
    ])
    .await
}

/// The fixture serving Streamable HTTP on loopback; killed when dropped.
struct HttpFixture {
    url: String,
    _child: tokio::process::Child,
}

async fn http_fixture() -> HttpFixture {
    let mut child = tokio::process::Command::new(fixture_bin())
        .args(["--listen", "127.0.0.1:0", "--conformance"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("fixture starts");
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("fixture printed its address in time")
        .unwrap()
        .expect("a line");
    let addr = line
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_owned();
    HttpFixture {
        url: format!("{addr}/mcp"),
        _child: child,
    }
}

const PATH: &str = "/mcp/t/fx";

/// whoami on `sid`, sending `emit` first; returns (report, messages streamed before the reply).
async fn whoami_emitting(h: &Harness, user: &str, sid: &str, emit: Value) -> (Value, Vec<Value>) {
    let r = h
        .rpc(
            PATH,
            user,
            Some(sid),
            "tools/call",
            json!({"name": "whoami", "arguments": {"emit": emit}}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let text = r.body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no whoami result: {}", r.body));
    (serde_json::from_str(text).unwrap(), r.events)
}

async fn whoami(h: &Harness, user: &str, sid: &str) -> Value {
    whoami_emitting(h, user, sid, json!([])).await.0
}

async fn set_level(h: &Harness, user: &str, sid: &str, level: &str) -> Value {
    let r = h
        .rpc(
            PATH,
            user,
            Some(sid),
            "logging/setLevel",
            json!({"level": level}),
        )
        .await;
    assert_eq!(r.status, 200);
    r.body
}

fn logs(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["method"] == "notifications/message")
        .map(|e| e["params"]["data"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn log_at(level: &str) -> Value {
    json!({"method": "notifications/message", "params": {"level": level, "logger": "t", "data": level}})
}

async fn wait_for_level(h: &Harness, user: &str, sid: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = whoami(h, user, sid).await["logLevel"].clone();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "level stayed {got}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_shared_child_runs_at_the_most_verbose_level_and_each_session_sees_its_own() {
    bounded(async {
        let h = stdio_gateway(&["--stdio"]).await;
        // Neither has credentials: one shared child serves both.
        let carol = h.open(PATH, "carol").await;
        let dave = h.open(PATH, "dave").await;
        let pid = whoami(&h, "carol", &carol).await["pid"].clone();
        let report = whoami(&h, "dave", &dave).await;
        assert_eq!(report["pid"], pid, "the two sessions do not share a child");
        assert_eq!(report["logLevel"], "info");

        assert_eq!(
            set_level(&h, "dave", &dave, "error").await["result"],
            json!({})
        );
        assert_eq!(whoami(&h, "dave", &dave).await["logLevel"], "error");
        set_level(&h, "carol", &carol, "debug").await;
        assert_eq!(whoami(&h, "dave", &dave).await["logLevel"], "debug");

        let emit = json!([log_at("debug"), log_at("warning"), log_at("error")]);
        let (_, dave_saw) = whoami_emitting(&h, "dave", &dave, emit.clone()).await;
        assert_eq!(logs(&dave_saw), ["error"]);
        let (_, carol_saw) = whoami_emitting(&h, "carol", &carol, emit).await;
        assert_eq!(logs(&carol_saw), ["debug", "warning", "error"]);

        // A level that is not one is refused, and changes nothing.
        let bad = set_level(&h, "dave", &dave, "verbose").await;
        assert_eq!(bad["error"]["code"], -32602, "{bad}");
        assert_eq!(whoami(&h, "dave", &dave).await["logLevel"], "debug");

        // Without carol the child goes back to the level dave asked for.
        assert_eq!(h.delete_session(PATH, "carol", &carol).await, 200);
        wait_for_level(&h, "dave", &dave, "error").await;
    })
    .await;
}

#[tokio::test]
async fn set_level_reaches_http_upstreams_linked_before_and_after_and_filters_per_session() {
    bounded(async {
        let fx = http_fixture().await;
        let h = gateway_with(&[
            ("target.yaml", target_yaml("fx", &fx.url, 10_000)),
            ("policy.yaml", allow_all("fx")),
        ])
        .await;
        let alice = h.open(PATH, "alice").await;
        // No upstream session yet: the level is remembered and told right after initialize.
        assert_eq!(
            set_level(&h, "alice", &alice, "warning").await["result"],
            json!({})
        );
        assert_eq!(whoami(&h, "alice", &alice).await["logLevel"], "warning");
        // An existing upstream session is told at once.
        set_level(&h, "alice", &alice, "error").await;
        assert_eq!(whoami(&h, "alice", &alice).await["logLevel"], "error");

        // The fixture keeps one level for all its sessions: bob's debug makes it send its info
        // messages to everyone, and the gateway still shows alice only what she asked for.
        let bob = h.open(PATH, "bob").await;
        set_level(&h, "bob", &bob, "debug").await;
        let bob_saw = logging_tool(&h, "bob", &bob).await;
        assert_eq!(
            bob_saw.len(),
            3,
            "the fixture sent no info messages: {bob_saw:?}"
        );
        assert_eq!(whoami(&h, "alice", &alice).await["logLevel"], "debug");
        assert_eq!(
            logging_tool(&h, "alice", &alice).await,
            Vec::<String>::new()
        );
        set_level(&h, "alice", &alice, "info").await;
        assert_eq!(logging_tool(&h, "alice", &alice).await, bob_saw);
    })
    .await;
}

/// The log messages `test_tool_with_logging` streamed before its reply (3 at info).
async fn logging_tool(h: &Harness, user: &str, sid: &str) -> Vec<String> {
    let r = h
        .rpc(
            PATH,
            user,
            Some(sid),
            "tools/call",
            json!({"name": "test_tool_with_logging", "arguments": {}}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["result"].is_object(), "{}", r.body);
    logs(&r.events)
}

async fn resource_rpc(h: &Harness, user: &str, sid: &str, method: &str) -> Value {
    let r = h
        .rpc(PATH, user, Some(sid), method, json!({"uri": WATCHED}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

fn updated() -> Value {
    json!([{"method": "notifications/resources/updated", "params": {"uri": WATCHED}}])
}

/// The next resource update on `events` within `wait`, skipping anything else.
async fn next_update(events: &mut SseReader, wait: Duration) -> Option<Value> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = events.next_within(left).await?;
        if msg["method"] == "notifications/resources/updated" {
            return Some(msg);
        }
    }
}

#[tokio::test]
async fn subscriptions_on_a_shared_child_are_counted_and_updates_reach_subscribers_only() {
    bounded(async {
        let h = stdio_gateway(&["--stdio", "--conformance"]).await;
        let carol = h.open(PATH, "carol").await;
        let dave = h.open(PATH, "dave").await;
        let erin = h.open(PATH, "erin").await;
        let pid = whoami(&h, "carol", &carol).await["pid"].clone();
        assert_eq!(whoami(&h, "erin", &erin).await["pid"], pid);

        for (user, sid) in [("carol", &carol), ("dave", &dave)] {
            let r = resource_rpc(&h, user, sid, "resources/subscribe").await;
            assert_eq!(r["result"], json!({}), "{r}");
        }
        assert_eq!(
            whoami(&h, "erin", &erin).await["subscriptions"],
            json!([WATCHED])
        );
        let mut carol_get = SseReader::open(&h, PATH, "carol", &carol).await;
        let mut dave_get = SseReader::open(&h, PATH, "dave", &dave).await;
        let mut erin_get = SseReader::open(&h, PATH, "erin", &erin).await;

        // erin, who did not subscribe, makes the child announce an update.
        let (_, erin_saw) = whoami_emitting(&h, "erin", &erin, updated()).await;
        assert!(
            !erin_saw
                .iter()
                .any(|e| e["method"] == "notifications/resources/updated"),
            "the update went to the call in flight: {erin_saw:?}"
        );
        for (who, events) in [("carol", &mut carol_get), ("dave", &mut dave_get)] {
            let note = next_update(events, Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("{who} got no update"));
            assert_eq!(note["params"]["uri"], WATCHED);
            assert_eq!(note["params"]["_meta"]["io.reflow/target"], "t/fx");
        }
        assert!(
            next_update(&mut erin_get, QUIET).await.is_none(),
            "erin got an update"
        );

        // carol leaves: answered here, the child keeps the subscription for dave.
        let r = resource_rpc(&h, "carol", &carol, "resources/unsubscribe").await;
        assert_eq!(r["result"], json!({}));
        assert_eq!(
            whoami(&h, "erin", &erin).await["subscriptions"],
            json!([WATCHED])
        );
        whoami_emitting(&h, "erin", &erin, updated()).await;
        assert!(
            next_update(&mut dave_get, Duration::from_secs(10))
                .await
                .is_some()
        );
        assert!(
            next_update(&mut carol_get, QUIET).await.is_none(),
            "carol still gets updates"
        );

        // The last subscriber leaving reaches the child.
        resource_rpc(&h, "dave", &dave, "resources/unsubscribe").await;
        assert_eq!(whoami(&h, "erin", &erin).await["subscriptions"], json!([]));

        // A session that ends releases its subscriptions like an unsubscribe.
        resource_rpc(&h, "carol", &carol, "resources/subscribe").await;
        assert_eq!(
            whoami(&h, "erin", &erin).await["subscriptions"],
            json!([WATCHED])
        );
        assert_eq!(h.delete_session(PATH, "carol", &carol).await, 200);
        let deadline = Instant::now() + Duration::from_secs(20);
        while whoami(&h, "erin", &erin).await["subscriptions"] != json!([]) {
            assert!(
                Instant::now() < deadline,
                "the ended session's subscription stayed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

fn group_policy(name: &str, target: &str, group: &str, names: &[&str]) -> String {
    let names = names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Policy\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  targetRef: {{name: {target}}}\n  subjects: [{{group: {group}}}]\n  rules: [{{kind: tool, names: [{names}]}}]\n  effect: Allow\n  priority: 0\n"
    )
}

fn group_credential(target: &str, group: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Credential\nmetadata: {{name: {target}-{group}, namespace: t}}\nspec:\n  targetRef: {{name: {target}}}\n  subject: {{group: {group}}}\n  headers:\n    - name: x-api-key\n      secretKeyRef: {{name: keys, key: {group}}}\n"
    )
}

const GROUP_KEYS: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: t}\nstringData:\n  dev: dev-upstream-secret\n  ops: ops-upstream-secret\n";

/// Methods the fake upstream saw with the API key they carried and the upstream session.
fn seen_with_keys(up: &Upstream) -> Vec<(String, String, String)> {
    up.headers_seen()
        .into_iter()
        .map(|(m, h)| {
            let key = h.get("x-api-key").cloned().unwrap_or_default();
            let sid = h.get("mcp-session-id").cloned().unwrap_or_default();
            (m, key, sid)
        })
        .collect()
}

/// The next list_changed on `events` within `wait`, skipping anything else.
async fn next_list_changed(events: &mut SseReader, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = events.next_within(left).await?;
        if let Some(m) = msg["method"].as_str()
            && m.ends_with("/list_changed")
        {
            return Some(m.to_owned());
        }
    }
}

#[tokio::test]
async fn a_groups_change_keeps_the_session_refilters_announces_and_uses_the_new_credentials() {
    bounded(async {
        let up = Upstream {
            tools: vec!["alpha", "beta"],
            page: 10,
            ..Default::default()
        };
        let url = start_upstream(up.clone()).await;
        let h = gateway_with(&[
            ("target.yaml", target_yaml("fx", &url, 10_000)),
            ("secret.yaml", GROUP_KEYS.to_owned()),
            (
                "creds.yaml",
                format!(
                    "{}---\n{}",
                    group_credential("fx", "dev"),
                    group_credential("fx", "ops")
                ),
            ),
            ("dev.yaml", group_policy("dev", "fx", "dev", &["alpha"])),
            (
                "ops.yaml",
                group_policy("ops", "fx", "ops", &["alpha", "beta"]),
            ),
        ])
        .await;
        let sid = h.open(PATH, "alice:dev").await;
        assert_eq!(h.tool_names(PATH, "alice:dev", &sid).await, ["alpha"]);
        let mut get = SseReader::open(&h, PATH, "alice:dev", &sid).await;

        // Same user, new groups: the same session, the new view, announced on its GET stream.
        assert_eq!(
            h.tool_names(PATH, "alice:ops", &sid).await,
            ["alpha", "beta"]
        );
        assert_eq!(
            next_list_changed(&mut get, Duration::from_secs(10))
                .await
                .as_deref(),
            Some("notifications/tools/list_changed")
        );
        // Only tools differ between the two groups' views.
        assert_eq!(next_list_changed(&mut get, QUIET).await, None);
        let call = h
            .rpc(
                PATH,
                "alice:ops",
                Some(&sid),
                "tools/call",
                json!({"name": "beta", "arguments": {}}),
            )
            .await;
        assert_eq!(
            call.body["result"]["content"][0]["text"], "beta",
            "{:?}",
            call.body
        );

        // Back: shrinks again, announced again.
        assert_eq!(h.tool_names(PATH, "alice:dev", &sid).await, ["alpha"]);
        assert_eq!(
            next_list_changed(&mut get, Duration::from_secs(10))
                .await
                .as_deref(),
            Some("notifications/tools/list_changed")
        );

        // Another user's token does not reach the session, whatever its groups.
        let foreign = h
            .rpc(PATH, "bob:ops", Some(&sid), "tools/list", json!({}))
            .await;
        assert_eq!(foreign.status, 404);

        // The upstream session opened with dev's key was never used with ops' key: ops got a
        // new upstream session, initialized with its own key, and dev's was ended.
        let seen = seen_with_keys(&up);
        let dev_session = seen
            .iter()
            .find(|(m, k, s)| m == "tools/list" && k == "dev-upstream-secret" && !s.is_empty())
            .map(|(_, _, s)| s.clone())
            .expect("dev listed");
        let ops_calls: Vec<_> = seen
            .iter()
            .filter(|(_, k, _)| k == "ops-upstream-secret")
            .collect();
        assert!(
            ops_calls.iter().any(|(m, _, _)| m == "initialize"),
            "{seen:?}"
        );
        assert!(
            ops_calls.iter().any(|(m, _, _)| m == "tools/call"),
            "{seen:?}"
        );
        assert!(
            ops_calls.iter().all(|(_, _, s)| *s != dev_session),
            "ops' key went to dev's upstream session: {seen:?}"
        );
        assert!(
            seen.iter()
                .filter(|(_, _, s)| *s == dev_session)
                .all(|(_, k, _)| k == "dev-upstream-secret"),
            "{seen:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen_with_keys(&up)
            .iter()
            .any(|(m, k, s)| m == "DELETE" && k == "dev-upstream-secret" && *s == dev_session)
        {
            assert!(
                Instant::now() < deadline,
                "dev's upstream session was not ended"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let recycled = h
            .audit
            .events()
            .into_iter()
            .filter(|e| e.method == "session/claimsChanged" && e.session.as_deref() == Some(&*sid))
            .count();
        assert_eq!(recycled, 2, "each claims change is audited once");
    })
    .await;
}

#[tokio::test]
async fn a_groups_change_moves_the_session_to_its_new_groups_child() {
    bounded(async {
        let target = stdio_target("fx", &["--stdio", "--conformance"])
            .replace("isolation: shared", "isolation: perGroup");
        let h = gateway_with(&[("target.yaml", target), ("policy.yaml", allow_all("fx"))]).await;
        let sid = h.open(PATH, "carol:dev").await;
        set_level(&h, "carol:dev", &sid, "debug").await;
        let r = resource_rpc(&h, "carol:dev", &sid, "resources/subscribe").await;
        assert_eq!(r["result"], json!({}));
        let dev = whoami(&h, "carol:dev", &sid).await;
        assert_eq!(dev["subscriptions"], json!([WATCHED]));
        // Another session in group dev keeps dev's child alive and reports on it.
        let watcher = h.open(PATH, "dave:dev").await;
        assert_eq!(whoami(&h, "dave:dev", &watcher).await["pid"], dev["pid"]);

        let ops = whoami(&h, "carol:ops", &sid).await;
        assert_ne!(ops["pid"], dev["pid"], "the session kept using dev's child");
        // The new child hears the session's level right after it starts.
        assert_eq!(ops["logLevel"], "debug");
        // Its subscription on dev's child was released (it was the only subscriber).
        let deadline = Instant::now() + Duration::from_secs(20);
        while whoami(&h, "dave:dev", &watcher).await["subscriptions"] != json!([]) {
            assert!(
                Instant::now() < deadline,
                "the old child kept the subscription"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Another user is refused the session.
        let foreign = h
            .rpc(PATH, "erin:dev", Some(&sid), "tools/list", json!({}))
            .await;
        assert_eq!(foreign.status, 404);
    })
    .await;
}

#[tokio::test]
async fn a_session_that_expires_releases_its_subscriptions_on_a_shared_child() {
    bounded(async {
        let store = MemorySessionStore::new(Duration::from_millis(1500));
        let h = gateway_on(
            &[
                (
                    "target.yaml",
                    stdio_target("fx", &["--stdio", "--conformance"]),
                ),
                ("policy.yaml", allow_all("fx")),
            ],
            store.clone(),
        )
        .await;
        let carol = h.open(PATH, "carol").await;
        let erin = h.open(PATH, "erin").await;
        resource_rpc(&h, "carol", &carol, "resources/subscribe").await;
        assert_eq!(
            whoami(&h, "erin", &erin).await["subscriptions"],
            json!([WATCHED])
        );
        // erin stays in use; carol goes idle past the timeout and the store expires her.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            store.sweep();
            let subs = whoami(&h, "erin", &erin).await["subscriptions"].clone();
            if subs == json!([]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the expired session's subscription stayed"
            );
        }
        let gone = h.rpc(PATH, "carol", Some(&carol), "ping", json!({})).await;
        assert_eq!(
            gone.status, 404,
            "carol's session was not the one that expired"
        );
    })
    .await;
}

#[tokio::test]
async fn a_restarted_shared_child_keeps_its_sessions_subscriptions_and_levels() {
    bounded(async {
        let h = stdio_gateway(&["--stdio", "--conformance"]).await;
        let carol = h.open(PATH, "carol").await;
        let dave = h.open(PATH, "dave").await;
        let erin = h.open(PATH, "erin").await;
        let first = whoami(&h, "erin", &erin).await["pid"].clone();
        resource_rpc(&h, "carol", &carol, "resources/subscribe").await;
        set_level(&h, "dave", &dave, "debug").await;
        let mut carol_get = SseReader::open(&h, PATH, "carol", &carol).await;

        // The child crashes; the next call starts another (after the pool's restart backoff).
        let crashed = h
            .rpc(
                PATH,
                "dave",
                Some(&dave),
                "tools/call",
                json!({"name": "crash", "arguments": {}}),
            )
            .await;
        assert_eq!(crashed.status, 200);
        let deadline = Instant::now() + Duration::from_secs(20);
        let report = loop {
            let r = h
                .rpc(
                    PATH,
                    "erin",
                    Some(&erin),
                    "tools/call",
                    json!({"name": "whoami", "arguments": {}}),
                )
                .await;
            let report = r.body["result"]["content"][0]["text"]
                .as_str()
                .and_then(|t| serde_json::from_str::<Value>(t).ok());
            if let Some(report) = report.filter(|r| r["pid"] != first) {
                break report;
            }
            assert!(Instant::now() < deadline, "the child was not restarted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // The new child was subscribed for carol, and runs at the level dave asked for, before
        // erin's call reached it.
        assert_eq!(report["subscriptions"], json!([WATCHED]), "{report}");
        assert_eq!(report["logLevel"], "debug", "{report}");
        whoami_emitting(&h, "erin", &erin, updated()).await;
        let note = next_update(&mut carol_get, Duration::from_secs(10))
            .await
            .expect("carol hears the new child's update");
        assert_eq!(note["params"]["uri"], WATCHED);

        // Leaving still works on the new child: the last subscriber's unsubscribe reaches it.
        resource_rpc(&h, "carol", &carol, "resources/unsubscribe").await;
        assert_eq!(whoami(&h, "erin", &erin).await["subscriptions"], json!([]));
    })
    .await;
}
