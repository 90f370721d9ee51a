//! `userCredential` mode `oauth2` end to end on the real `reflow-dataplane` binary (standalone):
//! `oidc-provider` is both the users' IdP and the upstream's authorization server; the upstream
//! is an MCP server on the TypeScript SDK behind `requireBearerAuth`, verifying every token by
//! introspection; a real headless chromium follows the connect link, signs in at the IdP and
//! consents at the AS. Shown: the call reaches the upstream as alice; bob gets his own link and
//! his own grant; bob's browser login on alice's link is refused; a replayed link or callback is
//! refused; alice's token is refreshed before expiry with no failed call (no upstream 401); the
//! an upstream 401 is answered by an immediate refresh and one retry; the
//! `reflow_connections` tool disconnects, which revokes at the AS (the upstream then refuses
//! the old token); no token is in the gateway's logs or the audit file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reflow_crds::SealingKey;
use reflow_dataplane::connect::ConnectionStore;
use reflow_e2e::harness::browser::{Browser, chromium_path};
use reflow_e2e::harness::gateway::{PolicyDoc, target_yaml};
use reflow_e2e::harness::net::free_loopback_port;
use reflow_e2e::harness::oauth_upstream::OAuthUpstream;
use reflow_e2e::harness::oidc::{OidcClient, OidcProvider};
use reflow_e2e::harness::raw_session::{self, RawInit, RawSession};
use reflow_e2e::harness::{DataplaneProcess, http_client};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

/// The gateway's own audience (what its authenticator accepts from the IdP).
const GW_AUD: &str = "https://gateway.reflow.test/mcp";
/// Access tokens live this long: refresh is due after two thirds of it.
const TOKEN_TTL: Duration = Duration::from_secs(12);
const WAIT: Duration = Duration::from_secs(20);

struct World {
    op: OidcProvider,
    upstream: OAuthUpstream,
    gw: DataplaneProcess,
    base: String,
    dir: PathBuf,
    audit: PathBuf,
    key: SealingKey,
}

impl World {
    fn store(&self) -> ConnectionStore {
        ConnectionStore::in_manifests(&self.dir.join("manifests"), self.key.clone())
    }

    /// The user's current access and refresh tokens, read from the sealed store (test only).
    fn tokens_of(&self, user: &str) -> Vec<String> {
        let store = self.store();
        let Some(c) = store.get("e2e", "up", user) else {
            return Vec::new();
        };
        let g = store
            .open_grant(&c)
            .expect("opens")
            .expect("an oauth2 grant");
        let mut out = vec![g.access_token.expose_secret().to_owned()];
        out.extend(g.refresh_token.map(|r| r.expose_secret().to_owned()));
        out
    }
}

fn setup() -> World {
    let gw_port = free_loopback_port().expect("port");
    let base = format!("http://127.0.0.1:{gw_port}");
    let callback = format!("{base}/connect/callback");
    let introspector = OidcClient {
        client_id: "upstream-rs".into(),
        client_secret: Some("upstream-rs-secret".into()),
        redirect_uris: Vec::new(),
        grant_types: vec!["client_credentials".into()],
    };
    let op = OidcProvider::builder()
        .client(OidcClient::public("console").redirect_uri(&callback))
        .client(OidcClient::confidential("reflow", "reflow-client-secret").redirect_uri(&callback))
        .client(introspector)
        .access_token_ttl(TOKEN_TTL)
        .start()
        .expect("oidc-provider");
    let upstream =
        OAuthUpstream::spawn(op.issuer(), "upstream-rs", "upstream-rs-secret").expect("upstream");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(op.opaque_resource(&upstream.mcp_url()))
        .expect("opaque upstream tokens");

    let dir = std::env::temp_dir().join(format!("reflow-oauth-{}", uuid::Uuid::new_v4().simple()));
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    let target = target_yaml("up", "streamableHttp", &upstream.mcp_url())
        + "  userCredential:\n    mode: oauth2\n    displayName: Upstream\n    inject: {header: Authorization}\n    oauth2: {scopes: [openid, mcp], client: {clientId: reflow, clientSecretRef: {name: up-oauth, key: secret}}}\n";
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: up-oauth, namespace: e2e}\nstringData: {secret: reflow-client-secret}\n".to_owned();
    let policy = PolicyDoc::allow("up-all", "up")
        .everyone()
        .rule("all", &["*"])
        .to_yaml();
    std::fs::write(
        manifests.join("all.yaml"),
        [target, secret, policy].join("---\n"),
    )
    .expect("manifests");
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
        upstream,
        gw,
        base,
        dir,
        audit,
        key,
    }
}

/// The body of a JSON or SSE answer.
async fn rpc_body(resp: reqwest::Response) -> Value {
    raw_session::rpc_body(resp)
        .await
        .expect("a JSON-RPC answer")
}

/// A caller's raw MCP session.
struct Client(RawSession);

impl Client {
    async fn open(w: &World, user: &str) -> Self {
        let token =
            w.op.mint(user, GW_AUD, Some(Duration::from_secs(900)))
                .await
                .expect("caller token");
        let url = format!("{}/mcp", w.base);
        let session = RawSession::open(&url, &token, RawInit::named("oauth-test")).await;
        Self(session.unwrap_or_else(|e| panic!("{e}\n{}", w.gw.output())))
    }

    async fn post(&self, body: Value) -> reqwest::Response {
        self.0.post(&body).await.expect("post")
    }

    async fn call(&self, name: &str, args: Value) -> Value {
        self.0.call_tool(name, args).await.expect("tools/call")
    }

    async fn text(&self, name: &str, args: Value) -> (bool, String) {
        let r = self.call(name, args).await;
        let text = r["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (
            r["result"]["isError"] == true || r.get("error").is_some(),
            if text.is_empty() { r.to_string() } else { text },
        )
    }

    /// A fresh connect link from a call that is refused for want of a connection.
    async fn link(&self) -> String {
        let (err, text) = self.text("up_whoami", json!({})).await;
        assert!(err, "expected a connect link: {text}");
        let at = text
            .find("/connect/")
            .unwrap_or_else(|| panic!("no link: {text}"));
        let start = text[..at].rfind("http").expect("absolute link");
        text[start..]
            .split_whitespace()
            .next()
            .expect("link")
            .to_owned()
    }
}

/// Follows the connect flow in `b` as `user` (IdP login, consent) until the gateway's
/// callback answers; returns the final page text and URL.
fn connect_in_browser(b: &mut Browser, link: &str, user: &str) -> (String, String) {
    let nav = b.goto(link).expect("connect page");
    assert_eq!(nav.status, Some(200), "{:?}", b.text(None));
    b.click("#connect").expect("continue");
    let deadline = Instant::now() + WAIT;
    loop {
        let url = b.url().expect("url");
        if url.contains("/connect/callback") {
            let text = b.text(None).unwrap_or_default();
            if text.contains("connected")
                || text.contains("Not connected")
                || text.contains("not valid")
            {
                return (text, url);
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
            "flow of {user} stuck at {url}: {}",
            b.text(None).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(150));
    }
}

fn grep_none(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} holds a token ({}…)",
            &s[..6.min(s.len())]
        );
    }
}

#[test]
fn oauth2_connect_refresh_disconnect_in_chromium() {
    if let Err(why) = chromium_path() {
        eprintln!("skipping: {why}");
        return;
    }
    let w = setup();
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let alice = rt.block_on(Client::open(&w, "alice"));
    let bob = rt.block_on(Client::open(&w, "bob"));
    let listed = rt.block_on(async {
        rpc_body(
            alice
                .post(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
                .await,
        )
        .await
    });
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        names.contains(&"reflow_connections"),
        "{listed}\n{}",
        w.gw.output()
    );
    let mut b = Browser::launch().expect("chromium");

    // Bob's browser on alice's link: he signs in as bob at the IdP, and nothing is stored.
    let alice_link_1 = rt.block_on(alice.link());
    let (text, _) = connect_in_browser(&mut b, &alice_link_1, "bob");
    assert!(
        text.contains("You signed in as bob") && text.contains("alice"),
        "{text}"
    );
    assert!(w.store().get("e2e", "up", "alice").is_none());
    assert!(w.store().get("e2e", "up", "bob").is_none());

    // Alice connects with a fresh link in her own browser.
    b.new_context().expect("context");
    let alice_link = rt.block_on(alice.link());
    assert_ne!(alice_link, alice_link_1);
    let (text, callback) = connect_in_browser(&mut b, &alice_link, "alice");
    assert!(text.contains("Connected"), "{text}\n{}", w.gw.output());
    let (err, who) = rt.block_on(alice.text("up_whoami", json!({})));
    assert!(
        !err && who.starts_with("sub=alice client=reflow"),
        "{who}\n{}",
        w.gw.output()
    );

    // The link and the callback are single use.
    assert_eq!(b.goto(&alice_link).expect("replay").status, Some(404));
    let replayed = b.goto(&callback).expect("callback replay");
    assert_eq!(replayed.status, Some(404));
    let post = rt
        .block_on(async { http_client().expect("c").post(&alice_link).send().await })
        .expect("post");
    assert_eq!(post.status(), 404);

    // Bob gets his own link and his own grant.
    let bob_link = rt.block_on(bob.link());
    assert_ne!(bob_link, alice_link);
    b.new_context().expect("context");
    let (text, _) = connect_in_browser(&mut b, &bob_link, "bob");
    assert!(text.contains("Connected"), "{text}");
    let (err, who) = rt.block_on(bob.text("up_whoami", json!({})));
    assert!(!err && who.starts_with("sub=bob"), "{who}");

    // Refresh before expiry, no failed call: call every 500 ms across three token lifetimes.
    let mut seen = w.tokens_of("alice");
    let stats = |c: &Client| -> Value {
        let (_, t) = rt.block_on(c.text("up_auth_stats", json!({})));
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}"))
    };
    let before = stats(&alice);
    let first_access = seen[0].clone();
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < TOKEN_TTL * 3 {
        let (err, who) = rt.block_on(alice.text("up_whoami", json!({})));
        assert!(
            !err && who.starts_with("sub=alice"),
            "call {calls} failed: {who}\n{}",
            w.gw.output()
        );
        calls += 1;
        for t in w.tokens_of("alice") {
            if !seen.contains(&t) {
                seen.push(t);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = stats(&alice);
    assert_eq!(
        after["unauthorized"], before["unauthorized"],
        "a call met a 401: {before} -> {after}"
    );
    let events = rt.block_on(w.op.events()).expect("events");
    let refreshes = events
        .iter()
        .filter(|e| {
            e.grant_type.as_deref() == Some("refresh_token")
                && e.account.as_deref() == Some("alice")
        })
        .count();
    assert!(
        refreshes >= 2,
        "{refreshes} refreshes in {:?}: {events:?}",
        TOKEN_TTL * 3
    );
    assert!(
        !w.tokens_of("alice").contains(&first_access),
        "the access token was renewed"
    );
    eprintln!(
        "refresh: {calls} calls over {:?}, {refreshes} refreshes, 0 upstream 401s",
        started.elapsed()
    );

    // An upstream 401 (the token refused although not expired): refreshed at once, the call
    // retried once and answered; the client never sees the 401.
    let refreshes_of = |events: &[reflow_e2e::harness::oidc::OidcEvent]| {
        events
            .iter()
            .filter(|e| {
                e.grant_type.as_deref() == Some("refresh_token")
                    && e.account.as_deref() == Some("alice")
            })
            .count()
    };
    let before = stats(&alice);
    let refreshed_before = refreshes_of(&rt.block_on(w.op.events()).expect("events"));
    rt.block_on(w.upstream.reject_next()).expect("reject next");
    let (err, who) = rt.block_on(alice.text("up_whoami", json!({})));
    assert!(
        !err && who.starts_with("sub=alice"),
        "a 401 reached the client: {who}\n{}",
        w.gw.output()
    );
    let after = stats(&alice);
    assert_eq!(
        after["unauthorized"].as_u64(),
        before["unauthorized"].as_u64().map(|n| n + 1),
        "exactly the one rejected check: {before} -> {after}"
    );
    let refreshed_after = refreshes_of(&rt.block_on(w.op.events()).expect("events"));
    assert!(refreshed_after > refreshed_before, "no refresh on the 401");
    for t in w.tokens_of("alice") {
        if !seen.contains(&t) {
            seen.push(t);
        }
    }

    // The /connect page points at where the list is (no console here: the tool).
    let index = rt
        .block_on(async {
            let r = http_client()
                .expect("c")
                .get(format!("{}/connect", w.base))
                .send()
                .await?;
            r.text().await
        })
        .expect("index");
    assert!(index.contains("reflow_connections"), "{index}");

    // Disconnect through the built-in tool: revoked at the AS; the upstream refuses the old token.
    let old = w.tokens_of("alice");
    seen.extend(w.tokens_of("bob"));
    let (_, listed) = rt.block_on(alice.text("reflow_connections", json!({})));
    assert!(
        listed.contains("e2e/up") && listed.contains("\"connected\": true"),
        "{listed}"
    );
    grep_none("the tool's list", &listed, &seen);
    let (err, done) = rt.block_on(alice.text(
        "reflow_connections",
        json!({"action": "disconnect", "target": "e2e/up"}),
    ));
    assert!(!err && done.contains("revoked"), "{done}");
    let events = rt.block_on(w.op.events()).expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.kind == "revoked" && e.account.as_deref() == Some("alice")),
        "{events:?}"
    );
    let refused = rt
        .block_on(async {
            http_client()
                .expect("c")
                .post(w.upstream.mcp_url())
                .bearer_auth(&old[0])
                .header("accept", "application/json, text/event-stream")
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
                .send()
                .await
        })
        .expect("upstream");
    assert_eq!(
        refused.status(),
        401,
        "the revoked token still works upstream"
    );
    assert!(
        rt.block_on(alice.link()).contains("/connect/"),
        "alice must connect again"
    );
    let (err, who) = rt.block_on(bob.text("up_whoami", json!({})));
    assert!(
        !err && who.starts_with("sub=bob"),
        "bob is untouched: {who}"
    );

    // No token anywhere: the gateway's output (debug logs) and the audit file.
    let audit = std::fs::read_to_string(&w.audit).expect("audit");
    grep_none("the gateway's logs", &w.gw.output(), &seen);
    grep_none("the audit file", &audit, &seen);
    for outcome in [
        "connect_account_mismatch",
        "\"connected\"",
        "\"refreshed\"",
        "disconnected_revoked",
        "connect_link_refused",
    ] {
        assert!(audit.contains(outcome), "audit lacks {outcome}");
    }
    eprintln!("tokens checked absent from logs and audit: {}", seen.len());
    drop(b);
    let _ = std::fs::remove_dir_all(&w.dir);
    let _: &Path = &w.dir;
}
