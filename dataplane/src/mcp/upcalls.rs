//! Server-to-client requests in flight: each gets a gateway-minted id for the client, and the
//! client's response is handed back to the upstream that asked. Bounded per session, timed out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Map, Value};
use tracing::debug;

use crate::upstream::{Responder, UpstreamError};

/// Requests one session may owe answers to at once.
const MAX_PER_SESSION: usize = 32;
/// Across all sessions.
const MAX_TOTAL: usize = 8192;
/// JSON-RPC error code the upstream gets when the client did not answer in time.
const TIMED_OUT: i64 = -32001;

#[derive(Debug, thiserror::Error)]
pub enum UpcallError {
    #[error("no request of this session is waiting for an answer with this id")]
    Unknown,
    #[error("the client owes too many answers already")]
    Full,
    #[error("the upstream did not take the answer: {0}")]
    Upstream(#[from] UpstreamError),
}

impl UpcallError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown_response",
            Self::Full => "too_many_pending",
            Self::Upstream(e) => e.label(),
        }
    }
}

struct Waiting {
    session: String,
    responder: Responder,
}

#[derive(Default)]
struct Table {
    waiting: HashMap<String, Waiting>,
    per_session: HashMap<String, usize>,
}

impl Table {
    fn take(&mut self, id: &str) -> Option<Waiting> {
        let w = self.waiting.remove(id)?;
        if let Some(n) = self.per_session.get_mut(&w.session) {
            *n -= 1;
            if *n == 0 {
                self.per_session.remove(&w.session);
            }
        }
        Some(w)
    }
}

pub(crate) struct Upcalls {
    table: Mutex<Table>,
    next: AtomicU64,
    /// Random per process, so ids of other replicas (or earlier runs) never match.
    prefix: String,
    timeout: Duration,
}

impl Upcalls {
    pub(crate) fn new(timeout: Duration) -> Arc<Self> {
        let random = uuid::Uuid::new_v4().simple().to_string();
        Arc::new(Self {
            table: Mutex::new(Table::default()),
            next: AtomicU64::new(1),
            prefix: format!("reflow-{}", &random[..12]),
            timeout,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the client has to answer.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Mints the id the client sees; the responder waits (bounded) for the client's answer.
    /// Over a limit the responder comes back, to be refused.
    pub(crate) fn register(
        self: &Arc<Self>,
        session: &str,
        responder: Responder,
    ) -> Result<String, (UpcallError, Responder)> {
        let id = format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        {
            let mut t = self.lock();
            let mine = t.per_session.get(session).copied().unwrap_or(0);
            if mine >= MAX_PER_SESSION || t.waiting.len() >= MAX_TOTAL {
                return Err((UpcallError::Full, responder));
            }
            *t.per_session.entry(session.to_owned()).or_default() += 1;
            t.waiting.insert(
                id.clone(),
                Waiting {
                    session: session.to_owned(),
                    responder,
                },
            );
        }
        let me: Weak<Self> = Arc::downgrade(self);
        let timer_id = id.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let Some(me) = me.upgrade() else { return };
            let expired = me.lock().take(&timer_id);
            if let Some(w) = expired {
                debug!(id = %timer_id, "the client did not answer a relayed request in time");
                let _ = w
                    .responder
                    .refuse(TIMED_OUT, "the client did not answer in time")
                    .await;
            }
        });
        Ok(id)
    }

    /// The client's response to `id`: delivered to the upstream that asked. Another session's id
    /// is as unknown as one never minted.
    pub(crate) async fn resolve(
        &self,
        session: &str,
        id: &Value,
        answer: &Map<String, Value>,
    ) -> Result<(), UpcallError> {
        let Some(id) = id.as_str() else {
            return Err(UpcallError::Unknown);
        };
        let waiting = {
            let mut t = self.lock();
            match t.waiting.get(id) {
                Some(w) if w.session == session => t.take(id),
                _ => None,
            }
        };
        let w = waiting.ok_or(UpcallError::Unknown)?;
        w.responder.answer(answer).await?;
        Ok(())
    }

    /// The session ended: its upstreams get an error instead of waiting for the timeout.
    pub(crate) fn drop_session(&self, session: &str) {
        let gone: Vec<Waiting> = {
            let mut t = self.lock();
            let ids: Vec<String> = t
                .waiting
                .iter()
                .filter(|(_, w)| w.session == session)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| t.take(id)).collect()
        };
        for w in gone {
            w.responder
                .refuse_later(TIMED_OUT, "the client session ended");
        }
    }

    #[cfg(test)]
    fn pending(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::sync::mpsc;

    fn recording() -> (Responder, mpsc::UnboundedReceiver<Value>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let r = Responder::new(
            json!(41),
            Box::new(move |body| {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let _ = tx.send(v);
                Box::pin(async { Ok(()) })
            }),
        );
        (r, rx)
    }

    #[tokio::test]
    async fn answers_go_back_under_the_upstream_id_and_only_from_the_owning_session() {
        let calls = Upcalls::new(Duration::from_secs(60));
        let (r, mut sent) = recording();
        let id = calls.register("s1", r).map_err(|(e, _)| e).unwrap();
        let answer = json!({"jsonrpc":"2.0","id":id,"result":{"ok":true}});
        let answer = answer.as_object().unwrap();
        assert!(matches!(
            calls.resolve("s2", &json!(id), answer).await,
            Err(UpcallError::Unknown)
        ));
        calls.resolve("s1", &json!(id), answer).await.unwrap();
        assert_eq!(
            sent.recv().await.unwrap(),
            json!({"jsonrpc":"2.0","id":41,"result":{"ok":true}})
        );
        // Answered once: a second answer is unknown.
        assert!(matches!(
            calls.resolve("s1", &json!(id), answer).await,
            Err(UpcallError::Unknown)
        ));
    }

    #[tokio::test]
    async fn unanswered_requests_time_out_with_an_error_to_the_upstream() {
        let calls = Upcalls::new(Duration::from_millis(20));
        let (r, mut sent) = recording();
        calls.register("s1", r).map_err(|(e, _)| e).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), sent.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got["id"], 41);
        assert_eq!(got["error"]["code"], TIMED_OUT);
        assert_eq!(calls.pending(), 0);
    }

    #[tokio::test]
    async fn a_session_owes_at_most_its_bound() {
        let calls = Upcalls::new(Duration::from_secs(60));
        for _ in 0..MAX_PER_SESSION {
            assert!(calls.register("s1", recording().0).is_ok());
        }
        assert!(matches!(
            calls.register("s1", recording().0),
            Err((UpcallError::Full, _))
        ));
        assert!(calls.register("s2", recording().0).is_ok());
        calls.drop_session("s1");
        assert_eq!(calls.pending(), 1);
    }
}
