//! `GET /api/sessions/{id}/egress`: what a session's sandbox may reach through the relay and
//! what it did (model requests and tokens per provider, every host it asked for with the
//! decision), as JSON.

use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use relay_session::{EgressView, HostUsage, ProviderUsage};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::sessions::valid_id;
use crate::{AppState, envelope};

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/api/sessions/{id}/egress", get(egress))
}

async fn egress(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    valid_id(&id)?;
    let view = state.sessions.egress(&id).await?;
    Ok(envelope::ok(to_json(&id, &view)))
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn provider(usage: &ProviderUsage) -> Value {
    json!({
        "requests": usage.requests,
        "failed": usage.failed,
        "inputTokens": usage.input_tokens,
        "outputTokens": usage.output_tokens,
        "bytesSent": usage.bytes_sent,
        "bytesReceived": usage.bytes_received,
        "lastRequestAt": usage.last.map(time),
    })
}

fn host(usage: &HostUsage) -> Value {
    json!({
        "target": usage.target,
        "allowed": usage.allowed,
        "denied": usage.denied,
        "failed": usage.failed,
        "bytesSent": usage.bytes_sent,
        "bytesReceived": usage.bytes_received,
        "lastVerdict": usage.last_verdict.as_str(),
        "lastReason": usage.last_reason,
        "lastAt": time(usage.last),
    })
}

fn to_json(id: &str, view: &EgressView) -> Value {
    let providers: serde_json::Map<String, Value> = view
        .usage
        .providers
        .iter()
        .map(|(name, usage)| (name.clone(), provider(usage)))
        .collect();
    json!({
        "sessionId": id,
        "gateway": view.gateway,
        "network": view.network,
        "policy": view.policy.mode.as_str(),
        "allow": view.policy.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "providers": view.providers,
        "usage": {
            "providers": providers,
            "hosts": view.usage.hosts.iter().map(host).collect::<Vec<_>>(),
            "hostsDropped": view.usage.hosts_dropped,
        },
    })
}
