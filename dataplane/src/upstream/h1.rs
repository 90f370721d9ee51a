//! hyper's HTTP/1 client directly, for plain-HTTP upstream POSTs on a thread-per-core serving
//! thread: this thread's own idle connections (`SendRequest`s, no lock, no connector stack),
//! each driven by a task on this thread. Everything else (TLS, SSE resumes, redirects policy,
//! threads without a core slot) stays on reqwest.
//!
//! The request goes out from its parts (URL, headers, body bytes) with no `reqwest::Request`
//! in between, and the answer is a [`Reply`]: hyper's response as it is, or reqwest's for the
//! other path. The reply handling above reads either through the same few methods (status,
//! headers, body chunks), so it is one code path for both (issue #24).

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HOST, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use reqwest::Url;

use super::UpstreamError;

/// Idle connections kept per upstream authority on one thread; more are closed when returned.
const MAX_IDLE: usize = 64;
/// Upstream URLs whose request target and `Host` are kept per thread; beyond it, start over.
const MAX_DESTS: usize = 4096;

thread_local! {
    static IDLE: RefCell<HashMap<Arc<str>, Vec<SendRequest<Once>>>> =
        RefCell::new(HashMap::new());
    static DESTS: RefCell<HashMap<Box<str>, Dest>> = RefCell::new(HashMap::new());
}

#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("connecting: timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(String),
}

/// An upstream's answer, from whichever client sent the request.
pub(super) enum Reply {
    /// From this thread's hyper connection (`send`).
    Direct(http::Response<Incoming>),
    /// From a reqwest pool (TLS, threads without `h1`, GET resumes).
    Pooled(reqwest::Response),
}

impl From<reqwest::Response> for Reply {
    fn from(resp: reqwest::Response) -> Self {
        Self::Pooled(resp)
    }
}

impl Reply {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::Direct(r) => r.status(),
            Self::Pooled(r) => r.status(),
        }
    }

    pub(super) fn headers(&self) -> &HeaderMap {
        match self {
            Self::Direct(r) => r.headers(),
            Self::Pooled(r) => r.headers(),
        }
    }

    /// The next piece of the body; `None` at its end.
    pub(super) async fn chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        match self {
            Self::Pooled(r) => r.chunk().await.map_err(super::map_reqwest),
            Self::Direct(r) => loop {
                let frame = std::future::poll_fn(|cx| Pin::new(r.body_mut()).poll_frame(cx)).await;
                match frame {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(body_error(&e)),
                    // Trailers (never sent to a POST of ours in practice) carry no body.
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => return Ok(Some(data)),
                        Err(_) => continue,
                    },
                }
            },
        }
    }

    /// The whole body (one piece is handed on as it is, without a copy).
    pub(super) async fn bytes(mut self) -> Result<Bytes, UpstreamError> {
        let Some(first) = self.chunk().await? else {
            return Ok(Bytes::new());
        };
        let Some(second) = self.chunk().await? else {
            return Ok(first);
        };
        let mut all = BytesMut::from(&first[..]);
        all.extend_from_slice(&second);
        while let Some(more) = self.chunk().await? {
            all.extend_from_slice(&more);
        }
        Ok(all.freeze())
    }
}

/// A body error on the direct path, said as reqwest says it (no URL: it may carry a secret).
fn body_error(e: &hyper::Error) -> UpstreamError {
    UpstreamError::Client(format!("error reading a response body: {e}"))
}

/// POSTs `body` with `headers` to `url`: through [`send`] on a thread that serves with `h1` on
/// (`pools::direct_h1`) and for a plain-HTTP URL, else through the thread's reqwest pool.
pub(super) async fn post_via(
    pools: &super::pools::Pools,
    url: &Url,
    headers: HeaderMap,
    body: Vec<u8>,
) -> Result<Reply, UpstreamError> {
    if !super::pools::direct_h1() || !eligible(url) {
        let req = pools.post(url.clone()).headers(headers).body(body);
        return req
            .send()
            .await
            .map(Reply::Pooled)
            .map_err(super::map_reqwest);
    }
    send(url, headers, body, pools.connect_timeout())
        .await
        .map(Reply::Direct)
        .map_err(|e| match e {
            H1Error::Connect(_) | H1Error::ConnectTimeout(_) => UpstreamError::Connect,
            other => UpstreamError::Client(other.to_string()),
        })
}

/// Whether `url` can take this path (plain `http://` with a host).
pub fn eligible(url: &Url) -> bool {
    url.scheme() == "http" && url.host_str().is_some()
}

/// Where one upstream URL's requests go: its `host:port`, `Host` value and request target.
#[derive(Clone)]
struct Dest {
    authority: Arc<str>,
    host: HeaderValue,
    path: Uri,
}

impl Dest {
    fn of(url: &Url) -> Result<Self, H1Error> {
        let authority = match (url.host_str(), url.port_or_known_default()) {
            (Some(h), Some(p)) if h.contains(':') => format!("[{h}]:{p}"),
            (Some(h), Some(p)) => format!("{h}:{p}"),
            _ => return Err(H1Error::Request("the URL has no host".into())),
        };
        let origin_form = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        Ok(Self {
            host: HeaderValue::from_str(&authority).map_err(|e| H1Error::Request(e.to_string()))?,
            path: origin_form
                .parse()
                .map_err(|e: http::uri::InvalidUri| H1Error::Request(e.to_string()))?,
            authority: authority.into(),
        })
    }

    /// `url`'s destination, worked out once per thread.
    fn cached(url: &Url) -> Result<Self, H1Error> {
        let known = DESTS.with(|d| d.borrow().get(url.as_str()).cloned());
        if let Some(dest) = known {
            return Ok(dest);
        }
        let dest = Self::of(url)?;
        DESTS.with(|d| {
            let mut d = d.borrow_mut();
            if d.len() >= MAX_DESTS {
                d.clear();
            }
            d.insert(url.as_str().into(), dest.clone());
        });
        Ok(dest)
    }
}

/// Sends a POST (see [`eligible`]) on one of this thread's connections to its authority.
pub async fn send(
    url: &Url,
    mut headers: HeaderMap,
    body: Vec<u8>,
    connect_timeout: Duration,
) -> Result<http::Response<Incoming>, H1Error> {
    let dest = Dest::cached(url)?;
    headers.entry(HOST).or_insert(dest.host);
    let mut req = http::Request::new(Once::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = dest.path;
    *req.headers_mut() = headers;
    let authority = dest.authority;
    let (mut sender, reused) = match take_idle(&authority) {
        Some(s) => (s, true),
        None => (connect(&authority, connect_timeout).await?, false),
    };
    let resp = match sender.try_send_request(req).await {
        Ok(resp) => resp,
        // An idle connection the upstream closed under us, the request never written: once
        // more on a new connection (what reqwest's pool does too).
        Err(mut e) => match (reused, e.take_message()) {
            (true, Some(req)) => {
                sender = connect(&authority, connect_timeout).await?;
                sender.send_request(req).await?
            }
            _ => return Err(e.into_error().into()),
        },
    };
    give_back(authority, sender);
    Ok(resp)
}

/// A request body that is all there in one piece.
pub struct Once(Option<Bytes>);

impl Once {
    fn new(body: Vec<u8>) -> Self {
        Self((!body.is_empty()).then(|| Bytes::from(body)))
    }
}

impl Body for Once {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// A ready idle connection to `authority`, dropping closed ones on the way.
fn take_idle(authority: &str) -> Option<SendRequest<Once>> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(authority)?;
        list.retain(|s| !s.is_closed());
        // The others are still reading their last response body: kept for later.
        let ready = list.iter().rposition(SendRequest::is_ready)?;
        Some(list.swap_remove(ready))
    })
}

fn give_back(authority: Arc<str>, sender: SendRequest<Once>) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        match idle.get_mut(&*authority) {
            Some(list) if list.len() >= MAX_IDLE => {}
            Some(list) => list.push(sender),
            None => {
                idle.insert(authority, vec![sender]);
            }
        }
    });
}

async fn connect(authority: &str, timeout: Duration) -> Result<SendRequest<Once>, H1Error> {
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| H1Error::ConnectTimeout(timeout))?
        .map_err(H1Error::Connect)?;
    tcp.set_nodelay(true).map_err(H1Error::Connect)?;
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    // On this thread's runtime: the connection never wakes another thread.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection closed");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A raw upstream: answers each request on a connection with `reply`; closes a connection
    /// after `per_conn` answers. Counts connections.
    async fn upstream(reply: &'static [u8], per_conn: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/mcp?x=1", listener.local_addr().expect("addr"));
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    for _ in 0..per_conn {
                        let mut got = Vec::new();
                        // Head and the small body arrive together on loopback.
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let head = String::from_utf8_lossy(&got).to_lowercase();
                        assert!(head.starts_with("post /mcp?x=1 http/1.1"), "{head}");
                        assert!(head.contains("\r\nhost: 127.0.0.1:"), "{head}");
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, conns)
    }

    async fn post(url: &str) -> Result<http::Response<Incoming>, H1Error> {
        let url = Url::parse(url).expect("url");
        send(
            &url,
            HeaderMap::new(),
            b"{}".to_vec(),
            Duration::from_secs(2),
        )
        .await
    }

    async fn body(resp: http::Response<Incoming>) -> Result<Bytes, UpstreamError> {
        Reply::Direct(resp).bytes().await
    }

    const OK: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

    fn rt() -> tokio::runtime::Runtime {
        let _ = rustls::crypto::ring::default_provider().install_default();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn sequential_posts_reuse_one_connection() {
        rt().block_on(async {
            let (url, conns) = upstream(OK, 100).await;
            for _ in 0..5 {
                let resp = post(&url).await.expect("send");
                assert_eq!(resp.status(), 200);
                assert_eq!(body(resp).await.expect("body"), "{}");
                tokio::task::yield_now().await;
            }
            assert_eq!(conns.load(Ordering::SeqCst), 1);
        });
    }

    #[test]
    fn an_idle_connection_the_upstream_closed_is_replaced() {
        rt().block_on(async {
            let (url, conns) = upstream(OK, 1).await;
            for _ in 0..3 {
                let resp = post(&url).await.expect("send");
                assert_eq!(body(resp).await.expect("body"), "{}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(conns.load(Ordering::SeqCst), 3);
        });
    }

    #[test]
    fn a_hostile_upstream_gets_errors_not_panics() {
        rt().block_on(async {
            // Garbage instead of HTTP, and a body shorter than its content-length.
            let (garbage, _) = upstream(b"SSH-2.0-nope\r\n\r\n", 1).await;
            let e = post(&garbage).await;
            assert!(matches!(e, Err(H1Error::Http(_))), "{e:?}");
            let short: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{}";
            let (url, _) = upstream(short, 1).await;
            let resp = post(&url).await.expect("head");
            assert!(body(resp).await.is_err(), "a truncated body is an error");
            // Nobody listening: a connect error.
            let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}/", closed.local_addr().expect("addr"));
            drop(closed);
            let e = post(&url).await;
            assert!(matches!(e, Err(H1Error::Connect(_))), "{e:?}");
        });
    }

    #[test]
    fn only_plain_http_urls_take_this_path() {
        let url = |u: &str| Url::parse(u).expect("url");
        assert!(eligible(&url("http://127.0.0.1:1/mcp")));
        assert!(!eligible(&url("https://127.0.0.1:1/mcp")));
    }

    #[test]
    fn a_body_in_pieces_is_read_whole() {
        rt().block_on(async {
            let chunked: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                1\r\n{\r\n3\r\n\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
            let (url, _) = upstream(chunked, 1).await;
            let resp = post(&url).await.expect("head");
            assert_eq!(body(resp).await.expect("body"), r#"{"a":1}"#);
        });
    }
}
