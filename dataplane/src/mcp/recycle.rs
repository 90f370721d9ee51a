//! A session's caller back with other groups or roles (same subject): the session is kept and
//! moved to the new claims — audited, `list_changed` for the lists that now differ, and its
//! upstreams that depended on the old claims (credentials, isolation) left behind.
//!
//! Policy needs nothing here: it is decided per request on the request's identity. What must not
//! outlive the old claims is what was resolved for them: HTTP upstream sessions opened with the
//! old credentials or forwarded identity, and the subscriptions (and a STDIO child's log level)
//! the session holds on children and instance pods whose isolation key the new claims no longer
//! give. Both are picked per call by that key, so the next call reaches the right one.

use std::sync::Arc;

use reflow_crds::{CompiledTarget, Identity, Snapshot};
use serde_json::{Map, Value};
use tracing::{info, warn};

use super::Gateway;
use super::list_changed::{Viewer, changed_between, method};
use crate::audit::{AuditEvent, now_ms};
use crate::session::Session;
use crate::upstream::SessionLinks;
use crate::upstream::stdio::IsolationKey;

/// The audit `method` of a claims change (no client method caused it).
pub const CLAIMS_CHANGED: &str = "session/claimsChanged";

/// True if what a session holds on `target` was resolved for claims other than `new`'s: the
/// credentials differ, or the target is told who calls (forwarded identity).
fn depends_on_claims(target: &CompiledTarget, old: &Identity, new: &Identity) -> bool {
    target.identity_forwarding.is_some()
        || target.credentials.resolve(old).fingerprint
            != target.credentials.resolve(new).fingerprint
}

/// True if the child behind `key` is not the one `identity` would be given now.
fn child_left_behind(
    snapshot: &Snapshot,
    identity: &Identity,
    session: &str,
    key: &IsolationKey,
) -> bool {
    let Some((ns, name)) = key.target.split_once('/') else {
        return true;
    };
    let Some(target) = snapshot.target(ns, name) else {
        return true;
    };
    let creds = target.credentials.resolve(identity);
    IsolationKey::new(target, &key.target, identity, &creds, session) != *key
}

impl Gateway {
    /// `session` for a request by `identity` (whose subject owns it): as is when the claims are
    /// the ones it knows, else moved to the new claims first.
    pub(crate) async fn adopt_claims(
        &self,
        session: Arc<Session>,
        identity: &Identity,
    ) -> Arc<Session> {
        if !session.claims_differ(identity) {
            return session;
        }
        let snapshot = self.snapshots.load();
        let sid = session.id.clone();
        let before = session.claims.clone();
        let mut updated = Session::clone(&session);
        updated.claims = Some(identity.clone());
        let stale: Vec<Arc<str>> = self
            .upstream
            .linked_targets(&sid)
            .into_iter()
            .filter(|key| {
                let target = key
                    .split_once('/')
                    .and_then(|(ns, name)| snapshot.target(ns, name));
                match (target, &before) {
                    (Some(t), Some(old)) => depends_on_claims(t, old, identity),
                    // Unknown old claims or a vanished target: nothing of it may be trusted.
                    _ => true,
                }
            })
            .collect();
        for key in &stale {
            updated.upstreams.remove(&**key);
        }
        if let Err(e) = self.sessions.put(updated.clone()).await {
            warn!(session = %sid, error = %e, label = e.label(), "recycled session not stored");
        }
        let updated = Arc::new(updated);
        if let Some(links) = self.upstream.leave_links(&sid, identity, &stale) {
            self.close_links(links);
        }
        if let Some(gw) = self.me.upgrade() {
            let (id, snap, sid2) = (identity.clone(), snapshot.clone(), sid.clone());
            tokio::spawn(async move {
                let left = |k: &IsolationKey| child_left_behind(&snap, &id, &sid2, k);
                gw.release_subscriptions(&sid2, left).await;
                gw.release_levels(&sid2, left).await;
            });
        }
        self.audit_recycle(identity, &sid, stale.len());
        let after = Viewer {
            identity: identity.clone(),
            scope: session.scope.clone(),
        };
        if let Some(hub) = self.hubs.find(&sid) {
            hub.set_viewer(after.clone());
        }
        let kinds = match before {
            Some(old) => {
                let before = Viewer {
                    identity: old,
                    scope: session.scope.clone(),
                };
                changed_between(&snapshot, &before, &after)
            }
            None => reflow_crds::ItemKind::ALL.to_vec(),
        };
        let hub = self.hubs.get(&sid);
        for kind in kinds {
            let mut note = Map::new();
            note.insert("jsonrpc".into(), Value::from("2.0"));
            note.insert("method".into(), Value::from(method(kind)));
            self.to_get_stream(&sid, &hub, &note);
        }
        info!(session = %sid, links_dropped = stale.len(), "session moved to the caller's new claims");
        updated
    }

    /// Closes links taken out of a session (DELETE with the credentials they were opened with).
    fn close_links(&self, links: SessionLinks) {
        let Some(gw) = self.me.upgrade() else {
            return;
        };
        let snapshot = self.snapshots.load();
        tokio::spawn(async move { gw.upstream.close_links(links, &snapshot).await });
    }

    fn audit_recycle(&self, identity: &Identity, session: &str, dropped: usize) {
        self.audit.record(AuditEvent {
            id: crate::audit::new_event_id(),
            time_ms: now_ms(),
            user: identity.user.to_string(),
            session: Some(session.to_owned()),
            method: CLAIMS_CHANGED.to_owned(),
            target: None,
            name: None,
            decision: None,
            policy: None,
            outcome: if dropped == 0 {
                "recycled".to_owned()
            } else {
                format!("recycled; {dropped} upstream sessions left")
            },
            duration_ms: 0.0,
            trace_id: String::new(),
        });
    }
}
