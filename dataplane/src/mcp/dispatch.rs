//! Method handling: initialize/ping locally, lists aggregated across permitted targets and
//! filtered by policy, named calls routed by prefix (resource URIs by `resource_uri`).

use std::sync::Arc;

use futures::future::join_all;
use reflow_crds::observed::ObservedReason;
use reflow_crds::snapshot::{CompiledTarget, PREFIX_SEPARATOR, Upstream};
use reflow_crds::{Decision, Identity, ItemKind};
use serde_json::{Map, Value, json};
use tracing::warn;

use super::Gateway;
use super::authz::{self, FORBIDDEN, ListDecisions};
use super::call::{Ctx, Reply};
use super::pins;
use super::protocol::{LATEST_PROTOCOL, LEGACY_PROTOCOL, SUPPORTED_PROTOCOLS};
use super::resource_uri;
use crate::jsonrpc::{self, Request};
use crate::scope::Permission;
use crate::session::{Scope, Session};

/// Upstream pages followed per list before giving up on a misbehaving cursor chain.
const MAX_PAGES: usize = 64;

impl Ctx {
    pub(super) fn aggregated(&self) -> bool {
        self.session.scope == Scope::Aggregated
    }

    /// The targets this session reaches that the token scope admits.
    fn targets(&self) -> Vec<Arc<CompiledTarget>> {
        let all = match &self.session.scope {
            Scope::Aggregated => self.snapshot.targets().to_vec(),
            Scope::Target { namespace, name } => self
                .snapshot
                .target(namespace, name)
                .cloned()
                .into_iter()
                .collect(),
        };
        if self.scope.is_unrestricted() {
            return all;
        }
        all.into_iter()
            .filter(|t| self.scope.allows_target(&t.namespace, &t.name))
            .collect()
    }

    /// The targets some rule could open to the caller, with their keys (the others are never
    /// contacted on the caller's behalf).
    pub(super) fn open_targets(&self) -> (Vec<Arc<CompiledTarget>>, Vec<Arc<str>>) {
        let targets: Vec<_> = self
            .targets()
            .into_iter()
            .filter(|t| t.policy.view(&self.identity).may_allow_anything())
            .collect();
        let keys = targets.iter().map(|t| key_of(t)).collect();
        (targets, keys)
    }

    /// The target and upstream name for a tool/prompt name as the client sees it.
    fn route(&self, name: &str) -> Option<(Arc<CompiledTarget>, String)> {
        match &self.session.scope {
            Scope::Aggregated => self
                .snapshot
                .route(name)
                .map(|(t, rest)| (t.clone(), rest.to_owned())),
            Scope::Target { namespace, name: t } => self
                .snapshot
                .target(namespace, t)
                .map(|t| (t.clone(), name.to_owned())),
        }
    }

    /// The target serving a resource URI as the client sent it, and the URI that Target knows.
    fn route_uri_upstream(&self, uri: &str) -> (Option<Arc<CompiledTarget>>, String) {
        match &self.session.scope {
            Scope::Aggregated => match resource_uri::resolve(&self.snapshot, uri) {
                Some((t, upstream)) => (Some(t), upstream.to_owned()),
                None => (None, uri.to_owned()),
            },
            Scope::Target { namespace, name } => (
                self.snapshot.target(namespace, name).cloned(),
                uri.to_owned(),
            ),
        }
    }
}

/// Records what `initialize` asked for on `session` (version, client info and capabilities)
/// and returns the answer. `legacy` sessions (HTTP+SSE) also accept [`LEGACY_PROTOCOL`].
pub(crate) fn negotiate(session: &mut Session, req: &Request, legacy: bool) -> Value {
    let asked = req.param_str("protocolVersion").unwrap_or(LATEST_PROTOCOL);
    let version = SUPPORTED_PROTOCOLS
        .iter()
        .chain(legacy.then_some(&LEGACY_PROTOCOL))
        .find(|v| **v == asked)
        .copied()
        .unwrap_or(LATEST_PROTOCOL);
    session.protocol_version = version.to_owned();
    let params = req.params();
    session.client_info = params
        .and_then(|p| p.get("clientInfo"))
        .cloned()
        .unwrap_or(Value::Null);
    session.client_capabilities = params
        .and_then(|p| p.get("capabilities"))
        .cloned()
        .unwrap_or(Value::Null);
    let result = json!({
        "protocolVersion": version,
        // listChanged: a snapshot change that alters what the caller may see is announced.
        "capabilities": {"tools": {"listChanged": true}, "resources": {"listChanged": true}, "prompts": {"listChanged": true}, "completions": {}, "logging": {}},
        "serverInfo": {"name": "reflow", "version": env!("CARGO_PKG_VERSION")},
    });
    jsonrpc::result(&req.id, result)
}

/// One list method: where the items are and which field names them for policy.
struct ListKind {
    method: &'static str,
    field: &'static str,
    kind: ItemKind,
    key: &'static str,
    /// Tools and prompts are renamed `prefix_name` on the aggregated endpoint.
    prefixed: bool,
}

const TOOLS: ListKind = ListKind {
    method: "tools/list",
    field: "tools",
    kind: ItemKind::Tool,
    key: "name",
    prefixed: true,
};
const PROMPTS: ListKind = ListKind {
    method: "prompts/list",
    field: "prompts",
    kind: ItemKind::Prompt,
    key: "name",
    prefixed: true,
};
const RESOURCES: ListKind = ListKind {
    method: "resources/list",
    field: "resources",
    kind: ItemKind::Resource,
    key: "uri",
    prefixed: false,
};
const TEMPLATES: ListKind = ListKind {
    method: "resources/templates/list",
    field: "resourceTemplates",
    kind: ItemKind::Resource,
    key: "uriTemplate",
    prefixed: false,
};

/// `namespace/name`, shared by the labels, the link table and the audit event of one request.
fn key_of(target: &CompiledTarget) -> Arc<str> {
    Arc::from(target.key())
}

impl Gateway {
    /// Answers `initialize`: negotiates the version and opens a session.
    pub(crate) async fn initialize(
        &self,
        identity: &Identity,
        scope: Scope,
        req: &Request,
    ) -> (Value, Option<String>) {
        let mut session = Session::opened_by(identity, scope, String::new());
        let reply = negotiate(&mut session, req, false);
        let id = session.id.clone();
        if let Err(e) = self.sessions.create(session).await {
            return (
                jsonrpc::error(&req.id, jsonrpc::INTERNAL_ERROR, &e.to_string()),
                None,
            );
        }
        (reply, Some(id))
    }

    /// Answers one request; returns the reply, the target it went to and an outcome label.
    pub(crate) async fn dispatch(&self, ctx: &Ctx, req: Request) -> Reply {
        if let Err(why) = ctx.scope.permits(Permission::for_method(&req.method)) {
            self.audit_out_of_scope(ctx, &req.method, why);
            return Reply::new(
                jsonrpc::error(&req.id, FORBIDDEN, &why.to_string()),
                None,
                why.label(),
            );
        }
        match req.method.as_str() {
            "ping" => Reply::new(jsonrpc::result(&req.id, json!({})), None, "ok"),
            "logging/setLevel" => self.set_log_level(ctx, &req).await,
            "tools/list" => self.list(ctx, &req, &TOOLS).await,
            "prompts/list" => self.list(ctx, &req, &PROMPTS).await,
            "resources/list" => self.list(ctx, &req, &RESOURCES).await,
            "resources/templates/list" => self.list(ctx, &req, &TEMPLATES).await,
            "tools/call" => self.call_named(ctx, req, ItemKind::Tool).await,
            "prompts/get" => self.call_named(ctx, req, ItemKind::Prompt).await,
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                self.call_uri(ctx, req).await
            }
            "completion/complete" => self.complete(ctx, req).await,
            other => Reply::new(
                jsonrpc::method_not_found(&req.id, other),
                None,
                "method_not_found",
            ),
        }
    }

    async fn list(&self, ctx: &Ctx, req: &Request, kind: &ListKind) -> Reply {
        if req.param_str("cursor").is_some() {
            // Everything is returned on the first page, so no cursor of ours exists.
            return Reply::new(
                jsonrpc::invalid_params(&req.id, "invalid cursor"),
                None,
                "invalid_params",
            );
        }
        let (targets, keys) = ctx.open_targets();
        let pages = join_all(
            targets
                .iter()
                .zip(&keys)
                .map(|(t, key)| self.list_one(ctx, t, key, kind)),
        )
        .await;
        // On one Target's endpoint, a Target that could not be listed in time says why
        // instead of answering an empty list (issue #18 item 3).
        if !ctx.aggregated()
            && let Some(why) = pages.iter().find_map(|(_, failed)| failed.clone())
        {
            return Reply::new(
                jsonrpc::error(&req.id, jsonrpc::INTERNAL_ERROR, &why),
                keys.first().cloned(),
                "target_not_ready",
            );
        }
        let mut items: Vec<Value> = pages.into_iter().flat_map(|(items, _)| items).collect();
        if kind.method == "tools/list" && self.connections_tool_visible(ctx, &targets) {
            items.push(super::connections_tool::definition());
        }
        let mut result = Map::new();
        result.insert(kind.field.to_owned(), Value::Array(items));
        Reply::new(jsonrpc::result(&req.id, Value::Object(result)), None, "ok")
    }

    /// The permitted items of one target, all pages, renamed for the aggregated endpoint; what
    /// was shown and hidden is audited. A failing upstream contributes nothing (logged, counted
    /// and audited) rather than failing the list. A `kubernetes` Target gets `listWaitMs` at
    /// most: an instance that is not ready must not hold up every other Target's items; the
    /// second value then says why it is missing.
    async fn list_one(
        &self,
        ctx: &Ctx,
        target: &CompiledTarget,
        key: &Arc<str>,
        kind: &ListKind,
    ) -> (Vec<Value>, Option<String>) {
        let mut decisions = ListDecisions::default();
        let pages = self.list_pages(ctx, target, key, kind, &mut decisions);
        let (out, failed) = if matches!(target.upstream, Upstream::Kubernetes { .. }) {
            let wait = std::time::Duration::from_millis(self.config.instances.list_wait_ms.max(1));
            match tokio::time::timeout(wait, pages).await {
                Ok(out) => (out, None),
                Err(_) => {
                    let why = format!(
                        "Target {key} is not ready: its instance did not answer within {wait:?} (still starting, or failing to start); listed without it"
                    );
                    warn!(target = %key, method = kind.method, "{why}");
                    self.observe_failure(target, ObservedReason::NotReady, &why);
                    decisions.failed = true;
                    (Vec::new(), Some(why))
                }
            }
        } else {
            (pages.await, None)
        };
        decisions.shown = out.len();
        self.audit_list(ctx, kind.method, key, decisions);
        (out, failed)
    }

    async fn list_pages(
        &self,
        ctx: &Ctx,
        target: &CompiledTarget,
        key: &Arc<str>,
        kind: &ListKind,
        decisions: &mut ListDecisions,
    ) -> Vec<Value> {
        let view = target.policy.view(&ctx.identity);
        let mut out = Vec::new();
        let mut seen = (kind.kind == ItemKind::Tool).then(pins::Seen::new);
        let mut cursor: Option<Value> = None;
        for _ in 0..MAX_PAGES {
            let params = cursor.take().map(|c| json!({"cursor": c}));
            let reply = match self
                .forward(&ctx.caller(key), target, kind.method, params.as_ref())
                .await
            {
                Ok(r) => r.into_object(),
                Err(e) => {
                    warn!(target = %key, error = %e, label = e.label(), method = kind.method, "upstream list failed");
                    if seen.is_some() {
                        self.observe_failure(target, pins::reason_of(&e), &e.to_string());
                    }
                    decisions.failed = out.is_empty();
                    return out;
                }
            };
            let Some(result) = reply.get("result") else {
                warn!(target = %key, method = kind.method, "upstream list answered an error");
                if seen.is_some() {
                    self.observe_failure(
                        target,
                        ObservedReason::UpstreamError,
                        "the upstream answered tools/list with an error",
                    );
                }
                decisions.failed = out.is_empty();
                return out;
            };
            let page = result
                .get(kind.field)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for mut item in page {
                let Some(key) = item.get(kind.key).and_then(Value::as_str) else {
                    continue;
                };
                let mut decision = authz::listed(&view, kind.kind, key, &target.name);
                if let Some(seen) = seen.as_mut() {
                    let shown_as = if ctx.aggregated() {
                        format!("{}{PREFIX_SEPARATOR}{key}", target.prefix)
                    } else {
                        key.to_owned()
                    };
                    let allowed = decision.allowed;
                    if let Some(pinned) =
                        self.pin_list_item(ctx, target, (key, &shown_as), &item, seen, allowed)
                    {
                        decision = pinned;
                    }
                }
                if !decision.allowed {
                    // Audited under the name the client would have seen, as calls are.
                    if ctx.aggregated() {
                        let shown_as = if kind.prefixed {
                            format!("{}{PREFIX_SEPARATOR}{key}", target.prefix)
                        } else {
                            resource_uri::expose(&target.prefix, key)
                        };
                        decisions.hide(&shown_as, &decision);
                    } else {
                        decisions.hide(key, &decision);
                    }
                    continue;
                }
                if kind.prefixed && ctx.aggregated() {
                    let renamed = format!("{}{PREFIX_SEPARATOR}{key}", target.prefix);
                    item[kind.key] = Value::String(renamed);
                } else if ctx.aggregated() {
                    item[kind.key] = Value::String(resource_uri::expose(&target.prefix, key));
                }
                out.push(item);
            }
            match result.get("nextCursor") {
                Some(c) if !c.is_null() => cursor = Some(c.clone()),
                _ => {
                    if let Some(seen) = seen {
                        self.observe_list(target, seen);
                    }
                    return out;
                }
            }
        }
        warn!(target = %key, method = kind.method, "too many pages; list truncated");
        out
    }

    /// tools/call and prompts/get: a denied name answers exactly like an unknown one.
    async fn call_named(&self, ctx: &Ctx, mut req: Request, kind: ItemKind) -> Reply {
        let Some(name) = req.param_str("name").map(str::to_owned) else {
            return Reply::new(
                jsonrpc::invalid_params(&req.id, "params.name is required"),
                None,
                "invalid_params",
            );
        };
        let unknown = |id: &Value| match kind {
            ItemKind::Prompt => jsonrpc::invalid_params(id, &format!("Unknown prompt: {name}")),
            _ => jsonrpc::invalid_params(id, &format!("Unknown tool: {name}")),
        };
        if kind == ItemKind::Tool && name == super::connections_tool::NAME {
            let (targets, _) = ctx.open_targets();
            if self.connections_tool_visible(ctx, &targets) {
                return self.connections_tool_call(ctx, &req, &targets).await;
            }
        }
        let Some((target, upstream_name)) = ctx.route(&name) else {
            self.audit_decision(
                ctx,
                &req.method,
                None,
                &name,
                &Decision::DEFAULT_DENY,
                "unknown",
            );
            return Reply::new(unknown(&req.id), None, "unknown");
        };
        let key = key_of(&target);
        let args = req.params().and_then(|p| p.get("arguments"));
        let decision = ctx.decide(&target, kind, &upstream_name, args);
        self.count_decision(&key, kind, &decision);
        if !decision.allowed {
            self.audit_decision(ctx, &req.method, Some(&key), &name, &decision, "denied");
            return Reply::new(unknown(&req.id), Some(key), "denied");
        }
        // A definition that is not the pinned one answers like an unknown tool (`enforce`).
        if kind == ItemKind::Tool
            && let Err(verdict) = self
                .pin_call(ctx, &target, &key, (&upstream_name, &name))
                .await
        {
            let pinned = Decision {
                allowed: false,
                policy: Some(Arc::from(format!(
                    "{}:{}",
                    pins::TOOL_PINNING.as_ref(),
                    verdict.label()
                ))),
                condition: None,
            };
            self.audit_decision(ctx, &req.method, Some(&key), &name, &pinned, "denied");
            return Reply::new(unknown(&req.id), Some(key), "denied");
        }
        if let Some(refused) =
            self.rate_limited(ctx, &req, (&target, &key), (kind, &upstream_name, &name))
        {
            return refused;
        }
        if kind == ItemKind::Tool
            && let Some(connect) = self.connect_gate(ctx, &req.id, &target, &key, &name)
        {
            return connect;
        }
        req.params_mut()
            .insert("name".into(), Value::String(upstream_name.clone()));
        let Reply {
            message: mut reply,
            target: t,
            outcome,
        } = self.relay(ctx, req, &target, key, &name, &decision).await;
        // An upstream's own "unknown" answer names its unprefixed item; restate it with the
        // client's name so an unknown name reads exactly like a denied one.
        let label = if kind == ItemKind::Prompt {
            "Unknown prompt"
        } else {
            "Unknown tool"
        };
        if let Some(msg) = reply
            .as_tree_mut()
            .and_then(|r| r.pointer_mut("/error/message"))
            && msg.as_str() == Some(format!("{label}: {upstream_name}").as_str())
        {
            *msg = Value::String(format!("{label}: {name}"));
        }
        // A result passed through as bytes is made a tree only when it may hold a resource.
        if kind == ItemKind::Tool
            && ctx.aggregated()
            && reply
                .raw_result()
                .is_none_or(resource_uri::may_name_a_resource)
            && let Some(result) = reply.tree_mut().get_mut("result")
        {
            resource_uri::expose_tool_result(&target.prefix, result);
        }
        Reply::new(reply, t, outcome)
    }

    /// resources/read, subscribe, unsubscribe: routed by URI, decided on the URI.
    async fn call_uri(&self, ctx: &Ctx, req: Request) -> Reply {
        let Some(uri) = req.param_str("uri").map(str::to_owned) else {
            return Reply::new(
                jsonrpc::invalid_params(&req.id, "params.uri is required"),
                None,
                "invalid_params",
            );
        };
        let not_found = |id: &Value| {
            let mut e = jsonrpc::error(id, jsonrpc::RESOURCE_NOT_FOUND, "Resource not found");
            e["error"]["data"] = json!({"uri": uri});
            e
        };
        let (routed, upstream_uri) = ctx.route_uri_upstream(&uri);
        let Some(target) = routed else {
            self.audit_decision(
                ctx,
                &req.method,
                None,
                &uri,
                &Decision::DEFAULT_DENY,
                "unknown",
            );
            return Reply::new(not_found(&req.id), None, "unknown");
        };
        let key = key_of(&target);
        // Decided on the serving Target's own URI, as its policies are written.
        let decision = ctx.decide(&target, ItemKind::Resource, &upstream_uri, None);
        self.count_decision(&key, ItemKind::Resource, &decision);
        if !decision.allowed {
            self.audit_decision(ctx, &req.method, Some(&key), &uri, &decision, "denied");
            return Reply::new(not_found(&req.id), Some(key), "denied");
        }
        if req.method == "resources/read"
            && let Some(refused) = self.rate_limited(
                ctx,
                &req,
                (&target, &key),
                (ItemKind::Resource, &upstream_uri, &uri),
            )
        {
            return refused;
        }
        let mut req = req;
        req.params_mut()
            .insert("uri".into(), Value::String(upstream_uri.clone()));
        let Reply {
            message: mut reply,
            target: t,
            outcome,
        } = self.relay(ctx, req, &target, key, &uri, &decision).await;
        // An upstream's own "not found" has its own wording (and its own URI); restated as the
        // gateway's, a missing resource reads exactly like a denied one.
        if let Some(tree) = reply.as_tree()
            && resource_uri::upstream_not_found(tree, &upstream_uri)
        {
            let id = tree.get("id").cloned().unwrap_or(Value::Null);
            reply = not_found(&id).into();
        }
        if ctx.aggregated()
            && let Some(result) = reply.tree_mut().get_mut("result")
        {
            resource_uri::expose_read_result(&target.prefix, result);
        }
        Reply::new(reply, t, outcome)
    }

    /// completion/complete: `ref/prompt` by name (renamed), `ref/resource` by URI template.
    async fn complete(&self, ctx: &Ctx, mut req: Request) -> Reply {
        let r = req
            .params()
            .and_then(|p| p.get("ref"))
            .cloned()
            .unwrap_or(Value::Null);
        let kind = r.get("type").and_then(Value::as_str).unwrap_or("");
        let routed = match kind {
            "ref/prompt" => r.get("name").and_then(Value::as_str).and_then(|n| {
                ctx.route(n)
                    .map(|(t, up)| (t, up, n.to_owned(), ItemKind::Prompt))
            }),
            "ref/resource" => r.get("uri").and_then(Value::as_str).and_then(|u| {
                let (routed, upstream) = ctx.route_uri_upstream(u);
                routed.map(|t| (t, upstream, u.to_owned(), ItemKind::Resource))
            }),
            _ => {
                return Reply::new(
                    jsonrpc::invalid_params(&req.id, "params.ref is invalid"),
                    None,
                    "invalid_params",
                );
            }
        };
        let Some((target, upstream_name, shown, item)) = routed else {
            return Reply::new(
                jsonrpc::invalid_params(&req.id, "Unknown reference"),
                None,
                "unknown",
            );
        };
        let key = key_of(&target);
        let decision = ctx.decide(&target, item, &upstream_name, None);
        self.count_decision(&key, item, &decision);
        if !decision.allowed {
            self.audit_decision(ctx, &req.method, Some(&key), &shown, &decision, "denied");
            return Reply::new(
                jsonrpc::invalid_params(&req.id, "Unknown reference"),
                Some(key),
                "denied",
            );
        }
        if let Some(Value::Object(r)) = req.params_mut().get_mut("ref") {
            let field = if item == ItemKind::Prompt {
                "name"
            } else {
                "uri"
            };
            r.insert(field.into(), Value::String(upstream_name));
        }
        self.relay(ctx, req, &target, key, &shown, &decision).await
    }

    /// Connects the session to every HTTP upstream the caller may use (bounded by the Targets'
    /// own timeouts), so their change notifications reach it from the start.
    pub(crate) async fn warm_links(&self, ctx: &Ctx) {
        let (targets, keys) = ctx.open_targets();
        let warmed = join_all(
            targets
                .iter()
                .zip(&keys)
                .map(|(t, key)| async move { self.warm_link(&ctx.caller(key), t).await }),
        )
        .await;
        for (key, r) in keys.iter().zip(warmed) {
            if let Err(e) = r {
                tracing::debug!(target = %key, error = %e, "could not connect ahead of calls");
            }
        }
    }

    /// Forwards an allowed request and puts the client's id back on the reply.
    async fn relay(
        &self,
        ctx: &Ctx,
        req: Request,
        target: &CompiledTarget,
        key: Arc<str>,
        name: &str,
        decision: &Decision,
    ) -> Reply {
        if ctx.pin.as_ref().is_some_and(|pin| *pin != key) {
            // A state issued by one Target presented to another: refused, never forwarded.
            return Reply::new(
                jsonrpc::invalid_params(&req.id, "requestState was issued for another request"),
                Some(key),
                "tampered_state",
            );
        }
        let (reply, outcome) = match self
            .forward(
                &ctx.caller(&key),
                target,
                &req.method,
                req.object.get("params"),
            )
            .await
        {
            Ok(upstream) => {
                let outcome = if upstream.is_error() {
                    "upstream_error"
                } else {
                    "ok"
                };
                (jsonrpc::Outbound::answer(&req.id, upstream), outcome)
            }
            Err(e) => {
                let msg = format!("upstream {key} failed: {e}");
                let mut err = jsonrpc::error(&req.id, jsonrpc::UPSTREAM_ERROR, &msg);
                err["error"]["data"] = json!({"reason": e.label()});
                (err.into(), e.label())
            }
        };
        self.audit_decision(ctx, &req.method, Some(&key), name, decision, outcome);
        Reply::new(reply, Some(key), outcome)
    }
}
