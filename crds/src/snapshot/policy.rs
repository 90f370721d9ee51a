//! The compiled policy of one Target and its index: per subject, exact names in hash maps and
//! globs in radix trees keyed by their literal prefix or suffix, each node's list in (priority
//! desc, deny first) order, so a decision touches only the caller's rules that could match.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::condition::{Condition, Outcome, Request};
use super::rate_limit::RateSpec;
use crate::glob::{Glob, GlobError, byte_mask};
use crate::identity::Identity;

/// The kinds of item a rule decides.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum RuleKind {
    #[default]
    All,
    Tool,
    Resource,
    Prompt,
}

/// What a rule does when it decides. Deny sorts first: at equal priority it wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Effect {
    Deny,
    Allow,
}

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

/// Whether a rule of kind `rule` can decide an item of kind `item`: the one rule-coverage
/// function, used by the decision index and by whoever asks which rules could matter.
pub fn covers(rule: RuleKind, item: ItemKind) -> bool {
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

impl SubjectMatch {
    /// Whether this subject names `id` (by user, one of its groups or roles, or everyone).
    pub fn applies_to(&self, id: &Identity) -> bool {
        match self {
            SubjectMatch::User(u) => **u == *id.user,
            SubjectMatch::Group(g) => id.in_group(g),
            SubjectMatch::Role(r) => id.has_role(r),
            SubjectMatch::Everyone => true,
        }
    }
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
    /// The rule applies only when this holds (kept out of the name index: decided per request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// The Policy's rate limit (Allow policies only), charged whenever this rule matches a call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateSpec>,
}

impl CompiledRule {
    fn names_match(&self, item: ItemKind, name: &str) -> bool {
        covers(self.kind, item) && self.names.iter().any(|g| g.matches(name))
    }
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
    /// The condition that mattered: the deciding rule's, or else the first one evaluated that
    /// did not apply (why a conditional allow did not grant), with its outcome.
    pub condition: Option<(Arc<str>, Outcome)>,
}

impl Decision {
    pub const DEFAULT_DENY: Decision = Decision {
        allowed: false,
        policy: None,
        condition: None,
    };
}

/// Whether a rule whose condition came out `o` decides: a true condition always; an error or an
/// oversized input only for a Deny (fail closed); an undecidable one (`args` while listing) only
/// for an Allow (the item is shown; the call decides).
fn applies(effect: Effect, o: Outcome) -> bool {
    match o {
        Outcome::True => true,
        Outcome::False => false,
        Outcome::Error | Outcome::Exceeded => effect == Effect::Deny,
        Outcome::Unknown => effect == Effect::Allow,
    }
}

/// FxHash (as in rustc): a few cycles for the short names hashed on every decision, where
/// SipHash dominated. Not DoS-resistant, which is fine here: the keys are policy names and
/// subjects written by administrators; callers only look names up.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0xf135_7aea_2e62_a9c5;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(26) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.0 = (self.0.rotate_left(26) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        // Spread the high bits (which the multiply mixes best) into the low ones hashbrown uses.
        self.0.rotate_left(26)
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

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
    exact: [FastMap<Box<str>, Rank>; 3],
    /// Wildcard patterns, indexed by their literal prefix or suffix.
    globs: GlobIndex,
    has_allow: bool,
    /// Rules with a condition, strongest first: decided per request, after the index.
    conditional: Vec<Rank>,
    /// Rules whose Policy has a rate limit.
    limited: Vec<u32>,
}

impl SubjectRules {
    fn add(&mut self, rank: Rank, rule: &CompiledRule) {
        if rule.effect == Effect::Allow {
            self.has_allow = true;
        }
        if rule.rate_limit.is_some() {
            self.limited.push(rank.rule);
        }
        if rule.when.is_some() {
            self.conditional.push(rank);
            return;
        }
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
                None => self.globs.add(GlobEntry {
                    rank,
                    kind: rule.kind,
                    glob: g.clone(),
                }),
            }
        }
    }

    fn finish(&mut self) {
        self.globs.finish();
        self.conditional.sort();
    }

    /// The strongest matching rank in this subject's rules, if stronger than `best`.
    fn best(&self, item: ItemKind, name: &Probe<'_>, mut best: Option<Rank>) -> Option<Rank> {
        if let Some(r) = self.exact[item.slot()].get(name.text) {
            best = Some(best.map_or(*r, |b| b.min(*r)));
        }
        self.globs.best(item, name, best)
    }
}

/// A name being decided on, with its [`byte_mask`] computed once.
struct Probe<'a> {
    text: &'a str,
    mask: u64,
}

impl<'a> Probe<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            mask: byte_mask(text),
        }
    }
}

#[derive(Debug)]
struct GlobEntry {
    rank: Rank,
    kind: RuleKind,
    glob: Glob,
}

/// Wildcard patterns arranged so a decision only examines patterns that can match: those whose
/// literal prefix is a prefix of the name (a radix tree walked along the name), else those whose
/// literal suffix is a suffix of it (a radix tree over reversed suffixes), else the few with
/// neither (the root of the suffix tree).
#[derive(Default, Debug)]
struct GlobIndex {
    by_prefix: Radix,
    by_suffix: Radix,
}

impl GlobIndex {
    fn add(&mut self, e: GlobEntry) {
        let prefix = e.glob.literal_prefix().as_bytes().to_vec();
        if !prefix.is_empty() {
            self.by_prefix.insert(&prefix, e);
        } else {
            let mut suffix = e.glob.literal_suffix().as_bytes().to_vec();
            suffix.reverse();
            self.by_suffix.insert(&suffix, e);
        }
    }

    fn finish(&mut self) {
        self.by_prefix.finish();
        self.by_suffix.finish();
    }

    fn best(&self, item: ItemKind, name: &Probe<'_>, best: Option<Rank>) -> Option<Rank> {
        let bytes = name.text.as_bytes();
        // The walks check the literal prefix (resp. suffix) of every entry they examine.
        let best = self
            .by_prefix
            .best(|i| bytes.get(i).copied(), false, item, name, best);
        let from_end = |i: usize| bytes.len().checked_sub(i + 1).map(|j| bytes[j]);
        self.by_suffix.best(from_end, true, item, name, best)
    }
}

/// A radix tree over byte strings whose nodes hold pattern entries, strongest first. Walking a
/// name visits only the nodes whose key is a prefix of it, one step per branching point.
#[derive(Debug)]
struct Radix {
    nodes: Vec<RadixNode>,
}

#[derive(Default, Debug)]
struct RadixNode {
    /// The bytes on the edge from the parent (empty only at the root).
    label: Box<[u8]>,
    /// (first byte of the child's label, node index), sorted by byte.
    children: Vec<(u8, u32)>,
    entries: Vec<GlobEntry>,
}

impl Default for Radix {
    fn default() -> Self {
        Self {
            nodes: vec![RadixNode::default()],
        }
    }
}

impl Radix {
    fn child(&self, node: usize, b: u8) -> Option<usize> {
        let children = &self.nodes[node].children;
        children
            .binary_search_by_key(&b, |(c, _)| *c)
            .ok()
            .map(|i| children[i].1 as usize)
    }

    fn push(&mut self, node: RadixNode) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn set_child(&mut self, parent: usize, b: u8, child: usize) {
        let children = &mut self.nodes[parent].children;
        match children.binary_search_by_key(&b, |(c, _)| *c) {
            Ok(i) => children[i].1 = child as u32,
            Err(i) => children.insert(i, (b, child as u32)),
        }
    }

    fn insert(&mut self, mut key: &[u8], e: GlobEntry) {
        let mut node = 0;
        while let Some(&first) = key.first() {
            let Some(c) = self.child(node, first) else {
                let leaf = self.push(RadixNode {
                    label: key.into(),
                    ..RadixNode::default()
                });
                self.set_child(node, first, leaf);
                node = leaf;
                break;
            };
            let label = &self.nodes[c].label;
            let common = label.iter().zip(key).take_while(|(a, b)| a == b).count();
            if common < label.len() {
                // Split the edge: parent → mid (common part) → c (the rest).
                let (head, tail) = label.split_at(common);
                let (head, tail): (Box<[u8]>, Box<[u8]>) = (head.into(), tail.into());
                let mid = self.push(RadixNode {
                    label: head,
                    children: vec![(tail[0], c as u32)],
                    entries: Vec::new(),
                });
                self.nodes[c].label = tail;
                self.set_child(node, first, mid);
                node = mid;
            } else {
                node = c;
            }
            key = &key[common..];
        }
        self.nodes[node].entries.push(e);
    }

    fn finish(&mut self) {
        for n in &mut self.nodes {
            n.entries.sort_by_key(|e| e.rank);
        }
    }

    /// Walks the key (`at(i)` is its i-th byte) from the root, examining the entries of every
    /// node whose key is a prefix of it.
    fn best(
        &self,
        at: impl Fn(usize) -> Option<u8>,
        suffix_tree: bool,
        item: ItemKind,
        name: &Probe<'_>,
        mut best: Option<Rank>,
    ) -> Option<Rank> {
        let (mut node, mut depth) = (0usize, 0usize);
        loop {
            for e in &self.nodes[node].entries {
                if best.is_some_and(|b| b <= e.rank) {
                    break;
                }
                if covers(e.kind, item)
                    && e.glob.may_match(name.mask)
                    && e.glob.matches_known_affixes(name.text, suffix_tree)
                {
                    best = Some(e.rank);
                    break;
                }
            }
            let Some(c) = at(depth).and_then(|b| self.child(node, b)) else {
                return best;
            };
            let label = &self.nodes[c].label;
            if !label
                .iter()
                .enumerate()
                .all(|(k, b)| at(depth + k) == Some(*b))
            {
                return best;
            }
            depth += label.len();
            node = c;
        }
    }
}

#[derive(Default, Debug)]
struct PolicyIndex {
    users: FastMap<Arc<str>, SubjectRules>,
    groups: FastMap<Arc<str>, SubjectRules>,
    roles: FastMap<Arc<str>, SubjectRules>,
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
    pub fn view<'a>(&'a self, id: &'a Identity) -> PolicyView<'a> {
        let ix = &self.index;
        // Sized up front: a flattened iterator's size hint would make `collect` reallocate.
        let mut subjects = Vec::with_capacity(2 + id.groups.len() + id.roles.len());
        subjects.extend(ix.users.get(&*id.user));
        subjects.extend(id.groups.iter().filter_map(|g| ix.groups.get(&**g)));
        subjects.extend(id.roles.iter().filter_map(|r| ix.roles.get(&**r)));
        subjects.push(&ix.everyone);
        PolicyView {
            set: self,
            id,
            subjects,
        }
    }

    pub fn decide(&self, id: &Identity, kind: ItemKind, name: &str) -> Decision {
        self.view(id).decide(kind, name)
    }

    pub fn decide_request(&self, id: &Identity, req: &Request<'_>) -> Decision {
        self.view(id).decide_request(req)
    }
}

/// One caller's slice of a PolicySet.
pub struct PolicyView<'a> {
    set: &'a PolicySet,
    id: &'a Identity,
    subjects: Vec<&'a SubjectRules>,
}

impl PolicyView<'_> {
    /// As a list decides: no arguments, no Target name.
    pub fn decide(&self, kind: ItemKind, name: &str) -> Decision {
        self.decide_request(&Request::listing(kind, name, ""))
    }

    /// Default deny; the strongest applying rule wins (priority, then deny over allow). Rules
    /// with a condition count only when it applies (see [`applies`]).
    pub fn decide_request(&self, req: &Request<'_>) -> Decision {
        let probe = Probe::new(req.name);
        let best = self
            .subjects
            .iter()
            .fold(None, |best, sr| sr.best(req.kind, &probe, best));
        let mut first_skipped = None;
        if self.subjects.iter().any(|s| !s.conditional.is_empty()) {
            let mut stronger: Vec<Rank> = self
                .subjects
                .iter()
                .flat_map(|s| s.conditional.iter())
                .filter(|r| best.is_none_or(|b| **r < b))
                .copied()
                .collect();
            stronger.sort();
            for rank in stronger {
                let Some(rule) = self.set.rules.get(rank.rule as usize) else {
                    continue;
                };
                let Some(cond) = rule.when.as_ref() else {
                    continue;
                };
                if !rule.names_match(req.kind, req.name) {
                    continue;
                }
                let outcome = cond.eval(self.id, req);
                if applies(rule.effect, outcome) {
                    return Decision {
                        allowed: rule.effect == Effect::Allow,
                        policy: Some(rule.policy.clone()),
                        condition: Some((rule.policy.clone(), outcome)),
                    };
                }
                first_skipped.get_or_insert((rule.policy.clone(), outcome));
            }
        }
        match best {
            None => Decision {
                condition: first_skipped,
                ..Decision::DEFAULT_DENY
            },
            Some(rank) => Decision {
                allowed: rank.effect == Effect::Allow,
                policy: self
                    .set
                    .rules
                    .get(rank.rule as usize)
                    .map(|r| r.policy.clone()),
                condition: first_skipped,
            },
        }
    }

    /// The rate limits an allowed call is charged against: each rate-limited Policy whose rule
    /// matches it (condition included) once, as (policy, spec).
    pub fn rate_limits(&self, req: &Request<'_>) -> Vec<(Arc<str>, RateSpec)> {
        let mut out: Vec<(Arc<str>, RateSpec)> = Vec::new();
        for idx in self.subjects.iter().flat_map(|s| s.limited.iter()) {
            let Some(rule) = self.set.rules.get(*idx as usize) else {
                continue;
            };
            let Some(spec) = rule.rate_limit else {
                continue;
            };
            if out.iter().any(|(p, _)| *p == rule.policy) || !rule.names_match(req.kind, req.name) {
                continue;
            }
            if let Some(c) = &rule.when
                && c.eval(self.id, req) != Outcome::True
            {
                continue;
            }
            out.push((rule.policy.clone(), spec));
        }
        out
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
