//! Runs the built `fake-pi` executable the way the relay would run `pi`.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const EXE: &str = env!("CARGO_BIN_EXE_fake-pi");

fn run(program: &std::path::Path, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_binary_takes_pi_arguments_and_exits_zero_on_eof() {
    let out = run(
        EXE.as_ref(),
        &["--mode", "rpc", "--session-id", "abc", "--no-approve"],
        "{\"id\":\"r\",\"type\":\"get_state\"}\n",
    );
    assert_eq!(out.status.code(), Some(0));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["id"], "r");
    assert_eq!(reply["data"]["sessionId"], "abc");
}

#[test]
fn a_symlink_named_pi_runs_the_fake_and_passes_exit_codes_through() {
    let dir = std::env::temp_dir().join(format!("fake-pi-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("pi");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(EXE, &link).unwrap();
    let out = run(
        &link,
        &["--mode", "rpc"],
        "{\"type\":\"prompt\",\"message\":\"stderr hello\"}\n{\"type\":\"prompt\",\"message\":\"exit 3\"}\n",
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stderr, b"hello\n");
}
