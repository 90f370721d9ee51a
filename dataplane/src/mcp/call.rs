//! What one client request carries through the router: who asks (`Ctx`), and what the router
//! answers (`Reply`). A leaf below dispatch, relay, authz and the rest, so they share it
//! without using each other.

use std::sync::Arc;
use std::time::Instant;

use reflow_crds::{Identity, Snapshot};

use crate::connect::exchange::SubjectToken;
use crate::jsonrpc::Outbound;
use crate::scope::TokenScope;
use crate::session::Session;
use crate::upstream::{CallHooks, Caller};

/// A dispatched request's answer: the JSON-RPC reply, the Target key it reached (for metrics
/// and audit) and the outcome label.
#[derive(Debug)]
pub(crate) struct Reply {
    /// A tree, or an upstream's plain result passed through as its bytes (`Outbound::Result`).
    pub message: Outbound,
    pub target: Option<Arc<str>>,
    pub outcome: &'static str,
}

impl Reply {
    pub(crate) fn new(
        message: impl Into<Outbound>,
        target: Option<Arc<str>>,
        outcome: &'static str,
    ) -> Self {
        Self {
            message: message.into(),
            target,
            outcome,
        }
    }
}

/// Who asks, on which session and snapshot, with the hooks of this one request.
pub(crate) struct Ctx {
    pub identity: Identity,
    pub scope: Arc<TokenScope>,
    pub snapshot: Arc<Snapshot>,
    pub session: Arc<Session>,
    pub trace_id: String,
    pub started: Instant,
    /// Where upstream notifications and requests for this request go, and its cancellation.
    pub hooks: CallHooks,
    /// The Target a multi round-trip retry must reach (the one whose `requestState` it carries).
    pub pin: Option<Arc<str>>,
    /// The caller's verified bearer token (`tokenExchange` Targets exchange it); never logged.
    pub subject: Option<SubjectToken>,
}

impl Ctx {
    pub(crate) fn caller<'a>(&'a self, target_key: &'a Arc<str>) -> Caller<'a> {
        Caller {
            identity: &self.identity,
            target_key,
            session_id: &self.session.id,
            seed: None,
            protocol_version: &self.session.protocol_version,
            client_capabilities: &self.session.client_capabilities,
            hooks: &self.hooks,
            log_level: self.session.log_level,
            subject: self.subject.as_ref(),
            trace_id: &self.trace_id,
        }
    }
}
