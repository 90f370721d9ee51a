//! The peer address of a request as the listener saw it (and address ranges, from the model).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use http::request::Parts;

pub use reflow_crds::token::cidr::{Cidr, CidrError, any_contains};

/// The TCP peer of a request, when the server was started with connect info (see
/// `http::service`), and the identity its verified client certificate names (mTLS with
/// `clientIdentity: certificate`). Absent in servers built without connect info: checks that
/// need the address then fail closed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peer {
    pub ip: Option<IpAddr>,
    pub cert: Option<std::sync::Arc<reflow_crds::Identity>>,
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ext = &parts.extensions;
        if let Some(ConnectInfo(p)) = ext.get::<ConnectInfo<super::PeerAddr>>() {
            return Ok(Peer {
                ip: Some(p.addr.ip()),
                cert: p.cert.clone(),
            });
        }
        Ok(Peer {
            ip: ext
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(a)| a.ip()),
            cert: None,
        })
    }
}
/// Whether a `--listen` value (`IP:PORT` or `localhost:PORT`) binds loopback only.
pub fn is_loopback_listen(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return addr.ip().is_loopback();
    }
    listen
        .rsplit_once(':')
        .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

#[cfg(test)]
mod loopback_tests {
    use super::is_loopback_listen;

    #[test]
    fn only_loopback_listen_addresses_count_as_loopback() {
        for ok in ["127.0.0.1:8080", "[::1]:0", "localhost:8080", "127.1.2.3:9"] {
            assert!(is_loopback_listen(ok), "{ok}");
        }
        for bad in [
            "0.0.0.0:8080",
            "[::]:0",
            "10.0.0.1:80",
            "example.com:80",
            "localhost",
        ] {
            assert!(!is_loopback_listen(bad), "{bad}");
        }
    }
}
