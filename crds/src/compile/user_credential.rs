//! `spec.userCredential` → `CompiledUserCredential`: the slot fits the transport, the mode's
//! block is present and well-formed, a client secret resolves in the Target's namespace.

use std::sync::Arc;

use crate::api::{OAuthClient, TargetSpec, Transport, UserCredential, UserCredentialMode};
use crate::seal::{SealingKey, slot_aad};
use crate::snapshot::{
    CompiledClient, CompiledOAuth2, CompiledTokenExchange, CompiledUserCredential, InjectAs,
    SealedClientSecret,
};

use super::credential::{
    FORBIDDEN_HEADERS, Secrets, secret_text, valid_env_name, valid_header_name,
};

type Refusal = (&'static str, String);

fn refuse(msg: impl Into<String>) -> Refusal {
    ("InvalidUserCredential", msg.into())
}

fn http_url(field: &str, u: &str) -> Result<Arc<str>, Refusal> {
    let ok = (u.starts_with("https://") || u.starts_with("http://"))
        && u.split_once("://")
            .is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with(['/', '?', '#']))
        && !u.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(u.into())
    } else {
        Err(refuse(format!(
            "userCredential.{field} {u:?} must be an http(s) URL with a host and no whitespace"
        )))
    }
}

fn scopes(list: &[String]) -> Result<Vec<Arc<str>>, Refusal> {
    list.iter()
        .map(|s| {
            // RFC 6749 §3.3 scope-token: printable ASCII except space, `"` and `\`.
            if !s.is_empty()
                && s.bytes()
                    .all(|b| b > 0x20 && b < 0x7f && b != b'"' && b != b'\\')
            {
                Ok(Arc::from(s.as_str()))
            } else {
                Err(refuse(format!(
                    "scope {s:?} is not a valid OAuth scope token"
                )))
            }
        })
        .collect()
}

fn client(
    c: &OAuthClient,
    ns: &str,
    target: &str,
    secrets: &Secrets<'_>,
    key: &SealingKey,
) -> Result<CompiledClient, Refusal> {
    if c.client_id.is_empty() {
        return Err(refuse("client.clientId must not be empty"));
    }
    let client_secret = match &c.client_secret_ref {
        None => None,
        Some(r) => {
            let text = secret_text(secrets, ns, r)?;
            let aad = slot_aad(ns, target, "client", "secret", &c.client_id);
            Some(SealedClientSecret {
                value: key.seal(&aad, &text),
                aad: aad.into(),
            })
        }
    };
    Ok(CompiledClient {
        client_id: c.client_id.as_str().into(),
        client_secret,
    })
}

/// The compiled block, or why the Target is refused.
pub(super) fn compile(
    s: &TargetSpec,
    ns: &str,
    target: &str,
    secrets: &Secrets<'_>,
    key: &SealingKey,
) -> Result<Option<CompiledUserCredential>, Refusal> {
    let Some(u) = &s.user_credential else {
        return Ok(None);
    };
    let http = matches!(
        s.transport,
        Transport::StreamableHttp | Transport::Sse | Transport::Auto
    );
    let (inject_as, name) = slot(u, http)?;
    let blocks = (
        u.secret.is_some(),
        u.oauth2.is_some(),
        u.token_exchange.is_some(),
    );
    let block_ok = match u.mode {
        UserCredentialMode::Secret => !blocks.1 && !blocks.2,
        UserCredentialMode::OAuth2 => !blocks.0 && blocks.1 && !blocks.2,
        UserCredentialMode::TokenExchange => !blocks.0 && !blocks.1 && blocks.2,
    };
    if !block_ok {
        return Err(refuse(format!(
            "mode {} needs its own block ({}) and no other",
            u.mode.as_str(),
            u.mode.as_str()
        )));
    }
    let oauth2 = match &u.oauth2 {
        None => None,
        Some(o) => {
            let resource = match (&o.resource, &s.url) {
                (Some(r), _) | (None, Some(r)) => http_url("oauth2.resource", r)?,
                (None, None) => {
                    return Err(refuse(
                        "oauth2.resource is required when the Target has no url",
                    ));
                }
            };
            if o.authorization_server.is_none() && s.url.is_none() {
                return Err(refuse(
                    "oauth2.authorizationServer is required when the Target has no url to discover it from",
                ));
            }
            Some(CompiledOAuth2 {
                authorization_server: o
                    .authorization_server
                    .as_deref()
                    .map(|a| http_url("oauth2.authorizationServer", a))
                    .transpose()?,
                client: o
                    .client
                    .as_ref()
                    .map(|c| client(c, ns, target, secrets, key))
                    .transpose()?,
                scopes: scopes(&o.scopes)?,
                resource,
            })
        }
    };
    let token_exchange = match &u.token_exchange {
        None => None,
        Some(x) => Some(CompiledTokenExchange {
            token_endpoint: http_url("tokenExchange.tokenEndpoint", &x.token_endpoint)?,
            audience: if x.audience.is_empty() {
                return Err(refuse("tokenExchange.audience must not be empty"));
            } else {
                x.audience.as_str().into()
            },
            client: client(&x.client, ns, target, secrets, key)?,
            scopes: scopes(&x.scopes)?,
        }),
    };
    let default_prefix = match (u.mode, inject_as) {
        (UserCredentialMode::Secret, _) | (_, InjectAs::Env) => "",
        _ => "Bearer ",
    };
    let prefix = u.inject.prefix.as_deref().unwrap_or(default_prefix);
    if prefix.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(refuse("inject.prefix contains CR, LF or NUL"));
    }
    Ok(Some(CompiledUserCredential {
        mode: u.mode.into(),
        inject_as,
        name,
        prefix: prefix.into(),
        display_name: u.display_name.as_deref().unwrap_or(target).into(),
        hint: u
            .secret
            .as_ref()
            .and_then(|s| s.hint.as_deref())
            .map(Arc::from),
        oauth2,
        token_exchange,
    }))
}

/// The one header (HTTP Targets) or env var (processes and pods) the user's value fills.
fn slot(u: &UserCredential, http: bool) -> Result<(InjectAs, Arc<str>), Refusal> {
    match (&u.inject.header, &u.inject.env) {
        (Some(h), None) if http => {
            let lower = h.to_ascii_lowercase();
            if !valid_header_name(h) || FORBIDDEN_HEADERS.contains(&lower.as_str()) {
                return Err(refuse(format!(
                    "inject.header {h:?} must be an HTTP token and not a hop-by-hop or MCP protocol header"
                )));
            }
            Ok((InjectAs::Header, lower.into()))
        }
        (None, Some(e)) if !http => {
            if !valid_env_name(e) {
                return Err(refuse(format!(
                    "inject.env {e:?} must match [A-Za-z_][A-Za-z0-9_]*"
                )));
            }
            Ok((InjectAs::Env, e.as_str().into()))
        }
        (Some(_), None) => Err(refuse(
            "inject.header is for HTTP transports; use inject.env for stdio and kubernetes",
        )),
        (None, Some(_)) => Err(refuse(
            "inject.env is for the stdio and kubernetes transports; use inject.header for HTTP",
        )),
        _ => Err(refuse("inject names exactly one of header or env")),
    }
}
