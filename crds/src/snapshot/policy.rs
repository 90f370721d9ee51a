//! The compiled policy of one Target and its index: per subject, exact names in hash maps and
//! globs in (priority desc, deny first) order, so a decision touches only the caller's rules.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::api::{Effect, RuleKind};
use crate::glob::{Glob, GlobError};
use crate::identity::Identity;

/// The kind of an item being decided on (a rule may also say `all`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ItemKind {
    Tool,
    Resource,
    Prompt,
}

impl ItemKind {
    pub const ALL: [ItemKind; 3] = [ItemKind::Tool, ItemKind::Resource, ItemKind::Prompt];

    fn slot(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Tool => "tool",
            ItemKind::Resource => "resource",
            ItemKind::Prompt => "prompt",
        }
    }
}

fn covers(rule: RuleKind, item: ItemKind) -> bool {
    matches!(
        (rule, item),
        (RuleKind::All, _)
            | (RuleKind::Tool, ItemKind::Tool)
            | (RuleKind::Resource, ItemKind::Resource)
            | (RuleKind::Prompt, ItemKind::Prompt)
    )
}

/// Who a compiled rule applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SubjectMatch {
    User(Arc<str>),
    Group(Arc<str>),
    Role(Arc<str>),
    Everyone,
}

/// One (policy, subject, rule) triple, flattened at compile time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledRule {
    /// Name of the Policy (in the Target's namespace) this rule came from.
    pub policy: Arc<str>,
    pub priority: i32,
    pub effect: Effect,
    pub subject: SubjectMatch,
    pub kind: RuleKind,
    #[serde(serialize_with = "ser_globs", deserialize_with = "de_globs")]
    pub names: Vec<Glob>,
}

fn ser_globs<S: Serializer>(globs: &[Glob], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(globs.iter().map(Glob::as_str))
}

fn de_globs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Glob>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|p| Glob::new(p))
        .collect::<Result<_, GlobError>>()
        .map_err(serde::de::Error::custom)
}

/// The outcome of one decision, with the rule that made it (for audit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The deciding Policy; `None` means default deny.
    pub policy: Option<Arc<str>>,
}

impl Decision {
    pub const DEFAULT_DENY: Decision = Decision {
        allowed: false,
        policy: None,
    };
}

/// Ordering key of a candidate verdict: smaller is stronger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    neg_priority: i64,
    effect: Effect,
    rule: u32,
}

impl Rank {
    fn new(rule: &CompiledRule, idx: u32) -> Self {
        Self {
            neg_priority: -i64::from(rule.priority),
            effect: rule.effect,
            rule: idx,
        }
    }
}

#[derive(Default, Debug)]
struct SubjectRules {
    /// Per item kind: exact name → the strongest rule naming it.
    exact: [HashMap<Box<str>, Rank>; 3],
    /// Rules with at least one wildcard pattern, strongest first.
    globs: Vec<(Rank, RuleKind, Vec<Glob>)>,
    has_allow: bool,
}

impl SubjectRules {
    fn add(&mut self, rank: Rank, rule: &CompiledRule) {
        if rule.effect == Effect::Allow {
            self.has_allow = true;
        }
        let mut wild = Vec::new();
        for g in &rule.names {
            match g.literal() {
                Some(name) => {
                    for item in ItemKind::ALL.into_iter().filter(|i| covers(rule.kind, *i)) {
                        let slot = self.exact[item.slot()]
                            .entry(name.clone().into())
                            .or_insert(rank);
                        *slot = (*slot).min(rank);
                    }
                }
                None => wild.push(g.clone()),
            }
        }
        if !wild.is_empty() {
            self.globs.push((rank, rule.kind, wild));
        }
    }

    fn finish(&mut self) {
        self.globs.sort_by_key(|(rank, _, _)| *rank);
    }

    /// The strongest matching rank in this subject's rules, if stronger than `best`.
    fn best(&self, item: ItemKind, name: &str, mut best: Option<Rank>) -> Option<Rank> {
        if let Some(r) = self.exact[item.slot()].get(name) {
            best = Some(best.map_or(*r, |b| b.min(*r)));
        }
        for (rank, kind, globs) in &self.globs {
            if best.is_some_and(|b| b <= *rank) {
                break;
            }
            if covers(*kind, item) && globs.iter().any(|g| g.matches(name)) {
                best = Some(*rank);
                break;
            }
        }
        best
    }
}

#[derive(Default, Debug)]
struct PolicyIndex {
    users: HashMap<Arc<str>, SubjectRules>,
    groups: HashMap<Arc<str>, SubjectRules>,
    roles: HashMap<Arc<str>, SubjectRules>,
    everyone: SubjectRules,
}

/// Every rule that applies to one Target, with its index. Serialized as the rule list; the index
/// is rebuilt on deserialization.
#[derive(Debug, Default)]
pub struct PolicySet {
    rules: Vec<CompiledRule>,
    index: PolicyIndex,
}

impl PolicySet {
    pub fn new(rules: Vec<CompiledRule>) -> Self {
        let mut index = PolicyIndex::default();
        for (i, rule) in rules.iter().enumerate() {
            let rank = Rank::new(rule, i as u32);
            let bucket = match &rule.subject {
                SubjectMatch::User(u) => index.users.entry(u.clone()).or_default(),
                SubjectMatch::Group(g) => index.groups.entry(g.clone()).or_default(),
                SubjectMatch::Role(r) => index.roles.entry(r.clone()).or_default(),
                SubjectMatch::Everyone => &mut index.everyone,
            };
            bucket.add(rank, rule);
        }
        for sr in index
            .users
            .values_mut()
            .chain(index.groups.values_mut())
            .chain(index.roles.values_mut())
            .chain(std::iter::once(&mut index.everyone))
        {
            sr.finish();
        }
        Self { rules, index }
    }

    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// The rules relevant to one caller, gathered once for many decisions.
    pub fn view(&self, id: &Identity) -> PolicyView<'_> {
        let ix = &self.index;
        let subjects = std::iter::once(ix.users.get(&*id.user))
            .chain(id.groups.iter().map(|g| ix.groups.get(&**g)))
            .chain(id.roles.iter().map(|r| ix.roles.get(&**r)))
            .chain(std::iter::once(Some(&ix.everyone)))
            .flatten()
            .collect();
        PolicyView {
            set: self,
            subjects,
        }
    }

    pub fn decide(&self, id: &Identity, kind: ItemKind, name: &str) -> Decision {
        self.view(id).decide(kind, name)
    }
}

/// One caller's slice of a PolicySet.
pub struct PolicyView<'a> {
    set: &'a PolicySet,
    subjects: Vec<&'a SubjectRules>,
}

impl PolicyView<'_> {
    /// Default deny; the strongest matching rule wins (priority, then deny over allow).
    pub fn decide(&self, kind: ItemKind, name: &str) -> Decision {
        let best = self
            .subjects
            .iter()
            .fold(None, |best, sr| sr.best(kind, name, best));
        match best {
            None => Decision::DEFAULT_DENY,
            Some(rank) => Decision {
                allowed: rank.effect == Effect::Allow,
                policy: self
                    .set
                    .rules
                    .get(rank.rule as usize)
                    .map(|r| r.policy.clone()),
            },
        }
    }

    /// False when no rule could allow this caller anything: the upstream need not be contacted.
    pub fn may_allow_anything(&self) -> bool {
        self.subjects.iter().any(|s| s.has_allow)
    }

    /// The names of one kind this caller may see, in input order.
    pub fn visible<'n, I>(&self, kind: ItemKind, names: I) -> impl Iterator<Item = &'n str>
    where
        I: IntoIterator<Item = &'n str>,
    {
        names
            .into_iter()
            .filter(move |n| self.decide(kind, n).allowed)
    }
}

impl Clone for PolicySet {
    fn clone(&self) -> Self {
        Self::new(self.rules.clone())
    }
}

impl PartialEq for PolicySet {
    fn eq(&self, other: &Self) -> bool {
        self.rules == other.rules
    }
}

impl Serialize for PolicySet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.rules.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PolicySet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::new(Vec::deserialize(d)?))
    }
}
