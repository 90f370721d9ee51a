//! The `oidc` harness against itself: the real `oidc-provider` issues what gateway tests rely on
//! (PKCE-bound codes, JWT access tokens with `aud` = the RFC 8707 resource and verifiable
//! through JWKS, refresh, RFC 7009 revocation, RFC 8693 exchange) and refuses what it must.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reflow_e2e::harness::http_client;
use reflow_e2e::harness::oidc::{OidcClient, OidcProvider, TOKEN_EXCHANGE_GRANT, form_urlencoded};
use serde_json::Value;
use sha2::{Digest, Sha256};

const REDIRECT: &str = "http://127.0.0.1:9/callback";
const RESOURCE: &str = "http://127.0.0.1:9/mcp";

fn provider() -> OidcProvider {
    OidcProvider::builder()
        .client(
            OidcClient::confidential("gateway", "gateway-secret")
                .redirect_uri(REDIRECT)
                .grant_type(TOKEN_EXCHANGE_GRANT),
        )
        .client(OidcClient::public("console").redirect_uri(REDIRECT))
        .access_token_ttl(Duration::from_secs(60))
        .start()
        .expect("oidc-provider starts")
}

fn authorize_url(op: &OidcProvider, client: &str, verifier: &str) -> String {
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let mut url = reqwest::Url::parse(&op.authorization_endpoint()).expect("url");
    url.query_pairs_mut()
        .append_pair("client_id", client)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "openid mcp")
        .append_pair("resource", RESOURCE)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", "st-1");
    url.into()
}

fn query(url: &str, key: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

async fn token(op: &OidcProvider, client: Option<(&str, &str)>, form: &[(&str, &str)]) -> Value {
    let mut req = http_client().expect("client").post(op.token_endpoint());
    if let Some((id, secret)) = client {
        req = req.basic_auth(id, Some(secret));
    }
    let resp = req
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_urlencoded(form))
        .send()
        .await
        .expect("token endpoint answers");
    resp.json().await.expect("token endpoint answers JSON")
}

async fn verify(op: &OidcProvider, jwt: &str, audience: &str) -> Value {
    let jwks: JwkSet = http_client()
        .expect("client")
        .get(op.jwks_url())
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("jwks json");
    let key = DecodingKey::from_jwk(&jwks.keys[0]).expect("rsa jwk");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[op.issuer()]);
    jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .unwrap_or_else(|e| panic!("token does not verify for {audience}: {e}"))
        .claims
}

#[tokio::test(flavor = "multi_thread")]
async fn code_with_pkce_gives_a_jwt_for_the_resource_then_refresh_and_revocation() {
    let op = provider();
    let verifier = "v".repeat(50);
    let callback = op
        .login_with_forms(&authorize_url(&op, "gateway", &verifier), "alice", REDIRECT)
        .await
        .unwrap_or_else(|e| panic!("login: {e}\n{}", op.output()));
    assert_eq!(query(&callback, "state").as_deref(), Some("st-1"));
    let code = query(&callback, "code").expect("code in the callback");

    // A wrong PKCE verifier is refused (and burns nothing a right one needs: codes are one-shot
    // anyway, so this is checked on a fresh login).
    let other = op
        .login_with_forms(&authorize_url(&op, "gateway", &verifier), "alice", REDIRECT)
        .await
        .expect("second login");
    let other_code = query(&other, "code").expect("code");
    let bad = token(
        &op,
        Some(("gateway", "gateway-secret")),
        &[
            ("grant_type", "authorization_code"),
            ("code", &other_code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &"w".repeat(50)),
        ],
    )
    .await;
    assert_eq!(bad["error"], "invalid_grant", "{bad}");

    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
    ];
    let tokens = token(&op, Some(("gateway", "gateway-secret")), &form).await;
    let access = tokens["access_token"].as_str().expect("access token");
    let claims = verify(&op, access, RESOURCE).await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.test");
    assert_eq!(claims["groups"][0], "engineering");

    let refresh = tokens["refresh_token"].as_str().expect("refresh token");
    let refreshed = token(
        &op,
        Some(("gateway", "gateway-secret")),
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
    )
    .await;
    let access2 = refreshed["access_token"].as_str().expect("refreshed");
    assert_eq!(verify(&op, access2, RESOURCE).await["sub"], "alice");
    let rotated = refreshed["refresh_token"].as_str().unwrap_or(refresh);

    let revoke = http_client()
        .expect("client")
        .post(op.revocation_endpoint())
        .basic_auth("gateway", Some("gateway-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_urlencoded(&[
            ("token", rotated),
            ("token_type_hint", "refresh_token"),
        ]))
        .send()
        .await
        .expect("revocation answers");
    assert!(revoke.status().is_success());
    let after = token(
        &op,
        Some(("gateway", "gateway-secret")),
        &[("grant_type", "refresh_token"), ("refresh_token", rotated)],
    )
    .await;
    assert_eq!(after["error"], "invalid_grant", "{after}");

    // The same code twice: refused (checked last: a replayed code revokes its grant).
    let replay = token(&op, Some(("gateway", "gateway-secret")), &form).await;
    assert_eq!(replay["error"], "invalid_grant", "{replay}");

    let events = op.events().await.expect("events");
    let revoked: Vec<_> = events.iter().filter(|e| e.kind == "revoked").collect();
    assert_eq!(revoked.len(), 1, "{events:?}");
    assert_eq!(revoked[0].account.as_deref(), Some("alice"));
    let grants: Vec<_> = events
        .iter()
        .filter_map(|e| e.grant_type.as_deref())
        .collect();
    assert_eq!(
        grants,
        ["authorization_code", "refresh_token"],
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn public_client_must_use_pkce_and_unknown_users_cannot_log_in() {
    let op = provider();
    // No code_challenge at all: the provider refuses the authorization request.
    let mut url =
        reqwest::Url::parse(&authorize_url(&op, "console", "x".repeat(50).as_str())).expect("url");
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !k.starts_with("code_challenge"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let refused = op.login_with_forms(url.as_str(), "alice", REDIRECT).await;
    match refused {
        Ok(cb) => assert!(query(&cb, "error").is_some(), "no PKCE was accepted: {cb}"),
        Err(e) => assert!(e.to_string().contains("code_challenge"), "{e}"),
    }
    let verifier = "p".repeat(50);
    let mallory = op
        .login_with_forms(
            &authorize_url(&op, "console", &verifier),
            "mallory",
            REDIRECT,
        )
        .await;
    assert!(
        mallory.is_err(),
        "an unknown account logged in: {mallory:?}"
    );
    let cb = op
        .login_with_forms(&authorize_url(&op, "console", &verifier), "admin", REDIRECT)
        .await
        .expect("admin logs in");
    let code = query(&cb, "code").expect("code");
    let tokens = token(
        &op,
        None,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "console"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    let claims = verify(&op, tokens["access_token"].as_str().expect("at"), RESOURCE).await;
    assert_eq!(claims["groups"][0], "reflow-admins");
    assert!(tokens["id_token"].is_string(), "{tokens}");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_exchange_scopes_a_callers_token_to_another_audience() {
    let op = provider();
    let caller = op
        .mint("bob", "http://gateway.test", None)
        .await
        .expect("mint");
    assert_eq!(
        verify(&op, &caller, "http://gateway.test").await["sub"],
        "bob"
    );
    let form = [
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("subject_token", caller.as_str()),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("audience", "http://upstream.test"),
    ];
    let exchanged = token(&op, Some(("gateway", "gateway-secret")), &form).await;
    let claims = verify(
        &op,
        exchanged["access_token"].as_str().expect("exchanged"),
        "http://upstream.test",
    )
    .await;
    assert_eq!(claims["sub"], "bob");
    // A tampered subject token, or a client not allowed the grant, gets nothing.
    let tampered = format!("{}x", &caller[..caller.len() - 2]);
    let mut bad = form;
    bad[1].1 = &tampered;
    let refused = token(&op, Some(("gateway", "gateway-secret")), &bad).await;
    assert_eq!(refused["error"], "invalid_grant", "{refused}");
    let unauthorized = token(
        &op,
        None,
        &[[("client_id", "console")].as_slice(), form.as_slice()].concat(),
    )
    .await;
    assert!(unauthorized["access_token"].is_null(), "{unauthorized}");
    assert_eq!(unauthorized["error"], "invalid_request", "{unauthorized}");
}
