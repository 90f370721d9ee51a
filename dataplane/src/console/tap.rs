//! The console's view of the audit stream: an `AuditSink` wrapper that passes every event on
//! to the real sink, keeps the most recent ones in a bounded ring (the activity views without
//! Postgres, the health charts) and broadcasts them to live admin streams.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::audit::{AuditEvent, AuditSink};

/// Live subscribers that fall this far behind lose the oldest events (they are told so).
const LIVE_BUFFER: usize = 1024;

pub struct AuditTap {
    inner: Arc<dyn AuditSink>,
    ring: Mutex<VecDeque<Arc<AuditEvent>>>,
    capacity: usize,
    live: broadcast::Sender<Arc<AuditEvent>>,
}

impl AuditTap {
    /// Wraps `inner`, keeping at most `capacity` recent events.
    pub fn new(inner: Arc<dyn AuditSink>, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            inner,
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity: capacity.max(1),
            live: broadcast::channel(LIVE_BUFFER).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<AuditEvent>>> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every event recorded from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AuditEvent>> {
        self.live.subscribe()
    }

    /// The newest `limit` events that pass `keep`, newest first.
    pub fn recent(&self, limit: usize, keep: impl Fn(&AuditEvent) -> bool) -> Vec<Arc<AuditEvent>> {
        self.lock()
            .iter()
            .rev()
            .filter(|e| keep(e))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The event with this id, if it is still in the ring.
    pub fn by_id(&self, id: &uuid::Uuid) -> Option<Arc<AuditEvent>> {
        self.lock().iter().rev().find(|e| e.id == *id).cloned()
    }
}

impl AuditSink for AuditTap {
    fn record(&self, event: AuditEvent) {
        let shared = Arc::new(event.clone());
        {
            let mut ring = self.lock();
            if ring.len() >= self.capacity {
                ring.pop_front();
            }
            ring.push_back(shared.clone());
        }
        // No subscriber is not an error.
        let _ = self.live.send(shared);
        self.inner.record(event);
    }

    fn dropped(&self) -> u64 {
        self.inner.dropped()
    }

    fn stalls(&self) -> u64 {
        self.inner.stalls()
    }

    fn healthy(&self) -> bool {
        self.inner.healthy()
    }

    fn fail_closed(&self) -> bool {
        self.inner.fail_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::MemorySink;

    fn event(user: &str, n: u32) -> AuditEvent {
        AuditEvent {
            id: crate::audit::new_event_id(),
            time_ms: u128::from(n),
            user: user.to_owned(),
            session: None,
            method: "tools/call".to_owned(),
            target: Some("ns/t".to_owned()),
            name: Some(format!("tool{n}")),
            decision: Some("allow"),
            policy: Some("p".to_owned()),
            outcome: "ok".to_owned(),
            duration_ms: 1.0,
            trace_id: String::new(),
        }
    }

    #[test]
    fn passes_on_keeps_a_bounded_ring_and_broadcasts() {
        let inner = MemorySink::default();
        let tap = AuditTap::new(Arc::new(inner.clone()), 3);
        let mut live = tap.subscribe();
        for n in 0..5 {
            tap.record(event(if n % 2 == 0 { "alice" } else { "bob" }, n));
        }
        assert_eq!(inner.events().len(), 5, "every event reaches the real sink");
        let all = tap.recent(10, |_| true);
        let names: Vec<_> = all.iter().filter_map(|e| e.name.clone()).collect();
        assert_eq!(names, ["tool4", "tool3", "tool2"], "newest first, bounded");
        let alice = tap.recent(10, |e| e.user == "alice");
        assert_eq!(alice.len(), 2);
        assert!(tap.by_id(&all[0].id).is_some());
        assert_eq!(live.try_recv().map(|e| e.time_ms).ok(), Some(0));
    }
}
