//! The `RateLimited` condition of a Policy with a rate limit. Limits are enforced per dataplane
//! (like Envoy's local rate limit), so the condition states both what one dataplane admits and
//! what the dataplanes serving now add up to. Pure; called by `conditions::object_status`.

use reflow_crds::api::Condition;
use reflow_crds::compile::{ObjectReport, RATE_LIMITED};
use reflow_crds::snapshot::RateLimitScope;

use crate::fleet::Programmed;

/// `None` for objects without a rate limit.
pub fn rate_limited(report: &ObjectReport, fleet: &Programmed) -> Option<Condition> {
    let spec = report.rate_limit?;
    let per = match spec.per {
        RateLimitScope::Tool => "user and tool",
        RateLimitScope::Target => "user and Target",
    };
    let interval = spec.interval_text();
    let one = format!(
        "each dataplane admits {} requests per {interval} (burst {}) per {per}",
        spec.requests, spec.burst
    );
    let n = fleet.connected;
    let message = match n {
        0 => format!("{one}; no dataplane serves it yet"),
        1 => format!("{one}; 1 dataplane serves it, so that is the effective limit"),
        n => {
            let total = u64::from(spec.requests).saturating_mul(n as u64);
            let burst = u64::from(spec.burst).saturating_mul(n as u64);
            format!(
                "{one}; {n} dataplanes serve it, so a caller spread over all of them gets up to {total} per {interval} (burst {burst})"
            )
        }
    };
    Some(Condition {
        type_: RATE_LIMITED.to_owned(),
        status: "True".to_owned(),
        reason: "PerDataplane".to_owned(),
        message,
        observed_generation: report.generation,
        last_transition_time: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflow_crds::compile::ObjectKind;
    use reflow_crds::snapshot::rate_limit::RateSpec;

    fn fleet(connected: usize) -> Programmed {
        Programmed {
            applied: connected,
            connected,
            refused: vec![],
            stale: vec![],
        }
    }

    #[test]
    fn states_the_per_dataplane_and_fleet_wide_limit() {
        let mut r = ObjectReport::new(ObjectKind::Policy, "ns", "p", Some(2));
        assert!(rate_limited(&r, &fleet(3)).is_none());
        r.rate_limit = Some(RateSpec {
            requests: 10,
            interval_ms: 60_000,
            burst: 5,
            per: RateLimitScope::Tool,
        });
        let c = rate_limited(&r, &fleet(3)).expect("a condition");
        assert_eq!(
            (c.type_.as_str(), c.status.as_str()),
            ("RateLimited", "True")
        );
        assert_eq!(c.reason, "PerDataplane");
        assert_eq!(
            c.message,
            "each dataplane admits 10 requests per 60s (burst 5) per user and tool; 3 dataplanes serve it, so a caller spread over all of them gets up to 30 per 60s (burst 15)"
        );
        assert_eq!(c.observed_generation, Some(2));
        assert!(
            rate_limited(&r, &fleet(0))
                .unwrap()
                .message
                .ends_with("no dataplane serves it yet")
        );
        assert!(
            rate_limited(&r, &fleet(1))
                .unwrap()
                .message
                .contains("1 dataplane serves it")
        );
    }
}
