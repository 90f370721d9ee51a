//! Loopback networking helpers: picking a free port and waiting until a server accepts connections.
//! Every address here is 127.0.0.1; nothing in the harness listens beyond loopback.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::error::{HarnessError, Result};

/// A port that was free on 127.0.0.1 a moment ago (callers retry if someone takes it first).
pub fn free_loopback_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| HarnessError::Other(format!("cannot bind a loopback port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| HarnessError::Other(format!("cannot read the bound port: {e}")))
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// True once something accepts TCP connections on `addr`.
pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Polls `ready` every 50 ms until it answers `Some`, or fails after `timeout`.
pub fn poll_until<T>(timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = ready() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Linux only: `Some(true)` if every listening TCP socket on `port` is bound to 127.0.0.1,
/// `Some(false)` if one is bound elsewhere (or none listens), `None` if /proc/net is unreadable.
pub fn listens_on_loopback_only(port: u16) -> Option<bool> {
    let mut local_addrs = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            if table.ends_with("tcp") {
                return None;
            }
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // cols[1] = local "ADDRHEX:PORTHEX", cols[3] = state (0A = LISTEN)
            let (Some(local), Some(state)) = (cols.get(1), cols.get(3)) else {
                continue;
            };
            let Some((addr, port_hex)) = local.split_once(':') else {
                continue;
            };
            if *state == "0A" && u16::from_str_radix(port_hex, 16).ok() == Some(port) {
                local_addrs.push(addr.to_owned());
            }
        }
    }
    // 127.0.0.1 in /proc/net/tcp's little-endian hex.
    Some(!local_addrs.is_empty() && local_addrs.iter().all(|a| a == "0100007F"))
}
