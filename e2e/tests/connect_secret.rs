//! `userCredential` mode `secret` end to end on the real `reflow-dataplane` binary in
//! standalone mode: a caller who has not connected gets a link (a tool error for plain
//! clients, `-32042` for clients that declared URL elicitation), pastes a token on the connect
//! page, and the next call reaches the upstream with their own token; links are single-use and
//! per caller, a shared Credential never stands in, and the token is in no log, audit row or
//! file in plain text.

use std::path::PathBuf;
use std::time::Duration;

use reflow_crds::SealingKey;
use reflow_e2e::fixture_bin;
use reflow_e2e::harness::gateway::target_yaml;
use reflow_e2e::harness::oidc::form_urlencoded;
use reflow_e2e::harness::raw_session::{RawInit, RawSession};
use reflow_e2e::harness::{DataplaneProcess, FixtureProcess, PolicyDoc, http_client};
use secrecy::SecretString;
use serde_json::{Value, json};

const DEV_SECRET: &str = "connect-secret-dev-secret-0123456789abcdef";
const PUBLIC: &str = "http://gateway.test";
const ALICE_TOKEN: &str = "ghp_alice_0123456789_personal";
const SHARED_TOKEN: &str = "ghp_shared_team_token_987";

fn dev_token(user: &str) -> String {
    reflow_dataplane::auth::mint_dev_token(
        &SecretString::from(DEV_SECRET),
        "reflow-dev",
        "reflow",
        user,
        &["dev".to_owned()],
        &[],
        Duration::from_secs(600),
    )
    .expect("token")
}

struct Setup {
    gw: DataplaneProcess,
    _fixture: FixtureProcess,
    dir: PathBuf,
    audit: PathBuf,
}

fn setup() -> Setup {
    let fixture = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "gh"]).expect("fixture");
    let dir =
        std::env::temp_dir().join(format!("reflow-connect-{}", uuid::Uuid::new_v4().simple()));
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests dir");
    let target = target_yaml("gh", "streamableHttp", &fixture.mcp_url())
        + "  userCredential:\n    mode: secret\n    displayName: GitHub\n    inject: {header: Authorization, prefix: 'token '}\n    secret: {hint: 'A fine-grained personal access token'}\n";
    let shared = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: shared, namespace: default}}\nstringData: {{token: '{SHARED_TOKEN}'}}\n---\napiVersion: mcp.reflow.io/v1alpha1\nkind: Credential\nmetadata: {{name: team, namespace: default}}\nspec: {{targetRef: {{name: gh}}, subject: {{group: dev}}, headers: [{{name: Authorization, prefix: 'token ', secretKeyRef: {{name: shared, key: token}}}}]}}\n"
    );
    let policy = PolicyDoc::allow("gh-all", "gh")
        .everyone()
        .rule("all", &["*"])
        .to_yaml();
    std::fs::write(
        manifests.join("all.yaml"),
        [target, policy, shared].join("---\n"),
    )
    .expect("manifests");
    std::fs::write(dir.join("sealing-key"), SealingKey::generate_base64()).expect("key");
    let audit = dir.join("audit.jsonl");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "dev: {{hs256Secret: {DEV_SECRET}}}\nsealingKeyFile: sealing-key\naudit: {{sink: file, path: {}}}\ngateway: {{publicUrl: '{PUBLIC}'}}\n",
            audit.display()
        ),
    )
    .expect("config");
    let gw = DataplaneProcess::spawn(&manifests, &config, &[("RUST_LOG", "debug")])
        .expect("gateway starts");
    Setup {
        gw,
        _fixture: fixture,
        dir,
        audit,
    }
}

/// A caller's raw MCP session.
struct Client(RawSession);

impl Client {
    async fn open(url: &str, user: &str, capabilities: Value) -> Self {
        let init = RawInit {
            capabilities,
            ..RawInit::named("connect-test")
        };
        Self(
            RawSession::open(url, &dev_token(user), init)
                .await
                .expect("session"),
        )
    }

    async fn whoami(&self) -> Value {
        self.0
            .call_tool("gh_whoami", json!({}))
            .await
            .expect("whoami")
    }
}

/// The connect link in a tool error's text, moved from the public URL to the test's address.
fn link_in(text: &str, gw: &DataplaneProcess) -> String {
    let start = text
        .find(PUBLIC)
        .unwrap_or_else(|| panic!("no link in {text:?}"));
    let url = text[start..].split_whitespace().next().expect("link");
    let base = gw.mcp_url().trim_end_matches("/mcp").to_owned();
    url.replacen(PUBLIC, &base, 1)
}

async fn post_value(link: &str, value: &str) -> (u16, String) {
    let resp = http_client()
        .expect("client")
        .post(link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_urlencoded(&[("value", value)]))
        .send()
        .await
        .expect("connect post");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_connects_their_own_token_and_only_they_use_it() {
    let s = setup();
    let url = s.gw.mcp_url();
    let alice = Client::open(&url, "alice", json!({})).await;

    // Not connected: a tool error with the link; the team's shared token is not used instead.
    let first = alice.whoami().await;
    assert_eq!(first["result"]["isError"], true, "{first}");
    let text = first["result"]["content"][0]["text"]
        .as_str()
        .expect("text")
        .to_owned();
    assert!(text.contains("Connect your GitHub account"), "{text}");
    let link = link_in(&text, &s.gw);

    // The page names whose connection it is, and says no-store / no framing.
    let page = http_client()
        .expect("client")
        .get(&link)
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let html = page.text().await.expect("html");
    assert!(
        html.contains("<b>alice</b>") && html.contains("fine-grained"),
        "{html}"
    );

    // A made-up or truncated link is refused.
    let (status, _) = post_value(&format!("{}x", &link[..link.len() - 1]), ALICE_TOKEN).await;
    assert_eq!(status, 404);
    let (status, body) = post_value(&link, ALICE_TOKEN).await;
    assert_eq!(status, 200, "{body}\n{}", s.gw.output());
    // Single use: the same link again (replay) is refused and changes nothing.
    let (status, _) = post_value(&link, "ghp_attacker_replay").await;
    assert_eq!(status, 404);

    let after = alice.whoami().await;
    assert_eq!(
        after["result"]["isError"],
        false,
        "{after}\n{}",
        s.gw.output()
    );
    let report = after["result"]["content"][0]["text"]
        .as_str()
        .expect("report");
    assert!(report.contains(&format!("token {ALICE_TOKEN}")), "{report}");
    assert!(!report.contains(SHARED_TOKEN), "{report}");

    // Bob (a URL-elicitation client) gets -32042 with his own link, not Alice's token.
    let bob = Client::open(&url, "bob", json!({"elicitation": {"url": {}}})).await;
    let refused = bob.whoami().await;
    assert_eq!(refused["error"]["code"], -32042, "{refused}");
    let e = &refused["error"]["data"]["elicitations"][0];
    assert_eq!(e["mode"], "url");
    let bob_link = e["url"].as_str().expect("url");
    assert!(bob_link.starts_with(&format!("{PUBLIC}/connect/")));
    assert_ne!(link_in(bob_link, &s.gw), link);
    let bob_page = http_client()
        .expect("c")
        .get(link_in(bob_link, &s.gw))
        .send()
        .await
        .expect("page");
    assert!(bob_page.text().await.expect("html").contains("<b>bob</b>"));
    // A value with a line break could split the header: refused, and the link is spent.
    let (status, _) = post_value(&link_in(bob_link, &s.gw), "tok\r\nX-Evil: 1").await;
    assert_eq!(status, 400);
    assert_eq!(bob.whoami().await["error"]["code"], -32042);

    // Nothing in plain text anywhere: the store, the gateway's logs (debug), the audit log.
    let store = s.gw_store();
    let mut files = 0;
    for entry in std::fs::read_dir(&store).expect("store dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).unwrap_or_default();
        assert!(!text.contains(ALICE_TOKEN), "plaintext in the store");
        files += 1;
    }
    assert!(files >= 2, "a sealed file and a .gitignore");
    let audit = std::fs::read_to_string(&s.audit).expect("audit log");
    let logs = s.gw.output();
    for (what, text) in [("audit", &audit), ("logs", &logs)] {
        assert!(!text.contains(ALICE_TOKEN), "{what} holds the token");
        assert!(
            !text.contains("ghp_attacker_replay"),
            "{what} holds a refused value"
        );
        assert!(
            !text.contains(&link[link.len() - 20..]),
            "{what} holds a link"
        );
    }
    for outcome in ["connect_required", "\"connected\"", "connect_link_refused"] {
        assert!(audit.contains(outcome), "audit lacks {outcome}: {audit}");
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

impl Setup {
    fn gw_store(&self) -> PathBuf {
        self.dir.join("manifests").join(".reflow-connections")
    }
}
