//! CONNECT tunnels: the session's policy decides, the relay resolves and connects, and the
//! sandbox always gets a status line (403 refused, 502 unreachable, 504 timed out, 200 and then
//! the tunnel): a proxy that closes silently makes Node's fetch reconnect forever.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::dial::DialError;
use crate::policy::{Host, Target, decide};
use crate::serve::{Ctx, GatewayBody, error_response};
use crate::usage::Verdict;

/// Answers one CONNECT, and runs its tunnel once the sandbox's side is upgraded.
pub(crate) async fn tunnel(ctx: &Ctx, mut req: Request<Incoming>) -> Response<GatewayBody> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let target = match Target::parse(&authority) {
        Ok(t) => t,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let label = target.to_string();
    let routes = ctx.gateway.routes();
    let policy = ctx.policy();
    let secrets = ctx.gateway.domain_secrets();
    let bound = |n: &str, p: u16| !crate::intercept::secrets_for(&secrets, n, p).is_empty();
    if let Err(denial) = decide(&policy, &target, |n| routes.is_provider_host(n), bound) {
        return deny(ctx, &label, &denial.to_string());
    }
    let Host::Name(name) = &target.host else {
        unreachable!("decide refuses address literals");
    };
    // A host a domain-bound secret may go to: the relay ends the sandbox's TLS and sends each
    // request on itself (port 80 carries no TLS to end: tunneled as is).
    if target.port != 80
        && let Some(config) = ctx.gateway.intercepts(name, target.port)
    {
        tracing::debug!(session = %ctx.session, target = %label, "egress tunnel intercepted");
        ctx.usage.host_decided(&label, Verdict::Allowed, None);
        let upgrade = hyper::upgrade::on(&mut req);
        let (ctx2, host, port) = (ctx.clone(), name.clone(), target.port);
        ctx.gateway.spawn(async move {
            match upgrade.await {
                Ok(u) => crate::intercept::serve(ctx2, TokioIo::new(u), host, port, config).await,
                Err(e) => tracing::debug!(error = %e, "the sandbox left before its tunnel opened"),
            }
        });
        return Response::new(GatewayBody::default());
    }
    let upstream = match ctx.gateway.dialer().tcp(name, target.port, true).await {
        Ok(s) => s,
        Err(e @ DialError::Forbidden { .. }) => return deny(ctx, &label, &e.to_string()),
        Err(e) => {
            let status = if e.is_timeout() {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            };
            let message = error_chain(&e);
            tracing::info!(session = %ctx.session, target = %label, error = %message, "egress tunnel failed");
            ctx.usage
                .host_decided(&label, Verdict::Failed, Some(message.clone()));
            return error_response(status, &message);
        }
    };
    tracing::debug!(session = %ctx.session, target = %label, "egress tunnel allowed");
    ctx.usage.host_decided(&label, Verdict::Allowed, None);
    let upgrade = hyper::upgrade::on(&mut req);
    let usage = ctx.usage.clone();
    let stop = ctx.stop.clone();
    ctx.gateway.spawn(async move {
        let sandbox = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "the sandbox left before its tunnel opened");
                return;
            }
        };
        let mut sandbox = TokioIo::new(sandbox);
        let mut upstream = upstream;
        let copied = tokio::select! {
            r = tokio::io::copy_bidirectional(&mut sandbox, &mut upstream) => r,
            () = stop.cancelled() => return,
        };
        match copied {
            Ok((sent, received)) => usage.tunnel_closed(&label, sent, received),
            Err(e) => tracing::debug!(target = %label, error = %e, "tunnel ended with an error"),
        }
    });
    Response::new(GatewayBody::default())
}

fn deny(ctx: &Ctx, target: &str, reason: &str) -> Response<GatewayBody> {
    tracing::info!(session = %ctx.session, target, reason, "egress denied");
    ctx.usage
        .host_decided(target, Verdict::Denied, Some(reason.to_owned()));
    error_response(StatusCode::FORBIDDEN, &format!("{target}: {reason}"))
}

/// An error and its causes, `: `-joined.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
