//! Model providers as the gateway serves them, decided without touching the network: a
//! [`ProviderRoute`] per provider (where its API is, which paths of it a sandbox may call, how its
//! key is sent), and how a sandbox's request becomes the upstream's ([`upstream_uri`],
//! [`prepare_headers`]): every credential the sandbox sent removed, the relay's key added.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use hyper::Uri;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

/// Where model requests are served in the gateway: `/p/<provider>/<the provider's API path>`.
pub const ROUTE_PREFIX: &str = "/p/";

/// The wire API a provider speaks (pi's `api` names), which decides its paths and key header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiKind {
    /// `anthropic-messages`: `x-api-key`, `/v1/messages`.
    AnthropicMessages,
    /// `openai-completions`: bearer token, `/chat/completions`.
    OpenAiCompletions,
    /// `openai-responses`: bearer token, `/responses`.
    OpenAiResponses,
    /// `google-generative-ai`: `x-goog-api-key`, `/models/<model>:streamGenerateContent`.
    GoogleGenerativeAi,
    /// `mistral-conversations`: bearer token, `/v1/chat/completions` and `/v1/conversations`.
    MistralConversations,
}

impl ApiKind {
    /// pi's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKind::AnthropicMessages => "anthropic-messages",
            ApiKind::OpenAiCompletions => "openai-completions",
            ApiKind::OpenAiResponses => "openai-responses",
            ApiKind::GoogleGenerativeAi => "google-generative-ai",
            ApiKind::MistralConversations => "mistral-conversations",
        }
    }

    /// The paths below the provider's base URL a sandbox may call (each also with anything
    /// after a further `/` or `:`).
    fn paths(self) -> &'static [&'static str] {
        match self {
            ApiKind::AnthropicMessages => &["v1/messages", "v1/models"],
            ApiKind::OpenAiCompletions => &["chat/completions", "models"],
            ApiKind::OpenAiResponses => &["responses", "models"],
            ApiKind::GoogleGenerativeAi => &["models"],
            ApiKind::MistralConversations => {
                &["v1/chat/completions", "v1/conversations", "v1/models"]
            }
        }
    }

    /// The header that carries the key, when the provider is not told to use a bearer token.
    fn key_header(self) -> Option<HeaderName> {
        match self {
            ApiKind::AnthropicMessages => Some(HeaderName::from_static("x-api-key")),
            ApiKind::GoogleGenerativeAi => Some(HeaderName::from_static("x-goog-api-key")),
            _ => None,
        }
    }
}

impl FromStr for ApiKind {
    type Err = String;
    fn from_str(s: &str) -> Result<ApiKind, String> {
        Ok(match s {
            "anthropic-messages" => ApiKind::AnthropicMessages,
            "openai-completions" => ApiKind::OpenAiCompletions,
            "openai-responses" => ApiKind::OpenAiResponses,
            "google-generative-ai" => ApiKind::GoogleGenerativeAi,
            "mistral-conversations" => ApiKind::MistralConversations,
            other => return Err(format!("the gateway does not serve the {other:?} API")),
        })
    }
}

/// An upstream base URL: scheme, host, port and base path (no query).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Whether it is reached over TLS.
    pub tls: bool,
    /// The host name (or address) as written.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The path every API path is appended to, without a trailing `/` (`""` for none).
    pub base_path: String,
}

impl FromStr for Upstream {
    type Err = String;
    fn from_str(raw: &str) -> Result<Upstream, String> {
        let uri: Uri = raw
            .parse()
            .map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{raw:?} must start with https:// or http://")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("{raw:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if uri.query().is_some() {
            return Err(format!("{raw:?} must not have a query"));
        }
        Ok(Upstream {
            tls,
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            host,
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

impl Upstream {
    /// `scheme://host:port`, without the base path.
    pub fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}", self.port)
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.origin(), self.base_path)
    }
}

/// One provider the gateway serves at `/p/<id>/`.
pub struct ProviderRoute {
    /// The path segment (pi's provider id).
    pub id: String,
    /// Where its API is.
    pub upstream: Upstream,
    /// What it speaks.
    pub api: ApiKind,
    /// Send the key as `Authorization: Bearer` whatever the API (pi's `authHeader`).
    pub bearer: bool,
    /// The key, if the provider has one.
    pub key: Option<SecretString>,
    /// Further headers the relay adds, with secret values (pi's `headers` that named secrets).
    pub headers: Vec<(HeaderName, SecretString)>,
}

impl fmt::Debug for ProviderRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderRoute")
            .field("id", &self.id)
            .field("upstream", &self.upstream.to_string())
            .field("api", &self.api)
            .field("bearer", &self.bearer)
            .field("key", &self.key.as_ref().map(|_| "[redacted]"))
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Parses a header name (any case) for [`ProviderRoute::headers`].
pub fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{name:?} is not a header name"))
}

/// Every provider the gateway serves, by id.
#[derive(Debug, Default)]
pub struct Routes {
    providers: BTreeMap<String, Arc<ProviderRoute>>,
}

impl Routes {
    /// Routes for `providers` (a later one with the same id replaces an earlier one).
    pub fn new(providers: impl IntoIterator<Item = ProviderRoute>) -> Routes {
        Routes {
            providers: providers
                .into_iter()
                .map(|p| (p.id.clone(), Arc::new(p)))
                .collect(),
        }
    }

    /// The provider with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<ProviderRoute>> {
        self.providers.get(id)
    }

    /// Whether `name` is a provider's API host (an allowlist includes them).
    pub fn is_provider_host(&self, name: &str) -> bool {
        self.providers.values().any(|p| p.upstream.host == name)
    }

    /// The ids served.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }
}

/// Why a model request is not forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// `/p/<id>` names no configured provider.
    UnknownProvider(String),
    /// A path outside the provider's API.
    PathNotAllowed(String),
    /// `..`, `.`, empty or encoded separators: refused rather than interpreted.
    UnsafePath,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::UnknownProvider(id) => write!(
                f,
                "no model provider {id:?} is configured in the relay (add its key as an \
                 ai_provider secret)"
            ),
            RouteError::PathNotAllowed(p) => write!(
                f,
                "{p:?} is not one of the provider's model API paths the relay forwards"
            ),
            RouteError::UnsafePath => f.write_str(
                "the path has empty, '.' or '..' segments or encoded separators; refused",
            ),
        }
    }
}

/// Splits a gateway path `/p/<id>/<rest>` into the provider id and the checked rest.
pub fn split_route(path: &str) -> Option<(&str, &str)> {
    let after = path.strip_prefix(ROUTE_PREFIX)?;
    Some(after.split_once('/').unwrap_or((after, "")))
}

/// The upstream URI for `rest` (the path after `/p/<id>/`) and `query` of a sandbox's request,
/// if the route allows the path. The sandbox's base URL for the provider keeps the upstream's
/// base path (`/p/openai/v1` for `https://api.openai.com/v1`), so `rest` starts with it and
/// whatever an SDK appends stays visible and checked. A `key` query parameter (Google's) is
/// removed: the relay's key goes in a header.
pub fn upstream_uri(
    route: &ProviderRoute,
    rest: &str,
    query: Option<&str>,
) -> Result<Uri, RouteError> {
    let lower = rest.to_ascii_lowercase();
    if rest.is_empty()
        || rest
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        || ["%2e", "%2f", "%5c", "\\"]
            .iter()
            .any(|b| lower.contains(b))
    {
        return Err(RouteError::UnsafePath);
    }
    let not_allowed = || RouteError::PathNotAllowed(rest.to_owned());
    let base = route.upstream.base_path.trim_start_matches('/');
    let within = if base.is_empty() {
        rest
    } else {
        rest.strip_prefix(base)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(not_allowed)?
    };
    let allowed = route.api.paths().iter().any(|p| {
        within == *p
            || within
                .strip_prefix(p)
                .is_some_and(|after| after.starts_with('/') || after.starts_with(':'))
    });
    if !allowed {
        return Err(not_allowed());
    }
    let query = query
        .map(|q| {
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form_urlencoded::parse(q.as_bytes()).filter(|(k, _)| k != "key"))
                .finish()
        })
        .filter(|q| !q.is_empty());
    let u = &route.upstream;
    let mut uri = format!("{}/{rest}", u.origin());
    if let Some(q) = query {
        uri.push('?');
        uri.push_str(&q);
    }
    uri.parse().map_err(|_| RouteError::UnsafePath)
}

/// Headers that carry credentials in any provider's API: none of the sandbox's reach upstream.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and are not forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

/// The key a sandbox is given for every provider the relay serves: it means "the relay's key
/// goes here" and is worth nothing anywhere else.
pub const PLACEHOLDER_KEY: &str = "pi-relay-gateway-placeholder";

/// Turns a sandbox's request headers into the upstream's: hop-by-hop headers, `Host` and every
/// credential removed (also the route's own headers, whatever the sandbox put there), the
/// upstream asked for an uncompressed body (so usage can be read from it), then the relay's key
/// and headers added. The key goes where the sandbox's client put [`PLACEHOLDER_KEY`] (its SDK
/// knows how the provider wants it: `x-api-key`, `Authorization: Bearer`, …); when no header
/// held it, where the provider's API expects it.
pub fn prepare_headers(headers: &mut HeaderMap, route: &ProviderRoute) {
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    let mut keyed: Vec<(HeaderName, String)> = Vec::new();
    if let Some(key) = &route.key {
        for h in CREDENTIAL_HEADERS {
            let sent = headers.get(*h).and_then(|v| v.to_str().ok());
            if let Some(v) = sent.filter(|v| v.contains(PLACEHOLDER_KEY)) {
                keyed.push((
                    HeaderName::from_static(h),
                    v.replace(PLACEHOLDER_KEY, key.expose_secret()),
                ));
            }
        }
        if keyed.is_empty() {
            keyed.push(match route.api.key_header().filter(|_| !route.bearer) {
                Some(name) => (name, key.expose_secret().to_owned()),
                None => (
                    header::AUTHORIZATION,
                    format!("Bearer {}", key.expose_secret()),
                ),
            });
        }
    }
    for h in CREDENTIAL_HEADERS {
        headers.remove(*h);
    }
    for (name, _) in &route.headers {
        headers.remove(name);
    }
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    for (name, value) in keyed {
        insert_sensitive(headers, name, &value);
    }
    for (name, value) in &route.headers {
        insert_sensitive(headers, name.clone(), value.expose_secret());
    }
}

fn insert_sensitive(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(mut v) => {
            v.set_sensitive(true);
            headers.insert(name, v);
        }
        // A secret with bytes a header cannot hold is refused when stored; never forward it
        // half-made.
        Err(_) => tracing::warn!(header = %name, "a provider secret is not a valid header value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(api: ApiKind, base: &str) -> ProviderRoute {
        ProviderRoute {
            id: "p".into(),
            upstream: base.parse().unwrap(),
            api,
            bearer: false,
            key: Some(SecretString::from("real-key")),
            headers: vec![],
        }
    }

    #[test]
    fn upstreams_parse_with_default_ports_and_no_trailing_slash() {
        let u: Upstream = "https://API.openai.com/v1/".parse().unwrap();
        assert_eq!(u.host, "api.openai.com");
        assert_eq!((u.tls, u.port, u.base_path.as_str()), (true, 443, "/v1"));
        let h: Upstream = "http://127.0.0.1:8000".parse().unwrap();
        assert_eq!((h.tls, h.port, h.base_path.as_str()), (false, 8000, ""));
        assert_eq!(h.to_string(), "http://127.0.0.1:8000");
        for bad in ["ftp://x", "api.openai.com/v1", "https://x/v1?a=b"] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_providers_api_paths_are_forwarded() {
        let anthropic = route(ApiKind::AnthropicMessages, "https://api.anthropic.com");
        assert_eq!(
            upstream_uri(&anthropic, "v1/messages", Some("beta=true")).unwrap(),
            "https://api.anthropic.com:443/v1/messages?beta=true"
        );
        assert!(upstream_uri(&anthropic, "v1/messages/count_tokens", None).is_ok());
        assert_eq!(
            upstream_uri(&anthropic, "v1/organizations/x", None),
            Err(RouteError::PathNotAllowed("v1/organizations/x".into()))
        );
        assert!(upstream_uri(&anthropic, "v1/messagesx", None).is_err());

        let openai = route(ApiKind::OpenAiCompletions, "https://api.openai.com/v1");
        assert_eq!(
            upstream_uri(&openai, "v1/chat/completions", None).unwrap(),
            "https://api.openai.com:443/v1/chat/completions"
        );
        assert!(upstream_uri(&openai, "v1/files", None).is_err());
        assert_eq!(
            upstream_uri(&openai, "chat/completions", None),
            Err(RouteError::PathNotAllowed("chat/completions".into())),
            "outside the base path"
        );
        assert!(upstream_uri(&openai, "v2/chat/completions", None).is_err());

        let google = route(
            ApiKind::GoogleGenerativeAi,
            "https://generativelanguage.googleapis.com/v1beta",
        );
        assert_eq!(
            upstream_uri(
                &google,
                "v1beta/models/gemini:streamGenerateContent",
                Some("alt=sse&key=leaked")
            )
            .unwrap(),
            "https://generativelanguage.googleapis.com:443/v1beta/models/gemini:streamGenerateContent?alt=sse",
            "a key in the query never reaches upstream"
        );
        assert_eq!(
            upstream_uri(&google, "v1beta/models", Some("key=x")).unwrap(),
            "https://generativelanguage.googleapis.com:443/v1beta/models"
        );
    }

    #[test]
    fn traversal_and_encoded_separators_are_refused() {
        let openai = route(ApiKind::OpenAiCompletions, "https://api.openai.com/v1");
        for bad in [
            "v1/chat/completions/../../admin",
            "v1/chat//completions",
            "./v1/chat/completions",
            "v1/chat/completions%2f..",
            "v1/chat/completions/%2E%2E",
            "v1/chat\\completions",
            "",
        ] {
            assert_eq!(
                upstream_uri(&openai, bad, None),
                Err(RouteError::UnsafePath),
                "{bad}"
            );
        }
    }

    #[test]
    fn gateway_paths_split_into_provider_and_rest() {
        assert_eq!(
            split_route("/p/anthropic/v1/messages"),
            Some(("anthropic", "v1/messages"))
        );
        assert_eq!(split_route("/p/x"), Some(("x", "")));
        assert_eq!(split_route("/v1/messages"), None);
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn every_credential_the_sandbox_sent_is_replaced_by_the_relays_key() {
        let sent = [
            ("authorization", "Bearer stolen"),
            ("x-api-key", "placeholder"),
            ("api-key", "x"),
            ("x-goog-api-key", "x"),
            ("proxy-authorization", "Basic x"),
            ("cookie", "a=b"),
            ("host", "127.0.0.1:18080"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("accept-encoding", "gzip, deflate"),
            ("anthropic-version", "2023-06-01"),
            ("x-org", "sandbox's"),
        ];
        let mut anthropic = route(ApiKind::AnthropicMessages, "https://api.anthropic.com");
        anthropic.headers = vec![(
            HeaderName::from_static("x-org"),
            SecretString::from("relay's"),
        )];
        let mut h = headers(&sent);
        prepare_headers(&mut h, &anthropic);
        assert_eq!(h["x-api-key"], "real-key");
        assert!(h["x-api-key"].is_sensitive());
        assert_eq!(h["x-org"], "relay's");
        assert_eq!(h["anthropic-version"], "2023-06-01");
        assert_eq!(h["accept-encoding"], "identity");
        for gone in [
            "authorization",
            "api-key",
            "x-goog-api-key",
            "proxy-authorization",
            "cookie",
            "host",
            "connection",
            "x-hop",
        ] {
            assert!(!h.contains_key(gone), "{gone} forwarded");
        }

        let mut h = headers(&sent);
        prepare_headers(
            &mut h,
            &route(ApiKind::OpenAiCompletions, "https://api.openai.com/v1"),
        );
        assert_eq!(h["authorization"], "Bearer real-key");
        assert!(!h.contains_key("x-api-key"));

        let mut bearer = route(ApiKind::AnthropicMessages, "https://example.com");
        bearer.bearer = true;
        let mut h = headers(&sent);
        prepare_headers(&mut h, &bearer);
        assert_eq!(h["authorization"], "Bearer real-key");
        assert!(!h.contains_key("x-api-key"));

        let mut keyless = route(ApiKind::OpenAiCompletions, "http://127.0.0.1:8000/v1");
        keyless.key = None;
        let mut h = headers(&sent);
        prepare_headers(&mut h, &keyless);
        assert!(!h.contains_key("authorization"));
    }

    #[test]
    fn the_key_goes_where_the_sandbox_put_the_placeholder() {
        let anthropic = route(ApiKind::AnthropicMessages, "https://api.anthropic.com");
        // An SDK that sends the key as a bearer token gets the real one there.
        let mut h = headers(&[
            ("authorization", &format!("Bearer {PLACEHOLDER_KEY}")),
            ("x-api-key", "something-else"),
        ]);
        prepare_headers(&mut h, &anthropic);
        assert_eq!(h["authorization"], "Bearer real-key");
        assert!(!h.contains_key("x-api-key"));
        let mut h = headers(&[("x-api-key", PLACEHOLDER_KEY)]);
        prepare_headers(
            &mut h,
            &route(ApiKind::OpenAiCompletions, "https://x.test/v1"),
        );
        assert_eq!(h["x-api-key"], "real-key");
        assert!(!h.contains_key("authorization"));
    }

    #[test]
    fn routes_know_their_providers_hosts_and_never_print_keys() {
        let routes = Routes::new([route(
            ApiKind::AnthropicMessages,
            "https://api.anthropic.com",
        )]);
        assert!(routes.is_provider_host("api.anthropic.com"));
        assert!(!routes.is_provider_host("anthropic.com"));
        assert!(routes.get("p").is_some());
        assert_eq!(routes.ids().collect::<Vec<_>>(), ["p"]);
        let printed = format!("{routes:?}");
        assert!(!printed.contains("real-key"), "{printed}");
    }
}
