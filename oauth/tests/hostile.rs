//! The client against a hostile loopback server: every answer is scripted per path, every
//! request is recorded. Oversized bodies, redirects, foreign resources and issuers are refused;
//! tokens never reach an error's text.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reflow_oauth::discovery::{self, authorization_server, protected_resource};
use reflow_oauth::http::endpoint;
use reflow_oauth::registration::{RegistrationRequest, register};
use reflow_oauth::{ClientAuth, ExposeSecret, OAuthError, OAuthHttp, SecretString, TokenClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Script = HashMap<&'static str, (u16, Vec<(&'static str, String)>, String)>;

struct Server {
    base: String,
    seen: Arc<Mutex<Vec<String>>>,
}

/// Serves `script` (path → status, headers, body) on loopback until the test ends.
async fn serve(script: impl FnOnce(&str) -> Script) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let script = Arc::new(script(&base));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let script = script.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut n = 0;
                // Read the head and (for small bodies) the rest in a few reads.
                for _ in 0..4 {
                    match tokio::time::timeout(Duration::from_millis(200), sock.read(&mut buf[n..]))
                        .await
                    {
                        Ok(Ok(0)) | Err(_) => break,
                        Ok(Ok(k)) => n += k,
                        Ok(Err(_)) => return,
                    }
                }
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req
                    .split(' ')
                    .nth(1)
                    .unwrap_or("/")
                    .split('?')
                    .next()
                    .unwrap_or("/")
                    .to_owned();
                log.lock().unwrap().push(req);
                let (status, headers, body) =
                    script
                        .get(path.as_str())
                        .cloned()
                        .unwrap_or((404, vec![], "{}".to_owned()));
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&body);
                let _ = sock.write_all(out.as_bytes()).await;
            });
        }
    });
    Server { base, seen }
}

fn json(body: serde_json::Value) -> (u16, Vec<(&'static str, String)>, String) {
    (
        200,
        vec![("content-type", "application/json".to_owned())],
        body.to_string(),
    )
}

fn as_meta(issuer: &str) -> serde_json::Value {
    serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/auth"),
        "token_endpoint": format!("{issuer}/token"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "registration_endpoint": format!("{issuer}/reg"),
        "code_challenge_methods_supported": ["S256"],
    })
}

#[tokio::test]
async fn discovery_follows_the_401_and_checks_resource_and_issuer() {
    let s = serve(|base| {
        let mut m = Script::new();
        m.insert("/mcp", (401, vec![("www-authenticate", format!("Bearer resource_metadata=\"{base}/prm\""))], String::new()));
        m.insert("/prm", json(serde_json::json!({"resource": format!("{base}/mcp"), "authorization_servers": [base]})));
        m.insert("/.well-known/oauth-authorization-server", json(as_meta(base)));
        // A second resource whose metadata claims someone else's resource and issuer.
        m.insert("/.well-known/oauth-protected-resource/other", json(serde_json::json!({"resource": "https://victim.example/mcp", "authorization_servers": [base]})));
        m.insert("/.well-known/oauth-authorization-server/liar", json(as_meta("https://victim.example")));
        m.insert("/.well-known/openid-configuration/liar", json(as_meta("https://victim.example")));
        m
    })
    .await;
    let http = OAuthHttp::default();
    let mcp = format!("{}/mcp", s.base);
    let d = discovery::discover(&http, &mcp, &mcp, None).await.unwrap();
    assert_eq!(d.server.token_endpoint, format!("{}/token", s.base));
    assert!(d.server.supports_s256());

    let other = format!("{}/other", s.base);
    let e = protected_resource(&http, &other, None).await.unwrap_err();
    assert!(matches!(e, OAuthError::ResourceMismatch { .. }), "{e}");
    let e = authorization_server(&http, &format!("{}/liar", s.base))
        .await
        .unwrap_err();
    assert!(matches!(e, OAuthError::IssuerMismatch { .. }), "{e}");
}

#[tokio::test]
async fn redirects_big_bodies_and_plain_http_are_refused() {
    let s = serve(|base| {
        let mut m = Script::new();
        m.insert(
            "/.well-known/oauth-authorization-server",
            (
                302,
                vec![("location", format!("{base}/elsewhere"))],
                String::new(),
            ),
        );
        m.insert("/elsewhere", json(as_meta(base)));
        m.insert(
            "/big/.well-known/oauth-protected-resource",
            json(serde_json::json!({"resource": "x", "pad": "a".repeat(200_000)})),
        );
        m
    })
    .await;
    let http = OAuthHttp::new(Duration::from_secs(5), 64 * 1024);
    // The 302 is an answer like any other failure (the next candidate URL is tried), never
    // followed.
    let e = authorization_server(&http, &s.base).await.unwrap_err();
    assert!(matches!(e, OAuthError::Status { .. }), "{e}");
    assert!(
        !s.seen
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.contains("/elsewhere")),
        "a redirect was followed"
    );

    let e = protected_resource(&http, &format!("{}/big", s.base), None).await;
    // The well-known URL of `<base>/big` is `<base>/.well-known/oauth-protected-resource/big`:
    // not scripted, so 404; the big body is reached through an explicit metadata URL.
    assert!(e.is_err());
    let e = protected_resource(
        &http,
        &format!("{}/big", s.base),
        Some(&format!(
            "{}/big/.well-known/oauth-protected-resource",
            s.base
        )),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, OAuthError::TooLarge { .. }), "{e}");

    for bad in [
        "http://as.example/token",
        "ftp://127.0.0.1/x",
        "https://u:p@as.example/",
        "https://as.example/#f",
    ] {
        assert!(
            matches!(endpoint(bad), Err(OAuthError::Url { .. })),
            "{bad}"
        );
    }
    assert!(endpoint("http://localhost:1/t").is_ok() && endpoint("http://[::1]:1/t").is_ok());
}

#[tokio::test]
async fn token_requests_authenticate_and_errors_never_carry_tokens() {
    let s = serve(|_| {
        let mut m = Script::new();
        m.insert("/token", json(serde_json::json!({"access_token": "at-secret-1", "token_type": "Bearer", "expires_in": 30, "refresh_token": "rt-secret-2"})));
        m.insert("/bad", (400, vec![("content-type", "application/json".to_owned())], r#"{"error":"invalid_grant","error_description":"refresh token revoked"}"#.to_owned()));
        m.insert("/html", (500, vec![], "<html>rt-secret-2</html>".to_owned()));
        m.insert("/revoke", (200, vec![], String::new()));
        m.insert("/reg", (201, vec![("content-type", "application/json".to_owned())], r#"{"client_id":"dyn-1","client_secret":"dyn-secret","token_endpoint_auth_method":"client_secret_post"}"#.to_owned()));
        m
    })
    .await;
    let http = OAuthHttp::default();
    let auth = ClientAuth::choose("reflow", Some(SecretString::from("client-secret")), &[]);
    let c = TokenClient::new(
        http.clone(),
        &format!("{}/token", s.base),
        Some(&format!("{}/revoke", s.base)),
        auth.clone(),
    )
    .unwrap();
    let t = c
        .exchange_code(
            "the-code",
            "https://gw/cb",
            &SecretString::from("verifier-1"),
            Some("https://up/mcp"),
        )
        .await
        .unwrap();
    assert_eq!(t.access_token.expose_secret(), "at-secret-1");
    assert_eq!(t.expires_in, Some(30));
    let req = s.seen.lock().unwrap().last().unwrap().clone();
    assert!(
        req.to_ascii_lowercase().contains("authorization: basic "),
        "{req}"
    );
    assert!(
        req.contains("grant_type=authorization_code") && req.contains("code_verifier=verifier-1"),
        "{req}"
    );
    assert!(req.contains("resource=https%3A%2F%2Fup%2Fmcp"), "{req}");
    c.revoke(t.refresh_token.as_ref().unwrap(), Some("refresh_token"))
        .await
        .unwrap();
    assert!(
        s.seen
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .contains("token=rt-secret-2")
    );

    let bad =
        TokenClient::new(http.clone(), &format!("{}/bad", s.base), None, auth.clone()).unwrap();
    let e = bad
        .refresh(&SecretString::from("rt-secret-2"), &[], None)
        .await
        .unwrap_err();
    assert!(e.is_invalid_grant(), "{e}");
    assert!(matches!(
        bad.revoke(&SecretString::from("x"), None).await,
        Err(OAuthError::Unsupported(_))
    ));
    let html = TokenClient::new(http.clone(), &format!("{}/html", s.base), None, auth).unwrap();
    let e = html
        .refresh(&SecretString::from("rt-secret-2"), &[], None)
        .await
        .unwrap_err();
    assert!(!format!("{e} {e:?}").contains("rt-secret-2"), "{e:?}");

    let reg = register(
        &http,
        &format!("{}/reg", s.base),
        &RegistrationRequest::web_client("https://gw/cb", "reflow", &[]),
    )
    .await
    .unwrap();
    assert_eq!(reg.client_id, "dyn-1");
    assert!(matches!(reg.auth(), ClientAuth::Post { .. }));
    assert!(!format!("{reg:?}").contains("dyn-secret"));
}
