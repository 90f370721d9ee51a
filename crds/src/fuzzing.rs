//! The bodies of the `fuzz/` targets that belong to the model: glob compilation and the
//! manifests loader. Each is a plain function, so cargo-fuzz (nightly) and a stable test over the
//! committed corpus (`e2e/tests/fuzz_corpus.rs`) run the same code and check the same properties.
//!
//! A property that fails panics with what it found; inputs are never trusted to be valid.

use std::collections::HashMap;

use crate::glob::{Glob, byte_mask};

/// Longest name the naive matcher is asked about (it is quadratic in pattern × name).
const MAX_NAME_CHARS: usize = 256;

/// `data` is a pattern (first line) and names (the other lines). A compiled glob must agree
/// with a naive backtracking matcher on every name, and its shortcuts (literal, prefix, suffix,
/// byte mask) must never contradict a match.
pub fn glob(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let pattern = lines.next().unwrap_or_default();
    let Ok(glob) = Glob::new(pattern) else {
        return;
    };
    assert_eq!(glob.as_str(), pattern);
    let pattern_chars: Vec<char> = pattern.chars().collect();
    let mut names: Vec<String> = lines
        .filter(|n| n.chars().count() <= MAX_NAME_CHARS)
        .map(str::to_owned)
        .collect();
    if let Some(literal) = glob.literal() {
        names.push(literal);
    }
    names.push(glob.literal_prefix().to_owned());
    names.push(format!(
        "{}{}",
        glob.literal_prefix(),
        glob.literal_suffix()
    ));
    for name in &names {
        let fast = glob.matches(name);
        let naive = naive_match(&pattern_chars, &name.chars().collect::<Vec<_>>());
        assert_eq!(fast, naive, "pattern {pattern:?} on {name:?}");
        if fast {
            assert!(glob.may_match(byte_mask(name)), "mask of {name:?}");
            assert!(
                name.starts_with(glob.literal_prefix()),
                "prefix of {name:?}"
            );
            assert!(name.ends_with(glob.literal_suffix()), "suffix of {name:?}");
        }
        if name.starts_with(glob.literal_prefix()) {
            assert_eq!(glob.matches_known_affixes(name, false), fast, "{name:?}");
            if name.ends_with(glob.literal_suffix()) {
                assert_eq!(glob.matches_known_affixes(name, true), fast, "{name:?}");
            }
        }
    }
    if let Some(literal) = glob.literal() {
        assert!(glob.matches(&literal), "a literal pattern matches its text");
    }
}

/// Backtracking over the pattern text itself, memoised on (pattern, name) positions: slow and
/// obviously right, the reference the compiled matcher is held to.
fn naive_match(p: &[char], n: &[char]) -> bool {
    fn go(
        p: &[char],
        n: &[char],
        i: usize,
        j: usize,
        memo: &mut HashMap<(usize, usize), bool>,
    ) -> bool {
        if let Some(v) = memo.get(&(i, j)) {
            return *v;
        }
        let v = match p.get(i) {
            None => j == n.len(),
            Some('*') => go(p, n, i + 1, j, memo) || (j < n.len() && go(p, n, i, j + 1, memo)),
            Some('?') => j < n.len() && go(p, n, i + 1, j + 1, memo),
            Some('\\') => {
                j < n.len() && p.get(i + 1) == Some(&n[j]) && go(p, n, i + 2, j + 1, memo)
            }
            Some('[') => match class(p, i + 1) {
                Some((negated, ranges, next)) => {
                    j < n.len()
                        && ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&n[j])) != negated
                        && go(p, n, next, j + 1, memo)
                }
                None => false,
            },
            Some(c) => j < n.len() && n[j] == *c && go(p, n, i + 1, j + 1, memo),
        };
        memo.insert((i, j), v);
        v
    }
    go(p, n, 0, 0, &mut HashMap::new())
}

type Class = (bool, Vec<(char, char)>, usize);

/// A `[…]` class starting after its `[`: negation, ranges and escapes; the position after `]`.
fn class(p: &[char], mut i: usize) -> Option<Class> {
    let negated = matches!(p.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        let mut lo = *p.get(i)?;
        i += 1;
        if lo == ']' {
            return Some((negated, ranges, i));
        }
        if lo == '\\' {
            lo = *p.get(i)?;
            i += 1;
        }
        if p.get(i) == Some(&'-') && !matches!(p.get(i + 1), Some(']') | None) {
            let mut hi = *p.get(i + 1)?;
            i += 2;
            if hi == '\\' {
                hi = *p.get(i)?;
                i += 1;
            }
            ranges.push((lo, hi));
        } else {
            ranges.push((lo, lo));
        }
    }
}

/// `data` is a manifests file. Whatever the loader accepts, the compiler takes without
/// panicking; a compiled snapshot serializes, is accepted back by a dataplane (hash checked),
/// and compiling the same inputs again gives the same hash. Every loaded object gets a report.
pub fn manifests(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut loaded = crate::loader::Loaded::default();
    if crate::loader::load_str(std::path::Path::new("fuzz.yaml"), &text, &mut loaded).is_err() {
        return;
    }
    let key = crate::SealingKey::from_bytes(&[7; 32]);
    let Ok(first) = crate::compile(&loaded.inputs, &key) else {
        return;
    };
    let again = crate::compile(&loaded.inputs, &key).expect("compiled once, compiles again");
    assert_eq!(
        first.snapshot.hash(),
        again.snapshot.hash(),
        "compile is deterministic"
    );
    let json = first
        .snapshot
        .to_json()
        .expect("a compiled snapshot serializes");
    let back: crate::Snapshot =
        serde_json::from_slice(&json).expect("a dataplane accepts what the compiler produced");
    assert_eq!(back.hash(), first.snapshot.hash());
    let objects = loaded.inputs.targets.len()
        + loaded.inputs.policies.len()
        + loaded.inputs.credentials.len();
    let reported = first
        .reports
        .iter()
        .filter(|r| {
            matches!(
                r.kind,
                crate::compile::ObjectKind::Target
                    | crate::compile::ObjectKind::Policy
                    | crate::compile::ObjectKind::Credential
            )
        })
        .count();
    assert!(
        reported >= objects,
        "{reported} reports for {objects} objects"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_naive_matcher_agrees_on_known_cases() {
        let m = |p: &str, n: &str| {
            naive_match(
                &p.chars().collect::<Vec<_>>(),
                &n.chars().collect::<Vec<_>>(),
            )
        };
        assert!(m("a*b", "axxb"));
        assert!(!m("a*b", "axxbc"));
        assert!(m("[!a-c]x", "dx"));
        assert!(!m("[!a-c]x", "bx"));
        assert!(m("\\*", "*"));
        assert!(m("[a-]", "-"));
        glob(b"gh_*_issue\ngh_create_issue\ngh_issue\nx");
        glob(b"[^\\]]?*\n]ab\nxab");
    }
}
