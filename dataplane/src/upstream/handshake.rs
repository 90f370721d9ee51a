//! The MCP handshake as every upstream transport speaks it, written once: the `initialize`
//! request the gateway sends (Streamable HTTP, legacy SSE, STDIO children, the bridge) and
//! what an HTTP or SSE upstream's answer makes of the link's state. Each transport only
//! carries the two messages (`initialize`, then `notifications/initialized`).

use serde_json::{Map, Value, json};

use super::UpstreamError;
use crate::log_level::LogLevel;
use crate::session::UpstreamState;

/// The newest revision with a handshake: what the gateway asks an upstream for when its
/// client has none (stateless), and what it offers a client that names no revision.
pub const LATEST_PROTOCOL: &str = "2025-11-25";
/// The request telling an upstream session the log level its gateway session asked for; a new
/// upstream session of a session with a level hears it right after the handshake.
pub(crate) const SET_LEVEL: &str = "logging/setLevel";

/// The `clientInfo.name` the gateway introduces itself with.
pub(crate) const GATEWAY: &str = "reflow";
/// The `clientInfo.name` of the bridge sidecar (one STDIO server over HTTP).
pub(crate) const BRIDGE: &str = "reflow-bridge";

/// The `initialize` params: the revision asked for, the client capabilities declared, and who
/// asks (`client`: [`GATEWAY`] or [`BRIDGE`]).
pub(crate) fn initialize_params(
    protocol_version: &str,
    capabilities: &Value,
    client: &str,
) -> Value {
    json!({
        "protocolVersion": protocol_version,
        "capabilities": capabilities,
        "clientInfo": {"name": client, "version": env!("CARGO_PKG_VERSION")},
    })
}

/// The link state an `initialize` reply establishes (the upstream's session id, when its
/// transport has one, and the revision it chose); a reply without a result failed.
pub(crate) fn initialized(
    reply: &Map<String, Value>,
    session_id: Option<String>,
) -> Result<UpstreamState, UpstreamError> {
    let result = reply
        .get("result")
        .ok_or_else(|| UpstreamError::Protocol("initialize failed".into()))?;
    Ok(UpstreamState {
        session_id,
        protocol_version: result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        initialized: true,
    })
}

/// `logging/setLevel`'s params for `level`.
pub(crate) fn level_params(level: LogLevel) -> Value {
    json!({"level": level.as_str()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_params_name_the_revision_capabilities_and_client() {
        let p = initialize_params("2025-06-18", &json!({"roots": {}}), GATEWAY);
        assert_eq!(
            serde_json::to_string(&p).unwrap_or_default(),
            format!(
                r#"{{"capabilities":{{"roots":{{}}}},"clientInfo":{{"name":"reflow","version":"{}"}},"protocolVersion":"2025-06-18"}}"#,
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn a_reply_without_a_result_fails_and_one_with_it_sets_the_state() {
        let reply = |v: Value| v.as_object().cloned().unwrap_or_default();
        let failed = initialized(
            &reply(json!({"error": {"code": -1, "message": "no"}})),
            None,
        );
        assert!(
            matches!(failed, Err(UpstreamError::Protocol(_))),
            "{failed:?}"
        );
        let ok = initialized(
            &reply(json!({"result": {"protocolVersion": "2025-03-26"}})),
            Some("s1".into()),
        );
        let Ok(state) = ok else { panic!("{ok:?}") };
        assert_eq!(state.session_id.as_deref(), Some("s1"));
        assert_eq!(state.protocol_version.as_deref(), Some("2025-03-26"));
        assert!(state.initialized);
    }
}
