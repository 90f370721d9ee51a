//! Audit events and where they go: the hot path hands each event to a bounded channel; a
//! background task writes JSON lines. Events carry decisions and outcomes, never arguments.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tracing::{error, warn};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    /// RFC 3339-ish UTC time in milliseconds since the epoch.
    pub time_ms: u128,
    pub user: String,
    pub session: Option<String>,
    pub method: String,
    pub target: Option<String>,
    pub name: Option<String>,
    /// `allow`, `deny`, or absent when no policy decision was needed.
    pub decision: Option<&'static str>,
    /// The deciding Policy; absent with a decision means default deny.
    pub policy: Option<String>,
    pub outcome: String,
    pub duration_ms: f64,
    pub trace_id: String,
}

pub fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

pub trait AuditSink: Send + Sync + 'static {
    /// Never blocks the request.
    fn record(&self, event: AuditEvent);

    /// Events this sink had to drop (exported as `reflow_audit_dropped_total`).
    fn dropped(&self) -> u64 {
        0
    }
}

/// Discards events (tests that do not look at audit).
pub struct NullSink;

impl AuditSink for NullSink {
    fn record(&self, _: AuditEvent) {}
}

/// Writes one JSON object per line to any writer (stdout, a file) from a dedicated thread, so
/// disk latency never stalls the async runtime.
///
/// Queue policy: the queue is bounded (`capacity` events). When it is full, `record` drops the
/// *newest* event instead of blocking the request, counts it (`dropped`, exported as
/// `reflow_audit_dropped_total`) and logs a warning. Nothing is dropped silently. Each line is
/// written with one `write` into a buffer; the buffer is flushed whenever the queue is drained,
/// so a quiet gateway has everything on disk and a busy one batches its writes. Dropping the
/// sink drains the queue, flushes and waits for the writer thread.
pub struct JsonLinesSink {
    tx: Option<std::sync::mpsc::SyncSender<AuditEvent>>,
    dropped: Arc<AtomicU64>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl JsonLinesSink {
    pub fn spawn<W: Write + Send + 'static>(out: W, capacity: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<AuditEvent>(capacity.max(1));
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_lines(rx, out))
            .expect("spawning the audit writer thread");
        Self {
            tx: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
            writer: Some(writer),
        }
    }

    /// Events refused because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The writer thread: blocks on the queue, buffers lines, flushes when the queue is empty.
fn write_lines<W: Write>(rx: std::sync::mpsc::Receiver<AuditEvent>, out: W) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(512);
    let mut write = |ev: &AuditEvent, out: &mut std::io::BufWriter<W>| {
        line.clear();
        if let Err(e) = serde_json::to_writer(&mut line, ev) {
            error!(error = %e, "audit event does not serialize");
            return;
        }
        line.push(b'\n');
        if let Err(e) = out.write_all(&line) {
            error!(error = %e, "audit write failed");
        }
    };
    while let Ok(ev) = rx.recv() {
        write(&ev, &mut out);
        // Batch whatever is already queued, then flush once.
        while let Ok(ev) = rx.try_recv() {
            write(&ev, &mut out);
        }
        if let Err(e) = out.flush() {
            error!(error = %e, "audit flush failed");
        }
    }
    let _ = out.flush();
}

impl Drop for JsonLinesSink {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain it, flush and exit.
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl AuditSink for JsonLinesSink {
    fn record(&self, event: AuditEvent) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                // Loud, counted, never silent.
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(dropped_total = n, "audit queue full; event dropped");
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                error!(dropped_total = n, "audit writer is gone; event dropped");
            }
        }
    }

    fn dropped(&self) -> u64 {
        JsonLinesSink::dropped(self)
    }
}

/// Collects events in memory (tests).
#[derive(Default, Clone)]
pub struct MemorySink(pub Arc<std::sync::Mutex<Vec<AuditEvent>>>);

impl MemorySink {
    pub fn events(&self) -> Vec<AuditEvent> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl AuditSink for MemorySink {
    fn record(&self, event: AuditEvent) {
        if let Ok(mut v) = self.0.lock() {
            v.push(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn writes_json_lines() {
        let buf = Buf::default();
        let sink = JsonLinesSink::spawn(buf.clone(), 8);
        sink.record(AuditEvent {
            time_ms: 1,
            user: "alice".into(),
            session: None,
            method: "tools/call".into(),
            target: Some("ns/t".into()),
            name: Some("echo".into()),
            decision: Some("allow"),
            policy: Some("p".into()),
            outcome: "ok".into(),
            duration_ms: 1.5,
            trace_id: "t".into(),
        });
        for _ in 0..50 {
            if !buf.0.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["user"], "alice");
        assert_eq!(v["decision"], "allow");
        assert_eq!(sink.dropped(), 0);
    }

    fn event(n: usize) -> AuditEvent {
        AuditEvent {
            time_ms: n as u128,
            user: "u".into(),
            session: None,
            method: "tools/call".into(),
            target: None,
            name: None,
            decision: None,
            policy: None,
            outcome: "ok".into(),
            duration_ms: 0.0,
            trace_id: format!("{n}"),
        }
    }

    /// A writer that blocks until released, so the queue fills up.
    struct Gate(Arc<std::sync::Mutex<()>>, Buf);
    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _held = self.0.lock().map_err(|_| std::io::ErrorKind::Other)?;
            self.1.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn full_queue_drops_and_counts_and_drop_flushes_the_rest() {
        let buf = Buf::default();
        let gate = Arc::new(std::sync::Mutex::new(()));
        let held = gate.lock().unwrap();
        let sink = JsonLinesSink::spawn(Gate(gate.clone(), buf.clone()), 2);
        // Tiny lines sit in the BufWriter; big ones force a write that blocks on the gate.
        for n in 0..200 {
            let mut e = event(n);
            e.user = "x".repeat(70 * 1024);
            sink.record(e);
        }
        let dropped = sink.dropped();
        assert!(dropped > 0, "a blocked writer must make the queue overflow");
        drop(held);
        drop(sink);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count() as u64 + dropped, 200);
    }
}
