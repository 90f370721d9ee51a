//! The compiler: Targets, Policies, Credentials and Secrets in → one Snapshot plus a report per
//! object. One bad object is rejected alone; the rest still compiles. Same code in both modes.

mod convert;
mod credential;
pub mod pod_security;
mod policy;
mod report;
mod target;
mod user_credential;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::api::{Credential, Policy, Target, TokenRevocation};
use crate::seal::SealingKey;
use crate::snapshot::{
    CompiledCredential, CompiledRule, CompiledTarget, CompiledUserCredential, CredentialMatch,
    PolicySet, Revocations, Snapshot, SnapshotError,
};

pub use report::{
    ACCEPTED, CONFLICTED, ConditionReport, ObjectKind, ObjectReport, RATE_LIMITED, RESOLVED_REFS,
    SANDBOXED,
};

/// Everything the compiler reads. Objects without a namespace are taken to be in `default`.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub targets: Vec<Target>,
    pub policies: Vec<Policy>,
    pub credentials: Vec<Credential>,
    pub secrets: Vec<Secret>,
    pub revocations: Vec<TokenRevocation>,
}

#[derive(Debug)]
pub struct Compiled {
    pub snapshot: Snapshot,
    pub reports: Vec<ObjectReport>,
}

impl Compiled {
    pub fn report(&self, kind: ObjectKind, namespace: &str, name: &str) -> Option<&ObjectReport> {
        self.reports
            .iter()
            .find(|r| r.kind == kind && r.namespace == namespace && r.name == name)
    }

    /// Reports with any condition that needs attention (not accepted, unresolved, conflicted).
    pub fn problems(&self) -> impl Iterator<Item = &ObjectReport> {
        self.reports.iter().filter(|r| {
            r.conditions.iter().any(|c| {
                if c.type_ == CONFLICTED {
                    c.status
                } else {
                    !c.status
                }
            })
        })
    }
}

fn ns_of<K: kube::Resource>(o: &K) -> String {
    o.meta()
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

/// Objects in namespace/name order. A second object with the same namespace and name (only
/// possible in standalone folders) gets a `Duplicate` report and is left out.
/// Their reports come back separately so callers list them after the object that is used.
fn sorted<'a, K: kube::Resource + 'a>(
    items: &'a [K],
    kind: ObjectKind,
) -> (Vec<(String, String, &'a K)>, Vec<ObjectReport>) {
    let mut duplicates = Vec::new();
    let mut v: Vec<_> = items.iter().map(|o| (ns_of(o), o.name_any(), o)).collect();
    v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut out: Vec<(String, String, &'a K)> = Vec::with_capacity(v.len());
    for item in v {
        if out
            .last()
            .is_some_and(|last| last.0 == item.0 && last.1 == item.1)
        {
            let mut r = ObjectReport::new(kind, &item.0, &item.1, item.2.meta().generation);
            r.set(ACCEPTED, false, "Duplicate", "another object of this kind with this namespace and name was given; the first one is used");
            duplicates.push(r);
        } else {
            out.push(item);
        }
    }
    (out, duplicates)
}

struct TargetBuild<'a> {
    target: &'a Target,
    routing: target::Routing,
    rules: Vec<CompiledRule>,
    credentials: Vec<CompiledCredential>,
    user_credential: Option<CompiledUserCredential>,
}

pub fn compile(inputs: &Inputs, key: &SealingKey) -> Result<Compiled, SnapshotError> {
    let mut reports = Vec::new();
    let secrets = secrets_by_name(inputs);
    let mut builds = compile_targets(inputs, &secrets, key, &mut reports);
    compile_policies(inputs, &mut builds, &mut reports);
    compile_credentials(inputs, &secrets, key, &mut builds, &mut reports);
    let targets = builds
        .into_iter()
        .map(|((ns, name), b)| {
            Arc::new(CompiledTarget {
                namespace: ns.into(),
                name: name.into(),
                generation: b.target.metadata.generation,
                prefix: b.routing.prefix,
                upstream: b.routing.upstream,
                isolation: b.target.spec.isolation.into(),
                stateful: b.target.spec.stateful,
                timeouts: b.routing.timeouts,
                lifetimes: b.routing.lifetimes,
                policy: PolicySet::new(b.rules),
                credentials: b.credentials.into(),
                identity_forwarding: b
                    .target
                    .spec
                    .identity_forwarding
                    .as_ref()
                    .filter(|f| f.jwt.is_some() || f.headers)
                    .map(Into::into),
                pinning: b.routing.pinning,
                user_credential: b.user_credential,
            })
        })
        .collect();
    let revocations = compile_revocations(&inputs.revocations, &mut reports);
    Ok(Compiled {
        snapshot: Snapshot::with_revocations(targets, revocations)?,
        reports,
    })
}

/// Accepted Targets by (namespace, name), with what policies and credentials add to them.
type Builds<'a> = BTreeMap<(String, String), TargetBuild<'a>>;

fn secrets_by_name(inputs: &Inputs) -> credential::Secrets<'_> {
    inputs
        .secrets
        .iter()
        .filter_map(|s| {
            Some((
                (s.metadata.namespace.as_deref().unwrap_or("default")),
                s.metadata.name.as_deref()?,
            ))
            .map(|k| (k, s))
        })
        .collect()
}

/// Targets: routing, prefix uniqueness (first by namespace/name wins), `userCredential`.
fn compile_targets<'a>(
    inputs: &'a Inputs,
    secrets: &credential::Secrets<'_>,
    key: &SealingKey,
    reports: &mut Vec<ObjectReport>,
) -> Builds<'a> {
    let mut builds: Builds<'_> = BTreeMap::new();
    let mut prefixes: HashMap<Arc<str>, String> = HashMap::new();
    let (targets, target_dups) = sorted(&inputs.targets, ObjectKind::Target);
    for (ns, name, t) in targets {
        let mut r = ObjectReport::new(ObjectKind::Target, &ns, &name, t.metadata.generation);
        let routed = target::routing(t, &name).and_then(|routing| {
            user_credential::compile(&t.spec, &ns, &name, secrets, key).map(|u| (routing, u))
        });
        match routed {
            Err((reason, msg)) => r.set(ACCEPTED, false, reason, msg),
            Ok((routing, user_credential)) => {
                if let Some(owner) = prefixes.get(&routing.prefix) {
                    r.set(
                        ACCEPTED,
                        false,
                        "PrefixConflict",
                        format!("prefix {:?} is already used by Target {owner}; set a distinct spec.prefix", &*routing.prefix),
                    );
                } else {
                    prefixes.insert(routing.prefix.clone(), format!("{ns}/{name}"));
                    r.set(
                        ACCEPTED,
                        true,
                        "Accepted",
                        format!("routed as prefix {:?}", &*routing.prefix),
                    );
                    r.set(RESOLVED_REFS, true, "ResolvedRefs", "");
                    if let Some((status, reason, msg)) = target::sandbox_condition(&routing) {
                        r.set(SANDBOXED, status, reason, msg);
                    }
                    builds.insert(
                        (ns.clone(), name.clone()),
                        TargetBuild {
                            target: t,
                            routing,
                            rules: Vec::new(),
                            credentials: Vec::new(),
                            user_credential,
                        },
                    );
                }
            }
        }
        reports.push(r);
    }

    reports.extend(target_dups);
    builds
}

/// Policies, in namespace/name order so rule order (the final tie-break) is deterministic.
fn compile_policies(inputs: &Inputs, builds: &mut Builds<'_>, reports: &mut Vec<ObjectReport>) {
    let empty_labels = BTreeMap::new();
    let (policies, policy_dups) = sorted(&inputs.policies, ObjectKind::Policy);
    for (ns, name, p) in policies {
        let mut r = ObjectReport::new(ObjectKind::Policy, &ns, &name, p.metadata.generation);
        let selectable: Vec<policy::SelectableTarget<'_>> = builds
            .range((ns.clone(), String::new())..)
            .take_while(|((tns, _), _)| *tns == ns)
            .map(|((_, tname), b)| policy::SelectableTarget {
                name: tname,
                labels: b.target.metadata.labels.as_ref().unwrap_or(&empty_labels),
            })
            .collect();
        let compiled = policy::compile_policy(p, &name, &selectable);
        match &compiled.rejected {
            Some((reason, msg)) => r.set(ACCEPTED, false, reason, msg.clone()),
            None => r.set(ACCEPTED, true, "Accepted", ""),
        }
        match &compiled.unresolved {
            Some((reason, msg)) => r.set(RESOLVED_REFS, false, reason, msg.clone()),
            None if compiled.rejected.is_none() => r.set(
                RESOLVED_REFS,
                true,
                "ResolvedRefs",
                format!("applies to {} Target(s)", compiled.targets.len()),
            ),
            None => {}
        }
        for tname in &compiled.targets {
            if let Some(b) = builds.get_mut(&(ns.clone(), tname.clone())) {
                b.rules.extend(compiled.rules.iter().cloned());
            }
        }
        r.rate_limit = compiled.rate_limit;
        reports.push(r);
    }

    reports.extend(policy_dups);
}

/// Credentials: validated, sealed, attached to their Target; ambiguous precedence reported.
fn compile_credentials(
    inputs: &Inputs,
    secrets: &credential::Secrets<'_>,
    key: &SealingKey,
    builds: &mut Builds<'_>,
    reports: &mut Vec<ObjectReport>,
) {
    let mut cred_reports: HashMap<(String, String), usize> = HashMap::new();
    let (credentials, credential_dups) = sorted(&inputs.credentials, ObjectKind::Credential);
    for (ns, name, c) in credentials {
        let mut r = ObjectReport::new(ObjectKind::Credential, &ns, &name, c.metadata.generation);
        let tname = c.spec.target_ref.name.clone();
        match credential::validate(c) {
            Err(msg) => r.set(ACCEPTED, false, "Invalid", msg),
            Ok(subject) => {
                r.set(ACCEPTED, true, "Accepted", "");
                match builds.get_mut(&(ns.clone(), tname.clone())) {
                    None => r.set(
                        RESOLVED_REFS,
                        false,
                        "TargetNotFound",
                        format!("no accepted Target {tname:?} in this namespace"),
                    ),
                    Some(b) => {
                        let sealed =
                            credential::seal_entries(c, &ns, &tname, &subject, secrets, key)
                                .and_then(|entries| {
                                    user_slot_only(&subject, b.user_credential.as_ref(), entries)
                                });
                        match sealed {
                            Err((reason, msg)) => r.set(RESOLVED_REFS, false, reason, msg),
                            Ok(entries) => {
                                r.set(RESOLVED_REFS, true, "ResolvedRefs", "");
                                r.set(CONFLICTED, false, "NoConflicts", "");
                                b.credentials.push(CompiledCredential {
                                    credential: name.as_str().into(),
                                    subject,
                                    entries,
                                });
                            }
                        }
                    }
                }
            }
        }
        cred_reports.insert((ns, name), reports.len());
        reports.push(r);
    }
    reports.extend(credential_dups);
    for ((ns, _), b) in builds.iter_mut() {
        for (cred, msg) in shadow_user_slot(b) {
            if let Some(i) = cred_reports.get(&(ns.clone(), cred.to_string())) {
                reports[*i].set(CONFLICTED, true, "ShadowedByUserCredential", msg);
            }
        }
        for (cred, msg) in credential::ambiguities(&b.credentials) {
            if let Some(i) = cred_reports.get(&(ns.clone(), cred.to_string())) {
                reports[*i].set(CONFLICTED, true, "AmbiguousPrecedence", msg);
            }
        }
    }
}

/// A user-brought Credential fills exactly the Target's `userCredential` slot and nothing else:
/// a grant written for a user can never set other headers or env vars.
fn user_slot_only(
    subject: &CredentialMatch,
    slot: Option<&CompiledUserCredential>,
    entries: Vec<crate::snapshot::SealedEntry>,
) -> Result<Vec<crate::snapshot::SealedEntry>, (&'static str, String)> {
    if !matches!(subject, CredentialMatch::UserBrought(_)) {
        return Ok(entries);
    }
    match slot {
        None => Err((
            "NoUserCredential",
            "the Target declares no spec.userCredential for a user-managed Credential to fill"
                .to_owned(),
        )),
        Some(u) if entries.len() == 1 && u.is_slot(&entries[0]) => Ok(entries),
        Some(u) => Err((
            "NotTheUserSlot",
            format!(
                "a user-managed Credential injects exactly the Target's userCredential slot ({} {:?})",
                u.inject_as.as_str(),
                &*u.name
            ),
        )),
    }
}

/// On a Target with `userCredential`, group, role and default Credentials never fill the user's
/// slot: a shared value there would make everyone act upstream as one account. Returns the
/// Credentials whose value for the slot was dropped, with the message for their status.
fn shadow_user_slot(b: &mut TargetBuild<'_>) -> Vec<(Arc<str>, String)> {
    let Some(u) = &b.user_credential else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in &mut b.credentials {
        if matches!(
            c.subject,
            CredentialMatch::Group(_) | CredentialMatch::Role(_) | CredentialMatch::Default
        ) && c.entries.iter().any(|e| u.is_slot(e))
        {
            c.entries.retain(|e| !u.is_slot(e));
            out.push((
                c.credential.clone(),
                format!(
                    "{} {:?} is brought by each user (the Target's spec.userCredential); this {} Credential's value for it is never injected",
                    u.inject_as.as_str(),
                    &*u.name,
                    c.subject.label()
                ),
            ));
        }
    }
    out
}

/// Token revocations are cluster-scoped and independent of Targets: each valid one adds its
/// token ids and subject cut-offs. An invalid one is rejected alone (the others still apply).
fn compile_revocations(items: &[TokenRevocation], reports: &mut Vec<ObjectReport>) -> Revocations {
    let mut out = Revocations::default();
    let mut sorted: Vec<&TokenRevocation> = items.iter().collect();
    sorted.sort_by_key(|r| r.name_any());
    for rev in sorted {
        let name = rev.name_any();
        let mut r = ObjectReport::new(
            ObjectKind::TokenRevocation,
            "",
            &name,
            rev.metadata.generation,
        );
        let spec = &rev.spec;
        let problem = if spec.token_ids.is_empty() && spec.subjects.is_empty() {
            Some("names no token id and no subject")
        } else if spec.token_ids.iter().any(|j| j.is_empty() || j.len() > 256) {
            Some("token ids must be 1 to 256 characters")
        } else if spec.subjects.iter().any(|s| s.user.is_empty()) {
            Some("every subject needs a user")
        } else {
            None
        };
        match problem {
            Some(msg) => r.set(ACCEPTED, false, "Invalid", msg),
            None => {
                out.token_ids.extend(spec.token_ids.iter().cloned());
                for s in &spec.subjects {
                    out.add_subject(&s.user, s.issued_before.0.as_second());
                }
                r.set(
                    ACCEPTED,
                    true,
                    "Accepted",
                    format!(
                        "revokes {} token id(s) and the earlier tokens of {} user(s)",
                        spec.token_ids.len(),
                        spec.subjects.len()
                    ),
                );
            }
        }
        reports.push(r);
    }
    out
}
