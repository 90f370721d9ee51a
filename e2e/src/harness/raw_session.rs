//! A raw MCP session over Streamable HTTP, for tests that look at what crosses the wire (status
//! codes, headers, error shapes) rather than at what an SDK client makes of it: `initialize`,
//! the `mcp-session-id` it returns, `notifications/initialized`, then requests in that session.

use serde_json::{Value, json};

use super::error::{HarnessError, Result};
use super::http::http_client;

/// The protocol revision a [`RawInit::default`] session asks for.
pub const PROTOCOL: &str = "2025-11-25";
/// What a Streamable HTTP client accepts.
const ACCEPT: &str = "application/json, text/event-stream";

/// How a [`RawSession`] introduces itself.
#[derive(Clone, Debug)]
pub struct RawInit {
    /// `protocolVersion` of `initialize`, and the `mcp-protocol-version` header after it.
    pub protocol: String,
    pub capabilities: Value,
    /// `clientInfo.name`.
    pub client: String,
    /// Whether `notifications/initialized` follows `initialize`.
    pub initialized: bool,
}

impl Default for RawInit {
    fn default() -> Self {
        Self {
            protocol: PROTOCOL.to_owned(),
            capabilities: json!({}),
            client: "reflow-e2e".to_owned(),
            initialized: true,
        }
    }
}

impl RawInit {
    /// The defaults under the client name `client`.
    pub fn named(client: &str) -> Self {
        Self {
            client: client.to_owned(),
            ..Self::default()
        }
    }
}

/// One open session of a bearer-token caller at an MCP endpoint.
pub struct RawSession {
    http: reqwest::Client,
    url: String,
    token: String,
    id: String,
    protocol: String,
}

impl RawSession {
    /// `initialize` at `url` with `token` (and `notifications/initialized` if asked); fails
    /// unless the gateway answers 200 with a session id.
    pub async fn open(url: &str, token: &str, init: RawInit) -> Result<Self> {
        let http = http_client()?;
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": init.protocol, "capabilities": init.capabilities,
            "clientInfo": {"name": init.client, "version": "0"}}});
        let resp = http
            .post(url)
            .bearer_auth(token)
            .header("accept", ACCEPT)
            .json(&body)
            .send()
            .await
            .map_err(|e| HarnessError::Other(format!("initialize at {url}: {e}")))?;
        let status = resp.status();
        let id = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = resp.text().await.unwrap_or_default();
        let Some(id) = id.filter(|_| status == 200) else {
            return Err(HarnessError::Failed {
                what: format!("initialize at {url}"),
                status: format!("{status}, session id missing or refused"),
                output: text,
            });
        };
        let s = Self {
            http,
            url: url.to_owned(),
            token: token.to_owned(),
            id,
            protocol: init.protocol,
        };
        if init.initialized {
            let resp = s
                .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
                .await?;
            if !resp.status().is_success() {
                return Err(HarnessError::Failed {
                    what: "notifications/initialized".to_owned(),
                    status: resp.status().to_string(),
                    output: resp.text().await.unwrap_or_default(),
                });
            }
        }
        Ok(s)
    }

    /// The `mcp-session-id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A POST of `body` in this session (bearer, session id, protocol version, accept), to add
    /// headers to before sending.
    pub fn request(&self, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("mcp-session-id", &self.id)
            .header("mcp-protocol-version", &self.protocol)
            .header("accept", ACCEPT)
            .json(body)
    }

    /// POSTs `body` in this session.
    pub async fn post(&self, body: &Value) -> Result<reqwest::Response> {
        self.request(body)
            .send()
            .await
            .map_err(|e| HarnessError::Other(format!("POST {}: {e}", self.url)))
    }

    /// POSTs the request `body` and reads its JSON-RPC answer (plain JSON or SSE).
    pub async fn rpc(&self, body: &Value) -> Result<Value> {
        rpc_body(self.post(body).await?).await
    }

    /// `tools/call` of `name` with `args` (request id 7); the JSON-RPC answer.
    pub async fn call_tool(&self, name: &str, args: Value) -> Result<Value> {
        self.rpc(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": name, "arguments": args}}))
            .await
    }

    /// A DELETE of this session, to add headers to before sending.
    pub fn delete(&self) -> reqwest::RequestBuilder {
        self.http
            .delete(&self.url)
            .bearer_auth(&self.token)
            .header("mcp-session-id", &self.id)
    }
}

/// The JSON-RPC message of a POST's answer: the body itself, or the last non-empty `data:` line
/// of an SSE answer (where the response follows any notifications).
pub async fn rpc_body(resp: reqwest::Response) -> Result<Value> {
    let text = resp
        .text()
        .await
        .map_err(|e| HarnessError::Other(format!("reading the answer: {e}")))?;
    parse_rpc(&text)
}

fn parse_rpc(text: &str) -> Result<Value> {
    let json_text = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:").map(str::trim))
        .rfind(|d| !d.is_empty())
        .unwrap_or(text);
    serde_json::from_str(json_text)
        .map_err(|e| HarnessError::Other(format!("not a JSON-RPC answer ({e}): {text}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_from_json_and_from_the_last_sse_event() {
        assert_eq!(
            parse_rpc(r#"{"id":1}"#).unwrap_or_default(),
            json!({"id": 1})
        );
        let sse =
            "id: 1\ndata:\n\nevent: message\ndata: {\"method\":\"n\"}\n\ndata: {\"id\":2}\n\n";
        assert_eq!(parse_rpc(sse).unwrap_or_default(), json!({"id": 2}));
        assert!(parse_rpc("data: nope\n\n").is_err());
        assert!(parse_rpc("").is_err());
    }
}
