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
