//! Identity forwarding through the gateway: an opted-in Target receives a gateway-signed JWT
//! (verified here against the gateway's own `/.well-known/jwks.json`) and/or plain identity
//! headers; a Target that did not opt in receives neither; the client's token never travels.

mod support;

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reflow_dataplane::mcp::GatewayConfig;
use serde_json::{Value, json};
use support::*;

fn forwarding_target(name: &str, url: &str, forwarding: &str) -> String {
    format!(
        "{}  identityForwarding: {forwarding}\n",
        target_yaml(name, url, 5_000)
    )
}

#[tokio::test]
async fn forwarded_identity_verifies_against_the_gateway_jwks() {
    let dir = temp_dir();
    let (signed, plain, silent) = (
        Upstream {
            tools: vec!["echo"],
            ..Upstream::default()
        },
        Upstream {
            tools: vec!["echo"],
            ..Upstream::default()
        },
        Upstream {
            tools: vec!["echo"],
            ..Upstream::default()
        },
    );
    let docs = [
        forwarding_target(
            "signed",
            &start_upstream(signed.clone()).await,
            "{jwt: {audience: search-api}}",
        ),
        forwarding_target(
            "plain",
            &start_upstream(plain.clone()).await,
            "{jwt: {header: X-Caller}, headers: true}",
        ),
        target_yaml("silent", &start_upstream(silent.clone()).await, 5_000),
    ];
    for (i, doc) in docs.iter().enumerate() {
        std::fs::write(dir.join(format!("t{i}.yaml")), doc).unwrap();
        let name = ["signed", "plain", "silent"][i];
        std::fs::write(
            dir.join(format!("p{i}.yaml")),
            policy_yaml(&format!("allow-{name}"), name, "Allow", &["*"], 0),
        )
        .unwrap();
    }
    let config = GatewayConfig {
        public_url: Some("https://gw.example.com".into()),
        ..GatewayConfig::default()
    };
    let h = start_gateway(dir, config).await;
    for _ in 0..100 {
        if h.gw.snapshots.load().targets().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sid = h.open("/mcp", "alice:dev").await;
    for tool in ["signed_echo", "plain_echo", "silent_echo"] {
        let r = h
            .rpc(
                "/mcp",
                "alice:dev",
                Some(&sid),
                "tools/call",
                json!({"name": tool}),
            )
            .await;
        assert!(r.body.get("result").is_some(), "{tool}: {:?}", r.body);
    }

    let jwks: JwkSet = h
        .http
        .get(format!("{}/.well-known/jwks.json", h.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks.keys.len(), 1);
    let verify = |token: &str, audience: &str| -> Value {
        let jwk = jwks.find(
            jsonwebtoken::decode_header(token)
                .unwrap()
                .kid
                .as_deref()
                .unwrap(),
        );
        let key = DecodingKey::from_jwk(jwk.expect("the token's kid is in the JWKS")).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&[audience]);
        v.set_issuer(&["https://gw.example.com"]);
        jsonwebtoken::decode::<Value>(token, &key, &v)
            .unwrap()
            .claims
    };
    let call_headers = |up: &Upstream| {
        up.headers_seen()
            .into_iter()
            .find(|(m, _)| m == "tools/call")
            .map(|(_, h)| h)
            .expect("the upstream saw the call")
    };

    let seen = call_headers(&signed);
    let claims = verify(&seen["x-reflow-identity"], "search-api");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["groups"], json!(["dev"]));
    let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 300, "short-lived");
    assert!(
        !seen.contains_key("x-reflow-user"),
        "plain headers are opt-in"
    );

    let seen = call_headers(&plain);
    assert_eq!(verify(&seen["x-caller"], "t/plain")["sub"], "alice");
    assert_eq!(seen["x-reflow-user"], "alice");
    assert_eq!(seen["x-reflow-groups"], "dev");

    let seen = call_headers(&silent);
    assert!(
        !seen.keys().any(|k| k.starts_with("x-reflow")),
        "no opt-in, no identity: {seen:?}"
    );
    for up in [&signed, &plain, &silent] {
        for (_, headers) in up.headers_seen() {
            assert!(
                !headers.contains_key("authorization"),
                "the client's token travelled: {headers:?}"
            );
        }
    }
}
