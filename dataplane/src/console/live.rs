//! The admin's live activity stream: this replica's events as they are recorded (the tap) and,
//! with Postgres, every other replica's too (polled), each event sent once.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::Event;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::Console;
use crate::postgres::{self, AuditRow};

/// How often the database is asked for other replicas' events.
const POLL: Duration = Duration::from_millis(500);
/// How far back each poll looks (covers batching and clock skew between replicas).
const LOOKBACK_SECONDS: f64 = 15.0;
/// Ids remembered to send each event once.
const SEEN: usize = 20_000;

#[derive(Default)]
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// True the first time `id` is offered.
    fn first(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= SEEN
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

fn audit_event(data: String) -> Result<Event, Infallible> {
    Ok(Event::default().event("audit").data(data))
}

/// The stream of SSE events for one admin; ends when the client goes away.
pub fn stream(console: Arc<Console>) -> ReceiverStream<Result<Event, Infallible>> {
    let (tx, rx) = mpsc::channel(256);
    let mut local = console.parts.tap.subscribe();
    tokio::spawn(async move {
        let mut seen = Seen::default();
        let db = console.parts.database.clone();
        if let Some(db) = &db {
            // What is already there is on the page; only newer events are live.
            for r in postgres::audit_events_since(db, LOOKBACK_SECONDS)
                .await
                .unwrap_or_default()
            {
                seen.first(&r.id);
            }
        }
        let mut tick = tokio::time::interval(POLL);
        loop {
            let sent = tokio::select! {
                got = local.recv() => match got {
                    Ok(e) => {
                        let id = e.id.hyphenated().to_string();
                        if !seen.first(&id) {
                            continue;
                        }
                        tx.send(audit_event(serde_json::to_string(&*e).unwrap_or_default())).await
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tx.send(Ok(Event::default().event("lagged").data(n.to_string()))).await
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if db.is_some() => {
                    let Some(db) = &db else { continue };
                    let rows = postgres::audit_events_since(db, LOOKBACK_SECONDS).await.unwrap_or_default();
                    let fresh: Vec<AuditRow> = rows.into_iter().filter(|r| seen.first(&r.id)).collect();
                    let mut result = Ok(());
                    for r in fresh {
                        result = tx.send(audit_event(serde_json::to_string(&r).unwrap_or_default())).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    result
                }
            };
            if sent.is_err() {
                return; // the admin closed the page
            }
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_is_sent_once_and_memory_is_bounded() {
        let mut seen = Seen::default();
        assert!(seen.first("a"));
        assert!(!seen.first("a"));
        for i in 0..SEEN + 10 {
            seen.first(&i.to_string());
        }
        assert_eq!(seen.set.len(), SEEN);
        assert!(seen.first("a"), "forgotten after SEEN newer ids");
    }
}
