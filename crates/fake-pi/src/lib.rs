//! A test double of `pi --mode rpc` (pi 1.5.2) for the relay's tests and benchmarks.
//!
//! This crate owns the fake's whole behaviour: the RPC framing (one JSON command per stdin line, one JSON record per
//! stdout line), the responses to every pi 1.5.2 command, and the event stream of a prompt, kept shaped like the real
//! captures in `testdata/pi-1.5.2/` (its tests compare against them). It also owns a few test-only prompts
//! (`flood N`, `pace N MICROS`, `big N`, `noise`, `stderr TEXT`, `exit N`, `sleep MS`; see the
//! `hooks` module) that real pi lacks.
//!
//! The `fake-pi` binary runs [`run`] on the process's stdio and accepts pi's command line, so it can stand in for
//! `pi` (for example through a symlink named `pi`).

#[macro_use]
mod json;
mod hooks;
mod ids;
mod session;
mod transcript;
mod wire;

/// The parts of pi's command line that change what the fake reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `--session-id`; without it the fake makes up a UUIDv7-like id, as pi does.
    pub session_id: Option<String>,
    /// The working directory pi would run in; it shapes `sessionFile` and the system prompt.
    pub cwd: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            session_id: None,
            cwd: "/workspace".to_owned(),
        }
    }
}

/// pi 1.5.2 options that take a value (from `pi --help`), so that value is never mistaken for a flag or kept.
const VALUE_FLAGS: &[&str] = &[
    "--provider",
    "--model",
    "--api-key",
    "--system-prompt",
    "--append-system-prompt",
    "--mode",
    "--session",
    "--session-id",
    "--fork",
    "--session-dir",
    "--name",
    "-n",
    "--models",
    "--tools",
    "-t",
    "--exclude-tools",
    "-xt",
    "--thinking",
    "--extension",
    "-e",
    "--skill",
    "--prompt-template",
    "--theme",
    "--use-theme",
    "--tui-mode",
    "--export",
];

/// pi 1.5.2 options that take no value.
const SWITCHES: &[&str] = &[
    "--print",
    "-p",
    "--continue",
    "-c",
    "--resume",
    "-r",
    "--no-session",
    "--no-tools",
    "-nt",
    "--no-builtin-tools",
    "-nbt",
    "--no-extensions",
    "-ne",
    "--no-mcp",
    "--no-skills",
    "-ns",
    "--no-prompt-templates",
    "-np",
    "--no-themes",
    "--no-context-files",
    "-nc",
    "--list-models",
    "--verbose",
    "--approve",
    "-a",
    "--no-approve",
    "-na",
    "--offline",
    "--help",
    "-h",
    "--version",
    "-v",
];

impl Options {
    /// Reads pi-style arguments (without the program name). Only `--session-id X` (or `--session-id=X`) matters; the
    /// mode is always RPC. Other known options are skipped with their values. An unknown option (extensions can add
    /// flags) swallows the next argument unless that looks like an option, and plain arguments are ignored.
    pub fn from_args<I: IntoIterator<Item = String>>(args: I) -> Options {
        let mut opts = Options::default();
        let mut args = args.into_iter().peekable();
        while let Some(arg) = args.next() {
            if arg == "--" {
                break;
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
                _ => (arg.as_str(), None),
            };
            if !flag.starts_with('-') || SWITCHES.contains(&flag) {
                continue;
            }
            let value = match inline {
                Some(value) => Some(value),
                None if VALUE_FLAGS.contains(&flag) => args.next(),
                None => args.next_if(|next| !next.starts_with('-')),
            };
            if flag == "--session-id" {
                opts.session_id = value;
            }
        }
        opts
    }
}

/// Runs the fake until stdin reaches EOF (returns 0) or a command asks it to exit (returns that code).
///
/// An I/O error on stdin or stdout ends the run with 1. Output is flushed after each command's burst.
pub async fn run<R, W, E>(stdin: R, stdout: W, stderr: E, opts: Options) -> i32
where
    R: tokio::io::AsyncRead + Unpin + Send,
    W: tokio::io::AsyncWrite + Unpin + Send,
    E: tokio::io::AsyncWrite + Unpin + Send,
{
    session::Fake::new(stdin, stdout, stderr, opts).run().await
}

#[cfg(test)]
mod tests {
    use super::Options;

    fn parse(args: &[&str]) -> Options {
        Options::from_args(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn session_id_is_read_from_either_spelling() {
        let want = Some("abc".to_owned());
        assert_eq!(
            parse(&["--mode", "rpc", "--session-id", "abc"]).session_id,
            want
        );
        assert_eq!(parse(&["--session-id=abc", "--mode=rpc"]).session_id, want);
    }

    #[test]
    fn other_options_and_their_values_are_skipped() {
        let opts = parse(&[
            "--model",
            "--session-id",
            "--no-approve",
            "--plan",
            "fast",
            "--future-switch",
            "--session-id",
            "real",
            "-e",
            "/ext/gate.ts",
            "stray",
        ]);
        assert_eq!(opts.session_id.as_deref(), Some("real"));
        assert_eq!(opts.cwd, "/workspace");
    }

    #[test]
    fn arguments_after_a_double_dash_are_messages() {
        assert_eq!(parse(&["--", "--session-id", "x"]).session_id, None);
    }
}
