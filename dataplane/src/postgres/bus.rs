//! The notification bus: a server→client message for a session reaches the replica that holds
//! the session's downstream stream, whichever replica produced it. Postgres `LISTEN/NOTIFY` is
//! the transport: every replica already has the database, so there is no broker to run; NOTIFY
//! is transactional and cheap; and it is fan-out, which is what "whoever holds the stream" needs.
//!
//! One dedicated connection per replica listens on two channels: `reflow_notify` (session
//! messages) and `reflow_session` (session rows changed, for cache invalidation). A payload over
//! NOTIFY's 8000-byte limit is stored in `reflow_notifications` and the NOTIFY carries its row
//! id. Delivery is at most once: messages published while a replica's listener reconnects are
//! not replayed to it (MCP notifications are advisory; list_changed is re-derivable).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tracing::{debug, warn};

use super::{Database, PgError};

pub const NOTIFY_CHANNEL: &str = "reflow_notify";
pub const SESSION_CHANNEL: &str = "reflow_session";

/// NOTIFY payloads must stay under 8000 bytes; above this the message goes through a row.
const INLINE_LIMIT: usize = 7_900;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("notification bus: {0}")]
    Db(#[from] PgError),
    #[error("notification bus: message does not serialize: {0}")]
    Encode(String),
}

impl BusError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Db(e) => e.label(),
            Self::Encode(_) => "encode",
        }
    }
}

/// One server→client message for one session.
#[derive(Debug, Clone, PartialEq)]
pub struct BusMessage {
    pub session_id: String,
    pub message: Value,
}

/// Another replica changed or deleted a session row.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionChange {
    pub replica: String,
    pub session_id: String,
}

/// Delivers session messages to every replica's subscribers (each keeps those for the sessions
/// whose stream it holds).
pub trait NotificationBus: Send + Sync + 'static {
    fn publish<'a>(
        &'a self,
        session_id: &'a str,
        message: &'a Value,
    ) -> BoxFuture<'a, Result<(), BusError>>;
    fn subscribe(&self) -> broadcast::Receiver<Arc<BusMessage>>;
}

/// One replica, no database: an in-process broadcast.
pub struct LocalBus(broadcast::Sender<Arc<BusMessage>>);

impl Default for LocalBus {
    fn default() -> Self {
        Self(broadcast::channel(1024).0)
    }
}

impl NotificationBus for LocalBus {
    fn publish<'a>(
        &'a self,
        session_id: &'a str,
        message: &'a Value,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        // No subscriber is not an error: nobody holds that session's stream.
        let _ = self.0.send(Arc::new(BusMessage {
            session_id: session_id.to_owned(),
            message: message.clone(),
        }));
        Box::pin(async { Ok(()) })
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<BusMessage>> {
        self.0.subscribe()
    }
}

/// What travels in a `reflow_notify` payload.
#[derive(Serialize, Deserialize)]
struct Wire {
    s: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<Value>,
    /// Row id in `reflow_notifications` when the message was too large to inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<i64>,
}

/// The bus over Postgres `LISTEN/NOTIFY`, shared by all replicas on one database.
pub struct PgBus {
    db: Database,
    messages: broadcast::Sender<Arc<BusMessage>>,
    changes: broadcast::Sender<SessionChange>,
    listening: watch::Receiver<bool>,
}

impl PgBus {
    /// Starts the listener task (reconnecting with backoff) on the current runtime.
    pub fn start(db: Database) -> Arc<Self> {
        let (messages, _) = broadcast::channel(4096);
        let (changes, _) = broadcast::channel(4096);
        let (listening_tx, listening) = watch::channel(false);
        let bus = Arc::new(Self {
            db,
            messages,
            changes,
            listening,
        });
        let weak = Arc::downgrade(&bus);
        tokio::spawn(async move { listen(weak, listening_tx).await });
        bus
    }

    /// Changes other replicas made to session rows (the session store's cache invalidation).
    pub fn session_changes(&self) -> broadcast::Receiver<SessionChange> {
        self.changes.subscribe()
    }

    /// Whether the listening connection is up right now.
    pub fn is_listening(&self) -> bool {
        *self.listening.borrow()
    }

    /// Waits until the listener is up (or `timeout` passes); `true` if it is.
    pub async fn wait_listening(&self, timeout: Duration) -> bool {
        let mut rx = self.listening.clone();
        tokio::time::timeout(timeout, rx.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    async fn deliver(&self, channel: &str, payload: &str) {
        if channel == SESSION_CHANNEL {
            if let Some((replica, id)) = payload.split_once(' ') {
                let _ = self.changes.send(SessionChange {
                    replica: replica.to_owned(),
                    session_id: id.to_owned(),
                });
            }
            return;
        }
        let Ok(wire) = serde_json::from_str::<Wire>(payload) else {
            warn!("unreadable notification payload; ignored");
            return;
        };
        let message = match (wire.m, wire.r) {
            (Some(m), _) => m,
            (None, Some(row)) => match self.fetch(row).await {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    warn!(error = %e, row, "cannot read a large notification");
                    return;
                }
            },
            (None, None) => return,
        };
        let _ = self.messages.send(Arc::new(BusMessage {
            session_id: wire.s,
            message,
        }));
    }

    async fn fetch(&self, row: i64) -> Result<Option<Value>, PgError> {
        let client = self.db.client().await?;
        let found = client
            .query_opt(
                "SELECT message FROM reflow_notifications WHERE id = $1",
                &[&row],
            )
            .await?;
        Ok(found.map(|r| r.get(0)))
    }
}

impl NotificationBus for PgBus {
    fn publish<'a>(
        &'a self,
        session_id: &'a str,
        message: &'a Value,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let inline = serde_json::to_string(&Wire {
                s: session_id.to_owned(),
                m: Some(message.clone()),
                r: None,
            })
            .map_err(|e| BusError::Encode(e.to_string()))?;
            let client = self.db.client().await?;
            if inline.len() <= INLINE_LIMIT {
                client
                    .execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &inline])
                    .await
                    .map_err(PgError::from)?;
                return Ok(());
            }
            // Row and NOTIFY in one statement: listeners are told only once the row is visible.
            client
                .execute(
                    "WITH n AS (INSERT INTO reflow_notifications (session_id, message)
                                VALUES ($1, $2) RETURNING id)
                     SELECT pg_notify($3, json_build_object('s', $1::text, 'r', n.id)::text)
                     FROM n",
                    &[&session_id, message, &NOTIFY_CHANNEL],
                )
                .await
                .map_err(PgError::from)?;
            Ok(())
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<BusMessage>> {
        self.messages.subscribe()
    }
}

/// Keeps one `LISTEN` connection open for as long as the bus lives.
async fn listen(bus: std::sync::Weak<PgBus>, up: watch::Sender<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(b) = bus.upgrade() else { return };
        let db = b.db.clone();
        drop(b);
        match db.dedicated().await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                // The connection must be polled for LISTEN to complete and for notifications.
                let pump = tokio::spawn(async move {
                    let mut stream =
                        futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    use futures::StreamExt;
                    while let Some(Ok(msg)) = stream.next().await {
                        if let tokio_postgres::AsyncMessage::Notification(n) = msg
                            && tx
                                .send((n.channel().to_owned(), n.payload().to_owned()))
                                .is_err()
                        {
                            return;
                        }
                    }
                });
                let listened = client
                    .batch_execute(&format!(
                        "LISTEN {NOTIFY_CHANNEL}; LISTEN {SESSION_CHANNEL}"
                    ))
                    .await;
                if let Err(e) = listened {
                    debug!(error = %e, "LISTEN failed");
                } else {
                    backoff = Duration::from_millis(100);
                    let _ = up.send(true);
                    while let Some((channel, payload)) = rx.recv().await {
                        let Some(b) = bus.upgrade() else {
                            pump.abort();
                            return;
                        };
                        b.deliver(&channel, &payload).await;
                    }
                    let _ = up.send(false);
                    warn!("notification listener connection lost; reconnecting");
                }
                pump.abort();
                drop(client);
            }
            Err(e) => debug!(error = %e, "notification listener cannot connect"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
