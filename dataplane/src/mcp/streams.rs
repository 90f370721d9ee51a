//! Per-session SSE streams: event ids, a bounded replay buffer, `Last-Event-ID` resumption, and
//! which connection (a POST reply or the GET stream) carries each stream, so a message goes out once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::list_changed::Viewer;
use crate::postgres::{JournalEvent, REPLAY_BYTES, REPLAY_EVENTS, StreamJournal};
use crate::upstream::Cancel;

/// The session's GET stream; POST reply streams are numbered from 1.
pub(crate) const GET_STREAM: u64 = 0;
/// Events kept for replay per session (and their total size) are `REPLAY_EVENTS` and
/// `REPLAY_BYTES`, the same bounds the journal keeps in Postgres: older ones cannot be resumed.
/// Frames queued for one connection; a client that falls further behind is detached and
/// resumes from the replay buffer with `Last-Event-ID`.
const CONNECTION_QUEUE: usize = 256;
/// What priming events ask clients to wait before reconnecting.
pub(crate) const RETRY_MS: u64 = 1000;
/// Requests a session may have in flight for cancellation tracking; beyond it, calls still run
/// but cannot be cancelled.
const MAX_TRACKED: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("malformed Last-Event-ID")]
    Malformed,
    #[error("Last-Event-ID names no stream of this session")]
    UnknownStream,
}

impl StreamError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed_event_id",
            Self::UnknownStream => "unknown_stream",
        }
    }
}

/// What one connection writes.
#[derive(Debug)]
pub(crate) enum Frame {
    Event { id: String, data: Arc<str> },
    End,
}

struct Stored {
    stream: u64,
    seq: u64,
    data: Arc<str>,
}

struct State {
    next_seq: u64,
    next_stream: u64,
    replay: VecDeque<Stored>,
    bytes: usize,
    live: HashMap<u64, mpsc::Sender<Frame>>,
    /// POST streams whose response is not out yet (bounded by the requests in flight).
    open: HashSet<u64>,
    inflight: HashMap<String, Cancel>,
    last_used: Instant,
    /// Who opened the GET stream, for list_changed after a snapshot change.
    viewer: Option<Arc<Viewer>>,
    /// Where every event is also kept (several replicas), with the session's id.
    journal: Option<(Arc<StreamJournal>, String)>,
    /// The journal's ticket of the session's newest journaled event.
    last_ticket: Option<u64>,
}

/// One session's streams.
pub(crate) struct Hub(Mutex<State>);

fn event_id(stream: u64, seq: u64) -> String {
    format!("{stream}:{seq}")
}

impl Hub {
    #[cfg(test)]
    fn new() -> Self {
        Self::journaled(None)
    }

    fn journaled(journal: Option<(Arc<StreamJournal>, String)>) -> Self {
        Self(Mutex::new(State {
            next_seq: 1,
            next_stream: 1,
            replay: VecDeque::new(),
            bytes: 0,
            live: HashMap::new(),
            open: HashSet::new(),
            inflight: HashMap::new(),
            last_used: Instant::now(),
            viewer: None,
            journal,
            last_ticket: None,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        st.last_used = Instant::now();
        st
    }

    /// Unused for `idle`, with no connection and no request in flight: safe to forget.
    fn is_idle(&self, idle: Duration) -> bool {
        let st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        st.last_used.elapsed() >= idle
            && st.inflight.is_empty()
            && st.live.values().all(mpsc::Sender::is_closed)
    }

    /// A new POST reply stream with this connection attached; its priming event id.
    pub(crate) fn open_stream(&self) -> (u64, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
        let mut st = self.lock();
        let stream = st.next_stream;
        st.next_stream += 1;
        st.live.insert(stream, tx);
        st.open.insert(stream);
        (stream, rx)
    }

    /// Attaches a new GET connection (a previous one ends: one message, one stream).
    pub(crate) fn attach_get(&self) -> (String, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
        let mut st = self.lock();
        if let Some(old) = st.live.insert(GET_STREAM, tx) {
            let _ = old.try_send(Frame::End);
        }
        // Resuming from the priming id replays only what comes after it.
        (event_id(GET_STREAM, st.next_seq - 1), rx)
    }

    /// Numbers the next events from `floor` on (if higher): a replica that took a session over
    /// continues above every id the previous owner gave out, so a client's `Last-Event-ID` from
    /// there replays all that this replica has kept since.
    pub(crate) fn number_from(&self, floor: u64) {
        let mut st = self.lock();
        st.next_seq = st.next_seq.max(floor);
        // Stream numbers too: the previous owner's POST streams are known here (their events
        // replay, then they end) and a new one never reuses their numbers.
        st.next_stream = st.next_stream.max(floor);
    }

    /// Adds the events a previous owner journaled (those not held already) to the replay
    /// buffer, within its bounds; they are not journaled again.
    pub(crate) fn restore(&self, events: Vec<JournalEvent>) {
        let mut st = self.lock();
        let held: HashSet<u64> = st.replay.iter().map(|e| e.seq).collect();
        let mut all: Vec<Stored> = st.replay.drain(..).collect();
        all.extend(
            events
                .into_iter()
                .filter(|e| !held.contains(&e.seq))
                .map(|e| Stored {
                    stream: e.stream,
                    seq: e.seq,
                    data: e.data,
                }),
        );
        all.sort_by_key(|e| e.seq);
        st.bytes = all.iter().map(|e| e.data.len()).sum();
        st.replay = all.into();
        trim(&mut st);
    }

    /// The journal's ticket of this session's newest journaled event (none: nothing to wait for).
    pub(crate) fn last_ticket(&self) -> Option<u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).last_ticket
    }

    /// Records who watches the GET stream (the session's identity and endpoint).
    pub(crate) fn set_viewer(&self, viewer: Viewer) {
        self.lock().viewer = Some(Arc::new(viewer));
    }

    pub(crate) fn has_live(&self, stream: u64) -> bool {
        self.lock()
            .live
            .get(&stream)
            .is_some_and(|tx| !tx.is_closed())
    }

    /// Records one message on `stream` and sends it to the connection carrying it, if any.
    pub(crate) fn publish(&self, stream: u64, data: String) {
        let data: Arc<str> = Arc::from(data);
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.bytes += data.len();
        st.replay.push_back(Stored {
            stream,
            seq,
            data: data.clone(),
        });
        trim(&mut st);
        let ticket = st
            .journal
            .as_ref()
            .and_then(|(journal, session)| journal.append(session, stream, seq, data.clone()));
        if ticket.is_some() {
            st.last_ticket = ticket;
        }
        if let Some(tx) = st.live.get(&stream) {
            let frame = Frame::Event {
                id: event_id(stream, seq),
                data,
            };
            if tx.try_send(frame).is_err() {
                // Gone or too slow: the client resumes from the replay buffer.
                st.live.remove(&stream);
            }
        }
    }

    /// Ends a POST reply stream (its final response was published).
    pub(crate) fn finish(&self, stream: u64) {
        let mut st = self.lock();
        st.open.remove(&stream);
        if let Some(tx) = st.live.remove(&stream) {
            let _ = tx.try_send(Frame::End);
        }
    }

    /// `Last-Event-ID` (`stream:seq`): the events of that stream after it, then the stream
    /// goes on live on this connection (or ends, if its response was already sent).
    pub(crate) fn resume(&self, last: &str) -> Result<mpsc::Receiver<Frame>, StreamError> {
        let (stream, seq) = last
            .trim()
            .split_once(':')
            .and_then(|(s, n)| Some((s.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
            .ok_or(StreamError::Malformed)?;
        let mut st = self.lock();
        if stream != GET_STREAM && stream >= st.next_stream {
            return Err(StreamError::UnknownStream);
        }
        let missed: Vec<Frame> = st
            .replay
            .iter()
            .filter(|e| e.stream == stream && e.seq > seq)
            .map(|e| Frame::Event {
                id: event_id(e.stream, e.seq),
                data: e.data.clone(),
            })
            .collect();
        let (tx, rx) = mpsc::channel(CONNECTION_QUEUE.max(missed.len() + 1));
        for frame in missed {
            let _ = tx.try_send(frame);
        }
        if stream != GET_STREAM && !st.open.contains(&stream) {
            // Its response is out (or long gone from the buffer): nothing more will come.
            let _ = tx.try_send(Frame::End);
        } else if let Some(old) = st.live.insert(stream, tx) {
            let _ = old.try_send(Frame::End);
        }
        Ok(rx)
    }

    /// Registers a request the client may cancel, by its JSON-RPC id (as JSON text).
    pub(crate) fn track(&self, id: String, cancel: Cancel) {
        let mut st = self.lock();
        if st.inflight.len() < MAX_TRACKED {
            st.inflight.insert(id, cancel);
        }
    }

    pub(crate) fn untrack(&self, id: &str) {
        self.lock().inflight.remove(id);
    }

    /// `notifications/cancelled`: true when a request with that id was in flight.
    pub(crate) fn cancel(&self, id: &str) -> bool {
        match self.lock().inflight.remove(id) {
            Some(c) => {
                c.cancel();
                true
            }
            None => false,
        }
    }

    /// Ends every connection (the session is gone).
    fn close(&self) {
        let mut st = self.lock();
        for (_, tx) in st.live.drain() {
            let _ = tx.try_send(Frame::End);
        }
        for (_, c) in st.inflight.drain() {
            c.cancel();
        }
    }
}

/// Drops the oldest events beyond the replay bounds.
fn trim(st: &mut State) {
    while st.replay.len() > REPLAY_EVENTS || st.bytes > REPLAY_BYTES {
        match st.replay.pop_front() {
            Some(old) => st.bytes -= old.data.len(),
            None => break,
        }
    }
}

/// Every session's hub, created on first use.
#[derive(Default)]
pub(crate) struct Hubs(
    Mutex<HashMap<String, Arc<Hub>>>,
    /// Where each hub's events are also kept, when replicas share sessions.
    Option<Arc<StreamJournal>>,
);

impl Hubs {
    /// Hubs whose events are also journaled (for a replica taking a session over).
    pub(crate) fn new(journal: Option<Arc<StreamJournal>>) -> Self {
        Self(Mutex::default(), journal)
    }

    pub(crate) fn get(&self, session: &str) -> Arc<Hub> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = map.get(session) {
            return h.clone();
        }
        let journal = self.1.clone().map(|j| (j, session.to_owned()));
        map.entry(session.to_owned())
            .or_insert_with(|| Arc::new(Hub::journaled(journal)))
            .clone()
    }

    /// The hub of a session whose events are never resumed elsewhere (a legacy `/sse` stream
    /// has no event ids): not journaled.
    pub(crate) fn get_unjournaled(&self, session: &str) -> Arc<Hub> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(session.to_owned())
            .or_insert_with(|| Arc::new(Hub::journaled(None)))
            .clone()
    }

    /// The session's hub if this replica has one (never creates it).
    pub(crate) fn find(&self, session: &str) -> Option<Arc<Hub>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
            .cloned()
    }

    /// Forgets idle hubs: a session that ended where this replica did not see it (another
    /// replica's expiry, a request racing its DELETE) must not keep its buffer forever.
    pub(crate) fn sweep(&self, idle: Duration) -> usize {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|_, hub| !hub.is_idle(idle));
        before - map.len()
    }

    /// Sessions whose GET stream is live here, with who watches it. Does not count as use, so
    /// idle sweeping is unaffected.
    pub(crate) fn watched(&self) -> Vec<(String, Arc<Hub>, Arc<Viewer>)> {
        let hubs: Vec<(String, Arc<Hub>)> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, hub)| (id.clone(), hub.clone()))
            .collect();
        hubs.into_iter()
            .filter_map(|(id, hub)| {
                let viewer = {
                    let st = hub.0.lock().unwrap_or_else(|p| p.into_inner());
                    let live = st.live.get(&GET_STREAM).is_some_and(|tx| !tx.is_closed());
                    st.viewer.clone().filter(|_| live)
                }?;
                Some((id, hub, viewer))
            })
            .collect()
    }

    pub(crate) fn remove(&self, session: &str) {
        let hub = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(session);
        if let Some(h) = hub {
            h.close();
        }
    }
}

/// Priming events (empty data) are for clients of 2025-11-25 and later; older ones may take an
/// empty `data` for a malformed message.
pub(crate) fn primes(protocol_version: &str) -> bool {
    protocol_version >= "2025-11-25"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(rx: &mut mpsc::Receiver<Frame>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(f) = rx.try_recv() {
            match f {
                Frame::Event { id, .. } => out.push(id),
                Frame::End => out.push("end".into()),
            }
        }
        out
    }

    #[test]
    fn a_message_goes_to_its_own_stream_only_and_resumes_after_the_last_id() {
        let hub = Hub::new();
        let (_, mut get) = hub.attach_get();
        let (s, post) = hub.open_stream();
        hub.publish(s, "a".into());
        hub.publish(GET_STREAM, "b".into());
        // The POST connection drops; later events wait in the replay buffer.
        drop(post);
        hub.publish(s, "c".into());
        hub.publish(s, "d".into());
        assert_eq!(ids(&mut get), ["0:2"]);
        let mut resumed = hub.resume(&format!("{s}:1")).unwrap();
        assert_eq!(ids(&mut resumed), ["1:3", "1:4"]);
        hub.finish(s);
        assert_eq!(ids(&mut resumed), ["end"]);
        // A finished stream replays and ends at once.
        let mut again = hub.resume(&format!("{s}:3")).unwrap();
        assert_eq!(ids(&mut again), ["1:4", "end"]);
        assert_eq!(hub.resume("9:0").unwrap_err(), StreamError::UnknownStream);
        assert_eq!(hub.resume("x").unwrap_err(), StreamError::Malformed);
    }

    #[test]
    fn a_taken_over_hub_replays_the_journaled_events_once_and_numbers_above_them() {
        let hub = Hub::new();
        hub.number_from(1000);
        let journaled = |stream, seq, data: &str| JournalEvent {
            stream,
            seq,
            data: Arc::from(data),
        };
        let events = vec![
            journaled(0, 5, "a"),
            journaled(3, 6, "b"),
            journaled(0, 7, "c"),
        ];
        hub.restore(events.clone());
        hub.restore(events);
        hub.publish(GET_STREAM, "d".into());
        // After the dead owner's last delivered id: its undelivered event, then the new one.
        let mut get = hub.resume("0:5").unwrap();
        assert_eq!(ids(&mut get), ["0:7", "0:1000"]);
        // The dead owner's POST stream replays what was kept and ends.
        let mut post = hub.resume("3:0").unwrap();
        assert_eq!(ids(&mut post), ["3:6", "end"]);
        // New streams never reuse the dead owner's numbers; unknown ones are refused.
        let (s, _rx) = hub.open_stream();
        assert!(s >= 1000, "{s}");
        let unknown = hub.resume(&format!("{}:0", u64::MAX));
        assert_eq!(unknown.unwrap_err(), StreamError::UnknownStream);
    }

    #[test]
    fn only_idle_hubs_without_connections_are_swept() {
        let hubs = Hubs::default();
        let quiet = hubs.get("quiet");
        quiet.publish(GET_STREAM, "x".into());
        drop(quiet);
        let watched = hubs.get("watched");
        let (_, _conn) = watched.attach_get();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(hubs.sweep(Duration::from_millis(20)), 1);
        assert!(Arc::ptr_eq(&hubs.get("watched"), &watched));
        assert_eq!(hubs.sweep(Duration::from_secs(60)), 0);
    }

    #[test]
    fn watched_lists_live_get_streams_with_their_viewer_without_counting_as_use() {
        let hubs = Hubs::default();
        let viewer = Viewer {
            identity: reflow_crds::Identity::new("alice", ["dev"], Vec::<String>::new()),
            scope: crate::session::Scope::Aggregated,
        };
        // A GET stream with its viewer; one whose connection dropped; a hub with no GET at all.
        let live = hubs.get("live");
        live.set_viewer(viewer.clone());
        let (_, _conn) = live.attach_get();
        let dropped = hubs.get("dropped");
        dropped.set_viewer(viewer.clone());
        drop(dropped.attach_get());
        hubs.get("post-only").open_stream();
        let watched = hubs.watched();
        assert_eq!(watched.len(), 1);
        assert_eq!(watched[0].0, "live");
        assert_eq!(*watched[0].2, viewer);
        // Looking does not refresh: the dropped and post-only hubs still go idle.
        std::thread::sleep(Duration::from_millis(30));
        hubs.watched();
        assert_eq!(hubs.sweep(Duration::from_millis(20)), 2);
    }

    #[test]
    fn cancel_reaches_a_tracked_request_once() {
        let hub = Hub::new();
        let c = Cancel::default();
        hub.track("7".into(), c.clone());
        assert!(hub.cancel("7"));
        assert!(c.is_cancelled());
        assert!(!hub.cancel("7"));
    }
}
