//! `mode: oauth2` connections: the access token is the connection's value (injected like any
//! user-brought value); beside it the store keeps what refreshing and revoking need — the
//! authorization server's endpoints, the client, the refresh token and the expiry — with the
//! client secret and the refresh token sealed under the owner's AAD (their own tiers).

use reflow_crds::seal::SealedValue;
use reflow_oauth::{ClientAuth, OAuthHttp, SecretString, TokenClient, TokenResponse};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::ConnectError;
use super::store::{Connection, ConnectionStore, Slot, aad, valid_value};

/// What a stored oauth2 connection carries besides its access token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StoredGrant {
    pub issuer: String,
    pub token_endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    pub client_id: String,
    /// `none`, `client_secret_basic` or `client_secret_post`.
    pub client_auth: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret: Option<SealedValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<SealedValue>,
    /// When the access token was issued / expires (ms since the epoch).
    pub issued_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    pub resource: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// Where a grant came from: the AS and the client the gateway used there.
#[derive(Clone, Debug)]
pub struct GrantOrigin {
    pub issuer: String,
    pub token_endpoint: String,
    pub revocation_endpoint: Option<String>,
    pub client: ClientAuth,
    pub resource: String,
    pub scopes: Vec<String>,
}

/// A stored grant opened for use (secrets redacted in `Debug`).
#[derive(Debug)]
pub struct OpenGrant {
    pub origin: GrantOrigin,
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub issued_at_ms: u64,
    pub expires_at_ms: Option<u64>,
}

impl OpenGrant {
    /// A token client for this grant's AS.
    pub fn token_client(&self, http: &OAuthHttp) -> Result<TokenClient, ConnectError> {
        TokenClient::new(
            http.clone(),
            &self.origin.token_endpoint,
            self.origin.revocation_endpoint.as_deref(),
            self.origin.client.clone(),
        )
        .map_err(|e| ConnectError::OAuth(e.to_string()))
    }
}

fn tier(ns: &str, target: &str, user: &str, what: &str) -> String {
    format!("{}/{what}", aad(ns, target, user))
}

fn now_ms() -> u64 {
    u64::try_from(crate::audit::now_ms()).unwrap_or(u64::MAX)
}

impl ConnectionStore {
    /// Stores (or replaces) `user`'s oauth2 grant for a Target: the access token as the
    /// connection's value, the refresh token (`previous_refresh` when the AS rotated none) and
    /// the client secret sealed beside it.
    pub fn put_grant(
        &self,
        (ns, target, user): (&str, &str, &str),
        slot: &Slot<'_>,
        origin: &GrantOrigin,
        token: &TokenResponse,
        previous_refresh: Option<&SecretString>,
    ) -> Result<(), ConnectError> {
        if !valid_value(token.access_token.expose_secret()) {
            return Err(ConnectError::BadValue);
        }
        let now = now_ms();
        let refresh = token.refresh_token.as_ref().or(previous_refresh);
        let secret = match &origin.client {
            ClientAuth::None { .. } => None,
            ClientAuth::Basic { secret, .. } | ClientAuth::Post { secret, .. } => Some(
                self.key
                    .seal(&tier(ns, target, user, "client"), secret.expose_secret()),
            ),
        };
        let c = Connection {
            namespace: ns.to_owned(),
            target: target.to_owned(),
            user: user.to_owned(),
            inject_as: slot.inject_as,
            name: slot.name.to_owned(),
            prefix: slot.prefix.to_owned(),
            connected_at_ms: now,
            value: self
                .key
                .seal(&aad(ns, target, user), token.access_token.expose_secret()),
            oauth: Some(StoredGrant {
                issuer: origin.issuer.clone(),
                token_endpoint: origin.token_endpoint.clone(),
                revocation_endpoint: origin.revocation_endpoint.clone(),
                client_id: origin.client.client_id().to_owned(),
                client_auth: origin.client.method().to_owned(),
                client_secret: secret,
                refresh_token: refresh.map(|r| {
                    self.key
                        .seal(&tier(ns, target, user, "refresh"), r.expose_secret())
                }),
                issued_at_ms: now,
                expires_at_ms: token
                    .expires_in
                    .map(|s| now.saturating_add(s.saturating_mul(1000))),
                resource: origin.resource.clone(),
                scopes: origin.scopes.clone(),
            }),
        };
        self.write(&c)
    }

    /// Opens `c`'s grant (None: not an oauth2 connection).
    pub fn open_grant(&self, c: &Connection) -> Result<Option<OpenGrant>, ConnectError> {
        let Some(g) = &c.oauth else {
            return Ok(None);
        };
        let (ns, t, u) = (&c.namespace, &c.target, &c.user);
        let open =
            |aad: &str, v: &SealedValue| self.key.open(aad, v).map_err(|_| ConnectError::Sealed);
        let access = open(&aad(ns, t, u), &c.value)?;
        let refresh = g
            .refresh_token
            .as_ref()
            .map(|v| open(&tier(ns, t, u, "refresh"), v))
            .transpose()?;
        let secret = g
            .client_secret
            .as_ref()
            .map(|v| open(&tier(ns, t, u, "client"), v))
            .transpose()?;
        let client = ClientAuth::from_method(&g.client_auth, &g.client_id, secret);
        Ok(Some(OpenGrant {
            origin: GrantOrigin {
                issuer: g.issuer.clone(),
                token_endpoint: g.token_endpoint.clone(),
                revocation_endpoint: g.revocation_endpoint.clone(),
                client,
                resource: g.resource.clone(),
                scopes: g.scopes.clone(),
            },
            access_token: access,
            refresh_token: refresh,
            issued_at_ms: g.issued_at_ms,
            expires_at_ms: g.expires_at_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflow_crds::SealingKey;
    use reflow_crds::snapshot::InjectAs;

    #[test]
    fn a_grant_round_trips_sealed_and_keeps_the_old_refresh_token_when_none_rotates() {
        let dir = std::env::temp_dir().join(format!("reflow-grant-{}", uuid::Uuid::new_v4()));
        let s = ConnectionStore::in_manifests(&dir, SealingKey::from_bytes(&[3; 32]));
        let slot = Slot {
            inject_as: InjectAs::Header,
            name: "authorization",
            prefix: "Bearer ",
        };
        let origin = GrantOrigin {
            issuer: "https://as.example".into(),
            token_endpoint: "https://as.example/token".into(),
            revocation_endpoint: None,
            client: ClientAuth::Basic {
                client_id: "reflow".into(),
                secret: SecretString::from("client-secret-x"),
            },
            resource: "https://up.example/mcp".into(),
            scopes: vec!["read".into()],
        };
        let token: TokenResponse = serde_json::from_str(
            r#"{"access_token":"at-one","expires_in":60,"refresh_token":"rt-one"}"#,
        )
        .unwrap();
        s.put_grant(("ns", "t", "alice"), &slot, &origin, &token, None)
            .unwrap();
        let text = std::fs::read_to_string(
            std::fs::read_dir(s.dir())
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|x| x == "json"))
                .unwrap(),
        )
        .unwrap();
        for secret in ["at-one", "rt-one", "client-secret-x"] {
            assert!(!text.contains(secret), "{secret} in plain text: {text}");
        }
        let c = s.get("ns", "t", "alice").unwrap();
        let g = s.open_grant(&c).unwrap().unwrap();
        assert_eq!(g.access_token.expose_secret(), "at-one");
        assert_eq!(g.refresh_token.as_ref().unwrap().expose_secret(), "rt-one");
        assert!(g.expires_at_ms.unwrap() > g.issued_at_ms);
        assert!(matches!(g.origin.client, ClientAuth::Basic { .. }));

        let next: TokenResponse = serde_json::from_str(r#"{"access_token":"at-two"}"#).unwrap();
        s.put_grant(
            ("ns", "t", "alice"),
            &slot,
            &origin,
            &next,
            g.refresh_token.as_ref(),
        )
        .unwrap();
        let g = s
            .open_grant(&s.get("ns", "t", "alice").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(g.access_token.expose_secret(), "at-two");
        assert_eq!(g.refresh_token.unwrap().expose_secret(), "rt-one");
        assert!(s.get("ns", "t", "bob").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// The grant as the controller takes it (`reflow_crds::grant::Grant`, `POST /v1/connections`):
/// what the connect flow obtained, in the wire type shared with the controller's refresher. A
/// pre-registered client's secret stays in the Target's `clientSecretRef`; only a client
/// registered on the fly (RFC 7591) carries its secret along.
pub fn wire_grant(
    (ns, target, user): (&str, &str, &str),
    origin: &GrantOrigin,
    token: &TokenResponse,
    registered: bool,
) -> reflow_crds::grant::Grant {
    use reflow_crds::grant::{Grant, GrantClient, GrantKey, OAuth2Grant, Redacted};
    let secret = match &origin.client {
        ClientAuth::Basic { secret, .. } | ClientAuth::Post { secret, .. } if registered => {
            Some(Redacted::from(secret.clone()))
        }
        _ => None,
    };
    Grant {
        key: GrantKey {
            namespace: ns.to_owned(),
            target: target.to_owned(),
            user: user.to_owned(),
        },
        value: Redacted::from(token.access_token.clone()),
        oauth2: Some(OAuth2Grant {
            refresh_token: token.refresh_token.clone().map(Redacted::from),
            expires_at_ms: token
                .expires_in
                .map(|s| now_ms().saturating_add(s.saturating_mul(1000))),
            token_endpoint: origin.token_endpoint.clone(),
            issuer: Some(origin.issuer.clone()),
            revocation_endpoint: origin.revocation_endpoint.clone(),
            client: GrantClient {
                client_id: origin.client.client_id().to_owned(),
                registered_secret: secret,
                auth_method: Some(origin.client.method().to_owned()),
            },
            scopes: origin.scopes.clone(),
            resource: Some(origin.resource.clone()),
        }),
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;

    #[test]
    fn the_flow_produces_a_valid_wire_grant_that_prints_no_token() {
        let origin = GrantOrigin {
            issuer: "https://as.example".into(),
            token_endpoint: "https://as.example/token".into(),
            revocation_endpoint: None,
            client: ClientAuth::Basic {
                client_id: "dyn-1".into(),
                secret: SecretString::from("dyn-secret"),
            },
            resource: "https://up.example/mcp".into(),
            scopes: vec!["read".into()],
        };
        let token: TokenResponse = serde_json::from_str(
            r#"{"access_token":"at-w","expires_in":60,"refresh_token":"rt-w"}"#,
        )
        .unwrap();
        let g = wire_grant(("team", "linear", "alice"), &origin, &token, true);
        g.validate().expect("valid");
        let shown = format!("{g:?}");
        assert!(
            !shown.contains("at-w") && !shown.contains("rt-w") && !shown.contains("dyn-secret")
        );
        let o = g.oauth2.as_ref().unwrap();
        assert_eq!(o.refresh_token.as_ref().unwrap().expose(), "rt-w");
        assert_eq!(
            o.client.registered_secret.as_ref().unwrap().expose(),
            "dyn-secret"
        );
        let pre = wire_grant(("team", "linear", "alice"), &origin, &token, false);
        assert!(pre.oauth2.unwrap().client.registered_secret.is_none());
    }
}
