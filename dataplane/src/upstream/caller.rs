//! Who calls an upstream: the gateway session, its identity and what its client declared, as
//! the upstream side needs them to pick, open and initialize that session's upstream.

use std::sync::Arc;

use reflow_crds::Identity;
use serde_json::{Map, Value};

use super::{CallHooks, InitParams};
use crate::log_level::LogLevel;
use crate::session::UpstreamState;

/// Who is calling, through which session, speaking which protocol version.
pub struct Caller<'a> {
    pub identity: &'a Identity,
    /// `namespace/name` of the target, computed once per request.
    pub target_key: &'a Arc<str>,
    pub session_id: &'a str,
    pub seed: Option<&'a UpstreamState>,
    pub protocol_version: &'a str,
    /// What the client declared in `initialize` (mirrored to its HTTP upstream sessions).
    pub client_capabilities: &'a Value,
    pub hooks: &'a CallHooks,
    /// What the session asked for with `logging/setLevel` (told to new upstream sessions).
    pub log_level: Option<LogLevel>,
    /// The caller's verified bearer token, for `tokenExchange` Targets.
    pub subject: Option<&'a crate::connect::exchange::SubjectToken>,
    pub trace_id: &'a str,
}

impl Caller<'_> {
    /// Whether the client speaks the stateless revision.
    pub fn is_stateless(&self) -> bool {
        self.protocol_version == crate::era::STATELESS
    }

    /// The revision an upstream handshake asks for: the client's, or the newest one with a
    /// handshake when the client has none (stateless).
    pub fn handshake_version(&self) -> &str {
        if self.is_stateless() {
            super::handshake::LATEST_PROTOCOL
        } else {
            self.protocol_version
        }
    }

    /// What the gateway says about itself to this session's own HTTP upstream session.
    pub(crate) fn init_params(&self) -> InitParams {
        InitParams {
            protocol_version: self.handshake_version().to_owned(),
            capabilities: relayable_capabilities(self.client_capabilities),
            stateless_client: self.is_stateless(),
        }
    }
}

/// What the gateway declares to an HTTP upstream: the relayable capabilities its client has.
pub(crate) fn relayable_capabilities(client: &Value) -> Value {
    let mut out = Map::new();
    for cap in ["sampling", "elicitation", "roots"] {
        if let Some(v) = client.get(cap) {
            out.insert(cap.to_owned(), v.clone());
        }
    }
    Value::Object(out)
}
