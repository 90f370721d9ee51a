//! Audit of the decisions a list makes (DESIGN §3 semantic 7): per target listed, one `allow`
//! event for what was shown and one `deny` event per hidden item, naming the deciding Policy.
//! Shown items are summarised rather than logged one by one: a list is a read of what policy
//! already allows, and a per-item allow event would multiply the log by the catalogue size.

use std::sync::Arc;

use reflow_crds::Decision;

use super::Gateway;
use super::dispatch::Ctx;
use crate::audit::{AuditEvent, new_event_id, now_ms};

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
            self.hidden
                .push((name.to_owned(), super::dispatch::audited_policy(d)));
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
