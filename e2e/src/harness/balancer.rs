//! A round-robin TCP load balancer in front of several gateway replicas, for the replica tests:
//! every HTTP request goes to the next replica. It reads only the request head, replaces the
//! client's `Connection` header with `Connection: close` (so the replica answers and closes, and
//! the client opens a new connection, to the next replica, for its next request), and then moves
//! bytes both ways untouched. A replica that refuses the connection is skipped, as a real
//! balancer's health check would: that is what the client sees when a replica dies.
//!
//! It runs on its own runtime thread (the tests drive blocking SDK clients) and stops when
//! dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::error::{HarnessError, Result};

/// Largest request head read (the tests' are well under 8 KiB).
const MAX_HEAD: usize = 64 * 1024;
/// A client that sends no complete head in this time is dropped.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Where one request went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub replica: usize,
    pub method: String,
    pub path: String,
}

#[derive(Default)]
struct Shared {
    next: AtomicUsize,
    requests: AtomicU64,
    /// Connections a replica refused (the request then went to the next one).
    skipped: AtomicU64,
    /// Requests no replica accepted.
    unserved: AtomicU64,
    routed: Mutex<Vec<Routed>>,
}

/// The balancer; its address is [`RoundRobin::url`].
pub struct RoundRobin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl RoundRobin {
    /// Listens on a free loopback port and balances over `replicas` (in this order).
    pub fn start(replicas: Vec<SocketAddr>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("balancer")
            .build()
            .map_err(|e| HarnessError::NotReady {
                what: "balancer".into(),
                detail: e.to_string(),
            })?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| HarnessError::NotReady {
                what: "balancer".into(),
                detail: e.to_string(),
            })?;
        let addr = listener.local_addr().map_err(|e| HarnessError::NotReady {
            what: "balancer".into(),
            detail: e.to_string(),
        })?;
        let shared = Arc::new(Shared::default());
        let replicas = Arc::new(replicas);
        let s = shared.clone();
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let (s, replicas) = (s.clone(), replicas.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &replicas, &s).await;
                });
            }
        });
        Ok(Self {
            addr,
            shared,
            runtime: Some(runtime),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests balanced so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Connections replicas refused (each request then went to the next replica).
    pub fn skipped(&self) -> u64 {
        self.shared.skipped.load(Ordering::Relaxed)
    }

    /// Requests no replica accepted (the client saw its connection closed).
    pub fn unserved(&self) -> u64 {
        self.shared.unserved.load(Ordering::Relaxed)
    }

    /// Every request so far, with the replica it went to.
    pub fn routed(&self) -> Vec<Routed> {
        self.shared
            .routed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve(mut client: TcpStream, replicas: &[SocketAddr], s: &Shared) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let head_len = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client, &mut buf)).await
    {
        Ok(Ok(Some(n))) => n,
        _ => return Ok(()),
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut rewritten = format!("{request_line}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
            continue;
        }
        rewritten.push_str(line);
        rewritten.push_str("\r\n");
    }
    rewritten.push_str("Connection: close\r\n\r\n");
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next().unwrap_or("?"), parts.next().unwrap_or("?"));
    let Some((replica, mut upstream)) = connect_next(replicas, s).await else {
        s.unserved.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    };
    s.requests.fetch_add(1, Ordering::Relaxed);
    s.routed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Routed {
            replica,
            method: method.to_owned(),
            path: path.to_owned(),
        });
    upstream.write_all(rewritten.as_bytes()).await?;
    upstream.write_all(&buf[head_len..]).await?;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(())
}

/// The next replica that accepts a connection, in round-robin order.
async fn connect_next(replicas: &[SocketAddr], s: &Shared) -> Option<(usize, TcpStream)> {
    for _ in 0..replicas.len() {
        let i = s.next.fetch_add(1, Ordering::Relaxed) % replicas.len();
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(replicas[i])).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Some((i, stream));
            }
            _ => {
                s.skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    None
}

/// Reads until `buf` holds a whole request head; returns its length (through the blank line).
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(end + 4));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
