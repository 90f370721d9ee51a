//! Authorization: every policy decision of the router and its audit. `Ctx::decide` is the
//! decision for one item (the token scope first, then the Target's compiled policy, whose rule
//! coverage is `reflow_crds::snapshot::covers`); calls, reads and completions are audited
//! one event each (`audit_decision`), requests outside the token scope too
//! (`audit_out_of_scope`), and lists per target (DESIGN §3 semantic 7): one `allow` event for
//! what was shown and one `deny` event per hidden item, naming the deciding Policy. Shown items
//! are summarised rather than logged one by one: a list is a read of what policy already
//! allows, and a per-item allow event would multiply the log by the catalogue size.

use std::sync::{Arc, LazyLock};

use reflow_crds::snapshot::PolicyView;
use reflow_crds::snapshot::condition::{Request as PolicyRequest, now_seconds};
use reflow_crds::{CompiledTarget, Decision, ItemKind};
use serde_json::{Map, Value};

use super::Gateway;
use super::call::Ctx;
use crate::audit::{AuditEvent, new_event_id, now_ms};
use crate::metrics::DecisionLabels;
use crate::scope::OutOfScope;

/// JSON-RPC error code for a request the caller's token scope does not permit.
pub const FORBIDDEN: i64 = -32003;

/// The decider named in audit events when a token scope, not a Policy, refused.
pub static TOKEN_SCOPE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("token-scope"));

/// The arguments of a call that sent none.
static NO_ARGS: LazyLock<Value> = LazyLock::new(|| Value::Object(Map::new()));

/// Hidden items audited one by one per (list, target); past this a single summary event says how
/// many more were hidden, so a huge upstream catalogue cannot flood the audit log.
pub(crate) const MAX_HIDDEN_EVENTS: usize = 64;

/// Outcome of the per-target summary event of a list.
pub(crate) const LISTED: &str = "listed";
/// Outcome of an item the policy hid from a list.
pub(crate) const HIDDEN: &str = "hidden";
/// Outcome of the summary of hidden items beyond [`MAX_HIDDEN_EVENTS`].
pub(crate) const HIDDEN_MORE: &str = "hidden_more";
/// Outcome when the upstream could not be listed (nothing shown, nothing decided).
pub(crate) const UNAVAILABLE: &str = "upstream_unavailable";

/// What one list call decided for one target.
#[derive(Default)]
pub(crate) struct ListDecisions {
    pub shown: usize,
    /// Name and the audited policy (with a condition's outcome when one mattered).
    hidden: Vec<(String, Option<String>)>,
    hidden_more: usize,
    pub failed: bool,
}

impl ListDecisions {
    pub fn hide(&mut self, name: &str, d: &Decision) {
        if self.hidden.len() < MAX_HIDDEN_EVENTS {
            self.hidden.push((name.to_owned(), audited_policy(d)));
        } else {
            self.hidden_more += 1;
        }
    }
}

impl Gateway {
    /// Records one list call's decisions on one target (off the hot path: the sink batches).
    pub(crate) fn audit_list(&self, ctx: &Ctx, method: &str, target: &Arc<str>, d: ListDecisions) {
        let event =
            |name: Option<String>, decision, policy: Option<String>, outcome: &str| AuditEvent {
                id: new_event_id(),
                time_ms: now_ms(),
                user: ctx.identity.user.to_string(),
                session: Some(ctx.session.id.clone()),
                method: method.to_owned(),
                target: Some(target.to_string()),
                name,
                decision,
                policy,
                outcome: outcome.to_owned(),
                duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
                trace_id: ctx.trace_id.clone(),
            };
        if d.failed {
            self.audit.record(event(None, None, None, UNAVAILABLE));
            return;
        }
        if d.shown > 0 {
            self.audit.record(event(None, Some("allow"), None, LISTED));
        }
        for (name, policy) in d.hidden {
            self.audit
                .record(event(Some(name), Some("deny"), policy, HIDDEN));
        }
        if d.hidden_more > 0 {
            self.audit
                .record(event(None, Some("deny"), None, HIDDEN_MORE));
        }
    }
}

/// The decision for one item of a list (a listing has no arguments: a condition on them
/// fails closed), with `view` the Target's policy as it applies to the caller.
pub(crate) fn listed(view: &PolicyView<'_>, kind: ItemKind, name: &str, target: &str) -> Decision {
    view.decide_request(&PolicyRequest::listing(kind, name, target))
}

impl Ctx {
    /// The policy decision for one item, narrowed by the token scope: a target outside the
    /// scope is denied whatever the policies say. `args` are the call's arguments (absent ones
    /// read as `{}`, so a condition on them fails closed rather than being skipped).
    pub(crate) fn decide(
        &self,
        target: &CompiledTarget,
        kind: ItemKind,
        name: &str,
        args: Option<&Value>,
    ) -> Decision {
        if !self.scope.allows_target(&target.namespace, &target.name) {
            return Decision {
                allowed: false,
                policy: Some(TOKEN_SCOPE.clone()),
                condition: None,
            };
        }
        let req = PolicyRequest {
            kind,
            name,
            target: &target.name,
            args: Some(args.unwrap_or(&NO_ARGS)),
            now: now_seconds(),
        };
        target.policy.view(&self.identity).decide_request(&req)
    }
}

impl Gateway {
    pub(crate) fn count_decision(&self, key: &Arc<str>, kind: ItemKind, d: &Decision) {
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                target: key.clone(),
                kind: kind.as_str(),
                decision: if d.allowed { "allow" } else { "deny" },
            })
            .inc();
    }

    /// A request refused by the token scope before any target was chosen.
    pub(crate) fn audit_out_of_scope(&self, ctx: &Ctx, method: &str, why: OutOfScope) {
        self.audit.record(AuditEvent {
            id: new_event_id(),
            time_ms: now_ms(),
            user: ctx.identity.user.to_string(),
            session: Some(ctx.session.id.clone()),
            method: method.to_owned(),
            target: None,
            name: None,
            decision: Some("deny"),
            policy: Some(TOKEN_SCOPE.to_string()),
            outcome: why.label().to_owned(),
            duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
            trace_id: ctx.trace_id.clone(),
        });
    }

    pub(crate) fn audit_decision(
        &self,
        ctx: &Ctx,
        method: &str,
        target: Option<&Arc<str>>,
        name: &str,
        d: &Decision,
        outcome: &str,
    ) {
        self.audit.record(AuditEvent {
            id: new_event_id(),
            time_ms: now_ms(),
            user: ctx.identity.user.to_string(),
            session: Some(ctx.session.id.clone()),
            method: method.to_owned(),
            target: target.map(|k| k.to_string()),
            name: Some(name.to_owned()),
            decision: Some(if d.allowed { "allow" } else { "deny" }),
            policy: audited_policy(d),
            outcome: outcome.to_owned(),
            duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
            trace_id: ctx.trace_id.clone(),
        });
    }
}

/// The audit `policy` field: the deciding Policy, and for a condition that mattered its outcome,
/// as `name when=<true|false|error|exceeded>` (default deny after a conditional allow that did
/// not apply reads `name when=false`).
pub(crate) fn audited_policy(d: &Decision) -> Option<String> {
    match (&d.policy, &d.condition) {
        (Some(p), Some((c, o))) if p == c => Some(format!("{p} when={}", o.as_str())),
        (Some(p), Some((c, o))) => Some(format!("{p} ({c} when={})", o.as_str())),
        (None, Some((c, o))) => Some(format!("{c} when={}", o.as_str())),
        (p, None) => p.as_deref().map(str::to_owned),
    }
}
