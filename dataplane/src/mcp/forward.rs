//! One call to one upstream on behalf of one session: credentials opened at use time, the
//! upstream link established at most once per (session, target), again on 404 or a lost stream;
//! `stdio` targets go to the process pool, `kubernetes` ones to their instance (`instances`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use reflow_crds::Identity;
use reflow_crds::snapshot::{CompiledTarget, ResolvedCredentials, Upstream};
use serde_json::{Map, Value};
use tokio::sync::Mutex as AsyncMutex;
use tracing::{Instrument, Span, info_span};

use super::Gateway;
use crate::jsonrpc::UpstreamReply;
use crate::log_level::LogLevel;
use crate::metrics::UpstreamLabels;
use crate::session::UpstreamState;
use crate::upstream::stateless::is_stateless;
use crate::upstream::stdio::{IsolationKey, Start};
use crate::upstream::{
    CallHooks, Deliver, InitParams, InjectedHeaders, Link, Transport, UpstreamError,
};

pub(crate) type Cell = Arc<AsyncMutex<Link>>;

/// One gateway session's upstream links by target key, and who opened them (to resolve the
/// credentials needed to close them when the session ends without a request: expiry).
pub(crate) struct SessionLinks {
    pub identity: Identity,
    pub links: HashMap<Arc<str>, Cell>,
}

const SHARDS: usize = 16;

/// Per (session id, target key) upstream link, guarded so concurrent first calls initialize once.
/// A legacy SSE link owns its stream, which closes once the link is removed and dropped.
/// Sharded by session id; finding an existing link allocates nothing.
pub(crate) struct Conns([Mutex<HashMap<String, SessionLinks>>; SHARDS]);

impl Default for Conns {
    fn default() -> Self {
        Self(std::array::from_fn(|_| Mutex::new(HashMap::new())))
    }
}

impl Conns {
    fn shard(&self, session: &str) -> std::sync::MutexGuard<'_, HashMap<String, SessionLinks>> {
        // Session ids are random hex: their last byte spreads them well enough.
        let i = session.as_bytes().last().map_or(0, |b| usize::from(*b)) % SHARDS;
        self.0[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cell(
        &self,
        session: &str,
        identity: &Identity,
        target: &Arc<str>,
        seed: Option<&UpstreamState>,
    ) -> Cell {
        let mut map = self.shard(session);
        if let Some(cell) = map.get(session).and_then(|s| s.links.get(&**target)) {
            return cell.clone();
        }
        map.entry(session.to_owned())
            .or_insert_with(|| SessionLinks {
                identity: identity.clone(),
                links: HashMap::new(),
            })
            .links
            .entry(target.clone())
            .or_insert_with(|| {
                Arc::new(AsyncMutex::new(seed.map(Link::resume).unwrap_or_default()))
            })
            .clone()
    }

    /// The targets a session has links to.
    pub(crate) fn targets_of(&self, session: &str) -> Vec<Arc<str>> {
        self.shard(session)
            .get(session)
            .map(|s| s.links.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes `targets`' links out of a session whose caller now is `identity`; returns them
    /// (with the identity they were opened for) to be closed.
    pub(crate) fn leave(
        &self,
        session: &str,
        identity: &Identity,
        targets: &[Arc<str>],
    ) -> Option<SessionLinks> {
        let mut map = self.shard(session);
        let links = map.get_mut(session)?;
        let old = std::mem::replace(&mut links.identity, identity.clone());
        let taken: HashMap<Arc<str>, Cell> = targets
            .iter()
            .filter_map(|k| links.links.remove_entry(k))
            .collect();
        (!taken.is_empty()).then_some(SessionLinks {
            identity: old,
            links: taken,
        })
    }

    /// Forgets a session's upstream links; returns them to be closed (DELETE, or end the stream).
    pub(crate) fn remove_session(&self, session: &str) -> Option<SessionLinks> {
        self.shard(session).remove(session)
    }
}

/// `params` with the current span's trace context in its `_meta`; `None` for params that are
/// not an object (sent as they are).
fn with_trace_meta(params: Option<&Value>) -> Option<Value> {
    let mut params = match params {
        None => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => return None,
    };
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(meta) = meta else {
        return None;
    };
    reflow_telemetry::propagation::inject_current_meta(meta);
    Some(Value::Object(params))
}

/// Who is calling, through which session, speaking which protocol version.
pub(crate) struct Caller<'a> {
    pub identity: &'a Identity,
    /// `namespace/name` of the target, computed once per request.
    pub target_key: &'a Arc<str>,
    pub session_id: &'a str,
    pub seed: Option<&'a UpstreamState>,
    pub protocol_version: &'a str,
    /// What the client declared in `initialize` (mirrored to its HTTP upstream sessions).
    pub client_capabilities: &'a serde_json::Value,
    pub hooks: &'a CallHooks,
    /// What the session asked for with `logging/setLevel` (told to new upstream sessions).
    pub log_level: Option<LogLevel>,
    /// The caller's verified bearer token, for `tokenExchange` Targets.
    pub subject: Option<&'a crate::connect::exchange::SubjectToken>,
    pub trace_id: &'a str,
}

impl Caller<'_> {
    /// Whether the client speaks the stateless revision.
    pub fn is_stateless(&self) -> bool {
        self.protocol_version == crate::era::STATELESS
    }

    /// The revision an upstream handshake asks for: the client's, or the newest one with a
    /// handshake when the client has none (stateless).
    pub fn handshake_version(&self) -> &str {
        if self.is_stateless() {
            super::protocol::LATEST_PROTOCOL
        } else {
            self.protocol_version
        }
    }
}

impl Gateway {
    /// Sends `method` to `target` and returns the upstream's reply object (`result` or `error`).
    pub(crate) async fn forward(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
        method: &str,
        params: Option<&Value>,
    ) -> Result<UpstreamReply, UpstreamError> {
        // The parent named in the `traceparent` the upstream receives. Only traced requests pay
        // for it: with tracing off, formatting its fields for the logs would be the cost.
        let span = if reflow_telemetry::propagation::enabled() {
            info_span!("upstream", otel.kind = "client", target = %caller.target_key, method)
        } else {
            Span::none()
        };
        self.forward_timed(caller, target, method, params)
            .instrument(span)
            .await
    }

    async fn forward_timed(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
        method: &str,
        params: Option<&Value>,
    ) -> Result<UpstreamReply, UpstreamError> {
        let started = Instant::now();
        // With tracing on, the upstream's `_meta` names this span as its parent (SEP-414; all a
        // STDIO server can read), replacing whatever trace context the caller put there.
        let traced = reflow_telemetry::propagation::enabled()
            .then(|| with_trace_meta(params))
            .flatten();
        let params = traced.as_ref().or(params);
        let since = crate::audit::now_ms();
        let mut out = self.forward_inner(caller, target, method, params).await;
        // A user's oauth2 token the upstream no longer takes: refresh now and retry once where
        // this dataplane refreshes (standalone); otherwise ask the controller's refresher.
        if matches!(out, Err(UpstreamError::Status(401))) {
            match self
                .refreshed_after_401(caller.identity, target, since)
                .await
            {
                Some(fresh) => out = self.forward_inner(caller, &fresh, method, params).await,
                None => self.upstream_refused_grant(caller.identity, target),
            }
        }
        let labels = UpstreamLabels {
            target: caller.target_key.clone(),
            outcome: match &out {
                Ok(_) => "ok",
                Err(e) => e.label(),
            },
        };
        self.metrics
            .upstream_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if out.is_err() {
            self.metrics.upstream_errors.get_or_create(&labels).inc();
        }
        out
    }

    async fn forward_inner(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
        method: &str,
        params: Option<&Value>,
    ) -> Result<UpstreamReply, UpstreamError> {
        let creds = self.caller_credentials(caller, target, method).await?;
        let hooks = CallHooks {
            sink: caller
                .hooks
                .sink
                .as_ref()
                .map(|s| s.for_target(caller.target_key.clone())),
            cancel: caller.hooks.cancel.clone(),
        };
        if let Upstream::Stdio { .. } = target.upstream {
            // No link: the pool picks the child by isolation key, which includes the
            // fingerprint of these credentials, so a child never serves other credentials.
            let key = IsolationKey::new(
                target,
                caller.target_key,
                caller.identity,
                &creds,
                caller.session_id,
            );
            let start = Start {
                target,
                creds: &creds,
                key: &self.key,
                protocol_version: caller.handshake_version(),
                session: Some(caller.session_id),
            };
            let child = self.upstream.stdio().acquire(&key, &start).await?;
            self.attach_child(caller, &key, &child).await;
            self.carry_subscriptions(&key, &child).await;
            let sid = caller.session_id;
            self.restore_subscriptions(sid, caller.target_key, (&key, &child))
                .await;
            let timeout = std::time::Duration::from_millis(u64::from(target.timeouts.request_ms));
            if matches!(method, "resources/subscribe" | "resources/unsubscribe") {
                let out = self
                    .stdio_subscription(caller, (&child, &key), (method, params), timeout, &hooks)
                    .await;
                self.keep_subscription(sid, caller.target_key, (method, params), &out)
                    .await;
                return out.map(UpstreamReply::from);
            }
            let reply =
                child.request_with(method, params, timeout, &hooks, Some(caller.session_id));
            return Ok(reply.await?.into());
        }
        if let Upstream::Kubernetes { .. } = target.upstream {
            return self
                .forward_instance(caller, target, &creds, (method, params), &hooks)
                .await;
        }
        let headers = self.call_headers(caller, target, &creds)?;
        let key = caller.target_key;
        let (cell, link, init) = self.link_for(caller, target, &headers).await?;
        if is_stateless(link.state()) {
            return self
                .send_stateless(
                    target,
                    &headers,
                    &link,
                    (method, params),
                    &init,
                    caller,
                    &hooks,
                )
                .await
                .map(UpstreamReply::from);
        }
        match self
            .upstream
            .send(target, &headers, &link, method, params, &hooks)
            .await
        {
            Err(UpstreamError::SessionExpired) => {
                let link = {
                    let mut guard = cell.lock().await;
                    // Another call may have re-initialized already.
                    if guard.same(&link) {
                        *guard = self.upstream.connect(target, &headers, &init).await?;
                        self.listen(caller, target, &headers, &mut guard).await;
                        self.remember(caller.session_id, key, &guard).await;
                        self.tell_new_link(caller, target, &headers, &guard).await;
                    }
                    guard.clone()
                };
                self.upstream
                    .send(target, &headers, &link, method, params, &hooks)
                    .await
            }
            other => other,
        }
    }

    /// The session's link to an HTTP `target`, connected (and its upstream stream opened) first
    /// if it is not yet.
    async fn link_for(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
        headers: &InjectedHeaders,
    ) -> Result<(Cell, Link, InitParams), UpstreamError> {
        let key = caller.target_key;
        let cell = self
            .conns
            .cell(caller.session_id, caller.identity, key, caller.seed);
        let init = InitParams {
            protocol_version: caller.handshake_version().to_owned(),
            capabilities: relayable_capabilities(caller.client_capabilities),
            stateless_client: caller.is_stateless(),
        };
        let link = {
            let mut guard = cell.lock().await;
            // Not yet connected, or a legacy stream that has since dropped: (re)connect.
            if !guard.is_ready_for(&target.upstream) {
                *guard = self.upstream.connect(target, headers, &init).await?;
                self.listen(caller, target, headers, &mut guard).await;
                self.remember(caller.session_id, key, &guard).await;
                // A stateless upstream has no session level (it is set per request).
                if !is_stateless(guard.state()) {
                    self.tell_new_link(caller, target, headers, &guard).await;
                }
            }
            guard.clone()
        };
        Ok((cell, link, init))
    }

    /// Connects the session to an HTTP `target` ahead of any call, so what the upstream says
    /// outside calls (list changes) reaches the session from now on.
    pub(crate) async fn warm_link(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
    ) -> Result<(), UpstreamError> {
        if matches!(
            target.upstream,
            Upstream::Stdio { .. } | Upstream::Kubernetes { .. }
        ) {
            return Ok(());
        }
        let creds = self.caller_credentials(caller, target, "-").await?;
        let headers = self.call_headers(caller, target, &creds)?;
        self.link_for(caller, target, &headers).await.map(|_| ())
    }

    /// A link just initialized for a session that set a log level hears it before anything
    /// else; a refusal is logged (the upstream may not do logging).
    async fn tell_new_link(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
        headers: &InjectedHeaders,
        link: &Link,
    ) {
        let Some(params) = Self::level_for_new_link(caller) else {
            return;
        };
        let none = CallHooks::default();
        match self
            .upstream
            .send(
                target,
                headers,
                link,
                "logging/setLevel",
                Some(&params),
                &none,
            )
            .await
        {
            Ok(reply) if reply.contains_key("error") => {
                tracing::debug!(target = %caller.target_key, "upstream refused logging/setLevel")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(target = %caller.target_key, error = %e, label = e.label(), "logging/setLevel not passed on")
            }
        }
    }

    /// The caller's credential headers and, where the Target opted in, forwarded identity.
    pub(crate) fn call_headers(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
        creds: &ResolvedCredentials,
    ) -> Result<InjectedHeaders, UpstreamError> {
        let mut headers = InjectedHeaders::open(creds, &self.key)?;
        if let Some(forwarding) = &target.identity_forwarding {
            let forwarded = self
                .signer
                .headers(forwarding, caller.identity, caller.target_key)
                .map_err(|e| UpstreamError::Identity(e.to_string()))?;
            for (name, value) in forwarded {
                headers.insert(name, value);
            }
        }
        Ok(headers)
    }

    /// Opens a new Streamable HTTP link's GET stream: what the upstream says outside any request
    /// goes to this session's GET stream (the stream stops with the link). The link is used only
    /// once the upstream has answered the open (bounded by the connect timeout): a server that
    /// asks the client from a tool on that stream drops the request while no stream is open.
    async fn listen(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
        headers: &InjectedHeaders,
        link: &mut Link,
    ) {
        if link.transport() != Some(Transport::StreamableHttp) {
            return;
        }
        let deliver = self.to_session(caller);
        if let Some(mut listener) = self.upstream.listen(target, headers, link.state(), deliver) {
            let limit = std::time::Duration::from_millis(u64::from(target.timeouts.connect_ms));
            listener.opened(limit).await;
            link.attach(listener);
        }
    }

    /// Where what an upstream says outside any call goes: the caller's session (its GET stream).
    pub(crate) fn to_session(&self, caller: &Caller<'_>) -> Deliver {
        self.upstream
            .deliver_to(caller.session_id, caller.target_key.clone())
    }

    /// Records upstream state in the session record (so another replica could resume it); a
    /// legacy SSE link is bound to its stream, so there is nothing to record for it.
    async fn remember(&self, session_id: &str, target_key: &str, link: &Link) {
        if !link.is_resumable() {
            return;
        }
        if let Ok(Some(s)) = self.sessions.get(session_id).await {
            let mut s = crate::session::Session::clone(&s);
            s.upstreams
                .insert(target_key.to_owned(), UpstreamState::clone(link.state()));
            let _ = self.sessions.put(s).await;
        }
    }
}

/// What the gateway declares to an HTTP upstream: the relayable capabilities its client has.
pub(crate) fn relayable_capabilities(client: &Value) -> Value {
    let mut out = Map::new();
    for cap in ["sampling", "elicitation", "roots"] {
        if let Some(v) = client.get(cap) {
            out.insert(cap.to_owned(), v.clone());
        }
    }
    Value::Object(out)
}
