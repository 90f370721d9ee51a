//! The gate before a call to a Target whose users bring their own credential: a caller whose
//! resolved credentials lack the `userCredential` slot is sent to a connect link instead of
//! reaching the upstream: `-32042` (URL elicitation required) for clients that declared URL
//! elicitation, a tool error carrying the link for the others.

use std::sync::Arc;

use reflow_crds::snapshot::CompiledTarget;
use reflow_crds::snapshot::UserCredentialMode;
use serde_json::{Value, json};
use tracing::Instrument;

use super::Gateway;
use super::call::{Ctx, Reply};
use crate::audit::{AuditEvent, now_ms};
use crate::connect::LinkGrant;
use crate::jsonrpc;

/// MCP 2025-11-25: the request needs the user to visit a URL first.
pub const URL_ELICITATION_REQUIRED: i64 = -32042;
/// Where the connect pages are served.
pub const CONNECT_PATH: &str = "/connect";

/// Whether the client declared URL-mode elicitation (`capabilities.elicitation.url`).
fn wants_url_elicitation(caps: &Value) -> bool {
    caps.pointer("/elicitation/url")
        .is_some_and(Value::is_object)
}

impl Gateway {
    /// `None`: go on to the upstream. `Some(reply)`: the caller must connect first.
    pub(crate) fn connect_gate(
        &self,
        ctx: &Ctx,
        req_id: &Value,
        target: &CompiledTarget,
        key: &Arc<str>,
        name: &str,
    ) -> Option<Reply> {
        let u = target.user_credential.as_ref()?;
        let resolved = target.credentials.resolve(&ctx.identity);
        if resolved.entries.iter().any(|e| u.is_slot(&e.entry)) {
            return None;
        }
        if u.mode == UserCredentialMode::TokenExchange {
            return self.token_exchange_gate(ctx, req_id, target, key);
        }
        let tool_error = |text: String| {
            jsonrpc::result(
                req_id,
                json!({"content": [{"type": "text", "text": text}], "isError": true}),
            )
        };
        let connectable = matches!(
            u.mode,
            UserCredentialMode::Secret | UserCredentialMode::OAuth2
        );
        if !connectable || self.connections.is_none() {
            // Fail closed: never call the upstream without the caller's own credential.
            self.audit_connect(ctx, key, name, "connect_unavailable");
            return Some(Reply::new(
                tool_error(format!(
                    "{} needs your own {} credential, and this gateway cannot connect it yet (mode {}{})",
                    u.display_name,
                    u.display_name,
                    u.mode.as_str(),
                    if self.connections.is_none() {
                        ", no connection store"
                    } else {
                        ""
                    }
                )),
                Some(key.clone()),
                "connect_unavailable",
            ));
        }
        let link = self.connect_links.mint(LinkGrant {
            user: ctx.identity.user.to_string(),
            namespace: target.namespace.to_string(),
            target: target.name.to_string(),
        });
        let base = self
            .config
            .public_url
            .as_deref()
            .map(|u| u.trim_end_matches('/'))
            .unwrap_or_default();
        let url = format!("{base}{CONNECT_PATH}/{link}");
        let message = format!(
            "Connect your {} account to use {name}: open {url} (single use, valid 10 minutes), then call again.",
            u.display_name
        );
        self.audit_connect(ctx, key, name, "connect_required");
        let reply = if wants_url_elicitation(&ctx.session.client_capabilities) {
            let mut e = jsonrpc::error(req_id, URL_ELICITATION_REQUIRED, &message);
            e["error"]["data"] = json!({"elicitations": [{
                "mode": "url",
                "elicitationId": uuid::Uuid::new_v4().to_string(),
                "url": url,
                "message": message,
            }]});
            e
        } else {
            tool_error(message)
        };
        Some(Reply::new(reply, Some(key.clone()), "connect_required"))
    }

    /// The bounded OAuth client every authorization-server request goes through.
    pub(crate) fn oauth_http(&self) -> reflow_oauth::OAuthHttp {
        self.oauth.http.clone()
    }

    pub(crate) fn connect_flows(&self) -> &crate::connect::Flows {
        &self.oauth.flows
    }

    pub(crate) fn oauth_clients(
        &self,
    ) -> &std::sync::Mutex<std::collections::HashMap<String, reflow_oauth::RegisteredClient>> {
        &self.oauth.clients
    }

    /// The grants' refresher and disconnect (standalone mode with a connection store).
    pub fn grants(&self) -> Option<&Arc<crate::connect::Grants>> {
        self.oauth.grants.as_ref()
    }

    /// A user's disconnect from a Target: standalone, this gateway's grants revoke at the AS
    /// and forget; in controller mode the controller revokes and deletes the Secret and
    /// Credential.
    pub async fn disconnect_connection(
        &self,
        ns: &str,
        target: &str,
        user: &str,
    ) -> Result<crate::connect::Disconnected, crate::connect::ConnectError> {
        if let Some(grants) = self.grants() {
            return grants.disconnect(ns, target, user).await;
        }
        let Some(store) = &self.connections else {
            return Ok(crate::connect::Disconnected {
                existed: false,
                revoked: None,
            });
        };
        let key = reflow_crds::grant::GrantKey {
            namespace: ns.to_owned(),
            target: target.to_owned(),
            user: user.to_owned(),
        };
        store.disconnect(&key).await
    }

    /// Controller mode keeps no local list: whether the snapshot carries `user`'s own value for
    /// `target` as the controller writes it (a user-brought Credential under the grant's fixed
    /// name). What every dataplane already receives, so listing adds no API and no trust.
    pub fn connected_in_snapshot(target: &CompiledTarget, user: &str) -> bool {
        let name = reflow_crds::grant::GrantKey {
            namespace: target.namespace.to_string(),
            target: target.name.to_string(),
            user: user.to_owned(),
        }
        .object_name();
        target.credentials.all().iter().any(|c| {
            *c.credential == *name
                && matches!(&c.subject, reflow_crds::snapshot::CredentialMatch::UserBrought(u) if **u == *user)
        })
    }

    pub(crate) fn sealing_key(&self) -> &reflow_crds::SealingKey {
        &self.key
    }

    /// After an upstream 401 on a Target whose users bring an oauth2 grant: refreshes the
    /// caller's grant (unless it was renewed since `since_ms`) and answers the Target from the
    /// snapshot that carries the new token, for one retry. `None`: nothing to retry with.
    pub(crate) async fn refreshed_after_401(
        &self,
        identity: &reflow_crds::Identity,
        target: &CompiledTarget,
        since_ms: u128,
    ) -> Option<Arc<CompiledTarget>> {
        let u = target.user_credential.as_ref()?;
        if u.mode != UserCredentialMode::OAuth2 {
            return None;
        }
        let grants = self.grants()?;
        let before = target.credentials.resolve(identity).fingerprint;
        let mut applied = self.snapshots.subscribe();
        let since = u64::try_from(since_ms).unwrap_or(u64::MAX);
        let done = grants
            .refresh(&target.namespace, &target.name, &identity.user, Some(since))
            .await
            .ok()?;
        if done == crate::connect::Refreshed::NotFound {
            return None;
        }
        // The folder watch recompiles the store: wait (bounded) for a snapshot whose credentials
        // for this caller differ from the refused ones.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let snapshot = self.snapshots.load();
            if let Some(t) = snapshot.target(&target.namespace, &target.name) {
                let now = t.credentials.resolve(identity);
                if now.fingerprint != before {
                    // Retry only with the caller's own (new) value in the slot.
                    return now
                        .entries
                        .iter()
                        .any(|e| u.is_slot(&e.entry))
                        .then(|| t.clone());
                }
            }
            if !matches!(
                tokio::time::timeout_at(deadline, applied.changed()).await,
                Ok(Ok(()))
            ) {
                return None;
            }
        }
    }

    /// An upstream refused a user's oauth2 token (401): ask whoever refreshes it (the
    /// controller's lease holder in controller mode) to refresh it now, off the request path.
    pub(crate) fn upstream_refused_grant(
        &self,
        identity: &reflow_crds::Identity,
        target: &CompiledTarget,
    ) {
        let _ = self.forget_exchanged(identity, target);
        let (Some(u), Some(store)) = (target.user_credential.as_ref(), self.connections.clone())
        else {
            return;
        };
        if u.mode != UserCredentialMode::OAuth2 {
            return;
        }
        let key = reflow_crds::grant::GrantKey {
            namespace: target.namespace.to_string(),
            target: target.name.to_string(),
            user: identity.user.to_string(),
        };
        tokio::spawn(
            async move { store.upstream_refused(&key).await }.instrument(tracing::Span::current()),
        );
    }

    fn audit_connect(&self, ctx: &Ctx, key: &Arc<str>, name: &str, outcome: &str) {
        self.audit.record(AuditEvent {
            id: crate::audit::new_event_id(),
            time_ms: now_ms(),
            user: ctx.identity.user.to_string(),
            session: Some(ctx.session.id.clone()),
            method: "tools/call".to_owned(),
            target: Some(key.to_string()),
            name: Some(name.to_owned()),
            decision: Some("allow"),
            policy: None,
            outcome: outcome.to_owned(),
            duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
            trace_id: ctx.trace_id.clone(),
        });
    }
}
