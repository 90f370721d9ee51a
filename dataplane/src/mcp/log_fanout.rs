//! `logging/setLevel`: the session's level is remembered and passed on to its upstreams; a
//! shared upstream (STDIO child, instance pod) runs at the most verbose level any session using
//! it asked for, and each session's `notifications/message` are filtered by its own level
//! (RFC 5424 order).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use reflow_crds::snapshot::Upstream;
use serde_json::{Map, Value, json};
use tracing::{debug, warn};

use super::Gateway;
use super::call::{Ctx, Reply};
use super::subscriptions::Holder;
use crate::jsonrpc::{self, Request};
use crate::log_level::LogLevel;
use crate::session::Session;
use crate::upstream::Caller;
use crate::upstream::handshake::{SET_LEVEL, level_params};
use crate::upstream::stdio::{ChildProcess, IsolationKey};

/// How long a child may take to accept a level (the client's call waits for it).
const SET_LEVEL_TIMEOUT: Duration = Duration::from_secs(5);

struct Attached {
    holder: Holder,
    /// Who the upstream serves, to tell whether a session whose claims changed still belongs.
    key: IsolationKey,
    /// Sessions that used the child, with the level each asked for (if any).
    asked: HashMap<String, Option<LogLevel>>,
    /// The level last sent to the child.
    sent: Option<LogLevel>,
}

impl Attached {
    /// The most verbose level asked for, if it differs from what the child was told.
    fn retell(&mut self) -> Option<LogLevel> {
        let wanted = self.asked.values().flatten().min().copied()?;
        (self.sent != Some(wanted)).then(|| {
            self.sent = Some(wanted);
            wanted
        })
    }
}

fn alive(holder: &Holder) -> bool {
    // Instances are forgotten with their last session instead.
    !super::subscriptions::exited(holder)
}

/// Which sessions use which shared upstream (STDIO child, instance pod), and at what level.
#[derive(Default)]
pub(crate) struct ChildLevels(Mutex<HashMap<String, Attached>>);

impl ChildLevels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Attached>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `session` (at `level`) uses `upstream` (a child's label, or
    /// `instance:<name>`); returns the level to tell it.
    pub(crate) fn attach(
        &self,
        (upstream, holder): (&str, impl FnOnce() -> Holder),
        key: &IsolationKey,
        session: &str,
        level: Option<LogLevel>,
    ) -> Option<LogLevel> {
        let mut map = self.lock();
        if let Some(a) = map.get_mut(upstream) {
            // The common case (known session, same level) allocates nothing.
            match a.asked.get_mut(session) {
                Some(l) if *l == level => return None,
                Some(l) => *l = level,
                None => {
                    a.asked.insert(session.to_owned(), level);
                }
            }
            return a.retell();
        }
        // Children that exited are forgotten when a new one is first seen; the sessions that
        // used one of the same key keep their levels on its successor.
        let mut asked: HashMap<String, Option<LogLevel>> = map
            .values()
            .filter(|a| a.key == *key && !alive(&a.holder))
            .flat_map(|a| a.asked.iter().map(|(s, l)| (s.clone(), *l)))
            .collect();
        map.retain(|_, a| alive(&a.holder));
        asked.insert(session.to_owned(), level);
        let mut a = Attached {
            holder: holder(),
            key: key.clone(),
            asked,
            sent: None,
        };
        let tell = a.retell();
        map.insert(upstream.to_owned(), a);
        tell
    }

    /// `session` now asks for `level`: the children it uses whose level changes.
    fn set(&self, session: &str, level: LogLevel) -> Vec<(Holder, LogLevel)> {
        self.change(
            session,
            |_| true,
            |asked| {
                if let Some(l) = asked.get_mut(session) {
                    *l = Some(level);
                }
            },
        )
    }

    /// `session` left the children `leaving` picks (all when it ended): those whose level
    /// changes without it.
    fn release(
        &self,
        session: &str,
        leaving: impl Fn(&IsolationKey) -> bool,
    ) -> Vec<(Holder, LogLevel)> {
        self.change(session, leaving, |asked| {
            asked.remove(session);
        })
    }

    fn change(
        &self,
        session: &str,
        pick: impl Fn(&IsolationKey) -> bool,
        edit: impl Fn(&mut HashMap<String, Option<LogLevel>>),
    ) -> Vec<(Holder, LogLevel)> {
        let mut map = self.lock();
        let mut out = Vec::new();
        for a in map.values_mut() {
            if !a.asked.contains_key(session) || !pick(&a.key) {
                continue;
            }
            edit(&mut a.asked);
            if let Some(level) = a.retell()
                && alive(&a.holder)
            {
                out.push((a.holder.clone(), level));
            }
        }
        map.retain(|_, a| !a.asked.is_empty() && alive(&a.holder));
        out
    }
}

/// True if the session asked for nothing, or the message is at or above the level it asked for.
/// A message whose level is missing or unknown is shown (the filter only hides what it can rank).
pub(crate) fn shown(session: &Session, msg: &Map<String, Value>) -> bool {
    let Some(wanted) = session.log_level else {
        return true;
    };
    if msg.get("method").and_then(Value::as_str) != Some("notifications/message") {
        return true;
    }
    message_level(msg).is_none_or(|l| wanted.admits(l))
}

/// The level a `notifications/message` says it is at, when it is a known one.
pub(crate) fn message_level(msg: &Map<String, Value>) -> Option<LogLevel> {
    msg.get("params")
        .and_then(|p| p.get("level"))
        .and_then(Value::as_str)
        .and_then(|l| l.parse::<LogLevel>().ok())
}

impl Gateway {
    /// Answers `logging/setLevel`: remembers the level on the session and tells its upstreams.
    /// An upstream that refuses is logged; the client's request still succeeds.
    pub(crate) async fn set_log_level(&self, ctx: &Ctx, req: &Request) -> Reply {
        let Some(level) = req
            .param_str("level")
            .and_then(|l| l.parse::<LogLevel>().ok())
        else {
            return Reply::new(
                jsonrpc::invalid_params(&req.id, "params.level must be a logging level"),
                None,
                "invalid_params",
            );
        };
        match self.sessions.get(&ctx.session.id).await {
            Ok(Some(s)) => {
                let mut s = Session::clone(&s);
                s.log_level = Some(level);
                if let Err(e) = self.sessions.put(s).await {
                    warn!(error = %e, label = e.label(), "session level not stored");
                }
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, label = e.label(), "session level not stored"),
        }
        let shared = self.child_levels.set(&ctx.session.id, level);
        let sid = ctx.session.id.as_str();
        let stdio = shared
            .into_iter()
            .map(|(holder, level)| async move { self.tell(holder, sid, level).await });
        let http = self.upstream.linked_targets(&ctx.session.id).into_iter().map(|key| async move {
            let Some((ns, name)) = key.split_once('/') else {
                return;
            };
            let Some(target) = ctx.snapshot.target(ns, name) else {
                return;
            };
            if matches!(target.upstream, Upstream::Stdio { .. } | Upstream::Kubernetes { .. }) {
                return;
            }
            let params = level_params(level);
            match self
                .forward(&ctx.caller(&key), target, SET_LEVEL, Some(&params))
                .await
            {
                Ok(reply) if reply.contains_key("error") => {
                    debug!(target = %key, "upstream refused logging/setLevel")
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(target = %key, error = %e, label = e.label(), "logging/setLevel not passed on")
                }
            }
        });
        futures::join!(join_all(stdio), join_all(http));
        Reply::new(jsonrpc::result(&req.id, json!({})), None, "ok")
    }

    /// A call of `caller` is about to use `child`: the child learns a more verbose level first.
    pub(crate) async fn attach_child(
        &self,
        caller: &Caller<'_>,
        key: &IsolationKey,
        child: &Arc<ChildProcess>,
    ) {
        let holder = (child.label(), || Holder::Child(Arc::downgrade(child)));
        if let Some(level) =
            self.child_levels
                .attach(holder, key, caller.session_id, caller.log_level)
        {
            tell_child(child, level).await;
        }
    }

    /// Tells a shared upstream its level outside any call of it.
    async fn tell(&self, holder: Holder, session_id: &str, level: LogLevel) {
        match holder {
            Holder::Child(weak) => {
                if let Some(child) = weak.upgrade() {
                    tell_child(&child, level).await;
                }
            }
            Holder::Instance { target, identity } => {
                let params = level_params(level);
                if let Err(e) = self
                    .instance_request(&target, &identity, session_id, (SET_LEVEL, &params))
                    .await
                {
                    warn!(target = %target, error = %e, label = e.label(), "logging/setLevel not passed on")
                }
            }
        }
    }

    /// A session that ended (or left the children `leaving` picks) no longer holds them at its
    /// level.
    pub(crate) async fn release_levels(
        &self,
        session_id: &str,
        leaving: impl Fn(&IsolationKey) -> bool,
    ) {
        for (holder, level) in self.child_levels.release(session_id, leaving) {
            self.tell(holder, session_id, level).await;
        }
    }
}

async fn tell_child(child: &ChildProcess, level: LogLevel) {
    let params = level_params(level);
    match child
        .request(SET_LEVEL, Some(&params), SET_LEVEL_TIMEOUT)
        .await
    {
        Ok(reply) if reply.contains_key("error") => {
            debug!(
                child = child.label(),
                "STDIO server refused logging/setLevel"
            )
        }
        Ok(_) => debug!(child = child.label(), %level, "STDIO server level set"),
        Err(e) => {
            warn!(child = child.label(), error = %e, label = e.label(), "logging/setLevel not passed on")
        }
    }
}
