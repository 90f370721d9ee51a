//! The MCP client side. `Upstreams` (`upstreams.rs`, the router's one way in) resolves a `Route`
//! per call (`route.rs`: STDIO child, instance pod or the session's link; one `send` for each)
//! and keeps the one per-(session, Target) link cache (`links.rs`). `UpstreamClient` (here)
//! speaks Streamable HTTP; legacy HTTP+SSE is in `sse`, `auto` detection in `auto`.

mod auto;
mod caller;
mod error;
pub(crate) mod events;
mod expired;
mod h1;
pub(crate) mod handshake;
pub mod instance;
mod instance_route;
mod link;
mod links;
mod listen;
pub mod pools;
pub mod route;
mod sse;
pub mod stateless;
pub mod stdio;
mod to_sessions;
mod upcall;
mod upstreams;

pub use caller::Caller;
pub use error::UpstreamError;
pub use instance_route::InstanceRoute;
pub use link::{Link, Transport};
pub use links::SessionLinks;
pub use listen::Listener;
pub use route::{ChildRoute, LinkRoute};
pub use sse::SseError;
pub use stdio::{StdioConfig, StdioError};
pub use to_sessions::{Deliver, ToSessions, Unprompted};
pub use upcall::{CallHooks, Cancel, Inbound, Responder, Sink, Upcall, unroutable};
pub use upstreams::Upstreams;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use reflow_crds::SealingKey;
use reflow_crds::snapshot::{CompiledTarget, ResolvedCredentials, Upstream};
use reqwest::Url;
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tracing::{debug, instrument};

use crate::jsonrpc::UpstreamReply;
use crate::session::UpstreamState;
use events::EventParser;

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const PROTOCOL_HEADER: &str = "mcp-protocol-version";
/// Largest upstream reply we buffer (JSON body or one SSE stream up to the matching message).
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// Largest number of parsed upstream URLs kept; beyond it the cache starts over.
const MAX_URLS: usize = 4096;

/// One outgoing JSON-RPC message, serialized straight from borrowed parts (no `Value` copy).
#[derive(Serialize)]
pub(crate) struct Outgoing<'a> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a Value>,
}

impl<'a> Outgoing<'a> {
    pub(crate) fn request(id: u64, method: &'a str, params: Option<&'a Value>) -> Self {
        Self {
            jsonrpc: "2.0",
            id: Some(id),
            method,
            params,
        }
    }

    pub(crate) fn notification(method: &'a str) -> Self {
        Self {
            jsonrpc: "2.0",
            id: None,
            method,
            params: None,
        }
    }

    pub(crate) fn to_vec(&self) -> Result<Vec<u8>, UpstreamError> {
        serde_json::to_vec(self).map_err(|e| UpstreamError::Protocol(e.to_string()))
    }
}

/// Credential headers opened for one call. Values are marked sensitive and `Debug` shows names
/// only, so they never reach a log line.
#[derive(Clone, Default)]
pub struct InjectedHeaders(HeaderMap);

impl InjectedHeaders {
    pub fn open(creds: &ResolvedCredentials, key: &SealingKey) -> Result<Self, UpstreamError> {
        let mut map = HeaderMap::new();
        for entry in creds.headers() {
            let secret = key
                .open(&entry.aad, &entry.value)
                .map_err(|_| UpstreamError::Credential)?;
            let name = HeaderName::from_bytes(entry.name.as_bytes())
                .map_err(|_| UpstreamError::Credential)?;
            let mut value = HeaderValue::from_str(secret.expose_secret())
                .map_err(|_| UpstreamError::Credential)?;
            value.set_sensitive(true);
            map.insert(name, value);
        }
        // Every request these headers go on (Streamable HTTP, legacy SSE) continues the trace.
        reflow_telemetry::propagation::inject_current(&mut map);
        Ok(Self(map))
    }
}

impl InjectedHeaders {
    /// Adds a header the gateway computed (forwarded identity), replacing any of that name.
    pub fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        self.0.insert(name, value);
    }
}

impl fmt::Debug for InjectedHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// What the gateway says about itself when it initializes an upstream session.
#[derive(Debug, Clone)]
pub struct InitParams {
    pub protocol_version: String,
    /// What the gateway declares it can do for the upstream (`sampling`, `elicitation`,
    /// `roots`): what its client declared, since those requests are relayed to that client.
    pub capabilities: Value,
    /// The client speaks the stateless revision: an upstream that does too is used that way.
    pub stateless_client: bool,
}

/// Longest wait before resuming an upstream reply stream, whatever `retry` it asked for.
const MAX_RESUME_WAIT: Duration = Duration::from_secs(5);
/// Resumptions of one reply stream before giving up.
const MAX_RESUMES: u32 = 8;

pub struct UpstreamClient {
    /// Derefs to the calling runtime's pool (`pools`: one per serving core when thread-per-core).
    http: pools::Pools,
    next_id: AtomicU64,
    /// What `auto` targets turned out to speak, per (target, url).
    detected: auto::Detected,
    /// Which upstream URLs serve the stateless revision.
    eras: stateless::Eras,
    /// Upstream URLs parsed once, keyed by their text: a snapshot that changes a target's url
    /// brings a new key, so an entry can never be stale (only unused, until the cache resets).
    urls: Mutex<HashMap<Box<str>, Url>>,
    /// Children of `stdio` targets.
    stdio: Arc<stdio::StdioPool>,
    /// Where what upstreams say outside any call goes (the router receives).
    to_sessions: ToSessions,
}

impl UpstreamClient {
    /// A client whose upstreams' messages outside calls reach nobody (refused or dropped).
    pub fn new(connect_timeout: Duration) -> Result<Self, UpstreamError> {
        Self::with_stdio(
            connect_timeout,
            StdioConfig::default(),
            ToSessions::detached(),
        )
    }

    /// A client with its STDIO pool; what upstreams say outside any call is sent on
    /// `to_sessions`.
    pub fn with_stdio(
        connect_timeout: Duration,
        stdio: StdioConfig,
        to_sessions: ToSessions,
    ) -> Result<Self, UpstreamError> {
        let http =
            pools::Pools::new(connect_timeout).map_err(|e| UpstreamError::Client(e.to_string()))?;
        Ok(Self {
            http,
            next_id: AtomicU64::new(1),
            detected: auto::Detected::default(),
            eras: stateless::Eras::default(),
            urls: Mutex::new(HashMap::new()),
            stdio: stdio::StdioPool::new(stdio, to_sessions.clone()),
            to_sessions,
        })
    }

    /// Where one session's upstream stream sends what it hears (that session, from `target`).
    pub fn deliver_to(&self, session: &str, target: Arc<str>) -> Deliver {
        Deliver::new(self.to_sessions.clone(), session, target)
    }

    /// The STDIO process pool.
    pub fn stdio(&self) -> &Arc<stdio::StdioPool> {
        &self.stdio
    }

    /// `url` parsed (cached; reqwest would otherwise parse it on every request).
    fn parsed(&self, url: &str) -> Result<Url, UpstreamError> {
        let mut urls = self.urls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = urls.get(url) {
            return Ok(u.clone());
        }
        let parsed = Url::parse(url)
            .map_err(|e| UpstreamError::Client(format!("invalid upstream url: {e}")))?;
        if urls.len() >= MAX_URLS {
            urls.clear();
        }
        urls.insert(url.into(), parsed.clone());
        Ok(parsed)
    }

    /// Sends one request, initializing the upstream session first if needed and once more if
    /// the upstream forgot it (HTTP 404, or a 400 about the session: `expired`). `state` is updated in place; the reply keeps the
    /// upstream's `result` or `error`.
    #[instrument(skip_all, fields(target = %target.key(), method))]
    pub async fn call(
        &self,
        target: &CompiledTarget,
        headers: &InjectedHeaders,
        state: &mut UpstreamState,
        init: &InitParams,
        (method, params): (&str, Option<&Value>),
        hooks: &CallHooks,
    ) -> Result<UpstreamReply, UpstreamError> {
        if !state.initialized {
            *state = self.initialize(target, headers, init).await?;
        }
        match self
            .request(target, headers, state, method, params, hooks)
            .await
        {
            Err(UpstreamError::SessionExpired) => {
                debug!("upstream session expired; initializing again");
                *state = self.initialize(target, headers, init).await?;
                self.request(target, headers, state, method, params, hooks)
                    .await
            }
            other => other,
        }
    }

    /// A new link's upstream state: stateless when the client is and the upstream serves that
    /// revision, else an `initialize`d session; an upstream that only serves the stateless
    /// revision (its handshake fails, `server/discover` answers) is used statelessly for any client.
    pub async fn initialize(
        &self,
        target: &CompiledTarget,
        headers: &InjectedHeaders,
        init: &InitParams,
    ) -> Result<UpstreamState, UpstreamError> {
        let url = self.parsed(url_of(target)?)?;
        let timeout = Duration::from_millis(u64::from(target.timeouts.init_ms));
        if init.stateless_client && self.speaks_stateless(&url, headers, timeout).await {
            return Ok(stateless::stateless_state());
        }
        match self.handshake(&url, headers, init, timeout).await {
            Err(e @ UpstreamError::Status(400 | 404 | 405)) => {
                if self.speaks_stateless(&url, headers, timeout).await {
                    Ok(stateless::stateless_state())
                } else {
                    Err(e)
                }
            }
            other => other,
        }
    }

    /// `initialize` + `notifications/initialized`; returns the new upstream session.
    async fn handshake(
        &self,
        url: &Url,
        headers: &InjectedHeaders,
        init: &InitParams,
        timeout: Duration,
    ) -> Result<UpstreamState, UpstreamError> {
        let params = handshake::initialize_params(
            &init.protocol_version,
            &init.capabilities,
            handshake::GATEWAY,
        );
        let blank = UpstreamState::default();
        let (reply, session_id) = self
            .exchange(
                url,
                headers,
                &blank,
                ("initialize", Some(&params)),
                timeout,
                &CallHooks::default(),
            )
            .await?;
        let state = handshake::initialized(&reply.into_object(), session_id)?;
        let note = Outgoing::notification("notifications/initialized").to_vec()?;
        let resp = tokio::time::timeout(timeout, self.post(url, headers, &state, note))
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))??;
        if !resp.status().is_success() {
            return Err(UpstreamError::Status(resp.status().as_u16()));
        }
        Ok(state)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// One request on an initialized session.
    pub async fn request(
        &self,
        target: &CompiledTarget,
        headers: &InjectedHeaders,
        state: &UpstreamState,
        method: &str,
        params: Option<&Value>,
        hooks: &CallHooks,
    ) -> Result<UpstreamReply, UpstreamError> {
        let url = self.parsed(url_of(target)?)?;
        let timeout = Duration::from_millis(u64::from(target.timeouts.request_ms));
        self.exchange(&url, headers, state, (method, params), timeout, hooks)
            .await
            .map(|(reply, _)| reply)
    }

    /// Ends the upstream session (best effort).
    pub async fn close(
        &self,
        target: &CompiledTarget,
        headers: &InjectedHeaders,
        state: &UpstreamState,
    ) {
        let (Ok(url), Some(sid)) = (
            url_of(target).and_then(|u| self.parsed(u)),
            &state.session_id,
        ) else {
            return;
        };
        let req = self
            .http
            .delete(url)
            .headers(headers.0.clone())
            .header(SESSION_HEADER, sid.as_str())
            .timeout(Duration::from_secs(5));
        let _ = req.send().await;
    }

    /// One request and its reply, the whole exchange bounded by `timeout` (one timer). A
    /// cancelled call tells the upstream (`notifications/cancelled`) and drops its late reply.
    async fn exchange(
        &self,
        url: &Url,
        headers: &InjectedHeaders,
        state: &UpstreamState,
        (method, params): (&str, Option<&Value>),
        timeout: Duration,
        hooks: &CallHooks,
    ) -> Result<(UpstreamReply, Option<String>), UpstreamError> {
        // Our own id: the client's ids never reach the upstream (ids are remapped).
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = Outgoing::request(id, method, params).to_vec()?;
        let stateless = stateless::is_stateless(state);
        let work = async {
            let mut sent = post_headers(headers, state)?;
            if stateless {
                stateless::mirror_into(&mut sent, method, params);
            }
            let resp = h1::post_via(&self.http, url, sent, body).await?;
            let status = resp.status();
            if matches!(status, StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST)
                && state.session_id.is_some()
                && !stateless
            {
                return Err(match expired::session_forgotten(resp).await {
                    true => UpstreamError::SessionExpired,
                    false => UpstreamError::Status(status.as_u16()),
                });
            }
            if !status.is_success() {
                // A stateless upstream says what is wrong in a JSON-RPC error (with a 4xx).
                if stateless && status.is_client_error() {
                    let bytes = resp.bytes().await?;
                    if let Ok(Some(reply)) = match_reply(serde_json::from_slice(&bytes), id)
                        && reply.contains_key("error")
                    {
                        return Ok((reply.into(), None));
                    }
                }
                return Err(UpstreamError::Status(status.as_u16()));
            }
            let session_id = resp
                .headers()
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let live = UpstreamState {
                session_id: session_id.clone().or_else(|| state.session_id.clone()),
                protocol_version: state.protocol_version.clone(),
                initialized: state.initialized,
            };
            let reply = self
                .read_reply(
                    resp,
                    id,
                    &Route {
                        url,
                        headers,
                        state: &live,
                    },
                    hooks,
                )
                .await?;
            Ok((reply, session_id))
        };
        let out = tokio::select! {
            out = tokio::time::timeout(timeout, work) => out.map_err(|_| UpstreamError::Timeout(timeout)),
            () = hooks.cancelled() => Err(UpstreamError::Cancelled),
        };
        match out {
            Ok(done) => done,
            Err(e) => {
                let reason = match e {
                    UpstreamError::Cancelled => "cancelled by the client",
                    _ => "timed out in the gateway",
                };
                self.cancel_upstream(url, headers, state, id, reason);
                Err(e)
            }
        }
    }

    /// Tells the upstream (best effort, in the background) to stop working on request `id`.
    fn cancel_upstream(
        &self,
        url: &Url,
        headers: &InjectedHeaders,
        state: &UpstreamState,
        id: u64,
        reason: &'static str,
    ) {
        let params = json!({"requestId": id, "reason": reason});
        let Ok(body) = serde_json::to_vec(&json!({
            "jsonrpc": "2.0", "method": "notifications/cancelled", "params": params,
        })) else {
            return;
        };
        let req = self.post_request(url, headers, state, body);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), req.send()).await;
            });
        }
    }

    /// The way back for a server-to-client request that arrived on this upstream session.
    fn responder(&self, route: &Route<'_>, id: Value) -> Responder {
        http_responder(&self.http, route, id)
    }

    /// Reads a JSON body, or an SSE stream up to the message answering `id`: the stream's
    /// notifications and requests go to `hooks`, and a stream that ends early after naming an
    /// event id is resumed with `GET` + `Last-Event-ID` (SSE polling, SEP-1699).
    async fn read_reply(
        &self,
        resp: h1::Reply,
        id: u64,
        route: &Route<'_>,
        hooks: &CallHooks,
    ) -> Result<UpstreamReply, UpstreamError> {
        if !is_event_stream(resp.headers()) {
            let bytes = resp.bytes().await?;
            // The envelope only: a plain `result` stays the upstream's bytes (issue #24).
            return crate::jsonrpc::read_reply(&bytes, id)
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?
                .ok_or_else(|| UpstreamError::Protocol("reply has another id".into()));
        }
        hooks.deliver(Inbound::Streaming);
        let mut sse = EventParser::default();
        let mut resp = resp;
        let mut resumes = 0;
        loop {
            // A dropped connection (an error) is resumable like a closed one.
            while let Ok(Some(chunk)) = resp.chunk().await {
                if sse.buffered() + chunk.len() > MAX_REPLY_BYTES {
                    return Err(UpstreamError::Protocol("reply too large".into()));
                }
                for event in sse.feed(&chunk) {
                    let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(&event.data) else {
                        debug!("ignoring a non-object event on an upstream reply stream");
                        continue;
                    };
                    if let Some(reply) = match_reply(Ok(Value::Object(msg.clone())), id)? {
                        return Ok(reply.into());
                    }
                    match upcall::classify(msg) {
                        Some(upcall::Unsolicited::Notification(n)) => {
                            hooks.deliver(Inbound::Notification(n));
                        }
                        Some(upcall::Unsolicited::Request(rid, r)) => {
                            hooks.deliver(Inbound::Request(r, self.responder(route, rid)));
                        }
                        None => debug!("ignoring a reply to another request"),
                    }
                }
            }
            let Some(last) = sse.last_id().map(str::to_owned) else {
                return Err(UpstreamError::Protocol(
                    "stream ended without a reply".into(),
                ));
            };
            resumes += 1;
            if resumes > MAX_RESUMES {
                return Err(UpstreamError::Protocol(
                    "stream kept ending without a reply".into(),
                ));
            }
            let wait = sse
                .retry_ms()
                .map_or(Duration::from_millis(100), Duration::from_millis)
                .min(MAX_RESUME_WAIT);
            tokio::time::sleep(wait).await;
            sse.discard_partial();
            debug!(last_event_id = %last, "resuming the upstream reply stream");
            resp = self.resume(route, &last).await?.into();
        }
    }

    /// `GET` with `Last-Event-ID` on the upstream session: the rest of a closed reply stream.
    async fn resume(
        &self,
        route: &Route<'_>,
        last: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut req = self
            .http
            .get(route.url.clone())
            .headers(route.headers.0.clone())
            .header(
                http::header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            )
            .header("last-event-id", last);
        if let Some(sid) = &route.state.session_id {
            req = req.header(SESSION_HEADER, sid.as_str());
        }
        if let Some(v) = &route.state.protocol_version {
            req = req.header(PROTOCOL_HEADER, v.as_str());
        }
        let resp = req.send().await.map_err(map_reqwest)?;
        if !resp.status().is_success() {
            return Err(UpstreamError::Status(resp.status().as_u16()));
        }
        if !is_event_stream(resp.headers()) {
            return Err(UpstreamError::Protocol(
                "the resumed reply is not an event stream".into(),
            ));
        }
        Ok(resp)
    }

    /// POSTs `body`; the caller bounds the time (reqwest's own per-request timer is not used).
    async fn post(
        &self,
        url: &Url,
        headers: &InjectedHeaders,
        state: &UpstreamState,
        body: Vec<u8>,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.post_request(url, headers, state, body)
            .send()
            .await
            .map_err(map_reqwest)
    }

    /// The POST of one message to the upstream session, with its headers.
    fn post_request(
        &self,
        url: &Url,
        headers: &InjectedHeaders,
        state: &UpstreamState,
        body: Vec<u8>,
    ) -> reqwest::RequestBuilder {
        post_builder(&self.http, url, headers, state, body)
    }
}

/// The POST of one message to an upstream session, with its headers.
fn post_builder(
    http: &reqwest::Client,
    url: &Url,
    headers: &InjectedHeaders,
    state: &UpstreamState,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let mut req = http
        .post(url.clone())
        .headers(headers.0.clone())
        .header(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .header(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        )
        .body(body);
    if let Some(sid) = &state.session_id {
        req = req.header(SESSION_HEADER, sid.as_str());
    }
    if let Some(v) = &state.protocol_version {
        req = req.header(PROTOCOL_HEADER, v.as_str());
    }
    req
}

/// The headers of [`post_builder`]'s request, as a map for [`h1::post_via`] (no reqwest
/// request in between). A session id or protocol version that cannot be a header value fails
/// the request, as it failed reqwest's builder.
fn post_headers(
    headers: &InjectedHeaders,
    state: &UpstreamState,
) -> Result<HeaderMap, UpstreamError> {
    let mut map = HeaderMap::with_capacity(headers.0.len() + 4);
    for (name, value) in &headers.0 {
        map.append(name.clone(), value.clone());
    }
    map.append(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    map.append(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    if let Some(sid) = &state.session_id {
        map.append(HeaderName::from_static(SESSION_HEADER), header_value(sid)?);
    }
    if let Some(v) = &state.protocol_version {
        map.append(HeaderName::from_static(PROTOCOL_HEADER), header_value(v)?);
    }
    Ok(map)
}

fn header_value(text: &str) -> Result<HeaderValue, UpstreamError> {
    HeaderValue::from_str(text).map_err(|_| UpstreamError::Client("builder error".into()))
}

/// Answers a server-to-client request by POSTing to the upstream session it came from.
fn http_responder(http: &reqwest::Client, route: &Route<'_>, id: Value) -> Responder {
    let req = post_builder(http, route.url, route.headers, route.state, Vec::new());
    Responder::new(
        id,
        Box::new(move |body| {
            Box::pin(async move {
                let resp = tokio::time::timeout(Duration::from_secs(30), req.body(body).send())
                    .await
                    .map_err(|_| UpstreamError::Timeout(Duration::from_secs(30)))?
                    .map_err(map_reqwest)?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(UpstreamError::Status(resp.status().as_u16()))
                }
            })
        }),
    )
}

/// Where one exchange goes: what a resumption or an answer to the upstream needs.
struct Route<'a> {
    url: &'a Url,
    headers: &'a InjectedHeaders,
    state: &'a UpstreamState,
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}

fn url_of(target: &CompiledTarget) -> Result<&str, UpstreamError> {
    match &target.upstream {
        // The Streamable HTTP half only: `sse` targets (and `auto` ones detected as SSE) are
        // served by `Link`/`connect`/`send`, which never reach here for them.
        Upstream::StreamableHttp { url } | Upstream::Auto { url } => Ok(url),
        Upstream::Sse { .. } => Err(UpstreamError::Unsupported("sse")),
        Upstream::Stdio { .. } => Err(UpstreamError::Unsupported("stdio")),
        Upstream::Kubernetes { .. } => Err(UpstreamError::Unsupported("kubernetes")),
    }
}

fn map_reqwest(e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout(Duration::ZERO)
    } else if e.is_connect() {
        UpstreamError::Connect
    } else {
        // Without the URL: a Target's URL may carry a secret (`?api_key=…`, `user:pass@`), and
        // this message reaches clients and logs.
        UpstreamError::Client(e.without_url().to_string())
    }
}

/// `Some(reply)` when the message answers `id`; `None` for other messages (notifications).
fn match_reply(
    parsed: Result<Value, serde_json::Error>,
    id: u64,
) -> Result<Option<Map<String, Value>>, UpstreamError> {
    let Value::Object(obj) = parsed.map_err(|e| UpstreamError::Protocol(e.to_string()))? else {
        return Err(UpstreamError::Protocol("reply is not an object".into()));
    };
    let answers = obj.get("id").and_then(Value::as_u64) == Some(id)
        && (obj.contains_key("result") || obj.contains_key("error"));
    Ok(answers.then_some(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_matching_reply_is_taken() {
        let other = match_reply(
            Ok(json!({"jsonrpc":"2.0","method":"notifications/progress"})),
            3,
        );
        assert!(matches!(other, Ok(None)));
        let wrong = match_reply(Ok(json!({"jsonrpc":"2.0","id":2,"result":{}})), 3);
        assert!(matches!(wrong, Ok(None)));
        let right = match_reply(Ok(json!({"jsonrpc":"2.0","id":3,"result":{}})), 3);
        assert!(matches!(right, Ok(Some(_))));
    }

    #[test]
    fn injected_headers_debug_shows_names_only() {
        let mut map = HeaderMap::new();
        map.insert("x-api-key", HeaderValue::from_static("s3cret"));
        let h = InjectedHeaders(map);
        let shown = format!("{h:?}");
        assert!(shown.contains("x-api-key") && !shown.contains("s3cret"));
    }
}
