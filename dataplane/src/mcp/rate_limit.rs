//! Policy rate limits on the call path: an allowed call is charged to the limits that cover it
//! (`reflow_crds::rate_limiter`); a refusal is a JSON-RPC error with a retry hint, HTTP 429 with
//! `Retry-After` where the reply is plain JSON, an audit event and a metric.

use std::sync::Arc;

use reflow_crds::snapshot::condition::{Request as PolicyRequest, now_seconds};
use reflow_crds::snapshot::{CompiledTarget, Decision, ItemKind};
use serde_json::json;

use super::Gateway;
use super::call::{Ctx, Reply};
use crate::jsonrpc::{self, Request};
use crate::metrics::RateLimitedLabels;

/// JSON-RPC error code of a call refused by a rate limit (MCP defines none; -32000..-32099 is
/// the implementation-defined range).
pub const RATE_LIMITED: i64 = -32029;
/// The outcome label (metrics, audit) of such a call; the HTTP layer answers it with 429.
pub const RATE_LIMITED_OUTCOME: &str = "rate_limited";

impl Gateway {
    /// Charges an allowed call to the rate limits that cover it; the refusal if one is spent:
    /// a JSON-RPC error with `retryAfter` (seconds) in `data`, audited and counted.
    pub(crate) fn rate_limited(
        &self,
        ctx: &Ctx,
        req: &Request,
        (target, key): (&CompiledTarget, &Arc<str>),
        (kind, upstream_name, shown): (ItemKind, &str, &str),
    ) -> Option<Reply> {
        let view = target.policy.view(&ctx.identity);
        let args = req.params().and_then(|p| p.get("arguments"));
        let probe = PolicyRequest {
            kind,
            name: upstream_name,
            target: &target.name,
            args,
            now: now_seconds(),
        };
        let limits = view.rate_limits(&probe);
        if limits.is_empty() {
            return None;
        }
        let refused = self
            .rate_limiter
            .check(key, &ctx.identity.user, upstream_name, &limits)
            .err()?;
        self.metrics
            .rate_limited
            .get_or_create(&RateLimitedLabels {
                target: key.clone(),
                policy: refused.policy.clone(),
            })
            .inc();
        let secs = refused.retry_after_secs();
        let decision = Decision {
            allowed: false,
            policy: Some(refused.policy.clone()),
            condition: None,
        };
        self.audit_decision(
            ctx,
            &req.method,
            Some(key),
            shown,
            &decision,
            RATE_LIMITED_OUTCOME,
        );
        let mut err = jsonrpc::error(
            &req.id,
            RATE_LIMITED,
            &format!("rate limit exceeded; retry after {secs} s"),
        );
        err["error"]["data"] = json!({
            "retryAfter": secs,
            "retryAfterMs": u64::try_from(refused.retry_after.as_millis()).unwrap_or(u64::MAX),
        });
        Some(Reply::new(err, Some(key.clone()), RATE_LIMITED_OUTCOME))
    }
}
