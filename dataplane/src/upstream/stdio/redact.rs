//! Redaction of a child's stderr before it is logged: every injected value (the credential env
//! it was given) is replaced by `[REDACTED]`, so a server that prints its environment leaks nothing.

use secrecy::{ExposeSecret, SecretString};

/// Values shorter than this are not searched for: replacing every `a` or `1` in a log line
/// would destroy it and say which short value was injected.
pub const MIN_REDACTED_LEN: usize = 4;
const MARK: &str = "[REDACTED]";

#[derive(Default)]
pub struct Redactor {
    /// Longest first, so a value containing another is replaced whole.
    values: Vec<SecretString>,
}

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = SecretString>) -> Self {
        let mut values: Vec<SecretString> = values
            .into_iter()
            .filter(|v| v.expose_secret().len() >= MIN_REDACTED_LEN)
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.expose_secret().len()));
        Self { values }
    }

    /// `line` with every injected value replaced.
    pub fn redact(&self, line: &str) -> String {
        let mut out = line.to_owned();
        for v in &self.values {
            let v = v.expose_secret();
            if out.contains(v) {
                out = out.replace(v, MARK);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_of_every_value_is_replaced() {
        let r = Redactor::new([
            SecretString::from("tok-123"),
            SecretString::from("tok-123-long"),
            SecretString::from("ab"),
        ]);
        let line = "API=tok-123-long OTHER=tok-123 again tok-123 ab";
        assert_eq!(
            r.redact(line),
            "API=[REDACTED] OTHER=[REDACTED] again [REDACTED] ab"
        );
    }
}
