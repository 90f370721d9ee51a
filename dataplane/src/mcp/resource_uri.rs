//! Resource URIs on the aggregated endpoint: a Target's URI `u` is shown as `reflow://<prefix>/u`
//! (templates alike), so every URI names the one Target that serves it; single-Target keeps `u`.
//!
//! Why a rewrite and not a first-come route table: two Targets may serve the same URI, and a
//! table learned from lists routed a read to whichever was listed last, so a Target in another
//! namespace could capture reads, and a Deny on one Target was bypassed through the other. With
//! the prefix in the URI the route is a pure function of the URI (no session state, the same on
//! every replica), the policy decided is the serving Target's own, on the upstream's own URI, and
//! a URI of a Target the caller may not use names that Target and is refused as it.

use std::sync::Arc;

use reflow_crds::snapshot::{CompiledTarget, Snapshot};
use serde_json::{Map, Value};

/// The scheme of an aggregated resource URI; the authority is the Target's prefix.
pub(crate) const SCHEME: &str = "reflow://";

/// What the client sees for `uri` (or a URI template) of the Target with `prefix`.
pub(crate) fn expose(prefix: &str, uri: &str) -> String {
    format!("{SCHEME}{prefix}/{uri}")
}

/// The Target and its own URI for an aggregated URI; `None` for a URI not of this form or of
/// no Target in the snapshot (the caller answers "Resource not found").
pub(crate) fn resolve<'u>(
    snapshot: &Snapshot,
    uri: &'u str,
) -> Option<(Arc<CompiledTarget>, &'u str)> {
    let rest = uri.strip_prefix(SCHEME)?;
    let (prefix, upstream) = rest.split_once('/')?;
    if upstream.is_empty() {
        return None;
    }
    let target = snapshot.target_by_prefix(prefix)?;
    Some((target.clone(), upstream))
}

/// Whether an upstream's error answer says `uri` does not exist: MCP's -32002, or the
/// invalid-params answer the SDKs give for an unknown resource ("Unknown resource: u",
/// "Resource u not found"). Any other error passes through as the upstream gave it.
pub(crate) fn upstream_not_found(reply: &Value, uri: &str) -> bool {
    let Some(error) = reply.get("error") else {
        return false;
    };
    match error.get("code").and_then(Value::as_i64) {
        Some(crate::jsonrpc::RESOURCE_NOT_FOUND) => true,
        Some(crate::jsonrpc::INVALID_PARAMS) => {
            let message = error.get("message").and_then(Value::as_str).unwrap_or("");
            let lower = message.to_ascii_lowercase();
            (lower.contains("not found") || lower.contains("unknown resource"))
                && (message.contains(uri) || lower.contains("resource"))
        }
        _ => false,
    }
}

/// Rewrites the `uri` of each entry of a `resources/read` result's `contents`.
pub(crate) fn expose_read_result(prefix: &str, result: &mut Value) {
    if let Some(Value::Array(contents)) = result.get_mut("contents") {
        for item in contents {
            expose_field(prefix, item, "uri");
        }
    }
}

/// Whether a `tools/call` result's JSON text (as an upstream sent it) may hold content that
/// [`expose_tool_result`] rewrites: its `type` is `resource_link` or `resource`, so the text
/// holds `resource`, unless written with `\u` escapes, which are looked for too.
pub(crate) fn may_name_a_resource(result: &str) -> bool {
    result.contains("resource") || result.contains("\\u")
}

/// Rewrites the URIs a `tools/call` result points at (`resource_link` and embedded `resource`
/// content), so a client can read them back through the same endpoint.
pub(crate) fn expose_tool_result(prefix: &str, result: &mut Value) {
    let Some(Value::Array(content)) = result.get_mut("content") else {
        return;
    };
    for item in content {
        match item.get("type").and_then(Value::as_str) {
            Some("resource_link") => expose_field(prefix, item, "uri"),
            Some("resource") => {
                if let Some(resource) = item.get_mut("resource") {
                    expose_field(prefix, resource, "uri");
                }
            }
            _ => {}
        }
    }
}

/// Rewrites the `uri` of a `notifications/resources/updated` from the Target `key`
/// (`namespace/name`) for an aggregated session.
pub(crate) fn expose_update(snapshot: &Snapshot, key: &str, msg: &mut Map<String, Value>) {
    if let Some(prefix) = prefix_of(snapshot, key) {
        expose_notification(&prefix, msg);
    }
}

fn expose_notification(prefix: &str, msg: &mut Map<String, Value>) {
    if msg.get("method").and_then(Value::as_str) != Some("notifications/resources/updated") {
        return;
    }
    if let Some(params) = msg.get_mut("params") {
        expose_field(prefix, params, "uri");
    }
}

/// The prefix of the Target `key` (`namespace/name`) in `snapshot`.
fn prefix_of(snapshot: &Snapshot, key: &str) -> Option<Arc<str>> {
    let (ns, name) = key.split_once('/')?;
    snapshot.target(ns, name).map(|t| t.prefix.clone())
}

fn expose_field(prefix: &str, item: &mut Value, field: &str) {
    if let Some(Value::String(uri)) = item.get_mut(field) {
        *uri = expose(prefix, uri);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The byte check before a raw tool result is left alone: whatever `expose_tool_result`
    /// would rewrite, it says "may".
    #[test]
    fn a_tool_result_that_may_name_a_resource_is_told_by_its_text() {
        let texts = [
            r#"{"content":[{"type":"resource_link","uri":"file:///a","name":"a"}]}"#,
            r#"{"content":[{"type":"resource","resource":{"uri":"file:///a","text":"t"}}]}"#,
            r#"{"content":[{"type":"res\u006furce_link","uri":"file:///a"}]}"#,
        ];
        for text in texts {
            assert!(may_name_a_resource(text), "{text}");
            let mut tree: Value = serde_json::from_str(text).unwrap_or_default();
            let before = tree.clone();
            expose_tool_result("p", &mut tree);
            assert_ne!(tree, before, "{text} is rewritten");
        }
        let plain = r#"{"content":[{"type":"text","text":"[fx] bench"}]}"#;
        assert!(!may_name_a_resource(plain));
        let mut tree: Value = serde_json::from_str(plain).unwrap_or_default();
        let before = tree.clone();
        expose_tool_result("p", &mut tree);
        assert_eq!(tree, before, "nothing to rewrite in {plain}");
    }

    #[test]
    fn upstream_not_found_answers_are_recognised_and_other_errors_are_not() {
        let err = |code: i64, message: &str| json!({"error": {"code": code, "message": message}});
        assert!(upstream_not_found(&err(-32002, "anything"), "u://1"));
        assert!(upstream_not_found(
            &err(-32602, "Unknown resource: u://1"),
            "u://1"
        ));
        assert!(upstream_not_found(
            &err(-32602, "MCP error -32602: Resource u://1 not found"),
            "u://1"
        ));
        assert!(!upstream_not_found(
            &err(-32602, "uri must be a string"),
            "u://1"
        ));
        assert!(!upstream_not_found(
            &err(-32603, "Resource not found"),
            "u://1"
        ));
        assert!(!upstream_not_found(&json!({"result": {}}), "u://1"));
    }

    #[test]
    fn exposed_uris_and_templates_keep_the_upstream_text_after_the_prefix() {
        assert_eq!(
            expose("one", "file:///a/b.txt"),
            "reflow://one/file:///a/b.txt"
        );
        assert_eq!(
            expose("one", "fixture://items/{id}"),
            "reflow://one/fixture://items/{id}"
        );
        // An upstream that itself uses the scheme is wrapped once more, and unwrapped once.
        assert_eq!(expose("a", "reflow://b/x"), "reflow://a/reflow://b/x");
    }

    #[test]
    fn read_and_tool_results_and_updates_are_rewritten_and_nothing_else() {
        let mut read = json!({"contents": [{"uri": "u://1", "text": "t"}, {"blob": "x"}]});
        expose_read_result("p", &mut read);
        assert_eq!(
            read,
            json!({"contents": [{"uri": "reflow://p/u://1", "text": "t"}, {"blob": "x"}]})
        );
        let mut tool = json!({"content": [
            {"type": "text", "text": "u://1"},
            {"type": "resource_link", "uri": "u://2", "name": "two"},
            {"type": "resource", "resource": {"uri": "u://3", "text": "3"}},
        ]});
        expose_tool_result("p", &mut tool);
        assert_eq!(tool["content"][0]["text"], "u://1");
        assert_eq!(tool["content"][1]["uri"], "reflow://p/u://2");
        assert_eq!(tool["content"][2]["resource"]["uri"], "reflow://p/u://3");
        let Value::Object(mut update) = json!({
            "jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "u://4"}
        }) else {
            unreachable!()
        };
        expose_notification("p", &mut update);
        assert_eq!(update["params"]["uri"], "reflow://p/u://4");
        let Value::Object(mut other) = json!({
            "jsonrpc": "2.0", "method": "notifications/message", "params": {"uri": "u://5"}
        }) else {
            unreachable!()
        };
        expose_notification("p", &mut other);
        assert_eq!(other["params"]["uri"], "u://5");
    }
}
