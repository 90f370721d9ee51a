//! Trusted-proxy authentication (off by default): behind oauth2-proxy or a similar
//! authenticating proxy, the identity arrives in request headers. Those headers are believed
//! only when the TCP peer is one of the configured proxy addresses; from anyone else they are
//! ignored and the request must authenticate with a bearer token like any other.

use std::net::IpAddr;

use axum::http::HeaderMap;
use reflow_crds::Identity;
use tracing::debug;

use super::net::any_contains;
use crate::authn::{AuthFailure, Principal};
use crate::server_config::TrustedProxyConfig;

/// Longest header value taken as a user, group or role name.
const MAX_NAME: usize = 256;

impl TrustedProxyConfig {
    fn trusts(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| any_contains(&self.sources, ip))
    }

    /// The identity a trusted proxy asserted: `None` when the peer is not a trusted proxy or
    /// sent no user header (then bearer authentication applies), an error when a trusted proxy
    /// sent unusable values.
    pub(crate) fn principal(
        &self,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> Option<Result<Principal, AuthFailure>> {
        if !self.trusts(peer) {
            if headers.contains_key(self.user_header.as_str()) {
                debug!(?peer, "identity header from an untrusted peer ignored");
            }
            return None;
        }
        let user = headers.get(self.user_header.as_str())?;
        Some(self.identity(user, headers).map(Principal::from_identity))
    }

    fn identity(
        &self,
        user: &axum::http::HeaderValue,
        headers: &HeaderMap,
    ) -> Result<Identity, AuthFailure> {
        let bad = |what: &str| AuthFailure {
            label: "proxy_header",
            message: format!("the proxy's {what} header is not usable"),
            token_presented: true,
        };
        let user = name(user.to_str().map_err(|_| bad("user"))?).ok_or_else(|| bad("user"))?;
        let list = |header: Option<&str>, what: &str| -> Result<Vec<String>, AuthFailure> {
            let Some(v) = header.and_then(|h| headers.get(h)) else {
                return Ok(Vec::new());
            };
            let v = v.to_str().map_err(|_| bad(what))?;
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| name(s).map(str::to_owned).ok_or_else(|| bad(what)))
                .collect()
        };
        let groups = list(Some(&self.groups_header), "groups")?;
        let roles = list(self.roles_header.as_deref(), "roles")?;
        let mut id = Identity::new(user, groups, roles);
        id.email = headers
            .get(self.email_header.as_str())
            .and_then(|v| v.to_str().ok())
            .and_then(name)
            .map(Into::into);
        Ok(id)
    }

    /// The client's address: from `X-Forwarded-For` when the peer is a trusted proxy, else the
    /// peer itself. Walks the list from the right, skipping trusted proxies, so a client cannot
    /// choose its address by prepending entries.
    pub(crate) fn client_addr(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        if !self.use_forwarded_for || !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        hops.into_iter()
            .rev()
            .find(|ip| !any_contains(&self.sources, *ip))
            .or(peer)
    }
}

/// A printable, bounded name without control characters.
fn name(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty() && s.len() <= MAX_NAME && !s.chars().any(char::is_control)).then_some(s)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn config(sources: &[&str]) -> TrustedProxyConfig {
        let yaml = format!(
            "sources: [{}]\nrolesHeader: x-forwarded-roles",
            sources.join(", ")
        );
        serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                *k,
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn proxy_headers_count_only_from_trusted_peers() {
        let c = config(&["10.1.0.0/16"]);
        let h = headers(&[
            ("x-forwarded-user", "alice"),
            ("x-forwarded-groups", "dev, ops"),
            ("x-forwarded-roles", "admin"),
            ("x-forwarded-email", "alice@example.com"),
        ]);
        let p = c
            .principal(ip("10.1.2.3"), &h)
            .unwrap_or_else(|| panic!("trusted peer"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&*p.identity.user, "alice");
        assert_eq!(p.identity.groups.len(), 2);
        assert_eq!(p.identity.roles.len(), 1);
        assert_eq!(p.identity.email.as_deref(), Some("alice@example.com"));
        assert!(c.principal(ip("10.2.0.1"), &h).is_none(), "untrusted peer");
        assert!(c.principal(None, &h).is_none(), "unknown peer");
        assert!(
            c.principal(ip("10.1.2.3"), &HeaderMap::new()).is_none(),
            "no user header: bearer auth applies"
        );
    }

    #[test]
    fn proxy_unusable_values_refuse() {
        let c = config(&["127.0.0.1"]);
        for bad in [
            headers(&[("x-forwarded-user", " ")]),
            headers(&[("x-forwarded-user", &"a".repeat(300))]),
            headers(&[
                ("x-forwarded-user", "bob"),
                ("x-forwarded-groups", &"g".repeat(300)),
            ]),
        ] {
            let r = c.principal(ip("127.0.0.1"), &bad);
            assert!(matches!(r, Some(Err(_))), "{bad:?}");
        }
    }

    #[test]
    fn proxy_client_address_from_forwarded_for() {
        let c = config(&["10.1.0.0/16"]);
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.1.0.7")]);
        assert_eq!(c.client_addr(ip("10.1.0.5"), &h), ip("203.0.113.9"));
        assert_eq!(
            c.client_addr(ip("192.0.2.1"), &h),
            ip("192.0.2.1"),
            "an untrusted peer's X-Forwarded-For is ignored"
        );
        assert_eq!(
            c.client_addr(ip("10.1.0.5"), &HeaderMap::new()),
            ip("10.1.0.5")
        );
    }
}
