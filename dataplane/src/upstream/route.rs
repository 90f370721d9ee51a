//! Where one call goes, as `Upstreams::route` resolved it: a STDIO child, an instance pod, or
//! the session's link to an HTTP upstream. Each has the same `send`; what differs is what the
//! router must account for around it (a child's or an instance's upstream session is shared
//! by the sessions of its isolation key; a stateless link has no session at all).

use std::time::Duration;

use reflow_crds::snapshot::CompiledTarget;
use serde_json::{Map, Value, json};

use super::caller::Caller;
use super::instance_route::InstanceRoute;
use super::links::Cell;
use super::stateless::is_stateless;
use super::stdio::{ChildProcess, IsolationKey, StdioError};
use super::upstreams::Upstreams;
use super::{CallHooks, InitParams, InjectedHeaders, Link, UpstreamError};
use crate::jsonrpc::{self, UpstreamReply};
use std::sync::Arc;

// Lives on the stack for one call and is matched once: boxing the larger variant would add an
// allocation per call for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Route<'a> {
    /// A STDIO child, picked by isolation key (shared by the sessions with that key, or the
    /// session's own for a stateful Target).
    Child(ChildRoute<'a>),
    /// A `kubernetes` Target's instance pod, whose upstream session its sessions share.
    Instance(InstanceRoute<'a>),
    /// The session's own link: Streamable HTTP, legacy SSE, `auto`, or stateless.
    Link(LinkRoute<'a>),
}

impl Route<'_> {
    /// One request; the reply keeps the upstream's `result` or `error`.
    pub async fn send(
        &self,
        method: &str,
        params: Option<&Value>,
        hooks: &CallHooks,
    ) -> Result<UpstreamReply, UpstreamError> {
        match self {
            Self::Child(r) => r.send(method, params, hooks).await,
            Self::Instance(r) => r.send(method, params, hooks).await,
            Self::Link(r) => r.send(method, params, hooks).await,
        }
    }
}

/// A call's STDIO child and the isolation key that picked it.
pub struct ChildRoute<'a> {
    pub child: Arc<ChildProcess>,
    pub key: IsolationKey,
    pub(super) session: &'a str,
    pub(super) timeout: Duration,
}

impl ChildRoute<'_> {
    /// One request to the child, as the session's (its notifications and requests about it go
    /// to `hooks`).
    pub async fn request(
        &self,
        method: &str,
        params: Option<&Value>,
        hooks: &CallHooks,
    ) -> Result<Map<String, Value>, StdioError> {
        self.child
            .request_with(method, params, self.timeout, hooks, Some(self.session))
            .await
    }

    pub async fn send(
        &self,
        method: &str,
        params: Option<&Value>,
        hooks: &CallHooks,
    ) -> Result<UpstreamReply, UpstreamError> {
        Ok(self.request(method, params, hooks).await?.into())
    }
}

/// A session's link to an HTTP upstream, ready to send on; reconnected once when the upstream
/// forgot the session.
pub struct LinkRoute<'a> {
    pub(super) up: &'a Upstreams,
    pub(super) caller: &'a Caller<'a>,
    pub(super) target: &'a CompiledTarget,
    pub(super) headers: InjectedHeaders,
    pub(super) cell: Cell,
    pub(super) link: Link,
    pub(super) init: InitParams,
}

impl LinkRoute<'_> {
    /// Whether the upstream serves the stateless revision (no session; `_meta` per request).
    pub fn is_stateless(&self) -> bool {
        is_stateless(self.link.state())
    }

    /// What the gateway declared to the upstream (the client's relayable capabilities).
    pub fn init(&self) -> &InitParams {
        &self.init
    }

    pub async fn send(
        &self,
        method: &str,
        params: Option<&Value>,
        hooks: &CallHooks,
    ) -> Result<UpstreamReply, UpstreamError> {
        let (up, target, headers) = (self.up, self.target, &self.headers);
        match up
            .client
            .send(target, headers, &self.link, method, params, hooks)
            .await
        {
            Err(UpstreamError::SessionExpired) => {
                let link = {
                    let mut guard = self.cell.lock().await;
                    // Another call may have re-initialized already.
                    if guard.same(&self.link) {
                        let caller = self.caller;
                        *guard = up.client.connect(target, headers, &self.init).await?;
                        up.listen(caller, target, headers, &mut guard).await;
                        up.remember(caller.session_id, caller.target_key, &guard)
                            .await;
                        up.tell_new_link(caller, target, headers, &guard).await;
                    }
                    guard.clone()
                };
                up.client
                    .send(target, headers, &link, method, params, hooks)
                    .await
            }
            other => other,
        }
    }

    /// `resources/subscribe` and `unsubscribe` for an upstream that has neither (the stateless
    /// revision): a `subscriptions/listen` stream for the URI, held for the session until it
    /// unsubscribes or ends; its updates reach the session like any other upstream
    /// notification.
    pub fn listen_subscription(&self, method: &str, params: Option<&Value>) -> Map<String, Value> {
        let mut out = Map::new();
        let Some(uri) = params.and_then(|p| p.get("uri")).and_then(Value::as_str) else {
            out.insert(
                "error".into(),
                json!({"code": jsonrpc::INVALID_PARAMS, "message": "params.uri is required"}),
            );
            return out;
        };
        let caller = self.caller;
        let key = (
            caller.session_id.to_owned(),
            caller.target_key.to_string(),
            uri.to_owned(),
        );
        let listening = &self.up.listening;
        if method == "resources/unsubscribe" {
            listening
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        } else {
            let client = &self.up.client;
            let deliver = client.deliver_to(caller.session_id, caller.target_key.clone());
            match client.listen_resources(
                self.target,
                &self.headers,
                self.link.state(),
                &[uri],
                deliver,
            ) {
                Some(listener) => {
                    listening
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key, listener);
                }
                None => {
                    out.insert(
                        "error".into(),
                        json!({"code": jsonrpc::INTERNAL_ERROR, "message": "the upstream offers no subscription"}),
                    );
                    return out;
                }
            }
        }
        out.insert("result".into(), json!({}));
        out
    }
}
