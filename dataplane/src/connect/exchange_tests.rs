//! Cache keying and expiry, single flight, and the bad answers of a token endpoint (refused,
//! slow, oversize, unusable) against a loopback HTTP server that counts what it was sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reflow_crds::snapshot::UserCredentialMode;
use reflow_crds::snapshot::{
    CompiledClient, CompiledTokenExchange, CompiledUserCredential, InjectAs, ResolvedCredentials,
};
use reflow_crds::{Fingerprint, SealingKey};
use reflow_oauth::exchange::ExchangeRequest;
use reflow_oauth::{ClientAuth, ExposeSecret, SecretString, TokenClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

const ALICE_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.alice-subject.sig";

fn slot() -> (CompiledUserCredential, CompiledTokenExchange) {
    let x = CompiledTokenExchange {
        token_endpoint: "http://127.0.0.1:1/token".into(),
        audience: "https://upstream.example/mcp".into(),
        client: CompiledClient {
            client_id: "gateway".into(),
            client_secret: None,
        },
        scopes: vec![],
    };
    let u = CompiledUserCredential {
        mode: UserCredentialMode::TokenExchange,
        inject_as: InjectAs::Header,
        name: "authorization".into(),
        prefix: "Bearer ".into(),
        display_name: "Upstream".into(),
        hint: None,
        oauth2: None,
        token_exchange: Some(x.clone()),
    };
    (u, x)
}

fn subject(token: &str, exp: Option<u64>) -> SubjectToken {
    SubjectToken::new(token, "http://127.0.0.1:1", exp).expect("a bearer token")
}

#[test]
fn the_subject_token_never_prints_and_is_kept_only_for_verified_bearer_callers() {
    let s = subject(ALICE_TOKEN, Some(1));
    let shown = format!("{s:?}");
    assert!(!shown.contains("alice-subject"), "{shown}");
    assert!(shown.contains("REDACTED"));

    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {ALICE_TOKEN}")).unwrap(),
    );
    // A certificate, trusted proxy or fixed identity: no verified issuer, nothing kept.
    let fixed = Principal::from_identity(reflow_crds::Identity::new("alice", ["g"], ["r"]));
    assert!(SubjectToken::capture(&fixed, &headers).is_none());
    let verified = Principal {
        issuer: Some("http://127.0.0.1:1".into()),
        expires_at: Some(42),
        ..fixed
    };
    let kept = SubjectToken::capture(&verified, &headers).expect("kept");
    assert_eq!(kept.digest(), s.digest());
    assert_eq!(kept.expires_at(), Some(42));
    assert!(!format!("{kept:?}").contains("alice-subject"));
    // Two Authorization headers, or another scheme: nothing kept.
    headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer other"));
    assert!(SubjectToken::capture(&verified, &headers).is_none());
    let mut basic = HeaderMap::new();
    basic.insert(AUTHORIZATION, HeaderValue::from_static("Basic YTpi"));
    assert!(
        !SubjectToken::capture(&verified, &basic).is_some_and(|s| s.is_bearer()),
        "kept, but never exchanged"
    );
}

#[test]
fn the_subject_token_goes_only_to_its_issuers_origin() {
    assert!(same_origin(
        "https://idp.example/realms/a",
        "https://idp.example/realms/a/protocol/openid-connect/token"
    ));
    assert!(same_origin(
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8080/token"
    ));
    assert!(!same_origin(
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8081/token"
    ));
    assert!(!same_origin(
        "https://idp.example",
        "https://evil.example/token"
    ));
    assert!(!same_origin(
        "https://idp.example",
        "http://idp.example/token"
    ));
    // The dev issuer is no URL: its tokens are never exchanged.
    assert!(!same_origin("reflow-dev", "http://127.0.0.1:8080/token"));
}

#[test]
fn cache_keys_bind_target_settings_user_and_subject_token() {
    let (u, x) = slot();
    let t: Arc<str> = "ns/up".into();
    let alice: Arc<str> = "alice".into();
    let a1 = ExchangeKey::new(&t, &u, &x, &alice, &subject(ALICE_TOKEN, None));
    assert_eq!(
        a1,
        ExchangeKey::new(&t, &u, &x, &alice, &subject(ALICE_TOKEN, Some(9)))
    );
    // Bob, even with the same token text, is another key.
    assert_ne!(
        a1,
        ExchangeKey::new(&t, &u, &x, &"bob".into(), &subject(ALICE_TOKEN, None))
    );
    // Another token of alice's (say a narrower one) never reuses the wider one's exchange.
    assert_ne!(
        a1,
        ExchangeKey::new(&t, &u, &x, &alice, &subject("narrower.token.sig", None))
    );
    // A changed audience, or another Target: another key.
    let mut other = x.clone();
    other.audience = "https://other.example/mcp".into();
    assert_ne!(
        a1,
        ExchangeKey::new(&t, &u, &other, &alice, &subject(ALICE_TOKEN, None))
    );
    assert_ne!(
        a1,
        ExchangeKey::new(
            &"ns/up2".into(),
            &u,
            &x,
            &alice,
            &subject(ALICE_TOKEN, None)
        )
    );
}

#[test]
fn kept_until_shortly_before_expiry_and_never_beyond_the_callers_token() {
    let now = Instant::now();
    let unix = 1_000_000;
    let secs = |i: Option<Instant>| i.map(|i| i.duration_since(now).as_secs());
    assert_eq!(secs(keep_until(now, unix, Some(300), None)), Some(270));
    assert_eq!(
        secs(keep_until(now, unix, Some(300), Some(unix + 100))),
        Some(100),
        "capped by the subject token's exp"
    );
    assert_eq!(keep_until(now, unix, Some(300), Some(unix - 5)), None);
    assert_eq!(
        keep_until(now, unix, Some(20), None),
        None,
        "within the margin"
    );
    assert_eq!(
        secs(keep_until(now, unix, None, None)),
        Some(30),
        "default 60 s"
    );
    assert_eq!(
        secs(keep_until(now, unix, Some(u64::MAX), None)),
        Some(3570),
        "at most an hour"
    );
}

#[test]
fn the_exchanged_entry_is_sealed_to_its_user_and_changes_the_fingerprint() {
    let key = SealingKey::from_bytes(&[7; 32]);
    let (u, _) = slot();
    let token = SecretString::from("exchanged-token".to_owned());
    let entry = seal_entry(&key, ("ns", "up"), "alice", &u, &token).expect("sealed");
    assert!(!entry.value.sealed.contains("exchanged-token"));
    assert_eq!(
        key.open(&entry.aad, &entry.value).unwrap().expose_secret(),
        "Bearer exchanged-token"
    );
    let bobs_aad = entry.aad.replace(":alice/", ":bob/");
    assert!(key.open(&bobs_aad, &entry.value).is_err());
    let before = ResolvedCredentials {
        entries: vec![],
        fingerprint: Fingerprint([0; 32]),
    };
    let after = with_entry(before.clone(), entry.clone());
    assert_ne!(after.fingerprint, before.fingerprint);
    assert!(after.entries.iter().any(|e| u.is_slot(&e.entry)));
    // A header-splitting or empty answer is refused.
    for bad in ["tok\r\nX-Evil: 1", "", "tok en"] {
        let bad = SecretString::from(bad.to_owned());
        assert_eq!(
            seal_entry(&key, ("ns", "up"), "alice", &u, &bad),
            Err(ExchangeError::Unusable)
        );
    }
}

/// A token endpoint on loopback: answers every request with `status` and `body` after `delay`,
/// counting requests and keeping the last body it received.
struct Endpoint {
    url: String,
    hits: Arc<AtomicUsize>,
    last: Arc<std::sync::Mutex<String>>,
}

async fn endpoint(status: u16, body: String, delay: Duration) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/token", listener.local_addr().expect("addr"));
    let hits = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(std::sync::Mutex::new(String::new()));
    let (h, l) = (hits.clone(), last.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (h, l, body) = (h.clone(), l.clone(), body.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = sock.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(at) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= at + 4 + len {
                            *l.lock().unwrap() = text;
                            break;
                        }
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
            });
        }
    });
    Endpoint { url, hits, last }
}

struct Rig {
    key: SealingKey,
    u: CompiledUserCredential,
    client: TokenClient,
    exchanges: Exchanges,
}

impl Rig {
    fn new(url: &str, timeout: Duration) -> Self {
        let exchanges = Exchanges::new(timeout);
        let client = TokenClient::new(
            exchanges.http().clone(),
            url,
            None,
            ClientAuth::Basic {
                client_id: "gateway".into(),
                secret: SecretString::from("gw-secret".to_owned()),
            },
        )
        .expect("client");
        Self {
            key: SealingKey::from_bytes(&[9; 32]),
            u: slot().0,
            client,
            exchanges,
        }
    }

    fn key_for(&self, user: &str, s: &SubjectToken) -> ExchangeKey {
        ExchangeKey::new(&"ns/up".into(), &self.u, &slot().1, &user.into(), s)
    }

    async fn run(
        &self,
        user: &str,
        s: &SubjectToken,
    ) -> Result<(SealedEntry, bool), ExchangeError> {
        let seal = |t: &SecretString| seal_entry(&self.key, ("ns", "up"), user, &self.u, t);
        let call = ExchangeCall {
            client: &self.client,
            subject: s,
            request: ExchangeRequest {
                audience: "https://upstream.example/mcp",
                scopes: &[],
                resource: None,
            },
            seal: &seal,
        };
        self.exchanges
            .get_or_exchange(&self.key_for(user, s), call)
            .await
    }

    fn opened(&self, e: &SealedEntry) -> String {
        self.key
            .open(&e.aad, &e.value)
            .expect("opens")
            .expose_secret()
            .to_owned()
    }
}

fn ok_body(token: &str, expires_in: u64) -> String {
    serde_json::json!({
        "access_token": token, "token_type": "Bearer", "expires_in": expires_in,
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
    })
    .to_string()
}

#[tokio::test]
async fn one_exchange_for_concurrent_and_repeated_calls_of_one_key() {
    let ep = endpoint(200, ok_body("xchg-a", 300), Duration::from_millis(300)).await;
    let rig = Rig::new(&ep.url, Duration::from_secs(5));
    let alice = subject(ALICE_TOKEN, None);
    let all = futures::future::join_all((0..5).map(|_| rig.run("alice", &alice))).await;
    let fresh = all
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|(_, fresh)| *fresh))
        .count();
    assert_eq!(fresh, 1, "one of five concurrent first calls exchanged");
    for r in &all {
        assert_eq!(rig.opened(&r.as_ref().expect("ok").0), "Bearer xchg-a");
    }
    let (_, fresh) = rig.run("alice", &alice).await.expect("cached");
    assert!(!fresh);
    assert_eq!(ep.hits.load(Ordering::SeqCst), 1);
    // What was sent: the subject token, its type, the audience, the client by Basic auth.
    let sent = ep.last.lock().unwrap().clone();
    assert!(
        sent.contains("subject_token=eyJhbGciOiJSUzI1NiJ9.alice-subject.sig"),
        "{sent}"
    );
    assert!(sent.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"));
    assert!(sent.contains("audience=https%3A%2F%2Fupstream.example%2Fmcp"));
    assert!(sent.to_ascii_lowercase().contains("authorization: basic "));
    // Bob (and a second token of alice's) exchange their own.
    assert!(
        rig.run("bob", &subject("bob.token.sig", None))
            .await
            .expect("bob")
            .1
    );
    assert!(
        rig.run("alice", &subject("alice.second.sig", None))
            .await
            .expect("2nd")
            .1
    );
    assert_eq!(ep.hits.load(Ordering::SeqCst), 3);
    assert_eq!(rig.exchanges.len(), 3);
    rig.exchanges.forget("ns/up", "alice");
    assert_eq!(rig.exchanges.len(), 1, "only bob's is left");
}

#[tokio::test]
async fn a_token_expiring_within_the_margin_or_with_the_caller_is_not_kept() {
    let ep = endpoint(200, ok_body("short", 10), Duration::ZERO).await;
    let rig = Rig::new(&ep.url, Duration::from_secs(5));
    let alice = subject(ALICE_TOKEN, None);
    assert!(rig.run("alice", &alice).await.expect("used once").1);
    assert!(rig.run("alice", &alice).await.expect("again").1);
    assert_eq!(ep.hits.load(Ordering::SeqCst), 2);

    let ep = endpoint(200, ok_body("long", 300), Duration::ZERO).await;
    let rig = Rig::new(&ep.url, Duration::from_secs(5));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiring = subject(ALICE_TOKEN, Some(now)); // the caller's own token ends now
    assert!(rig.run("alice", &expiring).await.expect("used").1);
    assert!(
        rig.exchanges.is_empty(),
        "never kept beyond the caller's token"
    );
}

#[tokio::test]
async fn refused_slow_oversize_and_unusable_answers_are_clear_errors_without_tokens() {
    let alice = subject(ALICE_TOKEN, None);
    // Refused, with the subject token echoed in the description: the error names the code only.
    let echo = serde_json::json!({"error": "invalid_grant", "error_description": format!("bad {ALICE_TOKEN}")});
    let ep = endpoint(400, echo.to_string(), Duration::ZERO).await;
    let rig = Rig::new(&ep.url, Duration::from_secs(5));
    let e = rig.run("alice", &alice).await.expect_err("refused");
    assert_eq!(e, ExchangeError::Refused("invalid_grant".into()));
    let text = e.to_string();
    assert!(
        !text.contains("alice-subject") && text.contains("invalid_grant"),
        "{text}"
    );
    assert!(rig.exchanges.is_empty(), "nothing kept");

    // Slow: bounded by the timeout.
    let ep = endpoint(200, ok_body("late", 300), Duration::from_secs(5)).await;
    let rig = Rig::new(&ep.url, Duration::from_millis(400));
    let started = Instant::now();
    let e = rig.run("alice", &alice).await.expect_err("slow");
    assert_eq!(e.label(), "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Oversize: refused before it is read whole.
    let huge = ok_body(&"a".repeat(100 * 1024), 300);
    let ep = endpoint(200, huge, Duration::ZERO).await;
    let rig = Rig::new(&ep.url, Duration::from_secs(5));
    assert_eq!(
        rig.run("alice", &alice).await.expect_err("oversize"),
        ExchangeError::Endpoint("too_large")
    );

    // A token that would split a header; and an answer that is no token at all.
    let ep = endpoint(200, ok_body("a\r\nX-Evil: 1", 300), Duration::ZERO).await;
    let rig = Rig::new(&ep.url, Duration::from_secs(5));
    assert_eq!(
        rig.run("alice", &alice).await.expect_err("unusable"),
        ExchangeError::Unusable
    );
    let ep = endpoint(200, "<html>".into(), Duration::ZERO).await;
    let rig = Rig::new(&ep.url, Duration::from_secs(5));
    assert_eq!(
        rig.run("alice", &alice).await.expect_err("json").label(),
        "json"
    );
    assert!(rig.exchanges.is_empty());
}

#[tokio::test]
async fn a_failed_exchange_is_shared_by_its_waiters_and_held_briefly() {
    // A silent IdP: every exchange times out. Five concurrent first calls of one key wait for
    // one attempt, not five in a row (which would keep the last one waiting five timeouts).
    let ep = endpoint(200, ok_body("late", 300), Duration::from_secs(5)).await;
    let mut rig = Rig::new(&ep.url, Duration::from_millis(300));
    rig.exchanges =
        Exchanges::new(Duration::from_millis(300)).with_failure_hold(Duration::from_millis(800));
    let alice = subject(ALICE_TOKEN, None);
    let started = Instant::now();
    let all = futures::future::join_all((0..5).map(|_| rig.run("alice", &alice))).await;
    assert!(
        all.iter()
            .all(|r| r.as_ref().is_err_and(|e| e.label() == "timeout"))
    );
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "the waiters shared one attempt: {:?}",
        started.elapsed()
    );
    assert_eq!(ep.hits.load(Ordering::SeqCst), 1);
    // Right after, the same key answers the held failure without asking the IdP.
    assert!(rig.run("alice", &alice).await.is_err());
    assert_eq!(ep.hits.load(Ordering::SeqCst), 1);
    // Another user (or another token) is not held by alice's failure.
    assert!(
        rig.run("bob", &subject("bob.token.sig", None))
            .await
            .is_err()
    );
    assert_eq!(ep.hits.load(Ordering::SeqCst), 2);
    // Once the hold is over the IdP is asked again.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(rig.run("alice", &alice).await.is_err());
    assert_eq!(ep.hits.load(Ordering::SeqCst), 3);
    assert!(rig.exchanges.is_empty(), "no token kept");
}
