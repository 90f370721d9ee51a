//! Incremental `text/event-stream` parser shared by the Streamable HTTP replies and the legacy
//! SSE stream: yields each event's type (default `message`) and its joined `data:` lines.

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub name: String,
    pub data: String,
}

/// Buffers raw bytes, not text: a chunk boundary may fall inside a multi-byte UTF-8 character,
/// so only complete events are decoded.
#[derive(Default)]
pub(crate) struct EventParser {
    buf: Vec<u8>,
    /// The last `id:` seen (kept across events, as the event-stream rules say): what a
    /// reconnect sends as `Last-Event-ID`.
    last_id: Option<String>,
    /// The last `retry:` (milliseconds) the server asked for.
    retry_ms: Option<u64>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl EventParser {
    /// Bytes received but not yet part of a complete event.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Drops a partly received event (its connection ended); the last id and retry stay.
    pub(crate) fn discard_partial(&mut self) {
        self.buf.clear();
    }

    pub(crate) fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    pub(crate) fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(chunk);
        if self.buf.contains(&b'\r') {
            // Normalising the whole pending buffer also joins a CR/LF pair split across chunks.
            let mut normal = Vec::with_capacity(self.buf.len());
            let mut bytes = self.buf.iter().peekable();
            while let Some(b) = bytes.next() {
                if *b == b'\r' && bytes.peek() == Some(&&b'\n') {
                    continue;
                }
                normal.push(*b);
            }
            self.buf = normal;
        }
        let mut out = Vec::new();
        while let Some(end) = find(&self.buf, b"\n\n") {
            let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&raw);
            let mut name = None;
            let mut data = Vec::new();
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "data" => data.push(value),
                    "event" => name = Some(value.to_owned()),
                    "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
                    "retry" => {
                        if let Ok(ms) = value.trim().parse() {
                            self.retry_ms = Some(ms);
                        }
                    }
                    _ => {}
                }
            }
            // An event without data is not dispatched (as in the HTML event-stream rules), and
            // neither is one whose data is empty: servers send those to prime resumable streams
            // (2025-11-25) and they carry no message.
            if data.iter().any(|d| !d.trim().is_empty()) {
                out.push(Event {
                    name: name
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| "message".to_owned()),
                    data: data.join("\n"),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunks() {
        let mut p = EventParser::default();
        assert!(p.feed(b"event: message\ndata: {\"a\"").is_empty());
        let out = p.feed(b":1}\n\n: comment\n\ndata: x\r\n\r\n");
        let data: Vec<_> = out.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["{\"a\":1}", "x"]);
        assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn multi_byte_characters_split_across_chunks_survive() {
        let mut p = EventParser::default();
        let text = "data: {\"t\":\"héllo ✓\"}\n\n".as_bytes();
        let cut = text
            .iter()
            .position(|b| *b == 0xc3)
            .map(|i| i + 1)
            .unwrap_or(0);
        assert!(p.feed(&text[..cut]).is_empty());
        let out = p.feed(&text[cut..]);
        assert_eq!(out[0].data, "{\"t\":\"héllo ✓\"}");
    }

    #[test]
    fn priming_events_with_empty_data_are_skipped() {
        let mut p = EventParser::default();
        let out = p.feed(b"id: 1\ndata: \n\nid: 2\ndata: {\"jsonrpc\":\"2.0\"}\n\n");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, "{\"jsonrpc\":\"2.0\"}");
    }

    #[test]
    fn remembers_the_last_id_and_retry_even_from_priming_events() {
        let mut p = EventParser::default();
        assert!(p.feed(b"id: s:0\nretry: 500\ndata: \n\n").is_empty());
        assert_eq!((p.last_id(), p.retry_ms()), (Some("s:0"), Some(500)));
        p.feed(b"data: {}\n\n");
        assert_eq!(p.last_id(), Some("s:0"));
    }

    #[test]
    fn names_events_and_defaults_to_message() {
        let mut p = EventParser::default();
        let out = p.feed(b"event: endpoint\ndata: /messages?sessionId=1\n\ndata: {}\n\n");
        assert_eq!(
            out,
            [
                Event {
                    name: "endpoint".into(),
                    data: "/messages?sessionId=1".into()
                },
                Event {
                    name: "message".into(),
                    data: "{}".into()
                }
            ]
        );
    }
}
