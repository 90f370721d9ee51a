//! `userCredential` mode `oauth2` for a Target with no pre-registered client, on the real
//! `reflow-dataplane` binary (standalone): the authorization server (`oidc-provider`, with
//! dynamic registration off) advertises `client_id_metadata_document_supported`, so the
//! gateway presents `<publicUrl>/connect/client-metadata.json` as its `client_id`; the AS
//! fetches that document from the gateway, checks its `client_id` is its own URL, and a real
//! headless chromium signs in and consents. Shown: the AS fetched exactly the gateway's document
//! URL, the code was traded under that client id, and the call reaches the upstream (which
//! verifies the token by introspection) as alice with that client.

use std::time::Duration;

use reflow_crds::SealingKey;
use reflow_e2e::harness::browser::{Browser, chromium_path};
use reflow_e2e::harness::connect_flow::{self, McpUser};
use reflow_e2e::harness::gateway::{PolicyDoc, target_yaml};
use reflow_e2e::harness::net::free_loopback_port;
use reflow_e2e::harness::oauth_upstream::OAuthUpstream;
use reflow_e2e::harness::oidc::{OidcClient, OidcProvider};
use reflow_e2e::harness::{DataplaneProcess, http_client};
use serde_json::{Value, json};

const GW_AUD: &str = "https://gateway.reflow.test/mcp";
const WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_target_without_a_client_connects_by_the_gateways_metadata_document() {
    if let Err(why) = chromium_path() {
        eprintln!("skipping: {why}");
        return;
    }
    let gw_port = free_loopback_port().expect("port");
    let base = format!("http://127.0.0.1:{gw_port}");
    let document = format!("{base}/connect/client-metadata.json");
    let introspector = OidcClient {
        client_id: "upstream-rs".into(),
        client_secret: Some("upstream-rs-secret".into()),
        redirect_uris: Vec::new(),
        grant_types: vec!["client_credentials".into()],
    };
    let op = OidcProvider::builder()
        .client(introspector)
        .client_id_metadata_documents()
        .start()
        .expect("oidc-provider");
    let upstream =
        OAuthUpstream::spawn(op.issuer(), "upstream-rs", "upstream-rs-secret").expect("upstream");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(op.opaque_resource(&upstream.mcp_url()))
        .expect("opaque upstream tokens");

    let dir = std::env::temp_dir().join(format!("reflow-cimd-{}", uuid::Uuid::new_v4().simple()));
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    let target = target_yaml("up", "streamableHttp", &upstream.mcp_url())
        + "  userCredential:\n    mode: oauth2\n    displayName: Upstream\n    inject: {header: Authorization}\n    oauth2: {scopes: [openid, mcp]}\n";
    let policy = PolicyDoc::allow("up-all", "up")
        .everyone()
        .rule("all", &["*"])
        .to_yaml();
    std::fs::write(manifests.join("all.yaml"), [target, policy].join("---\n")).expect("manifests");
    std::fs::write(dir.join("sealing-key"), SealingKey::generate_base64()).expect("key");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  issuers:\n  - {{issuer: '{iss}', audiences: ['{GW_AUD}'], discovery: true}}\n\
             sealingKeyFile: sealing-key\ngateway:\n  publicUrl: '{base}'\n",
            iss = op.issuer(),
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

    // The document the AS will fetch: its own URL as client_id, the callback, no secret.
    let doc: Value = rt
        .block_on(async {
            http_client()
                .expect("client")
                .get(&document)
                .send()
                .await?
                .json()
                .await
        })
        .expect("document");
    assert_eq!(doc["client_id"], document.as_str(), "{doc}");
    assert_eq!(
        doc["redirect_uris"],
        json!([format!("{base}/connect/callback")])
    );

    let token = rt
        .block_on(op.mint("alice", GW_AUD, Some(Duration::from_secs(900))))
        .expect("caller token");
    let alice = rt
        .block_on(McpUser::open(&base, token))
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.output()));
    let link = rt
        .block_on(alice.link("up_whoami"))
        .unwrap_or_else(|| panic!("a connect link\n{}", gw.output()));
    let mut b = Browser::launch().expect("chromium");
    let (text, _) = connect_flow::connect_in_browser(&mut b, &link, "alice", WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", gw.output(), op.output()));
    assert!(
        text.contains("Connected"),
        "{text}\n{}\n{}",
        gw.output(),
        op.output()
    );

    let events = rt.block_on(op.events()).expect("events");
    let fetched: Vec<_> = events.iter().filter(|e| e.kind == "cimd_fetch").collect();
    assert!(
        !fetched.is_empty()
            && fetched
                .iter()
                .all(|e| e.client_id.as_deref() == Some(document.as_str())),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.kind == "token"
            && e.grant_type.as_deref() == Some("authorization_code")
            && e.client_id.as_deref() == Some(document.as_str())
            && e.account.as_deref() == Some("alice")),
        "{events:?}"
    );
    let (err, who) = rt.block_on(alice.text("up_whoami", json!({})));
    assert!(
        !err && who.starts_with(&format!("sub=alice client={document}")),
        "{who}\n{}",
        gw.output()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
