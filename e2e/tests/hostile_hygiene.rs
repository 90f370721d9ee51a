//! Input hygiene on the real binary: MCP POSTs with the wrong media types, a foreign Host on the
//! routes that used to skip the check, and metadata that must never name a foreign Host.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

mod hostile_support;
use hostile_support::{Gw, token};

/// One raw exchange (`Connection: close`), so Host and media headers are exactly what we send.
fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn post(addr: SocketAddr, host: &str, content_type: Option<&str>, accept: &str) -> String {
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"h","version":"0"}}}"#;
    let ct = content_type
        .map(|c| format!("Content-Type: {c}\r\n"))
        .unwrap_or_default();
    raw(
        addr,
        &format!(
            "POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n{ct}Accept: {accept}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            token("mallory"),
            body.len()
        ),
    )
}

fn get(addr: SocketAddr, host: &str, path: &str) -> String {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn mcp_posts_need_json_and_an_acceptable_accept() {
    let gw = Gw::start("media", "{}");
    let host = gw.addr.to_string();
    let both = "application/json, text/event-stream";
    assert_eq!(status(&post(gw.addr, &host, Some("text/plain"), both)), 415);
    assert_eq!(status(&post(gw.addr, &host, None, both)), 415);
    assert_eq!(
        status(&post(gw.addr, &host, Some("application/json"), "text/html")),
        406
    );
    assert_eq!(
        status(&post(
            gw.addr,
            &host,
            Some("application/json; charset=utf-8"),
            both
        )),
        200
    );
}

#[test]
fn every_route_checks_the_host_and_metadata_never_names_a_foreign_one() {
    let allowed = Gw::start("hosts", "{allowedHosts: [gateway.example]}");
    for path in ["/metrics", "/.well-known/oauth-protected-resource"] {
        let answer = get(allowed.addr, "evil.example", path);
        assert_eq!(status(&answer), 403, "{path}: {answer}");
        assert!(!answer.contains("evil.example"), "{path}: {answer}");
    }
    let ok = get(
        allowed.addr,
        "gateway.example",
        "/.well-known/oauth-protected-resource",
    );
    assert_eq!(status(&ok), 200, "{ok}");
    assert!(ok.contains("http://gateway.example/mcp"), "{ok}");
    // Probes use the pod IP as Host: never refused.
    assert_eq!(status(&get(allowed.addr, "10.0.0.7:8080", "/healthz")), 200);

    // No allow-list and no public URL: a name the gateway cannot know is its own is not echoed.
    let open = Gw::start("open", "{}");
    let answer = get(
        open.addr,
        "evil.example",
        "/.well-known/oauth-protected-resource",
    );
    assert!(!answer.contains("evil.example"), "{answer}");
    assert_ne!(status(&answer), 200, "{answer}");
    let own = get(
        open.addr,
        &open.addr.to_string(),
        "/.well-known/oauth-protected-resource",
    );
    assert_eq!(status(&own), 200, "{own}");
}
