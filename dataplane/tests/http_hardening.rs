//! HTTP hardening through the real router: security headers, CORS off by default and on per
//! origin, robots.txt and security.txt, the in-flight request cap, the connection cap, and
//! trusted-proxy identity headers (believed only from configured proxy addresses).

mod support;

use std::time::Duration;

use reflow_dataplane::http::{CorsConfig, HttpConfig, LimitedListener, TrustedProxyConfig};
use reflow_dataplane::mcp::GatewayConfig;
use serde_json::json;
use support::*;

async fn gateway_with(config: GatewayConfig, delay: Duration) -> Harness {
    let dir = temp_dir();
    let url = start_upstream(Upstream {
        tools: vec!["echo"],
        delay,
        ..Upstream::default()
    })
    .await;
    write_single_target(&dir, "a", &target_yaml("a", &url, 10_000));
    let h = start_gateway(dir, config).await;
    for _ in 0..100 {
        if h.gw.snapshots.is_ready() && !h.gw.snapshots.load().targets().is_empty() {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("manifests never compiled");
}

const INIT: &str =
    r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#;

#[tokio::test]
async fn every_response_carries_security_headers() {
    let h = gateway_with(GatewayConfig::default(), Duration::ZERO).await;
    let ok = h.post("/mcp", "alice", None, INIT.into()).await;
    let unauthorized = h
        .http
        .post(format!("{}/mcp", h.base))
        .header("content-type", "application/json")
        .body(INIT)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(unauthorized.status(), 401);
    for headers in [&ok.headers, unauthorized.headers()] {
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert_eq!(headers["cache-control"], "no-store");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
        assert!(!headers.contains_key("access-control-allow-origin"));
        assert!(
            !headers.contains_key("strict-transport-security"),
            "hsts is opt-in"
        );
    }
}

/// The OAuth Client ID Metadata Document: served only with a `publicUrl`, its `client_id` is
/// its own URL built from that setting (a forged `Host` changes nothing), no secret in it.
#[tokio::test]
async fn the_client_metadata_document_is_served_only_under_a_public_url() {
    const PATH: &str = "/connect/client-metadata.json";
    let h = gateway_with(GatewayConfig::default(), Duration::ZERO).await;
    let none = h
        .http
        .get(format!("{}{PATH}", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404, "no publicUrl, no document");

    let config = GatewayConfig {
        public_url: Some("https://gw.example.com/".into()),
        ..GatewayConfig::default()
    };
    let h = gateway_with(config, Duration::ZERO).await;
    let resp = h
        .http
        .get(format!("{}{PATH}", h.base))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-type").starts_with("application/json"));
    assert_eq!(header("cache-control"), "public, max-age=3600");
    let text = resp.text().await.unwrap();
    assert!(!text.contains("evil.example"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        doc["client_id"],
        "https://gw.example.com/connect/client-metadata.json"
    );
    assert_eq!(
        doc["redirect_uris"],
        json!(["https://gw.example.com/connect/callback"])
    );
    assert_eq!(doc["token_endpoint_auth_method"], "none");
    assert_eq!(doc["response_types"], json!(["code"]));
}

#[tokio::test]
async fn robots_and_security_txt() {
    let h = gateway_with(GatewayConfig::default(), Duration::ZERO).await;
    let robots = h
        .http
        .get(format!("{}/robots.txt", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(robots.status(), 200);
    assert_eq!(robots.text().await.unwrap(), "User-agent: *\nDisallow: /\n");
    let none = h
        .http
        .get(format!("{}/.well-known/security.txt", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404, "no contact configured, no security.txt");

    let config = GatewayConfig {
        http: HttpConfig {
            security_contact: Some("mailto:security@example.com".into()),
            security_txt_expires: Some("2027-11-22T00:00:00Z".into()),
            hsts: true,
            ..HttpConfig::default()
        },
        ..GatewayConfig::default()
    };
    let h = gateway_with(config, Duration::ZERO).await;
    let txt = h
        .http
        .get(format!("{}/.well-known/security.txt", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(txt.status(), 200);
    assert!(txt.headers().contains_key("strict-transport-security"));
    let body = txt.text().await.unwrap();
    assert!(
        body.contains("Contact: mailto:security@example.com\n"),
        "{body}"
    );
    assert!(body.contains("Expires: 2027-11-22T00:00:00Z\n"), "{body}");
}

#[tokio::test]
async fn cors_is_off_by_default_and_on_per_listed_origin() {
    let preflight = |h: &Harness, origin: &'static str| {
        h.http
            .request(reqwest::Method::OPTIONS, format!("{}/mcp", h.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, mcp-session-id",
            )
            .send()
    };
    let h = gateway_with(GatewayConfig::default(), Duration::ZERO).await;
    let r = preflight(&h, "https://app.example.com").await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(!r.headers().contains_key("access-control-allow-origin"));

    let config = GatewayConfig {
        http: HttpConfig {
            cors: CorsConfig {
                allowed_origins: vec!["https://app.example.com".into()],
                max_age_seconds: 120,
            },
            ..HttpConfig::default()
        },
        ..GatewayConfig::default()
    };
    let h = gateway_with(config, Duration::ZERO).await;
    let r = preflight(&h, "https://app.example.com").await.unwrap();
    assert_eq!(r.status(), 204);
    let hd = r.headers();
    assert_eq!(hd["access-control-allow-origin"], "https://app.example.com");
    assert!(
        hd["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("mcp-session-id")
    );
    assert_eq!(hd["access-control-max-age"], "120");
    let other = preflight(&h, "https://evil.example.com").await.unwrap();
    assert_eq!(other.status(), 403);

    let post = h
        .http
        .post(format!("{}/mcp", h.base))
        .header("origin", "https://app.example.com")
        .header("authorization", "Bearer alice")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(INIT)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 200);
    assert_eq!(
        post.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        post.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("mcp-session-id")
    );
}

#[tokio::test]
async fn requests_beyond_the_in_flight_cap_get_503() {
    let config = GatewayConfig {
        http: HttpConfig {
            max_concurrent_requests: 1,
            ..HttpConfig::default()
        },
        ..GatewayConfig::default()
    };
    let h = gateway_with(config, Duration::from_millis(800)).await;
    let sid = h.open("/mcp/t/a", "alice").await;
    let slow = h.rpc(
        "/mcp/t/a",
        "alice",
        Some(&sid),
        "tools/call",
        json!({"name": "echo"}),
    );
    // Pings while the slow call holds the only slot: polled, so a slow start cannot fool it.
    let pings = async {
        for _ in 0..400 {
            let r = h
                .rpc("/mcp/t/a", "alice", Some(&sid), "ping", json!({}))
                .await;
            if r.status == 503 {
                return Some(r);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    };
    let (slow, busy) = tokio::join!(slow, pings);
    assert_eq!(slow.status, 200, "{:?}", slow.body);
    let busy = busy.expect("no request was refused while the slot was taken");
    assert_eq!(busy.headers["retry-after"], "1");
    // The slot is free again.
    assert_eq!(
        h.rpc("/mcp/t/a", "alice", Some(&sid), "ping", json!({}))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_slot() {
    let h = gateway_with(GatewayConfig::default(), Duration::ZERO).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limited = LimitedListener::new(listener, 1);
    let app = h.app.service();
    tokio::spawn(async move { axum::serve(limited, app).await });
    let url = format!("http://{addr}/healthz");

    // One idle connection takes the only slot; a new client is not served meanwhile.
    let held = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert!(
        client.get(&url).send().await.is_err(),
        "served beyond the cap"
    );
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        if let Ok(r) = client.get(&url).send().await {
            served = r.status() == 200;
            break;
        }
    }
    assert!(served, "never served after the slot was freed");
}

fn proxy(sources: &[&str]) -> TrustedProxyConfig {
    serde_yaml::from_str(&format!("sources: [{}]", sources.join(", "))).unwrap()
}

#[tokio::test]
async fn trusted_proxy_headers_only_from_proxy_addresses() {
    let init = |h: &Harness, bearer: Option<&'static str>| {
        let mut r = h
            .http
            .post(format!("{}/mcp", h.base))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("x-forwarded-user", "alice")
            .header("x-forwarded-groups", "dev")
            .body(INIT);
        if let Some(b) = bearer {
            r = r.header("authorization", format!("Bearer {b}"));
        }
        r.send()
    };
    let trusting = GatewayConfig {
        trusted_proxy: Some(proxy(&["127.0.0.1"])),
        ..GatewayConfig::default()
    };
    let h = gateway_with(trusting, Duration::ZERO).await;
    let r = init(&h, None).await.unwrap();
    assert_eq!(r.status(), 200, "the loopback proxy may assert alice");
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    // The session belongs to alice of group dev: that bearer identity finds it.
    assert_eq!(h.tool_names("/mcp", "alice:dev", &sid).await, ["a_echo"]);

    let elsewhere = GatewayConfig {
        trusted_proxy: Some(proxy(&["10.0.0.0/8"])),
        ..GatewayConfig::default()
    };
    let h = gateway_with(elsewhere, Duration::ZERO).await;
    let spoofed = init(&h, None).await.unwrap();
    assert_eq!(
        spoofed.status(),
        401,
        "a spoofed identity header is ignored"
    );
    let bob = init(&h, Some("bob")).await.unwrap();
    assert_eq!(bob.status(), 200);
    let sid = bob.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let as_alice = h.rpc("/mcp", "alice", Some(&sid), "ping", json!({})).await;
    assert_eq!(
        as_alice.status, 404,
        "the session is bob's, not the spoofed alice's"
    );
    assert_eq!(
        h.rpc("/mcp", "bob", Some(&sid), "ping", json!({}))
            .await
            .status,
        200
    );
}
