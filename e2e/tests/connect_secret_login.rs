//! `userCredential` mode `secret` with an OIDC issuer (`gateway.console.oidc`) on the real
//! `reflow-dataplane` binary: the connect page signs the user in at the IdP (`oidc-provider`)
//! before it shows the paste form, in a real headless chromium. Shown: another signed-in user
//! on alice's link gets the mismatch page and nothing is stored; a value posted with the link
//! alone (no sign-in) is never stored; alice signs in, pastes and stores, and her next call
//! carries her token; no token is in the logs or the audit file.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reflow_crds::SealingKey;
use reflow_dataplane::connect::ConnectionStore;
use reflow_e2e::fixture_bin;
use reflow_e2e::harness::browser::{Browser, chromium_path};
use reflow_e2e::harness::connect_flow::McpUser;
use reflow_e2e::harness::gateway::{PolicyDoc, target_yaml};
use reflow_e2e::harness::net::free_loopback_port;
use reflow_e2e::harness::oidc::{OidcClient, OidcProvider, form_urlencoded};
use reflow_e2e::harness::{DataplaneProcess, FixtureProcess};
use serde_json::json;

const GW_AUD: &str = "https://gateway.reflow.test/mcp";
const ALICE_TOKEN: &str = "ghp_alice_signed_in_0123456789";
const DIRECT_TOKEN: &str = "ghp_posted_without_login_42";
const WAIT: Duration = Duration::from_secs(30);

struct World {
    op: OidcProvider,
    _fixture: FixtureProcess,
    gw: DataplaneProcess,
    base: String,
    dir: PathBuf,
    audit: PathBuf,
    key: SealingKey,
}

impl World {
    fn stored(&self, user: &str) -> bool {
        ConnectionStore::in_manifests(&self.dir.join("manifests"), self.key.clone())
            .get("e2e", "gh", user)
            .is_some()
    }
}

fn setup() -> World {
    let gw_port = free_loopback_port().expect("port");
    let base = format!("http://127.0.0.1:{gw_port}");
    let op = OidcProvider::builder()
        .client(OidcClient::public("console").redirect_uri(&format!("{base}/connect/callback")))
        .start()
        .expect("oidc-provider");
    let fixture = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "gh"]).expect("fixture");
    let dir = std::env::temp_dir().join(format!(
        "reflow-secret-login-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    let target = target_yaml("gh", "streamableHttp", &fixture.mcp_url())
        + "  userCredential:\n    mode: secret\n    displayName: GitHub\n    inject: {header: Authorization, prefix: 'token '}\n";
    let policy = PolicyDoc::allow("gh-all", "gh")
        .everyone()
        .rule("all", &["*"])
        .to_yaml();
    std::fs::write(manifests.join("all.yaml"), [target, policy].join("---\n")).expect("manifests");
    let key_b64 = SealingKey::generate_base64();
    std::fs::write(dir.join("sealing-key"), &key_b64).expect("key");
    let key = SealingKey::from_base64(&key_b64).expect("key");
    let audit = dir.join("audit.jsonl");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  issuers:\n  - {{issuer: '{iss}', audiences: ['{GW_AUD}'], discovery: true}}\n\
             sealingKeyFile: sealing-key\naudit: {{sink: file, path: {audit}}}\n\
             gateway:\n  publicUrl: '{base}'\n  console:\n    oidc: {{issuer: '{iss}', clientId: console, redirectUrl: '{base}/console/callback', scopes: [openid, mcp], resource: '{GW_AUD}'}}\n",
            iss = op.issuer(),
            audit = audit.display(),
        ),
    )
    .expect("config");
    let gw = DataplaneProcess::spawn_listening(
        &manifests,
        &config,
        &[("RUST_LOG", "debug")],
        &format!("127.0.0.1:{gw_port}"),
    )
    .expect("gateway");
    World {
        op,
        _fixture: fixture,
        gw,
        base,
        dir,
        audit,
        key,
    }
}

/// A caller's MCP session at the gateway, and the token it presents.
struct Client {
    user: McpUser,
    token: String,
}

impl Client {
    async fn open(w: &World, user: &str) -> Self {
        let token =
            w.op.mint(user, GW_AUD, Some(Duration::from_secs(900)))
                .await
                .expect("token");
        let user = McpUser::open(&w.base, token.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", w.gw.output()));
        Self { user, token }
    }

    /// (failed, text) of `gh_whoami`.
    async fn whoami(&self) -> (bool, String) {
        self.user.text("gh_whoami", json!({})).await
    }

    async fn link(&self) -> String {
        self.user.link("gh_whoami").await.expect("a connect link")
    }
}

/// Opens `link` in `b`, presses Continue and signs in at the IdP as `user` (consenting), until
/// the gateway's callback page answers; returns its text.
fn sign_in(b: &mut Browser, link: &str, user: &str) -> String {
    let nav = b.goto(link).expect("connect page");
    assert_eq!(nav.status, Some(200), "{:?}", b.text(None));
    let page = b.text(None).unwrap_or_default();
    assert!(
        page.contains("sign in at the gateway's identity provider first"),
        "{page}"
    );
    b.click("#connect").expect("continue");
    let deadline = Instant::now() + WAIT;
    loop {
        let url = b.url().expect("url");
        if url.contains("/connect/callback") {
            let text = b.text(None).unwrap_or_default();
            if text.contains("Signed in as")
                || text.contains("Not connected")
                || text.contains("not valid")
            {
                return text;
            }
        } else if b
            .wait_for_selector("input[name=login]", Duration::from_millis(300))
            .is_ok()
        {
            b.fill("input[name=login]", user).expect("login");
            b.fill("input[name=password]", "any").expect("password");
            b.click("button[type=submit]").expect("submit login");
        } else if b
            .wait_for_selector("button[type=submit]", Duration::from_millis(300))
            .is_ok()
        {
            let _ = b.click("button[type=submit]");
        }
        assert!(
            Instant::now() < deadline,
            "{user} stuck at {url}: {}",
            b.text(None).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn the_secret_page_signs_the_user_in_and_refuses_anyone_else() {
    if let Err(why) = chromium_path() {
        eprintln!("skipping: {why}");
        return;
    }
    let w = setup();
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let alice = rt.block_on(Client::open(&w, "alice"));
    let mut b = Browser::launch().expect("chromium");

    // Bob signs in on alice's link: the mismatch page, nothing stored.
    let link = rt.block_on(alice.link());
    let text = sign_in(&mut b, &link, "bob");
    assert!(
        text.contains("You signed in as bob") && text.contains("alice"),
        "{text}"
    );
    assert!(!w.stored("alice") && !w.stored("bob"));

    // A value posted with the link alone is not stored: the POST starts the sign-in instead.
    let link = rt.block_on(alice.link());
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = rt
        .block_on(
            no_redirects
                .post(&link)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form_urlencoded(&[("value", DIRECT_TOKEN)]))
                .send(),
        )
        .expect("post");
    assert_eq!(resp.status(), 303);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(location.starts_with(w.op.issuer()), "{location}");
    assert!(!w.stored("alice"));
    // A made-up paste state is refused.
    let resp = rt
        .block_on(
            no_redirects
                .post(format!("{}/connect/paste", w.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form_urlencoded(&[
                    ("state", "made-up"),
                    ("value", DIRECT_TOKEN),
                ]))
                .send(),
        )
        .expect("post");
    assert_eq!(resp.status(), 404);

    // Alice signs in, pastes and stores; her next call carries her own token.
    b.new_context().expect("context");
    let link = rt.block_on(alice.link());
    let text = sign_in(&mut b, &link, "alice");
    assert!(
        text.contains("Signed in as alice"),
        "{text}\n{}",
        w.gw.output()
    );
    b.fill("input[name=value]", ALICE_TOKEN).expect("paste");
    b.click("#store").expect("store");
    b.wait_for_text("Connected", WAIT)
        .unwrap_or_else(|e| panic!("{e}: {}", b.text(None).unwrap_or_default()));
    assert!(w.stored("alice"));
    let (err, report) = rt.block_on(alice.whoami());
    assert!(
        !err && report.contains(&format!("token {ALICE_TOKEN}")),
        "{report}\n{}",
        w.gw.output()
    );

    // No token in the logs or the audit file; the refusal and the connection are audited.
    let audit = std::fs::read_to_string(&w.audit).expect("audit log");
    let logs = w.gw.output();
    for (what, text) in [("audit", &audit), ("logs", &logs)] {
        for secret in [ALICE_TOKEN, DIRECT_TOKEN, alice.token.as_str()] {
            assert!(!text.contains(secret), "{what} holds a token");
        }
    }
    for outcome in [
        "connect_account_mismatch",
        "\"connected\"",
        "connect_link_refused",
    ] {
        assert!(audit.contains(outcome), "audit lacks {outcome}: {audit}");
    }
    let _ = std::fs::remove_dir_all(&w.dir);
}
