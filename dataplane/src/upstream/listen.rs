//! An upstream session's own GET stream: what a Streamable HTTP upstream says outside any
//! request (list_changed, resource updates, its requests), handed to the session it belongs to.
//! A stateless (2026-07-28) upstream has no GET stream: its `subscriptions/listen` stream stands in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::HeaderValue;
use reflow_crds::snapshot::CompiledTarget;
use reqwest::Url;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tracing::debug;

use super::events::EventParser;
use super::upcall::{self, Inbound, Unsolicited};
use super::{
    InjectedHeaders, MAX_REPLY_BYTES, PROTOCOL_HEADER, Route, SESSION_HEADER, UpstreamClient,
    http_responder, is_event_stream, url_of,
};
use crate::session::UpstreamState;

/// Where the stream's messages go.
pub type Deliver = Arc<dyn Fn(Inbound) + Send + Sync>;

/// The running stream; it stops when this is dropped (with the last clone of its link).
pub struct Listener {
    task: AbortHandle,
    /// Fires once the first attempt to open the stream has an answer (stream, refusal, error).
    opened: Option<oneshot::Receiver<()>>,
}

impl Listener {
    /// Waits (at most `limit`) until the upstream has answered the first open. An upstream may
    /// send requests on this stream at any time after `initialize`; one that has no stream
    /// open for them (the TypeScript SDK) drops them, so the link's first call must not race it.
    pub async fn opened(&mut self, limit: Duration) {
        if let Some(rx) = self.opened.take()
            && tokio::time::timeout(limit, rx).await.is_err()
        {
            debug!(
                limit_ms = limit.as_millis() as u64,
                "the upstream stream did not open in time; going on without it"
            );
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UpstreamClient {
    /// Opens the GET stream of an initialized upstream session (or the `subscriptions/listen`
    /// stream of a stateless upstream), in the background. `None` without a session id or a
    /// runtime. An upstream that offers no stream (405, not SSE) just ends it.
    pub fn listen(
        &self,
        target: &CompiledTarget,
        headers: &InjectedHeaders,
        state: &UpstreamState,
        deliver: Deliver,
    ) -> Option<Listener> {
        if state.session_id.is_none() && !super::stateless::is_stateless(state) {
            return None;
        }
        let filter = json!({
            "toolsListChanged": true,
            "promptsListChanged": true,
            "resourcesListChanged": true,
        });
        self.spawn_listener(target, headers, state, filter, deliver)
    }

    /// A `subscriptions/listen` stream of a stateless upstream for updates of `uris` (what
    /// `resources/subscribe` is in the older revisions); `None` for any other upstream.
    pub fn listen_resources(
        &self,
        target: &CompiledTarget,
        headers: &InjectedHeaders,
        state: &UpstreamState,
        uris: &[&str],
        deliver: Deliver,
    ) -> Option<Listener> {
        if !super::stateless::is_stateless(state) {
            return None;
        }
        let filter = json!({"resourceSubscriptions": uris});
        self.spawn_listener(target, headers, state, filter, deliver)
    }

    fn spawn_listener(
        &self,
        target: &CompiledTarget,
        headers: &InjectedHeaders,
        state: &UpstreamState,
        filter: Value,
        deliver: Deliver,
    ) -> Option<Listener> {
        let url = self.parsed(url_of(target).ok()?).ok()?;
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let (http, headers, state) = (self.http.clone(), headers.clone(), state.clone());
        let (tx, rx) = oneshot::channel();
        let task =
            rt.spawn(async move { run(http, url, headers, state, filter, deliver, tx).await });
        Some(Listener {
            task: task.abort_handle(),
            opened: Some(rx),
        })
    }
}

/// First wait before reopening a stream that ended; doubled per failure up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A stream that lived this long starts the backoff over when it ends.
const HEALTHY: Duration = Duration::from_secs(30);

/// Keeps the stream open for as long as the link lives (the task is aborted with it): a stream
/// that ends or drops is reopened with backoff; an upstream that answers without a stream
/// (405, 404 for a session it forgot, not SSE) is left alone.
async fn run(
    http: reqwest::Client,
    url: Url,
    headers: InjectedHeaders,
    state: UpstreamState,
    filter: Value,
    deliver: Deliver,
    first_open: oneshot::Sender<()>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut first_open = Some(first_open);
    loop {
        let opened = Instant::now();
        let attempt = open(&http, &url, &headers, &state, &filter).await;
        if let Some(tx) = first_open.take() {
            let _ = tx.send(());
        }
        match attempt {
            Opened::Stream(resp) => {
                read(&http, &url, &headers, &state, resp, &deliver).await;
                if opened.elapsed() >= HEALTHY {
                    backoff = MIN_BACKOFF;
                }
            }
            Opened::Refused => return,
            Opened::Unreachable => {}
        }
        debug!(
            wait_ms = backoff.as_millis() as u64,
            "reopening the upstream stream"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

enum Opened {
    Stream(reqwest::Response),
    /// The upstream answered, without a stream: it has none for us.
    Refused,
    /// No answer (connection failed): worth another try.
    Unreachable,
}

async fn open(
    http: &reqwest::Client,
    url: &Url,
    headers: &InjectedHeaders,
    state: &UpstreamState,
    filter: &Value,
) -> Opened {
    let mut req = if super::stateless::is_stateless(state) {
        let body = json!({
            "jsonrpc": "2.0",
            "id": "reflow-listen",
            "method": "subscriptions/listen",
            "params": crate::era::with_request_meta(Some(&json!({"notifications": filter})), &json!({})),
        });
        let req = super::post_builder(http, url, headers, state, body.to_string().into_bytes());
        super::stateless::mirror_headers(req, "subscriptions/listen", None)
    } else {
        http.get(url.clone()).headers(headers.0.clone()).header(
            http::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        )
    };
    if let Some(sid) = &state.session_id {
        req = req.header(SESSION_HEADER, sid.as_str());
    }
    if let Some(v) = &state.protocol_version {
        req = req.header(PROTOCOL_HEADER, v.as_str());
    }
    match req.send().await {
        Ok(r) if r.status().is_success() && is_event_stream(r.headers()) => Opened::Stream(r),
        Ok(r) => {
            debug!(
                status = r.status().as_u16(),
                "the upstream offers no stream"
            );
            Opened::Refused
        }
        Err(e) => {
            debug!(error = %e.without_url(), "the upstream stream could not be opened");
            Opened::Unreachable
        }
    }
}

/// Hands every message of one open stream to `deliver`, until it ends.
async fn read(
    http: &reqwest::Client,
    url: &Url,
    headers: &InjectedHeaders,
    state: &UpstreamState,
    resp: reqwest::Response,
    deliver: &Deliver,
) {
    let route = Route {
        url,
        headers,
        state,
    };
    let mut parser = EventParser::default();
    let mut body = resp.bytes_stream();
    while let Some(Ok(chunk)) = body.next().await {
        if parser.buffered() + chunk.len() > MAX_REPLY_BYTES {
            debug!("upstream stream event too large; stream dropped");
            return;
        }
        for event in parser.feed(&chunk) {
            let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            match upcall::classify(msg) {
                // The acknowledgement of our own `subscriptions/listen`: nothing for the client.
                Some(Unsolicited::Notification(n))
                    if n.get("method").and_then(Value::as_str)
                        == Some("notifications/subscriptions/acknowledged") => {}
                Some(Unsolicited::Notification(n)) => deliver(Inbound::Notification(n)),
                Some(Unsolicited::Request(id, r)) => {
                    deliver(Inbound::Request(r, http_responder(http, &route, id)));
                }
                None => debug!("ignoring a reply on the upstream stream"),
            }
        }
    }
    debug!("upstream stream ended");
}
