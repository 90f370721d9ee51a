//! What dataplanes observe of each Target's upstream (reachable, last error, tool digests) and
//! post to the controller, which turns it into the Target's `Ready` condition, printer columns
//! and `ToolsDrifted`. The bounds here are what a dataplane token may make the controller hold
//! and write to etcd: a compromised token can replace its own report, never grow it.

use serde::{Deserialize, Serialize};

use crate::api::ToolDigest;
use crate::snapshot::valid_digest;

/// `POST` an [`ObservedReport`] here (same token as the watch stream).
pub const OBSERVED_PATH: &str = "/v1/targets/observed";
/// Largest report body the controller reads.
pub const MAX_REPORT_BYTES: usize = 1024 * 1024;
/// Targets per report.
pub const MAX_TARGETS: usize = 2_000;
/// Tool digests per Target (also the CRD's `status.toolDigests` bound).
pub const MAX_TOOLS: usize = 512;
/// Longest tool name kept (the CRD's bound too).
pub const MAX_TOOL_NAME: usize = 128;
/// Longest error text kept.
pub const MAX_ERROR: usize = 300;

/// Why a Target's upstream was not usable, as one of a few stable reasons (the `Ready`
/// condition's reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ObservedReason {
    /// Connection refused, timeouts, DNS, TLS: the upstream could not be reached.
    UpstreamUnreachable,
    /// A `kubernetes` Target's instance did not become ready in time.
    NotReady,
    /// The upstream answered, but not with a usable list (an error, a bad reply, a crash).
    UpstreamError,
}

impl ObservedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpstreamUnreachable => "UpstreamUnreachable",
            Self::NotReady => "NotReady",
            Self::UpstreamError => "UpstreamError",
        }
    }
}

/// One Target as one dataplane last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetObservation {
    pub namespace: String,
    pub name: String,
    /// The last tools/list reached the upstream and got a list back.
    pub reachable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ObservedReason>,
    /// The last failure, URLs stripped of userinfo, query and fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The tool definitions of the last successful tools/list, sorted by name; absent when
    /// none succeeded yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ToolDigest>>,
}

/// Everything one dataplane observed, replacing its previous report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedReport {
    pub dataplane: String,
    pub targets: Vec<TargetObservation>,
}

fn k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn tool_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_TOOL_NAME && !s.chars().any(char::is_control)
}

impl ObservedReport {
    /// Checks every bound; a report that breaks one is refused whole (a well-behaved dataplane
    /// never sends one: it applies the same bounds when it builds the report).
    pub fn validate(&self) -> Result<(), String> {
        if self.targets.len() > MAX_TARGETS {
            return Err(format!("more than {MAX_TARGETS} targets"));
        }
        for t in &self.targets {
            if !k8s_name(&t.namespace) || !k8s_name(&t.name) {
                return Err("a target namespace or name is not a Kubernetes name".to_owned());
            }
            if t.error
                .as_ref()
                .is_some_and(|e| e.chars().count() > MAX_ERROR)
            {
                return Err(format!(
                    "{}/{}: error longer than {MAX_ERROR}",
                    t.namespace, t.name
                ));
            }
            let Some(tools) = &t.tools else { continue };
            if tools.len() > MAX_TOOLS {
                return Err(format!(
                    "{}/{}: more than {MAX_TOOLS} tools",
                    t.namespace, t.name
                ));
            }
            for w in tools.windows(2) {
                if w[0].name >= w[1].name {
                    return Err(format!(
                        "{}/{}: tools must be sorted by name, each once",
                        t.namespace, t.name
                    ));
                }
            }
            if let Some(bad) = tools
                .iter()
                .find(|d| !tool_name(&d.name) || !valid_digest(&d.digest))
            {
                return Err(format!(
                    "{}/{}: tool {:?} has an invalid name or digest",
                    t.namespace,
                    t.name,
                    bad.name.chars().take(MAX_TOOL_NAME).collect::<String>()
                ));
            }
        }
        Ok(())
    }
}

/// `text` with every URL's userinfo, query and fragment removed, control characters dropped
/// and cut to [`MAX_ERROR`] characters: what an error may carry into status and logs.
pub fn clean_error(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_ERROR * 2));
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&strip_url(word));
    }
    out.chars()
        .filter(|c| !c.is_control())
        .take(MAX_ERROR)
        .collect()
}

fn strip_url(word: &str) -> String {
    let Some(scheme_end) = word.find("://") else {
        return word.to_owned();
    };
    let (scheme, rest) = word.split_at(scheme_end + 3);
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let rest = &rest[..end];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn obs(tools: Vec<(&str, String)>) -> ObservedReport {
        ObservedReport {
            dataplane: "dp".into(),
            targets: vec![TargetObservation {
                namespace: "ns".into(),
                name: "t".into(),
                reachable: true,
                reason: None,
                error: None,
                tools: Some(
                    tools
                        .into_iter()
                        .map(|(n, d)| ToolDigest {
                            name: n.into(),
                            digest: d,
                        })
                        .collect(),
                ),
            }],
        }
    }

    #[test]
    fn reports_within_bounds_pass_and_hostile_ones_are_refused() {
        assert!(
            obs(vec![("a", digest('a')), ("b", digest('0'))])
                .validate()
                .is_ok()
        );
        // Unsorted or duplicated names, bad digests, long names, control characters.
        assert!(
            obs(vec![("b", digest('a')), ("a", digest('a'))])
                .validate()
                .is_err()
        );
        assert!(
            obs(vec![("a", digest('a')), ("a", digest('b'))])
                .validate()
                .is_err()
        );
        assert!(obs(vec![("a", digest('A'))]).validate().is_err());
        assert!(obs(vec![("a", "ab".into())]).validate().is_err());
        assert!(
            obs(vec![(&"x".repeat(129), digest('a'))])
                .validate()
                .is_err()
        );
        assert!(obs(vec![("a\nb", digest('a'))]).validate().is_err());
        let many: Vec<String> = (0..=MAX_TOOLS).map(|i| format!("t{i:05}")).collect();
        let r = obs(many.iter().map(|n| (n.as_str(), digest('c'))).collect());
        assert!(r.validate().unwrap_err().contains("more than 512 tools"));
        let mut r = obs(vec![]);
        r.targets[0].name = "Bad/Name".into();
        assert!(r.validate().is_err());
        let mut r = obs(vec![]);
        r.targets[0].error = Some("e".repeat(MAX_ERROR + 1));
        assert!(r.validate().is_err());
        let mut r = obs(vec![]);
        r.targets = vec![r.targets[0].clone(); MAX_TARGETS + 1];
        assert!(r.validate().is_err());
    }

    #[test]
    fn errors_lose_userinfo_query_fragment_and_control_characters() {
        let e = clean_error(
            "GET https://user:pw@api.example.com/v1/x?token=s3cret#frag failed:\nconn refused",
        );
        assert_eq!(e, "GET https://api.example.com/v1/x failed:conn refused");
        assert!(!e.contains("s3cret") && !e.contains("pw"));
        assert_eq!(clean_error("http://h?x=1"), "http://h");
        assert_eq!(clean_error(&"x".repeat(1000)).chars().count(), MAX_ERROR);
    }
}
