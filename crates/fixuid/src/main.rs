//! The `fixuid` binary: see the library's documentation. Installed setuid root at
//! `/usr/local/bin/fixuid` and used as `ENTRYPOINT ["fixuid", "-q", "/entrypoint.sh"]`.

use std::process::ExitCode;

use fixuid::cli::{self, Parsed, USAGE};
use fixuid::run::{Files, run};

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let opts = match cli::parse(&args) {
        Parsed::Run(opts) => opts,
        Parsed::Help => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Parsed::Error(msg) => {
            eprintln!("fixuid: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&Files::system(), &opts) {
        Ok(never) => match never {},
        Err(fatal) => {
            eprintln!("fixuid: {fatal}");
            ExitCode::from(u8::try_from(fatal.code()).unwrap_or(1))
        }
    }
}
