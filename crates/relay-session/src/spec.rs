//! What a session's sandbox is made of, decided without touching anything: the environment's
//! config as the session layer reads it, the resource limits of each tier, and
//! [`sandbox_spec`], the one function that builds every sandbox's [`SandboxSpec`] (the relay's,
//! the Docker tests' and the benchmark's alike).

use std::collections::BTreeMap;
use std::time::Duration;

use relay_sandbox::{
    AGENT_PATH, Egress, HOME_PATH, LABEL_INSTANCE, LABEL_SESSION, Limits, Network, SandboxSpec,
    WORKSPACE_PATH,
};

use crate::SessionConfig;

/// The parts of an environment's JSON config the session layer uses. The config was validated
/// when it was stored (`environments::normalize_config`); a config that no longer parses counts
/// as empty, so sessions still start, with the relay's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EnvConfig {
    pub(crate) image: Option<String>,
    resource_tier: Option<String>,
    pub(crate) network_mode: Option<String>,
    idle_timeout_seconds: Option<u64>,
    #[serde(default)]
    env_vars: Vec<EnvVar>,
    egress_policy: Option<String>,
    #[serde(default)]
    egress_allow: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
struct EnvVar {
    key: String,
    value: String,
}

impl EnvConfig {
    /// Reads an environment's stored config.
    pub(crate) fn parse(config: &str) -> EnvConfig {
        serde_json::from_str(config).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "an environment's config does not parse; using the defaults");
            EnvConfig::default()
        })
    }

    /// The environment's idle timeout, if it sets one.
    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout_seconds
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    }

    /// The session's CONNECT policy (allowlist by default).
    pub(crate) fn egress_policy(&self) -> relay_gateway::EgressPolicy {
        crate::egress::policy(self.egress_policy.as_deref(), &self.egress_allow)
    }

    /// The environment's network, or `default` when it names none (or one that is invalid).
    pub(crate) fn network(&self, default: &Network) -> Network {
        self.network_mode
            .as_deref()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| default.clone())
    }
}

/// Resource tier → limits. `medium` is the default.
fn limits_for(tier: Option<&str>) -> Limits {
    const GIB: i64 = 1024 * 1024 * 1024;
    let (mem, cpus) = match tier {
        Some("small") => (GIB, 1),
        Some("large") => (4 * GIB, 4),
        _ => (2 * GIB, 2),
    };
    Limits {
        memory_bytes: Some(mem),
        nano_cpus: Some(cpus * 1_000_000_000),
        // Counts threads too: pi alone has about a dozen.
        pids: Some(512),
    }
}

/// `pi-sandbox-<sessionId>`
pub fn container_name(id: &str) -> String {
    format!("pi-sandbox-{id}")
}

/// Whether a sandbox on `network` gets the egress gateway: on every network but the host's (a
/// forwarder on the host's loopback would be every session's at once), when the provider can
/// run the forwarder.
pub(crate) fn has_egress(network: &Network, provider_can: bool) -> bool {
    provider_can && *network != Network::Host
}

/// The sandbox of session `id` in an environment whose JSON config is `environment_config` (`{}`
/// for the default), created from the image `image_id`; `provider_egress`: whether the provider
/// can run the egress forwarder.
pub fn sandbox_spec(
    cfg: &SessionConfig,
    id: &str,
    environment_config: &str,
    image_id: String,
    provider_egress: bool,
) -> SandboxSpec {
    spec_for(
        cfg,
        id,
        &EnvConfig::parse(environment_config),
        image_id,
        provider_egress,
    )
}

/// The proxy variables of a sandbox with the egress gateway: HTTPS and HTTP through its CONNECT
/// proxy (Node's own fetch only with `NODE_USE_ENV_PROXY`), loopback never (pi reaches its model
/// providers there, and would otherwise CONNECT to them).
fn proxy_env(cfg: &SessionConfig) -> Vec<(String, String)> {
    let proxy = crate::egress::gateway_url();
    let mut out = Vec::new();
    for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        out.push((name.to_owned(), proxy.clone()));
    }
    for name in ["NO_PROXY", "no_proxy"] {
        out.push((name.to_owned(), "127.0.0.1,localhost".to_owned()));
    }
    out.push(("NODE_USE_ENV_PROXY".to_owned(), "1".to_owned()));
    out.extend(cfg.trust_env.iter().cloned());
    out
}

pub(crate) fn spec_for(
    cfg: &SessionConfig,
    id: &str,
    env: &EnvConfig,
    image_id: String,
    provider_egress: bool,
) -> SandboxSpec {
    let mut envs = vec![
        ("PI_CODING_AGENT_DIR".to_owned(), AGENT_PATH.to_owned()),
        ("HOME".to_owned(), HOME_PATH.to_owned()),
        ("PI_SESSION_ID".to_owned(), id.to_owned()),
    ];
    envs.extend(
        env.env_vars
            .iter()
            .map(|v| (v.key.clone(), v.value.clone())),
    );
    let network = env.network(&cfg.network);
    let egress = has_egress(&network, provider_egress).then_some(Egress {
        port: crate::egress::EGRESS_PORT,
    });
    if egress.is_some() {
        // Last: the relay's values win over an environment's.
        envs.extend(proxy_env(cfg));
    }
    SandboxSpec {
        session_id: id.to_owned(),
        name: container_name(id),
        image: image_id,
        // `--session-id`: a recreated sandbox's pi continues the same conversation.
        command: vec![
            "pi".into(),
            "--mode".into(),
            "rpc".into(),
            "--session-id".into(),
            id.into(),
        ],
        env: envs,
        user: cfg.sandbox_user,
        working_dir: WORKSPACE_PATH.into(),
        labels: BTreeMap::from([
            (LABEL_SESSION.to_owned(), id.to_owned()),
            (LABEL_INSTANCE.to_owned(), cfg.instance_id.clone()),
        ]),
        network,
        limits: limits_for(env.resource_tier.as_deref()),
        hardened: cfg.hardened,
        egress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn config() -> SessionConfig {
        SessionConfig {
            default_image: "img:1".into(),
            sandbox_user: (1000, 1001),
            network: Network::None,
            instance_id: "relay-1".into(),
            hardened: true,
            agent_template: None,
            activate_timeout: Duration::from_secs(60),
            trust_env: Vec::new(),
            packages: Default::default(),
            github_api: crate::github::DEFAULT_GITHUB_API.into(),
        }
    }

    #[test]
    fn the_default_environment_runs_pi_for_the_session_by_the_contract() {
        let spec = sandbox_spec(&config(), "s1", "{}", "sha256:abc".into(), true);
        assert_eq!(spec.name, "pi-sandbox-s1");
        assert_eq!(spec.session_id, "s1");
        assert_eq!(spec.image, "sha256:abc");
        assert_eq!(spec.command, ["pi", "--mode", "rpc", "--session-id", "s1"]);
        assert_eq!(spec.user, (1000, 1001));
        assert_eq!(spec.working_dir, "/workspace");
        assert!(
            spec.env
                .contains(&("PI_CODING_AGENT_DIR".into(), "/data/agent".into()))
        );
        assert!(spec.env.contains(&("HOME".into(), "/home/user".into())));
        assert_eq!(spec.labels["pi-relay.session"], "s1");
        assert_eq!(spec.labels["pi-relay.instance"], "relay-1");
        assert_eq!(spec.network, Network::None);
        assert_eq!(spec.limits.memory_bytes, Some(2 << 30));
        assert_eq!(spec.limits.nano_cpus, Some(2_000_000_000));
        assert!(spec.hardened);
        assert_eq!(spec.egress, Some(Egress { port: 18080 }));
        let env = |k: &str| {
            spec.env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(env("HTTPS_PROXY"), Some("http://127.0.0.1:18080"));
        assert_eq!(env("https_proxy"), Some("http://127.0.0.1:18080"));
        assert_eq!(env("NO_PROXY"), Some("127.0.0.1,localhost"));
        assert_eq!(env("NODE_USE_ENV_PROXY"), Some("1"));
    }

    #[test]
    fn the_hosts_network_or_a_provider_without_a_forwarder_gets_no_gateway() {
        let host = sandbox_spec(
            &config(),
            "s1",
            r#"{"networkMode":"host"}"#,
            "i".into(),
            true,
        );
        assert_eq!(host.egress, None);
        assert!(!host.env.iter().any(|(k, _)| k == "HTTPS_PROXY"));
        let bridge = sandbox_spec(
            &config(),
            "s1",
            r#"{"networkMode":"bridge"}"#,
            "i".into(),
            true,
        );
        assert!(
            bridge.egress.is_some(),
            "an explicit network keeps the gateway for models"
        );
        let unable = sandbox_spec(&config(), "s1", "{}", "i".into(), false);
        assert_eq!(unable.egress, None);
    }

    #[test]
    fn an_environment_sets_tier_network_and_variables() {
        let env = r#"{"resourceTier":"large","networkMode":"host",
                      "envVars":[{"key":"FOO","value":"bar"}],"idleTimeoutSeconds":120}"#;
        let spec = sandbox_spec(&config(), "s1", env, "i".into(), true);
        assert_eq!(spec.limits.memory_bytes, Some(4 << 30));
        assert_eq!(spec.limits.nano_cpus, Some(4_000_000_000));
        assert_eq!(spec.network, Network::Host);
        assert_eq!(spec.env.last(), Some(&("FOO".into(), "bar".into())));
        assert_eq!(
            EnvConfig::parse(env).idle_timeout(),
            Some(Duration::from_secs(120))
        );
        let egress = r#"{"egressPolicy":"open","egressAllow":["github.com"]}"#;
        let policy = EnvConfig::parse(egress).egress_policy();
        assert_eq!(policy.mode, relay_gateway::EgressMode::Open);
        assert_eq!(policy.allow.len(), 1);
        let small = sandbox_spec(
            &config(),
            "s1",
            r#"{"resourceTier":"small"}"#,
            "i".into(),
            true,
        );
        assert_eq!(small.limits.memory_bytes, Some(1 << 30));
    }

    #[test]
    fn a_config_that_does_not_parse_falls_back_to_the_defaults() {
        assert_eq!(EnvConfig::parse("not json"), EnvConfig::default());
        assert_eq!(
            EnvConfig::parse(r#"{"idleTimeoutSeconds":0}"#).idle_timeout(),
            None
        );
        let spec = sandbox_spec(
            &config(),
            "s1",
            r#"{"networkMode":"a b"}"#,
            "i".into(),
            true,
        );
        assert_eq!(spec.network, Network::None);
    }
}
