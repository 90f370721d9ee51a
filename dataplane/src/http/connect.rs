//! The `/connect/<link>` pages: the one place a user's own credential enters the gateway. The
//! browser carries no bearer token; the single-use link (minted for the caller by the connect
//! gate) is what binds the page to that caller, and the page names that caller before anything
//! is stored.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use reflow_crds::snapshot::UserCredentialMode;
use secrecy::SecretString;
use tracing::{info, warn};

use super::connect_page::{audit, bad_link, escape, page};
use crate::connect::store::Slot;
use crate::mcp::Gateway;

/// How long the POST waits for the recompiled snapshot that carries the new connection.
const APPLY_WAIT: Duration = Duration::from_secs(5);

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

/// The `value` field of an `application/x-www-form-urlencoded` body.
fn form_value(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let raw = text
        .split('&')
        .find_map(|pair| pair.strip_prefix("value="))?;
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
    if mode == Some(UserCredentialMode::OAuth2) && gw.grants().is_some() {
        return super::connect_oauth::begin(&gw, grant, &headers).await;
    }
    let (Some(u), Some(store)) = (
        snapshot
            .target(&grant.namespace, &grant.target)
            .and_then(|t| t.user_credential.clone())
            .filter(|u| u.mode == UserCredentialMode::Secret),
        gw.connections.as_ref(),
    ) else {
        return bad_link();
    };
    let Some(value) = form_value(&body).map(SecretString::from) else {
        audit(&gw, Some(&grant), "connect_bad_value");
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
        audit(&gw, Some(&grant), "connect_failed");
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
    audit(&gw, Some(&grant), "connected");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_decode_and_malformed_ones_are_refused() {
        assert_eq!(form_value(b"value=ab%2Bc+d").as_deref(), Some("ab+c d"));
        assert_eq!(form_value(b"x=1&value=tok").as_deref(), Some("tok"));
        assert_eq!(form_value(b"value=%zz"), None);
        assert_eq!(form_value(b"value=%4"), None);
        assert_eq!(form_value(b"other=1"), None);
        assert_eq!(
            escape("<b a=\"x\">&'"),
            "&lt;b a=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
