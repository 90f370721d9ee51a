//! Calls to `kubernetes` Targets: the caller's isolation key (as for STDIO children) names the
//! MCPInstance the controller ensures; the call goes to its endpoint as Streamable HTTP with the
//! bridge token, once more after re-ensuring when a cached instance stopped answering. The
//! instance's upstream session is shared, so resource subscriptions on it are counted.

use http::HeaderValue;
use reflow_crds::api::InstanceIdentity;
use reflow_crds::instance_wire::EnsureRequest;
use std::sync::Arc;

use reflow_crds::snapshot::{CompiledTarget, ResolvedCredentials};
use serde_json::{Value, json};
use tracing::{debug, instrument, warn};

use super::Gateway;
use super::forward::Caller;
use super::log_fanout::{SET_LEVEL, level_params};
use super::subscriptions::{Holder, Joined, Left, SUBSCRIBE, UNSUBSCRIBE, empty_result};
use crate::upstream::stdio::IsolationKey;
use crate::upstream::{CallHooks, InitParams, InjectedHeaders, UpstreamError, instance};

/// Answers meaning the cached instance is gone or replaced (pod deleted, new token): ensure
/// again. Anything else is the server's own answer and goes back to the client.
fn stale(e: &UpstreamError) -> bool {
    matches!(
        e,
        UpstreamError::Connect | UpstreamError::Status(401 | 403 | 404 | 502 | 503)
    )
}

impl Gateway {
    #[instrument(skip_all, fields(target = %caller.target_key, method))]
    pub(crate) async fn forward_instance(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
        creds: &ResolvedCredentials,
        (method, params): (&str, Option<&Value>),
        hooks: &CallHooks,
    ) -> Result<crate::jsonrpc::UpstreamReply, UpstreamError> {
        let (key, req) = ensure_request(caller, target, creds);
        let base = self.call_headers(caller, target, creds)?;
        let uri = params
            .and_then(|p| p.get("uri"))
            .and_then(Value::as_str)
            .filter(|_| matches!(method, SUBSCRIBE | UNSUBSCRIBE));
        // An instance's upstream session is shared by every session with its key (like a
        // STDIO child), so it is told every relayable capability; refusal is per session.
        let init = InitParams {
            protocol_version: caller.handshake_version().to_owned(),
            capabilities: json!({"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {}}),
            stateless_client: false,
        };
        let mut retried = false;
        loop {
            let inst = self.instances.ready(target, &req).await?;
            let headers = with_bridge_token(&base, &inst)?;
            let counted = format!("instance:{}", inst.name);
            // A retried unsubscribe was counted already; a retried subscribe was undone.
            if let Some(uri) = uri
                && (method == SUBSCRIBE || !retried)
                && self.count_instance_subscription(caller, (&counted, &key), method, uri)
            {
                return Ok(empty_result().into());
            }
            let holder = || Holder::Instance {
                target: caller.target_key.clone(),
                identity: caller.identity.clone(),
            };
            let tell = self.child_levels.attach(
                (&counted, holder),
                &key,
                caller.session_id,
                caller.log_level,
            );
            let out = self
                .call_instance(&inst, &headers, &init, tell, (method, params), hooks)
                .await;
            if let Some(uri) = uri
                && method == SUBSCRIBE
                && !matches!(&out, Ok(reply) if reply.contains_key("result"))
            {
                self.subscriptions.leave(&counted, uri, caller.session_id);
            }
            match out {
                Ok(reply) => {
                    self.instances.report_used(&inst);
                    return Ok(reply);
                }
                Err(e) if stale(&e) && !retried => {
                    debug!(instance = %inst.name, error = %e, "instance stopped answering; ensuring again");
                    self.instances.forget(&req, &inst).await;
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One call on a ready instance: its shared upstream session initialized once, the
    /// caller's log level passed on first when it changed.
    async fn call_instance(
        &self,
        inst: &instance::Instance,
        headers: &InjectedHeaders,
        init: &InitParams,
        tell: Option<crate::log_level::LogLevel>,
        (method, params): (&str, Option<&Value>),
        hooks: &CallHooks,
    ) -> Result<crate::jsonrpc::UpstreamReply, UpstreamError> {
        let mut state = {
            let mut shared = inst.state.lock().await;
            if !shared.initialized {
                *shared = self
                    .upstream
                    .initialize(&inst.target, headers, init)
                    .await?;
            }
            shared.clone()
        };
        if let Some(level) = tell {
            // Before the call, so what it logs is already at the new level.
            let params = level_params(level);
            let none = CallHooks::default();
            if let Err(e) = self
                .upstream
                .request(
                    &inst.target,
                    headers,
                    &state,
                    SET_LEVEL,
                    Some(&params),
                    &none,
                )
                .await
            {
                warn!(instance = %inst.name, error = %e, label = e.label(), "logging/setLevel not passed on");
            }
        }
        let before = state.clone();
        let reply = self
            .upstream
            .call(
                &inst.target,
                headers,
                &mut state,
                init,
                (method, params),
                hooks,
            )
            .await?;
        if state != before {
            *inst.state.lock().await = state;
        }
        Ok(reply)
    }
}

/// The caller's isolation key — the same a STDIO child would get, so both transports isolate
/// alike; the credential fingerprint is part of it and of the instance name — and the ensure
/// request naming its instance.
fn ensure_request(
    caller: &Caller<'_>,
    target: &CompiledTarget,
    creds: &ResolvedCredentials,
) -> (IsolationKey, EnsureRequest) {
    let key = IsolationKey::new(
        target,
        caller.target_key,
        caller.identity,
        creds,
        caller.session_id,
    );
    let req = EnsureRequest {
        namespace: target.namespace.to_string(),
        target: target.name.to_string(),
        isolation_key: instance::instance_key(&key),
        credential_fingerprint: Some(creds.fingerprint.to_hex()),
        identity: Some(InstanceIdentity::from_identity(caller.identity)),
    };
    (key, req)
}

/// The call's headers plus the instance's bridge token, if it has one.
fn with_bridge_token(
    base: &InjectedHeaders,
    inst: &instance::Instance,
) -> Result<InjectedHeaders, UpstreamError> {
    let mut headers = base.clone();
    if let Some(token) = inst.bridge_token() {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| UpstreamError::Credential)?;
        value.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, value);
    }
    Ok(headers)
}

impl Gateway {
    /// Counts a subscribe or unsubscribe on an instance's shared upstream session; true when
    /// it is answered here (others already subscribed, or still are).
    fn count_instance_subscription(
        &self,
        caller: &Caller<'_>,
        (counted, key): (&str, &IsolationKey),
        method: &str,
        uri: &str,
    ) -> bool {
        if method == SUBSCRIBE {
            let holder = || Holder::Instance {
                target: caller.target_key.clone(),
                identity: caller.identity.clone(),
            };
            self.subscriptions
                .join((counted, holder), key, uri, caller.session_id)
                == Joined::Again
        } else {
            self.subscriptions.leave(counted, uri, caller.session_id) == Left::Kept
        }
    }

    /// `method` to an instance outside any call of it (a session ended, or set a level): sent
    /// only if the instance is still cached here; one that is not has been replaced or
    /// stopped, and a new one starts from scratch anyway.
    pub(crate) async fn instance_request(
        &self,
        target_key: &Arc<str>,
        identity: &reflow_crds::Identity,
        session_id: &str,
        (method, params): (&str, &Value),
    ) -> Result<(), UpstreamError> {
        let snapshot = self.snapshots.load();
        let Some(target) = target_key
            .split_once('/')
            .and_then(|(ns, name)| snapshot.target(ns, name))
        else {
            return Ok(());
        };
        let creds = target.credentials.resolve(identity);
        let hooks = CallHooks::default();
        let caller = Caller {
            identity,
            target_key,
            session_id,
            seed: None,
            protocol_version: super::protocol::LATEST_PROTOCOL,
            client_capabilities: &Value::Null,
            hooks: &hooks,
            log_level: None,
            subject: None,
            trace_id: "",
        };
        let (_, req) = ensure_request(&caller, target, &creds);
        let Some(inst) = self.instances.cached(&req).await else {
            return Ok(());
        };
        let headers = with_bridge_token(&self.call_headers(&caller, target, &creds)?, &inst)?;
        let state = inst.state.lock().await.clone();
        if !state.initialized {
            return Ok(());
        }
        self.upstream
            .request(&inst.target, &headers, &state, method, Some(params), &hooks)
            .await
            .map(drop)
    }
}
