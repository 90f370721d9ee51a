//! TLS and mutual TLS on the listener, with certificates generated per test run: a client
//! certificate from the trusted CA is an identity (CN → user, OU → groups) when configured so,
//! or only admits the connection when the bearer token names the caller; no certificate or one
//! from another CA fails the handshake when certificates are required.

mod support;

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use reflow_dataplane::http::{ClientAuth, ClientIdentity, TlsConfig, TlsListener, UserFrom};
use reflow_dataplane::mcp::GatewayConfig;
use serde_json::Value;
use support::*;

struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// (certificate PEM, key PEM)
type Pair = (String, String);

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { ca }
    }

    fn server(&self) -> Pair {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        (
            params.signed_by(&key, &self.ca).unwrap().pem(),
            key.serialize_pem(),
        )
    }

    /// (rcgen keeps one value per attribute type, so at most one OU here.)
    fn client(&self, cn: &str, ous: &[&str]) -> Pair {
        let mut params = CertificateParams::new(vec![format!("{cn}.clients.example")]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for ou in ous {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, *ou);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        (
            params.signed_by(&key, &self.ca).unwrap().pem(),
            key.serialize_pem(),
        )
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A gateway on manifests with one target allowed to everyone, served over TLS.
async fn tls_gateway(pki: &Pki, auth: ClientAuth, identity: ClientIdentity) -> (Harness, String) {
    let dir = temp_dir();
    let url = start_upstream(Upstream {
        tools: vec!["echo"],
        ..Upstream::default()
    })
    .await;
    write_single_target(&dir, "a", &target_yaml("a", &url, 5_000));
    let h = start_gateway(dir.clone(), GatewayConfig::default()).await;
    let (cert, key) = pki.server();
    let tls = TlsConfig {
        cert_file: write(&dir, "server.pem", &cert),
        key_file: write(&dir, "server.key", &key),
        client_ca_file: Some(write(&dir, "ca.pem", &pki.ca.pem())),
        client_auth: auth,
        client_identity: identity,
        user_from: UserFrom::CommonName,
        name_prefix: String::new(),
        handshake_timeout_ms: 2_000,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = TlsListener::new(listener, tls, 64).unwrap();
    let app = h.app.service();
    tokio::spawn(async move { axum::serve(tls, app).await });
    for _ in 0..100 {
        if !h.gw.snapshots.load().targets().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (h, format!("https://localhost:{}", addr.port()))
}

fn client(pki: &Pki, identity: Option<&Pair>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca.pem().as_bytes()).unwrap()])
        .resolve("localhost", "127.0.0.1:0".parse().unwrap())
        .timeout(Duration::from_secs(5));
    if let Some((cert, key)) = identity {
        let pem = format!("{cert}{key}");
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

async fn initialize(
    c: &reqwest::Client,
    base: &str,
    bearer: Option<&str>,
) -> reqwest::Result<(u16, Option<String>)> {
    let mut r = c
        .post(format!("{base}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#);
    if let Some(b) = bearer {
        r = r.header("authorization", format!("Bearer {b}"));
    }
    let resp = r.send().await?;
    let sid = resp
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    Ok((resp.status().as_u16(), sid))
}

async fn tool_names(c: &reqwest::Client, base: &str, sid: &str) -> Vec<String> {
    // A JSON-only client: what the upstream says besides the reply goes to the GET stream.
    let v = c
        .post(format!("{base}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("mcp-session-id", sid)
        .body(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&v).unwrap_or_else(|e| panic!("{e}: {v}"));
    v["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn mtls_client_certificate_is_the_identity() {
    let pki = Pki::new("reflow test CA");
    let (h, base) = tls_gateway(&pki, ClientAuth::Required, ClientIdentity::Certificate).await;
    let alice = client(&pki, Some(&pki.client("alice", &["dev"])));
    let (status, sid) = initialize(&alice, &base, None).await.unwrap();
    assert_eq!(status, 200, "a certificate alone authenticates");
    let sid = sid.unwrap();
    assert_eq!(tool_names(&alice, &base, &sid).await, ["a_echo"]);
    // The session belongs to the certificate's identity: alice (CN) in group dev (OU).
    let stored = h.gw.sessions.get(&sid).await.unwrap().unwrap();
    let expected = reflow_crds::Identity::new("alice", ["dev"], Vec::<String>::new());
    assert_eq!(
        stored.owner,
        reflow_dataplane::session::subject_of(&expected)
    );
    assert_eq!(stored.claims.as_ref(), Some(&expected));

    // Another certificate (bob) cannot use alice's session.
    let bob = client(&pki, Some(&pki.client("bob", &[])));
    let r = bob
        .post(format!("{base}/mcp"))
        .header("content-type", "application/json")
        .header("mcp-session-id", &sid)
        .body(r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // No certificate, or one from another CA: the handshake fails, nothing is served.
    let anonymous = client(&pki, None);
    assert!(initialize(&anonymous, &base, Some("alice")).await.is_err());
    let rogue = Pki::new("rogue CA");
    let forged = client(&pki, Some(&rogue.client("alice", &["dev"])));
    assert!(initialize(&forged, &base, None).await.is_err());
}

#[tokio::test]
async fn mtls_optional_certificate_falls_back_to_bearer() {
    let pki = Pki::new("reflow test CA");
    let (_h, base) = tls_gateway(&pki, ClientAuth::Optional, ClientIdentity::Certificate).await;
    let anonymous = client(&pki, None);
    assert_eq!(initialize(&anonymous, &base, None).await.unwrap().0, 401);
    assert_eq!(
        initialize(&anonymous, &base, Some("bob")).await.unwrap().0,
        200
    );
    let alice = client(&pki, Some(&pki.client("alice", &[])));
    assert_eq!(initialize(&alice, &base, None).await.unwrap().0, 200);
}

#[tokio::test]
async fn mtls_alongside_jwt_needs_both() {
    let pki = Pki::new("reflow test CA");
    let (_h, base) = tls_gateway(&pki, ClientAuth::Required, ClientIdentity::Token).await;
    let with_cert = client(&pki, Some(&pki.client("svc", &[])));
    assert_eq!(
        initialize(&with_cert, &base, None).await.unwrap().0,
        401,
        "the certificate admits the connection; the token names the caller"
    );
    assert_eq!(
        initialize(&with_cert, &base, Some("bob")).await.unwrap().0,
        200
    );
    let without = client(&pki, None);
    assert!(initialize(&without, &base, Some("bob")).await.is_err());
}
