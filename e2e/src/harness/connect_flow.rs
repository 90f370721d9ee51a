//! The user's side of `userCredential` connect flows, shared by the standalone and the
//! controller-mode tests: an MCP client session with a bearer token (whose refused call carries
//! the connect link), and a real browser following that link through the IdP login and the
//! upstream's consent.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::browser::Browser;
use super::error::{HarnessError, Result};
use super::raw_session::{self, RawInit, RawSession};

/// The body of a JSON or single-event SSE answer (`{"unparsed": …}` when it is neither).
pub async fn rpc_body(resp: reqwest::Response) -> Value {
    raw_session::rpc_body(resp)
        .await
        .unwrap_or_else(|e| json!({"unparsed": e.to_string()}))
}

/// One initialized MCP session on a gateway's `/mcp`, as one caller.
pub struct McpUser(RawSession);

impl McpUser {
    /// Initializes a session at `<base>/mcp` with `token`.
    pub async fn open(base: &str, token: String) -> Result<Self> {
        let url = format!("{base}/mcp");
        RawSession::open(&url, &token, RawInit::named("connect-test"))
            .await
            .map(Self)
    }

    pub async fn post(&self, body: Value) -> Result<reqwest::Response> {
        self.0.post(&body).await
    }

    /// `tools/call` and its JSON-RPC answer.
    pub async fn call(&self, name: &str, args: Value) -> Result<Value> {
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": name, "arguments": args}});
        Ok(rpc_body(self.post(body).await?).await)
    }

    /// Whether the call failed (tool error or JSON-RPC error) and its first text (else the
    /// whole answer).
    pub async fn text(&self, name: &str, args: Value) -> (bool, String) {
        let r = match self.call(name, args).await {
            Ok(r) => r,
            Err(e) => return (true, e.to_string()),
        };
        let text = r["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (
            r["result"]["isError"] == true || r.get("error").is_some(),
            if text.is_empty() { r.to_string() } else { text },
        )
    }

    /// The absolute connect link in the refusal of `tool` (the caller has not connected), if
    /// the call was refused with one.
    pub async fn link(&self, tool: &str) -> Option<String> {
        let (err, text) = self.text(tool, json!({})).await;
        if !err {
            return None;
        }
        let at = text.find("/connect/")?;
        let start = text[..at].rfind("http")?;
        text[start..].split_whitespace().next().map(str::to_owned)
    }
}

/// Follows the connect flow in `b` as `user` (the connect page's button, the IdP login, the
/// consent) until the gateway's callback answers; returns the final page text and URL.
pub fn connect_in_browser(
    b: &mut Browser,
    link: &str,
    user: &str,
    wait: Duration,
) -> Result<(String, String)> {
    let nav = b.goto(link)?;
    if nav.status != Some(200) {
        return Err(HarnessError::Other(format!(
            "connect page answered {:?}: {}",
            nav.status,
            b.text(None).unwrap_or_default()
        )));
    }
    b.click("#connect")?;
    let deadline = Instant::now() + wait;
    loop {
        let url = b.url()?;
        if url.contains("/connect/callback") {
            let text = b.text(None).unwrap_or_default();
            if text.contains("connected")
                || text.contains("Not connected")
                || text.contains("not valid")
            {
                return Ok((text, url));
            }
        } else if b
            .wait_for_selector("input[name=login]", Duration::from_millis(300))
            .is_ok()
        {
            b.fill("input[name=login]", user)?;
            b.fill("input[name=password]", "any")?;
            b.click("button[type=submit]")?;
        } else if b
            .wait_for_selector("button[type=submit]", Duration::from_millis(300))
            .is_ok()
        {
            let _ = b.click("button[type=submit]");
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Other(format!(
                "flow of {user} stuck at {url}: {}",
                b.text(None).unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// Panics when `text` holds any of `secrets` (naming only their first characters).
pub fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} holds a token ({}…)",
            &s[..6.min(s.len())]
        );
    }
}
