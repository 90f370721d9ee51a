//! One gateway session's link to one upstream, whatever it speaks: Streamable HTTP session state
//! or a live legacy SSE stream. `connect`/`send`/`close_link` dispatch on the target's transport.

use std::time::Duration;

use reflow_crds::snapshot::{CompiledTarget, Upstream};
use serde_json::Value;

use std::sync::Arc;

use super::listen::Listener;
use super::sse::SseLink;
use super::{CallHooks, InitParams, InjectedHeaders, UpstreamClient, UpstreamError};
use crate::jsonrpc::UpstreamReply;
use crate::session::UpstreamState;

/// The wire transport a link (or a detected `auto` target) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    StreamableHttp,
    Sse,
}

/// Cheap to clone: clones of an SSE link share its stream.
#[derive(Clone, Default)]
pub struct Link {
    transport: Option<Transport>,
    state: UpstreamState,
    sse: Option<SseLink>,
    /// The upstream session's GET stream, while this link (or a clone) lives.
    listener: Option<Arc<Listener>>,
}

impl Link {
    /// A Streamable HTTP session recorded elsewhere (e.g. in the session store).
    pub fn resume(state: &UpstreamState) -> Self {
        Self {
            transport: state.initialized.then_some(Transport::StreamableHttp),
            state: state.clone(),
            sse: None,
            listener: None,
        }
    }

    /// Keeps `listener` (the upstream session's GET stream) running for this link's life.
    pub fn attach(&mut self, listener: Listener) {
        self.listener = Some(Arc::new(listener));
    }

    pub(super) fn streamable(state: UpstreamState) -> Self {
        Self {
            transport: Some(Transport::StreamableHttp),
            state,
            sse: None,
            listener: None,
        }
    }

    pub fn transport(&self) -> Option<Transport> {
        self.transport
    }

    /// Negotiated upstream state; only a Streamable HTTP session can be resumed from it.
    pub fn state(&self) -> &UpstreamState {
        &self.state
    }

    pub fn is_resumable(&self) -> bool {
        self.transport == Some(Transport::StreamableHttp)
    }

    /// Usable as is for `upstream`: initialized, on a transport the target allows, stream alive.
    pub fn is_ready_for(&self, upstream: &Upstream) -> bool {
        let fits = match upstream {
            Upstream::StreamableHttp { .. } => self.transport == Some(Transport::StreamableHttp),
            Upstream::Sse { .. } => self.transport == Some(Transport::Sse),
            Upstream::Auto { .. } => self.transport.is_some(),
            Upstream::Stdio { .. } | Upstream::Kubernetes { .. } => false,
        };
        let live = match (&self.transport, &self.sse) {
            (Some(Transport::StreamableHttp), _) => self.state.initialized,
            (Some(Transport::Sse), Some(s)) => s.is_alive(),
            _ => false,
        };
        fits && live
    }

    /// The same upstream session (so a concurrent caller has not replaced it yet).
    pub fn same(&self, other: &Self) -> bool {
        let same_sse = match (&self.sse, &other.sse) {
            (Some(a), Some(b)) => a.same(b),
            (None, None) => true,
            _ => false,
        };
        self.transport == other.transport
            && self.state.session_id == other.state.session_id
            && same_sse
    }
}

impl UpstreamClient {
    /// Establishes a link to `target` (initialize + initialized) on the transport it speaks.
    pub async fn connect(
        &self,
        target: &CompiledTarget,
        headers: &InjectedHeaders,
        init: &InitParams,
    ) -> Result<Link, UpstreamError> {
        match &target.upstream {
            Upstream::StreamableHttp { .. } => self
                .initialize(target, headers, init)
                .await
                .map(Link::streamable),
            Upstream::Sse { url } => self.connect_sse(target, url, headers, init).await,
            Upstream::Auto { url } => self.connect_auto(target, url, headers, init).await,
            // Served by the process pool (`UpstreamClient::stdio`), never through a link.
            Upstream::Stdio { .. } => Err(UpstreamError::Unsupported("stdio link")),
            Upstream::Kubernetes { .. } => Err(UpstreamError::Unsupported("kubernetes")),
        }
    }

    /// One request on a link from `connect`.
    pub async fn send(
        &self,
        target: &CompiledTarget,
        headers: &InjectedHeaders,
        link: &Link,
        method: &str,
        params: Option<&Value>,
        hooks: &CallHooks,
    ) -> Result<UpstreamReply, UpstreamError> {
        match (&link.transport, &link.sse) {
            (Some(Transport::Sse), Some(sse)) => {
                let timeout = Duration::from_millis(u64::from(target.timeouts.request_ms));
                let call = sse.request(&self.http, &headers.0, method, params, timeout, hooks);
                tokio::select! {
                    out = call => out.map(UpstreamReply::from),
                    () = hooks.cancelled() => Err(UpstreamError::Cancelled),
                }
            }
            (Some(Transport::StreamableHttp), _) => {
                self.request(target, headers, &link.state, method, params, hooks)
                    .await
            }
            // Not connected: the caller reconnects and retries once.
            _ => Err(UpstreamError::SessionExpired),
        }
    }

    /// Ends a link: DELETE for Streamable HTTP (best effort), closing the stream for SSE.
    pub async fn close_link(
        &self,
        target: &CompiledTarget,
        headers: &InjectedHeaders,
        link: &Link,
    ) {
        match (&link.transport, &link.sse) {
            (Some(Transport::Sse), Some(sse)) => sse.shutdown(),
            (Some(Transport::StreamableHttp), _) => self.close(target, headers, &link.state).await,
            _ => {}
        }
    }

    /// Legacy SSE: open the stream, then `initialize` + `notifications/initialized` over it.
    pub(super) async fn connect_sse(
        &self,
        target: &CompiledTarget,
        url: &str,
        headers: &InjectedHeaders,
        init: &InitParams,
    ) -> Result<Link, UpstreamError> {
        let timeout = Duration::from_millis(u64::from(target.timeouts.init_ms));
        let sse = SseLink::open(&self.http, url, &headers.0, timeout).await?;
        let params = super::handshake::initialize_params(
            &init.protocol_version,
            &init.capabilities,
            super::handshake::GATEWAY,
        );
        let reply = sse
            .request(
                &self.http,
                &headers.0,
                "initialize",
                Some(&params),
                timeout,
                &CallHooks::default(),
            )
            .await?;
        let state = super::handshake::initialized(&reply, None)?;
        sse.notify(&self.http, &headers.0, "notifications/initialized", timeout)
            .await?;
        Ok(Link {
            transport: Some(Transport::Sse),
            state,
            sse: Some(sse),
            listener: None,
        })
    }
}
