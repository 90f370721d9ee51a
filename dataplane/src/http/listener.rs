//! The HTTP server loop: accepts connections and serves each with hyper under timers (request
//! head, idle keep-alive, request-body minimum rate, stalled writes) and drains on shutdown.
//!
//! Why every timer: a peer that stops sending (or reading) must never hold a connection, a
//! request or a response open, or a few sockets take the gateway down without any token.
//! Connections with no request in flight are *idle*; when every connection slot is taken, idle
//! connections that have been idle for [`EVICT_GRACE`] are closed first, so a fresh client (and
//! `/healthz`, which probes use) always gets a slot back from idle or half-sent sockets. A
//! reserve would only serve probes and a second listener would need deployment changes; evicting
//! idle sockets serves every client and costs a well-behaved one at most a reconnect, which
//! HTTP allows a server to cause on any idle keep-alive connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use reflow_crds::Identity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;
use tracing::debug;

use crate::http::{LimitedStream, PeerAddr};
use crate::metrics::Metrics;
pub use crate::server_config::Timeouts;

/// How long a connection must have been idle before a full listener may close it for a newcomer:
/// long enough for a client that just connected to send its request.
pub const EVICT_GRACE: Duration = Duration::from_secs(1);

fn opt(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// What [`serve`] needs besides the listener and the router.
#[derive(Clone, Default)]
pub struct ServeOptions {
    pub timeouts: Timeouts,
    /// Connections open at once (the listener's own cap); at it, idle connections are evicted.
    /// 0 means no cap known here (no eviction).
    pub max_connections: usize,
    /// Where timeouts are counted (`reflow_http_timeouts_total{kind}`).
    pub metrics: Option<Arc<Metrics>>,
}

/// Which timer closed something, for the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    HeaderRead,
    Idle,
    BodyRate,
    Write,
    EvictedIdle,
}

impl TimeoutKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::HeaderRead => "header_read",
            Self::Idle => "idle",
            Self::BodyRate => "body_rate",
            Self::Write => "write",
            Self::EvictedIdle => "evicted_idle",
        }
    }
}

#[derive(Clone)]
struct Counter(Option<Arc<Metrics>>);

impl Counter {
    fn hit(&self, kind: TimeoutKind) {
        debug!(kind = kind.label(), "connection timer fired");
        if let Some(m) = &self.0 {
            m.http_timeout(kind.label());
        }
    }
}

/// Connections whose IO can name the identity of a verified client certificate.
pub trait ClientCert {
    fn client_identity(&self) -> Option<Arc<Identity>>;
}

impl<T> ClientCert for LimitedStream<T> {
    fn client_identity(&self) -> Option<Arc<Identity>> {
        LimitedStream::client_identity(self)
    }
}

impl ClientCert for tokio::net::TcpStream {
    fn client_identity(&self) -> Option<Arc<Identity>> {
        None
    }
}

/// Serves `router` on `listener` until `stop` resolves, then stops accepting, lets requests in
/// flight finish (idle connections close at once) and returns when every connection is closed.
/// Callers bound the drain with their own timeout.
pub async fn serve<L, F>(mut listener: L, router: Router, options: ServeOptions, stop: F)
where
    L: Listener<Addr = SocketAddr>,
    L::Io: ClientCert + AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = ()> + Send,
{
    let shared = Arc::new(Shared {
        open: AtomicUsize::new(0),
        closed: Notify::new(),
        counter: Counter(options.metrics.clone()),
        timeouts: options.timeouts.clone(),
        builder: builder(&options.timeouts),
    });
    let (pressure_tx, pressure_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(stop);
    loop {
        let full = options.max_connections > 0
            && shared.open.load(Ordering::Acquire) >= options.max_connections;
        pressure_tx.send_if_modified(|p| std::mem::replace(p, full) != full);
        let (io, addr) = tokio::select! {
            conn = listener.accept() => conn,
            _ = &mut stop => break,
        };
        pressure_tx.send_if_modified(|p| std::mem::replace(p, false));
        shared.open.fetch_add(1, Ordering::AcqRel);
        let conn = Conn {
            shared: shared.clone(),
            router: router.clone(),
            peer: PeerAddr {
                addr,
                cert: io.client_identity(),
            },
            pressure: pressure_rx.clone(),
            stop: stop_rx.clone(),
        };
        // No span around the connection: each request's span must stay the root of its trace
        // (or continue the caller's), not become a child of a connection span.
        tokio::spawn(conn.run(io));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while shared.open.load(Ordering::Acquire) > 0 {
        let closed = shared.closed.notified();
        if shared.open.load(Ordering::Acquire) == 0 {
            break;
        }
        closed.await;
    }
}

fn builder(t: &Timeouts) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opt(t.header_read_ms));
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(opt(t.http2_keep_alive_ms))
        .keep_alive_timeout(opt(t.http2_keep_alive_ms).unwrap_or(Duration::from_secs(20)));
    b
}

struct Shared {
    open: AtomicUsize,
    closed: Notify,
    counter: Counter,
    timeouts: Timeouts,
    builder: hyper_util::server::conn::auto::Builder<TokioExecutor>,
}

struct Conn {
    shared: Arc<Shared>,
    router: Router,
    peer: PeerAddr,
    pressure: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

impl Conn {
    async fn run<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = self.shared.clone();
        let activity = Arc::new(Activity::new());
        let io = WriteStall::new(io, opt(shared.timeouts.write_ms), shared.counter.clone());
        let service = RequestService {
            router: self.router.clone(),
            peer: self.peer.clone(),
            activity: activity.clone(),
            counter: shared.counter.clone(),
            grace: Duration::from_millis(shared.timeouts.body_grace_ms),
            rate: shared.timeouts.body_min_bytes_per_second,
        };
        // Boxed so it can be dropped (closing the socket) before the connection is uncounted.
        let mut conn = Box::pin(
            shared
                .builder
                .serve_connection_with_upgrades(TokioIo::new(io), service),
        );
        let idle = opt(shared.timeouts.idle_ms);
        let mut draining = false;
        loop {
            let evictable = *self.pressure.borrow() && !draining;
            let deadline = activity.idle_since().and_then(|since| {
                let timeout = idle.map(|d| since + d);
                let evict = evictable.then(|| since + EVICT_GRACE);
                match (timeout, evict) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            });
            let wake = activity.changed.notified();
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        let timed_out = e
                            .downcast_ref::<hyper::Error>()
                            .is_some_and(hyper::Error::is_timeout);
                        if timed_out {
                            shared.counter.hit(TimeoutKind::HeaderRead);
                        }
                        debug!(error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = sleep_until(deadline) => {
                    // Still idle (the deadline came from `idle_since`): close without waiting.
                    if activity.idle_since().is_some() {
                        let kind = if idle.is_some_and(|d| activity.idle_for() >= d) {
                            TimeoutKind::Idle
                        } else {
                            TimeoutKind::EvictedIdle
                        };
                        shared.counter.hit(kind);
                        break;
                    }
                }
                _ = wake => {}
                _ = self.pressure.changed() => {}
                changed = self.stop.changed(), if !draining => {
                    draining = true;
                    if changed.is_ok() {
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
        drop(conn);
        shared.open.fetch_sub(1, Ordering::AcqRel);
        shared.closed.notify_waiters();
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Requests in flight on one connection, and since when none has been.
struct Activity {
    active: AtomicUsize,
    idle_since: std::sync::Mutex<Option<Instant>>,
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            active: AtomicUsize::new(0),
            idle_since: std::sync::Mutex::new(Some(Instant::now())),
            changed: Notify::new(),
        }
    }

    fn idle_since(&self) -> Option<Instant> {
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn idle_for(&self) -> Duration {
        self.idle_since().map(|s| s.elapsed()).unwrap_or_default()
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        let mut since = self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        self.active.fetch_add(1, Ordering::AcqRel);
        *since = None;
        drop(since);
        self.changed.notify_one();
        InFlight(self.clone())
    }
}

/// One request in flight: from its head until its response body is done or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut since = self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Some(Instant::now());
        }
        drop(since);
        self.0.changed.notify_one();
    }
}

/// The per-connection hyper service: peer info in, request body rate-guarded, in-flight tracked
/// until the response body ends.
#[derive(Clone)]
struct RequestService {
    router: Router,
    peer: PeerAddr,
    activity: Arc<Activity>,
    counter: Counter,
    grace: Duration,
    rate: u64,
}

impl hyper::service::Service<http::Request<Incoming>> for RequestService {
    type Response = http::Response<axum::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.enter();
        let (grace, rate, counter) = (self.grace, self.rate, self.counter.clone());
        let mut req =
            req.map(|body| axum::body::Body::new(MinRate::new(body, grace, rate, counter)));
        req.extensions_mut().insert(ConnectInfo(self.peer.clone()));
        let router = self.router.clone();
        Box::pin(async move {
            let resp = match router.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            Ok(resp.map(|body| {
                axum::body::Body::new(Tracked {
                    inner: body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A response body that keeps its request counted as in flight until it ends or is dropped.
struct Tracked {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error a too-slow request body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived more slowly than the configured minimum rate")]
pub struct BodyTooSlow;

/// A request body that must keep up a minimum average rate after a grace period: its deadline
/// is `start + grace + received / rate`, so each byte buys `1/rate` seconds and a trickle fails.
struct MinRate {
    inner: Incoming,
    start: Instant,
    received: u64,
    grace: Duration,
    rate: u64,
    deadline: Option<Pin<Box<Sleep>>>,
    counter: Counter,
}

impl MinRate {
    fn new(inner: Incoming, grace: Duration, rate: u64, counter: Counter) -> Self {
        let start = Instant::now();
        let deadline = (rate > 0).then(|| Box::pin(tokio::time::sleep_until(start + grace)));
        Self {
            inner,
            start,
            received: 0,
            grace,
            rate,
            deadline,
            counter,
        }
    }

    fn extend(&mut self) {
        if let Some(d) = &mut self.deadline {
            let earned = Duration::from_secs_f64(self.received as f64 / self.rate as f64);
            d.as_mut().reset(self.start + self.grace + earned);
        }
    }
}

impl HttpBody for MinRate {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                    self.extend();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                self.deadline = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let expired = match &mut self.deadline {
                    Some(d) => d.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if expired {
                    self.deadline = None;
                    self.counter.hit(TimeoutKind::BodyRate);
                    return Poll::Ready(Some(Err(Box::new(BodyTooSlow))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// IO whose writes fail once the peer has not taken any bytes for `timeout`.
struct WriteStall<I> {
    io: I,
    timeout: Option<Duration>,
    stalled: Option<Pin<Box<Sleep>>>,
    counter: Counter,
}

impl<I> WriteStall<I> {
    fn new(io: I, timeout: Option<Duration>, counter: Counter) -> Self {
        Self {
            io,
            timeout,
            stalled: None,
            counter,
        }
    }

    /// Called when a write is pending: `Err` once it has been pending for the whole timeout.
    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        let Some(timeout) = self.timeout else {
            return Ok(());
        };
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            self.counter.hit(TimeoutKind::Write);
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the peer stopped reading",
            ));
        }
        Ok(())
    }

    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        p: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match p {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                self.check(cx)?;
                Poll::Pending
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteStall<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteStall<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(cx, p)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let p = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(cx, p)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let p = Pin::new(&mut self.io).poll_shutdown(cx);
        self.progress(cx, p)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(cx, p)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_write_the_peer_never_reads_fails_after_the_timeout() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut io = WriteStall::new(ours, Some(Duration::from_millis(200)), Counter(None));
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(5), io.write_all(&[0u8; 4096]))
            .await
            .expect("the stalled write ends by itself")
            .expect_err("the peer never read");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_slow_but_steady_reader_is_not_cut_off() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut io = WriteStall::new(ours, Some(Duration::from_millis(300)), Counter(None));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 32];
            let mut total = 0;
            while total < 1024 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                total += theirs.read(&mut buf).await.expect("read");
            }
            total
        });
        io.write_all(&[1u8; 1024])
            .await
            .expect("every byte taken in time");
        assert_eq!(reader.await.expect("reader"), 1024);
    }
}
