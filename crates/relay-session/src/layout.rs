//! Where a session lives on the host, and the files the relay generates for its sandbox. Paths
//! are fixed by the sandbox contract: `<stateDir>/sessions/<id>/{workspace,agent}` and
//! `<stateDir>/pi-secrets-<id>` (one file per secret, see [`SessionLayout::write_secrets`]).
//! The generated `passwd`/`group` map the image's `user` to the
//! sandbox uid:gid, so tools that look the user up work without fixuid's setuid step (which
//! `no-new-privileges` disables).

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;

use crate::secrets::SecretFile;

/// Host paths of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLayout {
    /// `<stateDir>/sessions/<id>`
    pub root: PathBuf,
    /// `…/workspace` → `/workspace`
    pub workspace: PathBuf,
    /// `…/agent` → `/data/agent`
    pub agent: PathBuf,
    /// `…/sandbox`: generated `passwd`, `group`, `fixuid.ran`
    pub generated: PathBuf,
    /// `<stateDir>/pi-secrets-<id>` → `/run/secrets`
    pub secrets: PathBuf,
}

impl SessionLayout {
    /// The layout of session `id` under `state_dir`.
    pub fn new(state_dir: &Path, id: &str) -> SessionLayout {
        let root = state_dir.join("sessions").join(id);
        SessionLayout {
            workspace: root.join("workspace"),
            agent: root.join("agent"),
            generated: root.join("sandbox"),
            secrets: state_dir.join(format!("pi-secrets-{id}")),
            root,
        }
    }

    /// Creates the directories and generated files, owned by the sandbox user when the relay
    /// runs as root. Existing content (a workspace, pi's session files) is kept.
    pub fn prepare(&self, uid: u32, gid: u32, chown_to_sandbox: bool) -> io::Result<()> {
        let own = |p: &Path| -> io::Result<()> {
            if chown_to_sandbox {
                chown(p, Some(uid), Some(gid))?;
            }
            Ok(())
        };
        for dir in [&self.root, &self.workspace, &self.agent, &self.generated] {
            std::fs::create_dir_all(dir)?;
        }
        // Only the session's own user may enter its directories.
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o750))?;
        for dir in [&self.root, &self.workspace, &self.agent] {
            own(dir)?;
        }
        std::fs::create_dir_all(&self.secrets)?;
        std::fs::set_permissions(&self.secrets, std::fs::Permissions::from_mode(0o700))?;
        own(&self.secrets)?;
        write_if_changed(&self.generated.join("passwd"), &passwd(uid, gid))?;
        write_if_changed(&self.generated.join("group"), &group(gid))?;
        write_if_changed(&self.generated.join("fixuid.ran"), "")?;
        // Bind-mounted read-only; world-readable like the files they replace.
        std::fs::set_permissions(&self.generated, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// Copies the files of `template` into the agent directory, keeping files that exist
    /// already (pi may have changed them), owned like the agent directory.
    pub fn seed_agent_dir(
        &self,
        template: &Path,
        uid: u32,
        gid: u32,
        chown_to_sandbox: bool,
    ) -> io::Result<()> {
        copy_missing(template, &self.agent, &|p| {
            if chown_to_sandbox {
                chown(p, Some(uid), Some(gid))?;
            }
            Ok(())
        })
    }

    /// Makes the secrets directory hold exactly `files`: each written to a temporary name and
    /// renamed into place (a starting sandbox never reads half a value), mode 0400 and owned by
    /// the sandbox user; files of secrets deleted or disabled since are removed. The directory
    /// is created 0700 if needed.
    pub fn write_secrets(
        &self,
        files: &[SecretFile],
        uid: u32,
        gid: u32,
        chown_to_sandbox: bool,
    ) -> io::Result<()> {
        let own = |p: &Path| -> io::Result<()> {
            if chown_to_sandbox {
                chown(p, Some(uid), Some(gid))?;
            }
            Ok(())
        };
        std::fs::create_dir_all(&self.secrets)?;
        std::fs::set_permissions(&self.secrets, std::fs::Permissions::from_mode(0o700))?;
        own(&self.secrets)?;
        for f in files {
            // Names are validated variable names; anything else would escape the directory.
            if f.name.is_empty()
                || !f
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid secret file name {:?}", f.name),
                ));
            }
            // A dot name: the entrypoint skips it if a sandbox starts while it exists.
            let tmp = self.secrets.join(format!(".{}.tmp", f.name));
            let _ = std::fs::remove_file(&tmp);
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            out.write_all(f.value.expose_secret().as_bytes())?;
            drop(out);
            own(&tmp)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o400))?;
            std::fs::rename(&tmp, self.secrets.join(&f.name))?;
        }
        for entry in std::fs::read_dir(&self.secrets)? {
            let entry = entry?;
            let keep = entry
                .file_name()
                .to_str()
                .is_some_and(|n| files.iter().any(|f| f.name == n));
            if !keep {
                let p = entry.path();
                if entry.file_type()?.is_dir() {
                    std::fs::remove_dir_all(&p)?;
                } else {
                    std::fs::remove_file(&p)?;
                }
            }
        }
        Ok(())
    }

    /// Removes the secrets directory (archive, delete).
    pub fn remove_secrets(&self) -> io::Result<()> {
        remove_dir_if_exists(&self.secrets)
    }

    /// Removes everything the session has on the host (delete).
    pub fn remove_all(&self) -> io::Result<()> {
        remove_dir_if_exists(&self.secrets)?;
        remove_dir_if_exists(&self.root)
    }
}

fn copy_missing(from: &Path, to: &Path, own: &dyn Fn(&Path) -> io::Result<()>) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if !target.exists() {
                std::fs::create_dir(&target)?;
                own(&target)?;
            }
            copy_missing(&entry.path(), &target, own)?;
        } else if kind.is_file() && !target.exists() {
            std::fs::copy(entry.path(), &target)?;
            own(&target)?;
        }
    }
    Ok(())
}

fn remove_dir_if_exists(p: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn write_if_changed(path: &Path, content: &str) -> io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|c| c == content) {
        return Ok(());
    }
    std::fs::write(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

/// `/etc/passwd` for a sandbox: `user` (the seed images' account) at the sandbox uid:gid.
pub fn passwd(uid: u32, gid: u32) -> String {
    format!(
        "root:x:0:0:root:/root:/bin/sh\n\
         user:x:{uid}:{gid}:user:/home/user:/bin/bash\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
}

/// `/etc/group` for a sandbox.
pub fn group(gid: u32) -> String {
    format!("root:x:0:\nuser:x:{gid}:\nnogroup:x:65534:\n")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn paths_follow_the_sandbox_contract() {
        let l = SessionLayout::new(Path::new("/state"), "abc");
        assert_eq!(l.workspace, Path::new("/state/sessions/abc/workspace"));
        assert_eq!(l.agent, Path::new("/state/sessions/abc/agent"));
        assert_eq!(l.secrets, Path::new("/state/pi-secrets-abc"));
    }

    #[test]
    fn generated_passwd_maps_user_to_the_sandbox_ids() {
        assert!(passwd(1234, 5678).contains("\nuser:x:1234:5678:user:/home/user:/bin/bash\n"));
        assert!(group(5678).contains("\nuser:x:5678:\n"));
    }

    #[test]
    fn the_agent_template_fills_in_missing_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("template");
        std::fs::create_dir_all(template.join("sub")).unwrap();
        std::fs::write(template.join("models.json"), "{}").unwrap();
        std::fs::write(template.join("sub/x"), "x").unwrap();
        std::fs::write(template.join("settings.json"), "new").unwrap();
        let l = SessionLayout::new(&dir.path().join("state"), "s1");
        l.prepare(1000, 1000, false).unwrap();
        std::fs::write(l.agent.join("settings.json"), "pi's own").unwrap();
        l.seed_agent_dir(&template, 1000, 1000, false).unwrap();
        assert_eq!(
            std::fs::read_to_string(l.agent.join("models.json")).unwrap(),
            "{}"
        );
        assert_eq!(std::fs::read_to_string(l.agent.join("sub/x")).unwrap(), "x");
        assert_eq!(
            std::fs::read_to_string(l.agent.join("settings.json")).unwrap(),
            "pi's own"
        );
    }

    #[test]
    fn secrets_are_private_files_named_by_variable_and_stale_ones_go() {
        use secrecy::SecretString;
        let dir = tempfile::tempdir().unwrap();
        let l = SessionLayout::new(dir.path(), "s1");
        let file = |n: &str, v: &str| SecretFile {
            name: n.into(),
            value: SecretString::from(v),
        };
        l.write_secrets(
            &[file("openai_api_key", "sk-1\n"), file("old_key", "x")],
            1000,
            1000,
            false,
        )
        .unwrap();
        std::fs::write(l.secrets.join(".stray.tmp"), "partial").unwrap();
        l.write_secrets(&[file("openai_api_key", "sk-2")], 1000, 1000, false)
            .unwrap();
        let names: Vec<String> = std::fs::read_dir(&l.secrets)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["openai_api_key"]);
        let path = l.secrets.join("openai_api_key");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "sk-2");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o400);
        assert_eq!(std::fs::metadata(&l.secrets).unwrap().mode() & 0o777, 0o700);
        let bad = l.write_secrets(&[file("../escape", "x")], 1000, 1000, false);
        assert!(bad.is_err());
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn prepare_creates_private_dirs_and_keeps_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let l = SessionLayout::new(dir.path(), "s1");
        l.prepare(1000, 1000, false).unwrap();
        std::fs::write(l.workspace.join("keep.txt"), "x").unwrap();
        l.prepare(1000, 1000, false).unwrap();
        assert!(l.workspace.join("keep.txt").exists());
        assert_eq!(std::fs::metadata(&l.secrets).unwrap().mode() & 0o777, 0o700);
        assert!(l.generated.join("fixuid.ran").exists());
        l.remove_all().unwrap();
        assert!(!l.root.exists() && !l.secrets.exists());
        l.remove_all().unwrap();
    }
}
