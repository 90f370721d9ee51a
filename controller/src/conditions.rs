//! Status conditions of one object: the compiler's report (`Accepted`, `ResolvedRefs`,
//! `Conflicted`) plus `Programmed` from the dataplanes' reports, with `observedGeneration` and
//! transition times kept stable when nothing changed. Pure; used by `/v1/status` and kube status.

use reflow_crds::api::{Condition, ObjectStatus};
use reflow_crds::compile::{ACCEPTED, ObjectReport};

use crate::fleet::Programmed;

pub const PROGRAMMED: &str = "Programmed";

fn status_word(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// The `Programmed` condition of an object, given where the fleet stands on the current hash.
pub fn programmed(
    report: &ObjectReport,
    fleet: &Programmed,
    source_error: Option<&str>,
) -> Condition {
    let (status, reason, message) = if !report.is_true(ACCEPTED) {
        // The compiler says what a rejected object does meanwhile: a Target is not served, an
        // Allow grants nothing, a Deny is enforced as deny-all (fail closed).
        let meanwhile = report
            .condition(ACCEPTED)
            .map_or("not accepted", |c| c.message.as_str());
        (
            "False",
            "NotAccepted",
            format!("not programmed as written: {meanwhile}"),
        )
    } else if !fleet.refused.is_empty() {
        let who: Vec<String> = fleet
            .refused
            .iter()
            .map(|(dp, why)| format!("{dp}: {why}"))
            .collect();
        (
            "False",
            "Refused",
            format!(
                "applied by {} of {} dataplanes; refused by {}",
                fleet.applied,
                fleet.connected,
                who.join("; ")
            ),
        )
    } else if !fleet.stale.is_empty() {
        (
            "False",
            "Pending",
            format!(
                "applied by {} of {} dataplanes; disconnected from the controller on an older \
                 snapshot, possibly still serving it: {}",
                fleet.applied,
                fleet.connected,
                fleet.stale.join(", ")
            ),
        )
    } else if fleet.connected == 0 {
        (
            "Unknown",
            "NoDataplanes",
            "no dataplane is connected to the controller".to_owned(),
        )
    } else if fleet.applied == fleet.connected {
        (
            "True",
            "Programmed",
            format!(
                "applied by {} of {} dataplanes",
                fleet.applied, fleet.connected
            ),
        )
    } else {
        (
            "False",
            "Pending",
            format!(
                "applied by {} of {} dataplanes",
                fleet.applied, fleet.connected
            ),
        )
    };
    let message = match source_error {
        Some(e) => format!(
            "{message}; the newest manifests do not compile, the last good snapshot is served: {e}"
        ),
        None => message,
    };
    Condition {
        type_: PROGRAMMED.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: report.generation,
        last_transition_time: None,
    }
}

/// The desired status of an object. Transition times come from `previous` when a condition's
/// status did not change, and are `now` otherwise.
pub fn object_status(
    report: &ObjectReport,
    fleet: &Programmed,
    source_error: Option<&str>,
    previous: Option<&ObjectStatus>,
    now: &str,
) -> ObjectStatus {
    let mut conditions: Vec<Condition> = report
        .conditions
        .iter()
        .map(|c| Condition {
            type_: c.type_.clone(),
            status: status_word(c.status).to_owned(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            observed_generation: report.generation,
            last_transition_time: None,
        })
        .collect();
    conditions.push(programmed(report, fleet, source_error));
    conditions.extend(crate::policy_status::rate_limited(report, fleet));
    for c in &mut conditions {
        let kept = previous
            .and_then(|p| p.conditions.iter().find(|p| p.type_ == c.type_))
            .filter(|p| p.status == c.status)
            .and_then(|p| p.last_transition_time.clone());
        c.last_transition_time = Some(kept.unwrap_or_else(|| now.to_owned()));
    }
    ObjectStatus {
        observed_generation: report.generation,
        conditions,
    }
}

/// Whether writing `desired` over `current` would change anything a reader cares about.
pub fn differs(current: Option<&ObjectStatus>, desired: &ObjectStatus) -> bool {
    current != Some(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflow_crds::compile::{ObjectKind, RESOLVED_REFS};

    fn accepted() -> ObjectReport {
        let mut r = ObjectReport::new(ObjectKind::Policy, "ns", "p", Some(4));
        r.set(ACCEPTED, true, "Accepted", "");
        r.set(
            RESOLVED_REFS,
            true,
            "ResolvedRefs",
            "applies to 1 Target(s)",
        );
        r
    }

    fn fleet(applied: usize, connected: usize) -> Programmed {
        Programmed {
            applied,
            connected,
            refused: vec![],
            stale: vec![],
        }
    }

    /// Issue #18 item 7: a rejected Deny is enforced as deny-all; Programmed must not claim it
    /// is out of the served snapshot.
    #[test]
    fn a_rejected_deny_says_it_is_enforced_as_deny_all() {
        let mut loaded = reflow_crds::loader::Loaded::default();
        reflow_crds::loader::load_str(
            std::path::Path::new("p.yaml"),
            "apiVersion: mcp.reflow.io/v1alpha1\nkind: Policy\nmetadata: {name: p, namespace: ns}\n\
             spec: {targetSelector: {}, effect: Deny, subjects: [{user: bob}], rules: [{kind: tool, names: ['[']}]}\n",
            &mut loaded,
        )
        .expect("load");
        let c = reflow_crds::compile(
            &loaded.inputs,
            &reflow_crds::SealingKey::from_bytes(&[1; 32]),
        )
        .expect("compile");
        let r = c.report(ObjectKind::Policy, "ns", "p").expect("report");
        assert!(!r.is_true(ACCEPTED));
        let p = programmed(r, &fleet(1, 1), None);
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("False", "NotAccepted")
        );
        assert!(p.message.contains("deny-all"), "{}", p.message);
        assert!(!p.message.contains("not part of the served snapshot"));
    }

    #[test]
    fn programmed_says_n_of_m_and_why_not() {
        let r = accepted();
        let c = programmed(&r, &fleet(2, 2), None);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "Programmed")
        );
        assert_eq!(c.message, "applied by 2 of 2 dataplanes");
        assert_eq!(c.observed_generation, Some(4));
        let c = programmed(&r, &fleet(1, 2), None);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Pending"));
        let c = programmed(&r, &fleet(0, 0), None);
        assert_eq!(c.status, "Unknown");
        let mut f = fleet(1, 2);
        f.refused
            .push(("dp-2".into(), "content hash mismatch".into()));
        let c = programmed(&r, &f, None);
        assert_eq!(c.reason, "Refused");
        assert!(
            c.message.contains("dp-2: content hash mismatch"),
            "{}",
            c.message
        );
        let c = programmed(&r, &fleet(2, 2), Some("p.yaml: document 1: bad"));
        assert!(c.message.contains("last good snapshot"), "{}", c.message);

        let mut rejected = ObjectReport::new(ObjectKind::Policy, "ns", "p", Some(1));
        rejected.set(ACCEPTED, false, "InvalidPattern", "bad glob");
        let c = programmed(&rejected, &fleet(2, 2), None);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NotAccepted")
        );
    }

    #[test]
    fn transition_times_stay_until_the_status_flips() {
        let r = accepted();
        let first = object_status(&r, &fleet(1, 2), None, None, "t1");
        assert_eq!(first.observed_generation, Some(4));
        assert!(
            first
                .conditions
                .iter()
                .all(|c| c.last_transition_time.as_deref() == Some("t1"))
        );
        let second = object_status(&r, &fleet(1, 2), None, Some(&first), "t2");
        assert!(!differs(Some(&first), &second));
        let third = object_status(&r, &fleet(2, 2), None, Some(&second), "t3");
        assert!(differs(Some(&second), &third));
        let t = |s: &ObjectStatus, ty: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == ty)
                .and_then(|c| c.last_transition_time.clone())
        };
        assert_eq!(t(&third, ACCEPTED).as_deref(), Some("t1"));
        assert_eq!(t(&third, PROGRAMMED).as_deref(), Some("t3"));
    }
}
