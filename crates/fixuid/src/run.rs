//! One run of fixuid, start to `exec`, in the order the original uses: the "already ran"
//! marker, the root check, the configuration, the account files, the rewrite, the hand-over of
//! files, the marker, `HOME`, and finally dropping to the runtime ids and running the command.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::accounts::{self, GroupEntry, PasswdEntry};
use crate::config::{Config, ConfigError};
use crate::plan::{Plan, PlanError};
use crate::walk::Handover;
use crate::{mounts, sys};

/// Where fixuid reads and writes. Fixed for the binary: a setuid program must not let its
/// caller choose these.
#[derive(Clone, Debug)]
pub struct Files {
    /// Configuration files tried in order; the first one that exists is used.
    pub configs: Vec<PathBuf>,
    /// Formats of the original that this implementation does not read.
    pub unsupported_configs: Vec<PathBuf>,
    /// The account database.
    pub passwd: PathBuf,
    /// The group database.
    pub group: PathBuf,
    /// Marks that fixuid has run in this container.
    pub ran: PathBuf,
    /// The mount table.
    pub mountinfo: PathBuf,
    /// The process's initial environment as the kernel passed it.
    pub environ: PathBuf,
}

impl Files {
    /// The files of a real system.
    pub fn system() -> Files {
        Files {
            configs: vec![
                "/etc/fixuid/config.yml".into(),
                "/etc/fixuid/config.yaml".into(),
            ],
            unsupported_configs: vec![
                "/etc/fixuid/config.json".into(),
                "/etc/fixuid/config.toml".into(),
            ],
            passwd: "/etc/passwd".into(),
            group: "/etc/group".into(),
            ran: "/var/run/fixuid.ran".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            environ: "/proc/self/environ".into(),
        }
    }
}

/// Command-line options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `-q`: no informational messages (warnings and errors are still printed).
    pub quiet: bool,
    /// The command to run; empty means "script mode": print `export HOME=…` if needed, exit.
    pub command: Vec<OsString>,
}

/// Why fixuid stops without running the command. `Display` is the message; [`Fatal::code`]
/// the exit status.
#[derive(Debug)]
pub enum Fatal {
    /// The effective uid is not 0 and the marker is absent.
    NotRoot {
        /// The marker path, for the message.
        ran: PathBuf,
    },
    /// No configuration file exists.
    NoConfig(Vec<PathBuf>),
    /// Only a configuration format this implementation does not read exists.
    UnsupportedConfig(PathBuf),
    /// The configuration cannot be read or is invalid.
    Config(PathBuf, ConfigError),
    /// An account file cannot be read or written.
    Io(String, io::Error),
    /// The configured user or group does not exist.
    Plan(PlanError),
    /// The command is not in `$PATH`.
    NotFound(OsString),
    /// Dropping privileges or `exec` failed.
    Exec(OsString, io::Error),
    /// Dropping privileges failed.
    Drop(io::Error),
}

impl Fatal {
    /// The exit status: 127 when the command does not exist, 126 when it cannot be run, 1
    /// otherwise (as the original's fatal log).
    pub fn code(&self) -> i32 {
        match self {
            Fatal::NotFound(_) => 127,
            Fatal::Exec(..) => 126,
            _ => 1,
        }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::NotRoot { ran } => write!(
                f,
                "fixuid is not running as root, and {} does not exist. Check that:\n\
                 \x20       - the fixuid binary is owned by root (chown root:root /path/to/fixuid)\n\
                 \x20       - the fixuid binary has the setuid bit (chmod u+s /path/to/fixuid)\n\
                 \x20       - the container allows privilege escalation (no 'no-new-privileges')\n\
                 \x20       - the filesystem holding fixuid is not mounted 'nosuid'\n\
                 \x20       or, where escalation is off on purpose, mount /etc/passwd and /etc/group \
                 that already map the user to the runtime ids and an empty {}",
                ran.display(),
                ran.display()
            ),
            Fatal::NoConfig(tried) => write!(
                f,
                "could not find config at {}",
                tried
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            Fatal::UnsupportedConfig(p) => write!(
                f,
                "{}: this fixuid reads only YAML configuration (config.yml or config.yaml)",
                p.display()
            ),
            Fatal::Config(p, e @ ConfigError::Syntax(_)) => write!(
                f,
                "{}: {e} (fixuid reads only top-level `key: value` lines and lists of strings)",
                p.display()
            ),
            Fatal::Config(p, e) => write!(f, "{e} in configuration file {}", p.display()),
            Fatal::Io(what, e) => write!(f, "{what}: {e}"),
            Fatal::Plan(e) => write!(f, "{e}"),
            Fatal::NotFound(c) => write!(
                f,
                "cannot run '{}': no such executable in $PATH",
                c.to_string_lossy()
            ),
            Fatal::Exec(c, e) => write!(f, "cannot run '{}': {e}", c.to_string_lossy()),
            Fatal::Drop(e) => write!(f, "cannot drop root privileges: {e}"),
        }
    }
}

/// Prints messages with fixuid's prefix on stderr.
#[derive(Debug, Clone, Copy)]
pub struct Log {
    /// Informational messages are suppressed.
    pub quiet: bool,
}

impl Log {
    /// An informational message (hidden by `-q`).
    pub fn info(&self, msg: &str) {
        if !self.quiet {
            let _ = writeln!(io::stderr(), "fixuid: {msg}");
        }
    }

    /// A warning: an outcome the caller would not expect. Always printed.
    pub fn warn(&self, msg: &str) {
        let _ = writeln!(io::stderr(), "fixuid: warning: {msg}");
    }
}

/// Runs fixuid. Returns only on failure; on success the process becomes the command (or exits
/// 0 in script mode).
pub fn run(files: &Files, opts: &Options) -> Result<Infallible, Fatal> {
    let log = Log { quiet: opts.quiet };
    let ids = sys::process_ids();
    // Read before anything else, while /proc/self is still readable: for a setuid process the C
    // library removes variables such as TMPDIR and LD_LIBRARY_PATH from `environ`; the command
    // gets the environment the container was started with.
    let env = initial_environment(&files.environ);

    // Anything at the marker's path counts, as in the original (only "not found" does not).
    let ran =
        !matches!(files.ran.symlink_metadata(), Err(e) if e.kind() == io::ErrorKind::NotFound);
    if ran {
        log.info("already ran on this system; will not attempt to change UID/GID");
        return finish(&log, files, opts, ids, env, None);
    }
    if ids.euid != 0 {
        return Err(Fatal::NotRoot {
            ran: files.ran.clone(),
        });
    }

    let config = load_config(files)?;
    let passwd_text = read(&files.passwd)?;
    let group_text = read(&files.group)?;
    let passwd = accounts::passwd_entries(&passwd_text);
    let groups = accounts::group_entries(&group_text);
    let plan = Plan::new(&config, &passwd, &groups, ids.uid, ids.gid).map_err(Fatal::Plan)?;

    if ids.uid == 0 {
        // Root needs no remapping, and handing the user's files to root would take them away
        // from the host user who owns the bind mounts. Leave everything as it is.
        log.warn(
            "runtime UID is 0 (root): users, groups and file owners are left as they are, and the \
             command runs as root",
        );
        return finish(&log, files, opts, ids, env, None);
    }

    for line in plan.info() {
        log.info(&line);
    }
    for line in plan.warnings() {
        log.warn(&line);
    }
    if plan.uid_change().is_some() || plan.gid_change().is_some() {
        let new = accounts::rewrite_passwd(
            &passwd_text,
            &plan.user,
            plan.uid_change(),
            plan.gid_change(),
        );
        write(&files.passwd, &new)?;
    }
    if let Some(change) = plan.gid_change() {
        write(
            &files.group,
            &accounts::rewrite_group(&group_text, &plan.group, change),
        )?;
    }
    if plan.needs_chown() {
        hand_over(&log, files, &config, &plan);
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&files.ran)
        .map_err(|e| Fatal::Io(format!("cannot create {}", files.ran.display()), e))?;

    finish(
        &log,
        files,
        opts,
        ids,
        env,
        plan.gid_change().map(|c| c.from),
    )
}

fn hand_over(log: &Log, files: &Files, config: &Config, plan: &Plan) {
    let mount_points = std::fs::read_to_string(&files.mountinfo)
        .map(|t| mounts::mount_points(&t))
        .unwrap_or_default();
    let handover = Handover {
        from: plan.image_ids,
        to: plan.runtime_ids,
        mounts: &mount_points,
    };
    for path in &config.paths {
        let outcome = handover.run(path);
        for line in &outcome.info {
            log.info(line);
        }
        if outcome.failed > 0 {
            log.warn(&format!(
                "{} entries under {} kept their owner ({})",
                outcome.failed,
                path.display(),
                outcome.first_failure.as_deref().unwrap_or("see above")
            ));
        }
    }
}

/// Everything after the account work: `HOME`, dropping privileges, `exec`. The account files
/// are read as they are now (possibly just rewritten).
fn finish(
    log: &Log,
    files: &Files,
    opts: &Options,
    ids: sys::ProcessIds,
    mut env: Vec<(OsString, OsString)>,
    old_gid: Option<u32>,
) -> Result<Infallible, Fatal> {
    let passwd = accounts::passwd_entries(&read_or_empty(&files.passwd));
    // Docker sets HOME=/ when the runtime uid had no account; the account has one now.
    let home = env
        .iter()
        .find(|(k, _)| k == "HOME")
        .is_some_and(|(_, v)| v == "/")
        .then(|| accounts::user_by_uid(&passwd, ids.uid))
        .flatten()
        .map(|e| e.home.clone())
        .filter(|h| !h.is_empty() && h != "/");

    let Some((program, args)) = opts.command.split_first() else {
        // Script mode: `eval $(fixuid)`.
        if let Some(h) = home {
            println!("export HOME=\"{}\"", h.replace('"', "\\\""));
        }
        std::process::exit(0);
    };
    if let Some(h) = &home {
        log.info(&format!("setting HOME to {h}"));
        env.retain(|(k, _)| k != "HOME");
        env.push(("HOME".into(), h.into()));
    }

    if ids.euid == 0 && ids.uid != 0 {
        let groups = accounts::group_entries(&read_or_empty(&files.group));
        let groups = groups_for(ids, &passwd, &groups, old_gid).map_err(Fatal::Drop)?;
        sys::become_user(ids.uid, ids.gid, &groups).map_err(Fatal::Drop)?;
    }

    // Looked up after dropping privileges, so root's view of the filesystem is never used.
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    let resolved = find_program(program, path_var.as_deref())
        .ok_or_else(|| Fatal::NotFound(program.clone()))?;
    let err = Command::new(&resolved)
        .arg0(program)
        .args(args)
        .env_clear()
        .envs(env)
        .exec();
    Err(Fatal::Exec(program.clone(), err))
}

/// The supplementary groups after dropping root: those the container was started with, the
/// runtime gid, and the groups listing the runtime user as a member; without the image's old
/// gid when it was renumbered (it names no group any more).
fn groups_for(
    ids: sys::ProcessIds,
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
    old_gid: Option<u32>,
) -> io::Result<Vec<u32>> {
    let mut set: BTreeSet<u32> = sys::supplementary_groups()?.into_iter().collect();
    set.insert(ids.gid);
    if let Some(user) = accounts::user_by_uid(passwd, ids.uid) {
        set.extend(accounts::member_gids(groups, &user.name));
    }
    if let Some(old) = old_gid.filter(|g| *g != ids.gid) {
        set.remove(&old);
    }
    Ok(set.into_iter().collect())
}

/// Finds `program` the way `execvp` would: as given when it contains a `/`, else in `$PATH`.
pub fn find_program(program: &OsStr, path_var: Option<&OsStr>) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    if program.is_empty() {
        return None;
    }
    std::env::split_paths(path_var?)
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                PathBuf::from(".").join(program)
            } else {
                dir.join(program)
            }
        })
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn load_config(files: &Files) -> Result<Config, Fatal> {
    let Some(path) = files.configs.iter().find(|p| p.exists()) else {
        if let Some(p) = files.unsupported_configs.iter().find(|p| p.exists()) {
            return Err(Fatal::UnsupportedConfig(p.clone()));
        }
        return Err(Fatal::NoConfig(files.configs.clone()));
    };
    let text = read(path)?;
    Config::parse(&text).map_err(|e| Fatal::Config(path.clone(), e))
}

fn read(path: &Path) -> Result<String, Fatal> {
    std::fs::read_to_string(path)
        .map_err(|e| Fatal::Io(format!("cannot read {}", path.display()), e))
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn write(path: &Path, text: &str) -> Result<(), Fatal> {
    // In place (truncate and write), so a bind-mounted file keeps working.
    std::fs::write(path, text).map_err(|e| Fatal::Io(format!("cannot write {}", path.display()), e))
}

/// The environment the process was started with: `/proc/self/environ` when readable, else
/// what the C library left in `environ`.
fn initial_environment(environ: &Path) -> Vec<(OsString, OsString)> {
    match std::fs::read(environ) {
        Ok(bytes) => parse_environ(&bytes),
        Err(_) => std::env::vars_os().collect(),
    }
}

/// Splits a NUL-separated `KEY=VALUE` block. Entries without `=` are dropped; a later entry
/// replaces an earlier one with the same key.
pub fn parse_environ(bytes: &[u8]) -> Vec<(OsString, OsString)> {
    let mut out: Vec<(OsString, OsString)> = Vec::new();
    for entry in bytes.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        if eq == 0 {
            continue;
        }
        let key = OsString::from_vec(entry[..eq].to_vec());
        let value = OsString::from_vec(entry[eq + 1..].to_vec());
        out.retain(|(k, _)| *k != key);
        out.push((key, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_blocks_split_on_nul_and_the_first_equals_sign() {
        let env = parse_environ(b"A=1\0B=x=y\0\0NOEQ\0=bad\0A=2\0EMPTY=\0");
        let pairs: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("B".into(), "x=y".into()),
                ("A".into(), "2".into()),
                ("EMPTY".into(), String::new()),
            ]
        );
    }

    #[test]
    fn programs_are_found_like_execvp() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.path().join("data");
        std::fs::write(&plain, "").unwrap();
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(find_program("tool".as_ref(), Some(&path)), Some(exe));
        // Not executable, a directory, or absent: not found.
        for name in ["data", "subdir", "missing", ""] {
            assert_eq!(find_program(name.as_ref(), Some(&path)), None, "{name}");
        }
        assert_eq!(find_program("tool".as_ref(), None), None);
        // A name with a slash is used as given.
        assert_eq!(
            find_program("./x/y".as_ref(), Some(&path)),
            Some(PathBuf::from("./x/y"))
        );
    }

    #[test]
    fn the_not_root_message_names_the_criteria_and_the_marker() {
        let m = Fatal::NotRoot {
            ran: "/var/run/fixuid.ran".into(),
        }
        .to_string();
        assert!(m.starts_with("fixuid is not running as root"), "{m}");
        for needle in [
            "setuid",
            "no-new-privileges",
            "nosuid",
            "/var/run/fixuid.ran",
        ] {
            assert!(m.contains(needle), "{needle}: {m}");
        }
    }

    #[test]
    fn exit_codes_follow_the_shell_for_missing_and_unrunnable_commands() {
        assert_eq!(Fatal::NotFound("x".into()).code(), 127);
        assert_eq!(Fatal::Exec("x".into(), io::Error::other("e")).code(), 126);
        assert_eq!(Fatal::NoConfig(vec![]).code(), 1);
    }
}
