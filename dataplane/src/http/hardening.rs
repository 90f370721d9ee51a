//! HTTP hardening around the MCP endpoints: security headers on every response, CORS (off
//! unless origins are listed), `robots.txt` and RFC 9116 `security.txt`, a cap on requests in
//! flight (503 beyond it) and a cap on open connections (see [`LimitedListener`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use reflow_crds::Identity;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::server_config::HttpConfig;

const ALLOW_METHODS: &str = "GET, POST, DELETE, OPTIONS";
const ALLOW_HEADERS: &str =
    "authorization, content-type, accept, mcp-session-id, mcp-protocol-version, last-event-id";
const EXPOSE_HEADERS: &str = "mcp-session-id, mcp-protocol-version, www-authenticate";

/// What the middleware needs, shared by every request: the `gateway.http` settings and the
/// cap on requests in flight.
pub struct Guard {
    config: HttpConfig,
    in_flight: Option<Arc<Semaphore>>,
}

impl Guard {
    pub fn new(config: &HttpConfig) -> Arc<Self> {
        Arc::new(Self {
            config: config.clone(),
            in_flight: (config.max_concurrent_requests > 0)
                .then(|| Arc::new(Semaphore::new(config.max_concurrent_requests))),
        })
    }
}

/// Preflights, the in-flight cap, and headers on whatever the inner router answers.
pub(crate) async fn middleware(
    State(guard): State<Arc<Guard>>,
    req: Request,
    next: Next,
) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let cors_origin = origin.filter(|o| guard.config.cors.allows(o));
    if req.method() == Method::OPTIONS {
        return finish(
            &guard.config,
            cors_origin.as_deref(),
            preflight(&guard.config, req.headers(), cors_origin.as_deref()),
        );
    }
    let _permit = match &guard.in_flight {
        None => None,
        Some(sem) => match sem.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let busy = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "1")],
                    "the gateway is at its request limit; retry shortly",
                )
                    .into_response();
                return finish(&guard.config, cors_origin.as_deref(), busy);
            }
        },
    };
    let resp = next.run(req).await;
    finish(&guard.config, cors_origin.as_deref(), resp)
}

fn preflight(config: &HttpConfig, headers: &HeaderMap, origin: Option<&str>) -> Response {
    if origin.is_none() || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        return (
            StatusCode::FORBIDDEN,
            "cross-origin requests are not allowed from this origin",
        )
            .into_response();
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(config.cors.max_age_seconds),
    );
    resp
}

/// Security headers on every response; CORS headers for allowed origins only.
fn finish(config: &HttpConfig, cors_origin: Option<&str>, mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // A page that posts its own forms (the connect pages) keeps its `same-origin`: with
    // `no-referrer` a browser sends `Origin: null` on those POSTs and the Origin check refuses.
    if !h.contains_key(header::REFERRER_POLICY) {
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if config.hsts {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    if let Some(origin) = cors_origin.and_then(|o| HeaderValue::from_str(o).ok()) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    resp
}

/// Nothing here is for crawlers.
pub(crate) async fn robots_txt() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        "User-agent: *\nDisallow: /\n",
    )
        .into_response()
}

/// RFC 9116, when a contact is configured.
pub(crate) fn security_txt(guard: &Guard) -> Response {
    let Some(contact) = &guard.config.security_contact else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut body = format!("Contact: {contact}\n");
    if let Some(expires) = &guard.config.security_txt_expires {
        body.push_str(&format!("Expires: {expires}\n"));
    }
    body.push_str("Preferred-Languages: en\n");
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}

/// A TCP listener that holds at most `max` connections open: `accept` waits for a slot before
/// taking the next connection from the kernel backlog, and each slot is freed when its
/// connection is dropped.
pub struct LimitedListener {
    inner: tokio::net::TcpListener,
    slots: Arc<Semaphore>,
}

impl LimitedListener {
    pub fn new(inner: tokio::net::TcpListener, max: usize) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

/// One accepted connection and its connection slot, freed when the connection is dropped.
pub struct LimitedStream<T> {
    io: T,
    _slot: OwnedSemaphorePermit,
    /// Who a verified client certificate names (TLS listeners with `clientIdentity:
    /// certificate` only).
    client_identity: Option<Arc<Identity>>,
}

impl<T> LimitedStream<T> {
    pub(crate) fn new(io: T, slot: OwnedSemaphorePermit) -> Self {
        Self {
            io,
            _slot: slot,
            client_identity: None,
        }
    }

    pub(crate) fn with_client_identity(mut self, id: Option<Arc<Identity>>) -> Self {
        self.client_identity = id;
        self
    }

    pub(crate) fn client_identity(&self) -> Option<Arc<Identity>> {
        self.client_identity.clone()
    }
}

impl Listener for LimitedListener {
    type Io = LimitedStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let slot = match self.slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            // The semaphore is never closed; if it were, waiting forever is the only safe answer.
            Err(_) => std::future::pending().await,
        };
        let (io, addr) = Listener::accept(&mut self.inner).await;
        (LimitedStream::new(io, slot), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for LimitedStream<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for LimitedStream<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What the gateway knows about a connection, for `ConnectInfo`: the peer address and, on a
/// TLS listener that maps certificates to identities, who the client certificate names.
#[derive(Debug, Clone)]
pub struct PeerAddr {
    pub addr: SocketAddr,
    pub cert: Option<Arc<Identity>>,
}

impl Connected<IncomingStream<'_, LimitedListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, LimitedListener>) -> Self {
        PeerAddr {
            addr: *stream.remote_addr(),
            cert: None,
        }
    }
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr {
            addr: *stream.remote_addr(),
            cert: None,
        }
    }
}
