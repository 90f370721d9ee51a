//! Legacy HTTP+SSE upstream transport (MCP 2024-11-05): one `GET` event stream per link, whose
//! `endpoint` event names the same-origin URL requests are POSTed to; replies come back as events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::HeaderMap;
use reqwest::Url;
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use super::events::EventParser;
use super::upcall::{self, CallHooks, Inbound, Responder, Sink, Unsolicited};
use super::{MAX_REPLY_BYTES, Outgoing, UpstreamError, map_reqwest};

#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("the upstream answered the SSE GET with {0:?} instead of text/event-stream")]
    NotAStream(String),
    #[error("the upstream event stream announced no endpoint")]
    NoEndpoint,
    #[error("the upstream announced an invalid endpoint")]
    BadEndpoint,
    #[error("the upstream announced an endpoint on another origin ({0}); refused")]
    ForeignEndpoint(String),
    #[error("the upstream event stream closed before the reply arrived")]
    StreamClosed,
}

impl SseError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotAStream(_) => "sse_not_stream",
            Self::NoEndpoint => "sse_no_endpoint",
            Self::BadEndpoint => "sse_bad_endpoint",
            Self::ForeignEndpoint(_) => "sse_foreign_endpoint",
            Self::StreamClosed => "sse_stream_closed",
        }
    }
}

/// A live legacy connection. Clones share it; the stream reader stops when the last clone drops
/// or on `shutdown`.
#[derive(Clone)]
pub(crate) struct SseLink(Arc<Conn>);

struct Conn {
    endpoint: Url,
    shared: Arc<Shared>,
    reader: AbortOnDrop,
    next_id: AtomicU64,
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Requests awaiting their reply event, by our (remapped) id; `closed` once the stream ended.
/// `post` is how to answer the upstream's own requests (known once the endpoint is).
#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    post: OnceLock<(reqwest::Client, Url, HeaderMap)>,
}

/// One request waiting for its reply event, and where the stream's other messages for it go.
struct Waiting {
    tx: oneshot::Sender<Map<String, Value>>,
    sink: Option<Sink>,
    progress: Option<Value>,
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, Waiting>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `None` when the stream is already gone (nothing was sent, so a retry is safe).
    fn register(
        &self,
        id: u64,
        sink: Option<Sink>,
        progress: Option<Value>,
    ) -> Option<oneshot::Receiver<Map<String, Value>>> {
        let mut p = self.lock();
        if p.closed {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        p.waiting.insert(id, Waiting { tx, sink, progress });
        Some(rx)
    }

    fn unregister(&self, id: u64) {
        self.lock().waiting.remove(&id);
    }

    /// Fails every waiting request (their senders drop) and refuses new ones.
    fn close(&self) {
        let mut p = self.lock();
        p.closed = true;
        p.waiting.clear();
    }

    fn deliver(&self, data: &str) {
        let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(data) else {
            debug!("ignoring a non-object message on the upstream event stream");
            return;
        };
        let is_reply = msg.contains_key("result") || msg.contains_key("error");
        if is_reply {
            let Some(id) = msg.get("id").and_then(Value::as_u64) else {
                debug!("ignoring a reply without a usable id on the upstream event stream");
                return;
            };
            if let Some(w) = self.lock().waiting.remove(&id) {
                let _ = w.tx.send(msg);
            }
            return;
        }
        // The stream belongs to one gateway session: a progress notification goes to the call
        // with its token, anything else to the newest call in flight.
        let sink = {
            let p = self.lock();
            let token = (msg.get("method").and_then(Value::as_str)
                == Some("notifications/progress"))
            .then(|| msg.get("params").and_then(|p| p.get("progressToken")))
            .flatten();
            match token {
                Some(t) => p
                    .waiting
                    .values()
                    .find(|w| w.progress.as_ref() == Some(t))
                    .and_then(|w| w.sink.clone()),
                None => p
                    .waiting
                    .iter()
                    .max_by_key(|(id, _)| **id)
                    .and_then(|(_, w)| w.sink.clone()),
            }
        };
        let inbound = match upcall::classify(msg) {
            Some(Unsolicited::Notification(n)) => Inbound::Notification(n),
            Some(Unsolicited::Request(id, r)) => Inbound::Request(r, self.responder(id)),
            None => return,
        };
        match sink {
            Some(s) => s.deliver(inbound),
            None => upcall::unroutable(inbound),
        }
    }

    /// Answers go to the endpoint, like our requests.
    fn responder(&self, id: Value) -> Responder {
        let post = self.post.get().cloned();
        Responder::new(
            id,
            Box::new(move |body| {
                Box::pin(async move {
                    let Some((http, endpoint, headers)) = post else {
                        return Err(UpstreamError::Sse(SseError::NoEndpoint));
                    };
                    post_to(&http, &endpoint, &headers, body).await
                })
            }),
        )
    }
}

/// Removes a pending entry however the request ends (reply, error, timeout or cancellation).
struct Unregister<'a>(&'a Shared, u64);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.unregister(self.1);
    }
}

impl SseLink {
    /// Opens the stream and waits (up to `timeout`) for a same-origin `endpoint` event.
    pub(crate) async fn open(
        http: &reqwest::Client,
        url: &str,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<Self, UpstreamError> {
        let base = Url::parse(url)
            .map_err(|e| UpstreamError::Client(format!("invalid upstream url: {e}")))?;
        let work = async {
            // No request timeout here: it would also bound the stream's lifetime.
            let resp = http
                .get(base.clone())
                .headers(headers.clone())
                .header(http::header::ACCEPT, "text/event-stream")
                .send()
                .await
                .map_err(map_reqwest)?;
            if !resp.status().is_success() {
                return Err(UpstreamError::Status(resp.status().as_u16()));
            }
            let content_type = resp
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            if !content_type.starts_with("text/event-stream") {
                return Err(SseError::NotAStream(content_type).into());
            }
            let shared = Arc::new(Shared::default());
            let (endpoint_tx, endpoint_rx) = oneshot::channel();
            let task = tokio::spawn(read_stream(
                resp.bytes_stream(),
                shared.clone(),
                endpoint_tx,
            ));
            // Dropped on any failure below, which stops the reader.
            let reader = AbortOnDrop(task.abort_handle());
            let announced = endpoint_rx.await.map_err(|_| SseError::NoEndpoint)?;
            let endpoint = same_origin_endpoint(&base, &announced)?;
            debug!(endpoint = endpoint.path(), "upstream event stream open");
            let _ = shared
                .post
                .set((http.clone(), endpoint.clone(), headers.clone()));
            Ok(Self(Arc::new(Conn {
                endpoint,
                shared,
                reader,
                next_id: AtomicU64::new(1),
            })))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))?
    }

    /// False once the stream has ended (the link must be re-established).
    pub(crate) fn is_alive(&self) -> bool {
        !self.0.shared.lock().closed
    }

    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Stops the reader and fails whatever is still waiting.
    pub(crate) fn shutdown(&self) {
        self.0.reader.0.abort();
        self.0.shared.close();
    }

    /// POSTs one request and waits for its reply event. A 404 from the endpoint, or a stream
    /// found closed before sending, is `SessionExpired` (nothing was processed: retry is safe).
    pub(crate) async fn request(
        &self,
        http: &reqwest::Client,
        headers: &HeaderMap,
        method: &str,
        params: Option<&Value>,
        timeout: Duration,
        hooks: &CallHooks,
    ) -> Result<Map<String, Value>, UpstreamError> {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = Outgoing::request(id, method, params).to_vec()?;
        let progress = params
            .and_then(|p| p.pointer("/_meta/progressToken"))
            .cloned();
        let rx = self
            .0
            .shared
            .register(id, hooks.sink.clone(), progress)
            .ok_or(UpstreamError::SessionExpired)?;
        let _pending = Unregister(&self.0.shared, id);
        // One timer for the whole exchange (POST and reply event).
        let work = async {
            self.post(http, headers, msg).await?;
            rx.await
                .map_err(|_| UpstreamError::Sse(SseError::StreamClosed))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))?
    }

    /// POSTs a notification (no reply expected).
    pub(crate) async fn notify(
        &self,
        http: &reqwest::Client,
        headers: &HeaderMap,
        method: &str,
        timeout: Duration,
    ) -> Result<(), UpstreamError> {
        let msg = Outgoing::notification(method).to_vec()?;
        tokio::time::timeout(timeout, self.post(http, headers, msg))
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))?
    }

    async fn post(
        &self,
        http: &reqwest::Client,
        headers: &HeaderMap,
        body: Vec<u8>,
    ) -> Result<(), UpstreamError> {
        post_to(http, &self.0.endpoint, headers, body).await
    }
}

/// POSTs one message to the endpoint; a 404 means the upstream forgot the stream.
async fn post_to(
    http: &reqwest::Client,
    endpoint: &Url,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> Result<(), UpstreamError> {
    let resp = http
        .post(endpoint.clone())
        .headers(headers.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(map_reqwest)?;
    match resp.status() {
        s if s == http::StatusCode::NOT_FOUND => Err(UpstreamError::SessionExpired),
        s if s.is_success() => Ok(()),
        s => Err(UpstreamError::Status(s.as_u16())),
    }
}

/// Resolves the announced endpoint against the stream URL; another origin is refused so a
/// server cannot steer our requests (and the injected credentials) elsewhere.
fn same_origin_endpoint(base: &Url, announced: &str) -> Result<Url, SseError> {
    let endpoint = base
        .join(announced.trim())
        .map_err(|_| SseError::BadEndpoint)?;
    if endpoint.origin() != base.origin() {
        return Err(SseError::ForeignEndpoint(
            endpoint.origin().ascii_serialization(),
        ));
    }
    Ok(endpoint)
}

/// Reads the event stream: the first `endpoint` event goes to `endpoint`, `message` events are
/// matched to waiting requests. When the stream ends, everything waiting fails.
async fn read_stream(
    mut body: impl Stream<Item = reqwest::Result<Bytes>> + Unpin,
    shared: Arc<Shared>,
    endpoint: oneshot::Sender<String>,
) {
    let mut endpoint = Some(endpoint);
    let mut parser = EventParser::default();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            debug!("upstream event stream failed");
            break;
        };
        if parser.buffered() + chunk.len() > MAX_REPLY_BYTES {
            warn!("upstream event too large; dropping the stream");
            break;
        }
        for event in parser.feed(&chunk) {
            match event.name.as_str() {
                "endpoint" => {
                    if let Some(tx) = endpoint.take() {
                        let _ = tx.send(event.data);
                    }
                }
                "message" => shared.deliver(&event.data),
                other => debug!(event = other, "ignoring an upstream event"),
            }
        }
    }
    debug!("upstream event stream ended");
    shared.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_resolves_relative_and_refuses_other_origins() {
        let base = Url::parse("http://127.0.0.1:8080/sse").unwrap();
        let rel = same_origin_endpoint(&base, "/messages?sessionId=a").unwrap();
        assert_eq!(rel.as_str(), "http://127.0.0.1:8080/messages?sessionId=a");
        let abs = same_origin_endpoint(&base, "http://127.0.0.1:8080/m").unwrap();
        assert_eq!(abs.path(), "/m");
        for foreign in [
            "http://127.0.0.1:8081/m",
            "https://127.0.0.1:8080/m",
            "http://evil.example/m",
            "//evil.example/m",
        ] {
            assert!(
                matches!(
                    same_origin_endpoint(&base, foreign),
                    Err(SseError::ForeignEndpoint(_))
                ),
                "{foreign}"
            );
        }
    }

    #[tokio::test]
    async fn replies_reach_their_request_and_closing_fails_the_rest() {
        let shared = Shared::default();
        let a = shared.register(1, None, None).unwrap();
        let b = shared.register(2, None, None).unwrap();
        shared.deliver(r#"{"jsonrpc":"2.0","method":"notifications/message"}"#);
        shared.deliver(r#"{"jsonrpc":"2.0","id":1,"result":{"ok":true}}"#);
        shared.deliver("not json");
        assert_eq!(a.await.unwrap()["result"]["ok"], true);
        shared.close();
        assert!(b.await.is_err());
        assert!(shared.register(3, None, None).is_none());
    }
}
