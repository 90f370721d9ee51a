//! Token revocation end to end: a `TokenRevocation` manifest dropped into the folder two
//! gateways watch is enforced by both with the next snapshot, by token id and by subject
//! cut-off, audited, while tokens it does not name keep working.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reflow_dataplane::auth::{
    AuthConfig, Authenticator, IssuerConfig, MintedToken, TokenRequest, mint_token,
};
use reflow_dataplane::mcp::GatewayConfig;
use reflow_dataplane::session::MemorySessionStore;
use secrecy::SecretString;
use serde_json::json;
use support::*;

const ISS: &str = "reflow-test";
const AUD: &str = "reflow";
const KEY: &str = "0123456789abcdef0123456789abcdef-revoke";

fn mint(user: &str) -> MintedToken {
    let request = TokenRequest {
        user: user.to_owned(),
        ttl: Duration::from_secs(600),
        ..TokenRequest::default()
    };
    mint_token(&SecretString::from(KEY), ISS, AUD, &request).unwrap()
}

async fn replica(dir: &std::path::Path) -> Harness {
    let mut issuer = IssuerConfig::new(ISS, [AUD]);
    issuer.hs256_secret = Some(SecretString::from(KEY));
    let auth = Arc::new(Authenticator::new(AuthConfig::new(vec![issuer])).unwrap());
    let config = GatewayConfig::default();
    let sessions = MemorySessionStore::new(Duration::from_secs(60));
    start_gateway_auth(dir.to_path_buf(), config, sessions, auth).await
}

async fn initialize_status(h: &Harness, token: &str) -> u16 {
    h.rpc(
        "/mcp",
        token,
        None,
        "initialize",
        json!({"protocolVersion": "2025-06-18"}),
    )
    .await
    .status
}

/// Polls (bounded) until `token` gets `status` on `h`; returns how long that took.
async fn until_status(h: &Harness, token: &str, status: u16) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if initialize_status(h, token).await == status {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("token never got HTTP {status}");
}

fn revocation_yaml(token_ids: &[&str], subject: Option<(&str, u64)>) -> String {
    let ids = token_ids.join(", ");
    let subjects = subject.map_or(String::new(), |(user, secs)| {
        let ts = k8s_timestamp(secs);
        format!("  subjects: [{{user: {user}, issuedBefore: '{ts}'}}]\n")
    });
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: TokenRevocation\nmetadata: {{name: incident}}\nspec:\n  tokenIds: [{ids}]\n{subjects}  reason: test\n"
    )
}

/// RFC 3339 for a time in seconds, without a date library: days → civil date.
fn k8s_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn timestamps_render_as_rfc3339() {
    assert_eq!(k8s_timestamp(0), "1970-01-01T00:00:00Z");
    assert_eq!(k8s_timestamp(1_795_341_600), "2026-11-22T10:00:00Z");
    assert_eq!(k8s_timestamp(951_782_400), "2000-02-29T00:00:00Z");
}

#[tokio::test]
async fn a_revoked_token_stops_working_on_every_replica() {
    let dir = temp_dir();
    let url = start_upstream(Upstream {
        tools: vec!["echo"],
        ..Upstream::default()
    })
    .await;
    write_single_target(&dir, "a", &target_yaml("a", &url, 5_000));
    let (a, b) = (replica(&dir).await, replica(&dir).await);

    let lost = mint("alice");
    let kept = mint("alice");
    let bob_old = mint("bob");
    for h in [&a, &b] {
        until_status(h, &lost.token, 200).await;
        assert_eq!(initialize_status(h, &bob_old.token).await, 200);
    }

    // Revoke one of alice's tokens by id, and every token bob got before the next second.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(
        dir.join("revoke.yaml"),
        revocation_yaml(&[&lost.jti], Some(("bob", now + 1))),
    )
    .unwrap();
    for (name, h) in [("a", &a), ("b", &b)] {
        let took = until_status(h, &lost.token, 401).await;
        eprintln!("replica {name}: revocation enforced after {took:?}");
        assert_eq!(initialize_status(h, &bob_old.token).await, 401);
        assert_eq!(
            initialize_status(h, &kept.token).await,
            200,
            "other tokens still work"
        );
    }
    let r = a
        .rpc("/mcp", &lost.token, None, "initialize", json!({}))
        .await;
    assert_eq!(r.body, "the token has been revoked");
    let challenge = r.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let audited: Vec<_> = a
        .audit
        .events()
        .into_iter()
        .filter(|e| e.policy.as_deref() == Some("token-revocation"))
        .map(|e| (e.user, e.outcome))
        .collect();
    assert!(audited.contains(&("alice".to_owned(), "revoked".to_owned())));
    assert!(audited.contains(&("bob".to_owned(), "revoked".to_owned())));
    // Every refusal row carries a trace id: the caller's, when it sent one.
    assert!(a.audit.events().iter().all(|e| !e.trace_id.is_empty()));
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced = a
        .http
        .post(format!("{}/mcp", a.base))
        .header("authorization", format!("Bearer {}", lost.token))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(traced.status(), 401);
    assert!(
        a.audit
            .events()
            .iter()
            .any(|e| e.trace_id == trace && e.outcome == "revoked"),
        "the refusal row names the caller's trace"
    );

    // A token bob gets after the cut-off works again.
    while SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        < now + 1
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bob_new = mint("bob");
    assert_eq!(initialize_status(&a, &bob_new.token).await, 200);
    assert_eq!(initialize_status(&b, &bob_new.token).await, 200);

    // Lifting the revocation (deleting the manifest) lets the lost token in again.
    std::fs::remove_file(dir.join("revoke.yaml")).unwrap();
    until_status(&a, &lost.token, 200).await;
    until_status(&b, &lost.token, 200).await;
}
