//! Claim mapping: reads user, groups, roles, email and name out of verified claims along the
//! configured paths and builds the `Identity` that policy and credentials see.

use reflow_crds::Identity;
use serde_json::{Map, Value};

use super::config::{ClaimMapping, ClaimPath};
use super::error::AuthError;

/// Builds the caller's identity. The user must be a non-empty string; groups and roles may be a
/// string or an array of strings. A groups/roles claim of any other shape refuses the token
/// instead of being dropped, because a deny policy on a group must not be evaded by malformed
/// claims.
pub(crate) fn identity(
    claims: &Map<String, Value>,
    mapping: &ClaimMapping,
) -> Result<Identity, AuthError> {
    let user = match lookup(claims, &mapping.user) {
        Some(Value::String(user)) if !user.is_empty() => user,
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return Err(AuthError::MissingClaim(mapping.user.display().clone()));
        }
        Some(_) => return Err(AuthError::InvalidClaim(mapping.user.display().clone())),
    };
    let groups = strings(claims, &mapping.groups)?;
    let roles = strings(claims, &mapping.roles)?;
    let prefixed = |prefix: &str, s: &str| -> String { format!("{prefix}{s}") };
    let mut id = Identity::new(
        prefixed(&mapping.user_prefix, user),
        groups.iter().map(|g| prefixed(&mapping.groups_prefix, g)),
        roles.iter().map(|r| prefixed(&mapping.roles_prefix, r)),
    );
    id.email = optional_string(claims, &mapping.email).map(Into::into);
    id.name = optional_string(claims, &mapping.name).map(Into::into);
    // For policy conditions (`claims.department`); bounded when evaluated.
    id.claims = reflow_crds::Claims::new(claims.clone());
    Ok(id)
}

/// Follows the path through nested objects. A dotted path that does not resolve is also tried
/// as one literal top-level key, so namespaced claims such as `https://example.com/roles` work
/// when written as a plain string.
fn lookup<'a>(claims: &'a Map<String, Value>, path: &ClaimPath) -> Option<&'a Value> {
    let nested = path.segments().split_first().and_then(|(first, rest)| {
        rest.iter()
            .try_fold(claims.get(first)?, |cur, seg| cur.as_object()?.get(seg))
    });
    match nested {
        Some(v) => Some(v),
        None if path.segments().len() > 1 => claims.get(path.display().as_ref()),
        None => None,
    }
}

fn strings<'a>(
    claims: &'a Map<String, Value>,
    path: &ClaimPath,
) -> Result<Vec<&'a str>, AuthError> {
    match lookup(claims, path) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(items)) => items
            .iter()
            .filter(|v| !matches!(v, Value::String(s) if s.is_empty()))
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(AuthError::InvalidClaim(path.display().clone())),
            })
            .collect(),
        Some(_) => Err(AuthError::InvalidClaim(path.display().clone())),
    }
}

/// Informational claims: a value of the wrong shape is ignored rather than refusing the token.
fn optional_string(claims: &Map<String, Value>, path: &ClaimPath) -> Option<String> {
    match lookup(claims, path) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("test claims must be an object"),
        }
    }

    fn strs(items: &[std::sync::Arc<str>]) -> Vec<&str> {
        items.iter().map(|s| s.as_ref()).collect()
    }

    #[test]
    fn auth_default_mapping_reads_flat_claims() {
        let c = claims(json!({
            "sub": "alice", "groups": ["ops", "dev", "ops"], "roles": "admin",
            "email": "alice@example.com", "name": "Alice"
        }));
        let id = identity(&c, &ClaimMapping::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&*id.user, "alice");
        assert_eq!(strs(&id.groups), ["dev", "ops"]);
        assert_eq!(strs(&id.roles), ["admin"]);
        assert_eq!(id.email.as_deref(), Some("alice@example.com"));
        assert_eq!(id.name.as_deref(), Some("Alice"));
    }

    #[test]
    fn auth_keycloak_nested_roles_and_namespaced_claims() {
        let c = claims(json!({
            "sub": "f3a1", "preferred_username": "bob",
            "realm_access": {"roles": ["offline_access", "mcp-user"]},
            "https://example.com/groups": "platform",
            "email": 42
        }));
        let mapping = ClaimMapping {
            user: ClaimPath::from("preferred_username"),
            roles: ClaimPath::from("realm_access.roles"),
            groups: ClaimPath::from("https://example.com/groups"),
            user_prefix: "kc:".into(),
            roles_prefix: "kc:".into(),
            ..ClaimMapping::default()
        };
        let id = identity(&c, &mapping).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&*id.user, "kc:bob");
        assert_eq!(strs(&id.roles), ["kc:mcp-user", "kc:offline_access"]);
        assert_eq!(strs(&id.groups), ["platform"]);
        assert_eq!(id.email, None, "a non-string email is ignored");

        let listed = ClaimMapping {
            groups: ClaimPath::from_segments(["https://example.com/groups"]),
            ..ClaimMapping::default()
        };
        let id = identity(&c, &listed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(strs(&id.groups), ["platform"]);
        assert!(id.roles.is_empty(), "absent roles claim means no roles");
    }

    #[test]
    fn auth_bad_claim_shapes_refuse_the_token() {
        let m = ClaimMapping::default();
        assert_eq!(
            identity(&claims(json!({"groups": ["a"]})), &m).err(),
            Some(AuthError::missing("sub"))
        );
        assert_eq!(
            identity(&claims(json!({"sub": ""})), &m).err(),
            Some(AuthError::missing("sub"))
        );
        assert_eq!(
            identity(&claims(json!({"sub": 7})), &m).err(),
            Some(AuthError::invalid("sub"))
        );
        assert_eq!(
            identity(&claims(json!({"sub": "a", "groups": ["x", 1]})), &m).err(),
            Some(AuthError::invalid("groups"))
        );
        assert_eq!(
            identity(&claims(json!({"sub": "a", "roles": {"x": true}})), &m).err(),
            Some(AuthError::invalid("roles"))
        );
    }
}
