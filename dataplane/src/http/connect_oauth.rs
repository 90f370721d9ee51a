//! `mode: oauth2` on the connect pages: the link starts an authorization code + PKCE flow at
//! the upstream's authorization server and `/connect/callback` stores the grant. When the
//! gateway has an OIDC issuer (`gateway.console.oidc`), the user first signs in there and the
//! signed-in user must be the link's user: the browser carries no bearer token, so without
//! that login a link forwarded to (or phished from) someone else would connect *their*
//! upstream account to the link's user. Every `state` is single use and bound to the browser
//! that started it (a cookie), so a callback URL carried to another browser does nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reflow_crds::snapshot::{CompiledOAuth2, CompiledUserCredential};
use reflow_oauth::discovery::{authorization_server, discover};
use reflow_oauth::pkce::random_token;
use reflow_oauth::registration::{RegistrationRequest, register};
use reflow_oauth::{
    AuthorizationRequest, CallbackParams, ClientAuth, OAuthError, Pkce, SecretString, TokenClient,
};
use secrecy::ExposeSecret;
use tracing::{info, warn};

use super::connect_cimd::{ClientSource, client_source};
use super::connect_page::{BIND_COOKIE, audit, bad_link, cookie, escape, page};
use crate::connect::flows::digest;
use crate::connect::store::Slot;
use crate::connect::{GrantOrigin, LinkGrant, Pending, Phase};
use crate::mcp::{CONNECT_PATH, Gateway};

/// How long the callback waits for the recompiled snapshot carrying the new grant.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// `<public base>/connect/callback`: `gateway.publicUrl`, else this request's Host.
fn callback_url(gw: &Gateway, headers: &HeaderMap) -> Option<String> {
    let base = match gw.config.public_url.as_deref() {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let host = headers.get(header::HOST)?.to_str().ok()?;
            let scheme = if gw.config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}")
        }
    };
    Some(format!("{base}{CONNECT_PATH}/callback"))
}

fn bind_cookie(gw: &Gateway, value: &str, redirect: &str) -> HeaderValue {
    let secure = gw.config.tls.is_some()
        || redirect.starts_with("https://")
        || gw.config.console.secure_cookies;
    let text = format!(
        "{BIND_COOKIE}={value}; Path={CONNECT_PATH}; Max-Age=600; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn see_other(location: &str, set_cookie: Option<HeaderValue>) -> Response {
    let Ok(loc) = HeaderValue::from_str(location) else {
        return unavailable("the authorization URL is not valid");
    };
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, loc)]).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if let Some(c) = set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

fn unavailable(why: &str) -> Response {
    page(
        StatusCode::BAD_GATEWAY,
        "Not connected",
        &format!(
            "<p>The gateway could not connect this account: {}. Call the tool again for a new link.</p>",
            escape(why)
        ),
    )
}

fn refused(why: &str) -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Not connected",
        &format!("<p>{}</p>", escape(why)),
    )
}

/// The link was used (POST): start the login at the gateway's IdP, or go straight to the
/// upstream's AS when the gateway has none.
pub(super) async fn begin(gw: &Arc<Gateway>, grant: LinkGrant, headers: &HeaderMap) -> Response {
    let Some(redirect) = callback_url(gw, headers) else {
        return unavailable("no public URL (set gateway.publicUrl)");
    };
    let binding = random_token();
    let started = match gw.config.console.oidc.as_ref() {
        Some(_) => login_url(gw, &grant, &redirect, &binding).await,
        None => upstream_url(gw, &grant, &redirect, &binding).await,
    };
    match started {
        Ok(url) => see_other(&url, Some(bind_cookie(gw, &binding, &redirect))),
        Err(e) => {
            audit(gw, Some(&grant), "connect_unavailable");
            warn!(error = %e, label = e.label(), "a connect flow could not start");
            unavailable(&e.to_string())
        }
    }
}

/// The IdP login that proves who is at the browser (the console's OIDC client).
async fn login_url(
    gw: &Gateway,
    grant: &LinkGrant,
    redirect: &str,
    binding: &str,
) -> Result<String, OAuthError> {
    let Some(oidc) = gw.config.console.oidc.as_ref() else {
        return Err(OAuthError::Unsupported("OIDC login"));
    };
    let http = gw.oauth_http();
    let meta = authorization_server(&http, &oidc.issuer).await?;
    let secret = match &oidc.client_secret_file {
        Some(path) => Some(SecretString::from(
            std::fs::read_to_string(path)
                .map_err(|_| {
                    OAuthError::Metadata("the OIDC client secret file does not read".into())
                })?
                .trim()
                .to_owned(),
        )),
        None => None,
    };
    let scopes = if oidc.scopes.is_empty() {
        vec!["openid".to_owned()]
    } else {
        oidc.scopes.clone()
    };
    let origin = GrantOrigin {
        issuer: meta.issuer.clone(),
        token_endpoint: meta.token_endpoint.clone(),
        revocation_endpoint: None,
        client: ClientAuth::choose(
            &oidc.client_id,
            secret,
            &meta.token_endpoint_auth_methods_supported,
        ),
        resource: oidc.resource.clone().unwrap_or_default(),
        scopes,
    };
    let pkce = Pkce::new();
    let state = random_token();
    let url = AuthorizationRequest {
        client_id: &oidc.client_id,
        redirect_uri: redirect,
        scopes: &origin.scopes,
        state: &state,
        resource: oidc.resource.as_deref(),
    }
    .url(&meta, &pkce)?;
    gw.connect_flows().start(
        &state,
        grant.clone(),
        Phase::Login(origin),
        pkce.verifier,
        redirect.to_owned(),
        binding,
    );
    Ok(url.into())
}

fn oauth2_of(gw: &Gateway, grant: &LinkGrant) -> Option<(CompiledUserCredential, CompiledOAuth2)> {
    let snapshot = gw.snapshots.load();
    let u = snapshot
        .target(&grant.namespace, &grant.target)?
        .user_credential
        .clone()?;
    let o = u.oauth2.clone()?;
    Some((u, o))
}

/// The authorization request at the upstream's AS (discovered or configured), with the
/// configured client, else this gateway's client ID metadata document URL where the AS accepts
/// one, else one registered on the fly (RFC 7591); see [`client_source`].
async fn upstream_url(
    gw: &Gateway,
    grant: &LinkGrant,
    redirect: &str,
    binding: &str,
) -> Result<String, OAuthError> {
    let Some((_, o)) = oauth2_of(gw, grant) else {
        return Err(OAuthError::Unsupported(
            "oauth2 userCredential on this Target",
        ));
    };
    let http = gw.oauth_http();
    let found = discover(
        &http,
        &o.resource,
        &o.resource,
        o.authorization_server.as_deref(),
    )
    .await?;
    let meta = found.server;
    let scopes: Vec<String> = o.scopes.iter().map(|s| s.to_string()).collect();
    let source = client_source(o.client.is_some(), &meta, gw.config.public_url.as_deref());
    let client = match (&o.client, source) {
        (Some(c), _) => {
            let secret =
                match &c.client_secret {
                    Some(s) => Some(gw.sealing_key().open(&s.aad, &s.value).map_err(|_| {
                        OAuthError::Metadata("the client secret does not open".into())
                    })?),
                    None => None,
                };
            ClientAuth::choose(
                &c.client_id,
                secret,
                &meta.token_endpoint_auth_methods_supported,
            )
        }
        // A public client: PKCE S256 is its proof (the authorization request insists on it).
        (None, ClientSource::MetadataDocument(url)) => ClientAuth::None { client_id: url },
        (None, ClientSource::Register) => gw.registered_client(&meta, redirect, &scopes).await?,
        (None, ClientSource::Unavailable(why)) => return Err(OAuthError::Unsupported(why)),
        (None, ClientSource::Configured) => {
            return Err(OAuthError::Unsupported("configured client"));
        }
    };
    let origin = GrantOrigin {
        issuer: meta.issuer.clone(),
        token_endpoint: meta.token_endpoint.clone(),
        revocation_endpoint: meta.revocation_endpoint.clone(),
        client,
        resource: o.resource.to_string(),
        scopes,
    };
    let pkce = Pkce::new();
    let state = random_token();
    let url = AuthorizationRequest {
        client_id: origin.client.client_id(),
        redirect_uri: redirect,
        scopes: &origin.scopes,
        state: &state,
        resource: Some(origin.resource.as_str()),
    }
    .url(&meta, &pkce)?;
    gw.connect_flows().start(
        &state,
        grant.clone(),
        Phase::Upstream(origin),
        pkce.verifier,
        redirect.to_owned(),
        binding,
    );
    Ok(url.into())
}

impl Gateway {
    /// The client this gateway registered at `meta`'s AS (RFC 7591), registering it once.
    async fn registered_client(
        &self,
        meta: &reflow_oauth::AuthServerMetadata,
        redirect: &str,
        scopes: &[String],
    ) -> Result<ClientAuth, OAuthError> {
        let key = format!("{}\n{redirect}", meta.issuer);
        if let Some(c) = self
            .oauth_clients()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(c.auth());
        }
        let Some(endpoint) = meta.registration_endpoint.as_deref() else {
            return Err(OAuthError::Unsupported(
                "dynamic client registration (configure oauth2.client)",
            ));
        };
        let req = RegistrationRequest::web_client(redirect, "Reflow gateway", scopes);
        let client = register(&self.oauth_http(), endpoint, &req).await?;
        let auth = client.auth();
        self.oauth_clients()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, client);
        Ok(auth)
    }
}

/// `GET /connect/callback`: finishes one authorization (the IdP login, then the upstream's).
pub(super) async fn callback(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let params = match CallbackParams::parse(query.as_deref().unwrap_or_default()) {
        Ok(p) => p,
        Err(_) => return bad_link(),
    };
    let Some(pending) = params.state().and_then(|s| gw.connect_flows().finish(s)) else {
        audit(&gw, None, "connect_link_refused");
        warn!("a connect callback was refused (unknown, used or expired state)");
        return bad_link();
    };
    let bound = cookie(&headers, BIND_COOKIE).unwrap_or_default();
    if digest(bound) != pending.binding {
        audit(&gw, Some(&pending.grant), "connect_other_browser");
        return refused(
            "This sign-in was started in another browser. Call the tool again for a new link.",
        );
    }
    let code = match &params {
        CallbackParams::Code { code, .. } => code.clone(),
        CallbackParams::Error { error, .. } => {
            audit(&gw, Some(&pending.grant), "connect_denied");
            return refused(&format!(
                "The authorization server answered {error}. Nothing was connected."
            ));
        }
    };
    match pending.phase.clone() {
        Phase::Login(origin) => after_login(&gw, pending, &origin, &code, bound).await,
        Phase::Upstream(origin) => after_consent(&gw, pending, &origin, &code).await,
        Phase::Paste => bad_link(),
    }
}

/// Who signed in at the IdP must be the link's user; then on to the upstream's AS.
async fn after_login(
    gw: &Arc<Gateway>,
    pending: Pending,
    origin: &GrantOrigin,
    code: &str,
    binding: &str,
) -> Response {
    let client = match TokenClient::new(
        gw.oauth_http(),
        &origin.token_endpoint,
        None,
        origin.client.clone(),
    ) {
        Ok(c) => c,
        Err(e) => return unavailable(&e.to_string()),
    };
    let resource = (!origin.resource.is_empty()).then_some(origin.resource.as_str());
    let token = match client
        .exchange_code(code, &pending.redirect_uri, &pending.verifier, resource)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            audit(gw, Some(&pending.grant), "connect_login_failed");
            return unavailable(&e.to_string());
        }
    };
    let mut h = HeaderMap::new();
    let Ok(bearer) =
        HeaderValue::from_str(&format!("Bearer {}", token.access_token.expose_secret()))
    else {
        return unavailable("the identity provider answered an unusable token");
    };
    h.insert(header::AUTHORIZATION, bearer);
    let who = match gw.auth.authenticate(&h).await {
        Ok(p) => p.identity.user.to_string(),
        Err(_) => {
            audit(gw, Some(&pending.grant), "connect_login_failed");
            return unavailable("the gateway does not accept the identity provider's token");
        }
    };
    if who != pending.grant.user {
        audit(gw, Some(&pending.grant), "connect_account_mismatch");
        warn!(link_user = %pending.grant.user, signed_in = %who, "a connect link was opened by another user; refused");
        return refused(&format!(
            "You signed in as {who}, but this link connects the gateway user {}. Nothing was connected.",
            pending.grant.user
        ));
    }
    // `mode: secret`: the paste form, now that the right user is known to be here.
    if let Some(form) =
        super::connect_paste::after_login(gw, &pending.grant, &pending.redirect_uri, binding)
    {
        return form;
    }
    match upstream_url(gw, &pending.grant, &pending.redirect_uri, binding).await {
        Ok(url) => see_other(&url, None),
        Err(e) => {
            audit(gw, Some(&pending.grant), "connect_unavailable");
            unavailable(&e.to_string())
        }
    }
}

/// The upstream's consent came back: trade the code, store the grant, wait for it to apply.
async fn after_consent(
    gw: &Arc<Gateway>,
    pending: Pending,
    origin: &GrantOrigin,
    code: &str,
) -> Response {
    let grant = &pending.grant;
    let Some((u, o)) = oauth2_of(gw, grant) else {
        return bad_link();
    };
    if gw.grants().is_none() && gw.connections.is_none() {
        return bad_link();
    }
    let client = match TokenClient::new(
        gw.oauth_http(),
        &origin.token_endpoint,
        origin.revocation_endpoint.as_deref(),
        origin.client.clone(),
    ) {
        Ok(c) => c,
        Err(e) => return unavailable(&e.to_string()),
    };
    let token = match client
        .exchange_code(
            code,
            &pending.redirect_uri,
            &pending.verifier,
            Some(origin.resource.as_str()),
        )
        .await
    {
        Ok(t) => t,
        Err(e) => {
            audit(gw, Some(grant), "connect_failed");
            warn!(error = %e, label = e.label(), "the upstream's token endpoint refused the code");
            return unavailable(&e.to_string());
        }
    };
    let slot = Slot {
        inject_as: u.inject_as,
        name: &u.name,
        prefix: &u.prefix,
    };
    let mut applied = gw.snapshots.subscribe();
    let owner = (
        grant.namespace.as_str(),
        grant.target.as_str(),
        grant.user.as_str(),
    );
    let stored = match (gw.grants(), gw.connections.as_ref()) {
        // Standalone: the sealed local folder, refreshed by this gateway.
        (Some(grants), _) => grants.store().put_grant(owner, &slot, origin, &token, None),
        // Controller mode: the controller writes the Secret and Credential and refreshes.
        (None, Some(store)) => {
            let registered = o.client.is_none();
            let wire = crate::connect::grant::wire_grant(owner, origin, &token, registered);
            store.put(&slot, &wire).await
        }
        (None, None) => return bad_link(),
    };
    if let Err(e) = stored {
        audit(gw, Some(grant), "connect_failed");
        warn!(error = %e, label = e.label(), "a user's oauth2 grant was not stored");
        return unavailable(&e.to_string());
    }
    audit(gw, Some(grant), "connected");
    info!(user = %grant.user, target = %format!("{}/{}", grant.namespace, grant.target), "user connected an oauth2 grant");
    let _ = tokio::time::timeout(APPLY_WAIT, applied.changed()).await;
    page(
        StatusCode::OK,
        &format!("{} connected", u.display_name),
        "<p id=\"connected\">Connected. Go back to your client and call the tool again.</p>",
    )
}
