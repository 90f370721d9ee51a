//! Calls to `kubernetes` Targets: the caller's isolation key (as for STDIO children) names the
//! MCPInstance the controller ensures; the call goes to its endpoint as Streamable HTTP with the
//! bridge token, once more after re-ensuring when a cached instance stopped answering.

use http::HeaderValue;
use reflow_crds::api::InstanceIdentity;
use reflow_crds::instance_wire::EnsureRequest;
use reflow_crds::snapshot::{CompiledTarget, ResolvedCredentials};
use serde_json::{Map, Value, json};
use tracing::{debug, instrument};

use super::Gateway;
use super::forward::Caller;
use crate::upstream::stdio::IsolationKey;
use crate::upstream::{CallHooks, InitParams, UpstreamError, instance};

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
    pub(super) async fn forward_instance(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
        creds: &ResolvedCredentials,
        (method, params): (&str, Option<&Value>),
        hooks: &CallHooks,
    ) -> Result<Map<String, Value>, UpstreamError> {
        // The same key a STDIO child would get, so both transports isolate alike; the
        // credential fingerprint is part of it and of the instance name.
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
        let base = self.call_headers(caller, target, creds)?;
        // An instance's upstream session is shared by every session with its key (like a
        // STDIO child), so it is told every relayable capability; refusal is per session.
        let init = InitParams {
            protocol_version: caller.handshake_version().to_owned(),
            capabilities: json!({"sampling": {}, "elicitation": {}, "roots": {}}),
            stateless_client: false,
        };
        let mut retried = false;
        loop {
            let inst = self.instances.ready(target, &req).await?;
            let mut headers = base.clone();
            if let Some(token) = inst.bridge_token() {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| UpstreamError::Credential)?;
                value.set_sensitive(true);
                headers.insert(http::header::AUTHORIZATION, value);
            }
            let out = async {
                let mut state = {
                    let mut shared = inst.state.lock().await;
                    if !shared.initialized {
                        *shared = self
                            .upstream
                            .initialize(&inst.target, &headers, &init)
                            .await?;
                    }
                    shared.clone()
                };
                let before = state.clone();
                let reply = self
                    .upstream
                    .call(
                        &inst.target,
                        &headers,
                        &mut state,
                        &init,
                        (method, params),
                        hooks,
                    )
                    .await?;
                if state != before {
                    *inst.state.lock().await = state;
                }
                Ok(reply)
            }
            .await;
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
}
