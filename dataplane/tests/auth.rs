//! Authentication end to end through the public API: real tokens signed with the test keys in
//! `testdata/auth/`, and JWKS/OIDC discovery served by a local axum IdP on 127.0.0.1:0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reflow_dataplane::auth::{
    AuthConfig, AuthError, Authenticator, ClaimPath, IssuerConfig, PublicKeyConfig,
};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::{Mutex, oneshot};

const HS_SECRET: &str = "test-only-hs256-secret-0123456789abcdef";
const AUD: &str = "reflow";
const STATIC_ISS: &str = "https://static.example.com";
const RSA_ONLY_ISS: &str = "https://rsa-only.example.com";

fn testdata(name: &str) -> String {
    let path = format!("{}/testdata/auth/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Which test key signs a token.
#[derive(Clone, Copy)]
enum Signer {
    Hs(&'static str),
    Rsa(&'static str),
    Ec,
    Ed,
}

fn encoding_key(signer: Signer) -> EncodingKey {
    let key = match signer {
        Signer::Hs(secret) => Ok(EncodingKey::from_secret(secret.as_bytes())),
        Signer::Rsa(file) => EncodingKey::from_rsa_pem(testdata(file).as_bytes()),
        Signer::Ec => EncodingKey::from_ec_pem(testdata("ec-private.pem").as_bytes()),
        Signer::Ed => EncodingKey::from_ed_pem(testdata("ed25519-private.pem").as_bytes()),
    };
    key.unwrap_or_else(|e| panic!("test key: {e}"))
}

fn sign(alg: Algorithm, signer: Signer, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &encoding_key(signer))
        .unwrap_or_else(|e| panic!("sign: {e}"))
}

fn claims(iss: &str) -> Value {
    json!({
        "iss": iss, "aud": AUD, "sub": "alice",
        "iat": now(), "exp": now() + 600,
        "groups": ["dev"], "roles": ["reader"],
        "email": "alice@example.com", "name": "Alice",
    })
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let v = HeaderValue::from_str(&format!("Bearer {token}")).unwrap_or_else(|e| panic!("{e}"));
    h.insert(AUTHORIZATION, v);
    h
}

fn public_key(file: &str, kid: Option<&str>) -> PublicKeyConfig {
    PublicKeyConfig {
        pem: testdata(file),
        kid: kid.map(str::to_string),
        alg: None,
    }
}

/// One issuer with every static key type, one with only an RSA public key.
fn static_config() -> AuthConfig {
    let mut all = IssuerConfig::new(STATIC_ISS, [AUD, "other"]);
    all.hs256_secret = Some(SecretString::from(HS_SECRET));
    all.public_keys = vec![
        public_key("rsa-public.pem", Some("rsa1")),
        public_key("ec-public.pem", None),
        public_key("ed25519-public.pem", Some("ed1")),
    ];
    let mut rsa_only = IssuerConfig::new(RSA_ONLY_ISS, [AUD]);
    rsa_only.public_keys = vec![public_key("rsa-public.pem", None)];
    AuthConfig::new(vec![all, rsa_only])
}

fn authenticator(config: AuthConfig) -> Authenticator {
    Authenticator::new(config).unwrap_or_else(|e| panic!("config: {e}"))
}

async fn check(auth: &Authenticator, token: &str) -> Result<reflow_crds::Identity, AuthError> {
    auth.authenticate(&bearer(token)).await.map(|p| p.identity)
}

mod auth_tokens {
    use super::*;

    async fn assert_accepts(alg: Algorithm, signer: Signer, kid: Option<&str>) {
        let auth = authenticator(static_config());
        let token = sign(alg, signer, kid, &claims(STATIC_ISS));
        let id = check(&auth, &token)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(&*id.user, "alice");
        assert!(id.in_group("dev") && id.has_role("reader"));
        assert_eq!(id.email.as_deref(), Some("alice@example.com"));
        assert_eq!(id.name.as_deref(), Some("Alice"));
    }

    #[tokio::test]
    async fn hs256_accepted() {
        assert_accepts(Algorithm::HS256, Signer::Hs(HS_SECRET), None).await;
    }

    #[tokio::test]
    async fn rs256_accepted() {
        assert_accepts(
            Algorithm::RS256,
            Signer::Rsa("rsa-private.pem"),
            Some("rsa1"),
        )
        .await;
    }

    #[tokio::test]
    async fn es256_accepted() {
        assert_accepts(Algorithm::ES256, Signer::Ec, None).await;
    }

    #[tokio::test]
    async fn eddsa_accepted() {
        assert_accepts(Algorithm::EdDSA, Signer::Ed, Some("ed1")).await;
    }

    #[tokio::test]
    async fn missing_token_and_other_schemes_are_refused() {
        let auth = authenticator(static_config());
        assert_eq!(
            auth.authenticate(&HeaderMap::new()).await.err(),
            Some(AuthError::MissingToken)
        );

        let token = sign(
            Algorithm::HS256,
            Signer::Hs(HS_SECRET),
            None,
            &claims(STATIC_ISS),
        );
        let mut basic = HeaderMap::new();
        basic.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6c2VjcmV0"),
        );
        assert_eq!(
            auth.authenticate(&basic).await.err(),
            Some(AuthError::UnsupportedScheme)
        );

        // A valid token in a query-string-like or cookie header is never looked at.
        let mut cookie = HeaderMap::new();
        let v = HeaderValue::from_str(&format!("access_token={token}"))
            .unwrap_or_else(|e| panic!("{e}"));
        cookie.insert(http::header::COOKIE, v);
        assert_eq!(
            auth.authenticate(&cookie).await.err(),
            Some(AuthError::MissingToken)
        );
    }

    #[tokio::test]
    async fn malformed_tokens_are_refused() {
        let auth = authenticator(static_config());
        for bad in [
            "abc",
            "a.b",
            "a.b.c.d.e",
            "eyJ.eyJ.sig",
            "....",
            "%%%.%%%.%%%",
        ] {
            assert_eq!(
                check(&auth, bad).await.err().map(|e| e.label()),
                Some("malformed"),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn expired_token_is_refused() {
        let auth = authenticator(static_config());
        let mut c = claims(STATIC_ISS);
        c["exp"] = json!(now() - 120); // beyond the 30 s leeway
        let token = sign(Algorithm::HS256, Signer::Hs(HS_SECRET), None, &c);
        assert_eq!(check(&auth, &token).await, Err(AuthError::Expired));

        c["exp"] = json!(now() - 5); // within the leeway
        let token = sign(Algorithm::HS256, Signer::Hs(HS_SECRET), None, &c);
        assert!(check(&auth, &token).await.is_ok());
    }

    #[tokio::test]
    async fn token_not_yet_valid_is_refused() {
        let auth = authenticator(static_config());
        let mut c = claims(STATIC_ISS);
        c["nbf"] = json!(now() + 120);
        let token = sign(
            Algorithm::RS256,
            Signer::Rsa("rsa-private.pem"),
            Some("rsa1"),
            &c,
        );
        assert_eq!(check(&auth, &token).await, Err(AuthError::NotYetValid));
    }

    #[tokio::test]
    async fn missing_exp_is_refused_unless_configured() {
        let mut c = claims(STATIC_ISS);
        c.as_object_mut().map(|m| m.remove("exp"));
        let token = sign(Algorithm::HS256, Signer::Hs(HS_SECRET), None, &c);
        let auth = authenticator(static_config());
        assert_eq!(
            check(&auth, &token).await,
            Err(AuthError::MissingClaim("exp".into()))
        );

        let mut lenient = static_config();
        lenient.require_exp = false;
        let auth = authenticator(lenient);
        assert!(check(&auth, &token).await.is_ok());
    }

    #[tokio::test]
    async fn wrong_or_missing_issuer_is_refused() {
        let auth = authenticator(static_config());
        let token = sign(
            Algorithm::HS256,
            Signer::Hs(HS_SECRET),
            None,
            &claims("https://evil.example.com"),
        );
        assert_eq!(check(&auth, &token).await, Err(AuthError::UnknownIssuer));

        let mut c = claims(STATIC_ISS);
        c.as_object_mut().map(|m| m.remove("iss"));
        let token = sign(Algorithm::HS256, Signer::Hs(HS_SECRET), None, &c);
        assert_eq!(
            check(&auth, &token).await,
            Err(AuthError::MissingClaim("iss".into()))
        );
    }

    #[tokio::test]
    async fn wrong_or_missing_audience_is_refused() {
        let auth = authenticator(static_config());
        let mut c = claims(STATIC_ISS);
        c["aud"] = json!("someone-else");
        let token = sign(Algorithm::ES256, Signer::Ec, None, &c);
        assert_eq!(check(&auth, &token).await, Err(AuthError::WrongAudience));

        c["aud"] = json!(["someone-else", "other"]);
        let token = sign(Algorithm::ES256, Signer::Ec, None, &c);
        assert!(
            check(&auth, &token).await.is_ok(),
            "any configured audience is enough"
        );

        c.as_object_mut().map(|m| m.remove("aud"));
        let token = sign(Algorithm::ES256, Signer::Ec, None, &c);
        assert_eq!(
            check(&auth, &token).await,
            Err(AuthError::MissingClaim("aud".into()))
        );
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let auth = authenticator(static_config());
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims(STATIC_ISS).to_string());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.c2ln"),
        ] {
            assert_eq!(check(&auth, &token).await, Err(AuthError::UnsupportedAlg));
        }
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"None"}"#);
        assert_eq!(
            check(&auth, &format!("{header}.{payload}.")).await,
            Err(AuthError::UnsupportedAlg)
        );
    }

    #[tokio::test]
    async fn hs256_forged_with_rsa_public_key_is_refused() {
        let auth = authenticator(static_config());
        // The classic confusion attack: HMAC keyed with the RSA public key the verifier holds.
        let pem: &'static str = Box::leak(testdata("rsa-public.pem").into_boxed_str());
        let forged = sign(
            Algorithm::HS256,
            Signer::Hs(pem),
            None,
            &claims(RSA_ONLY_ISS),
        );
        assert_eq!(check(&auth, &forged).await, Err(AuthError::UnsupportedAlg));

        // Same with a kid naming the RSA key: the RSA key never verifies HS256.
        let forged = sign(
            Algorithm::HS256,
            Signer::Hs(pem),
            Some("rsa1"),
            &claims(STATIC_ISS),
        );
        assert_eq!(check(&auth, &forged).await, Err(AuthError::UnsupportedAlg));

        // Where an HS256 secret exists too, the forgery only ever meets the real secret.
        let forged = sign(Algorithm::HS256, Signer::Hs(pem), None, &claims(STATIC_ISS));
        assert_eq!(check(&auth, &forged).await, Err(AuthError::BadSignature));
    }

    #[tokio::test]
    async fn rs256_token_cannot_use_ec_or_ed_keys() {
        let auth = authenticator(static_config());
        // Signed with a key the issuer does not have, claiming the EC key's (absent) kid.
        let token = sign(
            Algorithm::RS256,
            Signer::Rsa("rsa2-private.pem"),
            Some("ed1"),
            &claims(STATIC_ISS),
        );
        assert_eq!(check(&auth, &token).await, Err(AuthError::UnsupportedAlg));
        let token = sign(
            Algorithm::RS256,
            Signer::Rsa("rsa2-private.pem"),
            Some("rsa1"),
            &claims(STATIC_ISS),
        );
        assert_eq!(check(&auth, &token).await, Err(AuthError::BadSignature));
        let token = sign(
            Algorithm::RS256,
            Signer::Rsa("rsa2-private.pem"),
            Some("nope"),
            &claims(STATIC_ISS),
        );
        assert_eq!(check(&auth, &token).await, Err(AuthError::UnknownKey));
    }

    #[tokio::test]
    async fn tampered_payload_is_refused() {
        let auth = authenticator(static_config());
        for (alg, signer, kid) in [
            (Algorithm::HS256, Signer::Hs(HS_SECRET), None),
            (
                Algorithm::RS256,
                Signer::Rsa("rsa-private.pem"),
                Some("rsa1"),
            ),
            (Algorithm::ES256, Signer::Ec, None),
            (Algorithm::EdDSA, Signer::Ed, Some("ed1")),
        ] {
            let token = sign(alg, signer, kid, &claims(STATIC_ISS));
            let parts: Vec<&str> = token.split('.').collect();
            let mut c = claims(STATIC_ISS);
            c["roles"] = json!(["admin"]);
            let evil = URL_SAFE_NO_PAD.encode(c.to_string());
            let tampered = format!("{}.{}.{}", parts[0], evil, parts[2]);
            assert_eq!(
                check(&auth, &tampered).await,
                Err(AuthError::BadSignature),
                "{alg:?}"
            );
            assert!(
                check(&auth, &token).await.is_ok(),
                "{alg:?} original still verifies"
            );
        }
    }

    #[tokio::test]
    async fn claim_mapping_reads_nested_roles_and_string_groups() {
        let mut cfg = static_config();
        cfg.issuers[0].claims.user = ClaimPath::from("preferred_username");
        cfg.issuers[0].claims.roles = ClaimPath::from("realm_access.roles");
        cfg.issuers[0].claims.groups =
            ClaimPath::from_segments(["https://example.com/claims", "groups"]);
        let auth = authenticator(cfg);
        let mut c = claims(STATIC_ISS);
        c["preferred_username"] = json!("alice.smith");
        c["realm_access"] = json!({"roles": ["mcp-admin", "offline_access"]});
        c["https://example.com/claims"] = json!({"groups": "platform"});
        let token = sign(Algorithm::HS256, Signer::Hs(HS_SECRET), None, &c);
        let id = check(&auth, &token).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&*id.user, "alice.smith");
        assert!(
            id.has_role("mcp-admin") && id.has_role("offline_access") && !id.has_role("reader")
        );
        assert!(id.in_group("platform") && !id.in_group("dev"));

        c["realm_access"] = json!({"roles": [1, 2]});
        let token = sign(Algorithm::HS256, Signer::Hs(HS_SECRET), None, &c);
        assert_eq!(
            check(&auth, &token).await,
            Err(AuthError::InvalidClaim("realm_access.roles".into()))
        );
    }

    #[tokio::test]
    async fn errors_never_echo_the_token_or_secret() {
        let auth = authenticator(static_config());
        let mut c = claims(STATIC_ISS);
        c["exp"] = json!(now() - 3600);
        let expired = sign(Algorithm::HS256, Signer::Hs(HS_SECRET), None, &c);
        let forged = sign(
            Algorithm::HS256,
            Signer::Hs("another-secret-that-is-long-enough-x"),
            None,
            &claims(STATIC_ISS),
        );
        for token in [expired, forged, "Zm9vYmFy.cXV4eHh4.YmF6enp6".to_string()] {
            let err = check(&auth, &token)
                .await
                .err()
                .unwrap_or_else(|| panic!("must fail"));
            let shown = format!("{err} {err:?}");
            for part in token.split('.').filter(|p| p.len() > 3) {
                assert!(!shown.contains(part), "{shown}");
            }
            assert!(!shown.contains(HS_SECRET));
        }
        assert!(!format!("{:?}", static_config()).contains(HS_SECRET));
        assert!(!format!("{auth:?}").contains(HS_SECRET));
    }

    #[tokio::test]
    async fn minted_dev_token_verifies() {
        let auth = authenticator(static_config());
        let token = reflow_dataplane::auth::mint_dev_token(
            &SecretString::from(HS_SECRET),
            STATIC_ISS,
            AUD,
            "dev-user",
            &["team-a".to_string()],
            &["admin".to_string()],
            Duration::from_secs(300),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let id = check(&auth, &token).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&*id.user, "dev-user");
        assert!(id.in_group("team-a") && id.has_role("admin"));
    }

    #[tokio::test]
    async fn invalid_static_key_is_a_config_error() {
        let mut cfg = static_config();
        cfg.issuers[1]
            .public_keys
            .push(public_key("rsa-private.pem", None));
        let err = Authenticator::new(cfg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("publicKeys[1]") && err.contains("private key"),
            "{err}"
        );
        assert!(!err.contains("BEGIN"), "{err}");
    }
}

/// A minimal OIDC provider: discovery, a JWKS that tests can rotate, request counters, and a
/// switch that makes it fail. Stopped when dropped.
struct Idp {
    issuer: String,
    state: Arc<IdpState>,
    stop: Option<oneshot::Sender<()>>,
}

struct IdpState {
    issuer: String,
    advertised_issuer: Mutex<Option<String>>,
    jwks: Mutex<Value>,
    jwks_hits: AtomicUsize,
    discovery_hits: AtomicUsize,
    failing: AtomicBool,
}

impl Idp {
    async fn start(jwks: Value) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let issuer = format!("http://{addr}");
        let state = Arc::new(IdpState {
            issuer: issuer.clone(),
            advertised_issuer: Mutex::new(None),
            jwks: Mutex::new(jwks),
            jwks_hits: AtomicUsize::new(0),
            discovery_hits: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks_handler))
            .with_state(Arc::clone(&state));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Idp {
            issuer,
            state,
            stop: Some(stop),
        }
    }

    fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    fn discovery_hits(&self) -> usize {
        self.state.discovery_hits.load(Ordering::SeqCst)
    }

    async fn set_jwks(&self, jwks: Value) {
        *self.state.jwks.lock().await = jwks;
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn discovery(State(s): State<Arc<IdpState>>) -> Response {
    s.discovery_hits.fetch_add(1, Ordering::SeqCst);
    if s.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let issuer = s
        .advertised_issuer
        .lock()
        .await
        .clone()
        .unwrap_or_else(|| s.issuer.clone());
    Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{}/jwks", s.issuer),
        "authorization_endpoint": format!("{}/auth", s.issuer),
    }))
    .into_response()
}

async fn jwks_handler(State(s): State<Arc<IdpState>>) -> Response {
    s.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if s.failing.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    Json(s.jwks.lock().await.clone()).into_response()
}

fn jwk(signer: Signer, alg: Algorithm, kid: &str) -> Value {
    let mut jwk =
        Jwk::from_encoding_key(&encoding_key(signer), alg).unwrap_or_else(|e| panic!("jwk: {e}"));
    jwk.common.key_id = Some(kid.to_string());
    serde_json::to_value(jwk).unwrap_or_else(|e| panic!("{e}"))
}

fn jwks(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

fn rsa1() -> Value {
    jwk(Signer::Rsa("rsa-private.pem"), Algorithm::RS256, "k1")
}

fn rsa2() -> Value {
    jwk(Signer::Rsa("rsa2-private.pem"), Algorithm::RS256, "k2")
}

fn oidc_config(issuer: &str, min_refresh: Duration) -> AuthConfig {
    let mut iss = IssuerConfig::new(issuer, [AUD]);
    iss.discovery = true;
    let mut cfg = AuthConfig::new(vec![iss]);
    cfg.jwks_min_refresh_interval = min_refresh;
    cfg.http_timeout = Duration::from_secs(2);
    cfg
}

fn rs256(file: &'static str, kid: &str, iss: &str, sub: &str) -> String {
    let mut c = claims(iss);
    c["sub"] = json!(sub);
    sign(Algorithm::RS256, Signer::Rsa(file), Some(kid), &c)
}

mod auth_jwks {
    use super::*;

    #[tokio::test]
    async fn discovery_then_jwks_verifies_and_is_cached() {
        let idp = Idp::start(jwks(&[rsa1()])).await;
        let auth = authenticator(oidc_config(&idp.issuer, Duration::from_secs(30)));
        for sub in ["alice", "bob", "carol"] {
            let id = check(&auth, &rs256("rsa-private.pem", "k1", &idp.issuer, sub))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&*id.user, sub);
        }
        assert_eq!(
            (idp.discovery_hits(), idp.jwks_hits()),
            (1, 1),
            "keys fetched once"
        );
    }

    #[tokio::test]
    async fn jwks_with_rsa_ec_and_okp_keys() {
        let idp = Idp::start(jwks(&[
            rsa1(),
            jwk(Signer::Ec, Algorithm::ES256, "ec1"),
            jwk(Signer::Ed, Algorithm::EdDSA, "ed1"),
            json!({"kty": "oct", "k": "c2VjcmV0", "kid": "sym"}),
        ]))
        .await;
        let mut iss = IssuerConfig::new(idp.issuer.clone(), [AUD]);
        iss.jwks_uri = Some(format!("{}/jwks", idp.issuer));
        let auth = authenticator(AuthConfig::new(vec![iss]));
        let c = claims(&idp.issuer);
        for (alg, signer, kid) in [
            (Algorithm::RS256, Signer::Rsa("rsa-private.pem"), "k1"),
            (Algorithm::ES256, Signer::Ec, "ec1"),
            (Algorithm::EdDSA, Signer::Ed, "ed1"),
        ] {
            let token = sign(alg, signer, Some(kid), &c);
            assert!(check(&auth, &token).await.is_ok(), "{alg:?}");
        }
        // The symmetric JWK was skipped: nothing can be HMAC-signed against a public JWKS.
        let hs = sign(
            Algorithm::HS256,
            Signer::Hs("c2VjcmV0-but-long-enough-for-hmac!!"),
            Some("sym"),
            &c,
        );
        assert_eq!(
            check(&auth, &hs).await.err().map(|e| e.label()),
            Some("unknown_key")
        );
        assert_eq!(idp.discovery_hits(), 0, "jwksUri needs no discovery");
    }

    #[tokio::test]
    async fn key_rotation_triggers_exactly_one_refresh() {
        let idp = Idp::start(jwks(&[rsa1()])).await;
        let auth = authenticator(oidc_config(&idp.issuer, Duration::from_millis(300)));
        assert!(
            check(&auth, &rs256("rsa-private.pem", "k1", &idp.issuer, "a"))
                .await
                .is_ok()
        );
        assert_eq!(idp.jwks_hits(), 1);

        idp.set_jwks(jwks(&[rsa1(), rsa2()])).await;
        tokio::time::sleep(Duration::from_millis(400)).await;

        let id = check(
            &auth,
            &rs256("rsa2-private.pem", "k2", &idp.issuer, "rotated"),
        )
        .await;
        assert_eq!(id.map(|i| i.user.to_string()), Ok("rotated".to_string()));
        assert_eq!(idp.jwks_hits(), 2, "one refresh for the new kid");

        for sub in ["b", "c"] {
            assert!(
                check(&auth, &rs256("rsa2-private.pem", "k2", &idp.issuer, sub))
                    .await
                    .is_ok()
            );
            assert!(
                check(&auth, &rs256("rsa-private.pem", "k1", &idp.issuer, sub))
                    .await
                    .is_ok()
            );
        }
        assert_eq!(idp.jwks_hits(), 2, "known kids cause no refetch");
        assert_eq!(idp.discovery_hits(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_kid_flood_refetches_at_most_once_per_interval() {
        let idp = Idp::start(jwks(&[rsa1()])).await;
        let interval = Duration::from_secs(1);
        let auth = authenticator(oidc_config(&idp.issuer, interval));
        // Signed up front so slow signing cannot stretch a phase past the interval.
        let bogus = |prefix: &str, n: usize| -> Vec<String> {
            (0..n)
                .map(|i| {
                    rs256(
                        "rsa2-private.pem",
                        &format!("{prefix}-{i}"),
                        &idp.issuer,
                        "x",
                    )
                })
                .collect()
        };
        let (early, flood, late) = (bogus("early", 10), bogus("flood", 50), bogus("late", 20));
        let good = rs256("rsa-private.pem", "k1", &idp.issuer, "a");

        assert!(check(&auth, &good).await.is_ok());
        assert_eq!(idp.jwks_hits(), 1);

        // Within the interval of the initial fetch: no refetch at all.
        for t in &early {
            assert_eq!(check(&auth, t).await, Err(AuthError::UnknownKey));
        }
        assert_eq!(idp.jwks_hits(), 1, "throttled inside the interval");

        tokio::time::sleep(interval + Duration::from_millis(100)).await;
        let tasks: Vec<_> = flood
            .into_iter()
            .map(|t| {
                let auth = auth.clone();
                tokio::spawn(async move { check(&auth, &t).await })
            })
            .collect();
        for task in tasks {
            let result = task.await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(result, Err(AuthError::UnknownKey));
        }
        assert_eq!(
            idp.jwks_hits(),
            2,
            "fifty concurrent unknown kids: one refetch"
        );

        for t in &late {
            assert_eq!(check(&auth, t).await, Err(AuthError::UnknownKey));
        }
        assert_eq!(idp.jwks_hits(), 2);
    }

    #[tokio::test]
    async fn idp_down_is_jwks_unavailable() {
        // A port that was just free: nothing listens there.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
            l.local_addr().unwrap_or_else(|e| panic!("{e}"))
        };
        let issuer = format!("http://{addr}");
        let auth = authenticator(oidc_config(&issuer, Duration::from_secs(30)));
        let token = rs256("rsa-private.pem", "k1", &issuer, "a");
        assert_eq!(check(&auth, &token).await, Err(AuthError::JwksUnavailable));

        // A token without a kid cannot conjure keys either.
        let no_kid = sign(
            Algorithm::RS256,
            Signer::Rsa("rsa-private.pem"),
            None,
            &claims(&issuer),
        );
        assert_eq!(check(&auth, &no_kid).await, Err(AuthError::JwksUnavailable));
    }

    #[tokio::test]
    async fn failed_refresh_keeps_the_old_keys() {
        let idp = Idp::start(jwks(&[rsa1()])).await;
        let auth = authenticator(oidc_config(&idp.issuer, Duration::from_millis(200)));
        assert!(
            check(&auth, &rs256("rsa-private.pem", "k1", &idp.issuer, "a"))
                .await
                .is_ok()
        );

        idp.state.failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = rs256("rsa2-private.pem", "k2", &idp.issuer, "b");
        assert_eq!(check(&auth, &t).await, Err(AuthError::JwksUnavailable));
        assert_eq!(idp.jwks_hits(), 2, "the refresh was attempted");
        // Old keys still verify (a fresh token, so not from the verified-token cache).
        assert!(
            check(&auth, &rs256("rsa-private.pem", "k1", &idp.issuer, "c"))
                .await
                .is_ok()
        );

        // The IdP recovers and now serves k2: the next refresh after the interval picks it up.
        idp.state.failing.store(false, Ordering::SeqCst);
        idp.set_jwks(jwks(&[rsa1(), rsa2()])).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            check(&auth, &rs256("rsa2-private.pem", "k2", &idp.issuer, "d"))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn stale_keys_are_refreshed_in_the_background_and_retired_keys_stop_verifying() {
        let idp = Idp::start(jwks(&[rsa1()])).await;
        let max_age = Duration::from_millis(500);
        let mut cfg = oidc_config(&idp.issuer, Duration::from_millis(100));
        cfg.jwks_max_age = max_age;
        let auth = authenticator(cfg);
        let old = |sub: &str| rs256("rsa-private.pem", "k1", &idp.issuer, sub);
        let (a, b, c, d) = (old("a"), old("b"), old("c"), old("d"));
        let new_key = rs256("rsa2-private.pem", "k2", &idp.issuer, "e");

        assert!(check(&auth, &a).await.is_ok());
        assert_eq!(idp.jwks_hits(), 1);

        // The IdP retires k1. Until the keys go stale nothing is refetched.
        idp.set_jwks(jwks(&[rsa2()])).await;
        assert!(check(&auth, &b).await.is_ok());
        assert_eq!(idp.jwks_hits(), 1);

        // Stale: the request that notices is still served from the old keys, without waiting...
        tokio::time::sleep(max_age + Duration::from_millis(100)).await;
        assert!(check(&auth, &c).await.is_ok());
        // ...while the refresh runs in the background.
        for _ in 0..100 {
            if idp.jwks_hits() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(idp.jwks_hits(), 2);
        // Let the background task install the keys it fetched.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The retired key no longer verifies; the new one does.
        assert_eq!(check(&auth, &d).await, Err(AuthError::UnknownKey));
        assert!(check(&auth, &new_key).await.is_ok());
    }

    #[tokio::test]
    async fn discovery_for_another_issuer_is_refused() {
        let idp = Idp::start(jwks(&[rsa1()])).await;
        *idp.state.advertised_issuer.lock().await = Some("https://impostor.example.com".into());
        let auth = authenticator(oidc_config(&idp.issuer, Duration::from_secs(30)));
        let token = rs256("rsa-private.pem", "k1", &idp.issuer, "a");
        assert_eq!(check(&auth, &token).await, Err(AuthError::JwksUnavailable));
        assert_eq!(
            idp.jwks_hits(),
            0,
            "keys are never fetched from a mismatched document"
        );
    }

    #[tokio::test]
    async fn warm_up_prefetches_keys() {
        let idp = Idp::start(jwks(&[rsa1()])).await;
        let auth = authenticator(oidc_config(&idp.issuer, Duration::from_secs(30)));
        auth.warm_up().await;
        assert_eq!(idp.jwks_hits(), 1);
        assert!(
            check(&auth, &rs256("rsa-private.pem", "k1", &idp.issuer, "a"))
                .await
                .is_ok()
        );
        assert_eq!(idp.jwks_hits(), 1);
        let meta = auth.protected_resource_metadata("https://gw.example.com/mcp");
        assert_eq!(meta.authorization_servers, vec![idp.issuer.clone()]);
    }
}
