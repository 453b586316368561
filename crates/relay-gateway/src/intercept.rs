//! Secrets bound to domains: the sandbox holds a placeholder, and the gateway puts the real value
//! in only on requests to the secret's domains. For such a host the gateway ends the sandbox's
//! TLS itself, with a certificate for the host signed by the relay's own CA (its key never
//! leaves the relay; the sandbox trusts the certificate through the usual variables), replaces
//! placeholders in the request's headers (Basic credentials decoded first) and query string,
//! and sends the request on to the real host over TLS checked as usual. Hosts with no such
//! secret are tunneled untouched (`connect`).
//!
//! Deciding what to replace is pure ([`substitute`]); the CA ([`Authority`]) and serving the
//! decrypted connection ([`serve`]) act.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HeaderMap, HeaderValue, PROXY_AUTHORIZATION};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use secrecy::{ExposeSecret, SecretString};

use crate::policy::HostPattern;
use crate::provider::strip_hop_by_hop;
use crate::serve::{Ctx, GatewayBody, error_response};

/// File names of the relay's CA in its directory.
const CA_CERT_FILE: &str = "egress-ca.pem";
const CA_KEY_FILE: &str = "egress-ca-key.pem";
/// The CA's name; a relay's CA is told apart by its key.
const CA_NAME: &str = "pi-relay egress CA";
/// Host certificates kept; beyond, the cache starts again (a certificate costs ~1 ms to make).
const MAX_CACHED_HOSTS: usize = 1024;

/// A secret the gateway substitutes on requests to its domains.
#[derive(Clone)]
pub struct DomainSecret {
    /// Its variable (for logs).
    pub name: String,
    /// What the sandbox holds instead of the value.
    pub placeholder: String,
    /// The value.
    pub value: SecretString,
    /// Where the value may go.
    pub domains: Vec<HostPattern>,
}

impl std::fmt::Debug for DomainSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainSecret")
            .field("name", &self.name)
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

/// The placeholder a sandbox holds for the secret with id `secret_id`: stable, so sandboxes
/// started at different times hold the same one, and made of characters that need no escaping
/// in a header, a URL or a shell.
pub fn placeholder_for(secret_id: &str) -> String {
    let id: String = secret_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("pi-relay-secret-{id}")
}

/// The secrets whose domains include `host:port`.
pub(crate) fn secrets_for<'a>(
    secrets: &'a [DomainSecret],
    host: &str,
    port: u16,
) -> Vec<&'a DomainSecret> {
    secrets
        .iter()
        .filter(|s| s.domains.iter().any(|d| d.matches(host, port)))
        .collect()
}

/// Replaces every placeholder of `secrets` in `headers` (in `Authorization: Basic` after
/// decoding the credentials) and in `uri`'s query (percent-encoded). Returns how many
/// replacements were made; a header that would not be valid with the value is left as it was.
pub fn substitute(headers: &mut HeaderMap, uri: &mut Uri, secrets: &[&DomainSecret]) -> usize {
    let mut count = 0;
    let replace = |text: &str, encode: fn(&str) -> String, count: &mut usize| -> Option<String> {
        let mut out = text.to_owned();
        for s in secrets {
            if out.contains(&s.placeholder) {
                *count += out.matches(&s.placeholder).count();
                out = out.replace(&s.placeholder, &encode(s.value.expose_secret()));
            }
        }
        (out != text).then_some(out)
    };
    let names: Vec<_> = headers.keys().cloned().collect();
    for name in names {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        let mut changed = false;
        let mut next = Vec::with_capacity(values.len());
        for v in values {
            let Ok(text) = v.to_str() else {
                next.push(v);
                continue;
            };
            let basic = (name == AUTHORIZATION || name == PROXY_AUTHORIZATION)
                .then(|| basic_credentials(text))
                .flatten();
            let new = match basic {
                Some(creds) => replace(&creds, |v| v.to_owned(), &mut count).map(|c| {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(c);
                    format!("Basic {b64}")
                }),
                None => replace(text, |v| v.to_owned(), &mut count),
            };
            match new.and_then(|n| HeaderValue::from_str(&n).ok()) {
                Some(n) => {
                    changed = true;
                    next.push(n);
                }
                None => next.push(v),
            }
        }
        if changed {
            headers.remove(&name);
            for v in next {
                headers.append(name.clone(), v);
            }
        }
    }
    if let Some(query) = uri.query()
        && let Some(new) = replace(query, percent_encode, &mut count)
    {
        let path = uri.path();
        if let Ok(u) = format!("{path}?{new}").parse::<Uri>() {
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = u.into_parts().path_and_query;
            if let Ok(u) = Uri::from_parts(parts) {
                *uri = u;
            }
        }
    }
    count
}

/// What a value put in a query escapes: all but RFC 3986's unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn percent_encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// The decoded `user:password` of a `Basic` authorization value.
fn basic_credentials(value: &str) -> Option<String> {
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    String::from_utf8(raw).ok()
}

/// Why the relay's CA could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// A file could not be read or written.
    #[error("cannot use the egress CA file {path}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key or certificate is not usable.
    #[error("the egress CA in {dir} is not usable: {why}")]
    Invalid {
        /// Its directory.
        dir: String,
        /// Why.
        why: String,
    },
}

/// The relay's CA for intercepted hosts, and the host certificates it made.
pub struct Authority {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
    hosts: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

fn ca_params() -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, CA_NAME);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

impl Authority {
    /// The CA kept in `dir` (`egress-ca.pem`, and `egress-ca-key.pem` readable by the relay
    /// alone), made there on first use.
    pub fn load_or_create(dir: &Path) -> Result<Authority, AuthorityError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| AuthorityError::Io { path, source }
        };
        let invalid = |why: String| AuthorityError::Invalid {
            dir: dir.display().to_string(),
            why,
        };
        let (key, ca_pem) = match std::fs::read_to_string(&key_path) {
            Ok(key_pem) => {
                let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| invalid(e.to_string()))?;
                let ca_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
                (key, ca_pem)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate().map_err(|e| invalid(e.to_string()))?;
                let mut params = ca_params().map_err(|e| invalid(e.to_string()))?;
                let now = std::time::SystemTime::now();
                params.not_before = (now - std::time::Duration::from_secs(86_400)).into();
                params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86_400)).into();
                let cert = params
                    .self_signed(&key)
                    .map_err(|e| invalid(e.to_string()))?;
                write_private(&key_path, &key.serialize_pem()).map_err(io(&key_path))?;
                let ca_pem = cert.pem();
                std::fs::write(&cert_path, &ca_pem).map_err(io(&cert_path))?;
                tracing::info!(path = %cert_path.display(), "created the egress CA");
                (key, ca_pem)
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let issuer = rcgen::Issuer::new(ca_params().map_err(|e| invalid(e.to_string()))?, key);
        Ok(Authority {
            issuer,
            ca_pem,
            hosts: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM: what sandboxes trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A TLS server configuration presenting a certificate for `host`.
    pub(crate) fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = hosts.get(host) {
            return Ok(c.clone());
        }
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(|e| e.to_string())?;
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(3600)).into();
        params.not_after = (now + std::time::Duration::from_secs(30 * 86_400)).into();
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        if hosts.len() >= MAX_CACHED_HOSTS {
            hosts.clear();
        }
        hosts.insert(host.to_owned(), config.clone());
        Ok(config)
    }
}

/// Writes `text` to a new file only the relay's user can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Serves the sandbox's side of an intercepted tunnel to `host:port`: TLS with a certificate
/// for `host`, then each request sent on to the real host with the placeholders replaced.
pub(crate) async fn serve<S>(
    ctx: Ctx,
    sandbox: S,
    host: String,
    port: u16,
    config: Arc<rustls::ServerConfig>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake = tokio::time::timeout(
        ctx.gateway.limits.header_read_timeout,
        acceptor.accept(sandbox),
    );
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(session = %ctx.session, host, error = %e, "the sandbox refused the relay's certificate (is the egress CA trusted?)");
            return;
        }
        Err(_) => return,
    };
    let limits = ctx.gateway.limits;
    let svc_ctx = ctx.clone();
    let service = hyper::service::service_fn(move |req| {
        let (ctx, host) = (svc_ctx.clone(), host.clone());
        async move { Ok::<_, std::convert::Infallible>(forward(&ctx, req, &host, port).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .serve_connection(TokioIo::new(tls), service);
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::debug!(session = %ctx.session, error = %e, "intercepted connection ended with an error");
        },
        () = ctx.stop.cancelled() => {}
    }
}

/// One decrypted request: placeholders replaced, sent to `https://host:port`.
async fn forward(
    ctx: &Ctx,
    req: Request<Incoming>,
    host: &str,
    port: u16,
) -> Response<GatewayBody> {
    let (mut parts, body) = req.into_parts();
    let authority = if port == 443 {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut uri = match format!("https://{authority}{path}").parse::<Uri>() {
        Ok(u) => u,
        Err(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "a request target the relay cannot forward",
            );
        }
    };
    let secrets = ctx.gateway.domain_secrets();
    let matching = secrets_for(&secrets, host, port);
    strip_hop_by_hop(&mut parts.headers);
    let replaced = substitute(&mut parts.headers, &mut uri, &matching);
    if replaced > 0 {
        tracing::debug!(session = %ctx.session, host, replaced, "secrets substituted");
    }
    parts.uri = uri;
    parts.version = hyper::Version::HTTP_11;
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let request = Request::from_parts(parts, crate::forward::CountedBody::new(body, sent));
    match ctx.gateway.sandbox_client().request(request).await {
        Ok(res) => {
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            use http_body_util::BodyExt;
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => {
            let message = crate::connect::error_chain(&e);
            tracing::info!(session = %ctx.session, host, error = %message, "intercepted request failed");
            error_response(
                StatusCode::BAD_GATEWAY,
                &format!("the relay could not reach {host}: {message}"),
            )
        }
    }
}

/// Bytes of the files a sandbox trusts the relay's CA through.
pub(crate) fn bundle(ca_pem: &str) -> (Bytes, Option<Bytes>) {
    let ca = Bytes::from(ca_pem.to_owned());
    let host = rustls_native_certs::load_native_certs().certs;
    if host.is_empty() {
        return (ca, None);
    }
    let mut all: Vec<pem::Pem> = host
        .iter()
        .map(|c| pem::Pem::new("CERTIFICATE", c.as_ref().to_vec()))
        .collect();
    if let Ok(p) = pem::parse(ca_pem) {
        all.push(p);
    }
    (ca, Some(Bytes::from(pem::encode_many(&all))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(placeholder: &str, value: &str, domains: &[&str]) -> DomainSecret {
        DomainSecret {
            name: "V".into(),
            placeholder: placeholder.into(),
            value: SecretString::from(value.to_owned()),
            domains: domains.iter().map(|d| d.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn placeholders_are_replaced_in_headers_basic_credentials_and_queries() {
        let s = secret("pi-relay-secret-abc", "tok en/+&", &["api.example.com"]);
        let mut headers = HeaderMap::new();
        headers.insert("x-token", HeaderValue::from_static("pi-relay-secret-abc"));
        let basic = base64::engine::general_purpose::STANDARD.encode("user:pi-relay-secret-abc");
        headers.insert(AUTHORIZATION, format!("Basic {basic}").parse().unwrap());
        headers.append("x-other", HeaderValue::from_static("keep"));
        let mut uri: Uri = "https://api.example.com/x?key=pi-relay-secret-abc&b=1"
            .parse()
            .unwrap();
        assert_eq!(substitute(&mut headers, &mut uri, &[&s]), 3);
        assert_eq!(headers["x-token"], "tok en/+&");
        let creds = basic_credentials(headers[AUTHORIZATION].to_str().unwrap()).unwrap();
        assert_eq!(creds, "user:tok en/+&");
        assert_eq!(headers["x-other"], "keep");
        assert_eq!(uri.query(), Some("key=tok%20en%2F%2B%26&b=1"));
        assert_eq!(uri.host(), Some("api.example.com"));
    }

    #[test]
    fn only_secrets_of_the_host_apply_and_invalid_values_leave_the_header_alone() {
        let a = secret("pi-relay-secret-a", "A", &["*.example.com"]);
        let b = secret("pi-relay-secret-b", "B", &["other.test:8443"]);
        let all = [a, b];
        let names = |h: &str, p: u16| -> Vec<String> {
            secrets_for(&all, h, p)
                .iter()
                .map(|s| s.placeholder.clone())
                .collect()
        };
        assert_eq!(names("api.example.com", 443), ["pi-relay-secret-a"]);
        assert!(
            names("example.com", 443).is_empty(),
            "*. names the hosts below"
        );
        assert_eq!(names("other.test", 8443), ["pi-relay-secret-b"]);
        assert!(names("other.test", 443).is_empty());
        let bad = secret("pi-relay-secret-c", "line\nbreak", &["x.test"]);
        let mut headers = HeaderMap::new();
        headers.insert("x", HeaderValue::from_static("pi-relay-secret-c"));
        let mut uri: Uri = "/p".parse().unwrap();
        substitute(&mut headers, &mut uri, &[&bad]);
        assert_eq!(headers["x"], "pi-relay-secret-c");
    }

    #[test]
    fn the_placeholder_is_stable_and_plain() {
        let p = placeholder_for("0b7e-41f2-9c1d");
        assert_eq!(p, "pi-relay-secret-0b7e41f29c1d");
        assert_eq!(p, placeholder_for("0b7e-41f2-9c1d"));
    }

    #[test]
    fn the_ca_is_made_once_kept_private_and_signs_host_certificates() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = Authority::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Authority::load_or_create(dir.path()).unwrap();
        assert_eq!(first.ca_pem(), again.ca_pem());
        assert!(first.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!first.ca_pem().contains("PRIVATE KEY"));
        let a = again.server_config("api.example.com").unwrap();
        let b = again.server_config("api.example.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "cached");
    }
}
