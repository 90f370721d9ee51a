//! Notifications for a session whose GET stream another replica holds: published on the
//! notification bus (Postgres LISTEN/NOTIFY) and written by whichever replica has it live.
//!
//! Only notifications cross replicas. A server-to-client *request* waits for its answer in the
//! replica that relayed it, so it stays on that replica's stream (replayable with
//! `Last-Event-ID` there) rather than going where its answer could not be matched.

use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};

use super::Gateway;
use super::streams::{GET_STREAM, Hub};
use crate::postgres::{BusMessage, NotificationBus};

/// Notifications queued for the bus; past this they are dropped (and counted in the log), as a
/// stream without a connection would have dropped them.
const OUTBOX: usize = 4096;

/// This replica's end of the bus.
pub(crate) struct BusLink {
    outbox: mpsc::Sender<(String, Value)>,
}

impl Gateway {
    /// Sends notifications for GET streams this replica does not hold through `bus`, and writes
    /// what the bus brings for GET streams it does hold. Called once, while the gateway is built
    /// (a later call changes nothing). Needs a tokio runtime (it spawns the two bus tasks).
    pub(crate) fn attach_bus(self: &Arc<Self>, bus: Arc<dyn NotificationBus>) {
        let inbox = bus.subscribe();
        let (tx, outbox) = mpsc::channel(OUTBOX);
        if self.bus.set(BusLink { outbox: tx }).is_err() {
            return;
        }
        tokio::spawn(publish_in_order(bus, outbox));
        tokio::spawn(deliver(Arc::downgrade(self), inbox));
    }

    /// Publishes a notification on the session's GET stream: here when this replica holds it
    /// (or no bus is attached), else through the bus (and not kept here, so a resume on this
    /// replica cannot repeat what the other replica delivered).
    pub(crate) fn to_get_stream(&self, session_id: &str, hub: &Hub, msg: &Map<String, Value>) {
        // With hand-off, the session's owner holds all of it: what is not live is kept for replay.
        if let Some(link) = self.bus.get()
            && self.handoff.is_none()
            && !hub.has_live(GET_STREAM)
        {
            let queued = link
                .outbox
                .try_send((session_id.to_owned(), Value::Object(msg.clone())));
            if queued.is_err() {
                warn!(
                    session = session_id,
                    "notification bus outbox full; dropped"
                );
            }
            return;
        }
        if let Ok(text) = serde_json::to_string(msg) {
            hub.publish(GET_STREAM, text);
        }
    }
}

/// One task publishes, so a session's notifications keep their order across replicas.
async fn publish_in_order(
    bus: Arc<dyn NotificationBus>,
    mut outbox: mpsc::Receiver<(String, Value)>,
) {
    while let Some((session, msg)) = outbox.recv().await {
        if let Err(e) = bus.publish(&session, &msg).await {
            warn!(error = %e, label = e.label(), session = %session, "notification not published");
        }
    }
}

/// Writes bus messages to the GET streams this replica holds; others are not ours.
async fn deliver(gw: std::sync::Weak<Gateway>, mut inbox: broadcast::Receiver<Arc<BusMessage>>) {
    loop {
        match inbox.recv().await {
            Ok(m) => {
                let Some(gw) = gw.upgrade() else { return };
                match gw.hubs.find(&m.session_id) {
                    Some(hub) if hub.has_live(GET_STREAM) => {
                        if let Ok(text) = serde_json::to_string(&m.message) {
                            hub.publish(GET_STREAM, text);
                        }
                    }
                    _ => debug!(session = %m.session_id, "bus message for a stream held elsewhere"),
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(
                    missed = n,
                    "notification bus subscriber lagged; messages lost"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
