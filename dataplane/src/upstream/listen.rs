//! An upstream session's own GET stream: what a Streamable HTTP upstream says outside any
//! request (list_changed, resource updates, its requests), handed to the session it belongs to.
//! A stateless (2026-07-28) upstream has no GET stream: its `subscriptions/listen` stream stands in.

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
use super::to_sessions::Deliver;
use super::upcall::{self, Inbound, Unsolicited};
use super::{
    InjectedHeaders, MAX_REPLY_BYTES, PROTOCOL_HEADER, Route, SESSION_HEADER, UpstreamClient,
    http_responder, is_event_stream, url_of,
};
use crate::session::UpstreamState;

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

/// First wait before reopening a stream after a failure; doubled per failure up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A stream that lived this long (or said anything) was no failure.
const LIVED: Duration = Duration::from_secs(1);
/// Opens of one stream are at least this far apart, so an upstream that says one thing and
/// hangs up, again and again, is asked at most ten times a second (what it sends meanwhile is
/// what `Last-Event-ID` is for).
const MIN_GAP: Duration = Duration::from_millis(100);
/// The longest event id remembered for `Last-Event-ID` (a longer one is not sent back).
const MAX_EVENT_ID: usize = 1024;

/// What the stream's reopening carries over from the streams before it.
#[derive(Default)]
struct Resume {
    /// The last event id the upstream gave on this session's stream: sent as `Last-Event-ID`
    /// so an upstream with an event store replays what it sent while no stream was open.
    last_id: Option<String>,
    /// The upstream's own `retry:` (milliseconds) for reconnecting.
    retry_ms: Option<u64>,
}

/// Keeps the stream open for as long as the link lives (the task is aborted with it).
///
/// An upstream may drop what it sends while no stream is open (the TypeScript SDK does, for
/// requests without a related request id), so a stream that ends after it was opened is
/// reopened at once (or after the upstream's own `retry`; never within 100 ms of its last
/// opening), with the last event id it gave;
/// only failures wait a backoff (1 s doubling to 30 s): a connection that fails, or a second
/// stream in a row that ends in under a second without a single event. An upstream that answers without a stream
/// (405, 404 for a session it forgot, not SSE) is left alone; one that refuses a resumption
/// is asked once more without `Last-Event-ID`.
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
    let mut resume = Resume::default();
    let mut failed_before = false;
    loop {
        let opened = Instant::now();
        let last_id = resume.last_id.clone();
        let attempt = open(&http, &url, &headers, &state, &filter, last_id.as_deref()).await;
        if let Some(tx) = first_open.take() {
            let _ = tx.send(());
        }
        let wait = match attempt {
            Opened::Stream(resp) => {
                let events = read(&http, &url, &headers, &state, resp, &deliver, &mut resume).await;
                // A stream that said nothing and ended at once is a failure; twice in a row, the
                // upstream waits a backoff (an upstream that accepts and hangs up is no hot loop).
                let failed = events == 0 && opened.elapsed() < LIVED;
                let wait = if failed && failed_before {
                    next_backoff(&mut backoff)
                } else {
                    if !failed {
                        backoff = MIN_BACKOFF;
                    }
                    resume
                        .retry_ms
                        .map_or(Duration::ZERO, Duration::from_millis)
                        .min(MAX_BACKOFF)
                        .max(MIN_GAP.saturating_sub(opened.elapsed()))
                };
                failed_before = failed;
                wait
            }
            Opened::Refused if last_id.is_some() => {
                resume.last_id = None;
                Duration::ZERO
            }
            Opened::Refused => return,
            Opened::Unreachable => {
                failed_before = true;
                next_backoff(&mut backoff)
            }
        };
        debug!(
            wait_ms = wait.as_millis() as u64,
            "reopening the upstream stream"
        );
        tokio::time::sleep(wait).await;
    }
}

/// The wait after a failure, doubling the next one.
fn next_backoff(backoff: &mut Duration) -> Duration {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    wait
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
    last_id: Option<&str>,
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
    // Resumption is a GET stream's (a stateless upstream's listen stream is a new POST).
    if let Some(id) = last_id.filter(|_| !super::stateless::is_stateless(state))
        && let Ok(id) = HeaderValue::from_str(id)
    {
        req = req.header("last-event-id", id);
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

/// Hands every message of one open stream to `deliver`, until it ends; what a reopening
/// needs (the last event id, the upstream's retry) is kept in `resume`. Returns how many
/// events the stream carried.
async fn read(
    http: &reqwest::Client,
    url: &Url,
    headers: &InjectedHeaders,
    state: &UpstreamState,
    resp: reqwest::Response,
    deliver: &Deliver,
    resume: &mut Resume,
) -> usize {
    let route = Route {
        url,
        headers,
        state,
    };
    let mut parser = EventParser::default();
    let mut body = resp.bytes_stream();
    let mut count = 0;
    while let Some(Ok(chunk)) = body.next().await {
        if parser.buffered() + chunk.len() > MAX_REPLY_BYTES {
            debug!("upstream stream event too large; stream dropped");
            return count;
        }
        let events = parser.feed(&chunk);
        // An id that cannot go back as a header (too long, unprintable) is not remembered.
        if let Some(id) = parser
            .last_id()
            .filter(|id| id.len() <= MAX_EVENT_ID && HeaderValue::from_str(id).is_ok())
        {
            resume.last_id = Some(id.to_owned());
        }
        resume.retry_ms = parser.retry_ms().or(resume.retry_ms);
        count += events.len();
        for event in events {
            let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            match upcall::classify(msg) {
                // The acknowledgement of our own `subscriptions/listen`: nothing for the client.
                Some(Unsolicited::Notification(n))
                    if n.get("method").and_then(Value::as_str)
                        == Some("notifications/subscriptions/acknowledged") => {}
                Some(Unsolicited::Notification(n)) => deliver.send(Inbound::Notification(n)),
                Some(Unsolicited::Request(id, r)) => {
                    deliver.send(Inbound::Request(r, http_responder(http, &route, id)));
                }
                None => debug!("ignoring a reply on the upstream stream"),
            }
        }
    }
    debug!(events = count, "upstream stream ended");
    count
}
