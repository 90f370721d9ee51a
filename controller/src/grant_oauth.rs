//! The `oauth2` side of users' grants in cluster mode: what the controller checks before it
//! stores a grant a dataplane handed over, how it authenticates as the grant's client, and the
//! RFC 7009 revocation a disconnect does first.
//!
//! A dataplane holds the controller token, nothing more: a grant it posts must fit the Target it
//! names. Its mode must be the Target's (`oauth2` material only for an `oauth2` Target, and
//! none for a `secret` one), its `resource` the Target's, its client the Target's
//! pre-registered one (whose secret never travels; only a dynamically registered client's
//! does), and its token and revocation endpoints and issuer those of the Target's authorization
//! server as the controller discovers it itself. Without that last check, a stolen dataplane
//! token could point the lease holder's refresher at any URL and have it send the Target's
//! client secret there.

use reflow_crds::SealingKey;
use reflow_crds::Snapshot;
use reflow_crds::grant::{Grant, OAuth2Grant};
use reflow_crds::snapshot::CompiledUserCredential;
use reflow_crds::snapshot::UserCredentialMode;
use reflow_oauth::discovery::discover;
use reflow_oauth::{ClientAuth, OAuthHttp, SecretString, TokenClient};
use tracing::{info, warn};

use crate::grants::GrantsError;

/// Refuses a grant that does not fit `u` (the controller's compile of the Target) and, for
/// `oauth2`, sets what the controller decides itself: the AS's issuer and revocation endpoint
/// and the client authentication method its metadata calls for.
pub async fn check(
    http: &OAuthHttp,
    full: &str,
    u: &CompiledUserCredential,
    grant: &mut Grant,
) -> Result<(), GrantsError> {
    let mismatch = |why: &str| GrantsError::NotThisTarget(format!("{full}: {why}"));
    let (Some(o), Some(g)) = (u.oauth2.as_ref(), grant.oauth2.as_mut()) else {
        return match (u.mode, grant.oauth2.is_some()) {
            (UserCredentialMode::OAuth2, false) => Err(mismatch(
                "the Target is in mode oauth2 and the grant carries no oauth2 material",
            )),
            (UserCredentialMode::OAuth2, true) => Err(mismatch("no oauth2 settings compiled")),
            (_, true) => Err(mismatch(&format!(
                "the Target is in mode {}, not oauth2",
                u.mode.as_str()
            ))),
            (_, false) => Ok(()),
        };
    };
    if g.resource.as_deref().is_some_and(|r| r != &*o.resource) {
        return Err(mismatch("the resource is not the Target's"));
    }
    let has_secret = match &o.client {
        Some(c) => {
            if g.client.client_id != *c.client_id || g.client.registered_secret.is_some() {
                return Err(mismatch(
                    "the client is not the Target's pre-registered client",
                ));
            }
            c.client_secret.is_some()
        }
        None => g.client.registered_secret.is_some(),
    };
    let meta = discover(
        http,
        &o.resource,
        &o.resource,
        o.authorization_server.as_deref(),
    )
    .await
    .map_err(|e| GrantsError::AuthServer(e.to_string()))?
    .server;
    if g.token_endpoint != meta.token_endpoint
        || g.issuer.as_deref().is_some_and(|i| i != meta.issuer)
        || g.revocation_endpoint.is_some() && g.revocation_endpoint != meta.revocation_endpoint
    {
        return Err(mismatch(
            "the token endpoint, issuer or revocation endpoint is not the Target's authorization server's",
        ));
    }
    g.issuer = Some(meta.issuer.clone());
    g.revocation_endpoint = meta.revocation_endpoint.clone();
    g.client.auth_method = Some(
        ClientAuth::choose_method(has_secret, &meta.token_endpoint_auth_methods_supported)
            .to_owned(),
    );
    Ok(())
}

/// The client secret for a grant: one registered dynamically travels with it; a pre-registered
/// one is the Target's, sealed in the snapshot (and only for that client id).
pub fn client_secret(
    snapshot: Option<&Snapshot>,
    key: &SealingKey,
    grant: &Grant,
) -> Option<SecretString> {
    let o = grant.oauth2.as_ref()?;
    if let Some(s) = &o.client.registered_secret {
        return Some(SecretString::from(s.expose().to_owned()));
    }
    let target = snapshot?.target(&grant.key.namespace, &grant.key.target)?;
    let c = target
        .user_credential
        .as_ref()?
        .oauth2
        .as_ref()?
        .client
        .as_ref()?;
    if c.client_id.as_ref() != o.client.client_id {
        return None;
    }
    let sealed = c.client_secret.as_ref()?;
    key.open(&sealed.aad, &sealed.value).ok()
}

/// How the grant's client authenticates: the method stored with the grant (chosen from the
/// AS's metadata when it was stored); a grant stored before methods were kept uses HTTP Basic
/// when it has a secret.
pub fn client_auth(o: &OAuth2Grant, secret: Option<SecretString>) -> ClientAuth {
    match o.client.auth_method.as_deref() {
        Some(m) => ClientAuth::from_method(m, &o.client.client_id, secret),
        None => ClientAuth::choose(&o.client.client_id, secret, &[]),
    }
}

/// RFC 7009 at the grant's AS before a disconnect: the refresh token (which ends the whole
/// grant), else the access token. `None`: nothing to revoke (mode `secret`, or the AS offers no
/// revocation endpoint); `Some(false)`: the AS refused or did not answer (logged without a
/// token; the caller deletes the grant anyway).
pub async fn revoke(
    http: &OAuthHttp,
    snapshot: Option<&Snapshot>,
    key: &SealingKey,
    grant: &Grant,
) -> Option<bool> {
    let o = grant.oauth2.as_ref()?;
    let endpoint = o.revocation_endpoint.as_deref()?;
    let auth = client_auth(o, client_secret(snapshot, key, grant));
    let (token, hint) = match &o.refresh_token {
        Some(r) => (r.expose(), "refresh_token"),
        None => (grant.value.expose(), "access_token"),
    };
    let token = SecretString::from(token.to_owned());
    let outcome = match TokenClient::new(http.clone(), &o.token_endpoint, Some(endpoint), auth) {
        Ok(c) => c.revoke(&token, Some(hint)).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => {
            info!(user = %grant.key.user, "a user's grant was revoked at the authorization server");
            Some(true)
        }
        Err(e) => {
            warn!(user = %grant.key.user, error = %e, label = e.label(), "revoking a user's grant at the authorization server failed; deleting it anyway");
            Some(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use reflow_crds::grant::{GrantClient, GrantKey, Redacted};
    use reflow_crds::snapshot::{CompiledClient, CompiledOAuth2, InjectAs};

    use super::*;

    fn slot(mode: UserCredentialMode, client: Option<&str>) -> CompiledUserCredential {
        CompiledUserCredential {
            mode,
            inject_as: InjectAs::Header,
            name: "authorization".into(),
            prefix: "Bearer ".into(),
            display_name: "Up".into(),
            hint: None,
            oauth2: (mode == UserCredentialMode::OAuth2).then(|| CompiledOAuth2 {
                // Nothing listens here: a check that reached discovery fails with AuthServer.
                authorization_server: Some("http://127.0.0.1:9".into()),
                client: client.map(|id| CompiledClient {
                    client_id: id.into(),
                    client_secret: None,
                }),
                scopes: vec![],
                resource: "http://127.0.0.1:9/mcp".into(),
            }),
            token_exchange: None,
        }
    }

    fn grant(oauth2: bool) -> Grant {
        Grant {
            key: GrantKey {
                namespace: "ns".into(),
                target: "t".into(),
                user: "alice".into(),
            },
            value: Redacted::new("at-x"),
            oauth2: oauth2.then(|| OAuth2Grant {
                refresh_token: Some(Redacted::new("rt-x")),
                expires_at_ms: None,
                token_endpoint: "http://127.0.0.1:9/token".into(),
                issuer: None,
                revocation_endpoint: None,
                client: GrantClient {
                    client_id: "reflow".into(),
                    registered_secret: None,
                    auth_method: None,
                },
                scopes: vec![],
                resource: None,
            }),
        }
    }

    #[tokio::test]
    async fn a_grant_that_does_not_fit_its_target_is_refused_before_any_request() {
        let http = OAuthHttp::default();
        let secret = slot(UserCredentialMode::Secret, None);
        let oauth = slot(UserCredentialMode::OAuth2, Some("reflow"));
        let refused = |r: Result<(), GrantsError>| match r {
            Err(e @ GrantsError::NotThisTarget(_)) => {
                assert_eq!(e.status(), 403);
                assert!(!e.to_string().contains("at-x") && !e.to_string().contains("rt-x"));
                e.to_string()
            }
            other => panic!("not refused as a mismatch: {other:?}"),
        };
        // oauth2 material for a secret-mode Target, and a pasted value for an oauth2 one.
        let why = refused(check(&http, "ns/t", &secret, &mut grant(true)).await);
        assert!(why.contains("mode secret"), "{why}");
        refused(check(&http, "ns/t", &oauth, &mut grant(false)).await);
        assert!(
            check(&http, "ns/t", &secret, &mut grant(false))
                .await
                .is_ok()
        );
        // Another resource, another client, a pre-registered client's secret carried along.
        let mut g = grant(true);
        g.oauth2.as_mut().unwrap().resource = Some("http://127.0.0.1:9/other".into());
        refused(check(&http, "ns/t", &oauth, &mut g).await);
        let mut g = grant(true);
        g.oauth2.as_mut().unwrap().client.client_id = "someone-else".into();
        refused(check(&http, "ns/t", &oauth, &mut g).await);
        let mut g = grant(true);
        g.oauth2.as_mut().unwrap().client.registered_secret = Some(Redacted::new("s"));
        refused(check(&http, "ns/t", &oauth, &mut g).await);
        // A fitting grant goes on to the AS, which is down here: refused as unavailable.
        let e = check(&http, "ns/t", &oauth, &mut grant(true))
            .await
            .unwrap_err();
        assert_eq!(e.status(), 502, "{e}");
    }

    #[test]
    fn the_stored_method_decides_how_the_client_authenticates() {
        let mut o = grant(true).oauth2.unwrap();
        let s = || Some(SecretString::from("s"));
        assert_eq!(client_auth(&o, s()).method(), "client_secret_basic");
        o.client.auth_method = Some("client_secret_post".into());
        assert_eq!(client_auth(&o, s()).method(), "client_secret_post");
        assert_eq!(client_auth(&o, None).method(), "none");
    }

    /// A revocation endpoint on loopback answering every request with `status`; what it was
    /// sent comes back on the channel.
    async fn revocation_endpoint(status: u16) -> (String, tokio::sync::mpsc::Receiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/revoke", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = vec![0u8; 16 * 1024];
                let mut got = 0;
                // One small form POST: read until its body (after the head) has arrived.
                while let Ok(n) = sock.read(&mut buf[got..]).await {
                    got += n;
                    let text = String::from_utf8_lossy(&buf[..got]).to_string();
                    if n == 0 || text.contains("token=") {
                        let _ = tx.send(text).await;
                        break;
                    }
                }
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = sock.write_all(head.as_bytes()).await;
            }
        });
        (url, rx)
    }

    #[tokio::test]
    async fn a_disconnect_revokes_the_refresh_token_and_reports_a_refusal() {
        let http = OAuthHttp::default();
        let key = SealingKey::from_bytes(&[9; 32]);
        // Revoked: the refresh token (which ends the whole grant), with its hint.
        let (url, mut sent) = revocation_endpoint(200).await;
        let mut g = grant(true);
        g.oauth2.as_mut().unwrap().revocation_endpoint = Some(url);
        assert_eq!(revoke(&http, None, &key, &g).await, Some(true));
        let body = sent.recv().await.expect("a revocation request");
        assert!(
            body.contains("token=rt-x") && body.contains("token_type_hint=refresh_token"),
            "{body}"
        );
        // Without a refresh token, the access token.
        g.oauth2.as_mut().unwrap().refresh_token = None;
        assert_eq!(revoke(&http, None, &key, &g).await, Some(true));
        let body = sent.recv().await.expect("a revocation request");
        assert!(
            body.contains("token=at-x") && body.contains("token_type_hint=access_token"),
            "{body}"
        );
        // Refused by the AS, or nobody answering: reported as not revoked (the caller deletes
        // the grant anyway); no endpoint or no oauth2 material: nothing to revoke.
        let (url, mut sent) = revocation_endpoint(503).await;
        let mut g = grant(true);
        g.oauth2.as_mut().unwrap().revocation_endpoint = Some(url);
        assert_eq!(revoke(&http, None, &key, &g).await, Some(false));
        assert!(sent.recv().await.is_some(), "the refusing AS was asked");
        g.oauth2.as_mut().unwrap().revocation_endpoint = Some("http://127.0.0.1:9/revoke".into());
        assert_eq!(revoke(&http, None, &key, &g).await, Some(false));
        assert_eq!(revoke(&http, None, &key, &grant(true)).await, None);
        assert_eq!(revoke(&http, None, &key, &grant(false)).await, None);
    }
}
