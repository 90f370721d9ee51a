//! The controller's instance API as both sides speak it: `POST /v1/instances/ensure` (an
//! MCPInstance for an isolation key, answered 202 while it starts and 200 with endpoint and
//! bridge token once running) and `POST /v1/instances/used` (resets the idle clock).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::api::{InstanceIdentity, InstancePhase};

pub const ENSURE_PATH: &str = "/v1/instances/ensure";
pub const USED_PATH: &str = "/v1/instances/used";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnsureRequest {
    pub namespace: String,
    pub target: String,
    pub isolation_key: String,
    /// Fingerprint (hex) of the caller's resolved credentials, as the dataplane's snapshot
    /// resolves them; the controller refuses (409) when its own snapshot resolves otherwise.
    #[serde(default)]
    pub credential_fingerprint: Option<String>,
    /// Whose Credentials to resolve into the instance (names and claims only).
    #[serde(default)]
    pub identity: Option<InstanceIdentity>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnsureResponse {
    pub name: String,
    pub phase: InstancePhase,
    /// Only once the instance runs with the requested credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The per-instance token the bridge demands; with `endpoint` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<BridgeToken>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsedRequest {
    pub namespace: String,
    pub name: String,
}

/// A bridge token on the wire. `Debug` never shows it, so a logged response cannot leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BridgeToken(String);

impl BridgeToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BridgeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BridgeToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_travels_in_json_but_never_in_debug() {
        let r = EnsureResponse {
            name: "gh-1".into(),
            phase: InstancePhase::Running,
            endpoint: Some("http://x".into()),
            token: Some(BridgeToken::new("s3cret-token")),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"token\":\"s3cret-token\""), "{json}");
        assert!(!format!("{r:?}").contains("s3cret"));
        let back: EnsureResponse = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
}
