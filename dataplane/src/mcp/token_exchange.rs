//! `userCredential.mode: tokenExchange` on the request path: every request to such a Target
//! (calls, lists, reads) carries a token the caller's IdP issued for the Target's `audience`,
//! exchanged from the caller's own bearer token (`connect::exchange`). Fail closed: no
//! exchanged token, no upstream request. An admin's Credential for that very user still fills
//! the slot first (the documented precedence); nothing else does.

use std::sync::Arc;

use reflow_crds::snapshot::UserCredentialMode;
use reflow_crds::snapshot::{
    CompiledTarget, CompiledTokenExchange, CompiledUserCredential, ResolvedCredentials, SealedEntry,
};
use reflow_oauth::exchange::ExchangeRequest;
use reflow_oauth::{ClientAuth, TokenClient};
use serde_json::{Value, json};
use tracing::warn;

use super::Gateway;
use super::call::{Ctx, Reply};
use crate::audit::{AuditEvent, now_ms};
use crate::connect::exchange::{
    ExchangeCall, ExchangeError, ExchangeKey, SubjectToken, same_origin, seal_entry, with_entry,
};
use crate::jsonrpc;
use crate::upstream::Caller;
use crate::upstream::UpstreamError;

/// The Target's slot and exchange settings when its users' tokens are exchanged.
fn exchanged_slot(
    target: &CompiledTarget,
) -> Option<(&CompiledUserCredential, &CompiledTokenExchange)> {
    let u = target.user_credential.as_ref()?;
    if u.mode != UserCredentialMode::TokenExchange {
        return None;
    }
    Some((u, u.token_exchange.as_ref()?))
}

/// What must hold before anything is sent: a verified bearer token, issued on the origin of
/// the token endpoint.
pub(crate) fn precheck<'a>(
    subject: Option<&'a SubjectToken>,
    x: &CompiledTokenExchange,
) -> Result<&'a SubjectToken, ExchangeError> {
    let subject = subject
        .filter(|s| s.is_bearer())
        .ok_or(ExchangeError::NoBearer)?;
    if !same_origin(subject.issuer(), &x.token_endpoint) {
        return Err(ExchangeError::OtherIssuer {
            issuer: subject.issuer().to_owned(),
            endpoint: x.token_endpoint.to_string(),
        });
    }
    Ok(subject)
}

impl Gateway {
    /// What a request to `target` carries for `caller`: the resolved credentials and, on a
    /// `tokenExchange` Target whose slot no admin Credential fills for this user, the caller's
    /// exchanged token in the slot. An error means the upstream must not be called.
    pub(crate) async fn caller_credentials(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
        method: &str,
    ) -> Result<ResolvedCredentials, UpstreamError> {
        let creds = target.credentials.resolve(caller.identity);
        let Some((u, x)) = exchanged_slot(target) else {
            return Ok(creds);
        };
        if creds.entries.iter().any(|e| u.is_slot(&e.entry)) {
            return Ok(creds);
        }
        match self.exchanged_entry(caller, target, (u, x)).await {
            Ok((entry, fresh)) => {
                if fresh {
                    self.audit_exchange(caller, method, "token_exchanged");
                }
                Ok(with_entry(creds, entry))
            }
            Err(e) => {
                self.audit_exchange(caller, method, "token_exchange_failed");
                warn!(target = %caller.target_key, user = %caller.identity.user, label = e.label(), error = %e, "token exchange failed; the upstream is not called");
                Err(UpstreamError::TokenExchange(format!(
                    "{}: {e}",
                    u.display_name
                )))
            }
        }
    }

    async fn exchanged_entry(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
        (u, x): (&CompiledUserCredential, &CompiledTokenExchange),
    ) -> Result<(SealedEntry, bool), ExchangeError> {
        let subject = precheck(caller.subject, x)?;
        let user = &caller.identity.user;
        let key = ExchangeKey::new(caller.target_key, u, x, user, subject);
        if let Some(entry) = self.exchanges.get(&key) {
            return Ok((entry, false));
        }
        let secret =
            match &x.client.client_secret {
                Some(s) => Some(self.key.open(&s.aad, &s.value).map_err(|_| {
                    ExchangeError::Client("the client secret does not open".into())
                })?),
                None => None,
            };
        let client = TokenClient::new(
            self.exchanges.http().clone(),
            &x.token_endpoint,
            None,
            ClientAuth::choose(&x.client.client_id, secret, &[]),
        )
        .map_err(|e| ExchangeError::Client(e.to_string()))?;
        let scopes: Vec<String> = x.scopes.iter().map(|s| s.to_string()).collect();
        let seal = |token: &reflow_oauth::SecretString| {
            seal_entry(&self.key, (&target.namespace, &target.name), user, u, token)
        };
        let call = ExchangeCall {
            client: &client,
            subject,
            request: ExchangeRequest {
                audience: &x.audience,
                scopes: &scopes,
                resource: None,
            },
            seal: &seal,
        };
        self.exchanges.get_or_exchange(&key, call).await
    }

    /// The `tools/call` gate of a `tokenExchange` Target: no connect link (there is nothing to
    /// connect), but a caller whose token cannot be exchanged here gets a tool error at once.
    pub(crate) fn token_exchange_gate(
        &self,
        ctx: &Ctx,
        req_id: &Value,
        target: &CompiledTarget,
        key: &Arc<str>,
    ) -> Option<Reply> {
        let (u, x) = exchanged_slot(target)?;
        let e = precheck(ctx.subject.as_ref(), x).err()?;
        self.audit.record(AuditEvent {
            id: crate::audit::new_event_id(),
            time_ms: now_ms(),
            user: ctx.identity.user.to_string(),
            session: Some(ctx.session.id.clone()),
            method: "tools/call".to_owned(),
            target: Some(key.to_string()),
            name: None,
            decision: Some("allow"),
            policy: None,
            outcome: "token_exchange_unavailable".to_owned(),
            duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
            trace_id: ctx.trace_id.clone(),
        });
        let text = format!("{} needs a token for you, and {e}.", u.display_name);
        Some(Reply::new(
            jsonrpc::result(
                req_id,
                json!({"content": [{"type": "text", "text": text}], "isError": true}),
            ),
            Some(key.clone()),
            "token_exchange_unavailable",
        ))
    }

    /// The upstream refused an exchanged token (401): the next request exchanges anew.
    /// Whether a kept token was forgotten (then a retry gets a new one).
    pub(crate) fn forget_exchanged(
        &self,
        identity: &reflow_crds::Identity,
        target: &CompiledTarget,
    ) -> bool {
        exchanged_slot(target).is_some() && self.exchanges.forget(&target.key(), &identity.user) > 0
    }

    fn audit_exchange(&self, caller: &Caller<'_>, method: &str, outcome: &str) {
        self.audit.record(AuditEvent {
            id: crate::audit::new_event_id(),
            time_ms: now_ms(),
            user: caller.identity.user.to_string(),
            session: Some(caller.session_id.to_owned()),
            method: method.to_owned(),
            target: Some(caller.target_key.to_string()),
            name: None,
            decision: None,
            policy: None,
            outcome: outcome.to_owned(),
            duration_ms: 0.0,
            trace_id: caller.trace_id.to_owned(),
        });
    }
}
