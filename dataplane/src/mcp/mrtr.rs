//! Multi round-trip requests for stateless (2026-07-28) clients: the sealed `requestState` the
//! gateway hands out, and the calls it keeps running while their client gathers input.
//!
//! Two kinds of state travel through a client. An upstream of the stateless revision returns its
//! own `requestState`; the gateway seals it together with the Target it came from, so a retry
//! reaches the same Target with the state unchanged and nobody else can replay it. An upstream of an
//! older revision asks with server-to-client requests in the middle of a call; the gateway turns
//! them into `inputRequests`, keeps the call parked here, and the sealed state names the parked
//! call. Both are sealed with the Credential sealing key (AES-GCM), bound to the caller, method and
//! name, and expire: a tampered, foreign or stale state is refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reflow_crds::seal::SealedValue;
use reflow_crds::{Fingerprint, SealingKey};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::dispatch::Reply;
use super::relay::Progress;
use crate::audit::now_ms;
use crate::upstream::{Cancel, Upcall};

/// What every gateway-sealed state starts with (an upstream's own state never does once wrapped).
const PREFIX: &str = "reflow1.";
/// Calls parked at once on one replica; past it a new upstream request is refused.
const MAX_PARKED: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("requestState was not issued by this gateway")]
    Foreign,
    #[error("requestState does not verify for this caller and request")]
    Tampered,
    #[error("requestState has expired; send the request again without it")]
    Expired,
}

impl StateError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Foreign => "foreign_state",
            Self::Tampered => "tampered_state",
            Self::Expired => "expired_state",
        }
    }
}

/// What a sealed state holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Held {
    /// A call parked on this replica, by its id.
    Parked(String),
    /// A stateless upstream's own state, for the Target (`namespace/name`) that issued it.
    Upstream { target: String, state: String },
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    held: Held,
    /// Expiry, ms since the epoch.
    exp: u128,
}

/// Binds a state to who may present it and on which request.
fn aad(owner: &Fingerprint, method: &str, name: &str) -> String {
    format!("reflow/mrtr/v1\0{}\0{method}\0{name}", owner.to_hex())
}

/// Seals `held` for `owner`'s retry of `method` on `name`, valid for `ttl`.
pub(crate) fn seal(
    key: &SealingKey,
    owner: &Fingerprint,
    method: &str,
    name: &str,
    held: Held,
    ttl: Duration,
) -> String {
    let exp = now_ms().saturating_add(ttl.as_millis());
    let text = serde_json::to_string(&Sealed { held, exp }).unwrap_or_default();
    let sealed = key.seal(&aad(owner, method, name), &text);
    format!("{PREFIX}{}", sealed.sealed)
}

/// Opens a state the gateway sealed for this caller, method and name.
pub(crate) fn open(
    key: &SealingKey,
    owner: &Fingerprint,
    method: &str,
    name: &str,
    state: &str,
) -> Result<Held, StateError> {
    let blob = state.strip_prefix(PREFIX).ok_or(StateError::Foreign)?;
    let value = SealedValue {
        sealed: blob.to_owned(),
        digest: String::new(),
    };
    let text = key
        .open(&aad(owner, method, name), &value)
        .map_err(|_| StateError::Tampered)?;
    let sealed: Sealed = serde_json::from_str(secrecy::ExposeSecret::expose_secret(&text))
        .map_err(|_| StateError::Tampered)?;
    if sealed.exp < now_ms() {
        return Err(StateError::Expired);
    }
    Ok(sealed.held)
}

/// A call waiting for its client's input: the dispatch still runs, its upcalls queue in `rx`,
/// and `waiting` are the gateway ids of the requests the client was asked to answer.
pub(crate) struct Parked {
    pub session: String,
    pub work: JoinHandle<Reply>,
    pub rx: mpsc::Receiver<Upcall>,
    pub waiting: Vec<(String, serde_json::Value)>,
    pub expires: Instant,
    /// The client's progress token, restored on notifications of later rounds.
    pub progress: Option<Progress>,
    pub cancel: Cancel,
}

/// Parked calls of this replica (a retry must reach the replica that holds its call; without it
/// the gateway runs the request afresh).
#[derive(Default)]
pub(crate) struct Parking(Mutex<HashMap<String, Parked>>);

impl Parking {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Parked>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks `call`; returns its id, or the call back when the replica holds too many.
    pub(crate) fn park(&self, call: Parked) -> Result<String, Box<Parked>> {
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, p| {
            let live = p.expires > now;
            if !live {
                p.work.abort();
            }
            live
        });
        if map.len() >= MAX_PARKED {
            return Err(Box::new(call));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        map.insert(id.clone(), call);
        Ok(id)
    }

    /// Takes the parked call `id` if `session` parked it and it has not expired.
    pub(crate) fn take(&self, id: &str, session: &str) -> Option<Parked> {
        let mut map = self.lock();
        match map.get(id) {
            Some(p) if p.session == session && p.expires > Instant::now() => map.remove(id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(user: &str) -> Fingerprint {
        reflow_crds::Identity::new(user, Vec::<String>::new(), Vec::<String>::new()).fingerprint()
    }

    #[test]
    fn a_state_opens_only_for_its_caller_method_and_name() {
        let key = SealingKey::from_bytes(&[7; 32]);
        let held = Held::Upstream {
            target: "ns/t".into(),
            state: "opaque".into(),
        };
        let s = seal(
            &key,
            &fp("alice"),
            "tools/call",
            "x",
            held.clone(),
            Duration::from_secs(60),
        );
        assert!(s.starts_with(PREFIX));
        assert_eq!(open(&key, &fp("alice"), "tools/call", "x", &s), Ok(held));
        assert_eq!(
            open(&key, &fp("bob"), "tools/call", "x", &s),
            Err(StateError::Tampered)
        );
        assert_eq!(
            open(&key, &fp("alice"), "tools/call", "y", &s),
            Err(StateError::Tampered)
        );
        assert_eq!(
            open(&key, &fp("alice"), "prompts/get", "x", &s),
            Err(StateError::Tampered)
        );
        let mut flipped = s.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            open(&key, &fp("alice"), "tools/call", "x", &flipped),
            Err(StateError::Tampered)
        );
        assert_eq!(
            open(&key, &fp("alice"), "tools/call", "x", "opaque"),
            Err(StateError::Foreign)
        );
        let other = SealingKey::from_bytes(&[8; 32]);
        assert_eq!(
            open(&other, &fp("alice"), "tools/call", "x", &s),
            Err(StateError::Tampered)
        );
    }

    #[test]
    fn an_expired_state_is_refused() {
        let key = SealingKey::from_bytes(&[7; 32]);
        let s = seal(
            &key,
            &fp("a"),
            "tools/call",
            "x",
            Held::Parked("p".into()),
            Duration::ZERO,
        );
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            open(&key, &fp("a"), "tools/call", "x", &s),
            Err(StateError::Expired)
        );
    }
}
