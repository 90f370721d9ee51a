//! An MCP server on the official Rust SDK (`rmcp`, pinned), over STDIO, for the peer matrix,
//! written from rmcp's API: tools that ask the client (`sample`, `elicit`, `elicit_url`,
//! `roots`), report progress and log (`progress`), add a tool (`grow`), update subscribed
//! resources (`touch`), wait to be cancelled (`slow`, counted by `cancelled`); one resource
//! (subscribable) and one prompt. Messages are built from rmcp's model types; where a type has
//! no plain constructor it is read from its JSON form (its serde shape is rmcp's API too).
// rmcp 3.x marks sampling, logging and resources/subscribe deprecated (SEP-2577 and the
// 2026-07-28 revision); handshake-era servers still use them: they are tested.
#![allow(deprecated)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock,
    CreateMessageRequestParams, GetPromptRequestParams, GetPromptResponse, GetPromptResult,
    ListPromptsResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, SamplingMessage,
    ServerCapabilities, ServerConfig, SetLevelRequestParams, SubscribeRequestParams, Tool,
    UnsubscribeRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Map, Value, json};

const GREETING: &str = "rmcp://static/greeting";

#[derive(Clone, Default)]
struct RmcpServer {
    /// URIs the client subscribed to.
    subscribed: Arc<Mutex<BTreeSet<String>>>,
    /// Tools added by `grow`.
    grown: Arc<AtomicU64>,
    /// `slow` calls that saw their cancellation.
    cancelled: Arc<AtomicU64>,
    /// URL elicitations asked (their ids).
    asked: Arc<AtomicU64>,
}

fn schema(properties: Value) -> Arc<Map<String, Value>> {
    let mut schema = Map::new();
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), properties);
    Arc::new(schema)
}

fn text(t: String) -> Result<CallToolResponse, ErrorData> {
    Ok(CallToolResult::success(vec![ContentBlock::text(t)]).into())
}

fn failed(e: impl std::fmt::Display) -> Result<CallToolResponse, ErrorData> {
    Ok(CallToolResult::error(vec![ContentBlock::text(e.to_string())]).into())
}

/// An rmcp model value from its JSON form.
fn model<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ErrorData> {
    serde_json::from_value(v).map_err(|e| ErrorData::internal_error(e.to_string(), None))
}

impl RmcpServer {
    fn tools(&self) -> Vec<Tool> {
        let none = || schema(json!({}));
        let mut tools = vec![
            Tool::new(
                "echo",
                "Echoes text",
                schema(json!({"text": {"type": "string"}})),
            ),
            Tool::new(
                "sample",
                "Asks the client to sample",
                schema(json!({"prompt": {"type": "string"}})),
            ),
            Tool::new("elicit", "Asks the client a form question", none()),
            Tool::new("elicit_url", "Asks the client to open a URL", none()),
            Tool::new("roots", "Lists the client roots", none()),
            Tool::new("progress", "Reports three steps, logging each", none()),
            Tool::new("grow", "Adds a tool", none()),
            Tool::new("touch", "Updates the subscribed resources", none()),
            Tool::new("slow", "Waits until cancelled (20 s at most)", none()),
            Tool::new("cancelled", "How many slow calls were cancelled", none()),
        ];
        for n in 1..=self.grown.load(Ordering::Relaxed) {
            tools.push(Tool::new(format!("grown_{n}"), "Grown", none()));
        }
        tools
    }

    async fn ask(
        &self,
        name: &str,
        prompt: String,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let peer = &context.peer;
        match name {
            "sample" => {
                let params =
                    CreateMessageRequestParams::new(vec![SamplingMessage::user_text(prompt)], 32);
                match peer.create_message(params).await {
                    Ok(res) => text(format!(
                        "sampled: {}",
                        serde_json::to_string(&res.message).unwrap_or_default()
                    )),
                    Err(e) => failed(e),
                }
            }
            "elicit" => {
                let params = model(json!({
                    "mode": "form",
                    "message": "What is your name?",
                    "requestedSchema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
                }))?;
                match peer.create_elicitation(params).await {
                    Ok(res) => text(format!(
                        "elicited: {}",
                        serde_json::to_string(&res).unwrap_or_default()
                    )),
                    Err(e) => failed(e),
                }
            }
            "elicit_url" => {
                let params = model(json!({
                    "mode": "url",
                    "message": "Please sign in",
                    "url": "https://example.com/reflow-e2e/sign-in",
                    "elicitationId": format!("rmcp-{}", self.asked.fetch_add(1, Ordering::Relaxed)),
                }))?;
                match peer.create_elicitation(params).await {
                    Ok(res) => text(format!(
                        "url elicitation: {}",
                        serde_json::to_string(&res).unwrap_or_default()
                    )),
                    Err(e) => failed(e),
                }
            }
            _ => match peer.list_roots().await {
                Ok(res) => text(format!(
                    "roots: {}",
                    serde_json::to_string(&res).unwrap_or_default()
                )),
                Err(e) => failed(e),
            },
        }
    }

    async fn progress(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let token = context.meta.get_progress_token();
        for step in 1..=3 {
            if let Some(token) = &token {
                let note = model(json!({"progressToken": token, "progress": step, "total": 3}))?;
                let _ = context.peer.notify_progress(note).await;
            }
            let log = model(json!({"level": "info", "data": format!("rmcp step {step}")}))?;
            let _ = context.peer.notify_logging_message(log).await;
        }
        text("progressed".into())
    }

    async fn slow(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        tokio::select! {
            () = context.ct.cancelled() => {
                self.cancelled.fetch_add(1, Ordering::Relaxed);
                text("cancelled".into())
            }
            () = tokio::time::sleep(Duration::from_secs(20)) => text("not cancelled".into()),
        }
    }
}

impl ServerHandler for RmcpServer {
    fn get_info(&self) -> ServerConfig {
        let capabilities: ServerCapabilities = serde_json::from_value(json!({
            "tools": {"listChanged": true},
            "resources": {"subscribe": true},
            "prompts": {},
            "logging": {},
        }))
        .unwrap_or_default();
        ServerConfig::new(capabilities)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let arg = |name: &str| {
            request
                .arguments
                .as_ref()
                .and_then(|a| a.get(name))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match request.name.as_ref() {
            "echo" => text(format!("rmcp: {}", arg("text"))),
            name @ ("sample" | "elicit" | "elicit_url" | "roots") => {
                self.ask(name, arg("prompt"), &context).await
            }
            "progress" => self.progress(&context).await,
            "grow" => {
                let n = self.grown.fetch_add(1, Ordering::Relaxed) + 1;
                let _ = context.peer.notify_tool_list_changed().await;
                text(format!("grew grown_{n}"))
            }
            "touch" => {
                let uris: Vec<String> = self
                    .subscribed
                    .lock()
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                for uri in &uris {
                    let _ = context
                        .peer
                        .notify_resource_updated(model(json!({"uri": uri}))?)
                        .await;
                }
                text(format!("touched {}", uris.len()))
            }
            "slow" => self.slow(&context).await,
            "cancelled" => text(format!(
                "cancelled: {}",
                self.cancelled.load(Ordering::Relaxed)
            )),
            other if other.starts_with("grown_") => text("grown".into()),
            other => Err(ErrorData::invalid_params(
                format!("Unknown tool: {other}"),
                None,
            )),
        }
    }

    async fn set_level(
        &self,
        _request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        model(
            json!({"resources": [{"uri": GREETING, "name": "greeting", "mimeType": "text/plain"}]}),
        )
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if request.uri != GREETING {
            return Err(ErrorData::resource_not_found(
                format!("Unknown resource: {}", request.uri),
                None,
            ));
        }
        let result: ReadResourceResult = model(json!({
            "contents": [{"uri": GREETING, "mimeType": "text/plain", "text": "Hello from rmcp"}],
        }))?;
        Ok(result.into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if let Ok(mut s) = self.subscribed.lock() {
            s.insert(request.uri.to_string());
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if let Ok(mut s) = self.subscribed.lock() {
            s.remove(request.uri.as_str());
        }
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        model(
            json!({"prompts": [{"name": "greet", "description": "A greeting",
            "arguments": [{"name": "name", "required": true}]}]}),
        )
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        if request.name != "greet" {
            return Err(ErrorData::invalid_params(
                format!("Unknown prompt: {}", request.name),
                None,
            ));
        }
        let name = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let result: GetPromptResult = model(json!({
            "messages": [{"role": "user", "content": {"type": "text", "text": format!("Hello, {name}")}}],
        }))?;
        Ok(result.into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let served = match RmcpServer::default().serve(rmcp::transport::stdio()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("reflow-rmcp-server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match served.waiting().await {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reflow-rmcp-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
