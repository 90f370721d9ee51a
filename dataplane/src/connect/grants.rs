//! The standalone lifecycle of oauth2 grants: refresh before expiry (one refresher loop; a lock
//! per grant, so a rotating refresh token is never used twice at once), an immediate refresh
//! when an upstream answers 401, and disconnect (revoke at the AS where it offers RFC 7009,
//! then forget). Every refresh, failure and disconnect is audited; no token is ever logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use reflow_oauth::OAuthHttp;
use tracing::{info, warn};

use super::ConnectError;
use super::grant::OpenGrant;
use super::store::{Connection, ConnectionStore, Slot};
use crate::audit::{AuditEvent, AuditSink};

/// How often the refresher looks at the store.
const TICK: Duration = Duration::from_secs(1);
/// Refresh this long before expiry at most (a third of the lifetime for short-lived tokens).
const MAX_MARGIN_MS: u64 = 60_000;

type GrantKey = (String, String, String);

/// What a refresh did.
#[derive(Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// A new access token is stored.
    Renewed,
    /// Someone else renewed it after `since_ms`; nothing to do.
    AlreadyFresh,
    /// Not an oauth2 connection, or none at all.
    NotFound,
}

/// What a disconnect did.
#[derive(Debug, PartialEq, Eq)]
pub struct Disconnected {
    /// There was a connection (now gone).
    pub existed: bool,
    /// `Some(true)`: revoked at the AS; `Some(false)`: the AS refused or failed (the local
    /// grant is forgotten anyway); `None`: nothing to revoke (no endpoint, or mode `secret`).
    pub revoked: Option<bool>,
}

/// Refreshes and disconnects the grants in one store.
pub struct Grants {
    store: ConnectionStore,
    http: OAuthHttp,
    audit: Arc<dyn AuditSink>,
    locks: Mutex<HashMap<GrantKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Grants whose last background refresh failed: not tried again before this time (ms).
    backoff: Mutex<HashMap<GrantKey, u64>>,
}

/// How long the refresher leaves a grant alone after a failed refresh.
const RETRY_AFTER_MS: u64 = 10_000;

fn key(ns: &str, target: &str, user: &str) -> GrantKey {
    (ns.to_owned(), target.to_owned(), user.to_owned())
}

fn now_ms() -> u64 {
    u64::try_from(crate::audit::now_ms()).unwrap_or(u64::MAX)
}

/// When `c` should be refreshed (None: never, it does not expire or is not oauth2).
pub fn refresh_due_ms(c: &Connection) -> Option<u64> {
    let g = c.oauth.as_ref()?;
    let expires = g.expires_at_ms?;
    let lifetime = expires.saturating_sub(g.issued_at_ms);
    let margin = (lifetime / 3).min(MAX_MARGIN_MS);
    Some(expires.saturating_sub(margin))
}

impl Grants {
    pub fn new(store: ConnectionStore, http: OAuthHttp, audit: Arc<dyn AuditSink>) -> Arc<Self> {
        Arc::new(Self {
            store,
            http,
            audit,
            locks: Mutex::default(),
            backoff: Mutex::default(),
        })
    }

    pub fn store(&self) -> &ConnectionStore {
        &self.store
    }

    pub fn http(&self) -> &OAuthHttp {
        &self.http
    }

    fn lock_of(&self, k: &GrantKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(k.clone()).or_default().clone()
    }

    pub(crate) fn audit(&self, c: (&str, &str, &str), outcome: &str) {
        self.audit.record(AuditEvent {
            id: crate::audit::new_event_id(),
            time_ms: crate::audit::now_ms(),
            user: c.2.to_owned(),
            session: None,
            method: "connect".to_owned(),
            target: Some(format!("{}/{}", c.0, c.1)),
            name: None,
            decision: None,
            policy: None,
            outcome: outcome.to_owned(),
            duration_ms: 0.0,
            trace_id: String::new(),
        });
    }

    /// Refreshes one grant now, unless it was renewed after `since_ms` (a caller that saw a 401
    /// with an older token passes when its call started; the refresher passes `None`).
    pub async fn refresh(
        &self,
        ns: &str,
        target: &str,
        user: &str,
        since_ms: Option<u64>,
    ) -> Result<Refreshed, ConnectError> {
        let k = key(ns, target, user);
        let lock = self.lock_of(&k);
        let _held = lock.lock().await;
        // Read under the lock: the previous holder may have rotated the refresh token.
        let Some(c) = self.store.get(ns, target, user) else {
            return Ok(Refreshed::NotFound);
        };
        if since_ms.is_some_and(|s| c.connected_at_ms > s) {
            return Ok(Refreshed::AlreadyFresh);
        }
        if since_ms.is_none() && refresh_due_ms(&c).is_none_or(|due| due > now_ms()) {
            return Ok(Refreshed::AlreadyFresh);
        }
        let Some(grant) = self.store.open_grant(&c)? else {
            return Ok(Refreshed::NotFound);
        };
        let Some(refresh_token) = grant.refresh_token.as_ref() else {
            self.audit((ns, target, user), "refresh_unavailable");
            return Err(ConnectError::OAuth("the grant has no refresh token".into()));
        };
        let client = grant.token_client(&self.http)?;
        let resource = Some(grant.origin.resource.as_str());
        match client.refresh(refresh_token, &[], resource).await {
            Ok(token) => {
                let slot = Slot {
                    inject_as: c.inject_as,
                    name: &c.name,
                    prefix: &c.prefix,
                };
                self.store.put_grant(
                    (ns, target, user),
                    &slot,
                    &grant.origin,
                    &token,
                    Some(refresh_token),
                )?;
                self.audit((ns, target, user), "refreshed");
                info!(user, target = %format!("{ns}/{target}"), "refreshed a user's upstream grant");
                Ok(Refreshed::Renewed)
            }
            Err(e) if e.is_invalid_grant() => {
                // Revoked or expired at the AS: the user must connect again.
                self.store.remove(ns, target, user)?;
                self.audit((ns, target, user), "refresh_invalid_grant");
                warn!(user, target = %format!("{ns}/{target}"), "a user's upstream grant is no longer valid; removed");
                Err(ConnectError::OAuth(e.to_string()))
            }
            Err(e) => {
                self.audit((ns, target, user), "refresh_failed");
                warn!(user, target = %format!("{ns}/{target}"), error = %e, label = e.label(), "refreshing a user's upstream grant failed");
                Err(ConnectError::OAuth(e.to_string()))
            }
        }
    }

    /// Forgets `user`'s connection to a Target, revoking an oauth2 grant at the AS first where
    /// it offers RFC 7009 (the refresh token, which ends the whole grant; else the access token).
    pub async fn disconnect(
        &self,
        ns: &str,
        target: &str,
        user: &str,
    ) -> Result<Disconnected, ConnectError> {
        let k = key(ns, target, user);
        let lock = self.lock_of(&k);
        let _held = lock.lock().await;
        let Some(c) = self.store.get(ns, target, user) else {
            return Ok(Disconnected {
                existed: false,
                revoked: None,
            });
        };
        let grant: Option<OpenGrant> = self.store.open_grant(&c).unwrap_or_default();
        let mut revoked = None;
        if let Some(g) = grant.filter(|g| g.origin.revocation_endpoint.is_some()) {
            let client = g.token_client(&self.http)?;
            let (token, hint) = match &g.refresh_token {
                Some(r) => (r, "refresh_token"),
                None => (&g.access_token, "access_token"),
            };
            let ok = match client.revoke(token, Some(hint)).await {
                Ok(()) => true,
                Err(e) => {
                    warn!(user, target = %format!("{ns}/{target}"), error = %e, "revoking a user's upstream grant failed; forgetting it anyway");
                    false
                }
            };
            revoked = Some(ok);
        }
        let existed = self.store.remove(ns, target, user)?;
        self.audit(
            (ns, target, user),
            match revoked {
                Some(true) => "disconnected_revoked",
                Some(false) => "disconnected_revoke_failed",
                None => "disconnected",
            },
        );
        Ok(Disconnected { existed, revoked })
    }

    /// The refresher: each tick, every grant whose refresh is due is refreshed (one at a time
    /// per grant). Stops when the `Grants` is dropped.
    pub fn spawn_refresher(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        let weak: Weak<Self> = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                let now = now_ms();
                for c in me.store.all() {
                    if refresh_due_ms(&c).is_none_or(|due| due > now) {
                        continue;
                    }
                    let k = key(&c.namespace, &c.target, &c.user);
                    let waiting = me
                        .backoff
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&k)
                        .is_some_and(|until| *until > now);
                    if waiting {
                        continue;
                    }
                    let failed = me
                        .refresh(&c.namespace, &c.target, &c.user, None)
                        .await
                        .is_err();
                    let mut backoff = me.backoff.lock().unwrap_or_else(|p| p.into_inner());
                    if failed {
                        backoff.insert(k, now + RETRY_AFTER_MS);
                    } else {
                        backoff.remove(&k);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use reflow_crds::SealingKey;
    use reflow_crds::snapshot::InjectAs;
    use reflow_oauth::{ClientAuth, SecretString, TokenResponse};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::audit::MemorySink;
    use crate::connect::GrantOrigin;

    /// A token endpoint that rotates refresh tokens (`rt-N`), refuses a refresh token used twice
    /// with `invalid_grant`, and accepts revocations; counts requests by path.
    async fn rotating_as() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tokens, revokes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (t, r) = (tokens.clone(), revokes.clone());
        let used = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (t, r, used) = (t.clone(), r.clone(), used.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut n = 0;
                    loop {
                        let k = sock.read(&mut buf[n..]).await.unwrap_or(0);
                        n += k;
                        let text = String::from_utf8_lossy(&buf[..n]).to_string();
                        if k == 0
                            || text.contains("\r\n\r\n")
                                && text.split("\r\n\r\n").nth(1).is_some_and(|b| !b.is_empty())
                        {
                            break;
                        }
                    }
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let body = if req.starts_with("POST /revoke") {
                        r.fetch_add(1, Ordering::SeqCst);
                        String::new()
                    } else {
                        let presented = req
                            .split("refresh_token=")
                            .nth(1)
                            .unwrap_or("")
                            .split('&')
                            .next()
                            .unwrap_or("")
                            .to_owned();
                        if !used.lock().unwrap().insert(presented) {
                            let b = r#"{"error":"invalid_grant"}"#;
                            let _ = sock
                                .write_all(
                                    format!(
                                        "HTTP/1.1 400 X\r\ncontent-length: {}\r\n\r\n{b}",
                                        b.len()
                                    )
                                    .as_bytes(),
                                )
                                .await;
                            return;
                        }
                        let i = t.fetch_add(1, Ordering::SeqCst) + 1;
                        format!(
                            r#"{{"access_token":"at-{i}","expires_in":60,"refresh_token":"rt-{i}"}}"#
                        )
                    };
                    let _ = sock
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });
        (base, tokens, revokes)
    }

    #[tokio::test]
    async fn one_refresh_at_a_time_per_grant_and_disconnect_revokes() {
        let (base, tokens, revokes) = rotating_as().await;
        let dir = std::env::temp_dir().join(format!("reflow-grants-{}", uuid::Uuid::new_v4()));
        let store = ConnectionStore::in_manifests(&dir, SealingKey::from_bytes(&[9; 32]));
        let slot = Slot {
            inject_as: InjectAs::Header,
            name: "authorization",
            prefix: "Bearer ",
        };
        let origin = GrantOrigin {
            issuer: base.clone(),
            token_endpoint: format!("{base}/token"),
            revocation_endpoint: Some(format!("{base}/revoke")),
            client: ClientAuth::None {
                client_id: "reflow".into(),
            },
            resource: "http://127.0.0.1:1/mcp".into(),
            scopes: vec![],
        };
        let first: TokenResponse = serde_json::from_str(
            r#"{"access_token":"at-0","expires_in":60,"refresh_token":"rt-0"}"#,
        )
        .unwrap();
        store
            .put_grant(("ns", "t", "alice"), &slot, &origin, &first, None)
            .unwrap();
        let audit = MemorySink::default();
        let grants = Grants::new(store.clone(), OAuthHttp::default(), Arc::new(audit.clone()));

        // Two callers saw a 401 with the same token at the same time: one refresh, not two
        // (a second use of the rotated refresh token would be `invalid_grant` and kill the grant).
        let since = now_ms();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (a, b) = tokio::join!(
            grants.refresh("ns", "t", "alice", Some(since)),
            grants.refresh("ns", "t", "alice", Some(since)),
        );
        let mut outcomes = vec![a.unwrap(), b.unwrap()];
        outcomes.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(outcomes, vec![Refreshed::AlreadyFresh, Refreshed::Renewed]);
        assert_eq!(tokens.load(Ordering::SeqCst), 1);
        let g = store
            .open_grant(&store.get("ns", "t", "alice").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(g.access_token.expose(), "at-1");
        assert_eq!(g.refresh_token.unwrap().expose(), "rt-1");
        // Not due yet: the background path leaves it alone.
        assert_eq!(
            grants.refresh("ns", "t", "alice", None).await.unwrap(),
            Refreshed::AlreadyFresh
        );

        let d = grants.disconnect("ns", "t", "alice").await.unwrap();
        assert_eq!(
            d,
            Disconnected {
                existed: true,
                revoked: Some(true)
            }
        );
        assert_eq!(revokes.load(Ordering::SeqCst), 1);
        assert!(store.get("ns", "t", "alice").is_none());
        assert!(!grants.disconnect("ns", "t", "alice").await.unwrap().existed);
        let outcomes: Vec<String> = audit.events().into_iter().map(|e| e.outcome).collect();
        assert_eq!(outcomes, ["refreshed", "disconnected_revoked"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    trait Expose {
        fn expose(&self) -> &str;
    }

    impl Expose for SecretString {
        fn expose(&self) -> &str {
            secrecy::ExposeSecret::expose_secret(self)
        }
    }
}
