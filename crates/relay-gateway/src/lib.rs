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
//! What each session did is counted ([`Gateway::usage`]).
//!
//! Modules: `policy` and `provider` decide (pure); `dial` reaches upstreams (resolver, proxy,
//! TLS); `serve` accepts and dispatches; `connect` and `forward` act; `usage` counts.

pub mod dial;
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

pub use dial::{DialConfig, DialError, UpstreamProxy};
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
    routes: RwLock<Arc<Routes>>,
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

    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }
}

impl Gateway {
    /// A gateway with no sessions and no providers; everything it runs stops with `stop`.
    pub fn new(config: GatewayConfig, stop: CancellationToken) -> Result<Gateway, GatewayError> {
        let tls = dial::client_tls(&config.extra_ca).map_err(GatewayError::Tls)?;
        let dialer = Dialer::new(config.dial, Arc::new(tls));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(Connector {
                dialer: dialer.clone(),
            });
        Ok(Gateway {
            inner: Arc::new(Inner {
                dialer,
                client,
                routes: RwLock::new(Arc::new(Routes::default())),
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
