//! `userCredential.mode: tokenExchange`'s client (`reflow_oauth::exchange`) against the real
//! `oidc-provider` (the harness registers an RFC 8693 grant): the caller's token at the caller's
//! IdP becomes a token for the upstream's audience (same subject, not the caller's token),
//! cached per (user, Target) until shortly before expiry; a refused exchange is a clear error
//! that carries no token.

use std::time::Duration;

use base64::Engine;
use reflow_e2e::harness::oidc::{OidcClient, OidcProvider, TOKEN_EXCHANGE_GRANT};
use reflow_oauth::exchange::{ExchangeCache, ExchangeRequest, exchange};
use reflow_oauth::{ClientAuth, ExposeSecret, OAuthHttp, SecretString, TokenClient};
use serde_json::Value;

const AUDIENCE: &str = "http://127.0.0.1:9/upstream/mcp";

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("claims")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_callers_token_becomes_an_audience_scoped_token_cached_per_user() {
    let op = OidcProvider::builder()
        .client(
            OidcClient::confidential("gateway", "gateway-secret")
                .redirect_uri("http://127.0.0.1:9/cb")
                .grant_type(TOKEN_EXCHANGE_GRANT),
        )
        .exchange_token_ttl(Duration::from_secs(120))
        .start()
        .expect("oidc-provider starts");
    let caller = op
        .mint("alice", "reflow-gateway", None)
        .await
        .expect("alice's token at her IdP");
    let client = TokenClient::new(
        OAuthHttp::new(Duration::from_secs(10), 64 * 1024),
        &op.token_endpoint(),
        None,
        ClientAuth::Basic {
            client_id: "gateway".into(),
            secret: SecretString::from("gateway-secret"),
        },
    )
    .expect("client");
    let req = ExchangeRequest {
        audience: AUDIENCE,
        scopes: &[],
        resource: None,
    };
    let subject = SecretString::from(caller.clone());
    let got = exchange(&client, &subject, &req).await.expect("exchange");
    let token = got.access_token.expose_secret().to_owned();
    assert_ne!(
        token, caller,
        "the upstream never sees the caller's own token"
    );
    let c = claims(&token);
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["aud"], AUDIENCE);
    assert_eq!(claims(&caller)["aud"], "reflow-gateway");
    assert!(
        !format!("{got:?}").contains(&token),
        "Debug prints no token"
    );

    // Cached per (user, Target): the second call does not reach the IdP.
    let cache = ExchangeCache::default();
    let key = "e2e/lin alice";
    let first = cache
        .get_or_exchange(key, &client, &subject, &req)
        .await
        .expect("first");
    let exchanges = |events: &[reflow_e2e::harness::oidc::OidcEvent]| {
        events
            .iter()
            .filter(|e| e.grant_type.as_deref() == Some(TOKEN_EXCHANGE_GRANT))
            .count()
    };
    let before = exchanges(&op.events().await.expect("events"));
    let second = cache
        .get_or_exchange(key, &client, &subject, &req)
        .await
        .expect("second");
    assert_eq!(first.expose_secret(), second.expose_secret());
    assert_eq!(exchanges(&op.events().await.expect("events")), before);
    assert!(cache.get("e2e/lin bob").is_none(), "never another user's");

    // A refused exchange (a token the IdP did not issue): a clear error without the token.
    let forged = SecretString::from("eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.");
    let e = exchange(&client, &forged, &req)
        .await
        .expect_err("a forged subject token is refused");
    let text = e.to_string();
    assert!(text.contains("invalid_grant"), "{text}");
    assert!(!text.contains("eyJ"), "{text}");
    // A client without the grant is refused as well.
    let stranger = TokenClient::new(
        OAuthHttp::new(Duration::from_secs(10), 64 * 1024),
        &op.token_endpoint(),
        None,
        ClientAuth::Basic {
            client_id: "gateway".into(),
            secret: SecretString::from("wrong-secret"),
        },
    )
    .expect("client");
    assert!(exchange(&stranger, &subject, &req).await.is_err());
}
