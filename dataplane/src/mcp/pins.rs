//! Pinned tool definitions on the request path (issue #22 part 3) and what lists observe of
//! each upstream: every tools/list records the digest of each definition (reported to the
//! controller), `enforce` hides and refuses a definition that is not the pinned one, `warn`
//! serves it with an audit event, and a changed definition tells live sessions `list_changed`.

use std::sync::{Arc, LazyLock};

use reflow_crds::Decision;
use reflow_crds::observed::ObservedReason;
use reflow_crds::snapshot::PinMode;
use reflow_crds::snapshot::{CompiledTarget, PinVerdict, tool_digest};
use serde_json::{Map, Value};
use tracing::{info, warn};

use super::Gateway;
use super::call::Ctx;
use crate::audit::{AuditEvent, new_event_id, now_ms};
use crate::metrics::PinLabels;
use crate::session::Scope;
use crate::upstream::UpstreamError;
use crate::upstream::instance::InstanceError;

/// The decider named in audit events when a pin, not a Policy, hid or refused a tool.
pub static TOOL_PINNING: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("tool-pinning"));
/// Audit outcome of a tool served in `warn` mode although its definition is not approved.
pub const PIN_WARNED: &str = "tool_unapproved";
/// Upstream pages read to learn a tool's definition before a pinned call.
const MAX_PAGES: usize = 64;

/// The (upstream name, digest) of each tool a list saw.
pub(crate) type Seen = Vec<(String, String)>;

/// The stable reason a failed upstream exchange gives the `Ready` condition.
pub(crate) fn reason_of(e: &UpstreamError) -> ObservedReason {
    match e {
        UpstreamError::Instance(InstanceError::NotReady(_)) => ObservedReason::NotReady,
        UpstreamError::Connect | UpstreamError::Timeout(_) | UpstreamError::Client(_) => {
            ObservedReason::UpstreamUnreachable
        }
        UpstreamError::Instance(InstanceError::Unreachable(_)) => {
            ObservedReason::UpstreamUnreachable
        }
        _ => ObservedReason::UpstreamError,
    }
}

impl Gateway {
    /// One tool of a tools/list page: its digest is noted in `seen`; returns the deciding
    /// pin when `enforce` hides it. `allowed` is the policy's decision (a tool the policy hides
    /// is not audited again here).
    pub(crate) fn pin_list_item(
        &self,
        ctx: &Ctx,
        target: &CompiledTarget,
        (name, shown_as): (&str, &str),
        item: &Value,
        seen: &mut Seen,
        allowed: bool,
    ) -> Option<Decision> {
        let digest = tool_digest(item);
        let pins = target.pinning.as_ref();
        let verdict = pins.map(|p| p.verdict(name, &digest));
        seen.push((name.to_owned(), digest));
        let (pins, verdict) = (pins?, verdict?);
        if verdict == PinVerdict::Pinned || !allowed {
            return None;
        }
        if pins.serves(verdict) {
            self.pin_warned(ctx, target, "tools/list", shown_as, verdict);
            return None;
        }
        self.count_pin(target, "hidden");
        Some(Decision {
            allowed: false,
            policy: Some(TOOL_PINNING.clone()),
            condition: None,
        })
    }

    /// After a successful tools/list of `target`: records what it saw; when a definition
    /// changed since the previous list of a pinned Target, live sessions hear `list_changed`.
    pub(crate) fn observe_list(&self, target: &CompiledTarget, mut seen: Seen) {
        seen.sort();
        seen.dedup_by(|a, b| a.0 == b.0);
        let change = self
            .observed
            .record_tools(&target.namespace, &target.name, &seen);
        if !change.first && change.changed.is_empty() {
            return;
        }
        if let Some(pins) = &target.pinning {
            // What an admin pastes into the pins (standalone mode has no status to read it
            // from): each unapproved definition with its digest, logged when it first appears.
            let unapproved: Vec<String> = seen
                .iter()
                .filter(|(n, d)| pins.verdict(n, d) != PinVerdict::Pinned)
                .map(|(n, d)| format!("{n}={d}"))
                .collect();
            if !unapproved.is_empty() {
                warn!(target = %target.key(), mode = ?pins.mode, tools = ?unapproved, "tool definitions not approved by toolPinning");
            }
        }
        if change.first {
            return;
        }
        info!(target = %target.key(), tools = ?change.changed, "tool definitions changed upstream");
        if target.pinning.is_some() {
            self.announce_tools_changed(target);
        }
    }

    /// A failed list of `target`, for its `Ready` condition.
    pub(crate) fn observe_failure(&self, target: &CompiledTarget, reason: ObservedReason, e: &str) {
        self.observed
            .record_failure(&target.namespace, &target.name, reason, e);
    }

    /// Checks a tools/call against the pins of `target`; `Err` carries the verdict that refuses
    /// it (`enforce`). Learns the tool's definition with a tools/list when this dataplane has
    /// not seen it yet (another replica may have served the session's list).
    pub(crate) async fn pin_call(
        &self,
        ctx: &Ctx,
        target: &CompiledTarget,
        key: &Arc<str>,
        (name, shown_as): (&str, &str),
    ) -> Result<(), PinVerdict> {
        let Some(pins) = &target.pinning else {
            return Ok(());
        };
        let known = self
            .observed
            .digest_of(&target.namespace, &target.name, name);
        let digest = match known {
            Some(Some(d)) => Some(d),
            _ => self.learn_tools(ctx, target, key, name).await,
        };
        let verdict = digest.map_or(PinVerdict::Unpinned, |d| pins.verdict(name, &d));
        if verdict == PinVerdict::Pinned {
            return Ok(());
        }
        if pins.serves(verdict) {
            self.pin_warned(ctx, target, "tools/call", shown_as, verdict);
            return Ok(());
        }
        self.count_pin(target, "refused");
        warn!(target = %key, tool = name, verdict = verdict.label(), "call refused: the tool definition is not the pinned one");
        Err(verdict)
    }

    /// Lists the Target's tools (all pages) to learn `name`'s digest.
    async fn learn_tools(
        &self,
        ctx: &Ctx,
        target: &CompiledTarget,
        key: &Arc<str>,
        name: &str,
    ) -> Option<String> {
        let mut seen = Seen::new();
        let mut cursor: Option<Value> = None;
        for _ in 0..MAX_PAGES {
            let params = cursor.take().map(|c| serde_json::json!({"cursor": c}));
            let reply = match self
                .forward(&ctx.caller(key), target, "tools/list", params.as_ref())
                .await
            {
                Ok(r) => r.into_object(),
                Err(e) => {
                    self.observe_failure(target, reason_of(&e), &e.to_string());
                    return None;
                }
            };
            let result = reply.get("result")?;
            for item in result.get("tools").and_then(Value::as_array)? {
                if let Some(n) = item.get("name").and_then(Value::as_str) {
                    seen.push((n.to_owned(), tool_digest(item)));
                }
            }
            match result.get("nextCursor") {
                Some(c) if !c.is_null() => cursor = Some(c.clone()),
                _ => break,
            }
        }
        let found = seen.iter().find(|(n, _)| n == name).map(|(_, d)| d.clone());
        self.observe_list(target, seen);
        found
    }

    fn count_pin(&self, target: &CompiledTarget, action: &'static str) {
        self.metrics
            .tool_pins
            .get_or_create(&PinLabels {
                target: Arc::from(target.key()),
                action,
            })
            .inc();
    }

    /// `warn` mode: the unapproved definition is served, and that is audited.
    fn pin_warned(
        &self,
        ctx: &Ctx,
        target: &CompiledTarget,
        method: &str,
        shown_as: &str,
        verdict: PinVerdict,
    ) {
        debug_assert!(
            target
                .pinning
                .as_ref()
                .is_some_and(|p| p.mode == PinMode::Warn)
        );
        self.count_pin(target, "warned");
        warn!(target = %target.key(), tool = shown_as, verdict = verdict.label(), "serving a tool whose definition is not approved (toolPinning: warn)");
        self.audit.record(AuditEvent {
            id: new_event_id(),
            time_ms: now_ms(),
            user: ctx.identity.user.to_string(),
            session: Some(ctx.session.id.clone()),
            method: method.to_owned(),
            target: Some(target.key()),
            name: Some(shown_as.to_owned()),
            decision: Some("allow"),
            policy: Some(format!("{}:{}", TOOL_PINNING.as_ref(), verdict.label())),
            outcome: PIN_WARNED.to_owned(),
            duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
            trace_id: ctx.trace_id.clone(),
        });
    }

    /// `notifications/tools/list_changed` to every live session that reaches `target`.
    fn announce_tools_changed(&self, target: &CompiledTarget) {
        let mut note = Map::new();
        note.insert("jsonrpc".into(), Value::from("2.0"));
        note.insert(
            "method".into(),
            Value::from("notifications/tools/list_changed"),
        );
        for (session_id, hub, viewer) in self.hubs.watched() {
            let reaches = match &viewer.scope {
                Scope::Aggregated => true,
                Scope::Target { namespace, name } => {
                    namespace.as_str() == &*target.namespace && name.as_str() == &*target.name
                }
            };
            if reaches {
                self.to_get_stream(&session_id, &hub, &note);
            }
        }
    }
}
