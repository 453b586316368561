//! TLS for [`MockLlm::start_tls`](crate::MockLlm::start_tls): a throwaway CA, a certificate for
//! the names the mock answers to, and a listener that hands axum decrypted connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish the TLS handshake before its connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A CA made for one test run, and the acceptor serving a certificate it signed.
pub(crate) struct TestCa {
    /// The CA certificate, PEM: what a client must trust.
    pub(crate) ca_pem: String,
    /// Serves the leaf certificate.
    pub(crate) acceptor: TlsAcceptor,
}

/// A fresh CA and a certificate for `names` (host names) signed by it.
pub(crate) fn test_ca(names: &[&str]) -> std::io::Result<TestCa> {
    let err = std::io::Error::other;
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "relay-testkit mock LLM CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().map_err(err)?;
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let leaf = rcgen::CertificateParams::new(names)
        .map_err(err)?
        .signed_by(&leaf_key, &issuer)
        .map_err(err)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .map_err(std::io::Error::other)?;
    Ok(TestCa {
        ca_pem: ca_cert.pem(),
        acceptor: TlsAcceptor::from(Arc::new(server)),
    })
}

/// A loopback listener whose connections axum gets after their TLS handshake. A client that
/// fails or stalls the handshake is dropped; the listener goes on.
pub(crate) struct TlsListener {
    pub(crate) tcp: TcpListener,
    pub(crate) acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                // Out of descriptors, say: give it a moment rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp));
            if let Ok(Ok(tls)) = handshake.await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
