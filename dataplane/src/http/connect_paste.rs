//! `mode: secret`'s value entering the gateway: the form's fields, storing the value for the
//! link's user, and (with an OIDC issuer) the paste form shown only after the IdP sign-in proved
//! the link's user is at the browser, posted to `/connect/paste` with a single-use state bound
//! to that browser.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use reflow_crds::snapshot::UserCredentialMode;
use secrecy::SecretString;
use tracing::{info, warn};

use super::connect_page::{BIND_COOKIE, audit, bad_link, cookie, escape, page};
use crate::connect::store::Slot;
use crate::connect::{LinkGrant, Phase};
use crate::mcp::Gateway;

/// How long the POST waits for the recompiled snapshot that carries the new connection.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// The `value` field of an `application/x-www-form-urlencoded` body.
pub(super) fn form_value(body: &[u8]) -> Option<String> {
    form_field(body, "value")
}

/// Field `name` of an `application/x-www-form-urlencoded` body.
pub(super) fn form_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let raw = text
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?;
    let mut out = Vec::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b'%' => return None,
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Stores the form's `value` as `grant`'s connection (a link or a signed-in paste form was
/// used up for it) and waits for it to apply.
pub(super) async fn store_value(gw: &Arc<Gateway>, grant: LinkGrant, body: &[u8]) -> Response {
    let snapshot = gw.snapshots.load();
    let (Some(u), Some(store)) = (
        snapshot
            .target(&grant.namespace, &grant.target)
            .and_then(|t| t.user_credential.clone())
            .filter(|u| u.mode == UserCredentialMode::Secret),
        gw.connections.as_ref(),
    ) else {
        return bad_link();
    };
    let Some(value) = form_value(body).map(SecretString::from) else {
        audit(gw, Some(&grant), "connect_bad_value");
        return page(
            StatusCode::BAD_REQUEST,
            "Not connected",
            "<p>The form was empty or malformed. Call the tool again for a new link.</p>",
        );
    };
    let mut applied = gw.snapshots.subscribe();
    let slot = Slot {
        inject_as: u.inject_as,
        name: &u.name,
        prefix: &u.prefix,
    };
    let stored = reflow_crds::grant::Grant {
        key: reflow_crds::grant::GrantKey {
            namespace: grant.namespace.clone(),
            target: grant.target.clone(),
            user: grant.user.clone(),
        },
        value: value.into(),
        oauth2: None,
    };
    if let Err(e) = store.put(&slot, &stored).await {
        audit(gw, Some(&grant), "connect_failed");
        warn!(error = %e, label = e.label(), "a connection was not stored");
        return page(
            StatusCode::BAD_REQUEST,
            "Not connected",
            &format!(
                "<p>{}. Call the tool again for a new link.</p>",
                escape(&e.to_string())
            ),
        );
    }
    audit(gw, Some(&grant), "connected");
    info!(user = %grant.user, target = %format!("{}/{}", grant.namespace, grant.target), "user connected a credential");
    // The folder watch (or the controller) recompiles; answer once the new snapshot is live
    // (bounded).
    let _ = tokio::time::timeout(APPLY_WAIT, applied.changed()).await;
    page(
        StatusCode::OK,
        &format!("{} connected", u.display_name),
        "<p>Connected. Go back to your client and call the tool again.</p>",
    )
}

/// Where the signed-in paste form of `mode: secret` posts.
pub(super) const PASTE_PATH: &str = "/connect/paste";

/// After the IdP login proved the link's user is at the browser (`connect_oauth::after_login`):
/// for a `secret` Target, the paste form, carrying a fresh single-use state bound to this
/// browser (the link itself is spent). `None`: not a `secret` Target, the login goes on to the
/// upstream's authorization server.
pub(super) fn after_login(
    gw: &Gateway,
    grant: &LinkGrant,
    redirect: &str,
    binding: &str,
) -> Option<Response> {
    let snapshot = gw.snapshots.load();
    let u = snapshot
        .target(&grant.namespace, &grant.target)
        .and_then(|t| t.user_credential.clone())
        .filter(|u| u.mode == UserCredentialMode::Secret)?;
    let state = reflow_oauth::pkce::random_token();
    gw.connect_flows().start(
        &state,
        grant.clone(),
        Phase::Paste,
        SecretString::from(String::new()),
        redirect.to_owned(),
        binding,
    );
    let hint = u
        .hint
        .as_deref()
        .map(|h| format!("<p>{}</p>", escape(h)))
        .unwrap_or_default();
    let body = format!(
        "<p>Signed in as <b>{user}</b>. Paste your own <b>{d}</b> credential.</p>{hint}\
         <form method=\"post\" action=\"{PASTE_PATH}\"><input type=\"hidden\" name=\"state\" value=\"{state}\">\
         <label>Token <input type=\"password\" name=\"value\" autocomplete=\"off\" required></label> \
         <button type=\"submit\" id=\"store\">Connect</button></form>",
        d = escape(&u.display_name),
        user = escape(&grant.user),
    );
    Some(page(
        StatusCode::OK,
        &format!("Connect {}", u.display_name),
        &body,
    ))
}

/// `POST /connect/paste`: the signed-in paste form. Its state is single use and must come from
/// the browser that signed in (the binding cookie).
pub(super) async fn paste(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let pending = form_field(&body, "state")
        .and_then(|s| gw.connect_flows().finish(&s))
        .filter(|p| matches!(p.phase, Phase::Paste));
    let Some(pending) = pending else {
        audit(&gw, None, "connect_link_refused");
        warn!("a connect paste form was refused (unknown, used or expired state)");
        return bad_link();
    };
    let bound = cookie(&headers, BIND_COOKIE);
    if crate::connect::flows::digest(bound.unwrap_or_default()) != pending.binding {
        audit(&gw, Some(&pending.grant), "connect_other_browser");
        return page(
            StatusCode::FORBIDDEN,
            "Not connected",
            "<p>This form was opened in another browser. Call the tool again for a new link.</p>",
        );
    }
    store_value(&gw, pending.grant, &body).await
}
