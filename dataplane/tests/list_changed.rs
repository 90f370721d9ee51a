//! `list_changed` after a snapshot change, through the gateway against a fake upstream on
//! loopback: a manifests edit that changes what one identity may see is announced on its
//! sessions' GET streams only, per kind, and the next list shows the new set.

mod support;

use std::time::Duration;

use reflow_dataplane::mcp::GatewayConfig;
use support::*;

const PATH: &str = "/mcp";
/// Debounce plus compilation, with room for a loaded machine.
const RELOAD: Duration = Duration::from_secs(10);
/// How long a stream that should stay quiet is watched after the other one heard.
const QUIET: Duration = Duration::from_millis(700);

fn policy(name: &str, subject: &str, kind: &str, effect: &str, names: &[&str]) -> String {
    policy_on("up", name, subject, kind, effect, names)
}

fn policy_on(
    target: &str,
    name: &str,
    subject: &str,
    kind: &str,
    effect: &str,
    names: &[&str],
) -> String {
    let names = names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Policy\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  targetRef: {{name: {target}}}\n  subjects: [{subject}]\n  rules: [{{kind: {kind}, names: [{names}]}}]\n  effect: {effect}\n  priority: 0\n"
    )
}

/// One target `up` serving read/write/admin; everyone may use `read`, group `dev` also `write`.
async fn setup() -> Harness {
    setup_with_url().await.0
}

async fn setup_with_url() -> (Harness, String) {
    let up = Upstream {
        tools: vec!["read", "write", "admin"],
        page: 10,
        ..Default::default()
    };
    let url = start_upstream(up).await;
    let dir = temp_dir();
    std::fs::write(dir.join("target.yaml"), target_yaml("up", &url, 8000)).unwrap();
    std::fs::write(
        dir.join("everyone.yaml"),
        policy("everyone", "{everyone: true}", "tool", "Allow", &["read"]),
    )
    .unwrap();
    std::fs::write(
        dir.join("dev.yaml"),
        policy("dev", "{group: dev}", "tool", "Allow", &["write"]),
    )
    .unwrap();
    std::fs::write(dir.join("secret.yaml"), SECRET).unwrap();
    (start_gateway(dir, GatewayConfig::default()).await, url)
}

#[tokio::test]
async fn a_policy_edit_for_one_group_is_announced_to_its_members_only() {
    let h = setup().await;
    let alice_sid = h.open(PATH, "alice:dev").await;
    let bob_sid = h.open(PATH, "bob").await;
    assert_eq!(
        h.tool_names(PATH, "alice:dev", &alice_sid).await,
        ["up_read", "up_write"]
    );
    assert_eq!(h.tool_names(PATH, "bob", &bob_sid).await, ["up_read"]);
    let mut alice = SseReader::open(&h, PATH, "alice:dev", &alice_sid).await;
    let mut bob = SseReader::open(&h, PATH, "bob", &bob_sid).await;

    // dev loses `write` and gains `admin`; bob is in no rule of that Policy.
    std::fs::write(
        h.dir.join("dev.yaml"),
        policy("dev", "{group: dev}", "tool", "Allow", &["admin"]),
    )
    .unwrap();
    let note = alice
        .next_within(RELOAD)
        .await
        .expect("alice hears of the change");
    assert_eq!(note["method"], "notifications/tools/list_changed");
    // Only tools changed for her: no resources or prompts notification follows.
    assert_eq!(alice.drain(QUIET).await, Vec::<String>::new());
    assert_eq!(bob.drain(QUIET).await, Vec::<String>::new());
    assert_eq!(
        h.tool_names(PATH, "alice:dev", &alice_sid).await,
        ["up_admin", "up_read"]
    );
    assert_eq!(h.tool_names(PATH, "bob", &bob_sid).await, ["up_read"]);

    // A change for everyone reaches bob's stream too (it was quiet for want of a change).
    std::fs::write(
        h.dir.join("everyone.yaml"),
        policy("everyone", "{everyone: true}", "prompt", "Allow", &["*"]),
    )
    .unwrap();
    for stream in [&mut alice, &mut bob] {
        let note = stream.next_within(RELOAD).await.expect("a notification");
        let mut got = vec![note["method"].as_str().unwrap().to_owned()];
        got.extend(stream.drain(QUIET).await);
        got.sort();
        // `read` is no longer allowed (a tool change) and prompts now are.
        assert_eq!(
            got,
            [
                "notifications/prompts/list_changed",
                "notifications/tools/list_changed"
            ]
        );
    }
    assert_eq!(
        h.tool_names(PATH, "bob", &bob_sid).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_session_without_a_get_stream_is_not_told_but_lists_the_new_set() {
    let h = setup().await;
    let alice_sid = h.open(PATH, "alice:dev").await;
    std::fs::write(
        h.dir.join("dev.yaml"),
        policy("dev", "{group: dev}", "tool", "Deny", &["read"]),
    )
    .unwrap();
    // The reload lands within RELOAD; poll the list rather than sleeping a fixed time.
    let deadline = tokio::time::Instant::now() + RELOAD;
    loop {
        let names = h.tool_names(PATH, "alice:dev", &alice_sid).await;
        if names.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What would have been announced is not kept for a stream opened later.
    let mut alice = SseReader::open(&h, PATH, "alice:dev", &alice_sid).await;
    assert_eq!(alice.drain(QUIET).await, Vec::<String>::new());
}

#[tokio::test]
async fn credentials_and_reachable_targets_decide_who_hears() {
    let (h, url) = setup_with_url().await;
    let scoped_path = "/mcp/t/up";
    let agg_sid = h.open(PATH, "alice:dev").await;
    let scoped_sid = h.open(scoped_path, "alice:dev").await;
    let bob_sid = h.open(PATH, "bob").await;
    let mut alice_agg = SseReader::open(&h, PATH, "alice:dev", &agg_sid).await;
    let mut alice_scoped = SseReader::open(&h, scoped_path, "alice:dev", &scoped_sid).await;
    let mut bob = SseReader::open(&h, PATH, "bob", &bob_sid).await;

    // alice's credential on `up` may change what the upstream lists to her: her tools, on both
    // endpoints; she may see no resources or prompts there, so those lists cannot change.
    std::fs::write(
        h.dir.join("cred.yaml"),
        credential_yaml("alice-key", "up", "alice", "x-api-key", "alice"),
    )
    .unwrap();
    for stream in [&mut alice_agg, &mut alice_scoped] {
        let note = stream.next_within(RELOAD).await.expect("alice hears");
        assert_eq!(note["method"], "notifications/tools/list_changed");
        assert_eq!(stream.drain(QUIET).await, Vec::<String>::new());
    }
    assert_eq!(bob.drain(QUIET).await, Vec::<String>::new());

    // A new Target open to everyone: the aggregated sessions hear, the one scoped to `up` not.
    std::fs::write(h.dir.join("extra.yaml"), target_yaml("extra", &url, 8000)).unwrap();
    std::fs::write(
        h.dir.join("extra-policy.yaml"),
        policy_on(
            "extra",
            "extra-all",
            "{everyone: true}",
            "tool",
            "Allow",
            &["*"],
        ),
    )
    .unwrap();
    for stream in [&mut alice_agg, &mut bob] {
        let note = stream
            .next_within(RELOAD)
            .await
            .expect("an aggregated session hears");
        assert_eq!(note["method"], "notifications/tools/list_changed");
    }
    assert_eq!(alice_scoped.drain(QUIET).await, Vec::<String>::new());
    assert_eq!(
        h.tool_names(PATH, "bob", &bob_sid).await,
        ["extra_admin", "extra_read", "extra_write", "up_read"]
    );

    // A Target nobody may use is invisible: adding one announces nothing.
    std::fs::write(h.dir.join("closed.yaml"), target_yaml("closed", &url, 8000)).unwrap();
    let deadline = tokio::time::Instant::now() + RELOAD;
    while h.gw.snapshots.load().target("t", "closed").is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for stream in [&mut alice_agg, &mut alice_scoped, &mut bob] {
        assert_eq!(stream.drain(QUIET).await, Vec::<String>::new());
    }
}
