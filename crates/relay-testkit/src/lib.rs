//! Test support for pi-relay: a mock LLM that lets the real pi coding agent run a tool-using turn
//! without a network or a model, and clean-up for test guards.
//!
//! [`MockLlm`] serves the OpenAI chat-completions streaming API (server-sent events) on
//! `127.0.0.1`, the way real pi 1.5.2 was recorded against a mock model (`testdata/README.md`). The first turn of a
//! conversation answers with a `bash` tool call running [`Script::tool_command`]; once pi sends the
//! tool result back, the mock answers with [`Script::final_text`] and pi settles.
//! [`write_pi_agent_config`] writes the `models.json` and `settings.json` that point pi at it.
//!
//! ```no_run
//! # async fn demo(agent_dir: &std::path::Path) -> std::io::Result<()> {
//! use relay_testkit::{MockLlm, Script, write_pi_agent_config};
//!
//! let llm = MockLlm::start(Script {
//!     tool_command: "echo hi > /workspace/hello.txt".into(),
//!     final_text: "Done.".into(),
//! })
//! .await?;
//! write_pi_agent_config(agent_dir, &llm.base_url())?;
//! // ... run pi with PI_CODING_AGENT_DIR=agent_dir (and `--network host` in Docker) ...
//! assert_eq!(llm.requests().len(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! Layout:
//! - `server`: [`MockLlm`], the axum server on the loopback listener and its shutdown.
//! - `handler`: the answer to one request (routing, body limit, request log, JSON errors, SSE).
//! - `completion`: [`Script`], the choice between the tool-call turn and the final-text turn, and
//!   the chunk JSON for each.
//! - `agent_config`: [`write_pi_agent_config`].
//! - `teardown`: [`block_on_own_thread`], for test guards that clean up from `Drop`.
//! - `tls`: the throwaway CA and the TLS listener of [`MockLlm::start_tls`].

mod agent_config;
mod completion;
mod github;
mod handler;
mod npm;
mod server;
mod teardown;
mod tls;

pub use agent_config::{
    MODEL_ID, PROVIDER_ID, write_pi_agent_config, write_pi_agent_config_with_key,
};
pub use completion::Script;
pub use github::{FakeGitHub, GITHUB_APP_TEST_ID, GITHUB_APP_TEST_KEY};
pub use npm::{FakePackage, FakeRegistry};
pub use server::MockLlm;
pub use teardown::block_on_own_thread;
