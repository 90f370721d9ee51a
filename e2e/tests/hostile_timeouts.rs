//! Attacks on the real `reflow-dataplane` binary that stall instead of sending: a request head
//! trickled a line at a time, an idle socket, a body trickled a byte at a time, and a listener
//! filled with idle sockets. Each must be closed by a timer, and `/healthz` must stay reachable.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reflow_e2e::harness::DataplaneProcess;

const DEV_SECRET: &str = "hostile-timeouts-dev-secret-0123456789";

/// Short timers so each attack ends in seconds; `extra` goes under `gateway.http`.
fn gateway(name: &str, http: &str) -> (DataplaneProcess, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "reflow-hostile-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests dir");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!("dev: {{hs256Secret: {DEV_SECRET}}}\ngateway:\n  http: {http}\n"),
    )
    .expect("config");
    let gw = DataplaneProcess::spawn(&manifests, &config, &[]).expect("gateway starts");
    (gw, dir)
}

fn addr_of(gw: &DataplaneProcess) -> SocketAddr {
    gw.mcp_url()
        .strip_prefix("http://")
        .and_then(|a| a.strip_suffix("/mcp"))
        .and_then(|a| a.parse().ok())
        .expect("gateway address")
}

/// Whether the server closed `s` (EOF or reset) within `within`, reading and discarding
/// whatever it answers meanwhile.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let end = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Sends `bytes` one `step` at a time, every `every`, until the server closes or `within` ends.
/// Returns whether the server closed the connection meanwhile.
fn trickle(
    s: &mut TcpStream,
    bytes: &[u8],
    step: usize,
    every: Duration,
    within: Duration,
) -> bool {
    let end = Instant::now() + within;
    for chunk in bytes.chunks(step) {
        if s.write_all(chunk).is_err() {
            return true;
        }
        if closed_within(s, every) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
    }
    closed_within(s, end.saturating_duration_since(Instant::now()))
}

fn timers() -> &'static str {
    "{timeouts: {headerReadMs: 1000, idleMs: 2000, bodyGraceMs: 1000, bodyMinBytesPerSecond: 100, writeMs: 2000}}"
}

/// A whole `GET path` exchange on a fresh connection (empty when nothing came back in time).
fn get(addr: SocketAddr, path: &str, within: Duration) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, within) else {
        return String::new();
    };
    s.set_read_timeout(Some(within)).expect("timeout");
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn metrics(addr: SocketAddr) -> String {
    get(addr, "/metrics", Duration::from_secs(5))
}

fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_request_head_trickled_a_line_at_a_time_is_cut_off() {
    let (gw, dir) = gateway("head", timers());
    let addr = addr_of(&gw);
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut head = format!("POST /mcp HTTP/1.1\r\nHost: {addr}\r\n").into_bytes();
    for i in 0..100 {
        head.extend_from_slice(format!("X-Slow-{i}: a\r\n").as_bytes());
    }
    let started = Instant::now();
    let closed = trickle(
        &mut s,
        &head,
        12,
        Duration::from_millis(250),
        Duration::from_secs(8),
    );
    assert!(closed, "a trickled request head was still open after 8 s");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        started.elapsed()
    );
    let text = metrics(addr);
    assert!(
        text.contains("reflow_http_timeouts_total{kind=\"header_read\"}")
            || text.contains("reflow_http_timeouts_total{kind=\"idle\"}"),
        "{text}"
    );
    cleanup(&dir);
}

#[test]
fn an_idle_socket_is_closed_and_counted() {
    let (gw, dir) = gateway("idle", timers());
    let addr = addr_of(&gw);
    let mut s = TcpStream::connect(addr).expect("connect");
    let started = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(8)),
        "an idle socket was still open after 8 s"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed too early: {:?}",
        started.elapsed()
    );
    // An idle keep-alive connection after a full request is closed the same way.
    let mut k = TcpStream::connect(addr).expect("connect");
    write!(k, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("write");
    assert!(
        closed_within(&mut k, Duration::from_secs(8)),
        "an idle keep-alive connection stayed open"
    );
    let text = metrics(addr);
    assert!(
        text.contains("reflow_http_timeouts_total{kind=\"idle\"}"),
        "{text}"
    );
    cleanup(&dir);
}

#[test]
fn a_body_trickled_a_byte_at_a_time_is_refused() {
    let (gw, dir) = gateway("body", timers());
    let addr = addr_of(&gw);
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: 4000\r\n\r\n"
    )
    .expect("head");
    let body = vec![b' '; 4000];
    let started = Instant::now();
    let closed = trickle(
        &mut s,
        &body,
        1,
        Duration::from_millis(250),
        Duration::from_secs(10),
    );
    assert!(closed, "a trickled body was still being read after 10 s");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "refused only after {:?}",
        started.elapsed()
    );
    let text = metrics(addr);
    assert!(
        text.contains("reflow_http_timeouts_total{kind=\"body_rate\"}"),
        "{text}"
    );
    cleanup(&dir);
}

#[test]
fn healthz_answers_while_idle_sockets_hold_every_connection_slot() {
    // Long timers: only eviction can free a slot within the test.
    let (gw, dir) = gateway(
        "full",
        "{maxConnections: 20, timeouts: {headerReadMs: 60000, idleMs: 60000}}",
    );
    let addr = addr_of(&gw);
    let mut held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    // Half of them sent half a request head: as idle as the silent ones.
    for s in held.iter_mut().take(10) {
        write!(s, "GET /mcp HTTP/1.1\r\nHost: {addr}\r\n").expect("partial head");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let answer = get(addr, "/healthz", Duration::from_secs(5));
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "/healthz while the listener is full of idle sockets: {answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let text = metrics(addr);
    assert!(
        text.contains("reflow_http_timeouts_total{kind=\"evicted_idle\"}"),
        "{text}"
    );
    drop(held);
    cleanup(&dir);
}
