//! Command-line arguments, read like Go's `flag` package reads the original's: flags come
//! before the command, `-q` (also `--q`, `-q=true`, `-q=false`) is the only one, `--` ends the
//! flags, and the first argument that is not a flag starts the command.

use std::ffi::OsString;

use crate::run::Options;

/// The usage text printed for `-h` and for an unknown flag.
pub const USAGE: &str = "usage: fixuid [-q] [command [args...]]
  -q    quiet mode: no informational messages (warnings and errors are still printed)

Remaps the user and group named in /etc/fixuid/config.yml to the ids the container runs as,
hands their files under the configured paths over to those ids, then runs the command as
that user. Without a command, prints `export HOME=...` when HOME needs fixing (eval $(fixuid)).";

/// What the arguments ask for.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Run with these options.
    Run(Options),
    /// Print the usage and exit 0.
    Help,
    /// Print this message and the usage, exit 2.
    Error(String),
}

/// Parses the arguments after the program name.
pub fn parse(args: &[OsString]) -> Parsed {
    let mut quiet = false;
    let mut i = 0;
    while i < args.len() {
        let Some(arg) = args[i].to_str() else { break };
        if arg == "--" {
            i += 1;
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            break;
        }
        let flag = arg.strip_prefix("--").unwrap_or(&arg[1..]);
        match flag {
            "q" | "q=true" | "q=1" | "q=t" | "q=TRUE" | "q=True" => quiet = true,
            "q=false" | "q=0" | "q=f" | "q=FALSE" | "q=False" => quiet = false,
            "h" | "help" => return Parsed::Help,
            _ => return Parsed::Error(format!("flag provided but not defined: {arg}")),
        }
        i += 1;
    }
    Parsed::Run(Options {
        quiet,
        command: args[i..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Parsed {
        parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    fn run(quiet: bool, command: &[&str]) -> Parsed {
        Parsed::Run(Options {
            quiet,
            command: command.iter().map(OsString::from).collect(),
        })
    }

    #[test]
    fn the_seed_entrypoint_line_parses() {
        assert_eq!(
            p(&["-q", "/entrypoint.sh", "pi", "--mode", "rpc"]),
            run(true, &["/entrypoint.sh", "pi", "--mode", "rpc"])
        );
    }

    #[test]
    fn flags_stop_at_the_command_or_a_double_dash() {
        assert_eq!(p(&["ls", "-q"]), run(false, &["ls", "-q"]));
        assert_eq!(p(&["--", "-q"]), run(false, &["-q"]));
        assert_eq!(p(&["-q", "--", "--", "x"]), run(true, &["--", "x"]));
        assert_eq!(p(&["-", "x"]), run(false, &["-", "x"]));
        assert_eq!(p(&[]), run(false, &[]));
    }

    #[test]
    fn go_style_spellings_of_q_are_accepted() {
        assert_eq!(p(&["--q", "x"]), run(true, &["x"]));
        assert_eq!(p(&["-q=true", "x"]), run(true, &["x"]));
        assert_eq!(p(&["-q", "-q=false", "x"]), run(false, &["x"]));
    }

    #[test]
    fn help_and_unknown_flags() {
        assert_eq!(p(&["-h"]), Parsed::Help);
        assert_eq!(p(&["--help", "x"]), Parsed::Help);
        assert_eq!(
            p(&["-x", "cmd"]),
            Parsed::Error("flag provided but not defined: -x".into())
        );
    }
}
