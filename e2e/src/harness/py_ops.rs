//! Builders for the actions `e2e/py/client.py` understands, plus readers for its report.
//! Keeping the JSON shapes here means tests never spell them by hand.

use serde_json::{Value, json};

pub fn list_tools() -> Value {
    json!({ "op": "list_tools" })
}

pub fn list_resources() -> Value {
    json!({ "op": "list_resources" })
}

pub fn list_resource_templates() -> Value {
    json!({ "op": "list_resource_templates" })
}

pub fn list_prompts() -> Value {
    json!({ "op": "list_prompts" })
}

pub fn call_tool(name: &str, arguments: Value) -> Value {
    json!({ "op": "call_tool", "name": name, "arguments": arguments })
}

/// A tool call that asks for progress notifications (reported under `progress`).
pub fn call_tool_with_progress(name: &str, arguments: Value) -> Value {
    json!({ "op": "call_tool", "name": name, "arguments": arguments, "progress": true })
}

/// Waits (up to `timeout_s` seconds) for a server notification `method` the run has not
/// waited for yet; fails the action with `TimeoutError` if none comes.
pub fn wait_notification(method: &str, timeout_s: f64) -> Value {
    json!({ "op": "wait_notification", "method": method, "timeout": timeout_s })
}

pub fn read_resource(uri: &str) -> Value {
    json!({ "op": "read_resource", "uri": uri })
}

/// `resources/subscribe` to `uri` (updates then arrive as `notifications/resources/updated`).
pub fn subscribe(uri: &str) -> Value {
    json!({ "op": "subscribe", "uri": uri })
}

pub fn get_prompt(name: &str, arguments: Value) -> Value {
    json!({ "op": "get_prompt", "name": name, "arguments": arguments })
}

pub fn complete_prompt_arg(prompt: &str, argument: &str, value: &str) -> Value {
    json!({
        "op": "complete",
        "ref": { "type": "ref/prompt", "name": prompt },
        "argument": { "name": argument, "value": value },
    })
}

pub fn complete_resource_arg(uri_template: &str, argument: &str, value: &str) -> Value {
    json!({
        "op": "complete",
        "ref": { "type": "ref/resource", "uri": uri_template },
        "argument": { "name": argument, "value": value },
    })
}

pub fn set_logging_level(level: &str) -> Value {
    json!({ "op": "set_logging_level", "level": level })
}

/// Later requests of the run carry `Authorization: Bearer <token>` (streamable-http only): the
/// same session, presented by a token with other claims.
pub fn set_token(token: &str) -> Value {
    json!({ "op": "set_token", "token": token })
}

/// Calls `name` and gives up after `after_s` seconds (the SDK cancels the request).
pub fn call_tool_cancelled(name: &str, arguments: Value, after_s: f64) -> Value {
    json!({"op": "call_tool_cancelled", "name": name, "arguments": arguments, "after": after_s})
}

/// `subscriptions/listen` (2026-07-28 mode): waits for `events` change events of the kinds asked.
pub fn listen(tools: bool, uris: &[&str], events: usize, timeout_s: f64) -> Value {
    json!({"op": "listen", "tools": tools, "uris": uris, "events": events, "timeout": timeout_s})
}

pub fn sleep(seconds: f64) -> Value {
    json!({ "op": "sleep", "seconds": seconds })
}

pub fn ping() -> Value {
    json!({ "op": "ping" })
}

/// The record of action `i`, panicking with the whole report if the run or the action failed.
pub fn ok_result(report: &Value, i: usize) -> &Value {
    assert_eq!(report["ok"], json!(true), "client run failed: {report:#}");
    let record = &report["results"][i];
    assert_eq!(
        record["ok"],
        json!(true),
        "action {i} failed: {record:#}\nreport: {report:#}"
    );
    &record["result"]
}

/// The error of action `i`, panicking if it succeeded.
pub fn err_result(report: &Value, i: usize) -> &Value {
    let record = &report["results"][i];
    assert_eq!(
        record["ok"],
        json!(false),
        "action {i} succeeded: {record:#}"
    );
    &record["error"]
}

/// The text of the first content item of a tool result.
pub fn first_text(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_default()
}

/// Names of the items in a list result (`key` is "tools", "prompts", "resources", …).
pub fn names(result: &Value, key: &str) -> Vec<String> {
    result[key]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
