//! What sessions get of the egress gateway, decided without touching anything: which model
//! providers the gateway serves (built-in providers whose key is an `ai_provider` secret, and the
//! agent template's providers whose `apiKey` names one), what a session's `models.json` says so
//! pi sends them through the gateway with a placeholder key ([`session_models`]), and the
//! session's CONNECT policy from its environment.

use std::collections::{BTreeMap, HashMap};

use relay_gateway::provider::PLACEHOLDER_KEY;
use relay_gateway::{ApiKind, EgressMode, EgressPolicy, HostPattern, ProviderRoute, Routes};
use secrecy::SecretString;
use serde_json::{Map, Value};

/// The loopback port the sandbox's forwarder listens on.
pub const EGRESS_PORT: u16 = 18080;

/// The gateway's address as a sandbox reaches it.
pub fn gateway_url() -> String {
    format!("http://127.0.0.1:{EGRESS_PORT}")
}

/// A model provider pi knows without configuration, by the variable its key is read from.
struct Builtin {
    id: &'static str,
    env_var: &'static str,
    base_url: &'static str,
    api: ApiKind,
}

/// pi's built-in providers the gateway serves (pi 1.5's catalog: the base URL its models use).
/// Providers whose built-in models use several base URLs or request signing (Bedrock, Vertex,
/// Azure, Cloudflare, Fireworks) are served only through the agent template.
const BUILTIN: &[Builtin] = &[
    b(
        "anthropic",
        "ANTHROPIC_API_KEY",
        "https://api.anthropic.com",
        ApiKind::AnthropicMessages,
    ),
    b(
        "openai",
        "OPENAI_API_KEY",
        "https://api.openai.com/v1",
        ApiKind::OpenAiResponses,
    ),
    b(
        "google",
        "GEMINI_API_KEY",
        "https://generativelanguage.googleapis.com/v1beta",
        ApiKind::GoogleGenerativeAi,
    ),
    b(
        "mistral",
        "MISTRAL_API_KEY",
        "https://api.mistral.ai",
        ApiKind::MistralConversations,
    ),
    b(
        "groq",
        "GROQ_API_KEY",
        "https://api.groq.com/openai/v1",
        ApiKind::OpenAiCompletions,
    ),
    b(
        "cerebras",
        "CEREBRAS_API_KEY",
        "https://api.cerebras.ai/v1",
        ApiKind::OpenAiCompletions,
    ),
    b(
        "xai",
        "XAI_API_KEY",
        "https://api.x.ai/v1",
        ApiKind::OpenAiResponses,
    ),
    b(
        "deepseek",
        "DEEPSEEK_API_KEY",
        "https://api.deepseek.com",
        ApiKind::OpenAiCompletions,
    ),
    b(
        "openrouter",
        "OPENROUTER_API_KEY",
        "https://openrouter.ai/api/v1",
        ApiKind::OpenAiCompletions,
    ),
    b(
        "together",
        "TOGETHER_API_KEY",
        "https://api.together.ai/v1",
        ApiKind::OpenAiCompletions,
    ),
    b(
        "nvidia",
        "NVIDIA_API_KEY",
        "https://integrate.api.nvidia.com/v1",
        ApiKind::OpenAiCompletions,
    ),
    b(
        "moonshotai",
        "MOONSHOT_API_KEY",
        "https://api.moonshot.ai/v1",
        ApiKind::OpenAiCompletions,
    ),
    b(
        "zai",
        "ZAI_API_KEY",
        "https://api.z.ai/api/coding/paas/v4",
        ApiKind::OpenAiCompletions,
    ),
    b(
        "kimi-coding",
        "KIMI_API_KEY",
        "https://api.kimi.com/coding/v1",
        ApiKind::OpenAiCompletions,
    ),
    b(
        "baseten",
        "BASETEN_API_KEY",
        "https://inference.baseten.co/v1",
        ApiKind::OpenAiCompletions,
    ),
    b(
        "minimax",
        "MINIMAX_API_KEY",
        "https://api.minimax.io/anthropic",
        ApiKind::AnthropicMessages,
    ),
    b(
        "vercel-ai-gateway",
        "AI_GATEWAY_API_KEY",
        "https://ai-gateway.vercel.sh",
        ApiKind::AnthropicMessages,
    ),
    b(
        "xiaomi",
        "XIAOMI_API_KEY",
        "https://api.xiaomimimo.com/v1",
        ApiKind::OpenAiCompletions,
    ),
    b(
        "meta",
        "META_API_KEY",
        "https://api.meta.ai/v1",
        ApiKind::OpenAiResponses,
    ),
];

const fn b(
    id: &'static str,
    env_var: &'static str,
    base_url: &'static str,
    api: ApiKind,
) -> Builtin {
    Builtin {
        id,
        env_var,
        base_url,
        api,
    }
}

/// The variable an `apiKey` or header value of `models.json` reads (`$NAME` or `${NAME}`).
fn variable(value: &Value) -> Option<&str> {
    let s = value.as_str()?;
    let name = s.strip_prefix("${").and_then(|r| r.strip_suffix('}'));
    let name = name.or_else(|| s.strip_prefix('$'))?;
    let ok = !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    ok.then_some(name)
}

/// The providers the gateway serves, and what was left out and why.
#[derive(Debug, Default)]
pub struct ProviderPlan {
    /// The routes.
    pub routes: Vec<ProviderRoute>,
    /// Problems to tell the operator about (a template provider the gateway cannot serve, a
    /// provider key nothing uses).
    pub warnings: Vec<String>,
}

/// Works out the routes from the enabled `ai_provider` secrets (`keys`, by variable) and the
/// agent template's `models.json` (`template`). A template entry for a provider overrides the
/// built-in one (its base URL, API or key variable).
pub fn plan_providers(
    keys: &HashMap<String, SecretString>,
    template: Option<&Value>,
) -> ProviderPlan {
    let mut plan = ProviderPlan::default();
    let mut used: Vec<&str> = Vec::new();
    let template = template_providers(template);
    for (id, entry) in &template {
        let builtin = BUILTIN.iter().find(|b| b.id == id);
        let key_var = entry.get("apiKey").and_then(variable);
        let secret_headers: Vec<(String, &str)> = entry
            .get("headers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(name, v)| Some((name.clone(), variable(v)?)))
            .filter(|(_, var)| keys.contains_key(*var))
            .collect();
        let key_var = key_var
            .filter(|v| keys.contains_key(*v))
            .or_else(|| builtin.map(|b| b.env_var).filter(|v| keys.contains_key(*v)));
        if key_var.is_none() && secret_headers.is_empty() {
            continue;
        }
        let base = entry
            .get("baseUrl")
            .and_then(Value::as_str)
            .or(builtin.map(|b| b.base_url));
        let api = entry
            .get("api")
            .and_then(Value::as_str)
            .or_else(|| first_model_api(entry))
            .map(str::parse::<ApiKind>)
            .or(builtin.map(|b| Ok(b.api)));
        let (Some(base), Some(api)) = (base, api) else {
            plan.warnings.push(format!(
                "the agent template's provider {id:?} names a provider key but no baseUrl or api; \
                 the gateway does not serve it"
            ));
            continue;
        };
        let route = api.map_err(|e| e.to_string()).and_then(|api| {
            let headers = secret_headers
                .iter()
                .map(|(name, var)| {
                    let name = relay_gateway::provider::header_name(name)?;
                    Ok((name, keys[*var].clone()))
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(ProviderRoute {
                id: id.clone(),
                upstream: base.parse()?,
                api,
                bearer: entry.get("authHeader").and_then(Value::as_bool) == Some(true),
                key: key_var.map(|v| keys[v].clone()),
                headers,
            })
        });
        match route {
            Ok(r) => {
                used.extend(key_var);
                used.extend(secret_headers.iter().map(|(_, v)| *v));
                plan.routes.push(r);
            }
            Err(e) => plan.warnings.push(format!(
                "the agent template's provider {id:?} is not served by the gateway: {e}"
            )),
        }
    }
    for b in BUILTIN {
        if template.contains_key(b.id) {
            continue;
        }
        if let Some(key) = keys.get(b.env_var) {
            used.push(b.env_var);
            plan.routes.push(ProviderRoute {
                id: b.id.to_owned(),
                upstream: b.base_url.parse().expect("built-in base URLs parse"),
                api: b.api,
                bearer: false,
                key: Some(key.clone()),
                headers: Vec::new(),
            });
        }
    }
    let mut unused: Vec<&String> = keys
        .keys()
        .filter(|k| !used.contains(&k.as_str()))
        .collect();
    unused.sort();
    for k in unused {
        plan.warnings.push(format!(
            "the ai_provider secret {k} is the key of no provider the gateway serves (neither a \
             built-in one nor an agent-template provider whose apiKey is \"${k}\"); no sandbox \
             gets it"
        ));
    }
    plan
}

fn first_model_api(entry: &Value) -> Option<&str> {
    entry
        .get("models")?
        .as_array()?
        .iter()
        .find_map(|m| m.get("api")?.as_str())
}

/// The template's `providers` entries (objects only).
fn template_providers(template: Option<&Value>) -> BTreeMap<String, Value> {
    template
        .and_then(|t| t.get("providers"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.is_object())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A session's `models.json`: its `current` content with every provider the gateway serves
/// pointed at it (`baseUrl` on the gateway, the key a placeholder). A provider defined by the
/// agent template is written as the template has it (rewritten); a built-in one keeps what the
/// session set besides. Providers the gateway served before and no longer does are put back as
/// the template has them, or lose the gateway's settings.
pub fn session_models(current: Option<Value>, template: Option<&Value>, routes: &Routes) -> Value {
    let mut doc = match current {
        Some(Value::Object(o)) => o,
        _ => Map::new(),
    };
    let template = template_providers(template);
    let providers = doc
        .entry("providers")
        .or_insert_with(|| Value::Object(Map::new()));
    if !providers.is_object() {
        *providers = Value::Object(Map::new());
    }
    let providers = providers.as_object_mut().expect("an object");
    let gateway = format!("{}/p/", gateway_url());
    // Put back what the gateway no longer serves.
    let stale: Vec<String> = providers
        .iter()
        .filter(|(id, v)| {
            routes.get(id).is_none()
                && v.get("baseUrl")
                    .and_then(Value::as_str)
                    .is_some_and(|u| u.starts_with(&gateway))
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in stale {
        if let Some(t) = template.get(&id) {
            providers.insert(id, t.clone());
        } else if let Some(Value::Object(e)) = providers.get_mut(&id) {
            e.remove("baseUrl");
            if e.get("apiKey").and_then(Value::as_str) == Some(PLACEHOLDER_KEY) {
                e.remove("apiKey");
            }
            if e.is_empty() {
                providers.remove(&id);
            }
        }
    }
    for id in routes.ids() {
        let route = routes.get(id).expect("listed");
        let mut entry = match (template.get(id), providers.remove(id)) {
            (Some(t), _) => t.clone(),
            (None, Some(Value::Object(e))) => Value::Object(e),
            (None, _) => Value::Object(Map::new()),
        };
        let e = entry.as_object_mut().expect("an object");
        e.insert(
            "baseUrl".into(),
            format!("{gateway}{id}{}", route.upstream.base_path).into(),
        );
        if route.key.is_some() {
            e.insert("apiKey".into(), PLACEHOLDER_KEY.into());
        }
        if let Some(Value::Object(h)) = e.get_mut("headers") {
            for (name, _) in &route.headers {
                for (k, v) in h.iter_mut() {
                    if k.eq_ignore_ascii_case(name.as_str()) {
                        *v = PLACEHOLDER_KEY.into();
                    }
                }
            }
        }
        providers.insert(id.to_owned(), entry);
    }
    Value::Object(doc)
}

/// A session's CONNECT policy from its environment's `egressPolicy` and `egressAllow` (both
/// checked when the environment was stored: anything that no longer parses counts as absent).
pub fn policy(mode: Option<&str>, allow: &[String]) -> EgressPolicy {
    EgressPolicy {
        mode: mode
            .and_then(|m| m.parse().ok())
            .unwrap_or(EgressMode::Allowlist),
        allow: allow
            .iter()
            .filter_map(|a| a.parse::<HostPattern>().ok())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use serde_json::json;

    fn keys(pairs: &[(&str, &str)]) -> HashMap<String, SecretString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretString::from(*v)))
            .collect()
    }

    #[test]
    fn built_in_providers_with_a_key_are_served() {
        let plan = plan_providers(&keys(&[("ANTHROPIC_API_KEY", "sk-ant")]), None);
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        assert_eq!(plan.routes.len(), 1);
        let r = &plan.routes[0];
        assert_eq!(r.id, "anthropic");
        assert_eq!(r.upstream.to_string(), "https://api.anthropic.com:443");
        assert_eq!(r.key.as_ref().unwrap().expose_secret(), "sk-ant");
        assert_eq!(r.api, ApiKind::AnthropicMessages);
    }

    #[test]
    fn template_providers_naming_a_key_are_served_from_their_base_url() {
        let template = json!({"providers": {
            "mock": {"baseUrl": "https://llm.test:8443/v1", "api": "openai-completions",
                     "apiKey": "$MOCK_KEY", "models": [{"id": "m"}]},
            "gw": {"baseUrl": "https://gw.test", "models": [{"id": "x", "api": "anthropic-messages"}],
                   "apiKey": "literal", "headers": {"X-Gateway-Key": "${GW_KEY}", "X-Other": "v"}},
            "openai": {"baseUrl": "https://proxy.test/v1"},
            "local": {"baseUrl": "http://127.0.0.1:8000/v1", "api": "openai-completions", "apiKey": "none"}
        }});
        let plan = plan_providers(
            &keys(&[
                ("MOCK_KEY", "k1"),
                ("GW_KEY", "k2"),
                ("OPENAI_API_KEY", "k3"),
                ("UNUSED_KEY", "x"),
            ]),
            Some(&template),
        );
        let by_id: HashMap<_, _> = plan.routes.iter().map(|r| (r.id.as_str(), r)).collect();
        assert_eq!(by_id.len(), 3, "local names no secret: untouched");
        assert_eq!(
            by_id["mock"].upstream.to_string(),
            "https://llm.test:8443/v1"
        );
        assert_eq!(by_id["mock"].key.as_ref().unwrap().expose_secret(), "k1");
        assert!(
            by_id["gw"].key.is_none(),
            "a literal key is the template's own"
        );
        assert_eq!(by_id["gw"].headers[0].0.as_str(), "x-gateway-key");
        assert_eq!(by_id["gw"].api, ApiKind::AnthropicMessages);
        // A template entry for a built-in provider moves it, keeping the built-in key variable.
        assert_eq!(
            by_id["openai"].upstream.to_string(),
            "https://proxy.test:443/v1"
        );
        assert_eq!(by_id["openai"].api, ApiKind::OpenAiResponses);
        assert_eq!(plan.warnings.len(), 1);
        assert!(
            plan.warnings[0].contains("UNUSED_KEY"),
            "{:?}",
            plan.warnings
        );
    }

    #[test]
    fn template_providers_the_gateway_cannot_serve_are_reported() {
        let template = json!({"providers": {
            "a": {"apiKey": "$K"},
            "b": {"baseUrl": "ftp://x", "api": "openai-completions", "apiKey": "$K"},
            "c": {"baseUrl": "https://x", "api": "bedrock-converse-stream", "apiKey": "$K"}
        }});
        let plan = plan_providers(&keys(&[("K", "v")]), Some(&template));
        assert!(plan.routes.is_empty());
        let all = plan.warnings.join("\n");
        assert!(
            all.contains("\"a\" names a provider key but no baseUrl"),
            "{all}"
        );
        assert!(all.contains("\"b\" is not served"), "{all}");
        assert!(all.contains("bedrock-converse-stream"), "{all}");
    }

    fn routes(plan: ProviderPlan) -> Routes {
        Routes::new(plan.routes)
    }

    #[test]
    fn the_sessions_models_point_every_served_provider_at_the_gateway() {
        let template = json!({"providers": {
            "mock": {"baseUrl": "https://llm.test:8443/v1", "api": "openai-completions",
                     "apiKey": "$MOCK_KEY", "models": [{"id": "m"}],
                     "headers": {"X-Gateway-Key": "$MOCK_KEY"}}
        }});
        let r = routes(plan_providers(
            &keys(&[("MOCK_KEY", "k1"), ("ANTHROPIC_API_KEY", "k2")]),
            Some(&template),
        ));
        let current = json!({
            "providers": {
                "anthropic": {"modelOverrides": {"claude": {"name": "mine"}}},
                "mock": {"baseUrl": "https://llm.test:8443/v1", "apiKey": "$MOCK_KEY"},
                "ollama": {"baseUrl": "http://localhost:11434/v1"}
            },
            "other": true
        });
        let out = session_models(Some(current), Some(&template), &r);
        let p = &out["providers"];
        assert_eq!(
            p["anthropic"]["baseUrl"],
            "http://127.0.0.1:18080/p/anthropic"
        );
        assert_eq!(p["anthropic"]["apiKey"], PLACEHOLDER_KEY);
        assert_eq!(p["anthropic"]["modelOverrides"]["claude"]["name"], "mine");
        assert_eq!(p["mock"]["baseUrl"], "http://127.0.0.1:18080/p/mock/v1");
        assert_eq!(p["mock"]["apiKey"], PLACEHOLDER_KEY);
        assert_eq!(p["mock"]["headers"]["X-Gateway-Key"], PLACEHOLDER_KEY);
        assert_eq!(p["mock"]["models"][0]["id"], "m");
        assert_eq!(p["ollama"]["baseUrl"], "http://localhost:11434/v1");
        assert_eq!(out["other"], true);
        let text = out.to_string();
        assert!(!text.contains("k1") && !text.contains("k2"), "{text}");

        // The keys are deleted: the session's file no longer points at the gateway.
        let none = Routes::default();
        let back = session_models(Some(out), Some(&template), &none);
        let p = &back["providers"];
        assert_eq!(p["mock"], template["providers"]["mock"]);
        assert_eq!(
            p["anthropic"],
            json!({"modelOverrides": {"claude": {"name": "mine"}}})
        );
        assert_eq!(p["ollama"]["baseUrl"], "http://localhost:11434/v1");

        // No file yet.
        let fresh = session_models(
            None,
            None,
            &routes(plan_providers(&keys(&[("GEMINI_API_KEY", "g")]), None)),
        );
        assert_eq!(
            fresh,
            json!({"providers": {"google": {
                "baseUrl": "http://127.0.0.1:18080/p/google/v1beta",
                "apiKey": PLACEHOLDER_KEY
            }}})
        );
    }

    #[test]
    fn policies_come_from_the_environment_with_allowlist_by_default() {
        let p = policy(None, &[]);
        assert_eq!(p.mode, EgressMode::Allowlist);
        assert!(p.allow.is_empty());
        let p = policy(Some("open"), &["github.com".into(), "bad host".into()]);
        assert_eq!(p.mode, EgressMode::Open);
        assert_eq!(p.allow.len(), 1);
        assert_eq!(policy(Some("nonsense"), &[]).mode, EgressMode::Allowlist);
    }

    #[test]
    fn variables_are_dollar_names() {
        assert_eq!(
            variable(&json!("$ANTHROPIC_API_KEY")),
            Some("ANTHROPIC_API_KEY")
        );
        assert_eq!(variable(&json!("${X_1}")), Some("X_1"));
        for not in [
            json!("literal"),
            json!("!cmd"),
            json!("$"),
            json!("${A"),
            json!("$A-B"),
            json!(1),
        ] {
            assert_eq!(variable(&not), None, "{not}");
        }
    }
}
