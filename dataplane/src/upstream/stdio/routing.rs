//! Where a child's messages go: replies to the request waiting for them, notifications and
//! server-to-client requests to the in-flight call (and so the session) they belong to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::StdioError;
use super::process::Unrouted;
use crate::upstream::UpstreamError;
use crate::upstream::upcall::{self, Inbound, Responder, Sink, Unsolicited};

/// One request waiting for the child's reply, and where the child's messages about it go.
pub(super) struct Waiting {
    pub(super) tx: oneshot::Sender<Map<String, Value>>,
    pub(super) route: Option<CallRoute>,
}

/// The call's relay: its session (to tell whether in-flight calls share one) and the progress
/// token it was sent with (gateway-minted, so unique across the sessions a child serves).
pub(super) struct CallRoute {
    pub(super) sink: Sink,
    pub(super) session: Arc<str>,
    pub(super) progress: Option<Value>,
}

pub(super) type Pending = Arc<Mutex<HashMap<u64, Waiting>>>;

/// One message from the child: a reply to its waiting request, or `route_unsolicited`.
pub(super) fn route(
    msg: Value,
    pending: &Pending,
    replies: &mpsc::UnboundedSender<Vec<u8>>,
    unrouted: Option<&Unrouted>,
) {
    let Value::Object(obj) = msg else {
        debug!("child wrote a JSON value that is not an object");
        return;
    };
    let is_reply =
        !obj.contains_key("method") && (obj.contains_key("result") || obj.contains_key("error"));
    if is_reply {
        let Some(id) = obj.get("id").and_then(Value::as_u64) else {
            debug!("reply without a usable id");
            return;
        };
        let waiter = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match waiter {
            Some(w) => {
                let _ = w.tx.send(obj);
            }
            // Timed out already (we sent a cancellation), or an id we never used.
            None => debug!(id, "reply to no pending request"),
        }
        return;
    }
    route_unsolicited(Value::Object(obj), pending, replies, unrouted);
}

/// Notifications and server-to-client requests go to the in-flight call they belong to: a
/// progress notification by its token; anything else to the newest call when every call in
/// flight belongs to one session (STDIO carries no other link between a message and a
/// request, and guessing across sessions would hand one user's elicitation to another).
/// What no call can take goes to `unrouted`, and a request among it is refused.
fn route_unsolicited(
    msg: Value,
    pending: &Pending,
    replies: &mpsc::UnboundedSender<Vec<u8>>,
    unrouted: Option<&Unrouted>,
) {
    let Value::Object(obj) = msg else {
        return;
    };
    let sink = {
        let map = pending.lock().unwrap_or_else(|p| p.into_inner());
        pick_route(&map, &obj)
    };
    let inbound = match upcall::classify(obj) {
        Some(Unsolicited::Notification(n)) => Inbound::Notification(n),
        Some(Unsolicited::Request(id, r)) => {
            let out = replies.clone();
            let responder = Responder::new(
                id,
                Box::new(move |mut line| {
                    line.push(b'\n');
                    let sent: Result<(), UpstreamError> = out
                        .send(line)
                        .map_err(|_| StdioError::Write("stdin is closed".into()).into());
                    Box::pin(async move { sent })
                }),
            );
            Inbound::Request(r, responder)
        }
        None => return,
    };
    match sink {
        Some(sink) => sink.deliver(inbound),
        None => match unrouted {
            Some(f) => f(inbound),
            None => upcall::unroutable(inbound),
        },
    }
}

fn pick_route(map: &HashMap<u64, Waiting>, msg: &Map<String, Value>) -> Option<Sink> {
    // Belongs to whoever subscribed to the URI, not to whichever call happens to be in flight:
    // the gateway delivers it by its subscription table.
    if msg.get("method").and_then(Value::as_str) == Some("notifications/resources/updated") {
        return None;
    }
    if msg.get("method").and_then(Value::as_str) == Some("notifications/progress")
        && let Some(token) = msg.get("params").and_then(|p| p.get("progressToken"))
    {
        return map
            .values()
            .filter_map(|w| w.route.as_ref())
            .find(|r| r.progress.as_ref() == Some(token))
            .map(|r| r.sink.clone());
    }
    let mut sessions = map.values().map(|w| w.route.as_ref().map(|r| &r.session));
    let first = sessions.next()??;
    if !sessions.all(|s| s == Some(first)) {
        return None;
    }
    map.iter()
        .max_by_key(|(id, _)| **id)
        .and_then(|(_, w)| w.route.as_ref())
        .map(|r| r.sink.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upcall;
    use serde_json::json;

    fn waiting(session: &str, token: Option<&str>) -> (Waiting, mpsc::Receiver<Upcall>) {
        let (tx, rx) = mpsc::channel(4);
        let (reply, _) = oneshot::channel();
        let w = Waiting {
            tx: reply,
            route: Some(CallRoute {
                sink: Sink::new(tx, Arc::from(session)),
                session: Arc::from(session),
                progress: token.map(|t| json!(t)),
            }),
        };
        (w, rx)
    }

    fn msg(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn progress_follows_its_token_and_nothing_else_guesses_across_sessions() {
        let mut map = HashMap::new();
        let (a, mut rx_a) = waiting("s1", Some("tok-a"));
        let (b, mut rx_b) = waiting("s2", Some("tok-b"));
        map.insert(1, a);
        map.insert(2, b);
        let progress = msg(json!({"method": "notifications/progress",
            "params": {"progressToken": "tok-a", "progress": 1}}));
        pick_route(&map, &progress)
            .expect("routed")
            .deliver(Inbound::Streaming);
        assert!(rx_a.try_recv().is_ok() && rx_b.try_recv().is_err());
        // A log message while two sessions have calls in flight: no one gets it.
        let log = msg(json!({"method": "notifications/message", "params": {}}));
        assert!(pick_route(&map, &log).is_none());
        // One session only: its newest call takes it.
        map.remove(&2);
        let (c, mut rx_c) = waiting("s1", None);
        map.insert(3, c);
        pick_route(&map, &log)
            .expect("routed")
            .deliver(Inbound::Streaming);
        assert!(rx_c.try_recv().is_ok() && rx_a.try_recv().is_err());
        // A resource update goes to its subscribers, never to a call in flight.
        let updated = msg(json!({"method": "notifications/resources/updated",
            "params": {"uri": "file:///a"}}));
        assert!(pick_route(&map, &updated).is_none());
        // An unknown token goes nowhere.
        let stray = msg(json!({"method": "notifications/progress",
            "params": {"progressToken": "other"}}));
        assert!(pick_route(&map, &stray).is_none());
    }
}
