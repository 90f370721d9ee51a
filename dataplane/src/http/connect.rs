//! The `/connect/<link>` pages: the one place a user's own credential enters the gateway. The
//! browser carries no bearer token; the single-use link (minted for the caller by the connect
//! gate) is what binds the page to that caller, and the page names that caller before anything
//! is stored.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use reflow_crds::snapshot::UserCredentialMode;
use tracing::warn;

use super::connect_page::{audit, bad_link, escape, page};
use super::connect_paste::store_value;
use crate::mcp::Gateway;

/// `GET /connect/<link>`: the form, naming whose connection this is (the link is not used up).
pub(super) async fn show(State(gw): State<Arc<Gateway>>, Path(link): Path<String>) -> Response {
    let Ok(grant) = gw.connect_links.peek(&link) else {
        return bad_link();
    };
    let snapshot = gw.snapshots.load();
    let Some(u) = snapshot
        .target(&grant.namespace, &grant.target)
        .and_then(|t| t.user_credential.clone())
    else {
        return bad_link();
    };
    if u.mode == UserCredentialMode::OAuth2 {
        let login = if gw.config.console.oidc.is_some() {
            "You will sign in at the gateway's identity provider first (as that user), then "
        } else {
            "You will "
        };
        let body = format!(
            "<p>You are connecting your own <b>{d}</b> account for the gateway user <b>{user}</b>. \
             If that is not you, close this page.</p><p>{login}consent at {d}'s authorization server.</p>\
             <form method=\"post\"><button type=\"submit\" id=\"connect\">Continue</button></form>",
            d = escape(&u.display_name),
            user = escape(&grant.user),
        );
        return page(
            StatusCode::OK,
            &format!("Connect {}", u.display_name),
            &body,
        );
    }
    let hint = u
        .hint
        .as_deref()
        .map(|h| format!("<p>{}</p>", escape(h)))
        .unwrap_or_default();
    if gw.config.console.oidc.is_some() {
        // Who is at the browser is proven first (account swap); the form comes after.
        let body = format!(
            "<p>You are connecting your own <b>{d}</b> credential for the gateway user <b>{user}</b>. \
             If that is not you, close this page.</p>{hint}<p>You will sign in at the gateway's identity \
             provider first (as that user), then paste the token.</p>\
             <form method=\"post\"><button type=\"submit\" id=\"connect\">Continue</button></form>",
            d = escape(&u.display_name),
            user = escape(&grant.user),
        );
        return page(
            StatusCode::OK,
            &format!("Connect {}", u.display_name),
            &body,
        );
    }
    let body = format!(
        "<p>You are connecting your own <b>{d}</b> credential for the gateway user <b>{user}</b>. \
         If that is not you, close this page.</p>{hint}\
         <form method=\"post\"><label>Token <input type=\"password\" name=\"value\" autocomplete=\"off\" required></label> \
         <button type=\"submit\">Connect</button></form>",
        d = escape(&u.display_name),
        user = escape(&grant.user),
    );
    page(
        StatusCode::OK,
        &format!("Connect {}", u.display_name),
        &body,
    )
}

/// `POST /connect/<link>`: uses the link up, stores the value sealed, waits for it to apply.
pub(super) async fn submit(
    State(gw): State<Arc<Gateway>>,
    Path(link): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(grant) = gw.connect_links.consume(&link) else {
        audit(&gw, None, "connect_link_refused");
        warn!("a connect link was refused (unknown, used or expired)");
        return bad_link();
    };
    let snapshot = gw.snapshots.load();
    let mode = snapshot
        .target(&grant.namespace, &grant.target)
        .and_then(|t| t.user_credential.as_ref())
        .map(|u| u.mode);
    if mode == Some(UserCredentialMode::OAuth2) && gw.connections.is_some() {
        return super::connect_oauth::begin(&gw, grant, &headers).await;
    }
    if mode == Some(UserCredentialMode::Secret) && gw.config.console.oidc.is_some() {
        // Sign-in first: a value posted with the link alone is never stored.
        return super::connect_oauth::begin(&gw, grant, &headers).await;
    }
    store_value(&gw, grant, &body).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::connect_paste::{form_field, form_value};

    #[test]
    fn form_values_decode_and_malformed_ones_are_refused() {
        assert_eq!(form_value(b"value=ab%2Bc+d").as_deref(), Some("ab+c d"));
        assert_eq!(form_value(b"x=1&value=tok").as_deref(), Some("tok"));
        assert_eq!(form_value(b"value=%zz"), None);
        assert_eq!(form_value(b"value=%4"), None);
        assert_eq!(form_value(b"other=1"), None);
        assert_eq!(
            form_field(b"value=v&state=s%2B1", "state").as_deref(),
            Some("s+1")
        );
        assert_eq!(form_field(b"states=1&xstate=2", "state"), None);
        assert_eq!(
            escape("<b a=\"x\">&'"),
            "&lt;b a=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
