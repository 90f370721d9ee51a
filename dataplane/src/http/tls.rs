//! TLS and mutual TLS on the dataplane listener (optional). With a client CA, client
//! certificates are verified; `clientIdentity: certificate` makes a verified certificate an
//! identity on its own (subject CN or a SAN → user, every OU → a group), otherwise the
//! certificate only admits the connection and the bearer token names the caller.
//!
//! Handshakes run concurrently off the accept loop, each bounded by a timeout, so one slow or
//! silent client cannot stall everyone else's connections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use reflow_crds::Identity;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::hardening::{LimitedStream, PeerAddr};
use crate::server_config::{ClientAuth, ClientIdentity, TlsConfig, UserFrom};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: reading {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("tls: {0}")]
    Config(String),
}

impl TlsConfig {
    /// The rustls server configuration (HTTP/2 and HTTP/1.1 by ALPN).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        if self.client_auth != ClientAuth::None && self.client_ca_file.is_none() {
            return Err(TlsError::Config(
                "clientAuth optional/required needs clientCaFile".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs(&self.cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file).map_err(|e| TlsError::Read {
            path: self.key_file.clone(),
            reason: e.to_string(),
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match (self.client_auth, &self.client_ca_file) {
            (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
            (auth, Some(ca)) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| TlsError::Config(format!("client CA: {e}")))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(format!("server certificate: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The identity a (verified) client certificate names, if it names one.
    pub fn identity_of(&self, der: &[u8]) -> Option<Identity> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = cert.subject();
        let user = match self.user_from {
            UserFrom::CommonName => subject
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            from => cert
                .subject_alternative_name()
                .ok()
                .flatten()
                .and_then(|san| {
                    san.value
                        .general_names
                        .iter()
                        .find_map(|n| match (from, n) {
                            (UserFrom::SanEmail, GeneralName::RFC822Name(v))
                            | (UserFrom::SanUri, GeneralName::URI(v))
                            | (UserFrom::SanDns, GeneralName::DNSName(v)) => Some((*v).to_owned()),
                            _ => None,
                        })
                }),
        }?;
        let clean = |s: &str| -> Option<String> {
            let s = s.trim();
            (!s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control))
                .then(|| format!("{}{s}", self.name_prefix))
        };
        let user = clean(&user)?;
        let groups: Vec<String> = subject
            .iter_organizational_unit()
            .filter_map(|ou| ou.as_str().ok())
            .filter_map(clean)
            .collect();
        Some(Identity::new(user, groups, Vec::<String>::new()))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |reason: String| TlsError::Read {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(read_err("no certificate in the file".into()));
    }
    Ok(certs)
}

type Accepted = (LimitedStream<TlsStream<TcpStream>>, SocketAddr);

/// Accepts TCP connections, completes TLS handshakes concurrently (each within the timeout),
/// and hands finished connections to the server; at most `max_connections` are open at once.
pub struct TlsListener {
    ready: mpsc::Receiver<Accepted>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl TlsListener {
    pub fn new(
        tcp: TcpListener,
        config: TlsConfig,
        max_connections: usize,
    ) -> Result<Self, TlsError> {
        let acceptor = TlsAcceptor::from(Arc::new(config.server_config()?));
        let config = Arc::new(config);
        let local = tcp
            .local_addr()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let timeout = Duration::from_millis(config.handshake_timeout_ms.max(1));
        let slots = Arc::new(Semaphore::new(max_connections.max(1)));
        let (tx, ready) = mpsc::channel(64);
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (tcp_stream, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let config = config.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(tcp_stream)).await {
                        Ok(Ok(tls)) => {
                            let id = config.client_identity_of(&tls);
                            let conn = LimitedStream::new(tls, slot).with_client_identity(id);
                            let _ = tx.send((conn, addr)).await;
                        }
                        Ok(Err(e)) => debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            ready,
            local,
            accept_task,
        })
    }
}

impl Listener for TlsListener {
    type Io = LimitedStream<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended (listener dropped): nothing more will ever arrive.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl TlsConfig {
    /// The identity of a connection's verified client certificate, when certificates are
    /// identities here (the verifier already checked the chain against the client CA).
    fn client_identity_of(&self, tls: &TlsStream<TcpStream>) -> Option<Arc<Identity>> {
        if self.client_identity != ClientIdentity::Certificate {
            return None;
        }
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| self.identity_of(leaf.as_ref()))
            .map(Arc::new)
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        PeerAddr {
            addr: *stream.remote_addr(),
            cert: stream.io().client_identity(),
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    use super::*;

    fn cert(cn: &str, ou: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(ou) = ou {
            p.distinguished_name
                .push(DnType::OrganizationalUnitName, ou);
        }
        p.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        p.self_signed(&key)
            .unwrap_or_else(|e| panic!("{e}"))
            .der()
            .to_vec()
    }

    fn config(user_from: UserFrom, prefix: &str) -> TlsConfig {
        TlsConfig {
            cert_file: "c".into(),
            key_file: "k".into(),
            client_ca_file: None,
            client_auth: ClientAuth::Required,
            client_identity: ClientIdentity::Certificate,
            user_from,
            name_prefix: prefix.into(),
            handshake_timeout_ms: 1,
        }
    }

    #[test]
    fn tls_certificate_fields_map_to_identities() {
        let der = cert(
            "svc-ci",
            Some("platform"),
            vec![
                SanType::Rfc822Name(
                    "ci@example.com"
                        .try_into()
                        .unwrap_or_else(|e| panic!("{e:?}")),
                ),
                SanType::DnsName(
                    "ci.example.com"
                        .try_into()
                        .unwrap_or_else(|e| panic!("{e:?}")),
                ),
            ],
        );
        let id = config(UserFrom::CommonName, "cert:")
            .identity_of(&der)
            .unwrap_or_else(|| panic!("identity"));
        assert_eq!(&*id.user, "cert:svc-ci");
        assert_eq!(
            id.groups.iter().map(|g| &**g).collect::<Vec<_>>(),
            ["cert:platform"]
        );
        let by_email = config(UserFrom::SanEmail, "").identity_of(&der);
        assert_eq!(
            by_email.map(|i| i.user.to_string()),
            Some("ci@example.com".into())
        );
        let by_dns = config(UserFrom::SanDns, "").identity_of(&der);
        assert_eq!(
            by_dns.map(|i| i.user.to_string()),
            Some("ci.example.com".into())
        );
        assert!(
            config(UserFrom::SanUri, "").identity_of(&der).is_none(),
            "no URI SAN: no identity"
        );
        assert!(
            config(UserFrom::CommonName, "")
                .identity_of(b"not a cert")
                .is_none()
        );
    }

    #[test]
    fn tls_client_auth_needs_a_ca() {
        let c = config(UserFrom::CommonName, "");
        let err = c.server_config().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("tls: clientAuth optional/required needs clientCaFile")
        );
    }
}
