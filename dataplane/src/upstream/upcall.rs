//! What an upstream says during a call besides its reply (notifications, server-to-client
//! requests) and the hooks a call carries: a `Sink` to hand those to, a `Cancel` to stop it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc};
use tracing::debug;

use super::UpstreamError;

/// One message from an upstream that is not the reply of the call it arrived with.
pub enum Inbound {
    /// The upstream answers this call as an event stream: the client's reply may stream too.
    Streaming,
    /// A notification (`notifications/progress`, `notifications/message`, …), as received.
    Notification(Map<String, Value>),
    /// A server-to-client request (`sampling/createMessage`, `elicitation/create`, …), as
    /// received, with the way back to the upstream that asked.
    Request(Map<String, Value>, Responder),
}

/// An `Inbound` and the target (`namespace/name`) it came from.
pub struct Upcall {
    pub target: Arc<str>,
    pub inbound: Inbound,
}

type SendFn = Box<dyn FnOnce(Vec<u8>) -> BoxFuture<'static, Result<(), UpstreamError>> + Send>;

/// Delivers an answer to the upstream that sent a server-to-client request, under the
/// upstream's own request id (the client only ever sees a gateway-minted one).
pub struct Responder {
    id: Value,
    send: SendFn,
}

impl Responder {
    pub fn new(id: Value, send: SendFn) -> Self {
        Self { id, send }
    }

    /// The upstream's id of the request this answers.
    pub fn upstream_id(&self) -> &Value {
        &self.id
    }

    /// Sends the `result` or `error` of `answer` (a client's JSON-RPC response).
    pub async fn answer(self, answer: &Map<String, Value>) -> Result<(), UpstreamError> {
        let mut msg = Map::new();
        msg.insert("jsonrpc".into(), json!("2.0"));
        msg.insert("id".into(), self.id);
        match (answer.get("result"), answer.get("error")) {
            (Some(r), _) => msg.insert("result".into(), r.clone()),
            (None, Some(e)) => msg.insert("error".into(), e.clone()),
            (None, None) => msg.insert(
                "error".into(),
                json!({"code": -32603, "message": "the client answered without a result"}),
            ),
        };
        let body = serde_json::to_vec(&msg).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        (self.send)(body).await
    }

    /// Answers with a JSON-RPC error.
    pub async fn refuse(self, code: i64, message: &str) -> Result<(), UpstreamError> {
        let mut answer = Map::new();
        answer.insert("error".into(), json!({"code": code, "message": message}));
        self.answer(&answer).await
    }

    /// Refuses in the background (where no one could wait for it).
    pub fn refuse_later(self, code: i64, message: &'static str) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = self.refuse(code, message).await {
                    debug!(error = %e, "could not refuse an upstream request");
                }
            });
        }
    }
}

/// Where a call's upcalls go (the gateway's per-request relay). Never waits: a full or closed
/// sink drops notifications and refuses requests, so a slow client cannot stall a reader that
/// other sessions share (a STDIO child's stdout).
#[derive(Clone)]
pub struct Sink {
    tx: mpsc::Sender<Upcall>,
    target: Arc<str>,
}

impl Sink {
    pub fn new(tx: mpsc::Sender<Upcall>, target: Arc<str>) -> Self {
        Self { tx, target }
    }

    /// The same channel, tagged with another target.
    pub fn for_target(&self, target: Arc<str>) -> Self {
        Self {
            tx: self.tx.clone(),
            target,
        }
    }

    pub fn deliver(&self, inbound: Inbound) {
        let upcall = Upcall {
            target: self.target.clone(),
            inbound,
        };
        if let Err(e) = self.tx.try_send(upcall) {
            match e.into_inner().inbound {
                Inbound::Request(_, r) => {
                    r.refuse_later(-32603, "the client's stream is not available")
                }
                _ => debug!("upstream notification dropped: the client's stream is full or gone"),
            }
        }
    }
}

/// Refuses a server-to-client request nobody can route, and drops anything else.
pub fn unroutable(inbound: Inbound) {
    if let Inbound::Request(msg, r) = inbound {
        debug!(
            method = msg.get("method").and_then(|m| m.as_str()).unwrap_or(""),
            "upstream request with no client to route it to; refused"
        );
        r.refuse_later(-32601, "no client stream to route this request to");
    }
}

/// Set once by the client's `notifications/cancelled`; calls waiting upstream stop on it.
#[derive(Clone, Default)]
pub struct Cancel(Arc<(AtomicBool, Notify)>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.0.store(true, Ordering::SeqCst);
        self.0.1.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.0.load(Ordering::SeqCst)
    }

    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// What a call carries besides its request.
#[derive(Clone, Default)]
pub struct CallHooks {
    pub sink: Option<Sink>,
    pub cancel: Option<Cancel>,
}

impl CallHooks {
    /// Hands `inbound` to the sink, or refuses/drops it when the call has none.
    pub fn deliver(&self, inbound: Inbound) {
        match &self.sink {
            Some(s) => s.deliver(inbound),
            None => unroutable(inbound),
        }
    }

    /// Resolves when the call is cancelled; never without a `Cancel`.
    pub async fn cancelled(&self) {
        match &self.cancel {
            Some(c) => c.cancelled().await,
            None => std::future::pending().await,
        }
    }
}

/// Splits an upstream message that is not a reply into a notification or a request (`None` for
/// replies and garbage).
pub(crate) fn classify(msg: Map<String, Value>) -> Option<Unsolicited> {
    msg.get("method").and_then(Value::as_str)?;
    Some(match msg.get("id") {
        Some(id) if !id.is_null() => Unsolicited::Request(id.clone(), msg),
        _ => Unsolicited::Notification(msg),
    })
}

pub(crate) enum Unsolicited {
    Notification(Map<String, Value>),
    Request(Value, Map<String, Value>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancel_wakes_waiters_before_and_after() {
        let c = Cancel::default();
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.cancelled().await }
        });
        tokio::task::yield_now().await;
        c.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        // Already cancelled: resolves at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), c.cancelled())
            .await
            .expect("immediate");
    }

    #[tokio::test]
    async fn a_full_sink_refuses_requests_to_the_upstream() {
        let (tx, _rx) = mpsc::channel(1);
        let sink = Sink::new(tx, Arc::from("ns/t"));
        sink.deliver(Inbound::Streaming);
        let (sent_tx, sent_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
        let responder = Responder::new(
            json!(7),
            Box::new(move |body| {
                let _ = sent_tx.send(body);
                Box::pin(async { Ok(()) })
            }),
        );
        let mut req = Map::new();
        req.insert("method".into(), json!("sampling/createMessage"));
        sink.deliver(Inbound::Request(req, responder));
        let body = tokio::time::timeout(std::time::Duration::from_secs(5), sent_rx)
            .await
            .expect("refused in time")
            .expect("sent");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["id"], 7);
        assert_eq!(v["error"]["code"], -32603);
    }
}
