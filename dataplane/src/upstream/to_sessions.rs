//! What upstreams say outside any call (a session's GET stream, a stateful Target's own child,
//! a shared child's resource updates) goes to the router over one channel: `upstream` addresses
//! each message and sends it; the router, which owns the receiver, takes it to its session(s).
//! Upstream code never calls into the router.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::upcall::{Inbound, unroutable};

/// A message an upstream sent outside any call, with where it came from and whom it is for.
pub enum Unprompted {
    /// For one gateway session: its HTTP upstream's GET (or listen) stream, or the session's
    /// own child of a `stateful` STDIO Target.
    Session {
        session: String,
        target: Arc<str>,
        inbound: Inbound,
    },
    /// From a STDIO child shared by many sessions (`child` is its label, unique per child):
    /// resource updates go to the child's subscribers; what the router cannot take it hands
    /// back with `StdioPool::drop_unrouted`.
    Shared {
        child: String,
        target: Arc<str>,
        inbound: Inbound,
    },
}

impl Unprompted {
    fn into_inbound(self) -> Inbound {
        match self {
            Self::Session { inbound, .. } | Self::Shared { inbound, .. } => inbound,
        }
    }
}

/// The sending end (cheap to clone). Unbounded, as the readers that send must never wait on a
/// session: each message is handed on at once (the router spawns what takes longer).
#[derive(Clone)]
pub struct ToSessions(mpsc::UnboundedSender<Unprompted>);

impl ToSessions {
    /// A channel: the sender for `upstream`, the receiver for the router.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<Unprompted>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    /// A sender nobody receives from: every message is refused as unroutable.
    pub fn detached() -> Self {
        Self::channel().0
    }

    /// Hands `message` to the router; `Err` gives it back when nobody receives any more.
    pub fn try_send(&self, message: Unprompted) -> Result<(), Unprompted> {
        self.0.send(message).map_err(|e| e.0)
    }

    /// Hands `message` to the router, or refuses it (a request) or drops it when nobody
    /// receives any more.
    pub fn send(&self, message: Unprompted) {
        if let Err(left) = self.try_send(message) {
            unroutable(left.into_inbound());
        }
    }
}

/// Where one session's upstream stream sends what it hears: that session, tagged with the
/// Target it came from.
#[derive(Clone)]
pub struct Deliver {
    to: ToSessions,
    session: String,
    target: Arc<str>,
}

impl Deliver {
    pub fn new(to: ToSessions, session: impl Into<String>, target: Arc<str>) -> Self {
        Self {
            to,
            session: session.into(),
            target,
        }
    }

    pub fn send(&self, inbound: Inbound) {
        self.to.send(Unprompted::Session {
            session: self.session.clone(),
            target: self.target.clone(),
            inbound,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note() -> Inbound {
        Inbound::Notification(serde_json::Map::new())
    }

    #[tokio::test]
    async fn a_delivered_message_reaches_the_receiver_addressed_to_its_session() {
        let (to, mut rx) = ToSessions::channel();
        Deliver::new(to, "s1", Arc::from("ns/t")).send(note());
        match rx.recv().await {
            Some(Unprompted::Session {
                session, target, ..
            }) => {
                assert_eq!(session, "s1");
                assert_eq!(&*target, "ns/t");
            }
            _ => panic!("expected a session message"),
        }
    }

    #[test]
    fn with_nobody_receiving_the_message_comes_back() {
        let to = ToSessions::detached();
        let sent = to.try_send(Unprompted::Shared {
            child: "c".into(),
            target: Arc::from("ns/t"),
            inbound: note(),
        });
        assert!(matches!(sent, Err(Unprompted::Shared { .. })));
    }
}
