//! One request of a stateless (2026-07-28) client: dispatched like any other, answered as JSON or
//! as an SSE stream of its own, and turned into multi round-trip results where an older upstream
//! asks the client something (sampling, elicitation, roots) in the middle of the call.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use reflow_crds::Fingerprint;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug};

use super::Gateway;
use super::answer::Answer;
use super::call::{Ctx, Reply};
use super::log_fanout::message_level;
use super::mrtr::{self, Held, Parked};
use super::relay::{Progress, admit_upcall, mint_progress, rewrite_notification};
use crate::era;
use crate::jsonrpc::{self, Request};
use crate::log_level::LogLevel;
use crate::metrics::method_label;
use crate::session::Session;
use crate::upstream::{CallHooks, Cancel, Inbound, Responder, Sink, Upcall};

/// How long a cancelled request may take to wind down before it is dropped.
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// Upcalls queued per request (as for stateful clients).
const SINK_CAPACITY: usize = 256;

/// What the driver of one request hands to the HTTP response.
enum Out {
    /// A request-scoped notification (progress, a log message the client asked for).
    Note(String),
    /// The response: the result, an error, or an `input_required` result.
    Final(Value),
}

/// What stays the same for a request across its rounds.
struct Call {
    gw: Arc<Gateway>,
    /// Who the sealed states are bound to (user and claims).
    owner: Fingerprint,
    session: Arc<Session>,
    method: String,
    name: String,
    /// The client's `_meta` log level: without one, no log message reaches it.
    log_level: Option<LogLevel>,
    progress: Option<Progress>,
    cancel: Cancel,
}

impl Gateway {
    /// Answers a stateless request (`ctx.session` is the caller's hidden gateway session).
    pub(crate) async fn respond_stateless(
        self: &Arc<Self>,
        mut ctx: Ctx,
        mut req: Request,
        accepts_sse: bool,
    ) -> Answer {
        let started = ctx.started;
        let label = method_label(&req.method);
        let name = era::mirrored_name(&req.method, req.params())
            .unwrap_or("")
            .to_owned();
        let owner = ctx.identity.fingerprint();
        let log_level = meta_log_level(&req);
        let state = take_str(&mut req, "requestState");
        let mut resume = None;
        if let Some(state) = state {
            match mrtr::open(&self.key, &owner, &req.method, &name, &state) {
                Ok(Held::Upstream { target, state }) => {
                    req.params_mut()
                        .insert("requestState".into(), Value::String(state));
                    ctx.pin = Some(Arc::from(target));
                }
                Ok(Held::Parked(id)) => {
                    let answers = req.params_mut().remove("inputResponses");
                    match self.parking.take(&id, &ctx.session.id) {
                        Some(parked) => resume = Some((parked, answers)),
                        // Parked on another replica, or expired: the request runs afresh.
                        None => debug!("parked call not found; running the request again"),
                    }
                }
                Err(e) => {
                    self.count(label, None, e.label(), started);
                    // Every state the gateway cannot open is a bad parameter of this request.
                    let code = jsonrpc::INVALID_PARAMS;
                    return Answer::StatelessJson(jsonrpc::error(&req.id, code, &e.to_string()));
                }
            }
        }
        let call = Call {
            gw: self.clone(),
            owner,
            session: ctx.session.clone(),
            method: req.method.clone(),
            name,
            log_level,
            progress: None,
            cancel: Cancel::default(),
        };
        let id = req.id.clone();
        let (call, work, rx, waiting) = match resume {
            Some((parked, answers)) => {
                let waiting = call.deliver(parked.waiting, answers.as_ref()).await;
                let call = Call {
                    progress: parked.progress,
                    cancel: parked.cancel,
                    ..call
                };
                (call, parked.work, parked.rx, waiting)
            }
            None => {
                let (tx, rx) = mpsc::channel(SINK_CAPACITY);
                let mut call = call;
                call.progress = mint_progress(&mut req);
                ctx.hooks = CallHooks {
                    sink: Some(Sink::new(tx, Arc::from("-"))),
                    cancel: Some(call.cancel.clone()),
                };
                let gw = self.clone();
                let span = tracing::Span::current();
                let work =
                    tokio::spawn(async move { gw.dispatch(&ctx, req).await }.instrument(span));
                (call, work, rx, Vec::new())
            }
        };
        let (out_tx, out_rx) = mpsc::channel(64);
        let span = tracing::Span::current();
        tokio::spawn(
            call.drive(
                work,
                rx,
                waiting,
                id.clone(),
                accepts_sse,
                out_tx,
                (label, started),
            )
            .instrument(span),
        );
        answer(out_rx, &id).await
    }
}

impl Call {
    /// Gives the parked call's upstreams the client's `inputResponses`; returns the requests
    /// still unanswered (asked again).
    async fn deliver(
        &self,
        waiting: Vec<(String, Value)>,
        answers: Option<&Value>,
    ) -> Vec<(String, Value)> {
        let mut still = Vec::new();
        for (gid, request) in waiting {
            match answers.and_then(|a| a.get(&gid)) {
                Some(answer) => {
                    let mut msg = Map::new();
                    msg.insert("id".into(), json!(gid));
                    msg.insert("result".into(), answer.clone());
                    if let Err(e) = self
                        .gw
                        .upcalls
                        .resolve(&self.session.id, &json!(gid), &msg)
                        .await
                    {
                        debug!(error = %e, "an input response could not be delivered");
                    }
                }
                None => still.push((gid, request)),
            }
        }
        still
    }

    /// Runs the request to its response: notifications on the way (SSE clients only), and an
    /// `input_required` result (the call parked) when an upstream asks the client something.
    #[allow(clippy::too_many_arguments)]
    async fn drive(
        self,
        mut work: JoinHandle<Reply>,
        mut rx: mpsc::Receiver<Upcall>,
        mut waiting: Vec<(String, Value)>,
        id: Value,
        sse: bool,
        out: mpsc::Sender<Out>,
        (label, started): (Cow<'static, str>, Instant),
    ) {
        if !waiting.is_empty() {
            return self.park(work, rx, waiting, &id, &out).await;
        }
        // The sink closes when the dispatch ends; from then on only `work` is waited for.
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                up = rx.recv(), if open => {
                    let Some(up) = up else {
                        open = false;
                        continue;
                    };
                    if let Some(asked) = self.upcall(up, sse, &out).await {
                        waiting.push(asked);
                        // Requests that came together are asked together.
                        while let Ok(up) = rx.try_recv() {
                            if let Some(asked) = self.upcall(up, sse, &out).await {
                                waiting.push(asked);
                            }
                        }
                        self.gw.count(label, None, "input_required", started);
                        return self.park(work, rx, waiting, &id, &out).await;
                    }
                }
                done = &mut work => {
                    let Reply { message: reply, target, outcome } = done.unwrap_or_else(|_| {
                        Reply::new(jsonrpc::error(&id, jsonrpc::INTERNAL_ERROR, "the request failed"), None, "internal")
                    });
                    while let Ok(up) = rx.try_recv() {
                        let _ = self.upcall(up, sse, &out).await;
                    }
                    let reply = self.finish(reply.into_tree(), &id, target.as_deref());
                    self.gw.count(label, target, outcome, started);
                    let _ = out.send(Out::Final(reply)).await;
                    return;
                }
                () = out.closed() => {
                    // The client closed its response stream: that cancels the request. The
                    // dispatch ends promptly (its upstream call is cancelled) and is audited.
                    self.cancel.cancel();
                    let outcome = match tokio::time::timeout(CANCEL_GRACE, &mut work).await {
                        Ok(Ok(Reply { target, outcome, .. })) => (target, outcome),
                        _ => {
                            work.abort();
                            (None, "cancelled")
                        }
                    };
                    self.gw.count(label, outcome.0, outcome.1, started);
                    return;
                }
            }
        }
    }

    /// One upcall: a notification goes out (when the client may see it); a request the client
    /// can answer comes back as `(gateway id, input request)`; anything else is refused.
    async fn upcall(
        &self,
        up: Upcall,
        sse: bool,
        out: &mpsc::Sender<Out>,
    ) -> Option<(String, Value)> {
        match up.inbound {
            Inbound::Streaming => None,
            Inbound::Notification(msg) => {
                self.gw.list_cache.forget_changed(&up.target, &msg);
                if sse && let Some(msg) = self.notification(msg, &up.target) {
                    let _ = out.send(Out::Note(Value::Object(msg).to_string())).await;
                }
                None
            }
            Inbound::Request(msg, responder) => self.request(msg, responder),
        }
    }

    fn notification(
        &self,
        mut msg: Map<String, Value>,
        target: &str,
    ) -> Option<Map<String, Value>> {
        let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
        if method == "notifications/message" {
            let wanted = self.log_level?;
            // An unranked level counts as the least severe: shown only to who asked for debug.
            let level = message_level(&msg).unwrap_or(LogLevel::Debug);
            if !wanted.admits(level) {
                return None;
            }
        } else if method != "notifications/progress" {
            // Only request-scoped notifications belong on a request's stream; change
            // notifications go to `subscriptions/listen`.
            return None;
        }
        rewrite_notification(&mut msg, self.progress.as_ref(), target);
        Some(msg)
    }

    fn request(&self, msg: Map<String, Value>, responder: Responder) -> Option<(String, Value)> {
        let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
        let askable = era::allows_input_required(&self.method);
        let gid = admit_upcall(&self.gw, &self.session, &msg, responder, askable)?;
        let mut asked = Map::new();
        asked.insert("method".into(), json!(method));
        if let Some(p) = msg.get("params") {
            asked.insert("params".into(), p.clone());
        }
        Some((gid, Value::Object(asked)))
    }

    /// Parks the call and answers `input_required` with the requests and the sealed state.
    async fn park(
        self,
        work: JoinHandle<Reply>,
        rx: mpsc::Receiver<Upcall>,
        waiting: Vec<(String, Value)>,
        id: &Value,
        out: &mpsc::Sender<Out>,
    ) {
        let requests: Map<String, Value> = waiting.iter().cloned().collect();
        let ttl = self.gw.upcalls.timeout();
        let parked = Parked {
            session: self.session.id.clone(),
            work,
            rx,
            waiting,
            expires: Instant::now() + ttl,
            progress: self.progress,
            cancel: self.cancel,
        };
        let reply = match self.gw.parking.park(parked) {
            Ok(pid) => {
                let state = mrtr::seal(
                    &self.gw.key,
                    &self.owner,
                    &self.method,
                    &self.name,
                    Held::Parked(pid),
                    ttl,
                );
                // A retry may reach any replica: it is handed here, where the call waits.
                self.gw.own(&super::handoff::parked_key(&state)).await;
                let mut result = Map::new();
                result.insert("resultType".into(), json!("input_required"));
                result.insert("inputRequests".into(), Value::Object(requests));
                result.insert("requestState".into(), json!(state));
                era::stamp_result(&mut result);
                jsonrpc::result(id, Value::Object(result))
            }
            Err(parked) => {
                parked.work.abort();
                parked.cancel.cancel();
                jsonrpc::error(
                    id,
                    jsonrpc::INTERNAL_ERROR,
                    "too many requests are waiting for input",
                )
            }
        };
        let _ = out.send(Out::Final(reply)).await;
    }

    /// The response as this revision has it: the retry's id, `resultType`, cache hints on
    /// lists, an upstream's own `requestState` sealed to its Target, resource-not-found as -32602.
    fn finish(&self, mut reply: Value, id: &Value, target: Option<&str>) -> Value {
        if let Value::Object(m) = &mut reply {
            m.insert("id".into(), id.clone());
        }
        if reply.pointer("/error/code").and_then(Value::as_i64) == Some(jsonrpc::RESOURCE_NOT_FOUND)
            && let Some(code) = reply.pointer_mut("/error/code")
        {
            *code = json!(jsonrpc::INVALID_PARAMS);
        }
        let Some(Value::Object(result)) = reply.get_mut("result") else {
            return reply;
        };
        if era::is_input_required(&Value::Object(result.clone())) {
            if let (Some(Value::String(state)), Some(target)) = (result.get("requestState"), target)
            {
                let sealed = mrtr::seal(
                    &self.gw.key,
                    &self.owner,
                    &self.method,
                    &self.name,
                    Held::Upstream {
                        target: target.to_owned(),
                        state: state.clone(),
                    },
                    self.gw.upcalls.timeout(),
                );
                result.insert("requestState".into(), json!(sealed));
            }
        } else if era::is_cacheable(&self.method) {
            // Lists are filtered by the caller's policies, so never shareable across callers.
            result.insert("cacheScope".into(), json!("private"));
            result.entry("ttlMs").or_insert(json!(0));
        }
        era::stamp_result(result);
        reply
    }
}

fn take_str(req: &mut Request, field: &str) -> Option<String> {
    match req.params_mut().remove(field) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// The client's `_meta` log level, if it set one.
fn meta_log_level(req: &Request) -> Option<LogLevel> {
    req.params()
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(era::META_LOG_LEVEL))
        .and_then(Value::as_str)
        .and_then(|l| l.parse::<LogLevel>().ok())
}

/// The HTTP answer to a stateless request: its one reply as JSON, or an SSE stream when
/// notifications come first.
async fn answer(mut out_rx: mpsc::Receiver<Out>, id: &Value) -> Answer {
    match out_rx.recv().await {
        Some(Out::Final(reply)) => Answer::StatelessJson(reply),
        Some(Out::Note(first)) => {
            let rest = futures::stream::unfold(out_rx, |mut rx| async move {
                match rx.recv().await {
                    Some(Out::Note(n)) => Some((n, rx)),
                    Some(Out::Final(v)) => Some((v.to_string(), rx)),
                    None => None,
                }
            });
            let head = futures::stream::iter([first]);
            Answer::Events(Box::pin(futures::StreamExt::chain(head, rest)))
        }
        None => Answer::StatelessJson(jsonrpc::error(
            id,
            jsonrpc::INTERNAL_ERROR,
            "the request ended without a response",
        )),
    }
}
