//! Reaching upstream hosts: names resolved by the relay (the operator's static mappings first,
//! then the system resolver), addresses a sandbox may not reach refused, TCP with a connect
//! timeout, through the operator's upstream proxy when there is one, and TLS toward providers.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::policy::is_public;

/// A byte stream to an upstream: a TCP connection, a tunnel through a proxy, TLS over either.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The operator's HTTP proxy for the relay's own outbound connections.
#[derive(Clone)]
pub struct UpstreamProxy {
    host: String,
    port: u16,
    auth: Option<SecretString>,
}

impl fmt::Debug for UpstreamProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UpstreamProxy({}:{})", self.host, self.port)
    }
}

impl std::str::FromStr for UpstreamProxy {
    type Err = String;
    /// `http://[user:password@]host:port`.
    fn from_str(raw: &str) -> Result<UpstreamProxy, String> {
        let bad =
            || format!("the upstream proxy must be http://[user:password@]host:port, not {raw:?}");
        let rest = raw.trim().strip_prefix("http://").ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let uri: Uri = format!("http://{hostport}").parse().map_err(|_| bad())?;
        let host = uri.host().ok_or_else(bad)?.to_owned();
        if uri.path() != "/" || hostport.contains('/') {
            return Err(bad());
        }
        let auth = auth.map(|a| {
            use base64::Engine;
            let decoded: Vec<u8> = percent_encoding::percent_decode_str(a).collect();
            SecretString::from(base64::engine::general_purpose::STANDARD.encode(decoded))
        });
        Ok(UpstreamProxy {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: uri.port_u16().unwrap_or(80),
            auth,
        })
    }
}

/// How the relay reaches upstream hosts.
#[derive(Debug, Clone)]
pub struct DialConfig {
    /// Names the operator mapped to addresses (like `curl --resolve`): used as given, never
    /// checked, never sent to the proxy.
    pub resolve: HashMap<String, Vec<IpAddr>>,
    /// How long resolving and connecting may take together.
    pub connect_timeout: Duration,
    /// The operator's proxy for everything not mapped.
    pub proxy: Option<UpstreamProxy>,
}

impl Default for DialConfig {
    fn default() -> DialConfig {
        DialConfig {
            resolve: HashMap::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            proxy: None,
        }
    }
}

/// Default of [`DialConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses a static mapping `host=address` (or `host:port=address` for compatibility with
/// `curl --resolve`'s spirit; the port is ignored: a name maps to addresses on every port).
pub fn parse_mapping(raw: &str) -> Result<(String, IpAddr), String> {
    let (name, addr) = raw
        .split_once('=')
        .ok_or_else(|| format!("a mapping is host=address, not {raw:?}"))?;
    let name = name.trim().to_ascii_lowercase();
    let name = name.split(':').next().unwrap_or_default().to_owned();
    let addr = addr.trim().trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} in {raw:?} is not an IP address"))?;
    if name.is_empty() {
        return Err(format!("a mapping needs a host name: {raw:?}"));
    }
    Ok((name, ip))
}

/// Why no connection to an upstream was made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Every address the name has is one a sandbox may not reach.
    #[error("{host} resolves only to addresses sandboxes may not reach ({addrs})")]
    Forbidden {
        /// The name.
        host: String,
        /// Where it resolved.
        addrs: String,
    },
    /// The name does not resolve.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// No address accepted the connection.
    #[error("cannot connect to {target}")]
    Connect {
        /// `host:port`.
        target: String,
        /// The last address's error.
        #[source]
        source: io::Error,
    },
    /// Resolving and connecting took longer than the connect timeout.
    #[error("connecting to {target} timed out after {after:?}")]
    Timeout {
        /// `host:port`.
        target: String,
        /// The timeout.
        after: Duration,
    },
    /// The upstream proxy refused or failed.
    #[error("the relay's upstream proxy could not reach {target}: {reason}")]
    Proxy {
        /// `host:port`.
        target: String,
        /// What it said.
        reason: String,
    },
    /// The TLS handshake failed.
    #[error("TLS with {host} failed")]
    Tls {
        /// The name.
        host: String,
        /// rustls's error.
        #[source]
        source: io::Error,
    },
}

impl DialError {
    /// Whether the failure is the connect timeout's (answered 504 rather than 502).
    pub fn is_timeout(&self) -> bool {
        matches!(self, DialError::Timeout { .. })
    }
}

/// Opens connections to upstreams.
#[derive(Clone)]
pub(crate) struct Dialer {
    config: Arc<DialConfig>,
    tls: tokio_rustls::TlsConnector,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    pub(crate) fn new(config: DialConfig, tls: Arc<rustls::ClientConfig>) -> Dialer {
        Dialer {
            config: Arc::new(config),
            tls: tokio_rustls::TlsConnector::from(tls),
        }
    }

    /// A TCP stream to `host:port`. With `sandbox_target`, the name is the sandbox's choice:
    /// only public addresses are used (a mapped name excepted).
    pub(crate) async fn tcp(
        &self,
        host: &str,
        port: u16,
        sandbox_target: bool,
    ) -> Result<Box<dyn Io>, DialError> {
        let target = format!("{host}:{port}");
        let after = self.config.connect_timeout;
        tokio::time::timeout(after, self.tcp_untimed(host, port, sandbox_target))
            .await
            .unwrap_or(Err(DialError::Timeout { target, after }))
    }

    async fn tcp_untimed(
        &self,
        host: &str,
        port: u16,
        sandbox_target: bool,
    ) -> Result<Box<dyn Io>, DialError> {
        if let Some(ips) = self.config.resolve.get(host) {
            let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
            return connect_any(host, port, &addrs).await;
        }
        if let Some(proxy) = &self.config.proxy {
            return through_proxy(proxy, host, port).await;
        }
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| DialError::Resolve {
                host: host.to_owned(),
                source,
            })?
            .collect();
        let usable: Vec<SocketAddr> = if sandbox_target {
            resolved
                .iter()
                .copied()
                .filter(|a| is_public(a.ip()))
                .collect()
        } else {
            resolved.clone()
        };
        if usable.is_empty() {
            return Err(DialError::Forbidden {
                host: host.to_owned(),
                addrs: resolved
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        connect_any(host, port, &usable).await
    }

    /// TLS over `io` to `host` (HTTP/1.1 only).
    pub(crate) async fn tls(&self, io: Box<dyn Io>, host: &str) -> Result<Box<dyn Io>, DialError> {
        let tls_err = |source| DialError::Tls {
            host: host.to_owned(),
            source,
        };
        let name = rustls_pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| tls_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let stream = self.tls.connect(name, io).await.map_err(tls_err)?;
        Ok(Box::new(stream))
    }
}

async fn connect_any(
    host: &str,
    port: u16,
    addrs: &[SocketAddr],
) -> Result<Box<dyn Io>, DialError> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return Ok(Box::new(tcp));
            }
            Err(e) => last = e,
        }
    }
    Err(DialError::Connect {
        target: format!("{host}:{port}"),
        source: last,
    })
}

/// A tunnel to `host:port` through the operator's proxy (HTTP CONNECT, spoken by hyper).
async fn through_proxy(
    proxy: &UpstreamProxy,
    host: &str,
    port: u16,
) -> Result<Box<dyn Io>, DialError> {
    let target = format!("{host}:{port}");
    let fail = |reason: String| DialError::Proxy {
        target: target.clone(),
        reason,
    };
    let tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|e| fail(format!("cannot connect to the proxy: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream proxy connection ended");
        }
    });
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        target.clone()
    };
    let mut req = hyper::Request::connect(authority.as_str())
        .header(hyper::header::HOST, authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| fail(e.to_string()))?;
    if let Some(auth) = &proxy.auth {
        let mut v =
            hyper::header::HeaderValue::from_str(&format!("Basic {}", auth.expose_secret()))
                .map_err(|e| fail(e.to_string()))?;
        v.set_sensitive(true);
        req.headers_mut()
            .insert(hyper::header::PROXY_AUTHORIZATION, v);
    }
    let res = send
        .send_request(req)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !res.status().is_success() {
        return Err(fail(format!("it answered {}", res.status())));
    }
    let upgraded = hyper::upgrade::on(res)
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(Box::new(TokioIo::new(upgraded)))
}

/// hyper's client connector over a [`Dialer`]: `https` URIs get TLS, `http` ones plain TCP.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    pub(crate) dialer: Dialer,
    /// Whether the host is the sandbox's choice (checked like a CONNECT target) rather than a
    /// provider the operator configured.
    pub(crate) sandbox_target: bool,
}

/// A connection the client pools.
pub(crate) struct Conn(TokioIo<Box<dyn Io>>);

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Conn")
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, DialError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialer = self.dialer.clone();
        let sandbox_target = self.sandbox_target;
        Box::pin(async move {
            let tls = uri.scheme_str() == Some("https");
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let tcp = dialer.tcp(&host, port, sandbox_target).await?;
            let io = if tls {
                dialer.tls(tcp, &host).await?
            } else {
                tcp
            };
            Ok(Conn(TokioIo::new(io)))
        })
    }
}

/// The roots upstream certificates are checked against: Mozilla's (built in, so a host without
/// a CA bundle works), the host's own, and `extra` PEM certificates (the operator's CA file).
pub fn client_tls(
    extra: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, "host CA certificates loaded");
    for cert in extra {
        roots.add(cert.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_parse_like_curl_resolve() {
        assert_eq!(
            parse_mapping("LLM.test=127.0.0.1").unwrap(),
            ("llm.test".into(), "127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            parse_mapping("llm.test:443=[::1]").unwrap(),
            ("llm.test".into(), "::1".parse().unwrap())
        );
        assert!(parse_mapping("llm.test").is_err());
        assert!(parse_mapping("llm.test=localhost").is_err());
        assert!(parse_mapping("=1.2.3.4").is_err());
    }

    #[test]
    fn upstream_proxies_parse_with_optional_credentials() {
        let p: UpstreamProxy = "http://proxy.corp:3128".parse().unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.auth.is_none()),
            ("proxy.corp", 3128, true)
        );
        let p: UpstreamProxy = "http://me:p%40ss@10.0.0.1:8080/".parse().unwrap();
        assert_eq!((p.host.as_str(), p.port), ("10.0.0.1", 8080));
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(p.auth.unwrap().expose_secret())
            .unwrap();
        assert_eq!(decoded, b"me:p@ss");
        assert!(
            !format!("{:?}", "http://me:pw@h:1".parse::<UpstreamProxy>().unwrap()).contains("pw")
        );
        for bad in ["https://p:1", "p:1", "http://p:1/path"] {
            assert!(bad.parse::<UpstreamProxy>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn sandbox_targets_resolving_only_to_private_addresses_are_refused() {
        let tls = Arc::new(client_tls(&[]).unwrap());
        let dialer = Dialer::new(DialConfig::default(), tls);
        match dialer.tcp("localhost", 9, true).await {
            Err(DialError::Forbidden { host, addrs }) => {
                assert_eq!(host, "localhost");
                assert!(
                    addrs.contains("127.0.0.1") || addrs.contains("::1"),
                    "{addrs}"
                );
            }
            Err(e) => panic!("expected Forbidden, got {e}"),
            Ok(_) => panic!("expected Forbidden, got a connection"),
        }
    }

    #[tokio::test]
    async fn mapped_names_reach_their_address_and_refusals_are_connect_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = DialConfig {
            resolve: HashMap::from([("llm.test".to_owned(), vec!["127.0.0.1".parse().unwrap()])]),
            ..DialConfig::default()
        };
        let dialer = Dialer::new(config, Arc::new(client_tls(&[]).unwrap()));
        assert!(dialer.tcp("llm.test", port, true).await.is_ok());
        drop(listener);
        match dialer.tcp("llm.test", port, true).await {
            Err(DialError::Connect { target, .. }) => {
                assert_eq!(target, format!("llm.test:{port}"))
            }
            Err(e) => panic!("expected Connect, got {e}"),
            Ok(_) => panic!("expected Connect, got a connection"),
        }
    }
}
