//! What this replica owns and how it reaches the others: the replica settings, the registry
//! and HTTP client the hand-off layer (`http::handoff`) uses, and the ownership keys of sessions
//! and parked calls, recorded when they are opened.
//!
//! Why a direct hand-off and not the Postgres bus: the owner holds live things (the client's
//! streams and their replay buffers, server-to-client requests waiting for answers, parked
//! calls, stateful STDIO children) and a request for them needs an answer, often a stream. A
//! direct HTTP exchange carries both ways with one extra hop on the cluster network; the bus
//! would need two NOTIFY round trips through the database per message and a correlation layer
//! for replies. A dead owner shows at once as a refused connection, or as a heartbeat gone
//! stale, both of which the registry tells.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::Gateway;
use crate::postgres::{RegistrySettings, ReplicaRegistry};

/// `gateway.replicas`: how replicas sharing one database find and reach each other. The
/// registry is on when a database is configured and `REFLOW_REPLICA_TOKEN` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ReplicasConfig {
    /// The base URL other replicas reach this one at (`http://$(POD_IP):8080`); derived from the
    /// listen address when that names a host (not `0.0.0.0`).
    pub advertise: Option<String>,
    /// Connecting to the owner; a refused or timed-out connection counts as unreachable.
    pub connect_timeout_ms: u64,
    /// Waiting for the owner's response headers, at most.
    pub response_timeout_ms: u64,
    pub heartbeat_ms: u64,
    /// A replica silent this long is dead; what it owned is claimed by the next replica to
    /// need it.
    pub dead_after_ms: u64,
}

impl Default for ReplicasConfig {
    fn default() -> Self {
        Self {
            advertise: None,
            connect_timeout_ms: 1_000,
            response_timeout_ms: 300_000,
            heartbeat_ms: 1_000,
            dead_after_ms: 5_000,
        }
    }
}

impl ReplicasConfig {
    pub fn registry_settings(&self) -> RegistrySettings {
        RegistrySettings {
            heartbeat: Duration::from_millis(self.heartbeat_ms.max(50)),
            dead_after: Duration::from_millis(self.dead_after_ms.max(100)),
            ..RegistrySettings::default()
        }
    }
}

/// This replica's side of the hand-off: the registry and the client to other replicas.
pub(crate) struct Handoff {
    pub(crate) registry: Arc<ReplicaRegistry>,
    pub(crate) http: reqwest::Client,
    pub(crate) response_timeout: Duration,
}

impl Handoff {
    pub(crate) fn new(
        registry: Arc<ReplicaRegistry>,
        config: &ReplicasConfig,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            registry,
            http,
            response_timeout: Duration::from_millis(config.response_timeout_ms.max(1)),
        })
    }
}

/// The ownership key of a session.
pub(crate) fn session_key(id: &str) -> String {
    format!("s:{id}")
}

/// The ownership key of a parked call, by its sealed state (the state itself is not stored).
pub(crate) fn parked_key(state: &str) -> String {
    let digest = Sha256::digest(state.as_bytes());
    format!("p:{}", hex::encode(&digest[..16]))
}

/// How long a reply waits for the events published before it to be journaled.
const SETTLE_WITHIN: Duration = Duration::from_secs(2);

impl Gateway {
    /// This replica is about to claim `key` from a dead owner: the session's stream events
    /// are numbered above the previous owner's (microseconds since the epoch, which the
    /// previous owner's per-session counter cannot have reached), and what the previous owner
    /// journaled is loaded into the replay buffer, so a client resumes here with its
    /// `Last-Event-ID`. Done before the claim (the dead owner journals nothing more), so no
    /// request finds this replica the owner with the buffer not restored yet; if another
    /// replica wins the claim, the buffer is unused and swept as idle.
    pub(crate) async fn take_over(&self, key: &str) {
        let Some(sid) = key.strip_prefix("s:") else {
            return;
        };
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let hub = self.hubs.get(sid);
        hub.number_from(micros);
        let Some(h) = &self.handoff else { return };
        match h.registry.journal().load(sid).await {
            Ok(events) => {
                debug!(
                    events = events.len(),
                    "replay buffer restored from the journal"
                );
                hub.restore(events);
            }
            Err(e) => warn!(error = %e, label = e.label(), "journaled stream events not loaded"),
        }
    }

    /// Waits (at most [`SETTLE_WITHIN`]) until every event the session published so far is
    /// journaled: a reply goes out only once what came before it would survive this replica.
    pub(crate) async fn settle_events(&self, key: &str) {
        let (Some(h), Some(sid)) = (&self.handoff, key.strip_prefix("s:")) else {
            return;
        };
        let Some(ticket) = self.hubs.find(sid).and_then(|hub| hub.last_ticket()) else {
            return;
        };
        if !h.registry.journal().settled(ticket, SETTLE_WITHIN).await {
            debug!("stream events not journaled in time; replying anyway");
        }
    }

    /// Records that this replica owns `key` (no-op without a registry). Awaited before the
    /// client learns the key, so a next request on another replica finds the owner.
    pub(crate) async fn own(&self, key: &str) {
        if let Some(h) = &self.handoff
            && let Err(e) = h.registry.record(key).await
        {
            warn!(error = %e, label = e.label(), "ownership not recorded");
        }
    }
}
