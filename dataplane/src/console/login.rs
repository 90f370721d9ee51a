//! Logging in and out: the login page, a pasted bearer token (`devLogin`), OIDC authorization
//! code + PKCE, and logout. Every login gets a fresh random cookie id; every redirect goes to a
//! fixed console path (no `next=` parameter, so no open redirect).

use std::sync::Arc;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reflow_crds::Identity;
use serde::Deserialize;

use super::guard::{self, COOKIE, LOGIN_COOKIE, cookie, set_cookie};
use super::html::{csrf_field, page};
use super::logins::{PENDING_TTL, random_token, same};
use super::{Console, ConsoleError};

/// A 303 to a fixed console path.
pub fn see_other(path: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, path)]).into_response()
}

pub async fn root(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match guard::login(&console, &headers) {
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
    Ok(logged_in(
        &console,
        &headers,
        identity,
        see_other("/console/me"),
    ))
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

/// Starts a fresh login (dropping the browser's old one) and sets its cookie on `resp`.
fn logged_in(
    console: &Console,
    headers: &HeaderMap,
    identity: Identity,
    mut resp: Response,
) -> Response {
    if let Some(old) = cookie(headers, COOKIE) {
        console.logins.remove(old);
    }
    let admin = console.parts.config.admins.includes(&identity);
    tracing::info!(user = %identity.user, admin, "console login");
    let (id, _) = console.logins.create(identity, admin);
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(
            COOKIE,
            &id,
            console.logins.ttl().as_secs(),
            "Strict",
            console.parts.secure_cookies,
        ),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", 0, "Lax", console.parts.secure_cookies),
    );
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
    console.logins.start(state, verifier, nonce, bind.clone());
    let location = HeaderValue::from_str(&url)
        .map_err(|_| ConsoleError::Config("authorization endpoint is not a valid URL".into()))?;
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, binding_cookie(&console, &bind));
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
    let pending = console
        .logins
        .finish(&state)
        .ok_or_else(|| ConsoleError::Login("unknown or expired login; start again".into()))?;
    let bound = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if !same(bound, &pending.binding) {
        // A callback URL carried to another browser (login CSRF) finds no binding.
        return Err(ConsoleError::Login(
            "this login was started in another browser".into(),
        ));
    }
    let tokens = oidc.exchange(&code, &pending.verifier).await?;
    let mut identity = None;
    if let Some(id_token) = tokens.id_token.as_deref()
        && let Some(id) = verify(&console, id_token).await
    {
        let nonce = id
            .claims
            .map()
            .and_then(|m| m.get("nonce"))
            .and_then(|v| v.as_str());
        if nonce.is_none_or(|n| !same(n, &pending.nonce)) {
            return Err(ConsoleError::Login(
                "the ID token's nonce does not match".into(),
            ));
        }
        identity = Some(id);
    }
    if identity.is_none()
        && let Some(access) = tokens.access_token.as_deref()
    {
        identity = verify(&console, access).await;
    }
    let identity = identity.ok_or_else(|| {
        ConsoleError::Login("the gateway does not accept the tokens this issuer returned".into())
    })?;
    // A page, not a redirect: the Strict cookie is sent on the next, same-site navigation.
    let body = "<h1>Signed in</h1><p><a id=\"continue\" href=\"/console/me\">Continue to the console</a></p>";
    let mut resp = page("Signed in", None, body).into_response();
    resp.headers_mut()
        .insert("refresh", HeaderValue::from_static("0; url=/console/me"));
    Ok(logged_in(&console, &headers, identity, resp))
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
    let (id, login) = guard::login(&console, &headers)?;
    guard::check_csrf(&login, &form.csrf)?;
    console.logins.remove(&id);
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
