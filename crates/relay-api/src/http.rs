//! Cross-cutting HTTP behaviour: permissive CORS as the pi-apps clients need it, request ids,
//! bearer-token access control, the envelope on every error (unknown routes and the HTTP layer's
//! own answers included), and which runtime a request's handler runs on.

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::AppState;

const ALLOW_METHODS: &str = "GET, HEAD, PUT, POST, DELETE, PATCH";

/// Runs the rest of the request on the relay's work runtime, except `/health`, which is
/// answered right on the API thread. The API thread only accepts connections and speaks HTTP,
/// so it sleeps most of the time and the kernel runs it as soon as a request arrives, even
/// while a flood keeps the work runtime's threads busy; a liveness probe then measures the
/// relay, not the length of the run queue. Handlers (and the WebSocket sessions they upgrade
/// to) spawn their background work where they run, so it all stays on the work runtime.
pub(crate) async fn on_work_runtime(
    State(work): State<tokio::runtime::Handle>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    match work.spawn(next.run(req)).await {
        Ok(res) => res,
        Err(e) => {
            tracing::error!(error = %e, "request handler failed");
            crate::ApiError::Internal("request handler failed".into()).into_response()
        }
    }
}

/// Answers CORS preflights with 204 and marks every response as readable from any origin.
pub(crate) async fn cors(req: Request, next: Next) -> Response {
    if req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut res = StatusCode::NO_CONTENT.into_response();
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        if let Some(v) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        h.insert(
            header::VARY,
            HeaderValue::from_static("Access-Control-Request-Headers"),
        );
        return res;
    }
    let mut res = next.run(req).await;
    res.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    res
}

/// Echoes a valid incoming `X-Request-Id` or makes one up.
pub(crate) async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 255
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-=".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut res = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

/// With a token configured, every route but `/health` (and CORS preflights) needs it:
/// `Authorization: Bearer <token>`, or `?token=` on WebSocket routes, which browsers cannot
/// give headers.
pub(crate) async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.auth_token.as_ref().map(ExposeSecret::expose_secret) else {
        return next.run(req).await;
    };
    if req.uri().path() == "/health" || req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let presented = bearer(req.headers()).or_else(|| {
        req.uri()
            .path()
            .starts_with("/ws/")
            .then(|| query_token(req.uri()))
            .flatten()
    });
    let ok = presented.is_some_and(|t| bool::from(t.as_bytes().ct_eq(expected.as_bytes())));
    if ok {
        return next.run(req).await;
    }
    let mut res = crate::envelope::error(StatusCode::UNAUTHORIZED, "Unauthorized");
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

fn bearer(h: &HeaderMap) -> Option<String> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The `token` query parameter, decoded (`?token=` on WebSocket routes).
fn query_token(uri: &axum::http::Uri) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    Query::<TokenQuery>::try_from_uri(uri).ok()?.0.token
}

/// Unknown routes.
pub(crate) async fn not_found() -> Response {
    crate::envelope::error(StatusCode::NOT_FOUND, "Not found")
}

/// Errors the HTTP layer answers on its own (a wrong method, a body over the route's limit, a
/// WebSocket route asked without an upgrade) come as plain text or empty: they get the
/// `{data, error}` envelope like every other error, so clients can always parse an error.
/// Headers such as `Allow` are kept.
pub(crate) async fn enveloped_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => "Method not allowed".to_owned(),
        StatusCode::PAYLOAD_TOO_LARGE => "Request body too large".to_owned(),
        StatusCode::NOT_FOUND => "Not found".to_owned(),
        other => other
            .canonical_reason()
            .unwrap_or("Request failed")
            .to_owned(),
    };
    let (mut parts, _) = res.into_parts();
    let enveloped = crate::envelope::error(status, &message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, enveloped.into_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_found_among_query_parameters_and_decoded() {
        let uri = |q: &str| q.parse::<axum::http::Uri>().unwrap();
        assert_eq!(
            query_token(&uri("/ws/sessions/x?clientId=x&token=s3cr%3Dt+x")),
            Some("s3cr=t x".into())
        );
        assert_eq!(query_token(&uri("/ws/sessions/x?clientId=x")), None);
        assert_eq!(query_token(&uri("/ws/sessions/x")), None);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc".into()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }
}
