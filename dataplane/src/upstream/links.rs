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

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str) -> Identity {
        Identity::new(user, ["dev"], Vec::<String>::new())
    }

    #[test]
    fn one_link_per_session_and_target_resumed_from_the_session_record() {
        let links = Links::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("ns/a"), Arc::from("ns/b"));
        let seed = UpstreamState {
            session_id: Some("up-1".into()),
            protocol_version: Some("2025-06-18".into()),
            initialized: true,
        };
        let first = links.cell("s1", &who("alice"), &a, Some(&seed));
        let again = links.cell("s1", &who("alice"), &a, None);
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same link for the same pair"
        );
        let other_session = links.cell("s2", &who("alice"), &a, None);
        assert!(!Arc::ptr_eq(&first, &other_session));
        let other_target = links.cell("s1", &who("alice"), &b, None);
        assert!(!Arc::ptr_eq(&first, &other_target));
        let Ok(link) = first.try_lock() else {
            panic!("nobody holds the new link")
        };
        assert!(link.is_resumable() && link.state().session_id.as_deref() == Some("up-1"));
        let mut targets = links.targets_of("s1");
        targets.sort();
        assert_eq!(targets, vec![a, b]);
        assert!(links.targets_of("s3").is_empty());
    }

    #[test]
    fn leaving_takes_only_the_named_links_with_the_identity_that_opened_them() {
        let links = Links::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("ns/a"), Arc::from("ns/b"));
        links.cell("s1", &who("alice"), &a, None);
        links.cell("s1", &who("alice"), &b, None);
        let Some(left) = links.leave("s1", &who("alice2"), std::slice::from_ref(&a)) else {
            panic!("a link was taken")
        };
        assert_eq!(&*left.identity.user, "alice");
        assert_eq!(
            left.links.keys().cloned().collect::<Vec<_>>(),
            vec![a.clone()]
        );
        assert_eq!(links.targets_of("s1"), vec![b.clone()]);
        assert!(
            links.leave("s1", &who("alice3"), &[a]).is_none(),
            "nothing left to take for that target"
        );
        let Some(ended) = links.remove_session("s1") else {
            panic!("the session had links")
        };
        assert_eq!(
            &*ended.identity.user, "alice3",
            "the latest caller closes what is left"
        );
        assert_eq!(ended.links.len(), 1);
        assert!(links.targets_of("s1").is_empty() && links.remove_session("s1").is_none());
    }
}
