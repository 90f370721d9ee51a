//! What a Target's status says about its upstream, from what recently seen dataplanes observed
//! (issue #18 item 4, #22 part 3): the `Ready` condition, the `PREFIX`/`TOOLS` columns, the
//! observed tool digests and `ToolsDrifted`. Pure and deterministic for the same observations,
//! so an unchanged world writes nothing.

use std::collections::BTreeMap;
use std::time::Instant;

use reflow_crds::api::{Condition, ToolDigest};
use reflow_crds::compile::{ACCEPTED, ObjectReport};
use reflow_crds::observed::{MAX_TOOLS, TargetObservation, clean_error};
use reflow_crds::snapshot::{CompiledTarget, PinMode, PinVerdict};

pub const READY: &str = "Ready";
pub const TOOLS_DRIFTED: &str = "ToolsDrifted";
/// Annotation asking the controller to pin what is observed: `*` or comma-separated names.
pub const APPROVE_TOOLS: &str = "mcp.reflow.io/approve-tools";
/// Names listed in a condition message before "and N more".
const LISTED: usize = 10;

/// One dataplane's latest observation of one Target.
#[derive(Clone, Debug)]
pub struct Seen {
    pub dataplane: String,
    pub at: Instant,
    pub observation: TargetObservation,
}

/// Observations of every Target by the dataplanes counted now.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Dataplanes counted (connected, or gone for less than `fleet::RECENT`).
    pub dataplanes: usize,
    /// `(namespace, name)` → observations, in dataplane-name order.
    pub targets: BTreeMap<(String, String), Vec<Seen>>,
}

/// The status fields of a Target beyond its conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetFields {
    pub prefix: Option<String>,
    pub tools: Option<i32>,
    pub tool_digests: Vec<ToolDigest>,
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    g: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: g,
        last_transition_time: None,
    }
}

fn listed(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > LISTED {
        s.push_str(&format!(" and {} more", names.len() - LISTED));
    }
    s
}

impl Observed {
    fn of(&self, report: &ObjectReport) -> &[Seen] {
        self.targets
            .get(&(report.namespace.clone(), report.name.clone()))
            .map_or(&[], Vec::as_slice)
    }

    /// The tools of the newest successful list (ties: the first dataplane by name).
    fn newest_tools(&self, report: &ObjectReport) -> Option<&[ToolDigest]> {
        let mut best: Option<&Seen> = None;
        for s in self.of(report) {
            if s.observation.tools.is_none() {
                continue;
            }
            if best.is_none_or(|b| s.at > b.at) {
                best = Some(s);
            }
        }
        best.and_then(|s| s.observation.tools.as_deref())
    }
}

/// The `Ready` condition: True when some counted dataplane reached the upstream on its last
/// list, False with the failure's reason when all that listed it failed.
pub fn ready(report: &ObjectReport, observed: &Observed) -> Condition {
    let g = report.generation;
    if !report.is_true(ACCEPTED) {
        return condition(
            READY,
            "False",
            "NotAccepted",
            "the Target is not accepted, so it is not served".into(),
            g,
        );
    }
    if observed.dataplanes == 0 {
        return condition(
            READY,
            "Unknown",
            "NoDataplanes",
            "no dataplane is connected to the controller".into(),
            g,
        );
    }
    let seen = observed.of(report);
    if seen.is_empty() {
        return condition(
            READY,
            "Unknown",
            "NotObserved",
            "no dataplane has listed this Target's tools yet (Ready is observed on tools/list)"
                .into(),
            g,
        );
    }
    let (ok, failed): (Vec<&Seen>, Vec<&Seen>) = seen.iter().partition(|s| s.observation.reachable);
    let failures: Vec<String> = failed
        .iter()
        .map(|s| {
            let e = s
                .observation
                .error
                .as_deref()
                .map(clean_error)
                .unwrap_or_default();
            format!("{}: {e}", s.dataplane)
        })
        .collect();
    if !ok.is_empty() {
        let mut message = format!(
            "reachable from {} of {} dataplanes that listed it",
            ok.len(),
            seen.len()
        );
        if !failures.is_empty() {
            message.push_str(&format!("; failing on {}", listed(&failures)));
        }
        return condition(READY, "True", "Reachable", message, g);
    }
    // The newest failure names the reason (the dataplanes may disagree: one still starting).
    let reason = failed
        .iter()
        .max_by_key(|s| s.at)
        .and_then(|s| s.observation.reason)
        .map_or("UpstreamError", |r| r.as_str());
    condition(READY, "False", reason, listed(&failures), g)
}

/// `ToolsDrifted` for a pinned Target: True while some dataplane saw a definition that is not
/// the pinned one (or a tool with no pin). Absent for Targets without `toolPinning`.
pub fn tools_drifted(
    report: &ObjectReport,
    target: &CompiledTarget,
    observed: &Observed,
) -> Option<Condition> {
    let pins = target.pinning.as_ref()?;
    let mut drifted: BTreeMap<String, PinVerdict> = BTreeMap::new();
    for s in observed.of(report) {
        let tools = s.observation.tools.iter().flatten();
        for (name, verdict) in pins.drift(tools.map(|t| (t.name.as_str(), t.digest.as_str()))) {
            drifted.entry(name.to_owned()).or_insert(verdict);
        }
    }
    let g = report.generation;
    if drifted.is_empty() {
        return Some(condition(
            TOOLS_DRIFTED,
            "False",
            "Pinned",
            "every observed tool definition matches its pin".into(),
            g,
        ));
    }
    let names: Vec<String> = drifted
        .iter()
        .map(|(n, v)| format!("{n} ({})", v.label()))
        .collect();
    let what = match pins.mode {
        PinMode::Enforce => "hidden and refused until approved",
        PinMode::Warn => "served with a warning (mode warn)",
    };
    Some(condition(
        TOOLS_DRIFTED,
        "True",
        "ToolsDrifted",
        format!(
            "{what}: {}; approve with kubectl annotate target {} {APPROVE_TOOLS}='*'",
            listed(&names),
            report.name
        ),
        g,
    ))
}

/// Prefix (from the compiled Target), tools count and digests (from the newest list).
pub fn fields(
    report: &ObjectReport,
    target: Option<&CompiledTarget>,
    observed: &Observed,
) -> TargetFields {
    let tools = observed.newest_tools(report);
    TargetFields {
        prefix: target.map(|t| t.prefix.to_string()),
        tools: tools.map(|t| i32::try_from(t.len()).unwrap_or(i32::MAX)),
        tool_digests: tools
            .map(|t| t.iter().take(MAX_TOOLS).cloned().collect())
            .unwrap_or_default(),
    }
}

/// The pins after approving `annotation` (`*` or comma-separated names) from `observed`
/// digests, and the approved names that were not observed (left unpinned).
pub fn approve(
    current: &[ToolDigest],
    observed: &[ToolDigest],
    annotation: &str,
) -> (Vec<ToolDigest>, Vec<String>) {
    let wanted: Vec<&str> = annotation
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let all = wanted.contains(&"*");
    let mut pins: BTreeMap<String, String> = current
        .iter()
        .map(|p| (p.name.clone(), p.digest.clone()))
        .collect();
    for t in observed {
        if all || wanted.contains(&t.name.as_str()) {
            pins.insert(t.name.clone(), t.digest.clone());
        }
    }
    let missing = wanted
        .iter()
        .filter(|w| **w != "*" && !observed.iter().any(|t| t.name == **w))
        .map(|w| (*w).to_owned())
        .collect();
    let pins = pins
        .into_iter()
        .take(MAX_TOOLS)
        .map(|(name, digest)| ToolDigest { name, digest })
        .collect();
    (pins, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflow_crds::compile::ObjectKind;
    use reflow_crds::observed::ObservedReason;
    use reflow_crds::snapshot::ToolPins;
    use std::time::Duration;

    fn report() -> ObjectReport {
        let mut r = ObjectReport::new(ObjectKind::Target, "ns", "t", Some(3));
        r.set(ACCEPTED, true, "Accepted", "");
        r
    }

    fn d(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn tool(name: &str, c: char) -> ToolDigest {
        ToolDigest {
            name: name.into(),
            digest: d(c),
        }
    }

    fn seen(dp: &str, secs: u64, reachable: bool, tools: Option<Vec<ToolDigest>>) -> Seen {
        Seen {
            dataplane: dp.into(),
            at: Instant::now() - Duration::from_secs(100) + Duration::from_secs(secs),
            observation: TargetObservation {
                namespace: "ns".into(),
                name: "t".into(),
                reachable,
                reason: (!reachable).then_some(ObservedReason::NotReady),
                error: (!reachable)
                    .then(|| format!("{dp} saw http://u:pw@up/x?key=s3cret time out")),
                tools,
            },
        }
    }

    fn observed(seen: Vec<Seen>) -> Observed {
        Observed {
            dataplanes: 2,
            targets: BTreeMap::from([(("ns".into(), "t".into()), seen)]),
        }
    }

    #[test]
    fn ready_says_who_reached_the_upstream_and_why_not() {
        let r = report();
        let none = Observed::default();
        assert_eq!(ready(&r, &none).reason, "NoDataplanes");
        let quiet = Observed {
            dataplanes: 1,
            ..Default::default()
        };
        let c = ready(&r, &quiet);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("Unknown", "NotObserved")
        );

        let down = observed(vec![
            seen("dp-a", 1, false, None),
            seen("dp-b", 2, false, None),
        ]);
        let c = ready(&r, &down);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NotReady")
        );
        assert!(
            c.message.contains("dp-a: dp-a saw http://up/x time out"),
            "{}",
            c.message
        );
        assert!(
            !c.message.contains("s3cret") && !c.message.contains("pw@"),
            "{}",
            c.message
        );
        assert_eq!(c.observed_generation, Some(3));

        let half = observed(vec![
            seen("dp-a", 1, true, Some(vec![tool("a", '1')])),
            seen("dp-b", 2, false, None),
        ]);
        let c = ready(&r, &half);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "Reachable")
        );
        assert!(
            c.message.starts_with("reachable from 1 of 2"),
            "{}",
            c.message
        );
        // Deterministic: the same observations give the same condition (no write loop).
        assert_eq!(ready(&r, &half), c);

        let mut rejected = ObjectReport::new(ObjectKind::Target, "ns", "t", Some(1));
        rejected.set(ACCEPTED, false, "InvalidPrefix", "bad");
        assert_eq!(ready(&rejected, &half).reason, "NotAccepted");
    }

    #[test]
    fn fields_come_from_the_newest_successful_list() {
        let r = report();
        let o = observed(vec![
            seen("dp-a", 1, true, Some(vec![tool("a", '1')])),
            seen("dp-b", 5, true, Some(vec![tool("a", '2'), tool("b", '3')])),
            seen("dp-c", 9, false, None),
        ]);
        let f = fields(&r, None, &o);
        assert_eq!(f.tools, Some(2));
        assert_eq!(f.tool_digests, vec![tool("a", '2'), tool("b", '3')]);
        assert_eq!(f.prefix, None);
        assert_eq!(
            fields(&r, None, &Observed::default()),
            TargetFields::default()
        );
    }

    #[test]
    fn drift_is_raised_by_any_dataplane_and_approval_pins_what_was_observed() {
        let r = report();
        let pins = ToolPins::new(PinMode::Enforce, [("a", d('1').as_str())]).unwrap();
        let target = CompiledTarget {
            pinning: Some(pins),
            ..test_target()
        };
        let clean = observed(vec![seen("dp-a", 1, true, Some(vec![tool("a", '1')]))]);
        let c = tools_drifted(&r, &target, &clean).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Pinned"));
        let drifted = observed(vec![
            seen("dp-a", 1, true, Some(vec![tool("a", '1')])),
            seen(
                "dp-b",
                2,
                true,
                Some(vec![tool("a", '9'), tool("new", '4')]),
            ),
        ]);
        let c = tools_drifted(&r, &target, &drifted).unwrap();
        assert_eq!(c.status, "True");
        assert!(
            c.message.contains("a (drifted), new (unpinned)"),
            "{}",
            c.message
        );
        assert!(c.message.contains("hidden and refused"), "{}", c.message);
        let unpinned = CompiledTarget {
            pinning: None,
            ..test_target()
        };
        assert!(tools_drifted(&r, &unpinned, &drifted).is_none());

        let observed_now = [tool("a", '9'), tool("new", '4')];
        let (p, missing) = approve(
            &[tool("a", '1'), tool("gone", '5')],
            &observed_now,
            "new, nope",
        );
        assert_eq!(p, vec![tool("a", '1'), tool("gone", '5'), tool("new", '4')]);
        assert_eq!(missing, vec!["nope".to_owned()]);
        let (p, missing) = approve(&[tool("a", '1')], &observed_now, "*");
        assert_eq!(p, vec![tool("a", '9'), tool("new", '4')]);
        assert!(missing.is_empty());
    }

    fn test_target() -> CompiledTarget {
        let yaml = "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {name: t, namespace: ns}\nspec: {transport: streamableHttp, url: 'http://h/mcp'}\n";
        let mut loaded = reflow_crds::loader::Loaded::default();
        reflow_crds::loader::load_str(std::path::Path::new("t.yaml"), yaml, &mut loaded).unwrap();
        let c = reflow_crds::compile(
            &loaded.inputs,
            &reflow_crds::SealingKey::from_bytes(&[1; 32]),
        )
        .unwrap();
        (**c.snapshot.target("ns", "t").unwrap()).clone()
    }
}
