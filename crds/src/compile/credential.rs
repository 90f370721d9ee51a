//! Credential → sealed entries for one Target: subject and key validation, same-namespace Secret
//! resolution, sealing with the slot-binding AAD, and precedence-ambiguity detection.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;

use crate::api::{Credential, CredentialSubject, InjectedValue, SecretKeyRef, USER_MANAGED_LABEL};
use crate::seal::{SealingKey, slot_aad};
use crate::snapshot::{CompiledCredential, CredentialMatch, InjectAs, SealedEntry};

pub(super) const FORBIDDEN_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "mcp-session-id",
    "mcp-protocol-version",
];

/// Secrets by (namespace, name).
pub(super) type Secrets<'a> = HashMap<(&'a str, &'a str), &'a Secret>;

pub(super) fn subject_match(s: &CredentialSubject) -> Result<CredentialMatch, String> {
    let default = s.default == Some(true);
    let set = [
        s.user.is_some(),
        s.group.is_some(),
        s.role.is_some(),
        default,
    ];
    if set.iter().filter(|b| **b).count() != 1 {
        return Err("subject names exactly one of user, group, role, or default: true".to_owned());
    }
    let v = |x: &String| -> Result<Arc<str>, String> {
        if x.is_empty() {
            Err("subject name must not be empty".to_owned())
        } else {
            Ok(x.as_str().into())
        }
    };
    Ok(match (&s.user, &s.group, &s.role) {
        (Some(u), _, _) => CredentialMatch::User(v(u)?),
        (_, Some(g), _) => CredentialMatch::Group(v(g)?),
        (_, _, Some(r)) => CredentialMatch::Role(v(r)?),
        _ => CredentialMatch::Default,
    })
}

pub(super) fn valid_header_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(super) fn valid_env_name(n: &str) -> bool {
    let mut bytes = n.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Labelled `mcp.reflow.io/user-managed: "true"`: written for one user from a grant they brought.
pub(super) fn is_user_managed(c: &Credential) -> bool {
    c.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(USER_MANAGED_LABEL))
        .is_some_and(|v| v == "true")
}

/// Checks that do not need other objects. Returns the subject on success.
pub(super) fn validate(c: &Credential) -> Result<CredentialMatch, String> {
    let s = &c.spec;
    let mut subject = subject_match(&s.subject)?;
    if is_user_managed(c) {
        subject = match subject {
            CredentialMatch::User(u) => CredentialMatch::UserBrought(u),
            _ => {
                return Err(format!(
                    "a {USER_MANAGED_LABEL} Credential holds one user's own value: its subject must be a user"
                ));
            }
        };
    }
    if s.headers.is_empty() && s.env.is_empty() {
        return Err("a Credential injects at least one header or env var".to_owned());
    }
    let mut seen = Vec::new();
    for h in &s.headers {
        let lower = h.name.to_ascii_lowercase();
        if !valid_header_name(&h.name) {
            return Err(format!(
                "header name {:?} is not a valid HTTP token",
                h.name
            ));
        }
        if FORBIDDEN_HEADERS.contains(&lower.as_str()) {
            return Err(format!(
                "header {:?} cannot be injected (hop-by-hop or MCP protocol header)",
                h.name
            ));
        }
        if seen.contains(&(InjectAs::Header, lower.clone())) {
            return Err(format!("header {:?} is listed twice", h.name));
        }
        seen.push((InjectAs::Header, lower));
    }
    for e in &s.env {
        if !valid_env_name(&e.name) {
            return Err(format!(
                "env name {:?} must match [A-Za-z_][A-Za-z0-9_]*",
                e.name
            ));
        }
        if seen.contains(&(InjectAs::Env, e.name.clone())) {
            return Err(format!("env {:?} is listed twice", e.name));
        }
        seen.push((InjectAs::Env, e.name.clone()));
    }
    Ok(subject)
}

/// The UTF-8 text of a Secret key in namespace `ns`.
pub(super) fn secret_text(
    secrets: &Secrets<'_>,
    ns: &str,
    r: &SecretKeyRef,
) -> Result<String, (&'static str, String)> {
    let secret = secrets.get(&(ns, r.name.as_str())).ok_or_else(|| {
        (
            "SecretNotFound",
            format!("Secret {:?} not found in this namespace", r.name),
        )
    })?;
    let raw = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(&r.key).map(|s| s.as_bytes().to_vec()))
        .or_else(|| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(&r.key).map(|b| b.0.clone()))
        })
        .ok_or_else(|| {
            (
                "SecretKeyNotFound",
                format!("Secret {:?} has no key {:?}", r.name, r.key),
            )
        })?;
    String::from_utf8(raw).map_err(|_| {
        (
            "InvalidSecretValue",
            format!("Secret {:?} key {:?} is not UTF-8", r.name, r.key),
        )
    })
}

fn secret_value(
    secrets: &Secrets<'_>,
    ns: &str,
    v: &InjectedValue,
) -> Result<String, (&'static str, String)> {
    let text = secret_text(secrets, ns, &v.secret_key_ref)?;
    Ok(format!("{}{}", v.prefix.as_deref().unwrap_or(""), text))
}

/// Resolves and seals every value. Any unresolved reference fails the whole Credential, so a
/// caller never gets a partial set of injected values.
pub(super) fn seal_entries(
    c: &Credential,
    ns: &str,
    target: &str,
    subject: &CredentialMatch,
    secrets: &Secrets<'_>,
    key: &SealingKey,
) -> Result<Vec<SealedEntry>, (&'static str, String)> {
    let label = subject.label();
    let mut out = Vec::new();
    let items = c
        .spec
        .headers
        .iter()
        .map(|h| (InjectAs::Header, h))
        .chain(c.spec.env.iter().map(|e| (InjectAs::Env, e)));
    for (inject_as, v) in items {
        let value = secret_value(secrets, ns, v)?;
        if inject_as == InjectAs::Header
            && value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
        {
            return Err((
                "InvalidSecretValue",
                format!("the value for header {:?} contains CR, LF or NUL", v.name),
            ));
        }
        // An env var cannot carry NUL (execve and the kubelet refuse it): fail here, not at spawn.
        if inject_as == InjectAs::Env && value.contains('\0') {
            return Err((
                "InvalidSecretValue",
                format!("the value for env {:?} contains NUL", v.name),
            ));
        }
        let name: Arc<str> = match inject_as {
            InjectAs::Header => v.name.to_ascii_lowercase().into(),
            InjectAs::Env => v.name.as_str().into(),
        };
        let aad = slot_aad(ns, target, &label, inject_as.as_str(), &name);
        out.push(SealedEntry {
            inject_as,
            name,
            value: key.seal(&aad, &value),
            aad: aad.into(),
        });
    }
    Ok(out)
}

/// For one Target's credentials: which pairs could both apply to one caller for the same key
/// at the same precedence tier. Returns (credential, message) for each party.
pub(super) fn ambiguities(creds: &[CompiledCredential]) -> Vec<(Arc<str>, String)> {
    let tier = |m: &CredentialMatch| match m {
        CredentialMatch::User(_) => 0,
        CredentialMatch::UserBrought(_) => 1,
        CredentialMatch::Group(_) => 2,
        CredentialMatch::Role(_) => 3,
        CredentialMatch::Default => 4,
    };
    let mut out = Vec::new();
    let mut sorted: Vec<&CompiledCredential> = creds.iter().collect();
    sorted.sort_by(|a, b| (&a.subject, &a.credential).cmp(&(&b.subject, &b.credential)));
    for (i, a) in sorted.iter().enumerate() {
        for b in &sorted[i + 1..] {
            let overlap = tier(&a.subject) == tier(&b.subject)
                && match (&a.subject, &b.subject) {
                    // One caller has one user name: different users never overlap.
                    (CredentialMatch::User(x), CredentialMatch::User(y))
                    | (CredentialMatch::UserBrought(x), CredentialMatch::UserBrought(y)) => x == y,
                    _ => true,
                };
            if !overlap {
                continue;
            }
            for ea in &a.entries {
                if b.entries
                    .iter()
                    .any(|eb| eb.inject_as == ea.inject_as && eb.name == ea.name)
                {
                    let what = format!("{} {:?}", ea.inject_as.as_str(), &*ea.name);
                    let msg = |other: &CompiledCredential, winner: &CompiledCredential| {
                        format!(
                            "{what} is also set by Credential {:?} ({}) at the same precedence; a caller matching both gets Credential {:?}'s value (ties go to the lower subject name, then Credential name)",
                            &*other.credential,
                            other.subject.label(),
                            &*winner.credential
                        )
                    };
                    out.push((a.credential.clone(), msg(b, a)));
                    out.push((b.credential.clone(), msg(a, a)));
                }
            }
        }
    }
    out
}
