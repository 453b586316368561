//! The pi agent-directory files that select the mock LLM (pi's `models.json` and `settings.json`).

use std::io;
use std::path::Path;

use serde_json::{Value, json};

/// Provider id written into `models.json`. It is not a built-in provider, so pi creates it from
/// `baseUrl` and `api` alone.
pub const PROVIDER_ID: &str = "mock";

/// Model id written into `models.json`; pass `--model mock/mock-model` to select it explicitly.
pub const MODEL_ID: &str = "mock-model";

/// Writes `models.json` and `settings.json` into `agent_dir` (created if missing) so that pi,
/// started with `PI_CODING_AGENT_DIR=<agent_dir>`, talks to the OpenAI-compatible endpoint at
/// `base_url` (for example [`MockLlm::base_url`](crate::MockLlm::base_url)).
///
/// Existing files of the same names are overwritten. File ownership and modes are left to the
/// caller: pi in a sandbox container runs as its own uid and also writes `auth.json`,
/// `models-store.json` and `sessions/` here.
pub fn write_pi_agent_config(agent_dir: &Path, base_url: &str) -> io::Result<()> {
    write_pi_agent_config_with_key(agent_dir, base_url, "mock-key")
}

/// As [`write_pi_agent_config`], with `api_key` as the provider's `apiKey`: a literal, or
/// `$NAME` for pi to read the variable `NAME` (how an agent template names a key the relay's
/// egress gateway holds).
pub fn write_pi_agent_config_with_key(
    agent_dir: &Path,
    base_url: &str,
    api_key: &str,
) -> io::Result<()> {
    std::fs::create_dir_all(agent_dir)?;
    write_json(
        &agent_dir.join("models.json"),
        &models_json(base_url, api_key),
    )?;
    write_json(&agent_dir.join("settings.json"), &settings_json())
}

fn models_json(base_url: &str, api_key: &str) -> Value {
    json!({
        "providers": {
            PROVIDER_ID: {
                "baseUrl": base_url,
                "api": "openai-completions",
                // A dummy key is enough: pi only lists a model as available if its provider has auth.
                "apiKey": api_key,
                // The mock ignores these fields, but they keep pi from sending the `developer` role,
                // `reasoning_effort` and `store`, as in the tested recipe (pi-rpc.md §4.1).
                "compat": {
                    "supportsDeveloperRole": false,
                    "supportsReasoningEffort": false,
                    "supportsStore": false,
                },
                "models": [{
                    "id": MODEL_ID,
                    "name": "Mock Model",
                    "contextWindow": 128000,
                    "maxTokens": 4096,
                }],
            },
        },
    })
}

fn settings_json() -> Value {
    json!({
        "defaultProvider": PROVIDER_ID,
        "defaultModel": MODEL_ID,
        "quietStartup": true,
        // These are the values tested in pi-rpc.md §4.1. With them an unreachable or failing endpoint
        // ends the run after about 0.3 s of backoff (attempts after 100 ms and 200 ms), not pi's
        // default 2 s/4 s/8 s. `provider.maxRetries: 0` turns off the OpenAI SDK's own hidden retries,
        // which would otherwise multiply every attempt by three. Two retries, rather than none, still
        // let tests see pi's `auto_retry_start`/`auto_retry_end` events.
        "retry": {
            "enabled": true,
            "maxRetries": 2,
            "baseDelayMs": 100,
            "provider": { "maxRetries": 0 },
        },
    })
}

fn write_json(path: &Path, value: &Value) -> io::Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    text.push('\n');
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_point_pi_at_the_given_base_url() {
        let dir = tempfile::tempdir().expect("temp dir");
        let agent_dir = dir.path().join("agent");

        write_pi_agent_config(&agent_dir, "http://127.0.0.1:4242/v1").expect("write config");

        let models: Value = serde_json::from_str(
            &std::fs::read_to_string(agent_dir.join("models.json")).expect("models.json"),
        )
        .expect("models.json is JSON");
        let provider = &models["providers"]["mock"];
        assert_eq!(provider["baseUrl"], "http://127.0.0.1:4242/v1");
        assert_eq!(provider["api"], "openai-completions");
        assert_eq!(provider["apiKey"], "mock-key");
        assert_eq!(provider["compat"]["supportsDeveloperRole"], false);
        assert_eq!(provider["compat"]["supportsReasoningEffort"], false);
        assert_eq!(provider["compat"]["supportsStore"], false);
        assert_eq!(provider["models"][0]["id"], "mock-model");

        let settings: Value = serde_json::from_str(
            &std::fs::read_to_string(agent_dir.join("settings.json")).expect("settings.json"),
        )
        .expect("settings.json is JSON");
        assert_eq!(settings["defaultProvider"], "mock");
        assert_eq!(settings["defaultModel"], "mock-model");
        assert_eq!(settings["quietStartup"], true);
        assert_eq!(settings["retry"]["enabled"], true);
        assert_eq!(settings["retry"]["provider"]["maxRetries"], 0);
    }

    #[test]
    fn writing_the_config_twice_overwrites_the_base_url() {
        let dir = tempfile::tempdir().expect("temp dir");

        write_pi_agent_config(dir.path(), "http://127.0.0.1:1/v1").expect("first write");
        write_pi_agent_config(dir.path(), "http://127.0.0.1:2/v1").expect("second write");

        let models: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("models.json")).expect("models.json"),
        )
        .expect("models.json is JSON");
        assert_eq!(
            models["providers"]["mock"]["baseUrl"],
            "http://127.0.0.1:2/v1"
        );
    }
}
