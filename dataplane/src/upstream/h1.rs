//! hyper's HTTP/1 client directly, for plain-HTTP upstream POSTs on a thread-per-core serving
//! thread: this thread's own idle connections (`SendRequest`s, no lock, no connector stack),
//! each driven by a task on this thread. Everything else (TLS, SSE resumes, redirects policy,
//! threads without a core slot) stays on reqwest.
//!
//! The request is built by reqwest as before (same headers, same body) and the answer is
//! handed back as a `reqwest::Response`, so the reply handling is shared, not duplicated.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use http::header::{HOST, HeaderValue};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// Idle connections kept per upstream authority on one thread; more are closed when returned.
const MAX_IDLE: usize = 64;

thread_local! {
    static IDLE: RefCell<HashMap<String, Vec<SendRequest<reqwest::Body>>>> =
        RefCell::new(HashMap::new());
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

/// Sends `req`: through [`send`] on a thread that serves with `h1` on (`pools::direct_h1`) and
/// for a plain-HTTP URL, else through the thread's reqwest pool as always.
pub(super) async fn send_via(
    pools: &super::pools::Pools,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, super::UpstreamError> {
    if !super::pools::direct_h1() {
        return req.send().await.map_err(super::map_reqwest);
    }
    let req = req.build().map_err(super::map_reqwest)?;
    if !eligible(&req) {
        return pools.execute(req).await.map_err(super::map_reqwest);
    }
    send(req, pools.connect_timeout())
        .await
        .map_err(|e| match e {
            H1Error::Connect(_) | H1Error::ConnectTimeout(_) => super::UpstreamError::Connect,
            other => super::UpstreamError::Client(other.to_string()),
        })
}

/// Whether `req` can take this path (plain `http://` with a host).
pub fn eligible(req: &reqwest::Request) -> bool {
    req.url().scheme() == "http" && req.url().host_str().is_some()
}

/// Sends `req` (see [`eligible`]) on one of this thread's connections to its authority.
pub async fn send(
    req: reqwest::Request,
    connect_timeout: Duration,
) -> Result<reqwest::Response, H1Error> {
    let url = req.url();
    let authority = match (url.host_str(), url.port_or_known_default()) {
        (Some(h), Some(p)) if h.contains(':') => format!("[{h}]:{p}"),
        (Some(h), Some(p)) => format!("{h}:{p}"),
        _ => return Err(H1Error::Request("the URL has no host".into())),
    };
    let origin_form = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let host = HeaderValue::from_str(&authority).map_err(|e| H1Error::Request(e.to_string()))?;
    let mut req: http::Request<reqwest::Body> = req
        .try_into()
        .map_err(|e: reqwest::Error| H1Error::Request(e.to_string()))?;
    *req.uri_mut() = origin_form
        .parse()
        .map_err(|e: http::uri::InvalidUri| H1Error::Request(e.to_string()))?;
    req.headers_mut().entry(HOST).or_insert(host);
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
    Ok(reqwest::Response::from(resp.map(reqwest::Body::wrap)))
}

/// A ready idle connection to `authority`, dropping closed ones on the way.
fn take_idle(authority: &str) -> Option<SendRequest<reqwest::Body>> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(authority)?;
        list.retain(|s| !s.is_closed());
        // The others are still reading their last response body: kept for later.
        let ready = list.iter().rposition(SendRequest::is_ready)?;
        Some(list.swap_remove(ready))
    })
}

fn give_back(authority: String, sender: SendRequest<reqwest::Body>) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(authority).or_default();
        if list.len() < MAX_IDLE {
            list.push(sender);
        }
    });
}

async fn connect(
    authority: &str,
    timeout: Duration,
) -> Result<SendRequest<reqwest::Body>, H1Error> {
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
    use std::sync::Arc;
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

    fn post(url: &str) -> reqwest::Request {
        reqwest::Client::new()
            .post(url)
            .body("{}")
            .build()
            .expect("request")
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
                let resp = send(post(&url), Duration::from_secs(2))
                    .await
                    .expect("send");
                assert_eq!(resp.status(), 200);
                assert_eq!(resp.text().await.expect("body"), "{}");
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
                let resp = send(post(&url), Duration::from_secs(2))
                    .await
                    .expect("send");
                assert_eq!(resp.text().await.expect("body"), "{}");
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
            let e = send(post(&garbage), Duration::from_secs(2)).await;
            assert!(matches!(e, Err(H1Error::Http(_))), "{e:?}");
            let short: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{}";
            let (url, _) = upstream(short, 1).await;
            let resp = send(post(&url), Duration::from_secs(2))
                .await
                .expect("head");
            assert!(resp.bytes().await.is_err(), "a truncated body is an error");
            // Nobody listening: a connect error.
            let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}/", closed.local_addr().expect("addr"));
            drop(closed);
            let e = send(post(&url), Duration::from_secs(2)).await;
            assert!(matches!(e, Err(H1Error::Connect(_))), "{e:?}");
        });
    }

    #[test]
    fn only_plain_http_urls_take_this_path() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        assert!(eligible(&post("http://127.0.0.1:1/mcp")));
        assert!(!eligible(&post("https://127.0.0.1:1/mcp")));
    }
}
