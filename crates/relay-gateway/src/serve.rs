//! One session's socket: accepting connections (at most so many at once), speaking HTTP/1.1 on
//! them with hyper (bounded headers, a deadline for them), and sending each request where its
//! form says: `CONNECT` to a tunnel, `/p/<provider>/…` to the provider, anything else refused.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::Inner;
use crate::policy::EgressPolicy;
use crate::usage::SessionUsage;

/// Every response body the gateway sends.
pub(crate) type GatewayBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// What a session's connections share.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) gateway: Arc<Inner>,
    pub(crate) session: Arc<str>,
    pub(crate) usage: Arc<SessionUsage>,
    pub(crate) policy: Arc<RwLock<Arc<EgressPolicy>>>,
    /// Cancelled when the session's gateway closes (or the relay stops).
    pub(crate) stop: CancellationToken,
}

impl Ctx {
    /// The session's policy now.
    pub(crate) fn policy(&self) -> Arc<EgressPolicy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A JSON error in the shape provider SDKs print: `{"error":{"type":…,"message":…}}`.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response<GatewayBody> {
    let body = serde_json::json!({
        "error": {"type": "pi_relay_gateway", "message": message}
    })
    .to_string();
    let mut res = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *res.status_mut() = status;
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    res
}

/// Binds the session's socket at `path`, replacing a stale one (never anything else), and
/// makes it connectable by the forwarder's and the sandbox's users: its directory (0755) is
/// only reachable through the sandbox's mount, its parents are the relay's alone.
pub(crate) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Accepts the session's connections until `ctx.stop`.
pub(crate) async fn accept_loop(listener: UnixListener, ctx: Ctx) {
    let limits = ctx.gateway.limits;
    let slots = Arc::new(tokio::sync::Semaphore::new(
        limits.max_connections_per_session,
    ));
    loop {
        // Wait for a free slot before accepting: beyond the cap, connections wait in the
        // socket's backlog instead of costing the relay anything.
        let permit = tokio::select! {
            () = ctx.stop.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            () = ctx.stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(session = %ctx.session, error = %e, "accepting an egress connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let conn_ctx = ctx.clone();
        ctx.gateway.spawn(async move {
            let _permit = permit;
            let svc_ctx = conn_ctx.clone();
            let service = hyper::service::service_fn(move |req| {
                let ctx = svc_ctx.clone();
                async move { Ok::<_, std::convert::Infallible>(dispatch(&ctx, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = conn_ctx.stop.cancelled() => return,
            };
            if let Err(e) = result {
                tracing::debug!(session = %conn_ctx.session, error = %e, "egress connection ended with an error");
            }
        });
    }
}

async fn dispatch(ctx: &Ctx, req: Request<Incoming>) -> Response<GatewayBody> {
    if req.method() == Method::CONNECT {
        return crate::connect::tunnel(ctx, req).await;
    }
    if req.uri().scheme().is_some() {
        tracing::info!(session = %ctx.session, uri = %req.uri(), "egress denied: plain-HTTP proxy request");
        return error_response(
            StatusCode::FORBIDDEN,
            "the relay does not forward plain-HTTP proxy requests; use https:// (CONNECT)",
        );
    }
    if req.uri().path().starts_with(crate::provider::ROUTE_PREFIX) {
        return crate::forward::model(ctx, req).await;
    }
    error_response(
        StatusCode::NOT_FOUND,
        "this is the pi-relay egress gateway: model providers are under /p/<provider>/, \
         other hosts through CONNECT",
    )
}
