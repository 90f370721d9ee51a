//! Console logins that any replica can read: the cookie is the login itself, sealed (AES-256-GCM)
//! with the deployment's sealing key, which every replica shares, and bound by its AAD to this
//! use. It carries who logged in, their admin bit, the login's CSRF token, a random login id
//! and the expiry. Logout records the login id as revoked ([`Revocations`]: in Postgres when
//! there is one, so a logged-out cookie replayed on another replica is refused; in memory
//! otherwise). The OIDC login in flight is sealed the same way into its own short-lived cookie.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rand::RngExt;
use reflow_crds::seal::SealedValue;
use reflow_crds::{Identity, SealingKey};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::revoked::Revocations;

/// How long a user has at the IdP.
pub const PENDING_TTL: Duration = Duration::from_secs(600);
/// The AAD of login cookies: a value sealed for another use never opens as a login.
const LOGIN_AAD: &str = "reflow/console-login/v1";
const PENDING_AAD: &str = "reflow/console-oidc-pending/v1";
/// Cookies above this are not set (browsers keep about 4 KiB per cookie): claims are dropped
/// from the login first.
const MAX_COOKIE: usize = 3800;

/// 256 random bits, base64url without padding.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Equal without leaking where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A logged-in user, as the sealed cookie carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Login {
    /// Random per login: what logout revokes.
    pub id: String,
    #[serde(with = "identity_wire")]
    pub identity: Identity,
    pub admin: bool,
    pub csrf: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// An OIDC login between the redirect to the IdP and the callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub state: String,
    pub verifier: String,
    pub nonce: String,
    pub exp: u64,
}

/// Seals and opens console cookies.
pub struct Logins {
    key: SealingKey,
    ttl: Duration,
    revoked: Revocations,
}

fn seal<T: Serialize>(key: &SealingKey, aad: &str, value: &T) -> String {
    let json = serde_json::to_string(value).unwrap_or_default();
    key.seal(aad, &json).sealed
}

fn open<T: DeserializeOwned>(key: &SealingKey, aad: &str, cookie: &str) -> Option<T> {
    if cookie.is_empty() || cookie.len() > 8 * 1024 {
        return None;
    }
    let value = SealedValue {
        sealed: cookie.to_owned(),
        digest: String::new(),
    };
    let plain = key.open(aad, &value).ok()?;
    serde_json::from_str(plain.expose_secret()).ok()
}

impl Logins {
    pub fn new(key: SealingKey, ttl: Duration, revoked: Revocations) -> Self {
        Self { key, ttl, revoked }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new login (fresh id and CSRF token) and its cookie value.
    pub fn create(&self, identity: Identity, admin: bool) -> (String, Login) {
        let mut login = Login {
            id: random_token(),
            identity,
            admin,
            csrf: random_token(),
            exp: unix_now() + self.ttl.as_secs(),
        };
        let mut cookie = seal(&self.key, LOGIN_AAD, &login);
        if cookie.len() > MAX_COOKIE {
            // Raw claims only serve Policy conditions on claims; user, groups and roles stay.
            login.identity.claims = reflow_crds::Claims::default();
            cookie = seal(&self.key, LOGIN_AAD, &login);
        }
        (cookie, login)
    }

    /// The login a cookie carries, if it opens with this deployment's key, has not expired and
    /// was not logged out.
    pub async fn get(&self, cookie: &str) -> Option<Login> {
        let login: Login = open(&self.key, LOGIN_AAD, cookie)?;
        if login.exp <= unix_now() {
            return None;
        }
        if self.revoked.is_revoked(&login.id).await {
            return None;
        }
        Some(login)
    }

    /// Logs `login` out on every replica (until its cookie would have expired anyway).
    pub async fn remove(&self, login: &Login) {
        self.revoked.revoke(&login.id, login.exp).await;
    }

    /// A new OIDC login in flight and its cookie value.
    pub fn start(&self, state: String, verifier: String, nonce: String) -> String {
        let pending = Pending {
            state,
            verifier,
            nonce,
            exp: unix_now() + PENDING_TTL.as_secs(),
        };
        seal(&self.key, PENDING_AAD, &pending)
    }

    /// The login in flight the cookie carries for `state`, once: a replayed callback (on this
    /// replica or another) finds it used.
    pub async fn finish(&self, cookie: &str, state: &str) -> Option<Pending> {
        let p: Pending = open(&self.key, PENDING_AAD, cookie)?;
        if !same(&p.state, state) || p.exp <= unix_now() {
            return None;
        }
        let key = format!(
            "state:{}",
            hex::encode(self.key.mac("console-oidc-state", state.as_bytes()))
        );
        self.revoked.take_once(&key, p.exp).await.then_some(p)
    }
}

/// The identity's wire form inside the cookie (`Identity` itself is not serialised elsewhere).
mod identity_wire {
    use reflow_crds::Identity;
    use reflow_crds::identity::Claims;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Wire {
        u: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        e: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        n: Option<String>,
        #[serde(default)]
        g: Vec<String>,
        #[serde(default)]
        r: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        c: Option<serde_json::Map<String, serde_json::Value>>,
    }

    pub fn serialize<S: Serializer>(id: &Identity, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            u: id.user.to_string(),
            e: id.email.as_deref().map(str::to_owned),
            n: id.name.as_deref().map(str::to_owned),
            g: id.groups.iter().map(|g| g.to_string()).collect(),
            r: id.roles.iter().map(|r| r.to_string()).collect(),
            c: id.claims.map().cloned(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Identity, D::Error> {
        let w = Wire::deserialize(d)?;
        let mut id = Identity::new(w.u, w.g, w.r);
        id.email = w.e.map(Into::into);
        id.name = w.n.map(Into::into);
        if let Some(c) = w.c {
            id.claims = Claims::new(c);
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logins(ttl: u64) -> Logins {
        Logins::new(
            SealingKey::from_bytes(&[7; 32]),
            Duration::from_secs(ttl),
            Revocations::new(None),
        )
    }

    fn alice() -> Identity {
        Identity::new("alice", vec!["eng".to_owned()], Vec::<String>::new())
    }

    #[tokio::test]
    async fn logins_are_fresh_sealed_and_revocable() {
        let logins = logins(60);
        let (a, la) = logins.create(alice(), false);
        let (b, lb) = logins.create(alice(), true);
        assert_ne!(a, b);
        assert_ne!(la.csrf, lb.csrf);
        assert!(!a.contains("alice"), "sealed, not readable");
        let got = logins.get(&a).await.expect("opens");
        assert_eq!(&*got.identity.user, "alice");
        assert_eq!(got.identity.groups.len(), 1);
        assert!(!got.admin && logins.get(&b).await.is_some_and(|l| l.admin));
        logins.remove(&got).await;
        assert!(logins.get(&a).await.is_none(), "logged out");
        assert!(logins.get(&b).await.is_some(), "the other login lives on");
        assert!(logins.get("made-up").await.is_none());
    }

    #[tokio::test]
    async fn tampered_expired_and_foreign_cookies_are_nobody() {
        let logins = logins(60);
        let (cookie, _) = logins.create(alice(), true);
        let mut bytes = cookie.clone().into_bytes();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        assert!(logins.get(&tampered).await.is_none());
        let other = Logins::new(
            SealingKey::from_bytes(&[8; 32]),
            Duration::from_secs(60),
            Revocations::new(None),
        );
        assert!(
            other.get(&cookie).await.is_none(),
            "another deployment's key"
        );
        let (expired, _) = self::logins(0).create(alice(), false);
        assert!(logins.get(&expired).await.is_none());
        // A pending-login cookie is not a login (another AAD).
        let pending = logins.start("s".into(), "v".into(), "n".into());
        assert!(logins.get(&pending).await.is_none());
    }

    #[tokio::test]
    async fn a_pending_login_is_taken_once_and_only_for_its_state() {
        let logins = logins(60);
        let cookie = logins.start("s".into(), "v".into(), "n".into());
        assert!(logins.finish(&cookie, "other").await.is_none());
        let p = logins.finish(&cookie, "s").await.expect("first");
        assert_eq!((p.verifier.as_str(), p.nonce.as_str()), ("v", "n"));
        assert!(logins.finish(&cookie, "s").await.is_none(), "replay");
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
