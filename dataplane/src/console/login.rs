//! Logging in and out: the login page, a pasted bearer token (`devLogin`), OIDC authorization
//! code + PKCE, and logout. Every login gets a fresh sealed cookie (new login id, new CSRF
//! token); every redirect goes to a fixed console path (no `next=` parameter, so no open
//! redirect).

use std::sync::Arc;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reflow_crds::Identity;
use serde::Deserialize;

use super::guard::{self, COOKIE, LOGIN_COOKIE, OIDC_COOKIE, cookie, set_cookie};
use super::html::{csrf_field, page};
use super::logins::{PENDING_TTL, random_token, same};
use super::{Console, ConsoleError};

/// A 303 to a fixed console path.
pub fn see_other(path: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, path)]).into_response()
}

pub async fn root(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match guard::login(&console, &headers).await {
        Ok(_) => see_other("/console/me"),
        Err(_) => see_other("/console/login"),
    }
}

/// The browser's login-binding value, or a new one to set.
fn binding(headers: &HeaderMap) -> (String, bool) {
    match cookie(headers, LOGIN_COOKIE).filter(|v| v.len() == 43) {
        Some(v) => (v.to_owned(), false),
        None => (random_token(), true),
    }
}

fn binding_cookie(console: &Console, value: &str) -> HeaderValue {
    set_cookie(
        LOGIN_COOKIE,
        value,
        PENDING_TTL.as_secs(),
        "Lax",
        console.parts.secure_cookies,
    )
}

pub async fn login_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let (bind, _) = binding(&headers);
    let mut body = String::from("<h1>Sign in</h1>");
    if console.oidc.is_some() {
        body.push_str(
            "<p><a class=\"button\" id=\"oidc-login\" href=\"/console/login/oidc\">Sign in with your identity provider</a></p>",
        );
    }
    if console.parts.config.dev_login {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/console/login/token\" class=\"token-login\">\
             <label for=\"token\">Bearer token (the one your MCP client uses)</label>\
             <textarea id=\"token\" name=\"token\" rows=\"4\" autocomplete=\"off\" required></textarea>\
             {}<button type=\"submit\" id=\"token-login\">Sign in with token</button></form>",
            csrf_field(&bind)
        ));
    }
    if console.oidc.is_none() && !console.parts.config.dev_login {
        body.push_str("<p>No login method is configured (gateway.console.oidc or devLogin).</p>");
    }
    let mut resp = page("Sign in", None, &body).into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, binding_cookie(&console, &bind));
    resp
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

pub async fn token_login(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Result<Response, ConsoleError> {
    if !console.parts.config.dev_login {
        return Err(ConsoleError::NotFound);
    }
    let bound = cookie(&headers, LOGIN_COOKIE).ok_or(ConsoleError::Csrf)?;
    if !same(bound, &form.csrf) {
        return Err(ConsoleError::Csrf);
    }
    let identity = verify(&console, form.token.trim())
        .await
        .ok_or_else(|| ConsoleError::Login("the token was not accepted".into()))?;
    Ok(logged_in(&console, &headers, identity, see_other("/console/me")).await)
}

/// Verifies a token exactly as `/mcp` does.
async fn verify(console: &Console, token: &str) -> Option<Identity> {
    if token.is_empty() || token.len() > 16 * 1024 {
        return None;
    }
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).ok()?,
    );
    console
        .parts
        .auth
        .authenticate(&h)
        .await
        .ok()
        .map(|p| p.identity)
}

/// Starts a fresh login (logging the browser's old one out) and sets its cookie on `resp`.
async fn logged_in(
    console: &Console,
    headers: &HeaderMap,
    identity: Identity,
    mut resp: Response,
) -> Response {
    if let Some(old) = cookie(headers, COOKIE)
        && let Some(old) = console.logins.get(old).await
    {
        console.logins.remove(&old).await;
    }
    let admin = console.parts.config.admins.includes(&identity);
    tracing::info!(user = %identity.user, admin, "console login");
    let (value, _) = console.logins.create(identity, admin);
    let secure = console.parts.secure_cookies;
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(
            COOKIE,
            &value,
            console.logins.ttl().as_secs(),
            "Strict",
            secure,
        ),
    );
    for name in [LOGIN_COOKIE, OIDC_COOKIE] {
        h.append(header::SET_COOKIE, set_cookie(name, "", 0, "Lax", secure));
    }
    resp
}

pub async fn oidc_start(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    let oidc = console.oidc.as_ref().ok_or(ConsoleError::NotFound)?;
    let (bind, _) = binding(&headers);
    let (state, nonce, verifier) = (random_token(), random_token(), random_token());
    let url = oidc.authorize_url(&state, &nonce, &verifier).await?;
    let pending = console.logins.start(state, verifier, nonce);
    let location = HeaderValue::from_str(&url)
        .map_err(|_| ConsoleError::Config("authorization endpoint is not a valid URL".into()))?;
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
    let h = resp.headers_mut();
    h.append(header::SET_COOKIE, binding_cookie(&console, &bind));
    h.append(
        header::SET_COOKIE,
        set_cookie(
            OIDC_COOKIE,
            &pending,
            PENDING_TTL.as_secs(),
            "Lax",
            console.parts.secure_cookies,
        ),
    );
    Ok(resp)
}

#[derive(Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

pub async fn oidc_callback(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(cb): Query<Callback>,
) -> Result<Response, ConsoleError> {
    let oidc = console.oidc.as_ref().ok_or(ConsoleError::NotFound)?;
    if let Some(error) = cb.error {
        return Err(ConsoleError::Login(format!(
            "the identity provider said: {error}"
        )));
    }
    let (Some(code), Some(state)) = (cb.code, cb.state) else {
        return Err(ConsoleError::BadRequest(
            "code and state are required".into(),
        ));
    };
    // The sealed login in flight comes back only to the browser that started it (a callback
    // URL carried to another browser finds none: login CSRF), and is used once on any replica.
    let sealed = cookie(&headers, OIDC_COOKIE).unwrap_or_default();
    let pending = console.logins.finish(sealed, &state).await.ok_or_else(|| {
        ConsoleError::Login(
            "unknown, expired or already used login, or one started in another browser; start again"
                .into(),
        )
    })?;
    let tokens = oidc.exchange(&code, &pending.verifier).await?;
    let id_token = tokens
        .id_token
        .as_deref()
        .ok_or_else(|| ConsoleError::Login("the identity provider returned no ID token".into()))?;
    let signed_in = oidc.verify_id_token(id_token, &pending.nonce).await?;
    // Who the user is for the gateway: the access token, verified as `/mcp` verifies it, for
    // the subject the ID token names.
    let identity = match tokens.access_token.as_deref() {
        Some(access) => verify(&console, access).await,
        None => None,
    }
    .ok_or_else(|| {
        ConsoleError::Login(
            "the gateway does not accept the access token this issuer returned".into(),
        )
    })?;
    let subject = identity
        .claims
        .map()
        .and_then(|m| m.get("sub"))
        .and_then(|v| v.as_str());
    if subject != Some(signed_in.subject.as_str()) {
        return Err(ConsoleError::Login(
            "the access token names another subject than the ID token".into(),
        ));
    }
    // A page, not a redirect: the Strict cookie is sent on the next, same-site navigation.
    let body = "<h1>Signed in</h1><p><a id=\"continue\" href=\"/console/me\">Continue to the console</a></p>";
    let mut resp = page("Signed in", None, body).into_response();
    resp.headers_mut()
        .insert("refresh", HeaderValue::from_static("0; url=/console/me"));
    Ok(logged_in(&console, &headers, identity, resp).await)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub async fn logout(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    let login = guard::login(&console, &headers).await?;
    guard::check_csrf(&login, &form.csrf)?;
    console.logins.remove(&login).await;
    let mut resp = see_other("/console/login");
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(COOKIE, "", 0, "Strict", console.parts.secure_cookies),
    );
    Ok(resp)
}

/// Unauthenticated page requests go to the login page; anything else is an error page.
pub fn to_login(err: ConsoleError) -> Response {
    match err {
        ConsoleError::Unauthenticated => see_other("/console/login"),
        other => other.into_response(),
    }
}
