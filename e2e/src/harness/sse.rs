//! A minimal Server-Sent Events reader for raw-HTTP tests (Streamable HTTP replies, GET streams, legacy SSE).
//! Parses `event:`/`data:`/`id:` fields, skips comments (keep-alives), bounds every read by a timeout.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::error::{HarnessError, Result};

/// One SSE event; `event` defaults to "message".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

impl SseEvent {
    /// The data parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.data)
            .map_err(|e| HarnessError::Other(format!("SSE data {:?} is not JSON: {e}", self.data)))
    }
}

/// Parses one event block (the text between blank lines); `None` for comment-only blocks.
fn parse_block(block: &str) -> Option<SseEvent> {
    let mut event = None;
    let mut data: Option<String> = None;
    let mut id = None;
    for line in block.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            "id" => id = Some(value.to_owned()),
            _ => {}
        }
    }
    if event.is_none() && data.is_none() {
        return None;
    }
    Some(SseEvent {
        event: event.unwrap_or_else(|| "message".to_owned()),
        data: data.unwrap_or_default(),
        id,
    })
}

/// Every event in a complete SSE body.
pub fn parse_body(body: &str) -> Vec<SseEvent> {
    body.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(parse_block)
        .collect()
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Reads events one at a time from a streaming response.
pub struct SseReader {
    stream: ByteStream,
    buf: String,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            stream: Box::pin(response.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event, `None` at end of stream; fails after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Option<SseEvent>> {
        tokio::time::timeout(timeout, self.next_event_unbounded())
            .await
            .map_err(|_| HarnessError::Timeout {
                what: "waiting for an SSE event".to_owned(),
                after: timeout,
                output: self.buf.clone(),
            })?
    }

    async fn next_event_unbounded(&mut self) -> Result<Option<SseEvent>> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if let Some(event) = parse_block(&block) {
                    return Ok(Some(event));
                }
            }
            match self.stream.next().await {
                Some(Ok(chunk)) => {
                    self.buf
                        .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
                }
                Some(Err(e)) => return Err(HarnessError::Other(format!("SSE stream error: {e}"))),
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_and_skips_comments() {
        let body = ": keep-alive\n\nevent: endpoint\ndata: /messages?sessionId=1\n\ndata: {\"a\":1}\nid: 7\n\n";
        let events = parse_body(body);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event, "endpoint");
        assert_eq!(events[0].data, "/messages?sessionId=1");
        assert_eq!(events[1].event, "message");
        assert_eq!(events[1].id.as_deref(), Some("7"));
        assert_eq!(events[1].json().expect("json")["a"], 1);
    }
}
