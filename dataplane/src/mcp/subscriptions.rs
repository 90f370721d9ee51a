//! Resource subscriptions on upstream sessions several gateway sessions share (STDIO children,
//! instance pods): subscribers counted per (upstream, URI) so only the first subscribe and the
//! last unsubscribe reach it.
//!
//! `notifications/resources/updated` from a shared child is delivered to the GET stream of every
//! session subscribed to that URI on that child (through `to_get_stream`, so it crosses
//! replicas), and to no one else. A child that exited hands its subscribers to the next child
//! started for the same isolation key, which is subscribed to their URIs before it serves its
//! first call: a crash and restart loses no subscription.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tracing::{debug, warn};

use super::Gateway;
use super::protocol::TARGET_META;
use crate::upstream::stdio::{ChildProcess, IsolationKey};
use crate::upstream::{CallHooks, Caller, ChildRoute, Inbound, UpstreamError};

pub(crate) const SUBSCRIBE: &str = "resources/subscribe";
pub(crate) const UNSUBSCRIBE: &str = "resources/unsubscribe";
const UPDATED: &str = "notifications/resources/updated";
/// How long a release-time unsubscribe may take (no client waits for it).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// A subscribe's place in the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Joined {
    /// No session had this URI on this upstream: the upstream must be told.
    First,
    /// Already subscribed upstream (by this or another session): answered here.
    Again,
}

/// An unsubscribe's place in the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Left {
    /// The last subscriber left: the upstream must be told.
    Last,
    /// Others still listen (or this session never subscribed): answered here.
    Kept,
}

/// A shared upstream holding counted state (subscriptions, a log level), and how to reach it
/// outside a request.
#[derive(Clone)]
pub(crate) enum Holder {
    Child(Weak<ChildProcess>),
    /// An instance pod of `target`, found again (in the cache only) by the isolation key of
    /// `identity`, a session's that used it.
    Instance {
        target: Arc<str>,
        identity: reflow_crds::Identity,
    },
}

struct Upstream {
    holder: Holder,
    /// Who the upstream serves, to tell whether a session whose claims changed still belongs.
    key: IsolationKey,
    uris: HashMap<String, BTreeSet<String>>,
}

#[derive(Default)]
struct Table {
    /// Child label (or `instance:<name>`) → URI → subscribed sessions.
    by_child: HashMap<String, Upstream>,
    /// Session → (upstream, URI), to release a session that ends.
    by_session: HashMap<String, HashSet<(String, String)>>,
}

/// Subscribers per (shared child, URI).
#[derive(Default)]
pub(crate) struct SharedSubscriptions(Mutex<Table>);

impl SharedSubscriptions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn join(
        &self,
        (upstream, holder): (&str, impl FnOnce() -> Holder),
        key: &IsolationKey,
        uri: &str,
        session: &str,
    ) -> Joined {
        let mut t = self.lock();
        let entry = t
            .by_child
            .entry(upstream.to_owned())
            .or_insert_with(|| Upstream {
                holder: holder(),
                key: key.clone(),
                uris: HashMap::new(),
            });
        let subs = entry.uris.entry(uri.to_owned()).or_default();
        let first = subs.is_empty();
        subs.insert(session.to_owned());
        t.by_session
            .entry(session.to_owned())
            .or_default()
            .insert((upstream.to_owned(), uri.to_owned()));
        if first { Joined::First } else { Joined::Again }
    }

    pub(crate) fn leave(&self, child: &str, uri: &str, session: &str) -> Left {
        let mut t = self.lock();
        if let Some(mine) = t.by_session.get_mut(session) {
            mine.remove(&(child.to_owned(), uri.to_owned()));
            if mine.is_empty() {
                t.by_session.remove(session);
            }
        }
        let Some(entry) = t.by_child.get_mut(child) else {
            return Left::Kept;
        };
        let Some(subs) = entry.uris.get_mut(uri) else {
            return Left::Kept;
        };
        if !subs.remove(session) {
            return Left::Kept;
        }
        if !subs.is_empty() {
            return Left::Kept;
        }
        entry.uris.remove(uri);
        if entry.uris.is_empty() {
            t.by_child.remove(child);
        }
        Left::Last
    }

    /// Moves the subscriptions held on exited children of `key` to `child` (their successor);
    /// returns the URIs `child` must now be subscribed to. Cheap when there are none.
    pub(crate) fn inherit(&self, key: &IsolationKey, child: &Arc<ChildProcess>) -> Vec<String> {
        let mut t = self.lock();
        let label = child.label();
        let gone: Vec<String> = t
            .by_child
            .iter()
            .filter(|(l, u)| l.as_str() != label && u.key == *key && exited(&u.holder))
            .map(|(l, _)| l.clone())
            .collect();
        let mut owed = Vec::new();
        for old in gone {
            let Some(prior) = t.by_child.remove(&old) else {
                continue;
            };
            for (uri, sessions) in prior.uris {
                for s in &sessions {
                    if let Some(mine) = t.by_session.get_mut(s) {
                        mine.remove(&(old.clone(), uri.clone()));
                        mine.insert((label.to_owned(), uri.clone()));
                    }
                }
                let heir = t
                    .by_child
                    .entry(label.to_owned())
                    .or_insert_with(|| Upstream {
                        holder: Holder::Child(Arc::downgrade(child)),
                        key: key.clone(),
                        uris: HashMap::new(),
                    });
                let subs = heir.uris.entry(uri.clone()).or_default();
                if subs.is_empty() {
                    owed.push(uri);
                }
                subs.extend(sessions);
            }
        }
        owed
    }

    /// Sessions subscribed to `uri` on `child`.
    pub(crate) fn subscribers(&self, child: &str, uri: &str) -> Vec<String> {
        self.lock()
            .by_child
            .get(child)
            .and_then(|e| e.uris.get(uri))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets `session`'s subscriptions on the upstreams `leaving` picks (by whom they serve);
    /// returns the (upstream, URI) pairs it was the last subscriber of, which the upstreams
    /// must be told about.
    pub(crate) fn release(
        &self,
        session: &str,
        leaving: impl Fn(&IsolationKey) -> bool,
    ) -> Vec<(Holder, String)> {
        let mine: Vec<(String, String, Holder)> = {
            let t = self.lock();
            t.by_session
                .get(session)
                .into_iter()
                .flatten()
                .filter_map(|(child, uri)| {
                    let e = t.by_child.get(child)?;
                    leaving(&e.key).then(|| (child.clone(), uri.clone(), e.holder.clone()))
                })
                .collect()
        };
        let mut last = Vec::new();
        for (upstream, uri, holder) in mine {
            if self.leave(&upstream, &uri, session) == Left::Last {
                last.push((holder, uri));
            }
        }
        last
    }
}

/// A child that is gone (dropped by the pool, or exited and not yet replaced there).
pub(crate) fn exited(holder: &Holder) -> bool {
    match holder {
        Holder::Child(weak) => weak.upgrade().is_none_or(|c| !c.is_alive()),
        Holder::Instance { .. } => false,
    }
}

pub(crate) fn empty_result() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("result".into(), json!({}));
    m
}

impl Gateway {
    /// `resources/subscribe`/`unsubscribe` on a STDIO child: counted per URI; the child hears
    /// the first subscribe and the last unsubscribe only.
    pub(crate) async fn stdio_subscription(
        &self,
        caller: &Caller<'_>,
        route: &ChildRoute<'_>,
        (method, params): (&str, Option<&Value>),
        hooks: &CallHooks,
    ) -> Result<Map<String, Value>, UpstreamError> {
        let sid = caller.session_id;
        let (child, key) = (&route.child, &route.key);
        let send = || route.request(method, params, hooks);
        let Some(uri) = params.and_then(|p| p.get("uri")).and_then(Value::as_str) else {
            // Dispatch refuses these before they get here; the child answers anything else.
            return Ok(send().await?);
        };
        match method {
            SUBSCRIBE => {
                let holder = (child.label(), || Holder::Child(Arc::downgrade(child)));
                if self.subscriptions.join(holder, key, uri, sid) == Joined::Again {
                    return Ok(empty_result());
                }
                let out = send().await;
                if !matches!(&out, Ok(reply) if reply.contains_key("result")) {
                    // Not subscribed upstream after all: the next subscriber must try again.
                    self.subscriptions.leave(child.label(), uri, sid);
                }
                Ok(out?)
            }
            UNSUBSCRIBE => match self.subscriptions.leave(child.label(), uri, sid) {
                Left::Last => Ok(send().await?),
                Left::Kept => Ok(empty_result()),
            },
            _ => Ok(send().await?),
        }
    }

    /// A child new for its isolation key takes over what its exited predecessors held: it is
    /// subscribed to their subscribers' URIs (a refusal is logged; those sessions keep their
    /// count, so the next subscribe is answered here as before).
    pub(crate) async fn carry_subscriptions(&self, key: &IsolationKey, child: &Arc<ChildProcess>) {
        for uri in self.subscriptions.inherit(key, child) {
            let params = json!({"uri": uri});
            match child
                .request(SUBSCRIBE, Some(&params), RELEASE_TIMEOUT)
                .await
            {
                Ok(reply) if reply.contains_key("result") => {
                    debug!(
                        child = child.label(),
                        "subscription carried to a restarted child"
                    )
                }
                Ok(reply) => {
                    let error = reply.get("error").map(Value::to_string).unwrap_or_default();
                    warn!(child = child.label(), %error, "a restarted child refused a carried subscription")
                }
                Err(e) => {
                    warn!(child = child.label(), error = %e, "a carried subscription did not reach the restarted child")
                }
            }
        }
    }

    /// After a (un)subscribe on a STDIO child (the session's own, or one it shares): what the
    /// child accepted is kept in the session's row.
    pub(crate) async fn keep_subscription(
        &self,
        sid: &str,
        target: &str,
        (method, params): (&str, Option<&Value>),
        out: &Result<Map<String, Value>, UpstreamError>,
    ) {
        let uri = params.and_then(|p| p.get("uri")).and_then(Value::as_str);
        if let (Ok(reply), Some(uri)) = (out, uri)
            && reply.contains_key("result")
        {
            self.record_subscription(sid, target, uri, method == SUBSCRIBE)
                .await;
        }
    }

    /// Keeps a subscription on a STDIO child in the session's row, so the child that serves the
    /// session on another replica (its own new child, or the shared child there) is subscribed
    /// for it again.
    async fn record_subscription(&self, sid: &str, target: &str, uri: &str, on: bool) {
        let Ok(Some(session)) = self.sessions.get(sid).await else {
            return;
        };
        let mut s = (*session).clone();
        let changed = if on {
            s.subscriptions
                .entry(target.to_owned())
                .or_default()
                .insert(uri.to_owned())
        } else {
            let gone = s
                .subscriptions
                .get_mut(target)
                .is_some_and(|uris| uris.remove(uri));
            s.subscriptions.retain(|_, uris| !uris.is_empty());
            gone
        };
        if changed && let Err(e) = self.sessions.put(s).await {
            warn!(error = %e, label = e.label(), "subscription not kept with the session");
        }
    }

    /// A child serving a session takes the subscriptions the session recorded for its Target
    /// that it does not hold for the session yet (the session moved here from a dead replica):
    /// the session's own child (a stateful Target's) is subscribed again; on a child shared
    /// with other sessions the session joins the URI's subscribers, and the child hears a
    /// subscribe only when it is the URI's first.
    pub(crate) async fn restore_subscriptions(
        &self,
        sid: &str,
        target: &str,
        (key, child): (&IsolationKey, &Arc<ChildProcess>),
    ) {
        let Ok(Some(session)) = self.sessions.get(sid).await else {
            return;
        };
        let Some(uris) = session.subscriptions.get(target) else {
            return;
        };
        for uri in uris {
            let holder = (child.label(), || Holder::Child(Arc::downgrade(child)));
            if self.subscriptions.join(holder, key, uri, sid) != Joined::First {
                continue;
            }
            let params = json!({"uri": uri});
            match child
                .request(SUBSCRIBE, Some(&params), RELEASE_TIMEOUT)
                .await
            {
                Ok(reply) if reply.contains_key("result") => {
                    debug!(
                        child = child.label(),
                        "subscription restored on a new owner's child"
                    )
                }
                other => {
                    self.subscriptions.leave(child.label(), uri, sid);
                    let error = match other {
                        Ok(reply) => reply.get("error").map(Value::to_string).unwrap_or_default(),
                        Err(e) => e.to_string(),
                    };
                    warn!(child = child.label(), %error, "a recorded subscription was not restored");
                }
            }
        }
    }

    /// Releases what a session held on the upstreams `leaving` picks (all of them when it ends):
    /// the last subscriber of a URI unsubscribes it upstream (best effort).
    pub(crate) async fn release_subscriptions(
        &self,
        session_id: &str,
        leaving: impl Fn(&IsolationKey) -> bool,
    ) {
        for (holder, uri) in self.subscriptions.release(session_id, leaving) {
            let params = json!({"uri": uri});
            let out = match holder {
                Holder::Child(weak) => {
                    let Some(child) = weak.upgrade() else {
                        continue;
                    };
                    child
                        .request(UNSUBSCRIBE, Some(&params), RELEASE_TIMEOUT)
                        .await
                        .map(drop)
                        .map_err(UpstreamError::from)
                }
                Holder::Instance { target, identity } => {
                    self.instance_request(&target, &identity, session_id, (UNSUBSCRIBE, &params))
                        .await
                }
            };
            match out {
                Ok(()) => debug!(session = session_id, "released a subscription"),
                Err(e) => {
                    warn!(session = session_id, error = %e, label = e.label(), "unsubscribe at session end failed")
                }
            }
        }
    }

    /// A shared child's message outside any call: a resource update goes to the GET stream of
    /// each session subscribed to its URI there; anything else is handed back.
    pub(crate) fn relay_shared(
        &self,
        child: &str,
        target: Arc<str>,
        inbound: Inbound,
    ) -> Option<Inbound> {
        let Inbound::Notification(msg) = &inbound else {
            return Some(inbound);
        };
        if msg.get("method").and_then(Value::as_str) != Some(UPDATED) {
            return Some(inbound);
        }
        let Some(uri) = msg
            .get("params")
            .and_then(|p| p.get("uri"))
            .and_then(Value::as_str)
        else {
            debug!(child, "resource update without a uri; dropped");
            return None;
        };
        let subscribers = self.subscriptions.subscribers(child, uri);
        if subscribers.is_empty() {
            debug!(child, "resource update nobody subscribed to; dropped");
        }
        let mut note = msg.clone();
        stamp_target(&mut note, &target);
        for sid in subscribers {
            self.update_to_session(sid, &target, note.clone());
        }
        None
    }
}

impl Gateway {
    /// One subscriber's copy of a resource update, with the URI an aggregated session knows
    /// (`resource_uri`); the session's scope needs the store, so this is done off the caller.
    fn update_to_session(&self, sid: String, target: &Arc<str>, mut note: Map<String, Value>) {
        let (Some(gw), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let target = target.clone();
        rt.spawn(async move {
            if let Ok(Some(s)) = gw.sessions.get(&sid).await
                && s.scope == crate::session::Scope::Aggregated
            {
                let snapshot = gw.snapshots.load();
                super::resource_uri::expose_update(&snapshot, &target, &mut note);
            }
            gw.to_get_stream(&sid, &gw.hubs.get(&sid), &note);
        });
    }
}

/// Names the Target a relayed notification came from, as calls' notifications are named.
fn stamp_target(msg: &mut Map<String, Value>, target: &str) {
    let params = msg
        .entry("params")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(params) = params else {
        return;
    };
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        meta.insert(TARGET_META.into(), json!(target));
    }
}
