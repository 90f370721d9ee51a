//! The Postgres audit sink. Requests append to a bounded in-memory batch (never waiting on the
//! database); one task inserts batches with a single `INSERT … SELECT FROM unnest(…)`. While the
//! database is unreachable, batches are appended to a local spill file (JSON lines) and replayed
//! in order when it answers again. Every event carries a uuid v7 and inserts are
//! `ON CONFLICT (id) DO NOTHING`, so a batch retried after an ambiguous failure (written, but the
//! acknowledgement lost) is never stored twice.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use super::{Database, PgError};
use crate::audit::{AuditEvent, AuditSink};

/// What to do with requests while audit events cannot be written to the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailurePolicy {
    /// Keep serving; events go to the spill file and are replayed later.
    #[default]
    Buffer,
    /// Refuse requests (HTTP 503) until events are written again.
    FailClosed,
}

#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Events per INSERT.
    pub batch_size: usize,
    /// Events held in memory; when full, the queue is spilled to disk by the request that found
    /// it full (never dropped), and `failClosed` refuses calls until a write succeeds again.
    pub capacity: usize,
    /// Folder of the spill file; one folder per replica.
    pub spill_dir: PathBuf,
    pub policy: FailurePolicy,
    /// How often the writer retries the database while it is away (and probes it while idle).
    pub retry_interval: Duration,
}

impl AuditSettings {
    pub fn new(spill_dir: PathBuf) -> Self {
        Self {
            batch_size: 500,
            capacity: 65_536,
            spill_dir,
            policy: FailurePolicy::Buffer,
            retry_interval: Duration::from_secs(1),
        }
    }
}

pub const SPILL_FILE: &str = "audit-spill.jsonl";

/// How often the writer collects the batch when nobody wakes it.
const TICK: Duration = Duration::from_millis(10);

struct Shared {
    queue: Mutex<Vec<AuditEvent>>,
    capacity: usize,
    batch_size: usize,
    wake: Notify,
    closed: AtomicBool,
    healthy: AtomicBool,
    /// The queue overflowed since the last successful write: the store is not keeping up.
    overflowed: AtomicBool,
    dropped: AtomicU64,
    policy: FailurePolicy,
    /// Shared by the writer and by `record` (which spills a full queue itself); never held
    /// across an await.
    spill: Mutex<Spill>,
}

impl Shared {
    fn take(&self) -> Vec<AuditEvent> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn spill(&self) -> std::sync::MutexGuard<'_, Spill> {
        self.spill.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `rows` to the spill file; only a failing disk loses them (counted and logged).
    fn spill_or_count(&self, rows: &[Row]) {
        if let Err(e) = self.spill().append(rows) {
            let n = self.dropped.fetch_add(rows.len() as u64, Ordering::Relaxed);
            error!(error = %e, events = rows.len(), dropped_total = n + rows.len() as u64,
                "cannot spill audit events; dropped");
            self.healthy.store(false, Ordering::Release);
        }
    }
}

pub struct PgAuditSink {
    shared: Arc<Shared>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PgAuditSink {
    /// Starts the writer task (on the current runtime). A spill file left by an earlier run is
    /// replayed first.
    pub fn start(db: Database, settings: AuditSettings) -> Result<Arc<Self>, PgError> {
        std::fs::create_dir_all(&settings.spill_dir).map_err(|source| PgError::Spill {
            path: settings.spill_dir.clone(),
            source,
        })?;
        let spill = Spill::open(settings.spill_dir.join(SPILL_FILE))?;
        let healthy = !spill.backlog();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::new()),
            capacity: settings.capacity.max(1),
            batch_size: settings.batch_size.max(1),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            healthy: AtomicBool::new(healthy),
            overflowed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            policy: settings.policy,
            spill: Mutex::new(spill),
        });
        let writer = Writer {
            db,
            shared: shared.clone(),
            retry: settings.retry_interval,
        };
        let task = tokio::spawn(writer.run());
        Ok(Arc::new(Self {
            shared,
            writer: Mutex::new(Some(task)),
        }))
    }

    /// Stops taking events, writes (or spills) what is queued and waits for the writer.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        let task = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for PgAuditSink {
    fn drop(&mut self) {
        // The writer drains (or spills) what is queued once it sees `closed`.
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl AuditSink for PgAuditSink {
    fn record(&self, event: AuditEvent) {
        let s = &self.shared;
        if s.closed.load(Ordering::Relaxed) {
            // Late events (a request finishing during shutdown) go straight to disk.
            s.spill_or_count(&[Row::from(event)]);
            return;
        }
        let overflow = {
            let mut q = s.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= s.capacity {
                let mut full = std::mem::take(&mut *q);
                full.push(event);
                Err(full)
            } else {
                q.push(event);
                Ok(q.len())
            }
        };
        match overflow {
            Err(full) => {
                // The store is not keeping up (or the writer is busy replaying): this request
                // spills the whole queue in one append, so the cost is one sync per `capacity`
                // events and nothing is ever dropped.
                if !s.overflowed.swap(true, Ordering::AcqRel) {
                    warn!(events = full.len(), "audit queue full; spilling it to disk");
                }
                let rows: Vec<Row> = full.into_iter().map(Row::from).collect();
                s.spill_or_count(&rows);
                s.wake.notify_one();
            }
            // A full INSERT's worth wakes the writer early; otherwise it collects on its tick.
            Ok(len) if len == s.batch_size => s.wake.notify_one(),
            Ok(_) => {}
        }
    }

    fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
            && !self.shared.overflowed.load(Ordering::Acquire)
    }

    fn fail_closed(&self) -> bool {
        self.shared.policy == FailurePolicy::FailClosed
    }
}

/// One audit event as stored in the spill file (owned fields, so it reads back).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    #[serde(with = "uuid_text")]
    id: uuid::Uuid,
    time_ms: i64,
    user: String,
    session: Option<String>,
    method: String,
    target: Option<String>,
    name: Option<String>,
    decision: Option<String>,
    policy: Option<String>,
    outcome: String,
    duration_ms: f64,
    trace_id: String,
}

impl From<AuditEvent> for Row {
    fn from(e: AuditEvent) -> Self {
        Self {
            id: e.id,
            time_ms: i64::try_from(e.time_ms).unwrap_or(i64::MAX),
            user: e.user,
            session: e.session,
            method: e.method,
            target: e.target,
            name: e.name,
            decision: e.decision.map(str::to_owned),
            policy: e.policy,
            outcome: e.outcome,
            duration_ms: e.duration_ms,
            trace_id: e.trace_id,
        }
    }
}

mod uuid_text {
    pub fn serialize<S: serde::Serializer>(id: &uuid::Uuid, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&id.hyphenated())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<uuid::Uuid, D::Error> {
        let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        uuid::Uuid::parse_str(&text).map_err(serde::de::Error::custom)
    }
}

/// The spill file: events not yet in the database, oldest first. A replay remembers how many
/// bytes it read; afterwards only those are removed, so events spilled while it ran stay.
struct Spill {
    path: PathBuf,
    /// The file holds events (from this run or an earlier one).
    pending: bool,
}

impl Spill {
    fn open(path: PathBuf) -> Result<Self, PgError> {
        let pending = match std::fs::metadata(&path) {
            Ok(m) => m.len() > 0,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(source) => return Err(PgError::Spill { path, source }),
        };
        let spill = Self { path, pending };
        if pending {
            info!(path = %spill.path.display(), "audit spill file from an earlier run; replaying it");
            // A crash mid-append leaves a torn last line: end it, so the next append starts a
            // line of its own instead of corrupting its first event.
            let bytes = spill.snapshot().map_err(|e| spill.err(e))?;
            if bytes.last() != Some(&b'\n') {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&spill.path)
                    .map_err(|e| spill.err(e))?;
                f.write_all(b"\n").map_err(|e| spill.err(e))?;
            }
        }
        Ok(spill)
    }

    /// Anything spilled and not yet in the database.
    fn backlog(&self) -> bool {
        self.pending
    }

    /// The whole file as it is now, to replay.
    fn snapshot(&self) -> std::io::Result<Vec<u8>> {
        match std::fs::read(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            other => other,
        }
    }

    /// The first `len` bytes are in the database: removes them, keeping whatever was appended
    /// since (rewritten aside and renamed over, so a crash leaves the old or the new file).
    fn replayed(&mut self, len: usize) -> Result<(), PgError> {
        let now = self.snapshot().map_err(|e| self.err(e))?;
        let tail = now.get(len..).unwrap_or_default();
        if tail.is_empty() {
            match std::fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.err(e)),
            }
            self.pending = false;
            return Ok(());
        }
        let aside = self.path.with_extension("rewrite");
        let mut f = std::fs::File::create(&aside).map_err(|e| self.err(e))?;
        f.write_all(tail).map_err(|e| self.err(e))?;
        f.sync_data().map_err(|e| self.err(e))?;
        std::fs::rename(&aside, &self.path).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn err(&self, source: std::io::Error) -> PgError {
        PgError::Spill {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends and syncs: once here, an event survives a crash of this process.
    fn append(&mut self, rows: &[Row]) -> Result<(), PgError> {
        let mut buf = Vec::with_capacity(rows.len() * 256);
        for r in rows {
            serde_json::to_writer(&mut buf, r).map_err(|e| self.err(e.into()))?;
            buf.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        f.write_all(&buf).map_err(|e| self.err(e))?;
        f.sync_data().map_err(|e| self.err(e))?;
        self.pending = true;
        Ok(())
    }

    fn parse(bytes: &[u8]) -> Vec<Row> {
        let mut rows = Vec::new();
        for line in bytes.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Row>(line) {
                Ok(r) => rows.push(r),
                // A torn last line (crash mid-write) cannot be recovered; say so loudly.
                Err(e) => error!(error = %e, "unreadable line in the audit spill file; skipped"),
            }
        }
        rows
    }
}

struct Writer {
    db: Database,
    shared: Arc<Shared>,
    retry: Duration,
}

impl Writer {
    async fn run(mut self) {
        let mut last_try = tokio::time::Instant::now() - self.retry;
        loop {
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            let closed = self.shared.closed.load(Ordering::Acquire);
            let batch: Vec<Row> = self.shared.take().into_iter().map(Row::from).collect();
            let due = last_try.elapsed() >= self.retry;
            if self.shared.spill().backlog() {
                // Order: while anything is spilled, new events queue behind it in the file.
                if !batch.is_empty() {
                    self.shared.spill_or_count(&batch);
                }
                if due || closed {
                    last_try = tokio::time::Instant::now();
                    if self.replay().await {
                        // Events spilled during the replay go next, without waiting a retry.
                        last_try -= self.retry;
                    }
                }
            } else if !batch.is_empty() {
                last_try = tokio::time::Instant::now();
                self.deliver(batch).await;
            } else if due {
                // Idle: probe, so `failClosed` notices a dead database before a write fails.
                last_try = tokio::time::Instant::now();
                let ok = self.probe().await;
                self.set_healthy(ok);
            }
            if closed {
                let rest: Vec<Row> = self.shared.take().into_iter().map(Row::from).collect();
                if !rest.is_empty() {
                    if self.shared.spill().backlog() {
                        self.shared.spill_or_count(&rest);
                    } else {
                        self.deliver(rest).await;
                    }
                }
                return;
            }
        }
    }

    fn set_healthy(&self, ok: bool) {
        let was = self.shared.healthy.swap(ok, Ordering::AcqRel);
        if was && !ok {
            warn!("audit database unreachable; spilling events to disk");
        } else if !was && ok {
            info!("audit database reachable again");
        }
    }

    async fn probe(&self) -> bool {
        match self.db.client().await {
            Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    /// Inserts `rows` batch by batch; whatever could not be written goes to the spill file.
    async fn deliver(&mut self, rows: Vec<Row>) {
        let size = self.shared.batch_size;
        let mut done = 0;
        while done < rows.len() {
            let end = (done + size).min(rows.len());
            match insert(&self.db, &rows[done..end]).await {
                Ok(()) => done = end,
                Err(e) => {
                    warn!(error = %e, events = rows.len() - done, "audit insert failed; spilling");
                    self.set_healthy(false);
                    self.shared.spill_or_count(&rows[done..]);
                    return;
                }
            }
        }
        self.wrote();
    }

    /// Writes the spill file to the database, oldest first; removes what was written once all
    /// of it is in. Events spilled meanwhile stay in the file, replayed next.
    async fn replay(&mut self) -> bool {
        let snapshot = self.shared.spill().snapshot();
        let bytes = match snapshot {
            Ok(bytes) => bytes,
            Err(e) => {
                error!(error = %e, "cannot read the audit spill file");
                return false;
            }
        };
        let rows = Spill::parse(&bytes);
        for chunk in rows.chunks(self.shared.batch_size) {
            if let Err(e) = insert(&self.db, chunk).await {
                // Rows already inserted are skipped on the next attempt (ON CONFLICT).
                tracing::debug!(error = %e, "audit replay failed; will retry");
                self.set_healthy(false);
                return false;
            }
        }
        let replayed = self.shared.spill().replayed(bytes.len());
        match replayed {
            Ok(()) => {
                info!(events = rows.len(), "audit spill file replayed");
                if !self.shared.spill().backlog() {
                    self.wrote();
                }
                true
            }
            Err(e) => {
                error!(error = %e, "cannot remove the replayed audit spill file");
                false
            }
        }
    }

    /// A write succeeded: healthy again, and the overflow (if any) is behind us.
    fn wrote(&self) {
        self.shared.overflowed.store(false, Ordering::Release);
        self.set_healthy(true);
    }
}

const INSERT: &str = "INSERT INTO reflow_audit_events
    (id, time, user_name, session_id, method, target, name, decision, policy, outcome, duration_ms, trace_id)
  SELECT id, to_timestamp(ms / 1000.0), u, s, m, t, n, d, p, o, dur, tr
  FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
              $8::text[], $9::text[], $10::text[], $11::float8[], $12::text[])
    AS x(id, ms, u, s, m, t, n, d, p, o, dur, tr)
  ON CONFLICT (id) DO NOTHING";

async fn insert(db: &Database, rows: &[Row]) -> Result<(), PgError> {
    let client = db.client().await?;
    let stmt = client.prepare_cached(INSERT).await?;
    let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.id).collect();
    let ms: Vec<i64> = rows.iter().map(|r| r.time_ms).collect();
    let user: Vec<&str> = rows.iter().map(|r| r.user.as_str()).collect();
    let session: Vec<Option<&str>> = rows.iter().map(|r| r.session.as_deref()).collect();
    let method: Vec<&str> = rows.iter().map(|r| r.method.as_str()).collect();
    let target: Vec<Option<&str>> = rows.iter().map(|r| r.target.as_deref()).collect();
    let name: Vec<Option<&str>> = rows.iter().map(|r| r.name.as_deref()).collect();
    let decision: Vec<Option<&str>> = rows.iter().map(|r| r.decision.as_deref()).collect();
    let policy: Vec<Option<&str>> = rows.iter().map(|r| r.policy.as_deref()).collect();
    let outcome: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
    let dur: Vec<f64> = rows.iter().map(|r| r.duration_ms).collect();
    let trace: Vec<&str> = rows.iter().map(|r| r.trace_id.as_str()).collect();
    client
        .execute(
            &stmt,
            &[
                &ids, &ms, &user, &session, &method, &target, &name, &decision, &policy, &outcome,
                &dur, &trace,
            ],
        )
        .await?;
    Ok(())
}
