//! Model calls: a sandbox's `/p/<provider>/<path>` request forwarded to the provider with the
//! relay's key, its response streamed back frame by frame (server-sent events arrive as the
//! provider sends them), usage counted on the way.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};

use crate::provider::{RouteError, prepare_headers, split_route, strip_hop_by_hop, upstream_uri};
use crate::serve::{Ctx, GatewayBody, error_response};
use crate::usage::{Exchange, SessionUsage, TokenTap};

/// Serves one model request.
pub(crate) async fn model(ctx: &Ctx, req: Request<Incoming>) -> Response<GatewayBody> {
    let Some((id, rest)) = split_route(req.uri().path()) else {
        return error_response(StatusCode::NOT_FOUND, "not a gateway path");
    };
    let routes = ctx.gateway.routes();
    let Some(route) = routes.get(id).cloned() else {
        let e = RouteError::UnknownProvider(id.to_owned());
        tracing::info!(session = %ctx.session, provider = id, "model request refused: {e}");
        return error_response(StatusCode::NOT_FOUND, &e.to_string());
    };
    if req.method() != Method::POST && req.method() != Method::GET {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "the gateway forwards only GET and POST to model providers",
        );
    }
    ctx.usage.request_started(&route.id);
    let uri = match upstream_uri(&route, rest, req.uri().query()) {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(session = %ctx.session, provider = %route.id, "model request refused: {e}");
            ctx.usage.request_ended(
                &route.id,
                Exchange {
                    failed: true,
                    ..Exchange::default()
                },
            );
            return error_response(StatusCode::FORBIDDEN, &e.to_string());
        }
    };
    let (mut parts, body) = req.into_parts();
    prepare_headers(&mut parts.headers, &route);
    parts.uri = uri;
    parts.version = hyper::Version::HTTP_11;
    let sent = Arc::new(AtomicU64::new(0));
    let upstream_req = Request::from_parts(
        parts,
        CountedBody {
            inner: body,
            sent: sent.clone(),
        },
    );
    let res = match ctx.gateway.client().request(upstream_req).await {
        Ok(r) => r,
        Err(e) => {
            let (status, message) = upstream_failure(&e, &route.upstream.to_string());
            tracing::warn!(session = %ctx.session, provider = %route.id, error = %message, "model request failed");
            ctx.usage.request_ended(
                &route.id,
                Exchange {
                    failed: true,
                    bytes_sent: sent.load(Ordering::Relaxed),
                    ..Exchange::default()
                },
            );
            return error_response(status, &message);
        }
    };
    let (mut parts, body) = res.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let content_type = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let tapped = TappedBody {
        inner: body,
        tap: Some(TokenTap::new(content_type)),
        failed: !parts.status.is_success(),
        received: 0,
        sent,
        usage: ctx.usage.clone(),
        provider: route.id.clone(),
    };
    Response::from_parts(parts, GatewayBody::new(tapped))
}

/// The status and message for a request the client could not complete: 504 when connecting
/// timed out, 502 otherwise, with the causes spelled out.
fn upstream_failure(e: &hyper_util::client::legacy::Error, upstream: &str) -> (StatusCode, String) {
    let mut causes = Vec::new();
    let mut timeout = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(d) = s.downcast_ref::<crate::dial::DialError>() {
            timeout |= d.is_timeout();
        }
        causes.push(s.to_string());
        source = s.source();
    }
    let status = if timeout {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    };
    let why = if causes.is_empty() {
        e.to_string()
    } else {
        causes.join(": ")
    };
    (
        status,
        format!("the relay could not reach {upstream}: {why}"),
    )
}

/// A request body on its way upstream, its bytes counted.
pub(crate) struct CountedBody {
    inner: Incoming,
    sent: Arc<AtomicU64>,
}

impl CountedBody {
    /// `inner`, counting into `sent`.
    pub(crate) fn new(inner: Incoming, sent: Arc<AtomicU64>) -> CountedBody {
        CountedBody { inner, sent }
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(d) = f.data_ref()
        {
            self.sent.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A provider's response body on its way to the sandbox: passed on frame by frame, read for
/// tokens, and recorded in the session's usage when it ends (or is dropped).
struct TappedBody {
    inner: Incoming,
    tap: Option<TokenTap>,
    failed: bool,
    received: u64,
    sent: Arc<AtomicU64>,
    usage: Arc<SessionUsage>,
    provider: String,
}

impl TappedBody {
    fn finish(&mut self) {
        if let Some(tap) = self.tap.take() {
            let (input_tokens, output_tokens) = tap.finish();
            self.usage.request_ended(
                &self.provider,
                Exchange {
                    failed: self.failed,
                    input_tokens,
                    output_tokens,
                    bytes_sent: self.sent.load(Ordering::Relaxed),
                    bytes_received: self.received,
                },
            );
        }
    }
}

impl Body for TappedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    self.received += d.len() as u64;
                    if let Some(tap) = &mut self.tap {
                        tap.feed(d);
                    }
                }
            }
            Some(Err(_)) => {
                self.failed = true;
                self.finish();
            }
            None => self.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TappedBody {
    fn drop(&mut self) {
        // Dropped before its end: the sandbox went away mid-stream.
        if self.tap.is_some() && !self.inner.is_end_stream() {
            self.failed = true;
        }
        self.finish();
    }
}
