//! Session files as host directories, for providers that bind-mount them into sandboxes (Docker,
//! the fake). The paths are the sandbox contract's: `<stateDir>/sessions/<id>/workspace` →
//! `/workspace`, `<stateDir>/sessions/<id>/agent` → `/data/agent`, and `<stateDir>/pi-secrets-<id>`
//! → `/run/secrets` (one file per secret, mode 0400, in a 0700 directory). When the relay runs as
//! root the directories are handed to the sandbox user, otherwise the sandbox runs as the relay's
//! own user and owns them already.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, lchown};
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use secrecy::ExposeSecret;

use bytes::Bytes;

use crate::{AgentFile, SandboxError, SecretFile, SessionStorage, StoredSession};

/// Host paths of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLayout {
    /// `<stateDir>/sessions/<id>`
    pub root: PathBuf,
    /// `…/workspace` → `/workspace`
    pub workspace: PathBuf,
    /// `…/agent` → `/data/agent`
    pub agent: PathBuf,
    /// `…/sandbox`: files a provider generates for the sandbox (world-readable)
    pub generated: PathBuf,
    /// `<stateDir>/pi-secrets-<id>` → `/run/secrets`
    pub secrets: PathBuf,
    /// `<stateDir>/egress/<id>` → `/run/egress` (read-only): the session's egress socket
    pub egress: PathBuf,
    /// `<stateDir>/uploads/<id>`: files clients uploaded (no sandbox sees it)
    pub uploads: PathBuf,
}

impl HostLayout {
    /// The layout of session `id` under `state_dir`.
    pub fn new(state_dir: &Path, id: &str) -> HostLayout {
        let root = state_dir.join("sessions").join(id);
        HostLayout {
            workspace: root.join("workspace"),
            agent: root.join("agent"),
            generated: root.join("sandbox"),
            secrets: state_dir.join(format!("pi-secrets-{id}")),
            egress: state_dir.join("egress").join(id),
            uploads: state_dir.join("uploads").join(id),
            root,
        }
    }
}

/// [`SessionStorage`] in host directories under a state directory.
#[derive(Clone, Debug)]
pub struct HostStorage {
    state_dir: PathBuf,
    /// Hand the directories to the sandbox user (the relay runs as root).
    chown: bool,
}

/// pi's export directory in its agent directory.
const EXPORTS_DIR: &str = "exports";

impl HostStorage {
    /// Storage under `state_dir` (which must be an absolute path: it is bind-mounted). With
    /// `chown_to_sandbox_user`, what it creates belongs to the sandbox user.
    pub fn new(state_dir: PathBuf, chown_to_sandbox_user: bool) -> HostStorage {
        HostStorage {
            state_dir,
            chown: chown_to_sandbox_user,
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The host paths of session `id`.
    pub fn layout(&self, id: &str) -> HostLayout {
        HostLayout::new(&self.state_dir, id)
    }

    /// Gives `p` (never what it may link to) to the sandbox's user.
    fn own(&self, p: &Path, (uid, gid): (u32, u32)) -> io::Result<()> {
        if self.chown {
            lchown(p, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// Runs file work off the async runtime, with the session named in its error.
    async fn blocking<R: Send + 'static>(
        &self,
        session: &str,
        work: impl FnOnce(HostStorage, HostLayout) -> io::Result<R> + Send + 'static,
    ) -> Result<R, SandboxError> {
        let storage = self.clone();
        let layout = self.layout(session);
        let failed = |source| SandboxError::Storage {
            session: session.to_owned(),
            source,
        };
        tokio::task::spawn_blocking(move || work(storage, layout))
            .await
            .map_err(|e| failed(io::Error::other(e)))?
            .map_err(failed)
    }

    fn prepare_blocking(&self, l: &HostLayout, user: (u32, u32)) -> io::Result<()> {
        // The sessions' parents are the relay's alone: a sandbox reaches its own directories
        // through its mounts, never through these paths (and no other host user reaches a
        // session's egress socket).
        for parent in ["sessions", "egress"] {
            let dir = self.state_dir.join(parent);
            if !dir.exists() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)?;
            }
        }
        // Searchable by the forwarder, which runs as another user than the sandbox's.
        std::fs::create_dir_all(&l.egress)?;
        std::fs::set_permissions(&l.egress, std::fs::Permissions::from_mode(0o755))?;
        for dir in [&l.root, &l.workspace, &l.agent, &l.generated] {
            std::fs::create_dir_all(dir)?;
        }
        // Only the session's own user may enter its directories.
        std::fs::set_permissions(&l.root, std::fs::Permissions::from_mode(0o750))?;
        for dir in [&l.root, &l.workspace, &l.agent] {
            self.own(dir, user)?;
        }
        // pi's `export_html` writes here and does not make the directory. Whatever the agent
        // made of the name stays as it is (nothing runs in the sandbox now; a new directory
        // is the only thing chowned).
        let exports = l.agent.join(EXPORTS_DIR);
        if let Err(e) = std::fs::symlink_metadata(&exports)
            && e.kind() == io::ErrorKind::NotFound
        {
            std::fs::create_dir(&exports)?;
            self.own(&exports, user)?;
        }
        // Generated files are bind-mounted read-only, world-readable like the files they replace.
        std::fs::set_permissions(&l.generated, std::fs::Permissions::from_mode(0o755))?;
        self.secrets_dir(l, user)
    }

    fn secrets_dir(&self, l: &HostLayout, user: (u32, u32)) -> io::Result<()> {
        std::fs::create_dir_all(&l.secrets)?;
        std::fs::set_permissions(&l.secrets, std::fs::Permissions::from_mode(0o700))?;
        self.own(&l.secrets, user)
    }

    fn write_secrets_blocking(
        &self,
        l: &HostLayout,
        user: (u32, u32),
        files: &[SecretFile],
    ) -> io::Result<()> {
        self.secrets_dir(l, user)?;
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
            let tmp = l.secrets.join(format!(".{}.tmp", f.name));
            let _ = std::fs::remove_file(&tmp);
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            out.write_all(f.value.expose_secret().as_bytes())?;
            drop(out);
            self.own(&tmp, user)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o400))?;
            std::fs::rename(&tmp, l.secrets.join(&f.name))?;
        }
        for entry in std::fs::read_dir(&l.secrets)? {
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

    fn seed_blocking(
        &self,
        l: &HostLayout,
        user: (u32, u32),
        files: &[AgentFile],
    ) -> io::Result<()> {
        for f in files {
            let relative = f
                .path
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
            if !relative || f.path.as_os_str().is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "agent file path {} leaves the agent directory",
                        f.path.display()
                    ),
                ));
            }
            // The agent directory is the sandbox's: on a re-provision it may hold symlinks
            // planted by the agent. Nothing is followed: an existing entry of any kind (a symlink
            // included) is left alone, a parent that is not a real directory skips the file, and
            // files are created exclusively (never through a symlink). No sandbox runs while
            // this happens (provisioning removes the old one first), so checks stay true.
            let target = l.agent.join(&f.path);
            if std::fs::symlink_metadata(&target).is_ok() {
                continue;
            }
            // Create and own each missing parent, top down.
            let mut dir = l.agent.clone();
            let mut parents_ok = true;
            for c in f.path.parent().into_iter().flat_map(Path::components) {
                dir.push(c);
                match std::fs::symlink_metadata(&dir) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        parents_ok = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        std::fs::create_dir(&dir)?;
                        self.own(&dir, user)?;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !parents_ok {
                tracing::warn!(
                    file = %f.path.display(),
                    "an agent template file is not copied: a parent in the agent directory is not a directory"
                );
                continue;
            }
            // O_EXCL: fails on any existing entry, and never follows a symlink.
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&target)?;
            out.write_all(&f.content)?;
            if self.chown {
                std::os::unix::fs::fchown(&out, Some(user.0), Some(user.1))?;
            }
        }
        Ok(())
    }

    fn sessions_blocking(&self) -> io::Result<Vec<StoredSession>> {
        let ids = |dir: &Path, prefix: &str| -> io::Result<Vec<String>> {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let mut out = Vec::new();
            for entry in entries {
                if let Some(id) = entry?
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(prefix))
                    // Only names the relay creates: session ids are UUIDs.
                    .filter(|id| is_uuid(id))
                {
                    out.push(id.to_owned());
                }
            }
            Ok(out)
        };
        let mut files = ids(&self.state_dir.join("sessions"), "")?;
        files.extend(ids(&self.state_dir.join("egress"), "")?);
        files.extend(ids(&self.state_dir.join("uploads"), "")?);
        files.sort();
        files.dedup();
        let secrets = ids(&self.state_dir, "pi-secrets-")?;
        let mut all: Vec<String> = files.iter().chain(&secrets).cloned().collect();
        all.sort();
        all.dedup();
        Ok(all
            .into_iter()
            .map(|id| StoredSession {
                files: files.contains(&id),
                secrets: secrets.contains(&id),
                session_id: id,
            })
            .collect())
    }
}

/// `8-4-4-4-12` hexadecimal digits.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Checks that `name` names a file at the top of a directory.
fn top_level_name(session: &str, name: &str) -> Result<String, SandboxError> {
    match agent_path(session, name)?.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(not_a_name(session, name)),
    }
}

/// `name`'s components (`exports/session-1.html`), each a plain file name.
fn agent_path(session: &str, name: &str) -> Result<Vec<String>, SandboxError> {
    let parts: Vec<String> = name.split('/').map(str::to_owned).collect();
    if parts.iter().all(|p| crate::beneath::is_component(p)) {
        Ok(parts)
    } else {
        Err(not_a_name(session, name))
    }
}

fn not_a_name(session: &str, name: &str) -> SandboxError {
    SandboxError::Storage {
        session: session.to_owned(),
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a file name"),
        ),
    }
}

fn remove_dir_if_exists(p: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[async_trait]
impl SessionStorage for HostStorage {
    async fn prepare(&self, session: &str, user: (u32, u32)) -> Result<(), SandboxError> {
        self.blocking(session, move |s, l| s.prepare_blocking(&l, user))
            .await
    }

    async fn seed_agent_files(
        &self,
        session: &str,
        user: (u32, u32),
        files: Vec<AgentFile>,
    ) -> Result<(), SandboxError> {
        self.blocking(session, move |s, l| s.seed_blocking(&l, user, &files))
            .await
    }

    async fn read_agent_file(
        &self,
        session: &str,
        name: &str,
        max: u64,
    ) -> Result<Option<Bytes>, SandboxError> {
        let path = agent_path(session, name)?;
        self.blocking(session, move |_, l| {
            let parts: Vec<&str> = path.iter().map(String::as_str).collect();
            Ok(crate::beneath::read_file(&l.agent, &parts, max)?.map(Bytes::from))
        })
        .await
    }

    async fn conversation_files(
        &self,
        session: &str,
        max: u64,
    ) -> Result<Vec<Bytes>, SandboxError> {
        self.blocking(session, move |_, l| {
            let mut found = crate::beneath::files_two_down(&l.agent, "sessions", ".jsonl")?;
            found.sort_by_key(|(_, _, modified)| *modified);
            let mut out = Vec::new();
            let mut left = max;
            for (dir, name, _) in found {
                match crate::beneath::read_file(&l.agent, &["sessions", &dir, &name], left) {
                    Ok(Some(b)) => {
                        left -= b.len() as u64;
                        out.push(Bytes::from(b));
                    }
                    Ok(None) => {}
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        tracing::warn!(file = %name, "pi's conversation files exceed {max} bytes; the rest is left out");
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn replace_agent_file(
        &self,
        session: &str,
        user: (u32, u32),
        name: &str,
        content: Bytes,
    ) -> Result<(), SandboxError> {
        let name = top_level_name(session, name)?;
        self.blocking(session, move |s, l| {
            let tmp = l.agent.join(format!(".{name}.pi-relay.tmp"));
            // `remove_file` removes a link itself; O_EXCL never follows one.
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)?;
            out.write_all(&content)?;
            if s.chown {
                std::os::unix::fs::fchown(&out, Some(user.0), Some(user.1))?;
            }
            drop(out);
            // Replaces the entry itself, whatever it was (a directory makes this fail).
            std::fs::rename(&tmp, l.agent.join(&name))
        })
        .await
    }

    async fn write_secrets(
        &self,
        session: &str,
        user: (u32, u32),
        files: Vec<SecretFile>,
    ) -> Result<(), SandboxError> {
        self.blocking(session, move |s, l| {
            s.write_secrets_blocking(&l, user, &files)
        })
        .await
    }

    async fn has_secrets(&self, session: &str) -> Result<bool, SandboxError> {
        self.blocking(session, |_, l| Ok(l.secrets.exists())).await
    }

    async fn remove_secrets(&self, session: &str) -> Result<(), SandboxError> {
        self.blocking(session, |_, l| remove_dir_if_exists(&l.secrets))
            .await
    }

    async fn remove(&self, session: &str) -> Result<(), SandboxError> {
        self.blocking(session, |_, l| {
            remove_dir_if_exists(&l.secrets)?;
            remove_dir_if_exists(&l.egress)?;
            remove_dir_if_exists(&l.uploads)?;
            remove_dir_if_exists(&l.root)
        })
        .await
    }

    async fn save_upload(
        &self,
        session: &str,
        file_id: &str,
        bytes: Bytes,
    ) -> Result<(), SandboxError> {
        let name = top_level_name(session, file_id)?;
        self.blocking(session, move |s, l| {
            use std::os::unix::fs::DirBuilderExt;
            let parent = s.state_dir.join("uploads");
            for dir in [&parent, &l.uploads] {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
            std::fs::write(l.uploads.join(name), &bytes)
        })
        .await
    }

    async fn read_upload(
        &self,
        session: &str,
        file_id: &str,
    ) -> Result<Option<Bytes>, SandboxError> {
        let name = top_level_name(session, file_id)?;
        self.blocking(session, move |_, l| {
            match std::fs::read(l.uploads.join(name)) {
                Ok(b) => Ok(Some(Bytes::from(b))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn add_workspace_file(
        &self,
        session: &str,
        user: (u32, u32),
        dir: &str,
        name: &str,
        bytes: Bytes,
    ) -> Result<(), SandboxError> {
        let (dir, name) = (
            top_level_name(session, dir)?,
            top_level_name(session, name)?,
        );
        self.blocking(session, move |s, l| {
            let owner = s.chown.then_some(user);
            crate::beneath::create_file(&l.workspace, &dir, &name, &bytes, owner)
        })
        .await
    }

    fn egress_socket(&self, session: &str) -> PathBuf {
        self.layout(session).egress.join(crate::EGRESS_SOCKET_NAME)
    }

    async fn sessions(&self) -> Result<Vec<StoredSession>, SandboxError> {
        self.blocking("*", |s, _| s.sessions_blocking()).await
    }
}

#[cfg(test)]
mod tests;
