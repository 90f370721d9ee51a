//! What the router accounts for around a call to a `kubernetes` Target's instance (reached
//! through `upstream::InstanceRoute`): the instance's upstream session is shared by every
//! session with its isolation key, so resource subscriptions on it are counted and its log
//! level is the most verbose one its sessions asked for; a call that found the instance gone
//! is made once more on the one ensured again.

use std::sync::Arc;

use serde_json::Value;
use tracing::instrument;

use super::Gateway;
use super::subscriptions::{Holder, Joined, Left, SUBSCRIBE, UNSUBSCRIBE, empty_result};
use crate::jsonrpc::UpstreamReply;
use crate::upstream::stdio::IsolationKey;
use crate::upstream::{CallHooks, Caller, InstanceRoute, UpstreamError};

impl Gateway {
    #[instrument(skip_all, name = "forward_instance", fields(target = %caller.target_key, method))]
    pub(crate) async fn call_instance(
        &self,
        caller: &Caller<'_>,
        mut route: InstanceRoute<'_>,
        (method, params): (&str, Option<&Value>),
        hooks: &CallHooks,
    ) -> Result<UpstreamReply, UpstreamError> {
        let uri = params
            .and_then(|p| p.get("uri"))
            .and_then(Value::as_str)
            .filter(|_| matches!(method, SUBSCRIBE | UNSUBSCRIBE));
        let mut retried = false;
        loop {
            let counted = route.label();
            // A retried unsubscribe was counted already; a retried subscribe was undone.
            if let Some(uri) = uri
                && (method == SUBSCRIBE || !retried)
                && self.count_instance_subscription(caller, (&counted, route.key()), method, uri)
            {
                return Ok(empty_result().into());
            }
            let holder = || Holder::Instance {
                target: caller.target_key.clone(),
                identity: caller.identity.clone(),
            };
            let tell = self.child_levels.attach(
                (&counted, holder),
                route.key(),
                caller.session_id,
                caller.log_level,
            );
            let out = route.send_at(tell, (method, params), hooks).await;
            if let Some(uri) = uri
                && method == SUBSCRIBE
                && !matches!(&out, Ok(reply) if reply.contains_key("result"))
            {
                self.subscriptions.leave(&counted, uri, caller.session_id);
            }
            match out {
                Err(e) if !retried => {
                    if !route.renewed_after(&e).await? {
                        return Err(e);
                    }
                    retried = true;
                }
                other => return other,
            }
        }
    }

    /// Counts a subscribe or unsubscribe on an instance's shared upstream session; true when
    /// it is answered here (others already subscribed, or still are).
    fn count_instance_subscription(
        &self,
        caller: &Caller<'_>,
        (counted, key): (&str, &IsolationKey),
        method: &str,
        uri: &str,
    ) -> bool {
        if method == SUBSCRIBE {
            let holder = || Holder::Instance {
                target: caller.target_key.clone(),
                identity: caller.identity.clone(),
            };
            self.subscriptions
                .join((counted, holder), key, uri, caller.session_id)
                == Joined::Again
        } else {
            self.subscriptions.leave(counted, uri, caller.session_id) == Left::Kept
        }
    }

    /// `method` to an instance outside any call of it (a session ended, or set a level): sent
    /// only if the instance is still cached (`Upstreams::instance_request`).
    pub(crate) async fn instance_request(
        &self,
        target_key: &Arc<str>,
        identity: &reflow_crds::Identity,
        session_id: &str,
        (method, params): (&str, &Value),
    ) -> Result<(), UpstreamError> {
        let snapshot = self.snapshots.load();
        let Some(target) = target_key
            .split_once('/')
            .and_then(|(ns, name)| snapshot.target(ns, name))
        else {
            return Ok(());
        };
        let creds = target.credentials.resolve(identity);
        let hooks = CallHooks::default();
        let caller = Caller {
            identity,
            target_key,
            session_id,
            seed: None,
            protocol_version: super::protocol::LATEST_PROTOCOL,
            client_capabilities: &Value::Null,
            hooks: &hooks,
            log_level: None,
            subject: None,
            trace_id: "",
        };
        let (caller_ref, opened) = (&caller, &creds);
        let headers = move || async move { self.call_headers(caller_ref, target, opened) };
        self.upstream
            .instance_request(&caller, target, &creds, headers, (method, params))
            .await
    }
}
