//! One client request and what its upstreams say meanwhile: answered as plain JSON unless an
//! upstream streams, then as SSE (progress, logging, server-to-client requests, then the reply).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tracing::{Instrument, debug};

use super::Gateway;
use super::answer::Answer;
use super::call::{Ctx, Reply};
use super::protocol::TARGET_META;
use super::streams::{GET_STREAM, Hub, primes};
use crate::jsonrpc::{self, Request};
use crate::metrics::method_label;
use crate::session::{Scope, Session};
use crate::upstream::{CallHooks, Cancel, Inbound, Responder, Sink, Unprompted, Upcall};

/// Upcalls queued per request before the relay drops notifications (and refuses requests).
const SINK_CAPACITY: usize = 256;

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
/// Random per process: minted tokens of two replicas never collide at a shared upstream.
static TOKEN_PREFIX: LazyLock<String> =
    LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());

/// The client's progress token, and the one the upstreams got instead: unique per gateway
/// process, so tokens of different clients sharing an upstream (a STDIO child) never collide.
pub(crate) struct Progress {
    pub(crate) minted: Value,
    pub(crate) original: Value,
}

pub(crate) fn mint_progress(req: &mut Request) -> Option<Progress> {
    let meta = req.params_mut().get_mut("_meta")?.as_object_mut()?;
    let original = meta.get("progressToken")?.clone();
    let minted = json!(format!(
        "reflow-{}-{}",
        *TOKEN_PREFIX,
        NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
    ));
    meta.insert("progressToken".into(), minted.clone());
    Some(Progress { minted, original })
}

/// The capability a client must have declared for an upstream's request method.
fn capability_for(method: &str) -> Option<&'static str> {
    match method {
        "sampling/createMessage" => Some("sampling"),
        "elicitation/create" => Some("elicitation"),
        "roots/list" => Some("roots"),
        _ => None,
    }
}

/// Whether a client that declared `declared` (its `capabilities.<cap>`) can be asked `params`:
/// a URL-mode elicitation needs `elicitation.url` (an empty `elicitation` means form only).
fn declared_for(declared: &Value, method: &str, params: Option<&Value>) -> bool {
    let url_mode = method == "elicitation/create"
        && params.and_then(|p| p.get("mode")).and_then(Value::as_str) == Some("url");
    !url_mode || declared.get("url").is_some()
}

/// Turns upcalls into messages for the client, on one stream.
struct Relay {
    gw: Arc<Gateway>,
    session: Arc<Session>,
    hub: Arc<Hub>,
    progress: Option<Progress>,
}

impl Relay {
    /// Publishes `up` on `stream` (a request goes to the GET stream when `stream` has no
    /// connection to answer on).
    fn handle(&self, up: Upcall, stream: u64) {
        match up.inbound {
            Inbound::Streaming => {}
            Inbound::Notification(mut msg) => {
                self.gw.list_cache.forget_changed(&up.target, &msg);
                if !super::log_fanout::shown(&self.session, &msg) {
                    return;
                }
                self.rewrite_notification(&mut msg, &up.target);
                if self.session.scope == Scope::Aggregated {
                    let snapshot = self.gw.snapshots.load();
                    super::resource_uri::expose_update(&snapshot, &up.target, &mut msg);
                }
                if stream == GET_STREAM {
                    // Possibly held by another replica.
                    self.gw.to_get_stream(&self.session.id, &self.hub, &msg);
                } else {
                    self.publish(stream, &msg);
                }
            }
            Inbound::Request(msg, responder) => self.request(msg, responder, stream),
        }
    }

    fn rewrite_notification(&self, msg: &mut Map<String, Value>, target: &str) {
        rewrite_notification(msg, self.progress.as_ref(), target);
    }

    fn request(&self, mut msg: Map<String, Value>, responder: Responder, stream: u64) {
        let Some(id) = admit_upcall(&self.gw, &self.session, &msg, responder, true) else {
            return;
        };
        msg.insert("id".into(), json!(id));
        let stream = if stream != GET_STREAM && self.hub.has_live(stream) {
            stream
        } else {
            GET_STREAM
        };
        self.publish(stream, &msg);
    }

    fn publish(&self, stream: u64, msg: &Map<String, Value>) {
        if let Ok(text) = serde_json::to_string(msg) {
            self.hub.publish(stream, text);
        }
    }
}

/// An upstream notification as the client sees it: its own progress token back, and the Target
/// it came from named in `_meta`.
pub(crate) fn rewrite_notification(
    msg: &mut Map<String, Value>,
    progress: Option<&Progress>,
    target: &str,
) {
    let params = msg
        .entry("params")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(params) = params else {
        return;
    };
    if let Some(p) = progress
        && params.get("progressToken") == Some(&p.minted)
    {
        params.insert("progressToken".into(), p.original.clone());
    }
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        meta.insert(TARGET_META.into(), json!(target));
    }
}

/// What becomes of a server-to-client request from an upstream: `ping` is answered here (the
/// gateway is the upstream's client); a method the gateway does not relay, one asked where the
/// client cannot be asked (`askable` false), or one whose capability the client did not declare
/// is refused; otherwise it is registered and its gateway-minted id returned, for the client.
pub(crate) fn admit_upcall(
    gw: &Gateway,
    session: &Session,
    msg: &Map<String, Value>,
    responder: Responder,
    askable: bool,
) -> Option<String> {
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    if method == "ping" {
        tokio::spawn(async move {
            let _ = responder.answer(&result_of(json!({}))).await;
        });
        return None;
    }
    let refuse = |responder: Responder, why: &'static str| {
        debug!(method, why, "upstream request refused");
        responder.refuse_later(jsonrpc::METHOD_NOT_FOUND, why);
        None
    };
    let Some(cap) = capability_for(method) else {
        return refuse(responder, "method not relayed by the gateway");
    };
    if !askable {
        return refuse(
            responder,
            "the client cannot be asked for input during this request",
        );
    }
    match session.client_capabilities.get(cap) {
        Some(declared) if declared_for(declared, method, msg.get("params")) => {}
        _ => return refuse(responder, "the client did not declare this capability"),
    }
    match gw.upcalls.register(&session.id, responder) {
        Ok(id) => Some(id),
        Err((e, responder)) => {
            debug!(error = %e, "relayed request refused");
            responder.refuse_later(jsonrpc::INTERNAL_ERROR, "too many requests pending");
            None
        }
    }
}

fn result_of(result: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("result".into(), result);
    m
}

impl Gateway {
    /// What a session's own upstream (a stateful STDIO child) says outside any call: to that
    /// session's GET stream, with the same capability checks and id minting as during a call.
    fn relay_to_session(self: &Arc<Self>, session_id: &str, target: Arc<str>, inbound: Inbound) {
        let gw = self.clone();
        let sid = session_id.to_owned();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            crate::upstream::unroutable(inbound);
            return;
        };
        rt.spawn(async move {
            let session = match gw.sessions.get(&sid).await {
                Ok(Some(s)) => s,
                _ => {
                    crate::upstream::unroutable(inbound);
                    return;
                }
            };
            let relay = Relay {
                hub: gw.hubs.get(&sid),
                gw,
                session,
                progress: None,
            };
            relay.handle(Upcall { target, inbound }, GET_STREAM);
        });
    }

    /// Dispatches `req` and answers it: as JSON when nothing streams before the reply (the
    /// common case costs one channel), else as SSE on a new stream of the session.
    pub(crate) async fn respond(
        self: &Arc<Self>,
        mut ctx: Ctx,
        mut req: Request,
        accepts_sse: bool,
    ) -> Answer {
        let hub = self.hubs.get(&ctx.session.id);
        let key = req.id.to_string();
        let cancel = Cancel::default();
        hub.track(key.clone(), cancel.clone());
        let (tx, mut rx) = mpsc::channel(SINK_CAPACITY);
        ctx.hooks = CallHooks {
            sink: Some(Sink::new(tx, Arc::from("-"))),
            cancel: Some(cancel.clone()),
        };
        let relay = Relay {
            gw: self.clone(),
            session: ctx.session.clone(),
            hub: hub.clone(),
            progress: mint_progress(&mut req),
        };
        let method = method_label(&req.method);
        let started = ctx.started;
        let gw = self.clone();
        let mut work = Box::pin(async move { gw.dispatch(&ctx, req).await });
        let up = loop {
            tokio::select! {
                biased;
                up = rx.recv() => match up {
                    Some(up) if accepts_sse => break up,
                    // A JSON-only client: what the upstream says goes to its GET stream.
                    Some(up) => relay.handle(up, GET_STREAM),
                    None => {}
                },
                Reply { message: reply, target, outcome } = &mut work => {
                    hub.untrack(&key);
                    self.count(method, target, outcome, started);
                    let mut early = Vec::new();
                    while let Ok(up) = rx.try_recv() {
                        if !matches!(up.inbound, Inbound::Streaming) {
                            early.push(up);
                        }
                    }
                    if early.is_empty() {
                        return Answer::Json { message: reply, outcome };
                    }
                    if !accepts_sse {
                        for up in early {
                            relay.handle(up, GET_STREAM);
                        }
                        return Answer::Json { message: reply, outcome };
                    }
                    // The whole upstream stream arrived before we looked: relay it in order.
                    let (stream, frames) = hub.open_stream();
                    let priming = primes(&relay.session.protocol_version).then(|| format!("{stream}:0"));
                    for up in early {
                        relay.handle(up, stream);
                    }
                    if let Ok(text) = serde_json::to_string(&reply) {
                        hub.publish(stream, text);
                    }
                    hub.finish(stream);
                    return Answer::Stream { priming, frames };
                }
            }
        };
        // An upstream streams: so does the reply, on a new stream of this session.
        let (stream, frames) = hub.open_stream();
        let priming = primes(&relay.session.protocol_version).then(|| format!("{stream}:0"));
        relay.handle(up, stream);
        let gw = self.clone();
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let done: Reply = loop {
                    tokio::select! {
                        biased;
                        Some(up) = rx.recv() => relay.handle(up, stream),
                        done = &mut work => break done,
                    }
                };
                while let Ok(up) = rx.try_recv() {
                    relay.handle(up, stream);
                }
                relay.hub.untrack(&key);
                // A cancelled request gets no response (the client has moved on).
                if !cancel.is_cancelled()
                    && let Ok(text) = serde_json::to_string(&done.message)
                {
                    relay.hub.publish(stream, text);
                }
                relay.hub.finish(stream);
                gw.count(method, done.target, done.outcome, started);
            }
            .instrument(span),
        );
        Answer::Stream { priming, frames }
    }
}

/// Takes what upstreams say outside any call to its session(s), until the gateway or every
/// sender is gone. A shared child's message no subscriber takes goes back to the pool.
pub(crate) async fn take_unprompted(
    gw: Weak<Gateway>,
    mut unprompted: mpsc::UnboundedReceiver<Unprompted>,
) {
    while let Some(message) = unprompted.recv().await {
        let Some(gw) = gw.upgrade() else {
            let (Unprompted::Session { inbound, .. } | Unprompted::Shared { inbound, .. }) =
                message;
            crate::upstream::unroutable(inbound);
            return;
        };
        match message {
            Unprompted::Session {
                session,
                target,
                inbound,
            } => gw.relay_to_session(&session, target, inbound),
            Unprompted::Shared {
                child,
                target,
                inbound,
            } => {
                if let Some(left) = gw.relay_shared(&child, target, inbound) {
                    gw.upstream.stdio().drop_unrouted(left);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_mode_elicitation_needs_the_url_capability() {
        let url = json!({"mode": "url", "url": "https://example.com", "message": "m"});
        let form = json!({"message": "m", "requestedSchema": {"type": "object"}});
        let ask = "elicitation/create";
        // An empty `elicitation` is form mode only (2025-11-25).
        assert!(!declared_for(&json!({}), ask, Some(&url)));
        assert!(!declared_for(&json!({"form": {}}), ask, Some(&url)));
        assert!(declared_for(&json!({"url": {}}), ask, Some(&url)));
        assert!(declared_for(&json!({}), ask, Some(&form)));
        assert!(declared_for(&json!({}), ask, None));
        // A mode that is no string is not URL mode; other methods need only the capability.
        assert!(declared_for(&json!({}), ask, Some(&json!({"mode": 1}))));
        assert!(declared_for(
            &json!({}),
            "sampling/createMessage",
            Some(&url)
        ));
    }
}
