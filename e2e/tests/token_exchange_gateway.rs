//! `userCredential.mode: tokenExchange` end to end on the real `reflow-dataplane` binary:
//! `oidc-provider` is the callers' IdP (the gateway verifies its JWTs) and the RFC 8693
//! token-exchange endpoint; the upstream is an MCP server on the TypeScript SDK behind
//! `requireBearerAuth` that accepts only RS256 JWTs of that IdP whose `aud` is its own URL.
//! Shown: alice's call reaches the upstream with an exchanged token (sub alice, the gateway's
//! exchange client, not her own token); bob gets his own; one exchange serves several calls;
//! an exchange the IdP refuses, and a Target whose token endpoint is not the caller's issuer,
//! give a clear error and never reach their upstream (nor, for the latter, the foreign
//! endpoint); no token is in the gateway's logs or the audit file.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reflow_crds::SealingKey;
use reflow_e2e::harness::gateway::{PolicyDoc, target_yaml};
use reflow_e2e::harness::net::free_loopback_port;
use reflow_e2e::harness::oauth_upstream::OAuthUpstream;
use reflow_e2e::harness::oidc::{OidcClient, OidcProvider, TOKEN_EXCHANGE_GRANT};
use reflow_e2e::harness::raw_session::{RawInit, RawSession};
use reflow_e2e::harness::{DataplaneProcess, http_client};
use serde_json::json;

/// The gateway's own audience (what its authenticator accepts from the IdP).
const GW_AUD: &str = "https://gateway.reflow.test/mcp";

/// A loopback port that counts every connection made to it (and answers nothing useful).
struct Sink {
    url: String,
    hits: Arc<AtomicUsize>,
}

fn sink() -> Sink {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for mut sock in listener.incoming().flatten() {
            h.fetch_add(1, Ordering::SeqCst);
            let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = sock.read(&mut [0u8; 1024]);
        }
    });
    Sink { url, hits }
}

struct World {
    op: OidcProvider,
    upstream: OAuthUpstream,
    gw: DataplaneProcess,
    base: String,
    dir: PathBuf,
    audit: PathBuf,
    upstream_sink: Sink,
    idp_sink: Sink,
}

fn exchange_target(name: &str, url: &str, endpoint: &str, audience: &str, secret: &str) -> String {
    target_yaml(name, "streamableHttp", url)
        + &format!(
            "  userCredential:\n    mode: tokenExchange\n    displayName: {name}\n    inject: {{header: Authorization}}\n    \
             tokenExchange: {{tokenEndpoint: '{endpoint}', audience: '{audience}', client: {{clientId: gateway, clientSecretRef: {{name: {secret}, key: secret}}}}}}\n"
        )
}

fn secret_yaml(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: e2e}}\nstringData: {{secret: {value}}}\n"
    )
}

fn setup() -> World {
    let op = OidcProvider::builder()
        .client(
            OidcClient::confidential("gateway", "gateway-secret").grant_type(TOKEN_EXCHANGE_GRANT),
        )
        .exchange_token_ttl(Duration::from_secs(300))
        .start()
        .expect("oidc-provider");
    let upstream = OAuthUpstream::spawn_jwt(op.issuer()).expect("upstream");
    let upstream_sink = sink();
    let idp_sink = sink();
    let gw_port = free_loopback_port().expect("port");
    let base = format!("http://127.0.0.1:{gw_port}");
    let dir = std::env::temp_dir().join(format!("reflow-tx-{}", uuid::Uuid::new_v4().simple()));
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    let sink_mcp = format!("{}/mcp", upstream_sink.url);
    let docs = [
        exchange_target(
            "up",
            &upstream.mcp_url(),
            &op.token_endpoint(),
            &upstream.mcp_url(),
            "up-x",
        ),
        secret_yaml("up-x", "gateway-secret"),
        // The IdP refuses this client (wrong secret): its upstream must never be called.
        exchange_target("bad", &sink_mcp, &op.token_endpoint(), &sink_mcp, "bad-x"),
        secret_yaml("bad-x", "not-the-secret"),
        // A token endpoint on another origin than the callers' issuer: nothing is sent there.
        exchange_target(
            "evil",
            &sink_mcp,
            &format!("{}/token", idp_sink.url),
            &sink_mcp,
            "up-x",
        ),
        PolicyDoc::allow("all", "up")
            .everyone()
            .rule("all", &["*"])
            .to_yaml(),
        PolicyDoc::allow("all-bad", "bad")
            .everyone()
            .rule("all", &["*"])
            .to_yaml(),
        PolicyDoc::allow("all-evil", "evil")
            .everyone()
            .rule("all", &["*"])
            .to_yaml(),
    ];
    std::fs::write(manifests.join("all.yaml"), docs.join("---\n")).expect("manifests");
    std::fs::write(dir.join("sealing-key"), SealingKey::generate_base64()).expect("key");
    let audit = dir.join("audit.jsonl");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  issuers:\n  - {{issuer: '{iss}', audiences: ['{GW_AUD}'], discovery: true}}\n\
             sealingKeyFile: sealing-key\naudit: {{sink: file, path: {audit}}}\n",
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
        upstream_sink,
        idp_sink,
    }
}

/// A caller's raw MCP session at the gateway, and the token it presents.
struct Client {
    session: RawSession,
    token: String,
}

impl Client {
    async fn open(w: &World, user: &str) -> Self {
        let token =
            w.op.mint(user, GW_AUD, Some(Duration::from_secs(900)))
                .await
                .expect("caller token");
        let url = format!("{}/mcp", w.base);
        let session = RawSession::open(&url, &token, RawInit::named("tx-test"))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", w.gw.output()));
        Self { session, token }
    }

    /// (failed, text): a tool's text, or the JSON-RPC error's message.
    async fn call(&self, name: &str) -> (bool, String) {
        let r = self
            .session
            .call_tool(name, json!({}))
            .await
            .expect("tools/call");
        if let Some(e) = r.get("error") {
            return (true, e["message"].as_str().unwrap_or_default().to_owned());
        }
        (
            r["result"]["isError"] == true,
            r["result"]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }
}

fn exchanges_of(events: &[reflow_e2e::harness::oidc::OidcEvent], user: &str) -> usize {
    events
        .iter()
        .filter(|e| {
            e.grant_type.as_deref() == Some(TOKEN_EXCHANGE_GRANT)
                && e.account.as_deref() == Some(user)
        })
        .count()
}

#[test]
fn callers_tokens_are_exchanged_per_user_cached_and_never_leak() {
    let w = setup();
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let alice = rt.block_on(Client::open(&w, "alice"));
    let bob = rt.block_on(Client::open(&w, "bob"));

    // Alice's call reaches the upstream with a token for its audience, got by the gateway's
    // exchange client, not her own token (whose aud is the gateway: the upstream refuses it).
    let (err, who) = rt.block_on(alice.call("up_whoami"));
    assert!(
        !err && who == "sub=alice client=gateway",
        "{who}\n{}",
        w.gw.output()
    );
    let (_, alice_tail) = rt.block_on(alice.call("up_token_tail"));
    assert_eq!(alice_tail.len(), 24, "{alice_tail}");
    assert!(
        !alice.token.ends_with(&alice_tail),
        "the upstream saw alice's own token"
    );
    let direct = rt.block_on(async {
        http_client()
            .expect("c")
            .post(w.upstream.mcp_url())
            .bearer_auth(&alice.token)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
            .await
            .expect("direct")
    });
    assert_eq!(
        direct.status(),
        401,
        "alice's own token is no token for the upstream"
    );

    // One exchange served both calls (and any warm-up); bob gets his own.
    let events = rt.block_on(w.op.events()).expect("events");
    assert_eq!(exchanges_of(&events, "alice"), 1, "{events:?}");
    let (err, who) = rt.block_on(bob.call("up_whoami"));
    assert!(!err && who == "sub=bob client=gateway", "{who}");
    let (_, bob_tail) = rt.block_on(bob.call("up_token_tail"));
    assert_ne!(bob_tail, alice_tail);
    let (_, again) = rt.block_on(alice.call("up_token_tail"));
    assert_eq!(again, alice_tail, "alice's exchanged token is reused");
    let events = rt.block_on(w.op.events()).expect("events");
    assert_eq!(exchanges_of(&events, "alice"), 1);
    assert_eq!(exchanges_of(&events, "bob"), 1);

    // The upstream refuses alice's exchanged token once (as if revoked): the gateway forgets
    // it, exchanges anew and retries, so her call still succeeds.
    rt.block_on(w.upstream.reject_next()).expect("reject next");
    let (err, who) = rt.block_on(alice.call("up_whoami"));
    assert!(!err, "the retry with a new exchange failed: {who}");
    assert!(who.contains("sub=alice"), "{who}");
    let events = rt.block_on(w.op.events()).expect("events");
    assert_eq!(
        exchanges_of(&events, "alice"),
        2,
        "one more exchange after the 401"
    );

    // Refused by the IdP: a clear error, nothing reaches that Target's upstream.
    let (err, text) = rt.block_on(alice.call("bad_whoami"));
    assert!(err, "{text}");
    assert!(
        text.contains("refused the token exchange") && text.contains("invalid_client"),
        "{text}"
    );
    // A token endpoint on another origin: the caller's token is not sent there at all.
    let (err, text) = rt.block_on(alice.call("evil_whoami"));
    assert!(
        err && text.contains("no other origin than its issuer"),
        "{text}"
    );
    assert_eq!(
        w.upstream_sink.hits.load(Ordering::SeqCst),
        0,
        "an upstream was called without its token"
    );
    assert_eq!(
        w.idp_sink.hits.load(Ordering::SeqCst),
        0,
        "a caller's token went to a foreign endpoint"
    );

    // No token anywhere: the callers' own, nor the exchanged ones' ends. (The audit file is
    // written behind the requests: wait, bounded, for the last outcome.)
    let outcomes = [
        "\"token_exchanged\"",
        "\"token_exchange_failed\"",
        "\"token_exchange_unavailable\"",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let text = std::fs::read_to_string(&w.audit).unwrap_or_default();
        if outcomes.iter().all(|o| text.contains(o)) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let logs = w.gw.output();
    for (what, text) in [("audit", &audit), ("logs", &logs)] {
        for (name, secret) in [
            ("alice's token", alice.token.as_str()),
            ("bob's token", bob.token.as_str()),
            (
                "alice's token's signature",
                &alice.token[alice.token.len() - 24..],
            ),
            ("alice's exchanged token", alice_tail.as_str()),
            ("bob's exchanged token", bob_tail.as_str()),
        ] {
            assert!(!text.contains(secret), "{what} holds {name}");
        }
    }
    for outcome in outcomes {
        assert!(audit.contains(outcome), "audit lacks {outcome}: {audit}");
    }
    let _ = std::fs::remove_dir_all(&w.dir);
}
