//! Anchored glob patterns for policy rule names: `*`, `?`, `[a-z]`, `[!x]`, `\` escapes.
//! Invalid patterns are errors (the Policy is rejected); matching is iterative, never exponential.

use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("empty pattern")]
    Empty,
    #[error("pattern {0:?}: unclosed character class")]
    UnclosedClass(String),
    #[error("pattern {0:?}: empty character class")]
    EmptyClass(String),
    #[error("pattern {0:?}: trailing escape")]
    TrailingEscape(String),
    #[error("pattern {0:?}: invalid range {1}-{2}")]
    BadRange(String, char, char),
    #[error("pattern {0:?}: control characters are not allowed")]
    Control(String),
    #[error("pattern is longer than 1024 characters")]
    TooLong,
}

#[derive(Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyOne,
    AnyRun,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled anchored glob. `Glob::literal()` tells whether it has no wildcards, so the policy
/// index can put it in a hash map. Cloning is a reference-count bump: one pattern is shared by
/// every Target and index entry it applies to.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    inner: Arc<GlobInner>,
}

#[derive(PartialEq, Eq)]
struct GlobInner {
    source: Box<str>,
    tokens: Vec<Token>,
    /// Literal text every match starts with (the tokens before the first wildcard): most names
    /// are rejected by this one comparison.
    prefix: Box<str>,
    /// Number of tokens `prefix` stands for.
    prefix_tokens: usize,
    /// Literal text every match ends with (the literal tokens after the last `*`), if any.
    suffix: Box<str>,
    /// The pattern is exactly `prefix*suffix`: the two comparisons decide.
    prefix_star_suffix: bool,
    /// [`byte_mask`] of the literal characters: a name whose mask lacks any of these bits
    /// cannot match.
    required: u64,
}

/// A 64-bit summary of which bytes occur in `text` (bit `b % 64` for each byte `b`). Policy
/// decisions compute it once per name and skip every pattern whose literals are not all there.
pub fn byte_mask(text: &str) -> u64 {
    text.bytes().fold(0, |m, b| m | 1 << (b & 63))
}

/// A `[…]` class after its `[`: ranges, escapes, `!`/`^` negation; up to its `]`.
fn parse_class(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    pattern: &str,
) -> Result<Token, GlobError> {
    let negated = chars.next_if(|c| *c == '!' || *c == '^').is_some();
    let mut ranges = Vec::new();
    let mut closed = false;
    while let Some(c) = chars.next() {
        let lo = match c {
            ']' => {
                closed = true;
                break;
            }
            '\\' => chars
                .next()
                .ok_or_else(|| GlobError::TrailingEscape(pattern.to_owned()))?,
            c => c,
        };
        if chars.peek() == Some(&'-') {
            let mut ahead = chars.clone();
            ahead.next();
            match ahead.peek() {
                Some(']') | None => ranges.push((lo, lo)),
                Some(_) => {
                    chars.next();
                    let hi = match chars.next() {
                        Some('\\') => chars
                            .next()
                            .ok_or_else(|| GlobError::TrailingEscape(pattern.to_owned()))?,
                        Some(h) => h,
                        None => {
                            return Err(GlobError::UnclosedClass(pattern.to_owned()));
                        }
                    };
                    if hi < lo {
                        return Err(GlobError::BadRange(pattern.to_owned(), lo, hi));
                    }
                    ranges.push((lo, hi));
                }
            }
        } else {
            ranges.push((lo, lo));
        }
    }
    if !closed {
        return Err(GlobError::UnclosedClass(pattern.to_owned()));
    }
    if ranges.is_empty() {
        return Err(GlobError::EmptyClass(pattern.to_owned()));
    }
    Ok(Token::Class { negated, ranges })
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        if pattern.chars().count() > 1024 {
            return Err(GlobError::TooLong);
        }
        if pattern.chars().any(char::is_control) {
            return Err(GlobError::Control(pattern.to_owned()));
        }
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    // Collapse runs: `**` means the same as `*`.
                    if tokens.last() != Some(&Token::AnyRun) {
                        tokens.push(Token::AnyRun);
                    }
                }
                '?' => tokens.push(Token::AnyOne),
                '\\' => match chars.next() {
                    Some(e) => tokens.push(Token::Literal(e)),
                    None => return Err(GlobError::TrailingEscape(pattern.to_owned())),
                },
                '[' => tokens.push(parse_class(&mut chars, pattern)?),
                c => tokens.push(Token::Literal(c)),
            }
        }
        let literal = |t: &Token| match t {
            Token::Literal(c) => Some(*c),
            _ => None,
        };
        let prefix: String = tokens.iter().map_while(literal).collect();
        let prefix_tokens = prefix.chars().count();
        let last_star = tokens.iter().rposition(|t| *t == Token::AnyRun);
        let suffix: String = match last_star {
            Some(i) if tokens[i + 1..].iter().all(|t| literal(t).is_some()) => {
                tokens[i + 1..].iter().filter_map(literal).collect()
            }
            _ => String::new(),
        };
        let prefix_star_suffix = last_star == Some(prefix_tokens)
            && tokens.len() == prefix_tokens + 1 + suffix.chars().count();
        let literals: String = tokens.iter().filter_map(literal).collect();
        let required = byte_mask(&literals);
        Ok(Self {
            inner: Arc::new(GlobInner {
                required,
                source: pattern.into(),
                tokens,
                prefix: prefix.into(),
                prefix_tokens,
                suffix: suffix.into(),
                prefix_star_suffix,
            }),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.inner.source
    }

    /// The literal text every matching name starts with (may be empty).
    pub fn literal_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The literal text every matching name ends with, as far as the pattern pins it (may be
    /// empty).
    pub fn literal_suffix(&self) -> &str {
        &self.inner.suffix
    }

    /// The exact name this pattern matches, when it has no wildcards.
    pub fn literal(&self) -> Option<String> {
        self.inner
            .tokens
            .iter()
            .map(|t| match t {
                Token::Literal(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// Whole-string match. Cheap literal prefix/suffix checks first, then the classic two-pointer
    /// algorithm with one backtrack point for the last `*`: O(len(pattern) * len(name)) worst
    /// case, and no allocation (this runs on every policy decision).
    pub fn matches(&self, name: &str) -> bool {
        // First and last bytes inline: most candidates fail here, before any memcmp call.
        let (n, pre, suf) = (
            name.as_bytes(),
            self.inner.prefix.as_bytes(),
            self.inner.suffix.as_bytes(),
        );
        if pre.first().is_some_and(|b| n.first() != Some(b))
            || suf.last().is_some_and(|b| n.last() != Some(b))
        {
            return false;
        }
        let Some(rest) = name.strip_prefix(&*self.inner.prefix) else {
            return false;
        };
        if !rest.ends_with(&*self.inner.suffix) {
            return false;
        }
        if self.inner.prefix_star_suffix {
            return rest.len() >= self.inner.suffix.len();
        }
        match_tokens(&self.inner.tokens[self.inner.prefix_tokens..], rest)
    }

    /// False when `name_mask` (the [`byte_mask`] of a name) shows the name lacks a character
    /// this pattern requires; true means "maybe".
    pub fn may_match(&self, name_mask: u64) -> bool {
        self.inner.required & !name_mask == 0
    }

    /// [`Glob::matches`] for a name already known to start with the literal prefix (and, with
    /// `suffix_known`, to end with the literal suffix): the policy index walks names along those
    /// literals, so it need not compare them again.
    pub(crate) fn matches_known_affixes(&self, name: &str, suffix_known: bool) -> bool {
        let Some(rest) = name.get(self.inner.prefix.len()..) else {
            return false;
        };
        debug_assert!(name.starts_with(&*self.inner.prefix));
        if !suffix_known && !rest.ends_with(&*self.inner.suffix) {
            return false;
        }
        if self.inner.prefix_star_suffix {
            return rest.len() >= self.inner.suffix.len();
        }
        match_tokens(&self.inner.tokens[self.inner.prefix_tokens..], rest)
    }
}

fn match_tokens(tokens: &[Token], text: &str) -> bool {
    // `t` and the star's text position are byte offsets, always on char boundaries.
    let next_char = |at: usize| text[at..].chars().next();
    let (mut t, mut p) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while let Some(c) = next_char(t) {
        match tokens.get(p) {
            Some(Token::AnyRun) => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(tok) if tok.matches_one(c) => {
                p += 1;
                t += c.len_utf8();
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, st)) => {
                let skipped = next_char(st).map_or(1, char::len_utf8);
                p = sp + 1;
                t = st + skipped;
                star = Some((sp, t));
            }
            None => return false,
        }
    }
    tokens[p..].iter().all(|t| *t == Token::AnyRun)
}

impl Token {
    fn matches_one(&self, c: char) -> bool {
        match self {
            Token::Literal(l) => *l == c,
            Token::AnyOne => true,
            Token::AnyRun => false,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.inner.source)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        Glob::new(p).unwrap().matches(n)
    }

    #[test]
    fn globs_are_anchored_at_both_ends() {
        assert!(m("github_*", "github_create_issue"));
        assert!(!m("github_*", "my_github_create_issue"));
        assert!(!m("create", "create_issue"));
        assert!(!m("issue", "create_issue"));
        assert!(m("*_issue", "create_issue"));
        assert!(!m("*_issue", "create_issues"));
    }

    #[test]
    fn wildcards_classes_and_escapes() {
        assert!(m("*", ""));
        assert!(m("*", "anything/at all"));
        assert!(m("a?c", "abc") && !m("a?c", "ac"));
        assert!(m("v[0-9]", "v7") && !m("v[0-9]", "vx"));
        assert!(m("v[!0-9]", "vx") && !m("v[!0-9]", "v1"));
        assert!(m(r"lit\*", "lit*") && !m(r"lit\*", "literal"));
        assert!(m("a*b*c", "axxbyyc") && !m("a*b*c", "axxbyy"));
        assert!(m("file:///*.md", "file:///docs/readme.md"));
        assert!(m("[-a]", "-") && m("[a-]", "-"));
    }

    #[test]
    fn literal_prefix_and_suffix_shortcuts_agree_with_the_matcher() {
        assert!(m("get_*", "get_") && m("get_*", "get_x") && !m("get_*", "get"));
        assert!(m("*_item", "_item") && !m("*_item", "item"));
        assert!(m("ab*ba", "abba") && m("ab*ba", "abxba") && !m("ab*ba", "aba"));
        assert!(m("a*b?c", "axxbyc") && !m("a*b?c", "axxbc"));
        assert!(m("a*b*", "ab") && m("x[0-9]*y", "x1zzy") && !m("x[0-9]*y", "xzy"));
        assert!(m("é*ü", "éaü") && m("?ü", "äü") && m("*ä", "ääää") && !m("é?", "é"));
        assert!(m("[ä-ö]*", "öx") && !m("[ä-ö]*", "üx"));
    }

    #[test]
    fn byte_mask_never_rules_out_a_match() {
        for (p, n) in [
            ("*_get_*", "a_get_b"),
            ("*issue*", "create_issue"),
            ("a?c*", "abc"),
            ("[x-z]*q", "yq"),
            (r"\**", "*x"),
            ("é*", "éa"),
        ] {
            let g = Glob::new(p).unwrap();
            assert!(g.matches(n), "{p} {n}");
            assert!(g.may_match(byte_mask(n)), "{p} {n}");
        }
        let g = Glob::new("*_get_*").unwrap();
        assert!(!g.may_match(byte_mask("list_items")));
    }

    #[test]
    fn invalid_patterns_are_errors_not_match_all() {
        assert_eq!(Glob::new(""), Err(GlobError::Empty));
        assert!(matches!(
            Glob::new("a[bc"),
            Err(GlobError::UnclosedClass(_))
        ));
        assert!(matches!(Glob::new("a[]"), Err(GlobError::EmptyClass(_))));
        assert!(matches!(
            Glob::new("a\\"),
            Err(GlobError::TrailingEscape(_))
        ));
        assert!(matches!(Glob::new("[z-a]"), Err(GlobError::BadRange(..))));
        assert!(matches!(Glob::new("a\nb"), Err(GlobError::Control(_))));
    }

    #[test]
    fn literal_detection() {
        assert_eq!(
            Glob::new("read_file").unwrap().literal().as_deref(),
            Some("read_file")
        );
        assert_eq!(Glob::new(r"a\*").unwrap().literal().as_deref(), Some("a*"));
        assert_eq!(Glob::new("read_*").unwrap().literal(), None);
    }

    #[test]
    fn pathological_patterns_stay_linear_enough() {
        let p = Glob::new(&"a*".repeat(50)).unwrap();
        let name = "a".repeat(5000) + "b";
        assert!(p.matches(&name));
        let q = Glob::new(&("a*".repeat(50) + "c")).unwrap();
        assert!(!q.matches(&name));
    }
}
