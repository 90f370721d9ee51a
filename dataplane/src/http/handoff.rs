//! Any replica serves any request: a request for a session (or a parked stateless call) that
//! another replica owns is handed to that replica over HTTP, signed with the replica token, and
//! its answer streamed back; when the owner is gone, this replica claims the session and serves
//! it itself. Without a replica registry (no database, or no replica token) this layer passes
//! every request through untouched. Why a direct hand-off: see `mcp::handoff`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::{Instrument, debug, info_span, warn};

use super::PeerAddr;
use crate::mcp::Gateway;
use crate::mcp::handoff::{Handoff, parked_key, session_key};
use crate::postgres::{Ownership, Peer, RegistryError, ReplicaToken};
use crate::upstream::SESSION_HEADER;
use reflow_crds::Identity;

/// Carries `v1.<unix ms>.<from replica>.<signature>` on a handed-off request.
pub(crate) const HANDOFF_HEADER: &str = "reflow-handoff";
/// The client's address as the first replica saw it (signed with the request).
const PEER_HEADER: &str = "reflow-handoff-peer";
/// The identity of a client certificate the first replica verified (mTLS users), signed with
/// the request: the owner takes it only under a valid hand-off signature that covers it.
const IDENTITY_HEADER: &str = "reflow-handoff-identity";
/// Set on a 421 answer: the receiving replica does not own the key (any more).
const MOVED_HEADER: &str = "reflow-handoff-moved";
/// How far a handed-off request's clock may be from ours.
const MAX_SKEW_MS: u64 = 30_000;
/// Owner changes followed for one request before giving up.
const MAX_HOPS: usize = 3;
/// The gateway's own prefix of a sealed `requestState` (see `mcp::mrtr`).
const STATE_PREFIX: &str = "reflow1.";

/// Why a hand-off did not get an answer.
enum Failed {
    /// Nothing accepted the connection: the owner is gone.
    Refused,
    /// Connected (or tried to) but no answer in time, or the exchange broke.
    NoAnswer,
    /// The receiver says it does not own the key.
    Moved,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn refusal(status: StatusCode, message: &str) -> Response {
    let body = crate::jsonrpc::error(&serde_json::Value::Null, -32603, message);
    (status, axum::Json(body)).into_response()
}

pub(crate) async fn middleware(
    State(gw): State<Arc<Gateway>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(h) = gw.handoff.as_ref() else {
        return next.run(req).await;
    };
    let handed = req.headers().contains_key(HANDOFF_HEADER);
    let (mut parts, body) = req.into_parts();
    let peer = parts.headers.remove(PEER_HEADER);
    // Never read unless a valid signature covers it; a client's own copy is dropped here.
    let identity = parts.headers.remove(IDENTITY_HEADER);
    if handed
        && !accept(
            h.registry.token(),
            &mut parts,
            peer.as_ref(),
            identity.as_ref(),
        )
    {
        return refusal(StatusCode::FORBIDDEN, "hand-off refused");
    }
    let body = match axum::body::to_bytes(body, gw.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => return refusal(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let key = key_of(&parts, &body);
    let span = info_span!("handoff", key = key.as_deref().unwrap_or("-"), handed);
    async {
        if let Some(key) = &key
            && let Route::Answered(resp) = route(&gw, h, key, (&parts, &body), handed).await
        {
            return resp;
        }
        serve_here(&gw, key, parts, body, next).await
    }
    .instrument(span)
    .await
}

/// Runs the request on this replica and records (or forgets) what it opened (or ended).
async fn serve_here(
    gw: &Gateway,
    key: Option<String>,
    parts: request::Parts,
    body: Bytes,
    next: Next,
) -> Response {
    let opens = parts.uri.path().starts_with("/mcp") && !parts.headers.contains_key(SESSION_HEADER);
    let ends = parts.method == Method::DELETE;
    let posts = parts.method == Method::POST;
    let resp = next.run(Request::from_parts(parts, Body::from(body))).await;
    if let Some(key) = key.as_deref().filter(|_| posts) {
        gw.settle_events(key).await;
    }
    if opens
        && let Some(sid) = resp
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
    {
        gw.own(&session_key(sid)).await;
    }
    if ends
        && resp.status().is_success()
        && let (Some(key), Some(h)) = (key, &gw.handoff)
        && let Err(e) = h.registry.forget(&key).await
    {
        debug!(error = %e, "ownership not forgotten");
    }
    resp
}

/// What a session key's owner means for this request.
enum Route {
    /// This replica serves it (it owns the key, or nobody does, or it has just claimed it from
    /// a dead owner).
    Local,
    Answered(Response),
}

async fn route(
    gw: &Gateway,
    h: &Handoff,
    key: &str,
    (parts, body): (&request::Parts, &Bytes),
    handed: bool,
) -> Route {
    let mut fresh = false;
    for _ in 0..MAX_HOPS {
        let owner = if fresh {
            h.registry.read_owner(key).await
        } else {
            h.registry.owner_of(key).await
        };
        let peer = match owner {
            Ok(Ownership::Unowned | Ownership::Mine) => return Route::Local,
            Ok(Ownership::Theirs(peer)) => peer,
            Err(e @ RegistryError::Forged(_)) => {
                warn!(error = %e, "refusing to hand a request to an unverified owner");
                let msg = "the replica that holds this session cannot be verified";
                return Route::Answered(refusal(StatusCode::BAD_GATEWAY, msg));
            }
            Err(e) => {
                // The database is away: serve here rather than fail (static stability).
                warn!(error = %e, label = e.label(), "owner lookup failed; serving here");
                return Route::Local;
            }
        };
        if handed {
            // A replica handed us something we do not own: it must look again, not us.
            let mut resp = refusal(StatusCode::MISDIRECTED_REQUEST, "not the owner");
            resp.headers_mut()
                .insert(MOVED_HEADER, HeaderValue::from_static("1"));
            return Route::Answered(resp);
        }
        let failed = match forward(h, &peer, parts, body.clone()).await {
            Ok(resp) => return Route::Answered(resp),
            Err(f) => f,
        };
        fresh = true;
        if matches!(failed, Failed::Moved) {
            continue;
        }
        let now = match h.registry.read_owner(key).await {
            Ok(Ownership::Theirs(p)) if p.id == peer.id => p,
            _ => continue,
        };
        let gone = matches!(failed, Failed::Refused) || h.registry.is_dead(&now);
        if !gone {
            let msg = "the replica that holds this session does not answer; retry";
            return Route::Answered(refusal(StatusCode::GATEWAY_TIMEOUT, msg));
        }
        // What the dead owner left (its journaled stream events) is in place before the claim
        // makes this replica the owner: a request that finds it the owner finds them too.
        gw.take_over(key).await;
        match h.registry.claim(key, &peer.id).await {
            Ok(true) => return Route::Local,
            Ok(false) => continue,
            Err(e) => {
                warn!(error = %e, label = e.label(), "cannot claim a dead replica's session");
                let msg = "the replica that held this session is gone; retry";
                return Route::Answered(refusal(StatusCode::SERVICE_UNAVAILABLE, msg));
            }
        }
    }
    let msg = "the session's owner keeps changing; retry";
    Route::Answered(refusal(StatusCode::SERVICE_UNAVAILABLE, msg))
}

/// The ownership key a request names: its session (header, or `sessionId` on legacy POSTs),
/// else the parked call its `requestState` names.
fn key_of(parts: &request::Parts, body: &Bytes) -> Option<String> {
    let path = parts.uri.path();
    if path == "/mcp" || path.starts_with("/mcp/") {
        if let Some(sid) = parts.headers.get(SESSION_HEADER) {
            return sid.to_str().ok().map(session_key);
        }
        if parts.method == Method::POST {
            return parked_state(body).map(|s| parked_key(&s));
        }
        return None;
    }
    if path == "/messages" || path.starts_with("/messages/") {
        let query = parts.uri.query()?;
        // Session ids are plain hex: no percent-decoding needed to find one.
        return query
            .split('&')
            .find_map(|kv| kv.strip_prefix("sessionId="))
            .map(session_key);
    }
    None
}

/// A gateway-sealed `requestState` in a JSON-RPC request body (read only when the body names
/// one, so other requests are not parsed here).
fn parked_state(body: &[u8]) -> Option<String> {
    let needle = b"\"requestState\"";
    if !body.windows(needle.len()).any(|w| w == needle) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let state = v.get("params")?.get("requestState")?.as_str()?;
    state.starts_with(STATE_PREFIX).then(|| state.to_owned())
}

/// What one hand-off signature covers.
struct Signed<'a> {
    ms: &'a str,
    from: &'a str,
    method: &'a str,
    target: &'a str,
    peer: &'a str,
    /// The encoded certificate identity, empty when the client had none.
    identity: &'a str,
}

impl Signed<'_> {
    fn parts(&self) -> [&str; 7] {
        [
            "reflow-handoff",
            self.ms,
            self.from,
            self.method,
            self.target,
            self.peer,
            self.identity,
        ]
    }
}

/// A verified certificate identity as it travels: hex of `{"user", "groups", "roles"}`.
fn encode_identity(id: &Identity) -> String {
    let v = serde_json::json!({"user": &*id.user, "groups": &*id.groups, "roles": &*id.roles});
    hex::encode(v.to_string())
}

fn decode_identity(value: &str) -> Option<Identity> {
    let v: serde_json::Value = serde_json::from_slice(&hex::decode(value).ok()?).ok()?;
    let names = |key: &str| -> Option<Vec<String>> {
        v.get(key)?
            .as_array()?
            .iter()
            .map(|g| g.as_str().map(str::to_owned))
            .collect()
    };
    let user = v.get("user")?.as_str()?.to_owned();
    Some(Identity::new(user, names("groups")?, names("roles")?))
}

/// Verifies a handed-off request's signature and age (`false`: refuse it); on success the
/// request carries the client's address (for token source ranges) instead of the handing
/// replica's, and the identity of the client certificate the handing replica verified, if
/// any, as if the client had presented it here.
fn accept(
    token: &ReplicaToken,
    parts: &mut request::Parts,
    peer: Option<&HeaderValue>,
    identity: Option<&HeaderValue>,
) -> bool {
    let Some(value) = parts
        .headers
        .remove(HANDOFF_HEADER)
        .and_then(|v| v.to_str().ok().map(str::to_owned))
    else {
        return false;
    };
    let mut fields = value.splitn(4, '.');
    let (Some("v1"), Some(ms), Some(from), Some(sig)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        warn!("malformed hand-off header; refused");
        return false;
    };
    let peer = peer.and_then(|v| v.to_str().ok()).unwrap_or_default();
    let identity = identity.and_then(|v| v.to_str().ok()).unwrap_or_default();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let fresh = ms
        .parse::<u64>()
        .is_ok_and(|t| t.abs_diff(now_ms()) <= MAX_SKEW_MS);
    let method = parts.method.as_str().to_owned();
    let signed = Signed {
        ms,
        from,
        method: &method,
        target,
        peer,
        identity,
    };
    if !fresh || !token.verify(&signed.parts(), sig) {
        warn!(from, "hand-off with a bad or stale signature; refused");
        return false;
    }
    let cert = if identity.is_empty() {
        None
    } else {
        match decode_identity(identity) {
            Some(id) => Some(Arc::new(id)),
            None => {
                warn!(from, "hand-off with an unreadable identity; refused");
                return false;
            }
        }
    };
    let addr = peer.parse().ok().or_else(|| {
        parts
            .extensions
            .get::<ConnectInfo<PeerAddr>>()
            .map(|c| c.0.addr)
    });
    if let Some(addr) = addr {
        parts
            .extensions
            .insert(ConnectInfo(PeerAddr { addr, cert }));
    }
    true
}

/// Headers that describe one connection, not the message: never handed on.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
    )
}

/// The request's headers as handed on, with the signed hand-off headers added.
fn handed_headers(token: &ReplicaToken, me: &str, parts: &request::Parts) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 3);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let connected = parts.extensions.get::<ConnectInfo<PeerAddr>>();
    let peer = connected.map(|c| c.0.addr.to_string()).unwrap_or_default();
    let identity = connected
        .and_then(|c| c.0.cert.as_deref())
        .map(encode_identity)
        .unwrap_or_default();
    let ms = now_ms().to_string();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let signed = Signed {
        ms: &ms,
        from: me,
        method: parts.method.as_str(),
        target,
        peer: &peer,
        identity: &identity,
    };
    let sig = token.sign(&signed.parts());
    if let Ok(v) = HeaderValue::from_str(&format!("v1.{ms}.{me}.{sig}")) {
        headers.insert(HANDOFF_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&peer) {
        headers.insert(PEER_HEADER, v);
    }
    if !identity.is_empty()
        && let Ok(v) = HeaderValue::from_str(&identity)
    {
        headers.insert(IDENTITY_HEADER, v);
    }
    headers
}

/// Sends the request to `peer` and streams its answer back. While the answer's headers are
/// awaited, the owner's heartbeat is watched: a dead owner ends the wait early.
async fn forward(
    h: &Handoff,
    peer: &Peer,
    parts: &request::Parts,
    body: Bytes,
) -> Result<Response, Failed> {
    if peer.address.is_empty() {
        return Err(Failed::Refused);
    }
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{}", peer.address.trim_end_matches('/'), target);
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .map_err(|_| Failed::NoAnswer)?;
    let send = h
        .http
        .request(method, url)
        .headers(handed_headers(h.registry.token(), h.registry.id(), parts))
        .body(body)
        .send();
    let watch = watch_owner(h, peer);
    let answer = tokio::select! {
        r = tokio::time::timeout(h.response_timeout, send) => r,
        () = watch => return Err(Failed::NoAnswer),
    };
    let resp = match answer {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if connection_refused(&e) => {
            debug!(owner = %peer.id, error = %e, "owner refused the hand-off");
            return Err(Failed::Refused);
        }
        Ok(Err(e)) => {
            debug!(owner = %peer.id, error = %e, "hand-off failed");
            return Err(Failed::NoAnswer);
        }
        Err(_) => return Err(Failed::NoAnswer),
    };
    if resp.status() == StatusCode::MISDIRECTED_REQUEST && resp.headers().contains_key(MOVED_HEADER)
    {
        return Err(Failed::Moved);
    }
    let mut out = Response::builder().status(resp.status().as_u16());
    if let Some(headers) = out.headers_mut() {
        for (name, value) in resp.headers() {
            if !hop_by_hop(name) {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    out.body(Body::from_stream(resp.bytes_stream()))
        .map_err(|_| Failed::NoAnswer)
}

/// Whether nothing listened at the owner's address (the kernel refused the connection): a
/// process that is gone. A TLS failure or a timeout is not that, and leaves the owner alone
/// until its heartbeat says otherwise.
fn connection_refused(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Resolves once `peer` is dead by its heartbeat (polled at half the dead-after interval).
async fn watch_owner(h: &Handoff, peer: &Peer) {
    let every = h.registry.settings().dead_after / 2;
    loop {
        tokio::time::sleep(every).await;
        match h.registry.peer(&peer.id).await {
            Ok(Some(p)) if !h.registry.is_dead(&p) => {}
            Ok(_) => return,
            Err(e) => debug!(error = %e, "cannot read the owner's heartbeat"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = axum::http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn token(secret: &str) -> ReplicaToken {
        ReplicaToken::new(secrecy::SecretString::from(secret.to_owned()))
    }

    /// A request as replica `a` hands it on, its client having presented `cert`.
    fn handed(t: &ReplicaToken, cert: Option<Identity>) -> (request::Parts, HeaderMap) {
        let mut p = parts(Method::POST, "/mcp", &[("mcp-session-id", "abc")]);
        let addr = "10.1.2.3:4567".parse().unwrap();
        p.extensions.insert(ConnectInfo(PeerAddr {
            addr,
            cert: cert.map(Arc::new),
        }));
        let headers = handed_headers(t, "a", &p);
        (parts(Method::POST, "/mcp", &[]), headers)
    }

    /// What the owner makes of `headers`: `None` when refused, else the certificate identity.
    fn received(t: &ReplicaToken, headers: &HeaderMap) -> Option<Option<Identity>> {
        let mut p = parts(Method::POST, "/mcp", &[]);
        p.headers = headers.clone();
        let peer = p.headers.remove(PEER_HEADER);
        let identity = p.headers.remove(IDENTITY_HEADER);
        if !accept(t, &mut p, peer.as_ref(), identity.as_ref()) {
            return None;
        }
        let c = p.extensions.get::<ConnectInfo<PeerAddr>>().expect("peer");
        assert_eq!(c.0.addr.to_string(), "10.1.2.3:4567");
        Some(c.0.cert.as_deref().cloned())
    }

    #[test]
    fn a_verified_certificate_identity_travels_only_under_a_signature_that_covers_it() {
        let t = token("replica-token-0123456789");
        let alice = Identity::new("alice", ["ops", "dev"], ["admin"]);
        // Signed with the identity: the owner sees the certificate's user, groups and roles.
        let (_, headers) = handed(&t, Some(alice.clone()));
        assert!(headers.contains_key(IDENTITY_HEADER));
        assert_eq!(received(&t, &headers), Some(Some(alice)));
        // A hand-off without a certificate carries none.
        let (_, plain) = handed(&t, None);
        assert!(!plain.contains_key(IDENTITY_HEADER));
        assert_eq!(received(&t, &plain), Some(None));
        // An identity added to (or swapped into) a signed hand-off is refused.
        let mallory = encode_identity(&Identity::new("mallory", ["ops"], Vec::<String>::new()));
        let mut forged = plain.clone();
        forged.insert(IDENTITY_HEADER, HeaderValue::from_str(&mallory).unwrap());
        assert_eq!(received(&t, &forged), None);
        let mut swapped = headers.clone();
        swapped.insert(IDENTITY_HEADER, HeaderValue::from_str(&mallory).unwrap());
        assert_eq!(received(&t, &swapped), None);
        // Signed with another token: refused.
        let (_, theirs) = handed(&token("not-the-replica-token-000"), Some(alice_again()));
        assert_eq!(received(&t, &theirs), None);
    }

    fn alice_again() -> Identity {
        Identity::new("alice", ["ops"], Vec::<String>::new())
    }

    #[test]
    fn identities_round_trip_and_garbage_does_not_decode() {
        let id = Identity::new("bob", ["b", "a"], ["r"]);
        assert_eq!(decode_identity(&encode_identity(&id)), Some(id));
        assert_eq!(decode_identity("zz"), None);
        assert_eq!(decode_identity(&hex::encode("{\"user\": 1}")), None);
    }

    #[test]
    fn keys_name_sessions_legacy_sessions_and_parked_states() {
        let p = parts(Method::GET, "/mcp", &[("mcp-session-id", "abc")]);
        assert_eq!(key_of(&p, &Bytes::new()).as_deref(), Some("s:abc"));
        let p = parts(Method::POST, "/messages/ns/t?sessionId=xyz", &[]);
        assert_eq!(key_of(&p, &Bytes::new()).as_deref(), Some("s:xyz"));
        let p = parts(Method::POST, "/mcp", &[]);
        let body = Bytes::from(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"requestState":"reflow1.zzz"}}"#,
        );
        assert_eq!(key_of(&p, &body), Some(parked_key("reflow1.zzz")));
        let foreign = Bytes::from(r#"{"params":{"requestState":"upstream-own"}}"#);
        assert_eq!(key_of(&p, &foreign), None);
        assert_eq!(key_of(&p, &Bytes::from("{not json")), None);
        let p = parts(Method::GET, "/healthz", &[("mcp-session-id", "abc")]);
        assert_eq!(key_of(&p, &Bytes::new()), None);
    }
}
