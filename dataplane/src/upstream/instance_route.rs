//! Calls to `kubernetes` Targets: the caller's isolation key (as for STDIO children) names the
//! MCPInstance the controller ensures; the call goes to its endpoint as Streamable HTTP with the
//! bridge token. The instance's upstream session is shared by every session with its key
//! (initialized once, told every relayable capability); a cached instance that stopped
//! answering is ensured again (`renew`).

use std::sync::Arc;

use http::HeaderValue;
use reflow_crds::api::InstanceIdentity;
use reflow_crds::instance_wire::EnsureRequest;
use reflow_crds::snapshot::{CompiledTarget, ResolvedCredentials};
use serde_json::{Value, json};
use tracing::{debug, instrument, warn};

use super::caller::Caller;
use super::handshake::{SET_LEVEL, level_params};
use super::instance::{self, Instance};
use super::stdio::IsolationKey;
use super::upstreams::Upstreams;
use super::{CallHooks, InitParams, InjectedHeaders, UpstreamError};
use crate::jsonrpc::UpstreamReply;
use crate::log_level::LogLevel;

/// Answers meaning the cached instance is gone or replaced (pod deleted, new token): ensure
/// again. Anything else is the server's own answer and goes back to the client.
fn stale(e: &UpstreamError) -> bool {
    matches!(
        e,
        UpstreamError::Connect | UpstreamError::Status(401 | 403 | 404 | 502 | 503)
    )
}

/// A call's ready instance, with the headers that reach it.
pub struct InstanceRoute<'a> {
    up: &'a Upstreams,
    target: &'a CompiledTarget,
    req: EnsureRequest,
    key: IsolationKey,
    /// The caller's headers, before the instance's bridge token.
    base: InjectedHeaders,
    inst: Arc<Instance>,
    headers: InjectedHeaders,
    init: InitParams,
}

impl Upstreams {
    #[instrument(skip_all, name = "forward_instance", fields(target = %caller.target_key))]
    pub(super) async fn instance_route<'a>(
        &'a self,
        caller: &'a Caller<'a>,
        target: &'a CompiledTarget,
        creds: &ResolvedCredentials,
        base: InjectedHeaders,
    ) -> Result<InstanceRoute<'a>, UpstreamError> {
        let (key, req) = ensure_request(caller, target, creds);
        // An instance's upstream session is shared by every session with its key (like a
        // STDIO child), so it is told every relayable capability; refusal is per session.
        let init = InitParams {
            protocol_version: caller.handshake_version().to_owned(),
            capabilities: json!({"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {}}),
            stateless_client: false,
        };
        let inst = self.instances.ready(target, &req).await?;
        let headers = with_bridge_token(&base, &inst)?;
        Ok(InstanceRoute {
            up: self,
            target,
            req,
            key,
            base,
            inst,
            headers,
            init,
        })
    }

    /// `method` to an instance outside any call of it (a session ended, or set a level): sent
    /// only if the instance is still cached here; one that is not has been replaced or
    /// stopped, and a new one starts from scratch anyway.
    pub async fn instance_request<H>(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
        creds: &ResolvedCredentials,
        headers: impl FnOnce() -> H,
        (method, params): (&str, &Value),
    ) -> Result<(), UpstreamError>
    where
        H: std::future::Future<Output = Result<InjectedHeaders, UpstreamError>>,
    {
        let (_, req) = ensure_request(caller, target, creds);
        let Some(inst) = self.instances.cached(&req).await else {
            return Ok(());
        };
        let headers = with_bridge_token(&headers().await?, &inst)?;
        let state = inst.state.lock().await.clone();
        if !state.initialized {
            return Ok(());
        }
        self.client
            .request(
                &inst.target,
                &headers,
                &state,
                method,
                Some(params),
                caller.hooks,
            )
            .await
            .map(drop)
    }
}

impl InstanceRoute<'_> {
    /// How shared state on this instance is counted: `instance:<name>`.
    pub fn label(&self) -> String {
        format!("instance:{}", self.inst.name)
    }

    /// The isolation key the instance serves.
    pub fn key(&self) -> &IsolationKey {
        &self.key
    }

    pub async fn send(
        &self,
        method: &str,
        params: Option<&Value>,
        hooks: &CallHooks,
    ) -> Result<UpstreamReply, UpstreamError> {
        self.send_at(None, (method, params), hooks).await
    }

    /// One call on the instance: its shared upstream session initialized once, `tell` (the
    /// caller's log level, when it changed) passed on first; a successful call is reported to
    /// the controller as use.
    pub async fn send_at(
        &self,
        tell: Option<LogLevel>,
        (method, params): (&str, Option<&Value>),
        hooks: &CallHooks,
    ) -> Result<UpstreamReply, UpstreamError> {
        let (client, inst, headers) = (&self.up.client, &self.inst, &self.headers);
        let mut state = {
            let mut shared = inst.state.lock().await;
            if !shared.initialized {
                *shared = client.initialize(&inst.target, headers, &self.init).await?;
            }
            shared.clone()
        };
        if let Some(level) = tell {
            // Before the call, so what it logs is already at the new level.
            let params = level_params(level);
            let none = CallHooks::default();
            if let Err(e) = client
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
        let reply = client
            .call(
                &inst.target,
                headers,
                &mut state,
                &self.init,
                (method, params),
                hooks,
            )
            .await?;
        if state != before {
            *inst.state.lock().await = state;
        }
        self.up.instances.report_used(inst);
        Ok(reply)
    }

    /// After `error`: whether the instance stopped answering (replaced, deleted), in which
    /// case it is forgotten and ensured again, and this route now reaches the new one.
    pub async fn renewed_after(&mut self, error: &UpstreamError) -> Result<bool, UpstreamError> {
        if !stale(error) {
            return Ok(false);
        }
        debug!(instance = %self.inst.name, error = %error, "instance stopped answering; ensuring again");
        let instances = &self.up.instances;
        instances.forget(&self.req, &self.inst).await;
        self.inst = instances.ready(self.target, &self.req).await?;
        self.headers = with_bridge_token(&self.base, &self.inst)?;
        Ok(true)
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
    inst: &Instance,
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
