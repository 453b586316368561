//! The shared sandbox entrypoint (`images/*/entrypoint.sh`) run on the host, without Docker,
//! under each POSIX shell the images use: dash (Debian's and Ubuntu's /bin/sh, so
//! sandbox-debian and codex-universal) always, and busybox sh (Alpine's) when it is installed.
//! Every case runs the script as an unprivileged uid (so "unreadable" means something; these
//! tests need root to switch to it) with `cat /proc/self/environ` as the command: what cat
//! prints is exactly the environment the entrypoint hands to pi.
//!
//! The same rules are checked in real containers in `relay-docker/tests/needs_docker_images.rs`.

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The unprivileged ids the script runs as.
const UID: u32 = 1234;

fn entrypoint() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run through cargo test"))
        .join("../../images/sandbox-debian/entrypoint.sh")
}

/// The shells to run under: dash must exist (it is Debian's /bin/sh); busybox is optional.
fn shells() -> Vec<Vec<&'static str>> {
    assert!(
        Path::new("/bin/dash").exists() || Path::new("/usr/bin/dash").exists(),
        "dash is required for these tests"
    );
    let mut out = vec![vec!["dash"]];
    if Command::new("busybox").arg("true").output().is_ok() {
        out.push(vec!["busybox", "sh"]);
    } else {
        eprintln!("busybox is not installed: Alpine's shell is not covered by this run");
    }
    out
}

/// What one run of the entrypoint produced.
#[derive(Debug)]
struct Run {
    /// Variables the entrypoint added (compared with a run without secrets).
    added: BTreeMap<String, Vec<u8>>,
    stderr: String,
    status: i32,
}

fn environ(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    bytes
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let eq = e.iter().position(|b| *b == b'=').expect("KEY=VALUE");
            (
                String::from_utf8(e[..eq].to_vec()).unwrap(),
                e[eq + 1..].to_vec(),
            )
        })
        .collect()
}

fn run_with(shell: &[&str], secrets: &Path, command: &[&str]) -> (Vec<u8>, String, i32) {
    let out = Command::new(shell[0])
        .args(&shell[1..])
        .arg(entrypoint())
        .args(command)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("PI_SECRETS_DIR", secrets)
        .uid(UID)
        .gid(UID)
        .output()
        .expect("run the entrypoint (these tests need root to switch uid)");
    (
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

fn run(shell: &[&str], secrets: &Path) -> Run {
    let empty = tempfile::tempdir().unwrap();
    give(empty.path());
    let (base, _, _) = run_with(shell, empty.path(), &["cat", "/proc/self/environ"]);
    let base = environ(&base);
    let (out, stderr, status) = run_with(shell, secrets, &["cat", "/proc/self/environ"]);
    let added = environ(&out)
        .into_iter()
        .filter(|(k, v)| k != "PI_SECRETS_DIR" && base.get(k) != Some(v))
        .collect();
    Run {
        added,
        stderr,
        status,
    }
}

/// Compares variables, printing only what differs (values escaped and shortened).
#[track_caller]
fn assert_env(actual: &BTreeMap<String, Vec<u8>>, expected: &BTreeMap<String, Vec<u8>>, ctx: &str) {
    let show = |v: Option<&Vec<u8>>| match v {
        None => "<unset>".to_owned(),
        Some(v) => {
            let s = v.escape_ascii().to_string();
            if s.len() > 80 {
                format!("{}... ({} bytes)", &s[..80], v.len())
            } else {
                s
            }
        }
    };
    let diffs: Vec<String> = actual
        .keys()
        .chain(expected.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| actual.get(*k) != expected.get(*k))
        .map(|k| {
            format!(
                "{k}: got {} want {}",
                show(actual.get(k)),
                show(expected.get(k))
            )
        })
        .collect();
    assert!(diffs.is_empty(), "{ctx}: {diffs:#?}");
}

/// A secrets directory as the relay makes it: owned by the sandbox uid, mode 0700.
fn secrets_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    give(d.path());
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

fn give(p: &Path) {
    chown(p, Some(UID), Some(UID))
        .unwrap_or_else(|e| panic!("chown {} (these tests need root): {e}", p.display()));
}

fn secret(dir: &Path, name: &str, value: &[u8]) {
    let p = dir.join(name);
    std::fs::write(&p, value).unwrap();
    give(&p);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// File content → expected variable value: bytes kept, one trailing newline removed.
const TRICKY: &[(&str, &[u8], &[u8])] = &[
    ("plain", b"sk-plain-123\n", b"sk-plain-123"),
    ("no_newline", b"no trailing newline", b"no trailing newline"),
    ("two_newlines", b"value\n\n", b"value\n"),
    (
        "only_newline_kept_inside",
        b"multi\nline\nvalue\n",
        b"multi\nline\nvalue",
    ),
    ("crlf", b"windows\r\n", b"windows\r"),
    ("spaces", b"  lead and trail  \t\n", b"  lead and trail  \t"),
    ("quotes", b"it's \"quoted\" `x`", b"it's \"quoted\" `x`"),
    (
        "dollars",
        b"$HOME $(id) ${PATH} $$ \\$x",
        b"$HOME $(id) ${PATH} $$ \\$x",
    ),
    ("backslashes", b"a\\nb\\\\c\\", b"a\\nb\\\\c\\"),
    ("dash_n", b"-n", b"-n"),
    ("printf_like", b"%s %d %% \\c", b"%s %d %% \\c"),
    ("globs", b"* ? [a-z] ~", b"* ? [a-z] ~"),
    ("equals", b"k=v=w", b"k=v=w"),
    (
        "unicode",
        "héllo wörld ✓".as_bytes(),
        "héllo wörld ✓".as_bytes(),
    ),
    ("latin1", b"caf\xe9 \xff\xfe", b"caf\xe9 \xff\xfe"),
    ("whitespace_only", b" \t\n \n", b" \t\n "),
    ("Mixed_Case9", b"m", b"m"),
    ("_leading_underscore", b"u", b"u"),
    ("ALREADY_UPPER", b"up", b"up"),
];

#[test]
fn tricky_values_become_exactly_the_expected_variables() {
    let dir = secrets_dir();
    for (name, content, _) in TRICKY {
        secret(dir.path(), name, content);
    }
    let long = "x".repeat(60_000);
    secret(dir.path(), "long_value", long.as_bytes());
    for shell in shells() {
        let r = run(&shell, dir.path());
        assert_eq!(r.status, 0, "{shell:?}: {}", r.stderr);
        let mut expected: BTreeMap<String, Vec<u8>> = TRICKY
            .iter()
            .map(|(n, _, v)| (n.to_uppercase(), v.to_vec()))
            .collect();
        expected.insert("LONG_VALUE".into(), long.clone().into_bytes());
        assert_env(&r.added, &expected, &format!("{shell:?}"));
        assert_eq!(r.stderr, "", "{shell:?}");
    }
}

#[test]
fn invalid_and_reserved_names_are_skipped_with_a_warning_that_never_shows_the_value() {
    let dir = secrets_dir();
    let value = b"TOPSECRET-value-4711";
    for name in [
        "bad-name",
        "1starts_with_digit",
        "with space",
        "d\u{f6}t",
        "path",
        "home",
        "ld_preload",
        "pi_coding_agent_dir",
        "pi_session_id",
    ] {
        secret(dir.path(), name, value);
    }
    secret(dir.path(), "good", b"ok");
    for shell in shells() {
        let r = run(&shell, dir.path());
        assert_eq!(r.status, 0);
        assert_env(
            &r.added,
            &BTreeMap::from([("GOOD".to_owned(), b"ok".to_vec())]),
            &format!("{shell:?}"),
        );
        assert!(!r.stderr.contains("TOPSECRET"), "{shell:?}: {}", r.stderr);
        for line in [
            "entrypoint: skipping secret file 'bad-name': not a valid variable name",
            "entrypoint: skipping secret file '1starts_with_digit': not a valid variable name",
            "entrypoint: skipping secret file 'with space': not a valid variable name",
            "entrypoint: skipping secret file 'd\u{f6}t': not a valid variable name",
            "entrypoint: skipping secret file 'path': PATH is reserved for the sandbox",
            "entrypoint: skipping secret file 'home': HOME is reserved for the sandbox",
            "entrypoint: skipping secret file 'ld_preload': LD_PRELOAD is reserved for the sandbox",
            "entrypoint: skipping secret file 'pi_coding_agent_dir': PI_CODING_AGENT_DIR is reserved for the sandbox",
            "entrypoint: skipping secret file 'pi_session_id': PI_SESSION_ID is reserved for the sandbox",
        ] {
            assert!(
                r.stderr.lines().any(|l| l == line),
                "{shell:?}: no {line:?} in {}",
                r.stderr
            );
        }
    }
}

#[test]
fn a_missing_or_empty_directory_loads_nothing_silently() {
    let parent = tempfile::tempdir().unwrap();
    let empty = secrets_dir();
    for shell in shells() {
        for dir in [parent.path().join("missing"), empty.path().to_path_buf()] {
            let r = run(&shell, &dir);
            assert_eq!(r.status, 0);
            assert_env(&r.added, &BTreeMap::new(), &format!("{shell:?} {dir:?}"));
            assert_eq!(r.stderr, "", "{shell:?} {dir:?}");
        }
    }
}

#[test]
fn an_unreadable_directory_or_a_file_in_its_place_gets_one_warning() {
    let dir = tempfile::tempdir().unwrap();
    // Owned by root, 0700: the sandbox uid cannot list it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(dir.path().join("token"), "v").unwrap();
    let parent = tempfile::tempdir().unwrap();
    give(parent.path());
    let not_a_dir = parent.path().join("secrets");
    std::fs::write(&not_a_dir, "v").unwrap();
    for shell in shells() {
        let r = run(&shell, dir.path());
        assert_eq!(r.status, 0);
        assert!(r.added.is_empty());
        assert_eq!(
            r.stderr,
            format!(
                "entrypoint: cannot read {} as uid {UID}; no secrets loaded\n",
                dir.path().display()
            )
        );
        let r = run(&shell, &not_a_dir);
        assert!(r.added.is_empty());
        assert_eq!(
            r.stderr,
            format!(
                "entrypoint: {} is not a directory; no secrets loaded\n",
                not_a_dir.display()
            )
        );
    }
}

#[test]
fn directories_symlinks_fifos_and_unreadable_files_are_skipped_but_kubernetes_links_work() {
    let dir = secrets_dir();
    let d = dir.path();
    // Kubernetes Secret volume layout: name -> ..data/name, ..data -> ..<timestamp>.
    std::fs::create_dir(d.join("..2026_11_26")).unwrap();
    secret(&d.join("..2026_11_26"), "k8s_token", b"from-kubernetes\n");
    symlink("..2026_11_26", d.join("..data")).unwrap();
    symlink("..data/k8s_token", d.join("k8s_token")).unwrap();
    // Outside the directory, dangling, a directory, a FIFO, an unreadable file.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("f"), "outside-value").unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    symlink(outside.path().join("f"), d.join("escape")).unwrap();
    symlink("/nonexistent/x", d.join("dangling")).unwrap();
    std::fs::create_dir(d.join("subdir")).unwrap();
    secret(&d.join("subdir"), "nested", b"nested-value");
    let fifo = d.join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    give(&fifo);
    std::fs::write(d.join("locked"), "locked-value").unwrap();
    std::fs::set_permissions(d.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    for shell in shells() {
        let r = run(&shell, d);
        assert_eq!(r.status, 0);
        assert_env(
            &r.added,
            &BTreeMap::from([("K8S_TOKEN".to_owned(), b"from-kubernetes".to_vec())]),
            &format!("{shell:?}: {}", r.stderr),
        );
        let dir_shown = d.display();
        for line in [
            format!(
                "entrypoint: skipping secret file 'escape': a symlink that does not lead to a file inside {dir_shown}"
            ),
            format!(
                "entrypoint: skipping secret file 'dangling': a symlink that does not lead to a file inside {dir_shown}"
            ),
            "entrypoint: skipping secret file 'subdir': a directory, not a file".into(),
            "entrypoint: skipping secret file 'fifo': not a regular file".into(),
            "entrypoint: skipping secret file 'locked': cannot read it".into(),
        ] {
            assert!(
                r.stderr.lines().any(|l| l == line),
                "{shell:?}: no {line:?} in {}",
                r.stderr
            );
        }
        assert_eq!(r.stderr.lines().count(), 5, "{shell:?}: {}", r.stderr);
        assert!(!r.stderr.contains("-value"), "{}", r.stderr);
    }
}

#[test]
fn empty_files_set_empty_variables_and_say_so() {
    let dir = secrets_dir();
    secret(dir.path(), "empty", b"");
    secret(dir.path(), "just_newline", b"\n");
    for shell in shells() {
        let r = run(&shell, dir.path());
        assert_env(
            &r.added,
            &BTreeMap::from([
                ("EMPTY".to_owned(), Vec::new()),
                ("JUST_NEWLINE".to_owned(), Vec::new()),
            ]),
            &format!("{shell:?}"),
        );
        assert!(
            r.stderr.contains(
                "entrypoint: secret file 'empty' is empty: EMPTY is set to an empty value"
            ),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn huge_values_and_nul_bytes_are_refused_and_the_command_still_runs() {
    let dir = secrets_dir();
    let d = dir.path();
    secret(d, "huge", &vec![b'h'; 70_000]);
    secret(d, "at_limit", &vec![b'm'; 65_536]);
    // The one trailing newline that is removed does not count towards the limit.
    let mut with_newline = vec![b'n'; 65_536];
    with_newline.push(b'\n');
    secret(d, "at_limit_newline", &with_newline);
    secret(d, "over_by_one", &vec![b'o'; 65_537]);
    secret(d, "nul_byte", b"before\0after");
    for shell in shells() {
        let r = run(&shell, d);
        assert_eq!(r.status, 0, "{shell:?}: {}", r.stderr);
        let lens: BTreeMap<&str, usize> =
            r.added.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
        assert_eq!(
            lens,
            BTreeMap::from([("AT_LIMIT", 65_536), ("AT_LIMIT_NEWLINE", 65_536)]),
            "{shell:?}"
        );
        let expected = [
            "entrypoint: skipping secret file 'huge': 70000 bytes, more than the 65536 a secret may have",
            "entrypoint: skipping secret file 'nul_byte': it holds a NUL byte, which an environment variable cannot",
            "entrypoint: skipping secret file 'over_by_one': 65537 bytes, more than the 65536 a secret may have",
        ];
        assert_eq!(r.stderr.lines().collect::<Vec<_>>(), expected, "{shell:?}");
    }
}

#[test]
fn the_secrets_stop_at_one_mebibyte_in_total() {
    let dir = secrets_dir();
    // 16 values of 64 KiB are exactly 1 MiB: they fit; the 17th does not.
    for i in 0..17 {
        secret(dir.path(), &format!("z{i:02}"), &vec![b'z'; 65_536]);
    }
    for shell in shells() {
        let r = run(&shell, dir.path());
        assert_eq!(r.status, 0, "{shell:?}");
        assert_eq!(r.added.len(), 16, "{shell:?}");
        assert!(!r.added.contains_key("Z16"));
        assert_eq!(
            r.stderr,
            "entrypoint: skipping secret file 'z16': the secrets would take more than 1048576 bytes in total\n",
            "{shell:?}"
        );
    }
}

#[test]
fn the_command_replaces_the_script_with_its_arguments_and_exit_status() {
    let dir = secrets_dir();
    for shell in shells() {
        let (out, _, status) = run_with(
            &shell,
            dir.path(),
            &[
                "sh",
                "-c",
                "printf '%s|' \"$0\" \"$@\"; exit 7",
                "zero",
                "a b",
                "",
                "*",
            ],
        );
        assert_eq!(String::from_utf8_lossy(&out), "zero|a b||*|");
        assert_eq!(status, 7);
        // No command: a clear message and a distinct status.
        let (_, err, status) = run_with(&shell, dir.path(), &[]);
        assert_eq!(err, "entrypoint: no command to run\n");
        assert_eq!(status, 64);
    }
}
