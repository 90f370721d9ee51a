//! What the router answers a client request with, transport-neutral: `http` renders it (JSON
//! with its status, or an SSE stream).

use futures::stream::BoxStream;
use serde_json::Value;
use tokio::sync::mpsc;

use super::streams::Frame;
use crate::jsonrpc::Outbound;

/// The router's answer to one client request.
pub(crate) enum Answer {
    /// One JSON-RPC message; `outcome` is the request's outcome label (a rate-limit refusal,
    /// `rate_limit::RATE_LIMITED_OUTCOME`, can be said in the transport's status too).
    Json {
        message: Outbound,
        outcome: &'static str,
    },
    /// One JSON-RPC message to a stateless (2026-07-28) client, whose error codes the transport
    /// may say in its status too.
    StatelessJson(Value),
    /// A new stream of the session: the priming event's id (when the client's revision knows
    /// priming events), then each frame until `End`.
    Stream {
        priming: Option<String>,
        frames: mpsc::Receiver<Frame>,
    },
    /// Plain events without ids (the stateless revision does not resume streams), one per
    /// message, until the messages end; an empty message is a keep-alive.
    Events(BoxStream<'static, String>),
}
