//! The `pi-relay` binary: parses the command line and hands over to [`pi_relay::app`] or the
//! `secrets` commands.

use clap::Parser;
use pi_relay::config::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The relay's runtime runs its work below the API thread's priority; the secrets commands
    // run at the normal priority.
    let runtime = match cli.command {
        Command::Serve(_) => pi_relay::app::work_runtime(),
        Command::Secrets(_) => tokio::runtime::Runtime::new(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pi-relay: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(pi_relay::app::serve(*args)),
        Command::Secrets(cmd) => runtime.block_on(pi_relay::secrets_cli::run(cmd)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // With its causes: "cannot use … : Permission denied".
            let mut message = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            eprintln!("pi-relay: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
