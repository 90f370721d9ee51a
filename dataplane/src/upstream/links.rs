//! The one cache of upstream sessions: per (gateway session, Target key) the link to an HTTP
//! upstream (Streamable HTTP, legacy SSE, stateless), guarded so concurrent first calls
//! initialize once, and who opened it (to resolve the credentials that close it). STDIO
//! children and instance pods are picked per call by isolation key (their pools), not here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reflow_crds::Identity;
use tokio::sync::Mutex as AsyncMutex;

use super::Link;
use crate::session::UpstreamState;

pub(crate) type Cell = Arc<AsyncMutex<Link>>;

/// One gateway session's upstream links by target key, and who opened them (to resolve the
/// credentials needed to close them when the session ends without a request: expiry).
pub struct SessionLinks {
    pub(crate) identity: Identity,
    pub(crate) links: HashMap<Arc<str>, Cell>,
}

const SHARDS: usize = 16;

/// Per (session id, target key) upstream link. A legacy SSE link owns its stream, which closes
/// once the link is removed and dropped. Sharded by session id; finding an existing link
/// allocates nothing.
pub(crate) struct Links([Mutex<HashMap<String, SessionLinks>>; SHARDS]);

impl Default for Links {
    fn default() -> Self {
        Self(std::array::from_fn(|_| Mutex::new(HashMap::new())))
    }
}

impl Links {
    fn shard(&self, session: &str) -> std::sync::MutexGuard<'_, HashMap<String, SessionLinks>> {
        // Session ids are random hex: their last byte spreads them well enough.
        let i = session.as_bytes().last().map_or(0, |b| usize::from(*b)) % SHARDS;
        self.0[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn cell(
        &self,
        session: &str,
        identity: &Identity,
        target: &Arc<str>,
        seed: Option<&UpstreamState>,
    ) -> Cell {
        let mut map = self.shard(session);
        if let Some(cell) = map.get(session).and_then(|s| s.links.get(&**target)) {
            return cell.clone();
        }
        map.entry(session.to_owned())
            .or_insert_with(|| SessionLinks {
                identity: identity.clone(),
                links: HashMap::new(),
            })
            .links
            .entry(target.clone())
            .or_insert_with(|| {
                Arc::new(AsyncMutex::new(seed.map(Link::resume).unwrap_or_default()))
            })
            .clone()
    }

    /// The targets a session has links to.
    pub(crate) fn targets_of(&self, session: &str) -> Vec<Arc<str>> {
        self.shard(session)
            .get(session)
            .map(|s| s.links.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes `targets`' links out of a session whose caller now is `identity`; returns them
    /// (with the identity they were opened for) to be closed.
    pub(crate) fn leave(
        &self,
        session: &str,
        identity: &Identity,
        targets: &[Arc<str>],
    ) -> Option<SessionLinks> {
        let mut map = self.shard(session);
        let links = map.get_mut(session)?;
        let old = std::mem::replace(&mut links.identity, identity.clone());
        let taken: HashMap<Arc<str>, Cell> = targets
            .iter()
            .filter_map(|k| links.links.remove_entry(k))
            .collect();
        (!taken.is_empty()).then_some(SessionLinks {
            identity: old,
            links: taken,
        })
    }

    /// Forgets a session's upstream links; returns them to be closed (DELETE, or end the stream).
    pub(crate) fn remove_session(&self, session: &str) -> Option<SessionLinks> {
        self.shard(session).remove(session)
    }
}
