//! An MCP server on the official Rust SDK (`rmcp`, pinned), over STDIO, for the peer matrix:
//! tools `echo`, `sample` and `roots` (the latter two ask the client), written from rmcp's API.
// rmcp 3.x marks sampling deprecated (SEP-2577); handshake-era servers still use it: it is tested.
#![allow(deprecated)]

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock,
    CreateMessageRequestParams, ListToolsResult, PaginatedRequestParams, SamplingMessage,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Map, Value, json};

#[derive(Clone)]
struct RmcpServer;

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

impl ServerHandler for RmcpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(vec![
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
            Tool::new("roots", "Lists the client roots", schema(json!({}))),
        ]))
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
            "sample" => {
                let params = CreateMessageRequestParams::new(
                    vec![SamplingMessage::user_text(arg("prompt"))],
                    32,
                );
                match context.peer.create_message(params).await {
                    Ok(res) => text(format!(
                        "sampled: {}",
                        serde_json::to_string(&res.message).unwrap_or_default()
                    )),
                    Err(e) => failed(e),
                }
            }
            "roots" => match context.peer.list_roots().await {
                Ok(res) => text(format!(
                    "roots: {}",
                    serde_json::to_string(&res).unwrap_or_default()
                )),
                Err(e) => failed(e),
            },
            other => Err(ErrorData::invalid_params(
                format!("Unknown tool: {other}"),
                None,
            )),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let served = match RmcpServer.serve(rmcp::transport::stdio()).await {
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
