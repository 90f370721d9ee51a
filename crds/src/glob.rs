//! Anchored glob patterns for policy rule names: `*`, `?`, `[a-z]`, `[!x]`, `\` escapes.
//! Invalid patterns are errors (the Policy is rejected); matching is iterative, never exponential.

use std::fmt;

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
/// index can put it in a hash map.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    source: Box<str>,
    tokens: Vec<Token>,
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
                '[' => {
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
                                        Some('\\') => chars.next().ok_or_else(|| {
                                            GlobError::TrailingEscape(pattern.to_owned())
                                        })?,
                                        Some(h) => h,
                                        None => {
                                            return Err(GlobError::UnclosedClass(
                                                pattern.to_owned(),
                                            ));
                                        }
                                    };
                                    if hi < lo {
                                        return Err(GlobError::BadRange(
                                            pattern.to_owned(),
                                            lo,
                                            hi,
                                        ));
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
                    tokens.push(Token::Class { negated, ranges });
                }
                c => tokens.push(Token::Literal(c)),
            }
        }
        Ok(Self {
            source: pattern.into(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The exact name this pattern matches, when it has no wildcards.
    pub fn literal(&self) -> Option<String> {
        self.tokens
            .iter()
            .map(|t| match t {
                Token::Literal(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// Whole-string match. Classic two-pointer algorithm with one backtrack point for the last
    /// `*`: O(len(pattern) * len(name)) worst case.
    pub fn matches(&self, name: &str) -> bool {
        let text: Vec<char> = name.chars().collect();
        let (mut t, mut p) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::AnyRun) => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                Some(tok) if tok.matches_one(text[t]) => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::AnyRun)
    }
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
        write!(f, "Glob({:?})", self.source)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
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
