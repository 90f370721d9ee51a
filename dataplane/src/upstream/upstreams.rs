//! `Upstreams`: the router's one way to an upstream. It owns the transport choice (Streamable
//! HTTP, legacy SSE, `auto`, stateless, STDIO children, instance pods), the one cache of
//! per-(session, Target) upstream sessions (`links`), the instance cache and the listen
//! streams standing in for subscriptions on stateless upstreams. `route` resolves where a
//! call goes (connecting, initializing and starting what is needed); every route has the same
//! `send`. What upstreams say outside calls goes to sessions over `ToSessions`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reflow_crds::snapshot::{CompiledTarget, ResolvedCredentials, Upstream};
use reflow_crds::{Identity, SealingKey, Snapshot};
use tracing::{debug, warn};

use super::caller::Caller;
use super::handshake::{SET_LEVEL, level_params};
use super::instance::Instances;
use super::links::{Links, SessionLinks};
use super::route::{ChildRoute, LinkRoute, Route};
use super::stateless::is_stateless;
use super::stdio::{IsolationKey, Start, StdioPool};
use super::{CallHooks, InjectedHeaders, Link, Listener, Transport, UpstreamClient, UpstreamError};
use crate::session::{SessionStore, UpstreamState};

/// Listen streams standing in for `resources/subscribe` on stateless upstreams, by
/// (session, target, URI); dropping one ends its stream.
pub(crate) type ListenSubscriptions = Mutex<HashMap<(String, String, String), Listener>>;

pub struct Upstreams {
    pub(crate) client: UpstreamClient,
    /// The one per-(session, Target) upstream session cache.
    links: Links,
    /// MCPInstances of `kubernetes` Targets (served only once a controller is set).
    pub(crate) instances: Instances,
    /// Resource subscriptions held on stateless upstreams as listen streams.
    pub(crate) listening: ListenSubscriptions,
    /// Where a new link's upstream state is recorded (so another replica could resume it).
    sessions: Arc<dyn SessionStore>,
    /// Opens the credentials STDIO children are started with and links are closed with.
    key: SealingKey,
}

impl Upstreams {
    pub fn new(
        client: UpstreamClient,
        instances: Instances,
        sessions: Arc<dyn SessionStore>,
        key: SealingKey,
    ) -> Self {
        Self {
            client,
            links: Links::default(),
            instances,
            listening: Mutex::default(),
            sessions,
            key,
        }
    }

    /// The STDIO process pool.
    pub fn stdio(&self) -> &Arc<StdioPool> {
        self.client.stdio()
    }

    /// Where `caller`'s call to `target` goes, ready to `send` on: the STDIO child of its
    /// isolation key, the instance pod of that key, or the session's link (connected and
    /// initialized once, its GET stream opened). `headers` (the caller's credentials and
    /// forwarded identity, the router's `call_headers`) are opened only for transports that
    /// send headers.
    pub async fn route<'a, H>(
        &'a self,
        caller: &'a Caller<'a>,
        target: &'a CompiledTarget,
        creds: &ResolvedCredentials,
        headers: impl FnOnce() -> H,
    ) -> Result<Route<'a>, UpstreamError>
    where
        H: Future<Output = Result<InjectedHeaders, UpstreamError>>,
    {
        match target.upstream {
            Upstream::Stdio { .. } => self
                .child_route(caller, target, creds)
                .await
                .map(Route::Child),
            Upstream::Kubernetes { .. } => self
                .instance_route(caller, target, creds, headers().await?)
                .await
                .map(Route::Instance),
            _ => self
                .link_route(caller, target, headers().await?)
                .await
                .map(Route::Link),
        }
    }

    /// No link: the pool picks the child by isolation key, which includes the fingerprint of
    /// these credentials, so a child never serves other credentials.
    async fn child_route<'a>(
        &'a self,
        caller: &'a Caller<'a>,
        target: &'a CompiledTarget,
        creds: &ResolvedCredentials,
    ) -> Result<ChildRoute<'a>, UpstreamError> {
        let key = IsolationKey::new(
            target,
            caller.target_key,
            caller.identity,
            creds,
            caller.session_id,
        );
        let start = Start {
            target,
            creds,
            key: &self.key,
            protocol_version: caller.handshake_version(),
            session: Some(caller.session_id),
        };
        let child = self.stdio().acquire(&key, &start).await?;
        Ok(ChildRoute {
            child,
            key,
            session: caller.session_id,
            timeout: Duration::from_millis(u64::from(target.timeouts.request_ms)),
        })
    }

    /// The session's link to an HTTP `target`, connected (and its upstream stream opened)
    /// first if it is not yet.
    async fn link_route<'a>(
        &'a self,
        caller: &'a Caller<'a>,
        target: &'a CompiledTarget,
        headers: InjectedHeaders,
    ) -> Result<LinkRoute<'a>, UpstreamError> {
        let key = caller.target_key;
        let cell = self
            .links
            .cell(caller.session_id, caller.identity, key, caller.seed);
        let init = caller.init_params();
        let link = {
            let mut guard = cell.lock().await;
            // Not yet connected, or a legacy stream that has since dropped: (re)connect.
            if !guard.is_ready_for(&target.upstream) {
                *guard = self.client.connect(target, &headers, &init).await?;
                self.listen(caller, target, &headers, &mut guard).await;
                self.remember(caller.session_id, key, &guard).await;
                // A stateless upstream has no session level (it is set per request).
                if !is_stateless(guard.state()) {
                    self.tell_new_link(caller, target, &headers, &guard).await;
                }
            }
            guard.clone()
        };
        Ok(LinkRoute {
            up: self,
            caller,
            target,
            headers,
            cell,
            link,
            init,
        })
    }

    /// Connects the session to an HTTP `target` ahead of any call, so what the upstream says
    /// outside calls (list changes) reaches the session from now on. STDIO and instance
    /// Targets are left alone (nothing is started for a warm-up).
    pub async fn warm<H>(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
        headers: impl FnOnce() -> H,
    ) -> Result<(), UpstreamError>
    where
        H: Future<Output = Result<InjectedHeaders, UpstreamError>>,
    {
        if matches!(
            target.upstream,
            Upstream::Stdio { .. } | Upstream::Kubernetes { .. }
        ) {
            return Ok(());
        }
        self.link_route(caller, target, headers().await?)
            .await
            .map(drop)
    }

    /// A link just initialized for a session that set a log level hears it before anything
    /// else; a refusal is logged (the upstream may not do logging).
    pub(super) async fn tell_new_link(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
        headers: &InjectedHeaders,
        link: &Link,
    ) {
        let Some(params) = caller.log_level.map(level_params) else {
            return;
        };
        let none = CallHooks::default();
        match self
            .client
            .send(target, headers, link, SET_LEVEL, Some(&params), &none)
            .await
        {
            Ok(reply) if reply.contains_key("error") => {
                debug!(target = %caller.target_key, "upstream refused logging/setLevel")
            }
            Ok(_) => {}
            Err(e) => {
                warn!(target = %caller.target_key, error = %e, label = e.label(), "logging/setLevel not passed on")
            }
        }
    }

    /// Opens a new Streamable HTTP link's GET stream: what the upstream says outside any
    /// request goes to this session's GET stream (the stream stops with the link). The link is
    /// used only once the upstream has answered the open (bounded by the connect timeout): a
    /// server that asks the client from a tool on that stream drops the request while no
    /// stream is open.
    pub(super) async fn listen(
        &self,
        caller: &Caller<'_>,
        target: &CompiledTarget,
        headers: &InjectedHeaders,
        link: &mut Link,
    ) {
        if link.transport() != Some(Transport::StreamableHttp) {
            return;
        }
        let deliver = self
            .client
            .deliver_to(caller.session_id, caller.target_key.clone());
        if let Some(mut listener) = self.client.listen(target, headers, link.state(), deliver) {
            let limit = Duration::from_millis(u64::from(target.timeouts.connect_ms));
            listener.opened(limit).await;
            link.attach(listener);
        }
    }

    /// Records upstream state in the session record (so another replica could resume it); a
    /// legacy SSE link is bound to its stream, so there is nothing to record for it.
    pub(super) async fn remember(&self, session_id: &str, target_key: &str, link: &Link) {
        if !link.is_resumable() {
            return;
        }
        if let Ok(Some(s)) = self.sessions.get(session_id).await {
            let mut s = crate::session::Session::clone(&s);
            s.upstreams
                .insert(target_key.to_owned(), UpstreamState::clone(link.state()));
            let _ = self.sessions.put(s).await;
        }
    }

    /// The Targets a session has an upstream session (link) to.
    pub fn linked_targets(&self, session: &str) -> Vec<Arc<str>> {
        self.links.targets_of(session)
    }

    /// Takes `targets`' links out of a session whose caller now is `identity`; returns them
    /// (with the identity they were opened for) for `close_links`.
    pub fn leave_links(
        &self,
        session: &str,
        identity: &Identity,
        targets: &[Arc<str>],
    ) -> Option<SessionLinks> {
        self.links.leave(session, identity, targets)
    }

    /// Forgets everything a session held here: its listen streams end now, its links are
    /// returned for `close_links` (dropping them ends legacy streams too).
    pub fn end_session(&self, session: &str) -> Option<SessionLinks> {
        self.listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(s, _, _), _| s != session);
        self.links.remove_session(session)
    }

    /// Closes links taken out of a session with the credentials they were opened with: DELETE
    /// for Streamable HTTP sessions (best effort), ending the stream for legacy SSE ones.
    pub async fn close_links(&self, links: SessionLinks, snapshot: &Snapshot) {
        let identity = links.identity;
        for (key, cell) in links.links {
            let Some(target) = key
                .split_once('/')
                .and_then(|(ns, name)| snapshot.target(ns, name))
            else {
                continue;
            };
            let link = cell.lock().await.clone();
            let creds = target.credentials.resolve(&identity);
            // No headers needed to end a stream; dropping `cell` and `link` closes it too.
            let headers = InjectedHeaders::open(&creds, &self.key).unwrap_or_default();
            self.client.close_link(target, &headers, &link).await;
        }
    }
}
