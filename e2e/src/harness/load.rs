//! Load generation over raw Streamable HTTP: an MCP session opened by hand, one pre-serialized
//! `tools/call` replayed sequentially (latency samples) or by N closed-loop workers for a fixed
//! time (throughput), every reply checked. Used by `benches/gateway.rs` to compare paths side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::error::{HarnessError, Result};

/// The protocol version the load sessions negotiate.
pub const PROTOCOL_VERSION: &str = "2025-06-18";
const SESSION_HEADER: &str = "mcp-session-id";
const PROTOCOL_HEADER: &str = "mcp-protocol-version";

/// A keep-alive HTTP/1.1 client for load: no proxy, TCP_NODELAY, an idle pool large enough that
/// every worker keeps its own connection, a 10 s request timeout.
pub fn load_client() -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(90))
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| HarnessError::Other(format!("cannot build the load client: {e}")))
}

/// One MCP session at `url` (initialize + notifications/initialized done), with the headers
/// every later request carries.
#[derive(Clone, Debug)]
pub struct McpSession {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    session_id: String,
}

fn header(value: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(value)
        .map_err(|e| HarnessError::Other(format!("invalid header value {value:?}: {e}")))
}

impl McpSession {
    /// Opens a session; `bearer` becomes `Authorization: Bearer …` on every request.
    pub async fn open(client: &reqwest::Client, url: &str, bearer: Option<&str>) -> Result<Self> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        if let Some(token) = bearer {
            let mut v = header(&format!("Bearer {token}"))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "reflow-load", "version": "1"}}});
        let resp = client
            .post(url)
            .headers(headers.clone())
            .body(init.to_string())
            .send()
            .await
            .map_err(|e| HarnessError::Other(format!("initialize at {url}: {e}")))?;
        let status = resp.status();
        let sid = resp
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = resp.text().await.unwrap_or_default();
        let Some(sid) = sid.filter(|_| status.is_success()) else {
            return Err(HarnessError::Other(format!(
                "initialize at {url}: HTTP {status}, no session id: {text}"
            )));
        };
        headers.insert(SESSION_HEADER, header(&sid)?);
        headers.insert(PROTOCOL_HEADER, HeaderValue::from_static(PROTOCOL_VERSION));
        let session = Self {
            client: client.clone(),
            url: url.to_owned(),
            headers,
            session_id: sid,
        };
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let status = session.post(Bytes::from(note.to_string())).await?.0;
        if status != 202 {
            return Err(HarnessError::Other(format!(
                "notifications/initialized at {url}: HTTP {status}"
            )));
        }
        Ok(session)
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The same session, its requests sent to `url` (another replica of the same gateway).
    pub fn at(&self, url: &str) -> Self {
        Self {
            url: url.to_owned(),
            ..self.clone()
        }
    }

    async fn post(&self, body: Bytes) -> Result<(u16, Bytes)> {
        let resp = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| HarnessError::Other(format!("POST {}: {e}", self.url)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| HarnessError::Other(format!("reading from {}: {e}", self.url)))?;
        Ok((status, bytes))
    }

    /// One JSON-RPC request; the whole reply (HTTP 200 with a JSON body required).
    pub async fn request(&self, method: &str, params: Value) -> Result<Value> {
        let msg = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let (status, body) = self.post(Bytes::from(msg.to_string())).await?;
        if status != 200 {
            return Err(HarnessError::Other(format!(
                "{method} at {}: HTTP {status}: {}",
                self.url,
                String::from_utf8_lossy(&body)
            )));
        }
        serde_json::from_slice(&body).map_err(|e| {
            HarnessError::Other(format!("{method} at {}: reply is not JSON: {e}", self.url))
        })
    }

    /// A `tools/call` of `tool` with `arguments`, serialized once, whose reply must carry
    /// `expect_text` as its first text content.
    pub fn tool_call(&self, tool: &str, arguments: Value, expect_text: &str) -> ToolCall {
        let msg = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}});
        ToolCall(Arc::new(CallInner {
            session: self.clone(),
            body: Bytes::from(msg.to_string()),
            expect_text: expect_text.to_owned(),
        }))
    }
}

struct CallInner {
    session: McpSession,
    body: Bytes,
    expect_text: String,
}

/// A replayable, checked `tools/call` (cheap to clone into workers).
#[derive(Clone)]
pub struct ToolCall(Arc<CallInner>);

impl ToolCall {
    /// Sends the call once; `Err` describes why the reply was not the expected success.
    pub async fn once(&self) -> std::result::Result<(), String> {
        let (status, body) = self
            .0
            .session
            .post(self.0.body.clone())
            .await
            .map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ));
        }
        let reply: Value =
            serde_json::from_slice(&body).map_err(|e| format!("reply is not JSON: {e}"))?;
        let ok = reply.get("error").is_none()
            && reply.pointer("/result/isError") != Some(&Value::Bool(true))
            && reply
                .pointer("/result/content/0/text")
                .and_then(Value::as_str)
                == Some(self.0.expect_text.as_str());
        if ok {
            Ok(())
        } else {
            Err(format!("unexpected reply: {reply}"))
        }
    }

    pub fn url(&self) -> &str {
        self.0.session.url()
    }
}

/// Outcome of a batch of calls: how many succeeded, failed, and the first failure.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    pub first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, r: std::result::Result<(), String>) {
        match r {
            Ok(()) => self.ok += 1,
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// `n` calls one after another; each call's wall time is appended to `samples`.
pub async fn sequential(call: &ToolCall, n: usize, samples: &mut Vec<Duration>) -> Tally {
    let mut tally = Tally::default();
    for _ in 0..n {
        let t0 = Instant::now();
        let r = call.once().await;
        samples.push(t0.elapsed());
        tally.record(r);
    }
    tally
}

/// Result of a closed-loop run.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub tally: Tally,
    pub elapsed: Duration,
}

impl Throughput {
    /// Successful calls per second.
    pub fn rps(&self) -> f64 {
        self.tally.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `workers` tasks each sending the call back to back until `duration` has passed (calls in
/// flight at the deadline finish and count; `elapsed` covers them).
pub async fn closed_loop(call: &ToolCall, workers: usize, duration: Duration) -> Throughput {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    tally.record(call.once().await);
                }
                tally
            })
        })
        .collect();
    let mut tally = Tally::default();
    for t in tasks {
        match t.await {
            Ok(part) => tally.merge(part),
            Err(e) => tally.record(Err(format!("worker panicked: {e}"))),
        }
    }
    Throughput {
        tally,
        elapsed: started.elapsed(),
    }
}

/// Order statistics of latency samples (nearest rank).
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub n: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl Percentiles {
    pub fn of(samples: &[Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut s = samples.to_vec();
        s.sort_unstable();
        let rank = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        let total: Duration = s.iter().sum();
        Self {
            n: s.len(),
            min: s[0],
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: s[s.len() - 1],
            mean: total / s.len() as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let p = Percentiles::of(&samples);
        assert_eq!(p.n, 100);
        assert_eq!(p.min, Duration::from_micros(1));
        assert_eq!(p.p50, Duration::from_micros(50));
        assert_eq!(p.p90, Duration::from_micros(90));
        assert_eq!(p.p99, Duration::from_micros(99));
        assert_eq!(p.max, Duration::from_micros(100));
        assert_eq!(p.mean, Duration::from_nanos(50_500));
        assert_eq!(Percentiles::of(&[]).n, 0);
    }
}
