//! `userCredential` mode `oauth2` in controller mode, all real parts: a real API server
//! (`../shared/kube/cluster.sh`, else skipped with the reason printed), the `reflow-controller`
//! binary, a `reflow-dataplane` following it (no Kubernetes rights), `oidc-provider` as the
//! users' IdP and the upstream's authorization server, the TypeScript SDK upstream verifying
//! every token by introspection, and headless chromium following the connect link.
//!
//! Shown: alice connects in the browser (IdP login, consent); the dataplane hands the grant to
//! the controller, which writes the sealed Secret and the user-managed Credential (read back
//! through the API); the next call reaches the upstream with alice's token; the lease holder
//! refreshes before expiry and no call fails; the `reflow_connections` tool lists the
//! connection from the snapshot and disconnects through the controller, which revokes at the
//! AS (introspection: the refresh token is no longer active) and deletes both objects; hostile
//! oauth2 grants are refused; no token is in the controller's or the dataplane's logs or the
//! audit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use reflow_crds::SealingKey;
use reflow_crds::grant::{GRANTS_PATH, Grant, GrantKey};
use reflow_e2e::harness::browser::{Browser, chromium_path};
use reflow_e2e::harness::connect_flow::{McpUser, assert_no_secret, connect_in_browser};
use reflow_e2e::harness::controller_process::{
    SYSTEM_NAMESPACE, spawn_controller, spawn_following_dataplane,
};
use reflow_e2e::harness::gateway::{NAMESPACE as NS, PolicyDoc, target_yaml};
use reflow_e2e::harness::net::free_loopback_port;
use reflow_e2e::harness::oauth_upstream::OAuthUpstream;
use reflow_e2e::harness::oidc::{OidcClient, OidcProvider};
use reflow_e2e::harness::{KubeCluster, ManagedChild, http_client};
use serde_json::{Value, json};

const TOKEN: &str = "connect-cluster-oauth-controller-token";
const GW_AUD: &str = "https://gateway.reflow.test/mcp";
const INTROSPECTOR: (&str, &str) = ("upstream-rs", "upstream-rs-secret");
/// Access tokens live this long; the controller refreshes `REFRESH_BEFORE` before expiry.
const TOKEN_TTL: Duration = Duration::from_secs(16);
const REFRESH_BEFORE: &str = "10";
const WAIT: Duration = Duration::from_secs(30);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct World {
    k: KubeCluster,
    op: OidcProvider,
    upstream: OAuthUpstream,
    ctl: ManagedChild,
    ctl_url: String,
    dp: ManagedChild,
    base: String,
    dir: PathBuf,
    key: SealingKey,
}

impl World {
    /// Alice's grant as the controller stored it (opened with the sealing key, test only).
    fn stored(&self, user: &str) -> Option<Grant> {
        let key = GrantKey {
            namespace: NS.into(),
            target: "up".into(),
            user: user.into(),
        };
        let s = self.k.get(&["secret", &key.object_name(), "-n", NS])?;
        let data: BTreeMap<String, Vec<u8>> = s["data"]
            .as_object()?
            .iter()
            .filter_map(|(k, v)| {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str()?)
                    .ok()?;
                Some((k.clone(), raw))
            })
            .collect();
        Grant::open(key, &data, &self.key).ok()
    }

    fn tokens_of(&self, user: &str) -> Vec<String> {
        let Some(g) = self.stored(user) else {
            return Vec::new();
        };
        let mut out = vec![g.value.expose().to_owned()];
        out.extend(
            g.oauth2
                .and_then(|o| o.refresh_token)
                .map(|r| r.expose().to_owned()),
        );
        out
    }

    async fn user(&self, name: &str) -> McpUser {
        let token = self
            .op
            .mint(name, GW_AUD, Some(Duration::from_secs(900)))
            .await
            .expect("caller token");
        McpUser::open(&self.base, token)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.dp.output()))
    }
}

fn setup(k: KubeCluster) -> World {
    let r = k.run(&["apply", "-f", &root().join("crds/yaml").to_string_lossy()]);
    assert!(r.ok, "CRDs: {}", r.stderr);
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=30s",
    ]);
    k.ok(&["create", "namespace", SYSTEM_NAMESPACE]);
    k.ok(&["create", "namespace", NS]);
    let port = free_loopback_port().expect("port");
    let base = format!("http://127.0.0.1:{port}");
    let callback = format!("{base}/connect/callback");
    let op = OidcProvider::builder()
        .client(OidcClient::public("console").redirect_uri(&callback))
        .client(OidcClient::confidential("reflow", "reflow-client-secret").redirect_uri(&callback))
        .client(OidcClient {
            client_id: INTROSPECTOR.0.into(),
            client_secret: Some(INTROSPECTOR.1.into()),
            redirect_uris: Vec::new(),
            grant_types: vec!["client_credentials".into()],
        })
        .access_token_ttl(TOKEN_TTL)
        .start()
        .expect("oidc-provider");
    let upstream =
        OAuthUpstream::spawn(op.issuer(), INTROSPECTOR.0, INTROSPECTOR.1).expect("upstream");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(op.opaque_resource(&upstream.mcp_url()))
        .expect("opaque upstream tokens");
    // The AS is discovered (RFC 9728 at the upstream), by the dataplane and the controller.
    let target = target_yaml("up", "streamableHttp", &upstream.mcp_url())
        + "  userCredential:\n    mode: oauth2\n    displayName: Upstream\n    inject: {header: Authorization}\n    oauth2: {scopes: [openid, mcp], client: {clientId: reflow, clientSecretRef: {name: up-oauth, key: secret}}}\n";
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: up-oauth, namespace: {NS}, labels: {{mcp.reflow.io/credential: 'true'}}}}\nstringData: {{secret: reflow-client-secret}}\n"
    );
    let plain = target_yaml("pasted", "streamableHttp", &upstream.mcp_url())
        + "  userCredential:\n    mode: secret\n    inject: {header: Authorization, prefix: 'Bearer '}\n";
    let policy = PolicyDoc::allow("up-all", "up")
        .everyone()
        .rule("all", &["*"])
        .to_yaml();
    let r = k.apply(&[target, secret, plain, policy].join("---\n"));
    assert!(r.ok, "manifests: {}", r.stderr);

    let key_b64 = SealingKey::generate_base64();
    let key = SealingKey::from_base64(&key_b64).expect("key");
    let (ctl, ctl_url) = spawn_controller(
        &k,
        "ctl-a",
        &key_b64,
        TOKEN,
        &[("REFLOW_REFRESH_BEFORE", REFRESH_BEFORE)],
    )
    .expect("controller");
    let dir =
        std::env::temp_dir().join(format!("reflow-cloauth-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = format!(
        "auth:\n  issuers:\n  - {{issuer: '{iss}', audiences: ['{GW_AUD}'], discovery: true}}\n\
         sealingKeyFile: sealing-key\naudit: {{sink: file, path: {audit}}}\n\
         gateway:\n  publicUrl: '{base}'\n  console:\n    oidc: {{issuer: '{iss}', clientId: console, redirectUrl: '{base}/console/callback', scopes: [openid, mcp], resource: '{GW_AUD}'}}\n",
        iss = op.issuer(),
        audit = dir.join("audit.jsonl").display(),
    );
    let (dp, base) = spawn_following_dataplane(
        &dir,
        &ctl_url,
        (&key_b64, TOKEN),
        &config,
        &format!("127.0.0.1:{port}"),
    )
    .expect("dataplane");
    World {
        k,
        op,
        upstream,
        ctl,
        ctl_url,
        dp,
        base,
        dir,
        key,
    }
}

async fn refreshes(ctl_url: &str) -> u64 {
    counter(
        ctl_url,
        "reflow_controller_grant_refreshes_total{outcome=\"refreshed\"}",
    )
    .await
}

async fn counter(url: &str, series: &str) -> u64 {
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
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn label(o: &Value, name: &str) -> Option<String> {
    o["metadata"]["labels"][name].as_str().map(str::to_owned)
}

/// The controller wrote both objects, user-managed, owned by the Target; no plaintext.
fn objects_written(w: &World, tokens: &[String]) {
    let name = GrantKey {
        namespace: NS.into(),
        target: "up".into(),
        user: "alice".into(),
    }
    .object_name();
    let secret = w.k.get(&["secret", &name, "-n", NS]).expect("the Secret");
    let credential =
        w.k.get(&["credential", &name, "-n", NS])
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
    assert_eq!(credential["spec"]["headers"][0]["prefix"], "Bearer ");
    assert_no_secret(
        "the Secret as the API serves it",
        &secret.to_string(),
        tokens,
    );
    for v in secret["data"].as_object().expect("data").values() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64"))
            .expect("base64");
        assert_no_secret("the Secret's data", &String::from_utf8_lossy(&raw), tokens);
    }
}

/// A dataplane token in hostile hands: oauth2 grants that do not fit their Target.
async fn hostile_oauth2_grants_are_refused(w: &World, genuine: &Grant) {
    let post = |g: Value| async move {
        let resp = http_client()
            .expect("client")
            .post(format!("{}{GRANTS_PATH}", w.ctl_url))
            .bearer_auth(TOKEN)
            .json(&g)
            .send()
            .await
            .expect("controller answers");
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    };
    let mut base = serde_json::to_value(genuine).expect("json");
    base["user"] = json!("mallory");
    base["value"] = json!("hostile-access-token");
    base["oauth2"]["refreshToken"] = json!("hostile-refresh-token");
    let cases = [
        // oauth2 material for a Target in mode secret.
        ("/target", json!("pasted"), "not oauth2"),
        // Another token endpoint: the refresher would send the Target's client secret there.
        (
            "/oauth2/tokenEndpoint",
            json!(format!("{}/evil-token", w.upstream.mcp_url())),
            "authorization server",
        ),
        // Another resource (another Target's), another client.
        (
            "/oauth2/resource",
            json!("http://127.0.0.1:9/mcp"),
            "resource",
        ),
        ("/oauth2/client/clientId", json!("someone-else"), "client"),
    ];
    for (path, value, why) in cases {
        let mut g = base.clone();
        *g.pointer_mut(path).expect(path) = value;
        let (s, body) = post(g).await;
        assert_eq!(s, 403, "{path}: {body}");
        assert!(body.contains(why), "{path}: {body}");
    }
    let mut g = base.clone();
    g["oauth2"]["refreshToken"] = json!("x".repeat(9 * 1024));
    let (s, body) = post(g).await;
    assert_eq!(s, 422, "oversize refresh token: {body}");
    let mut g = base.clone();
    g["oauth2"]["revocationEndpoint"] = json!("file:///etc/passwd");
    assert_eq!(post(g).await.0, 422);
    assert!(w.stored("mallory").is_none(), "nothing stored for mallory");
}

#[test]
fn oauth2_connect_through_the_controller_refresh_and_revoking_disconnect() {
    if let Err(why) = chromium_path() {
        eprintln!("skipping: {why}");
        return;
    }
    let Some(k) = KubeCluster::start("connect-cluster-oauth").expect("cluster") else {
        return;
    };
    let started_all = Instant::now();
    let w = setup(k);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let alice = rt.block_on(w.user("alice"));

    // Not connected: a link (once the controller's snapshot is live on the dataplane).
    let started = Instant::now();
    let link = loop {
        if let Some(l) = rt.block_on(alice.link("up_whoami")) {
            break l;
        }
        assert!(
            started.elapsed() < WAIT,
            "no connect link\n{}",
            w.dp.output()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut b = Browser::launch().expect("chromium");
    let (text, _) = connect_in_browser(&mut b, &link, "alice", WAIT).expect("connect flow");
    assert!(
        text.contains("Connected"),
        "{text}\n{}\n{}",
        w.dp.output(),
        w.ctl.output()
    );

    // The controller wrote the Secret and the Credential; the grant holds what refreshing and
    // revoking need, with the method the AS's metadata calls for.
    let grant = w.stored("alice").expect("alice's grant opens");
    let o = grant.oauth2.clone().expect("oauth2 material");
    assert_eq!(o.client.client_id, "reflow");
    assert!(
        o.client.registered_secret.is_none(),
        "the Target's secret stays in its Secret"
    );
    assert_eq!(o.client.auth_method.as_deref(), Some("client_secret_basic"));
    assert_eq!(o.revocation_endpoint, Some(w.op.revocation_endpoint()));
    assert_eq!(o.resource.as_deref(), Some(w.upstream.mcp_url().as_str()));
    let mut seen = w.tokens_of("alice");
    assert_eq!(seen.len(), 2, "an access and a refresh token");
    objects_written(&w, &seen);

    // The snapshot carried it: the call reaches the upstream with alice's token.
    let (err, who) = rt.block_on(alice.text("up_whoami", json!({})));
    assert!(
        !err && who.starts_with("sub=alice client=reflow"),
        "{who}\n{}",
        w.dp.output()
    );
    let bob = rt.block_on(w.user("bob"));
    assert!(
        rt.block_on(bob.link("up_whoami")).is_some(),
        "bob connects on his own"
    );

    // The lease holder refreshes before expiry; every call keeps working (no upstream 401).
    let stats = |c: &McpUser| -> Value {
        let (_, t) = rt.block_on(c.text("up_auth_stats", json!({})));
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}"))
    };
    let before = stats(&alice);
    let first_access = seen[0].clone();
    let refreshed_before = rt.block_on(refreshes(&w.ctl_url));
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < TOKEN_TTL * 2 {
        let (err, who) = rt.block_on(alice.text("up_whoami", json!({})));
        assert!(
            !err && who.starts_with("sub=alice"),
            "call {calls} failed: {who}\n{}",
            w.dp.output()
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
    let refreshed = rt.block_on(refreshes(&w.ctl_url)) - refreshed_before;
    assert!(
        refreshed >= 2,
        "{refreshed} refreshes in {:?}",
        TOKEN_TTL * 2
    );
    assert!(
        !w.tokens_of("alice").contains(&first_access),
        "the access token was renewed"
    );
    eprintln!(
        "controller refresh: {calls} calls over {:?}, {refreshed} refreshes, 0 upstream 401s",
        started.elapsed()
    );

    rt.block_on(hostile_oauth2_grants_are_refused(&w, &grant));

    // The built-in tool lists the connection from the snapshot (never a value) and disconnects
    // through the controller, which revokes at the AS first.
    let (_, listed) = rt.block_on(alice.text("reflow_connections", json!({})));
    assert!(
        listed.contains(&format!("{NS}/up")) && listed.contains("\"connected\": true"),
        "{listed}"
    );
    assert_no_secret("the tool's list", &listed, &seen);
    let current = w.tokens_of("alice");
    let refresh_token = current.get(1).cloned().expect("a refresh token");
    assert!(
        rt.block_on(w.op.active(&refresh_token, INTROSPECTOR.0, INTROSPECTOR.1))
            .expect("introspection"),
        "the refresh token is active before the disconnect"
    );
    let (err, done) = rt.block_on(alice.text(
        "reflow_connections",
        json!({"action": "disconnect", "target": format!("{NS}/up")}),
    ));
    assert!(
        !err && done.contains("revoked"),
        "{done}\n{}",
        w.ctl.output()
    );
    assert!(
        !rt.block_on(w.op.active(&refresh_token, INTROSPECTOR.0, INTROSPECTOR.1))
            .expect("introspection"),
        "the AS still holds the refresh token active"
    );
    let name = GrantKey {
        namespace: NS.into(),
        target: "up".into(),
        user: "alice".into(),
    }
    .object_name();
    w.k.wait_for(
        "the grant's objects deleted",
        Duration::from_secs(10),
        || {
            (w.k.get(&["secret", &name, "-n", NS]).is_none()
                && w.k.get(&["credential", &name, "-n", NS]).is_none())
            .then_some(())
        },
    );
    assert_eq!(
        rt.block_on(counter(
            &w.ctl_url,
            "reflow_controller_grant_revocations_total{outcome=\"revoked\"}"
        )),
        1
    );
    let started = Instant::now();
    while rt.block_on(alice.link("up_whoami")).is_none() {
        assert!(started.elapsed() < WAIT, "alice is still connected");
        std::thread::sleep(Duration::from_millis(200));
    }

    // No token in the controller's or the dataplane's logs, nor in the audit.
    let audit = std::fs::read_to_string(w.dir.join("audit.jsonl")).expect("audit");
    seen.extend(["hostile-access-token", "hostile-refresh-token"].map(str::to_owned));
    assert_no_secret("the dataplane's logs", &w.dp.output(), &seen);
    assert_no_secret("the controller's logs", &w.ctl.output(), &seen);
    assert_no_secret("the audit", &audit, &seen);
    for outcome in ["\"connected\"", "connections_disconnected"] {
        assert!(audit.contains(outcome), "audit lacks {outcome}");
    }
    eprintln!(
        "tokens checked absent: {}; whole test {:?}",
        seen.len(),
        started_all.elapsed()
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&w.dir);
}
