//! The built-in `reflow_connections` tool: a user lists the accounts they connected to Targets
//! with `spec.userCredential` (never a value) and disconnects one (which revokes an oauth2
//! grant at the upstream's authorization server where it offers RFC 7009). Shown on the
//! aggregated endpoint only, and only when some Target the caller reaches has a
//! `userCredential` and this gateway keeps connections.

use std::sync::Arc;

use reflow_crds::snapshot::CompiledTarget;
use serde_json::{Value, json};

use super::Gateway;
use super::call::{Ctx, Reply};
use crate::audit::{AuditEvent, now_ms};
use crate::jsonrpc::{self, Request};

pub const NAME: &str = "reflow_connections";

pub fn definition() -> Value {
    json!({
        "name": NAME,
        "title": "Your connected accounts",
        "description": "Lists the upstream accounts you connected to this gateway (never their tokens), or disconnects one: {\"action\":\"disconnect\",\"target\":\"namespace/name\"} forgets it and revokes it at the upstream where supported.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "action": {"type": "string", "enum": ["list", "disconnect"], "default": "list"},
                "target": {"type": "string", "description": "namespace/name of the Target (for disconnect)"}
            }
        },
        "annotations": {"destructiveHint": true, "idempotentHint": true, "openWorldHint": true}
    })
}

fn text_result(id: &Value, text: String, is_error: bool) -> Value {
    jsonrpc::result(
        id,
        json!({"content": [{"type": "text", "text": text}], "isError": is_error}),
    )
}

impl Gateway {
    pub(crate) fn connections_tool_visible(
        &self,
        ctx: &Ctx,
        targets: &[Arc<CompiledTarget>],
    ) -> bool {
        ctx.aggregated()
            && self.connections.is_some()
            && targets.iter().any(|t| t.user_credential.is_some())
    }

    pub(crate) async fn connections_tool_call(
        &self,
        ctx: &Ctx,
        req: &Request,
        targets: &[Arc<CompiledTarget>],
    ) -> Reply {
        let args = req
            .params()
            .and_then(|p| p.get("arguments"))
            .cloned()
            .unwrap_or(Value::Null);
        let action = args.get("action").and_then(Value::as_str).unwrap_or("list");
        let user = ctx.identity.user.to_string();
        let (reply, outcome) = match action {
            "list" => (
                text_result(&req.id, self.list_connections(&user, targets), false),
                "ok",
            ),
            "disconnect" => {
                let wanted = args.get("target").and_then(Value::as_str).unwrap_or("");
                let (text, is_error, outcome) = self.disconnect_tool(&user, wanted, targets).await;
                (text_result(&req.id, text, is_error), outcome)
            }
            other => (
                jsonrpc::invalid_params(
                    &req.id,
                    &format!("unknown action {other:?} (list or disconnect)"),
                ),
                "invalid_params",
            ),
        };
        self.audit.record(AuditEvent {
            id: crate::audit::new_event_id(),
            time_ms: now_ms(),
            user,
            session: Some(ctx.session.id.clone()),
            method: "tools/call".to_owned(),
            target: None,
            name: Some(NAME.to_owned()),
            decision: Some("allow"),
            policy: None,
            outcome: format!("connections_{outcome}"),
            duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
            trace_id: ctx.trace_id.clone(),
        });
        Reply::new(reply, None, "ok")
    }

    /// `{"action": "disconnect", "target": "ns/name"}`: the text, whether it is an error, and
    /// the audit outcome.
    async fn disconnect_tool(
        &self,
        user: &str,
        wanted: &str,
        targets: &[Arc<CompiledTarget>],
    ) -> (String, bool, &'static str) {
        let target = targets.iter().find(|t| {
            t.user_credential.is_some() && format!("{}/{}", t.namespace, t.name) == wanted
        });
        let (Some(t), true) = (target, self.connections.is_some()) else {
            return (
                format!(
                    "No Target {wanted:?} with a userCredential is open to you; use action list."
                ),
                true,
                "unknown",
            );
        };
        let mut applied = self.snapshots.subscribe();
        let done = self
            .disconnect_connection(&t.namespace, &t.name, user)
            .await;
        if done.as_ref().is_ok_and(|d| d.existed) {
            // Answer once the recompiled snapshot no longer carries the value.
            let wait = std::time::Duration::from_secs(5);
            let _ = tokio::time::timeout(wait, applied.changed()).await;
        }
        match done {
            Ok(d) if d.existed => {
                let how = match d.revoked {
                    Some(true) => " and revoked the grant upstream",
                    Some(false) => " (the upstream did not confirm the revocation)",
                    None => "",
                };
                (
                    format!("Disconnected {wanted}{how}."),
                    false,
                    "disconnected",
                )
            }
            Ok(_) => (
                format!("You have no connection to {wanted}."),
                false,
                "not_connected",
            ),
            Err(e) => (
                format!("Disconnecting {wanted} failed: {e}"),
                true,
                e.label(),
            ),
        }
    }

    /// One line per Target with a userCredential the caller reaches: connected or not, when,
    /// and (oauth2) until when the current access token runs.
    fn list_connections(&self, user: &str, targets: &[Arc<CompiledTarget>]) -> String {
        // The local folder (standalone); in controller mode the snapshot, which carries no
        // times (the controller keeps them sealed in the grant's Secret).
        let store = self.grants().map(|g| g.store());
        let rows: Vec<Value> = targets
            .iter()
            .filter_map(|t| t.user_credential.as_ref().map(|u| (t, u)))
            .map(|(t, u)| {
                let Some(store) = store else {
                    return json!({
                        "target": format!("{}/{}", t.namespace, t.name),
                        "displayName": u.display_name.as_ref(),
                        "mode": u.mode.as_str(),
                        "connected": Self::connected_in_snapshot(t, user),
                    });
                };
                let c = store.get(&t.namespace, &t.name, user);
                json!({
                    "target": format!("{}/{}", t.namespace, t.name),
                    "displayName": u.display_name.as_ref(),
                    "mode": u.mode.as_str(),
                    "connected": c.is_some(),
                    "connectedAtMs": c.as_ref().map(|c| c.connected_at_ms),
                    "expiresAtMs": c.as_ref().and_then(|c| c.oauth.as_ref()).and_then(|g| g.expires_at_ms),
                })
            })
            .collect();
        serde_json::to_string_pretty(&rows).unwrap_or_default()
    }
}
