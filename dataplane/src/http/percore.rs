//! Thread-per-core serving: N threads, each with a single-threaded tokio runtime, its own
//! `SO_REUSEPORT` listener on the same address and its own upstream pool (`upstream::pools`),
//! every one running the same [`listener::serve`] loop (timers, eviction, drain) on one router.
//!
//! Why: on a multi-thread runtime a request's task, its client connection and its upstream
//! connection often sit on different workers, and every hand-off is a cross-thread wake-up.
//! Here the kernel spreads connections over the listeners and a connection's whole life (its
//! requests, their upstream exchanges) stays on one thread. What is shared stays what it was:
//! snapshots (`ArcSwap`), sessions, audit queue, metrics.

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use axum::Router;
use tokio::sync::watch;

use crate::http::listener::{self, ServeOptions};
use crate::http::{LimitedListener, TlsConfig, TlsListener};
use crate::upstream::pools;

/// How many serving threads, and whether their plain-HTTP upstream POSTs use hyper directly.
#[derive(Debug, Clone, Copy)]
pub struct Cores {
    pub count: usize,
    /// `upstream::h1` (this thread's hyper connections) instead of this thread's reqwest pool.
    pub direct_upstream: bool,
}

impl Cores {
    /// One serving thread per CPU this process may use.
    pub fn all(direct_upstream: bool) -> Self {
        Self {
            count: default_cores(),
            direct_upstream,
        }
    }
}

/// The serving threads; [`PerCore::join`] waits for them after `stop` turned true.
pub struct PerCore {
    /// Where every listener is bound (the port chosen by the first when `addr` had port 0).
    pub addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl PerCore {
    /// Waits until every serving thread has drained its connections and stopped.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// How many serving threads: the CPUs this process may use.
pub fn default_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Starts `cores` serving threads on `addr` (TLS when `tls` is given). Each listener caps its
/// connections at its share of `options.max_connections` and evicts idle ones on its own.
/// Returns once every listener is bound; the threads serve until `stop` is true, then drain.
pub fn serve(
    (addr, tls): (SocketAddr, Option<TlsConfig>),
    cores: Cores,
    router: Router,
    options: ServeOptions,
    stop: watch::Receiver<bool>,
) -> io::Result<PerCore> {
    let direct = cores.direct_upstream;
    let cores = cores.count.max(1);
    let share = options.max_connections.div_ceil(cores);
    let mut threads = Vec::with_capacity(cores);
    let mut bound = addr;
    for slot in 0..cores {
        let (ready_tx, ready_rx) = std_mpsc::channel::<io::Result<SocketAddr>>();
        let (router, stop, tls) = (router.clone(), stop.clone(), tls.clone());
        let mut options = options.clone();
        options.max_connections = share;
        let thread = std::thread::Builder::new()
            .name(format!("reflow-core-{slot}"))
            .spawn(move || {
                pools::enter_slot(slot);
                pools::use_direct_h1(direct);
                serve_one((bound, tls), router, options, stop, ready_tx);
            })?;
        match ready_rx.recv() {
            Ok(Ok(a)) => bound = a,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(io::Error::other("a serving thread stopped while starting"));
            }
        }
        threads.push(thread);
    }
    Ok(PerCore {
        addr: bound,
        threads,
    })
}

fn serve_one(
    (addr, tls): (SocketAddr, Option<TlsConfig>),
    router: Router,
    options: ServeOptions,
    mut stop: watch::Receiver<bool>,
    ready: std_mpsc::Sender<io::Result<SocketAddr>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let bound = bind_reuseport(addr).and_then(|l| Ok((l.local_addr()?, l)));
        let (local, tcp) = match bound {
            Ok(b) => b,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let max = options.max_connections;
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        match tls {
            Some(tls) => match TlsListener::new(tcp, tls, max) {
                Ok(l) => {
                    let _ = ready.send(Ok(local));
                    listener::serve(l, router, options, stopped).await;
                }
                Err(e) => {
                    let _ = ready.send(Err(io::Error::other(e.to_string())));
                }
            },
            None => {
                let _ = ready.send(Ok(local));
                let l = LimitedListener::new(tcp, max);
                listener::serve(l, router, options, stopped).await;
            }
        }
    });
    // Tasks still on this runtime (upstream connections of this core's pool) end with it.
    drop(rt);
}

/// A listener on `addr` that shares its port with the other cores' listeners.
fn bind_reuseport(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
