//! Per-identity and global limits on what a caller can make the gateway hold: sessions per user,
//! sessions in total, requests in flight per user, and the size of what `initialize` stores.
//!
//! A refusal is a clear error with `Retry-After` (429 for the caller's own quota, 503 for the
//! gateway-wide one), so one user exhausting their share never affects another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::Value;

/// `gateway.limits`. 0 turns a limit off.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Live sessions one user (token subject) may hold on this replica.
    pub sessions_per_user: usize,
    /// Live sessions on this replica.
    pub sessions_total: usize,
    /// Requests one user may have in flight at once.
    pub in_flight_per_user: usize,
    /// Serialized size of `initialize`'s `clientInfo` plus `capabilities`, which the session
    /// keeps for its whole life.
    pub client_info_max_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            sessions_per_user: 256,
            sessions_total: 50_000,
            in_flight_per_user: 64,
            client_info_max_bytes: 16 * 1024,
        }
    }
}

/// Why a request was refused; each maps to one status and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many open sessions for this user; close one (DELETE) or let one expire")]
    SessionsPerUser,
    #[error("the gateway holds its maximum number of sessions; retry later")]
    SessionsTotal,
    #[error("too many requests in flight for this user; retry shortly")]
    InFlightPerUser,
    #[error("clientInfo and capabilities are larger than this gateway accepts")]
    ClientInfoTooLarge,
}

impl Refusal {
    /// 429 for the caller's own quota, 503 for the gateway's, 413 for an oversized body part.
    pub fn status(self) -> http::StatusCode {
        match self {
            Self::SessionsPerUser | Self::InFlightPerUser => http::StatusCode::TOO_MANY_REQUESTS,
            Self::SessionsTotal => http::StatusCode::SERVICE_UNAVAILABLE,
            Self::ClientInfoTooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// Seconds a client should wait before retrying (`None`: retrying the same will not help).
    pub fn retry_after(self) -> Option<u32> {
        match self {
            Self::SessionsPerUser => Some(60),
            Self::SessionsTotal => Some(30),
            Self::InFlightPerUser => Some(1),
            Self::ClientInfoTooLarge => None,
        }
    }

    /// The audit outcome.
    pub fn label(self) -> &'static str {
        match self {
            Self::SessionsPerUser => "limit_sessions_per_user",
            Self::SessionsTotal => "limit_sessions_total",
            Self::InFlightPerUser => "limit_in_flight_per_user",
            Self::ClientInfoTooLarge => "limit_client_info_size",
        }
    }
}

/// Requests in flight per user (only users with some).
type Counts = Arc<Mutex<HashMap<Arc<str>, usize>>>;

/// The limits and the per-user in-flight counts.
pub struct Limits {
    config: LimitsConfig,
    in_flight: Counts,
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Whether a new session may be opened: `owned` is the caller's live sessions, `total` all
    /// live sessions; `params` are `initialize`'s.
    pub fn admit_session(
        &self,
        owned: usize,
        total: usize,
        params: Option<&Value>,
    ) -> Result<(), Refusal> {
        let c = &self.config;
        if c.client_info_max_bytes > 0 {
            let size = |key: &str| {
                params
                    .and_then(|p| p.get(key))
                    .map(|v| serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX))
                    .unwrap_or(0)
            };
            if size("clientInfo").saturating_add(size("capabilities")) > c.client_info_max_bytes {
                return Err(Refusal::ClientInfoTooLarge);
            }
        }
        if c.sessions_per_user > 0 && owned >= c.sessions_per_user {
            return Err(Refusal::SessionsPerUser);
        }
        if c.sessions_total > 0 && total >= c.sessions_total {
            return Err(Refusal::SessionsTotal);
        }
        Ok(())
    }

    /// Counts one request of `user` in flight until the returned permit drops.
    pub fn enter(&self, user: &Arc<str>) -> Result<InFlight, Refusal> {
        let max = self.config.in_flight_per_user;
        if max == 0 {
            return Ok(InFlight(None));
        }
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(user.clone()).or_insert(0);
        if *n >= max {
            return Err(Refusal::InFlightPerUser);
        }
        *n += 1;
        Ok(InFlight(Some((self.in_flight.clone(), user.clone()))))
    }
}

/// One request counted in flight for its user.
pub struct InFlight(Option<(Counts, Arc<str>)>);

impl InFlight {
    /// Keeps this request counted until `resp` has been sent to its end: an SSE reply (a
    /// `tools/call` streaming progress, say) outlives the handler that returned it.
    pub fn hold(self, resp: axum::response::Response) -> axum::response::Response {
        if self.0.is_none() {
            return resp;
        }
        resp.map(|inner| {
            axum::body::Body::new(HeldBody {
                inner,
                _permit: self,
            })
        })
    }
}

/// A response body that carries an in-flight permit and frees it when dropped.
struct HeldBody {
    inner: axum::body::Body,
    _permit: InFlight,
}

impl hyper::body::Body for HeldBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some((map, user)) = self.0.take() {
            let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&user) {
                *n -= 1;
                if *n == 0 {
                    // No entry per idle user: the map is bounded by users with requests running.
                    map.remove(&user);
                }
            }
        }
    }
}

/// The refusal as an HTTP answer (JSON-RPC error, `Retry-After` where retrying helps), audited
/// with the refusal as outcome.
pub fn refuse(
    audit: &dyn crate::audit::AuditSink,
    user: &str,
    method: &str,
    trace_id: String,
    refusal: Refusal,
    id: &Value,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    audit.record(crate::audit::AuditEvent {
        id: crate::audit::new_event_id(),
        time_ms: crate::audit::now_ms(),
        user: user.to_owned(),
        session: None,
        method: crate::metrics::method_label(method).into_owned(),
        target: None,
        name: None,
        decision: None,
        policy: None,
        outcome: refusal.label().to_owned(),
        duration_ms: 0.0,
        trace_id,
    });
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": -32000, "message": refusal.to_string()},
    });
    let mut resp = (refusal.status(), axum::Json(body)).into_response();
    if let Some(secs) = refusal.retry_after() {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    }
    resp
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn quotas_refuse_with_the_right_status_and_free_on_drop() {
        let limits = Limits::new(LimitsConfig {
            sessions_per_user: 2,
            sessions_total: 3,
            in_flight_per_user: 1,
            client_info_max_bytes: 64,
        });
        assert_eq!(limits.admit_session(1, 1, None), Ok(()));
        assert_eq!(
            limits.admit_session(2, 2, None),
            Err(Refusal::SessionsPerUser)
        );
        assert_eq!(
            limits.admit_session(0, 3, None),
            Err(Refusal::SessionsTotal)
        );
        let big = json!({"clientInfo": {"name": "x".repeat(100)}});
        assert_eq!(
            limits.admit_session(0, 0, Some(&big)),
            Err(Refusal::ClientInfoTooLarge)
        );
        let alice: Arc<str> = "alice".into();
        let bob: Arc<str> = "bob".into();
        let held = limits.enter(&alice).expect("first");
        assert!(matches!(
            limits.enter(&alice),
            Err(Refusal::InFlightPerUser)
        ));
        let _other = limits.enter(&bob).expect("another user is unaffected");
        drop(held);
        assert!(limits.enter(&alice).is_ok());
        assert_eq!(Refusal::SessionsPerUser.status(), 429);
        assert_eq!(Refusal::SessionsTotal.status(), 503);
    }
}
