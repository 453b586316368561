//! fixuid in Rust: a drop-in for [boxboat/fixuid]'s documented behaviour, so that sandbox
//! images can be built from this repository's sources alone.
//!
//! A container started with `--user <uid>:<gid>` runs under ids its image does not know. Run as
//! the entrypoint (setuid root), fixuid reads `/etc/fixuid/config.yml` (`user`, `group`,
//! `paths`), renumbers that user and group to the runtime ids in `/etc/passwd` and
//! `/etc/group`, hands the files they owned under `paths` over to the runtime ids without
//! leaving each path's filesystem, marks `/var/run/fixuid.ran`, sets `HOME` when Docker left it
//! at `/`, drops root for good and `exec`s the command. When the marker exists it only drops
//! root (if it has it) and runs the command: that is how it works under `no-new-privileges`,
//! where the setuid bit has no effect and the relay provides the account files itself.
//!
//! Layout: [`config`] (the YAML subset), [`accounts`] (passwd/group text, pure), [`plan`] (what
//! to change, pure), [`mounts`] (mount table), [`walk`] (the hand-over), [`sys`] (the few
//! system calls std lacks), [`run`] (one run, start to `exec`), [`cli`] (arguments).
//!
//! [boxboat/fixuid]: https://github.com/boxboat/fixuid

pub mod accounts;
pub mod cli;
pub mod config;
pub mod mounts;
pub mod plan;
pub mod run;
pub mod sys;
pub mod walk;
