//! `userCredential` in controller mode on a real API server (`../shared/kube/cluster.sh`, else
//! skipped with the reason printed): the real `reflow-dataplane` follows a real
//! `reflow-controller`; a user connects on the dataplane's connect page, the dataplane (no API
//! rights) hands the grant to the controller, which writes a sealed Secret and a user-managed
//! Credential; the snapshot brings the value back and the next call reaches the upstream with
//! the user's own token. Hostile grants are refused with clear statuses, and disconnecting
//! deletes both objects.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reflow_crds::grant::{DISCONNECT_PATH, GRANTS_PATH, GrantKey};
use reflow_crds::grant::{Grant, GrantClient, OAuth2Grant, Redacted};
use reflow_crds::snapshot::InjectAs;
use reflow_dataplane::connect::Slot;
use reflow_dataplane::connect::{ControllerGrants, GrantStore};
use reflow_e2e::fixture_bin;
use reflow_e2e::harness::controller_process::{
    SYSTEM_NAMESPACE as SYSTEM, spawn_controller, spawn_following_dataplane,
};
use reflow_e2e::harness::gateway::{PolicyDoc, target_yaml};
use reflow_e2e::harness::oidc::{OidcClient, OidcProvider, form_urlencoded};
use reflow_e2e::harness::raw_session::{RawInit, RawSession};
use reflow_e2e::harness::{FixtureProcess, KubeCluster, ManagedChild, http_client};
use secrecy::SecretString;
use serde_json::{Value, json};

const NS: &str = reflow_e2e::harness::gateway::NAMESPACE;
const TOKEN: &str = "connect-cluster-controller-token";
const DEV_SECRET: &str = "connect-cluster-dev-secret-0123456789abcdef";
const PUBLIC: &str = "http://gateway.test";
const ALICE_TOKEN: &str = "ghp_alice_cluster_0123456789";
const OAUTH_CLIENT: &str = "reflow-upstream";
const OAUTH_SECRET: &str = "reflow-upstream-secret";
const OAUTH_REDIRECT: &str = "http://127.0.0.1:9/connect/callback";
const OAUTH_RESOURCE: &str = "http://127.0.0.1:9/mcp";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

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

fn controller(k: &KubeCluster, name: &str, key: &str) -> (ManagedChild, String) {
    spawn_controller(k, name, key, TOKEN, &[("REFLOW_REFRESH_BEFORE", "5")])
        .expect("controller starts")
}

/// The real dataplane binary in controller mode (no manifests, no Kubernetes rights).
fn dataplane(dir: &std::path::Path, controller: &str, key: &str) -> (ManagedChild, String) {
    let audit = dir.join("audit.jsonl");
    let config = format!(
        "dev: {{hs256Secret: {DEV_SECRET}}}\nsealingKeyFile: sealing-key\naudit: {{sink: file, path: {}}}\ngateway: {{publicUrl: '{PUBLIC}'}}\n",
        audit.display()
    );
    spawn_following_dataplane(dir, controller, (key, TOKEN), &config, "127.0.0.1:0")
        .expect("dataplane starts")
}

/// One `tools/call gh_whoami` in a fresh session.
async fn whoami(base: &str, user: &str) -> Value {
    call_tool(base, user, "gh_whoami").await
}

async fn call_tool(base: &str, user: &str, tool: &str) -> Value {
    let url = format!("{base}/mcp");
    let session = RawSession::open(&url, &dev_token(user), RawInit::named("connect-cluster"))
        .await
        .expect("session");
    session.call_tool(tool, json!({})).await.expect("call")
}

fn text_of(v: &Value) -> String {
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The connect link in a tool error, moved from the public URL to the dataplane's address.
fn link_in(text: &str, base: &str) -> String {
    let start = text
        .find(PUBLIC)
        .unwrap_or_else(|| panic!("no link in {text:?}"));
    let url = text[start..].split_whitespace().next().expect("link");
    url.replacen(PUBLIC, base, 1)
}

/// Posts JSON to the controller's API with `token`; the status.
async fn post(url: &str, path: &str, token: &str, body: String) -> (u16, String) {
    let resp = http_client()
        .expect("client")
        .post(format!("{url}{path}"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("controller answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

fn grant_json(ns: &str, target: &str, user: &str, value: &str) -> String {
    json!({"namespace": ns, "target": target, "user": user, "value": value}).to_string()
}

fn label(o: &Value, name: &str) -> Option<String> {
    o["metadata"]["labels"][name].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_connects_through_the_controller_and_disconnects() {
    let Some(k) = KubeCluster::start("connect-cluster").expect("cluster") else {
        return;
    };
    let r = k.run(&["apply", "-f", &root().join("crds/yaml").to_string_lossy()]);
    assert!(r.ok, "CRDs: {}", r.stderr);
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=30s",
    ]);
    k.ok(&["create", "namespace", SYSTEM]);
    k.ok(&["create", "namespace", NS]);
    let fixture = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "gh"]).expect("fixture");
    let target = target_yaml("gh", "streamableHttp", &fixture.mcp_url())
        + "  userCredential:\n    mode: secret\n    displayName: GitHub\n    inject: {header: Authorization, prefix: 'token '}\n";
    let plain = target_yaml("plain", "streamableHttp", &fixture.mcp_url());
    let policy = PolicyDoc::allow("gh-all", "gh")
        .everyone()
        .rule("all", &["*"])
        .to_yaml();
    let r = k.apply(&[target, plain, policy].join("---\n"));
    assert!(r.ok, "manifests: {}", r.stderr);

    let key = reflow_crds::SealingKey::generate_base64();
    let (mut ctl, ctl_url) = controller(&k, "ctl-a", &key);
    let (mut ctl_b, ctl_b_url) = controller(&k, "ctl-b", &key);
    let dir = std::env::temp_dir().join(format!("reflow-conncl-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (mut dp, base) = dataplane(&dir, &ctl_url, &key);

    // Not connected: a tool error with a link (once the controller's snapshot is live).
    let started = Instant::now();
    let first = loop {
        let v = whoami(&base, "alice").await;
        if text_of(&v).contains("Connect your GitHub account") {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no connect link: {v}\n{}",
            dp.output()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let link = link_in(&text_of(&first), &base);
    let resp = http_client()
        .expect("client")
        .post(&link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_urlencoded(&[("value", ALICE_TOKEN)]))
        .send()
        .await
        .expect("connect post");
    let status = resp.status().as_u16();
    let page = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{page}\n{}\n{}", dp.output(), ctl.output());

    // The controller wrote a Secret and a Credential, both labelled user-managed; the Secret
    // holds the value sealed, never in plain text.
    let alice = GrantKey {
        namespace: NS.into(),
        target: "gh".into(),
        user: "alice".into(),
    };
    let name = alice.object_name();
    let secret = k.get(&["secret", &name, "-n", NS]).expect("the Secret");
    let credential = k
        .get(&["credential", &name, "-n", NS])
        .expect("the Credential");
    for o in [&secret, &credential] {
        assert_eq!(
            label(o, "mcp.reflow.io/user-managed").as_deref(),
            Some("true")
        );
        assert_eq!(o["metadata"]["ownerReferences"][0]["kind"], "Target");
    }
    assert_eq!(credential["spec"]["subject"]["user"], "alice");
    assert_eq!(credential["spec"]["headers"][0]["name"], "authorization");
    use base64::Engine;
    let data = secret["data"].as_object().expect("data");
    assert!(!data.is_empty());
    for (k_, v) in data {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64"))
            .expect("base64");
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains(ALICE_TOKEN), "plaintext in Secret key {k_}");
        assert!(text.contains("\"sealed\""), "{k_}: {text}");
    }

    // The snapshot carried it back: Alice's call reaches the upstream with her own token.
    let after = whoami(&base, "alice").await;
    assert_eq!(
        after["result"]["isError"],
        false,
        "{after}\n{}",
        dp.output()
    );
    assert!(
        text_of(&after).contains(&format!("token {ALICE_TOKEN}")),
        "{after}"
    );
    // Bob is not Alice.
    assert!(text_of(&whoami(&base, "bob").await).contains("Connect your GitHub account"));

    hostile_grants_are_refused(&k, &ctl_url).await;

    // Disconnect (what the dataplane's store does): both objects go, Alice is asked again.
    let store = ControllerGrants::new(&ctl_url, SecretString::from(TOKEN)).expect("store");
    assert!(store.remove(&alice).await.expect("disconnect"));
    assert!(!store.remove(&alice).await.expect("disconnect again"));
    k.wait_for(
        "the grant's objects deleted",
        Duration::from_secs(10),
        || {
            (k.get(&["secret", &name, "-n", NS]).is_none()
                && k.get(&["credential", &name, "-n", NS]).is_none())
            .then_some(())
        },
    );
    let started = Instant::now();
    loop {
        let v = whoami(&base, "alice").await;
        if text_of(&v).contains("Connect your GitHub account") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still connected: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let oauth_tokens = oauth2_refreshed_by_the_lease_holder(
        &k,
        &[("ctl-a", &ctl_url), ("ctl-b", &ctl_b_url)],
        &base,
        &fixture.mcp_url(),
    )
    .await;

    // No token is in any log of the three processes, nor in the audit log.
    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default();
    for (what, text) in [
        ("dataplane logs", dp.output()),
        ("controller logs", ctl.output()),
        ("second controller logs", ctl_b.output()),
        ("audit", audit),
    ] {
        assert!(!text.contains(ALICE_TOKEN), "{what} holds the token");
        assert!(
            !text.contains("hostile-value"),
            "{what} holds a refused value"
        );
        for t in &oauth_tokens {
            assert!(!text.contains(t.as_str()), "{what} holds an oauth2 token");
        }
    }
    dp.kill();
    ctl.kill();
    ctl_b.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Straight at the controller's API, as a stolen dataplane token could.
async fn hostile_grants_are_refused(k: &KubeCluster, url: &str) {
    let g = |ns: &str, t: &str, u: &str| grant_json(ns, t, u, "hostile-value");
    assert_eq!(
        post(url, GRANTS_PATH, "wrong", g(NS, "gh", "eve")).await.0,
        401
    );
    let (s, body) = post(url, GRANTS_PATH, TOKEN, g(NS, "plain", "eve")).await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("does not declare userCredential"), "{body}");
    let (s, body) = post(url, GRANTS_PATH, TOKEN, g("kube-system", "gh", "eve")).await;
    assert_eq!(s, 404, "{body}");
    let (s, body) = post(url, GRANTS_PATH, TOKEN, g("Kube_System", "gh", "eve")).await;
    assert_eq!(s, 422, "{body}");
    let long = grant_json(NS, "gh", "eve", &"x".repeat(9 * 1024));
    let (s, body) = post(url, GRANTS_PATH, TOKEN, long).await;
    assert_eq!(s, 422, "{body}");
    let huge = grant_json(NS, "gh", "eve", &"x".repeat(64 * 1024));
    assert_eq!(post(url, GRANTS_PATH, TOKEN, huge).await.0, 413);
    let (s, body) = post(
        url,
        GRANTS_PATH,
        TOKEN,
        grant_json(NS, "gh", "eve", "a\r\nb"),
    )
    .await;
    assert_eq!(s, 422, "{body}");
    // An admin's object under the name a grant would take is never overwritten or deleted.
    let mallory = GrantKey {
        namespace: NS.into(),
        target: "gh".into(),
        user: "mallory".into(),
    };
    let taken = mallory.object_name();
    k.ok(&[
        "create",
        "secret",
        "generic",
        &taken,
        "-n",
        NS,
        "--from-literal=value=admin-owned",
    ]);
    let (s, body) = post(url, GRANTS_PATH, TOKEN, g(NS, "gh", "mallory")).await;
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("not user-managed"), "{body}");
    let key = serde_json::to_string(&mallory).expect("json");
    assert_eq!(post(url, DISCONNECT_PATH, TOKEN, key).await.0, 409);
    assert!(k.get(&["secret", &taken, "-n", NS]).is_some());
    // Nothing was written for the refused grants.
    let list = k
        .get(&[
            "credentials",
            "-n",
            NS,
            "-l",
            "mcp.reflow.io/user-managed=true",
        ])
        .expect("list");
    let users: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|c| c["spec"]["subject"]["user"].as_str())
        .collect();
    assert_eq!(users, ["alice"]);
}

/// `reflow_controller_grant_refreshes_total{outcome="refreshed"}` of a controller replica.
async fn refreshes(url: &str) -> u64 {
    let text = http_client()
        .expect("client")
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("reflow_controller_grant_refreshes_total{outcome=\"refreshed\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn holder(k: &KubeCluster) -> Option<String> {
    k.get(&["lease", "reflow-controller", "-n", SYSTEM])
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
        .filter(|h| !h.is_empty())
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

/// Alice's tokens from the provider (the code flow the dataplane's connect page runs).
async fn alice_tokens(op: &OidcProvider) -> Value {
    use base64::Engine;
    use sha2::Digest;
    let verifier = "k".repeat(50);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let mut url = reqwest::Url::parse(&op.authorization_endpoint()).expect("url");
    url.query_pairs_mut()
        .append_pair("client_id", OAUTH_CLIENT)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", OAUTH_REDIRECT)
        .append_pair("scope", "openid mcp")
        .append_pair("resource", OAUTH_RESOURCE)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", "st");
    let callback = op
        .login_with_forms(url.as_str(), "alice", OAUTH_REDIRECT)
        .await
        .unwrap_or_else(|e| panic!("login: {e}\n{}", op.output()));
    let code = reqwest::Url::parse(&callback)
        .expect("callback")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code");
    http_client()
        .expect("client")
        .post(op.token_endpoint())
        .basic_auth(OAUTH_CLIENT, Some(OAUTH_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_urlencoded(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", OAUTH_REDIRECT),
            ("code_verifier", &verifier),
        ]))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json")
}

/// Item 3 of the controller path: an oauth2 grant handed over by a dataplane is refreshed by the
/// lease holder before it expires (and at once when a dataplane asks, after an upstream 401),
/// the snapshot carries the new token to the dataplane, and the other replica never refreshes.
async fn oauth2_refreshed_by_the_lease_holder(
    k: &KubeCluster,
    controllers: &[(&str, &str)],
    base: &str,
    upstream: &str,
) -> Vec<String> {
    let op = OidcProvider::builder()
        .client(OidcClient::confidential(OAUTH_CLIENT, OAUTH_SECRET).redirect_uri(OAUTH_REDIRECT))
        .access_token_ttl(Duration::from_secs(120))
        .start()
        .expect("oidc-provider starts");
    let target = target_yaml("lin", "streamableHttp", upstream)
        + &format!(
            "  userCredential:\n    mode: oauth2\n    inject: {{header: Authorization}}\n    oauth2: {{authorizationServer: '{}', resource: '{OAUTH_RESOURCE}', client: {{clientId: {OAUTH_CLIENT}, clientSecretRef: {{name: lin-oauth, key: secret}}}}}}\n",
            op.issuer()
        );
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: lin-oauth, namespace: {NS}, labels: {{mcp.reflow.io/credential: 'true'}}}}\nstringData: {{secret: {OAUTH_SECRET}}}\n"
    );
    let policy = PolicyDoc::allow("lin-all", "lin")
        .everyone()
        .rule("all", &["*"])
        .to_yaml();
    let r = k.apply(&[target, secret, policy].join("---\n"));
    assert!(r.ok, "manifests: {}", r.stderr);

    let tokens = alice_tokens(&op).await;
    let first = tokens["access_token"]
        .as_str()
        .expect("access token")
        .to_owned();
    let refresh = tokens["refresh_token"].as_str().expect("refresh token");
    let leader = k.wait_for("a lease holder", Duration::from_secs(30), || holder(k));
    let (lead_url, follow_url) = match controllers {
        [(a, ua), (_, ub)] if *a == leader => (*ua, *ub),
        [(_, ua), (_, ub)] => (*ub, *ua),
        _ => unreachable!("two controllers"),
    };
    // Claimed to expire in 8 s (the token lives 120 s): due 3 s from now with a 5 s margin.
    let expires_at_ms = now_ms() + 8_000;
    let grant = Grant {
        key: GrantKey {
            namespace: NS.into(),
            target: "lin".into(),
            user: "alice".into(),
        },
        value: Redacted::new(first.clone()),
        oauth2: Some(OAuth2Grant {
            refresh_token: Some(Redacted::new(refresh)),
            expires_at_ms: Some(expires_at_ms),
            token_endpoint: op.token_endpoint(),
            issuer: Some(op.issuer().to_owned()),
            revocation_endpoint: None,
            client: GrantClient {
                client_id: OAUTH_CLIENT.into(),
                registered_secret: None,
                auth_method: None,
            },
            scopes: vec![],
            // The provider keeps the granted resource on refresh.
            resource: None,
        }),
    };
    // Handed over through the follower: any replica takes grants.
    let store = ControllerGrants::new(follow_url, SecretString::from(TOKEN)).expect("store");
    let slot = Slot {
        inject_as: InjectAs::Header,
        name: "authorization",
        prefix: "Bearer ",
    };
    let started = Instant::now();
    loop {
        match store.put(&slot, &grant).await {
            Ok(()) => break,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("waiting for the Target: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("grant refused: {e}"),
        }
    }
    let before = refreshes(lead_url).await;
    let refreshed_at = loop {
        if refreshes(lead_url).await > before {
            break now_ms();
        }
        assert!(now_ms() < expires_at_ms + 5_000, "no refresh before expiry");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "refreshed by the lease holder {} ms before the claimed expiry",
        i128::from(expires_at_ms) - i128::from(refreshed_at)
    );
    assert!(refreshed_at < expires_at_ms, "refreshed only after expiry");
    // Not at once either: when due (5 s before expiry; the refresher looks every second).
    assert!(
        refreshed_at + 5_000 + 1_500 >= expires_at_ms,
        "refreshed {} ms early",
        expires_at_ms - refreshed_at
    );
    let events = op.events().await.expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.grant_type.as_deref() == Some("refresh_token")
                && e.account.as_deref() == Some("alice")),
        "{events:?}"
    );
    // The snapshot carried the new token: the upstream sees it, not the first one.
    let started = Instant::now();
    let seen = loop {
        let v = call_tool(base, "alice", "lin_whoami").await;
        let t = text_of(&v);
        if t.contains("Bearer ") && !t.contains(&first) {
            break t;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "old token still used: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(seen.contains("Bearer ey"), "{seen}");

    // An upstream 401 reported by a dataplane: refreshed at once (not due for ~2 minutes).
    let before = refreshes(lead_url).await;
    let asked = Instant::now();
    store
        .refresh_now(&grant.key)
        .await
        .expect("refresh request");
    while refreshes(lead_url).await == before {
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "no refresh on request"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "refresh on a dataplane's request: {} ms",
        asked.elapsed().as_millis()
    );
    assert_eq!(refreshes(follow_url).await, 0, "the follower refreshed");
    upstream_401_asks_the_lease_holder(k, &op, &grant, lead_url, &store, base).await;
    let name = grant.key.object_name();
    let s = k.get(&["secret", &name, "-n", NS]).expect("secret");
    assert!(
        s["metadata"]["annotations"]
            .get("mcp.reflow.io/refresh-requested")
            .is_none(),
        "the request is consumed"
    );
    let token = seen.split("Bearer ").nth(1).unwrap_or_default();
    let token: String = token
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    vec![first, refresh.to_owned(), token]
}

/// A dataplane whose upstream answers 401 to a user's oauth2 token asks the controller for a
/// refresh on its own (no test call to the refresh API here).
async fn upstream_401_asks_the_lease_holder(
    k: &KubeCluster,
    op: &OidcProvider,
    lin: &Grant,
    lead_url: &str,
    store: &ControllerGrants,
    base: &str,
) {
    let refusing =
        FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "deny", "--unauthorized"])
            .expect("refusing fixture");
    let target = target_yaml("deny", "streamableHttp", &refusing.mcp_url())
        + &format!(
            "  userCredential:\n    mode: oauth2\n    inject: {{header: Authorization}}\n    oauth2: {{authorizationServer: '{}', resource: '{OAUTH_RESOURCE}', client: {{clientId: {OAUTH_CLIENT}, clientSecretRef: {{name: lin-oauth, key: secret}}}}}}\n",
            op.issuer()
        );
    let policy = PolicyDoc::allow("deny-all", "deny")
        .everyone()
        .rule("all", &["*"])
        .to_yaml();
    let r = k.apply(&[target, policy].join("---\n"));
    assert!(r.ok, "manifests: {}", r.stderr);
    let mut grant = lin.clone();
    grant.key.target = "deny".into();
    if let Some(o) = grant.oauth2.as_mut() {
        o.expires_at_ms = Some(now_ms() + 600_000);
    }
    let slot = Slot {
        inject_as: InjectAs::Header,
        name: "authorization",
        prefix: "Bearer ",
    };
    let started = Instant::now();
    while let Err(e) = store.put(&slot, &grant).await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "grant refused: {e}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let before = refreshes(lead_url).await;
    let started = Instant::now();
    loop {
        let v = call_tool(base, "alice", "deny_whoami").await;
        if refreshes(lead_url).await > before {
            eprintln!(
                "an upstream 401 led to a refresh by the lease holder within {} ms ({v})",
                started.elapsed().as_millis()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no refresh after upstream 401s: {v}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
