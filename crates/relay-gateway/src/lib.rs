//! The egress gateway: how a sandbox without a network of its own reaches the world, only
//! through the relay.
//!
//! Each session gets a Unix socket ([`Gateway::open`]) in a directory its sandbox sees; a
//! forwarder inside the sandbox carries `127.0.0.1:<port>` to it. On that socket the gateway
//! speaks HTTP/1.1 and serves two things:
//!
//! - **model calls** at `/p/<provider>/<path>` ([`provider`]): forwarded to the provider's API
//!   with every credential the sandbox sent removed and the relay's key added; responses stream
//!   back as they arrive. The keys live here ([`Gateway::set_routes`]), never in a sandbox.
//! - **everything else** through `CONNECT host:port` ([`policy`]): the session's
//!   [`EgressPolicy`] decides, the relay resolves the name and refuses addresses a sandbox may
//!   not reach, and every CONNECT is answered with a status.
//!
//! What each session did is counted ([`Gateway::usage`]). Secrets bound to domains are put in
//! only on requests to those domains ([`intercept`], [`Gateway::set_domain_secrets`]).
//!
//! Modules: `policy` and `provider` decide (pure); `dial` reaches upstreams (resolver, proxy,
//! TLS); `serve` accepts and dispatches; `connect` and `forward` act; `usage` counts.

pub mod dial;
pub mod fetch;
pub mod intercept;
pub mod policy;
pub mod provider;
pub mod usage;

mod connect;
mod forward;
mod serve;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use connect::error_chain;
pub use dial::{DialConfig, DialError, UpstreamProxy};
pub use fetch::{FetchError, Fetched};
pub use hyper::Method;
pub use intercept::{Authority, AuthorityError, DomainSecret};
pub use policy::{EgressMode, EgressPolicy, HostPattern};
pub use provider::{ApiKind, ProviderRoute, Routes, Upstream};
pub use usage::UsageReport;

use crate::dial::{Connector, Dialer};
use crate::forward::CountedBody;
use crate::usage::SessionUsage;

/// Bounds on what one session's sandbox can make the gateway hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once per session; more wait in the socket's backlog.
    pub max_connections_per_session: usize,
    /// How long a client has to send a request's headers (also the idle time of a kept-alive
    /// connection).
    pub header_read_timeout: Duration,
    /// Largest request head accepted (larger ones are answered 431).
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections_per_session: 256,
            header_read_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// How the gateway reaches upstreams and what it bounds.
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    /// Resolution, timeouts and the upstream proxy.
    pub dial: DialConfig,
    /// CA certificates trusted for upstream TLS besides the built-in and the host's.
    pub extra_ca: Vec<CertificateDer<'static>>,
    /// Per-session bounds.
    pub limits: Limits,
    /// The relay's CA for hosts that get domain-bound secrets; without it, such secrets are
    /// never substituted (every host is tunneled untouched).
    pub authority: Option<Arc<Authority>>,
}

/// Why the gateway could not be built or a session's socket opened.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The TLS configuration was refused (an unusable CA certificate).
    #[error("the upstream TLS configuration is invalid")]
    Tls(#[source] rustls::Error),
    /// The session's socket could not be bound.
    #[error("cannot serve the egress socket {path}")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Reads PEM certificates (an operator's CA bundle).
pub fn read_pem_certificates(path: &Path) -> std::io::Result<Vec<CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
        .collect();
    let certs = certs.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if certs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// The relay's egress gateway; cheap to clone.
#[derive(Clone, Debug)]
pub struct Gateway {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    dialer: Dialer,
    client: Client<Connector, CountedBody>,
    /// For requests to hosts the sandbox chose (intercepted ones): checked like its tunnels.
    sandbox_client: Client<Connector, CountedBody>,
    /// For the relay's own requests ([`Gateway::fetch`]).
    fetch_client: Client<Connector, http_body_util::Empty<bytes::Bytes>>,
    routes: RwLock<Arc<Routes>>,
    domain_secrets: RwLock<Arc<Vec<DomainSecret>>>,
    authority: Option<Arc<Authority>>,
    /// The CA certificate and the bundle (the host's roots and the CA) sandboxes trust.
    trust: Option<(bytes::Bytes, Option<bytes::Bytes>)>,
    sessions: Mutex<HashMap<String, Open>>,
    usage: Mutex<HashMap<String, Arc<SessionUsage>>>,
    pub(crate) limits: Limits,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.routes())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

struct Open {
    socket: PathBuf,
    policy: Arc<RwLock<Arc<EgressPolicy>>>,
    stop: CancellationToken,
}

/// The relay's CA certificate in a session's egress directory.
pub const TRUST_CA_FILE: &str = "ca.pem";
/// The host's CA certificates and the relay's, in a session's egress directory.
pub const TRUST_BUNDLE_FILE: &str = "ca-bundle.pem";

/// Idle upstream connections are kept this long for the next model request.
const POOL_IDLE: Duration = Duration::from_secs(90);

impl Inner {
    pub(crate) fn routes(&self) -> Arc<Routes> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn client(&self) -> &Client<Connector, CountedBody> {
        &self.client
    }

    pub(crate) fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    pub(crate) fn sandbox_client(&self) -> &Client<Connector, CountedBody> {
        &self.sandbox_client
    }

    pub(crate) fn fetch_client(&self) -> &Client<Connector, http_body_util::Empty<bytes::Bytes>> {
        &self.fetch_client
    }

    pub(crate) fn domain_secrets(&self) -> Arc<Vec<DomainSecret>> {
        self.domain_secrets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The TLS configuration for an intercepted tunnel to `host:port`, when a domain-bound
    /// secret applies to it (and the relay has a CA).
    pub(crate) fn intercepts(&self, host: &str, port: u16) -> Option<Arc<rustls::ServerConfig>> {
        let authority = self.authority.as_ref()?;
        let secrets = self.domain_secrets();
        if intercept::secrets_for(&secrets, host, port).is_empty() {
            return None;
        }
        match authority.server_config(host) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(host, error = %e, "cannot make a certificate; the host is tunneled untouched");
                None
            }
        }
    }

    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }
}

impl Gateway {
    /// A gateway with no sessions and no providers; everything it runs stops with `stop`.
    pub fn new(config: GatewayConfig, stop: CancellationToken) -> Result<Gateway, GatewayError> {
        let tls = dial::client_tls(&config.extra_ca).map_err(GatewayError::Tls)?;
        let dialer = Dialer::new(config.dial, Arc::new(tls));
        let client_for = |sandbox_target| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE)
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .build(Connector {
                    dialer: dialer.clone(),
                    sandbox_target,
                })
        };
        let (client, sandbox_client) = (client_for(false), client_for(true));
        let fetch_client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(Connector {
                dialer: dialer.clone(),
                sandbox_target: false,
            });
        let trust = config
            .authority
            .as_ref()
            .map(|a| intercept::bundle(a.ca_pem()));
        Ok(Gateway {
            inner: Arc::new(Inner {
                dialer,
                client,
                sandbox_client,
                fetch_client,
                routes: RwLock::new(Arc::new(Routes::default())),
                domain_secrets: RwLock::new(Arc::new(Vec::new())),
                authority: config.authority,
                trust,
                sessions: Mutex::new(HashMap::new()),
                usage: Mutex::new(HashMap::new()),
                limits: config.limits,
                stop,
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// Replaces the providers served to every session (their keys included); requests already
    /// forwarded keep the key they went out with.
    pub fn set_routes(&self, routes: Routes) {
        *self.inner.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
    }

    /// Replaces the domain-bound secrets substituted on intercepted requests.
    pub fn set_domain_secrets(&self, secrets: Vec<DomainSecret>) {
        *self
            .inner
            .domain_secrets
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(secrets);
    }

    /// The variables a sandbox with the gateway trusts the relay's CA through, each naming a
    /// file of its egress directory mounted at `mount`: Node's extra CA file, and, when the
    /// host has a CA store to build a full bundle from, the bundle for OpenSSL, git, curl and
    /// Python (which replace their store with it). Empty without a CA.
    pub fn trust_variables(&self, mount: &str) -> Vec<(String, String)> {
        let Some((_, bundle)) = &self.inner.trust else {
            return Vec::new();
        };
        let mut out = vec![(
            "NODE_EXTRA_CA_CERTS".to_owned(),
            format!("{mount}/{TRUST_CA_FILE}"),
        )];
        if bundle.is_some() {
            for name in [
                "SSL_CERT_FILE",
                "GIT_SSL_CAINFO",
                "CURL_CA_BUNDLE",
                "REQUESTS_CA_BUNDLE",
            ] {
                out.push((name.to_owned(), format!("{mount}/{TRUST_BUNDLE_FILE}")));
            }
        }
        out
    }

    /// The providers served now.
    pub fn routes(&self) -> Arc<Routes> {
        self.inner.routes()
    }

    /// Serves session `session` on a socket at `socket` with `policy`. Opening a session that is
    /// open at the same path only replaces its policy; otherwise a stale socket file is replaced
    /// (after a relay restart, the sandbox's forwarder reaches the new one at once).
    pub fn open(
        &self,
        session: &str,
        socket: &Path,
        policy: EgressPolicy,
    ) -> Result<(), GatewayError> {
        let mut sessions = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(open) = sessions.get(session)
            && open.socket == socket
            && !open.stop.is_cancelled()
        {
            *open.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
            return Ok(());
        }
        if let Some(old) = sessions.remove(session) {
            old.stop.cancel();
        }
        self.write_trust(socket)
            .map_err(|source| GatewayError::Bind {
                path: socket.to_owned(),
                source,
            })?;
        let listener = serve::bind(socket).map_err(|source| GatewayError::Bind {
            path: socket.to_owned(),
            source,
        })?;
        let stop = self.inner.stop.child_token();
        let policy = Arc::new(RwLock::new(Arc::new(policy)));
        let ctx = serve::Ctx {
            gateway: self.inner.clone(),
            session: Arc::from(session),
            usage: self.session_usage(session),
            policy: policy.clone(),
            stop: stop.clone(),
        };
        self.inner.spawn(serve::accept_loop(listener, ctx));
        sessions.insert(
            session.to_owned(),
            Open {
                socket: socket.to_owned(),
                policy,
                stop,
            },
        );
        Ok(())
    }

    /// Puts the CA files sandboxes trust beside `socket` (replacing them whole, never through
    /// a link: the directory is only the relay's to write).
    fn write_trust(&self, socket: &Path) -> std::io::Result<()> {
        let (Some((ca, bundle)), Some(dir)) = (&self.inner.trust, socket.parent()) else {
            return Ok(());
        };
        for (name, bytes) in [
            (TRUST_CA_FILE, Some(ca)),
            (TRUST_BUNDLE_FILE, bundle.as_ref()),
        ] {
            let Some(bytes) = bytes else { continue };
            let tmp = dir.join(format!(".{name}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, dir.join(name))?;
        }
        Ok(())
    }

    /// Whether session `session` is being served.
    pub fn is_open(&self, session: &str) -> bool {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
            .is_some_and(|o| !o.stop.is_cancelled())
    }

    /// Stops serving session `session`: its socket is removed, its connections and tunnels
    /// closed. Its usage is kept (see [`Gateway::forget`]).
    pub fn close(&self, session: &str) {
        let open = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(session);
        if let Some(open) = open {
            open.stop.cancel();
            if let Err(e) = std::fs::remove_file(&open.socket)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(session, error = %e, "cannot remove an egress socket");
            }
        }
    }

    /// Closes session `session` and drops its usage (the session is gone).
    pub fn forget(&self, session: &str) {
        self.close(session);
        self.inner
            .usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(session);
    }

    /// What session `session` did through the gateway since the relay started.
    pub fn usage(&self, session: &str) -> UsageReport {
        self.session_usage(session).report()
    }

    fn session_usage(&self, session: &str) -> Arc<SessionUsage> {
        self.inner
            .usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(session.to_owned())
            .or_default()
            .clone()
    }

    /// Waits for every connection and tunnel to end once the stop token is cancelled.
    pub async fn stopped(&self) {
        self.inner.stop.cancelled().await;
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}
