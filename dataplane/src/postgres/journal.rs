//! The replay buffer of a session's streams, kept in Postgres as well as in its owner's memory,
//! so the replica that takes a session over from a dead owner can serve `Last-Event-ID`
//! resumption from it.
//!
//! Appending never waits for the database: events go to one writer task that commits them in
//! batches, in the order they were appended, and trims each session to the same bounds as the
//! in-memory buffer (its newest [`REPLAY_EVENTS`] events and [`REPLAY_BYTES`] bytes). Every
//! append gets a ticket; [`StreamJournal::settled`] waits (bounded) until a ticket's event is
//! committed, which is how a reply is held back until the events published before it are
//! durable. Events older than the settings' maximum age, or of sessions that no longer exist,
//! are swept.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::{Database, PgError};

/// Events kept per session (the in-memory replay buffer keeps the same).
pub const REPLAY_EVENTS: usize = 256;
/// Bytes of event data kept per session (the in-memory replay buffer keeps the same).
pub const REPLAY_BYTES: usize = 4 * 1024 * 1024;
/// Events waiting for the writer; beyond it, new events are not journaled (counted).
const QUEUE: usize = 4096;
/// Events committed in one statement at most.
const BATCH: usize = 256;

/// How long journaled events are kept and how often old ones are swept.
#[derive(Debug, Clone)]
pub struct JournalSettings {
    /// An event older than this is removed, whatever its session.
    pub max_age: Duration,
    /// How often the sweep runs.
    pub sweep_every: Duration,
}

impl Default for JournalSettings {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(3600),
            sweep_every: Duration::from_secs(60),
        }
    }
}

/// One journaled event of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEvent {
    pub stream: u64,
    pub seq: u64,
    pub data: Arc<str>,
}

struct Pending {
    session: String,
    stream: i64,
    seq: i64,
    data: Arc<str>,
    ticket: u64,
}

/// The persisted replay buffers of every session this replica owns.
pub struct StreamJournal {
    db: Database,
    /// Assigns tickets in queue order (held while an event is queued).
    queue: Mutex<(u64, mpsc::Sender<Pending>)>,
    /// The highest ticket committed (every lower one is committed too).
    committed: watch::Receiver<u64>,
    /// Events not journaled because the queue was full or too large for the bounds.
    skipped: AtomicU64,
    /// Cleared while the writer's commits fail: nobody waits for a database that is away.
    healthy: Arc<AtomicBool>,
}

impl std::fmt::Debug for StreamJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamJournal")
            .field("committed", &*self.committed.borrow())
            .finish_non_exhaustive()
    }
}

impl StreamJournal {
    /// Starts the writer (and sweeper) on the current runtime.
    pub fn start(db: Database, settings: JournalSettings) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (done, committed) = watch::channel(0);
        let healthy = Arc::new(AtomicBool::new(true));
        let journal = Arc::new(Self {
            db,
            queue: Mutex::new((0, tx)),
            committed,
            skipped: AtomicU64::new(0),
            healthy: healthy.clone(),
        });
        tokio::spawn(writer(journal.db.clone(), rx, done, healthy));
        tokio::spawn(sweeper(Arc::downgrade(&journal), settings));
        journal
    }

    /// Queues one event of `session` for the writer; its ticket, or `None` when it is not
    /// journaled (larger than the byte bound, ids out of range, or the writer is too far
    /// behind: the event then lives only in the owner's memory).
    pub fn append(&self, session: &str, stream: u64, seq: u64, data: Arc<str>) -> Option<u64> {
        let (Ok(stream), Ok(seq)) = (i64::try_from(stream), i64::try_from(seq)) else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if data.len() > REPLAY_BYTES {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = q.0 + 1;
        let event = Pending {
            session: session.to_owned(),
            stream,
            seq,
            data,
            ticket,
        };
        match q.1.try_send(event) {
            Ok(()) => {
                q.0 = ticket;
                Some(ticket)
            }
            Err(_) => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Waits until the event with `ticket` (and every one before it) is committed, at most
    /// `within`; whether it is. While the writer's commits fail it does not wait at all.
    pub async fn settled(&self, ticket: u64, within: Duration) -> bool {
        let mut rx = self.committed.clone();
        if *rx.borrow() >= ticket {
            return true;
        }
        if !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        tokio::time::timeout(within, rx.wait_for(|c| *c >= ticket))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Events not journaled so far (queue full, oversized, out of range).
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// What the database keeps of `session`, oldest first.
    pub async fn load(&self, session: &str) -> Result<Vec<JournalEvent>, PgError> {
        let rows = self
            .db
            .client()
            .await?
            .query(
                "SELECT stream, seq, data FROM reflow_stream_events
                 WHERE session_id = $1 ORDER BY seq",
                &[&session],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(JournalEvent {
                    stream: u64::try_from(r.get::<_, i64>(0)).ok()?,
                    seq: u64::try_from(r.get::<_, i64>(1)).ok()?,
                    data: Arc::from(r.get::<_, String>(2)),
                })
            })
            .collect())
    }
}

/// Commits queued events in batches, in order; a failed batch is retried (with a growing
/// pause) until it commits, so the committed ticket never passes an event that is not stored.
async fn writer(
    db: Database,
    mut rx: mpsc::Receiver<Pending>,
    done: watch::Sender<u64>,
    healthy: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut pause = Duration::from_millis(50);
        loop {
            match commit(&db, &batch).await {
                Ok(()) => {
                    healthy.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    healthy.store(false, Ordering::Relaxed);
                    warn!(error = %e, label = e.label(), events = batch.len(),
                          "stream events not journaled yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
        if let Some(last) = batch.last() {
            done.send_replace(last.ticket);
        }
        batch.clear();
    }
}

async fn commit(db: &Database, batch: &[Pending]) -> Result<(), PgError> {
    let sessions: Vec<&str> = batch.iter().map(|e| e.session.as_str()).collect();
    let streams: Vec<i64> = batch.iter().map(|e| e.stream).collect();
    let seqs: Vec<i64> = batch.iter().map(|e| e.seq).collect();
    let data: Vec<&str> = batch.iter().map(|e| &*e.data).collect();
    let mut touched = sessions.clone();
    touched.sort_unstable();
    touched.dedup();
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO reflow_stream_events (session_id, stream, seq, data, bytes)
         SELECT s, st, q, d, octet_length(d)
         FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[]) AS e(s, st, q, d)
         ON CONFLICT (session_id, seq) DO NOTHING",
        &[&sessions, &streams, &seqs, &data],
    )
    .await?;
    let events = i64::try_from(REPLAY_EVENTS).unwrap_or(i64::MAX);
    let bytes = i64::try_from(REPLAY_BYTES).unwrap_or(i64::MAX);
    tx.execute(
        "DELETE FROM reflow_stream_events e USING (
             SELECT session_id, seq,
                    row_number() OVER w AS n, sum(bytes) OVER w AS total
             FROM reflow_stream_events WHERE session_id = ANY($1)
             WINDOW w AS (PARTITION BY session_id ORDER BY seq DESC)
         ) old
         WHERE e.session_id = old.session_id AND e.seq = old.seq
           AND (old.n > $2 OR old.total > $3)",
        &[&touched, &events, &bytes],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Removes events past the maximum age and those of sessions that no longer exist.
async fn sweeper(journal: Weak<StreamJournal>, settings: JournalSettings) {
    let mut tick = tokio::time::interval(settings.sweep_every.max(Duration::from_secs(1)));
    loop {
        tick.tick().await;
        let Some(j) = journal.upgrade() else { return };
        if let Err(e) = sweep(&j.db, settings.max_age).await {
            debug!(error = %e, "stream event sweep failed");
        }
    }
}

async fn sweep(db: &Database, max_age: Duration) -> Result<u64, PgError> {
    Ok(db
        .client()
        .await?
        .execute(
            "DELETE FROM reflow_stream_events e
             WHERE e.created_at < now() - make_interval(secs => $1)
                OR (e.created_at < now() - interval '1 minute'
                    AND NOT EXISTS (SELECT 1 FROM reflow_sessions s WHERE s.id = e.session_id))",
            &[&max_age.as_secs_f64()],
        )
        .await?)
}
