//! Audit events and where they go: the hot path hands each event to a bounded channel; a
//! background task writes JSON lines. Events carry decisions and outcomes, never arguments.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tracing::{error, warn};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    /// Unique per event (uuid v7, time-ordered): a replayed event is recognised, never stored
    /// twice.
    #[serde(serialize_with = "uuid_text")]
    pub id: uuid::Uuid,
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

fn uuid_text<S: serde::Serializer>(id: &uuid::Uuid, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&id.hyphenated())
}

/// A fresh event id: uuid v7, so ids sort by creation time and index well.
pub fn new_event_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

pub fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

pub trait AuditSink: Send + Sync + 'static {
    /// Never drops the event; may wait for room when the sink's queue is full.
    fn record(&self, event: AuditEvent);

    /// Events this sink had to drop (exported as `reflow_audit_dropped_total`).
    fn dropped(&self) -> u64 {
        0
    }

    /// Events whose caller waited for room in a full queue (`reflow_audit_stalls_total`).
    fn stalls(&self) -> u64 {
        0
    }

    /// Whether events are being written to their store right now (a sink that buffers while its
    /// store is unreachable answers `false` until it is back).
    fn healthy(&self) -> bool {
        true
    }

    /// Whether requests must be refused while the sink is not `healthy` (the `failClosed`
    /// policy); `false` means events are buffered and requests keep flowing.
    fn fail_closed(&self) -> bool {
        false
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
/// Requests append to a shared batch under a short lock and never wake the writer: it collects
/// the batch every `TICK` (or early, when the batch reaches half its capacity), writes each line
/// into a buffer and flushes once per batch. Waking a thread per event cost more than the whole
/// policy decision on a busy two-core node. At most `TICK` of events sit in memory.
///
/// Queue policy: the batch is bounded (`capacity` events) and nothing is ever dropped. When it
/// is full, `record` waits for the writer to take the batch (backpressure: requests slow to the
/// pace of the disk or the log pipe), counts the wait (`stalls`, exported as
/// `reflow_audit_stalls_total`) and logs once per stall. With `failClosed` the sink also reports
/// itself unhealthy while the batch is full, so new requests are refused (503) instead of
/// queueing behind it. Dropping the sink writes what is queued, flushes and waits for the writer.
pub struct JsonLinesSink {
    shared: Arc<Batch>,
    writer: Option<std::thread::JoinHandle<()>>,
}

const TICK: std::time::Duration = std::time::Duration::from_millis(5);

struct Batch {
    events: std::sync::Mutex<Vec<AuditEvent>>,
    /// Signalled by the writer each time it takes the batch: room again for waiting callers.
    room: std::sync::Condvar,
    capacity: usize,
    closed: std::sync::atomic::AtomicBool,
    /// Whether the batch is full right now (`healthy` answers without the lock).
    full: std::sync::atomic::AtomicBool,
    fail_closed: bool,
    dropped: AtomicU64,
    stalls: AtomicU64,
}

impl Batch {
    fn take(&self) -> Vec<AuditEvent> {
        let mut guard = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let taken = std::mem::take(&mut *guard);
        self.full.store(false, Ordering::Release);
        drop(guard);
        self.room.notify_all();
        taken
    }
}

impl JsonLinesSink {
    /// A sink that waits when full (`FailurePolicy::Buffer`'s counterpart for a file: the file
    /// is the only store, so backpressure is the one way not to drop).
    pub fn spawn<W: Write + Send + 'static>(out: W, capacity: usize) -> Self {
        Self::spawn_with(out, capacity, false)
    }

    /// As [`JsonLinesSink::spawn`]; with `fail_closed`, a full batch also makes the sink
    /// unhealthy, so the gateway refuses new requests until the writer catches up.
    pub fn spawn_with<W: Write + Send + 'static>(
        out: W,
        capacity: usize,
        fail_closed: bool,
    ) -> Self {
        let shared = Arc::new(Batch {
            events: std::sync::Mutex::new(Vec::new()),
            room: std::sync::Condvar::new(),
            capacity: capacity.max(1),
            closed: std::sync::atomic::AtomicBool::new(false),
            full: std::sync::atomic::AtomicBool::new(false),
            fail_closed,
            dropped: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
        });
        let batch = shared.clone();
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_lines(&batch, out))
            .expect("spawning the audit writer thread");
        Self {
            shared,
            writer: Some(writer),
        }
    }

    /// Events lost: only ever after the sink was closed (a full queue waits instead).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Events whose caller had to wait for room in a full queue.
    pub fn stalls(&self) -> u64 {
        self.shared.stalls.load(Ordering::Relaxed)
    }
}

/// The writer thread: every tick (or when unparked), takes the batch, writes it, flushes once.
fn write_lines<W: Write>(batch: &Batch, out: W) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(512);
    loop {
        let closed = batch.closed.load(Ordering::Acquire);
        let events = batch.take();
        for ev in &events {
            line.clear();
            if let Err(e) = serde_json::to_writer(&mut line, ev) {
                error!(error = %e, "audit event does not serialize");
                continue;
            }
            line.push(b'\n');
            if let Err(e) = out.write_all(&line) {
                error!(error = %e, "audit write failed");
            }
        }
        if !events.is_empty()
            && let Err(e) = out.flush()
        {
            error!(error = %e, "audit flush failed");
        }
        if closed {
            break;
        }
        std::thread::park_timeout(TICK);
    }
    let _ = out.flush();
}

impl Drop for JsonLinesSink {
    fn drop(&mut self) {
        // The writer takes one more batch after it sees `closed`, so nothing queued is lost.
        self.shared.closed.store(true, Ordering::Release);
        if let Some(w) = self.writer.take() {
            w.thread().unpark();
            let _ = w.join();
        }
    }
}

impl AuditSink for JsonLinesSink {
    fn record(&self, event: AuditEvent) {
        let b = &self.shared;
        if b.closed.load(Ordering::Relaxed) {
            let n = b.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            error!(dropped_total = n, "audit writer is gone; event dropped");
            return;
        }
        let mut events = b
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if events.len() >= b.capacity {
            // Full: wait for the writer rather than drop. The writer is its own thread and
            // needs only this lock (released while waiting), so the wait always ends.
            b.full.store(true, Ordering::Release);
            let n = b.stalls.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                warn!(stalls_total = n, "audit queue full; waiting for the writer");
            }
            if let Some(w) = &self.writer {
                w.thread().unpark();
            }
            while events.len() >= b.capacity && !b.closed.load(Ordering::Relaxed) {
                events = b
                    .room
                    .wait_timeout(events, TICK)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
        }
        events.push(event);
        let len = events.len();
        drop(events);
        // Only a filling batch wakes the writer early.
        if len == b.capacity / 2 + 1
            && let Some(w) = &self.writer
        {
            w.thread().unpark();
        }
    }

    fn dropped(&self) -> u64 {
        JsonLinesSink::dropped(self)
    }

    fn stalls(&self) -> u64 {
        JsonLinesSink::stalls(self)
    }

    /// Unhealthy while the queue is full: with `failClosed`, requests are refused until the
    /// writer catches up, so no caller queues behind a stuck disk.
    fn healthy(&self) -> bool {
        !self.shared.full.load(Ordering::Acquire)
    }

    fn fail_closed(&self) -> bool {
        self.shared.fail_closed
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
            id: new_event_id(),
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
        let id = v["id"].as_str().unwrap_or_default();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "event id {id}");
        assert_eq!(sink.dropped(), 0);
    }

    fn event(n: usize) -> AuditEvent {
        AuditEvent {
            id: new_event_id(),
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

    /// A stuck writer fills the queue: callers wait (counted as stalls, the sink unhealthy so
    /// `failClosed` refuses new requests), and once the writer moves every event is written.
    /// Before backpressure, the queue dropped the overflow ("audit queue full; event dropped").
    #[test]
    fn full_queue_waits_and_loses_nothing() {
        let buf = Buf::default();
        let gate = Arc::new(std::sync::Mutex::new(()));
        let held = gate.lock().unwrap();
        let sink = Arc::new(JsonLinesSink::spawn_with(
            Gate(gate.clone(), buf.clone()),
            2,
            true,
        ));
        assert!(sink.fail_closed());
        let recorder = {
            let sink = sink.clone();
            std::thread::spawn(move || {
                // Tiny lines sit in the BufWriter; big ones force a write that blocks on the gate.
                for n in 0..200 {
                    let mut e = event(n);
                    e.user = "x".repeat(70 * 1024);
                    sink.record(e);
                }
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sink.stalls() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the queue never filled"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!sink.healthy(), "a full queue makes the sink unhealthy");
        assert!(!recorder.is_finished(), "the caller waits for room");
        drop(held);
        recorder.join().unwrap();
        let sink = Arc::into_inner(sink).expect("the only handle");
        assert_eq!(sink.dropped(), 0);
        drop(sink);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 200, "every event is written");
        // In order, each once.
        for (n, line) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["trace_id"], n.to_string());
        }
    }
}
