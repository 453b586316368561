//! The `pi-relay` binary: parses the command line and hands over to [`pi_relay::app`], the
//! benchmark, or the `secrets` commands.

use clap::Parser;
use pi_relay::config::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pi-relay: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(pi_relay::app::serve(*args)),
        Command::Bench(args) => runtime.block_on(pi_relay::bench::run(args)),
        Command::Secrets(cmd) => runtime.block_on(pi_relay::secrets_cli::run(cmd)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pi-relay: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
