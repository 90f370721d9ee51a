//! Policy → CompiledRules per selected Target. An invalid Policy is rejected; a rejected *deny*
//! Policy still denies everything to its subjects (fail closed), never silently disappears.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::{self, Policy, PolicySpec, Subject};
use crate::glob::Glob;
use crate::snapshot::condition::Condition;
use crate::snapshot::rate_limit::RateSpec;
use crate::snapshot::{CompiledRule, Effect, RuleKind, SubjectMatch};

/// A Target as policy selection sees it.
pub(super) struct SelectableTarget<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

pub(super) struct CompiledPolicy {
    /// Target names (same namespace) the rules apply to.
    pub targets: Vec<String>,
    pub rules: Vec<CompiledRule>,
    /// Why the Policy was rejected (its rules are then the fail-closed form, or none).
    pub rejected: Option<(&'static str, String)>,
    /// Why a reference did not resolve.
    pub unresolved: Option<(&'static str, String)>,
    /// The rate limit each dataplane enforces (accepted Allow policies only).
    pub rate_limit: Option<RateSpec>,
}

/// One rule as read: its kind, name globs and condition.
type ParsedRule = (RuleKind, Vec<Glob>, Option<Condition>);

/// The rate limit, if any and valid; only an Allow policy may carry one.
fn parse_rate_limit(
    s: &PolicySpec,
    problems: &mut Vec<String>,
    reason: &mut &'static str,
) -> Option<RateSpec> {
    let r = s.rate_limit.as_ref()?;
    let spec = match RateSpec::new(r.requests, &r.interval, r.burst, r.per.into()) {
        Ok(spec) => spec,
        Err(e) => {
            *reason = "InvalidRateLimit";
            problems.push(e);
            return None;
        }
    };
    if s.effect != api::Effect::Allow {
        *reason = "InvalidRateLimit";
        problems.push("rateLimit applies to Allow policies only".to_owned());
        return None;
    }
    Some(spec)
}

pub(super) fn subject_match(s: &Subject) -> Result<SubjectMatch, String> {
    let everyone = s.everyone == Some(true);
    let set = [
        s.user.is_some(),
        s.group.is_some(),
        s.role.is_some(),
        everyone,
    ];
    if set.iter().filter(|b| **b).count() != 1 {
        return Err(
            "a subject names exactly one of user, group, role, or everyone: true".to_owned(),
        );
    }
    let nonempty = |v: &String, what: &str| {
        if v.is_empty() {
            Err(format!("subject {what} must not be empty"))
        } else {
            Ok(Arc::<str>::from(v.as_str()))
        }
    };
    Ok(match (&s.user, &s.group, &s.role) {
        (Some(u), _, _) => SubjectMatch::User(nonempty(u, "user")?),
        (_, Some(g), _) => SubjectMatch::Group(nonempty(g, "group")?),
        (_, _, Some(r)) => SubjectMatch::Role(nonempty(r, "role")?),
        _ => SubjectMatch::Everyone,
    })
}

pub(super) fn selector_matches(
    sel: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    if let Some(ml) = &sel.match_labels
        && !ml.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return Ok(false);
    }
    for req in sel.match_expressions.iter().flatten() {
        let values = req.values.as_deref().unwrap_or_default();
        let present = labels.get(&req.key);
        let ok = match req.operator.as_str() {
            "In" => present.is_some_and(|v| values.contains(v)),
            "NotIn" => present.is_none_or(|v| !values.contains(v)),
            "Exists" => present.is_some(),
            "DoesNotExist" => present.is_none(),
            other => return Err(format!("unknown label selector operator {other:?}")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Which Targets: exactly one of targetRef / targetSelector, same namespace by construction.
fn select_targets(s: &PolicySpec, targets: &[SelectableTarget<'_>]) -> Result<Vec<String>, String> {
    match (&s.target_ref, &s.target_selector) {
        (Some(r), None) => Ok(targets
            .iter()
            .filter(|t| t.name == r.name)
            .map(|t| t.name.to_owned())
            .collect()),
        (None, Some(sel)) => targets
            .iter()
            .filter_map(|t| match selector_matches(sel, t.labels) {
                Ok(true) => Some(Ok(t.name.to_owned())),
                Ok(false) => None,
                Err(e) => Some(Err(e)),
            })
            .collect(),
        _ => Err("exactly one of targetRef and targetSelector must be set".to_owned()),
    }
}

/// The subjects that could be read, and whether any could not.
fn parse_subjects(s: &PolicySpec, problems: &mut Vec<String>) -> (Vec<SubjectMatch>, bool) {
    let mut subjects = Vec::new();
    let mut bad_subject = false;
    if s.subjects.is_empty() {
        problems.push("subjects must not be empty".to_owned());
    }
    for (i, subj) in s.subjects.iter().enumerate() {
        match subject_match(subj) {
            Ok(m) => subjects.push(m),
            Err(e) => {
                bad_subject = true;
                problems.push(format!("subjects[{i}]: {e}"));
            }
        }
    }
    (subjects, bad_subject)
}

/// Each rule's kind and name globs; problems (and the reason for bad patterns) noted.
fn parse_rules(
    s: &PolicySpec,
    problems: &mut Vec<String>,
    reason: &mut &'static str,
) -> Vec<ParsedRule> {
    let mut rules = Vec::new();
    if s.rules.is_empty() {
        problems.push("rules must not be empty".to_owned());
    }
    for (i, rule) in s.rules.iter().enumerate() {
        if rule.names.is_empty() {
            problems.push(format!("rules[{i}].names must not be empty"));
        }
        let mut globs = Vec::new();
        for pat in &rule.names {
            match Glob::new(pat) {
                Ok(g) => globs.push(g),
                Err(e) => {
                    *reason = "InvalidPattern";
                    problems.push(format!("rules[{i}]: {e}"));
                }
            }
        }
        let when = rule
            .when
            .as_deref()
            .and_then(|src| match Condition::compile(src) {
                Ok(c) => Some(c),
                Err(e) => {
                    *reason = e.reason();
                    problems.push(format!("rules[{i}].when: {e}"));
                    None
                }
            });
        rules.push((rule.kind.into(), globs, when));
    }
    rules
}

/// Why a valid policy applies nowhere yet.
fn nothing_selected(s: &PolicySpec) -> (&'static str, String) {
    match &s.target_ref {
        Some(r) => (
            "TargetNotFound",
            format!("no accepted Target {:?} in this namespace", r.name),
        ),
        None => (
            "NoTargetsSelected",
            "the selector matches no accepted Target in this namespace".to_owned(),
        ),
    }
}

pub(super) fn compile_policy(
    p: &Policy,
    name: &str,
    targets: &[SelectableTarget<'_>],
) -> CompiledPolicy {
    let s = &p.spec;
    let mut problems: Vec<String> = Vec::new();
    let mut reason = "Invalid";

    let selection = select_targets(s, targets);
    let selected = selection.unwrap_or_else(|e| {
        problems.push(e);
        Vec::new()
    });

    let (subjects, bad_subject) = parse_subjects(s, &mut problems);
    if !(-1000..=1000).contains(&s.priority) {
        problems.push(format!("priority {} is outside -1000..=1000", s.priority));
    }
    let rules = parse_rules(s, &mut problems, &mut reason);
    let rate_limit = parse_rate_limit(s, &mut problems, &mut reason);

    let policy: Arc<str> = name.into();
    if !problems.is_empty() {
        let mut message = problems.join("; ");
        let fail_closed = s.effect == api::Effect::Deny;
        let rules = if fail_closed {
            // Deny everything to its subjects (everyone if any is unreadable), on the Targets we
            // could select (every Target in the namespace if none), at the stated priority.
            // A subject we could not read may have named anyone: deny everyone.
            let subjects = if subjects.is_empty() || bad_subject {
                vec![SubjectMatch::Everyone]
            } else {
                subjects
            };
            let deny_all = Glob::new("*").unwrap_or_else(|_| unreachable!("'*' is a valid glob"));
            subjects
                .into_iter()
                .map(|subject| CompiledRule {
                    policy: policy.clone(),
                    priority: s.priority.clamp(-1000, 1000),
                    effect: Effect::Deny,
                    subject,
                    kind: RuleKind::All,
                    names: vec![deny_all.clone()],
                    when: None,
                    rate_limit: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        let targets = if fail_closed && selected.is_empty() {
            targets.iter().map(|t| t.name.to_owned()).collect()
        } else {
            selected
        };
        if fail_closed {
            message.push_str(". Until fixed, this deny policy is enforced as deny-all for its subjects (fail closed)");
        } else {
            message.push_str(". The policy grants nothing until fixed");
        }
        return CompiledPolicy {
            targets,
            rules,
            rejected: Some((reason, message)),
            unresolved: None,
            rate_limit: None,
        };
    }

    let unresolved = selected.is_empty().then(|| nothing_selected(s));
    let compiled = subjects
        .iter()
        .flat_map(|subject| {
            rules.iter().map(|(kind, names, when)| CompiledRule {
                policy: policy.clone(),
                priority: s.priority,
                effect: s.effect.into(),
                subject: subject.clone(),
                kind: *kind,
                names: names.clone(),
                when: when.clone(),
                rate_limit,
            })
        })
        .collect();
    CompiledPolicy {
        targets: selected,
        rules: compiled,
        rejected: None,
        unresolved,
        rate_limit,
    }
}
