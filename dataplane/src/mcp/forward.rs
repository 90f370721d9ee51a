//! One call to one upstream on behalf of one session: timed and traced, credentials opened at
//! use time (`call_headers`), the route resolved by `upstream::Upstreams` (the transport
//! choice and the per-(session, target) link cache are the upstream layer's), and around the
//! send what the router accounts for: a shared child's or instance's subscriptions and log
//! levels, a stateless upstream's list cache and input rounds, a 401's grant refresh.

use std::time::Instant;

use reflow_crds::snapshot::{CompiledTarget, ResolvedCredentials};
use serde_json::{Map, Value};
use tracing::{Instrument, Span, info_span};

use super::Gateway;
use crate::jsonrpc::UpstreamReply;
use crate::metrics::UpstreamLabels;
use crate::upstream::route::Route;
use crate::upstream::{CallHooks, Caller, ChildRoute, InjectedHeaders, UpstreamError};

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
        // this dataplane refreshes (standalone); otherwise ask the controller's refresher. An
        // exchanged token it no longer takes: forget it and retry once with a new exchange
        // (a 401 is a refusal before the request was acted on, so the retry is safe).
        if matches!(out, Err(UpstreamError::Status(401))) {
            match self
                .refreshed_after_401(caller.identity, target, since)
                .await
            {
                Some(fresh) => out = self.forward_inner(caller, &fresh, method, params).await,
                None if self.forget_exchanged(caller.identity, target) => {
                    out = self.forward_inner(caller, target, method, params).await;
                }
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
        // Resolved (and, for a `tokenExchange` Target, exchanged) before the route: a STDIO
        // child or an instance takes the same values as env vars.
        let creds = self.caller_credentials(caller, target, method).await?;
        let hooks = CallHooks {
            sink: caller
                .hooks
                .sink
                .as_ref()
                .map(|s| s.for_target(caller.target_key.clone())),
            cancel: caller.hooks.cancel.clone(),
        };
        let opened = &creds;
        let headers = move || async move { self.call_headers(caller, target, opened) };
        match self.upstream.route(caller, target, &creds, headers).await? {
            Route::Child(child) => {
                self.call_child(caller, &child, (method, params), &hooks)
                    .await
            }
            Route::Instance(inst) => {
                self.call_instance(caller, inst, (method, params), &hooks)
                    .await
            }
            Route::Link(link) if link.is_stateless() => self
                .send_stateless(&link, (method, params), caller, &hooks)
                .await
                .map(UpstreamReply::from),
            Route::Link(link) => link.send(method, params, &hooks).await,
        }
    }

    /// A call on a STDIO child: the child learns a more verbose level first, takes over what
    /// its exited predecessors and the session's record hold, and hears a resource
    /// subscription only as its first subscriber (and an unsubscribe only as its last).
    async fn call_child(
        &self,
        caller: &Caller<'_>,
        route: &ChildRoute<'_>,
        (method, params): (&str, Option<&Value>),
        hooks: &CallHooks,
    ) -> Result<UpstreamReply, UpstreamError> {
        let (key, child) = (&route.key, &route.child);
        self.attach_child(caller, key, child).await;
        self.carry_subscriptions(key, child).await;
        let sid = caller.session_id;
        self.restore_subscriptions(sid, caller.target_key, (key, child))
            .await;
        if matches!(method, "resources/subscribe" | "resources/unsubscribe") {
            let out = self
                .stdio_subscription(caller, route, (method, params), hooks)
                .await;
            self.keep_subscription(sid, caller.target_key, (method, params), &out)
                .await;
            return out.map(UpstreamReply::from);
        }
        route.send(method, params, hooks).await
    }

    /// Connects the session to an HTTP `target` ahead of any call, so what the upstream says
    /// outside calls (list changes) reaches the session from now on.
    pub(crate) async fn warm_link(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
    ) -> Result<(), UpstreamError> {
        let headers = move || async move {
            let creds = self.caller_credentials(caller, target, "-").await?;
            self.call_headers(caller, target, &creds)
        };
        self.upstream.warm(caller, target, headers).await
    }

    /// The caller's credential headers and, where the Target opted in, forwarded identity.
    /// `Upstreams` asks for them (through an async closure) only for transports that send
    /// headers.
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
}
