//! Making a session's sandbox: its files first (workspace, agent directory seeded from the
//! agent template, secrets), the image pinned, the sandbox created and attached before it
//! starts (so nothing pi prints is missed), then the session moves from `creating` to `active`.
//! A failure leaves no sandbox behind and the session in `error`, with the reason in its log.

use std::path::Path;
use std::sync::Arc;

use relay_model::SessionStatus;
use relay_sandbox::{AgentFile, SandboxError, SandboxId, SandboxStatus};
use relay_store::{EnvironmentRow, SessionSandbox};

use crate::SessionError;
use crate::service::Inner;
use crate::spec::EnvConfig;

/// Provisions session `id` (locked by the caller) in environment `env`; a failure is recorded on
/// the session.
pub(crate) async fn provision(inner: &Arc<Inner>, id: &str, env: &EnvironmentRow) {
    if let Err(e) = try_provision(inner, id, env).await {
        tracing::warn!(session = %id, error = %e, "provisioning failed");
        if let Ok(hub) = inner.hubs.get_or_create(id).await {
            hub.log(format!("relay: provisioning failed: {e}"));
        }
        inner.teardown(id, None).await;
        let failed = inner
            .transition(
                id,
                SessionStatus::Creating,
                SessionStatus::Error,
                Some(e.to_string()),
            )
            .await;
        match failed {
            // Deleted meanwhile: nothing to record.
            Ok(()) | Err(SessionError::Changed) => {}
            Err(e) => tracing::error!(session = %id, error = %e, "cannot mark session failed"),
        }
    }
    inner.changed();
}

async fn try_provision(
    inner: &Arc<Inner>,
    id: &str,
    env: &EnvironmentRow,
) -> Result<(), SessionError> {
    let env_cfg = EnvConfig::parse(&env.config);
    let image = env_cfg
        .image
        .clone()
        .unwrap_or_else(|| inner.cfg.default_image.clone());
    let files = async {
        let storage = inner.sandbox.storage();
        let user = inner.cfg.sandbox_user;
        storage.prepare(id, user).await?;
        if let Some(template) = inner.cfg.agent_template.clone() {
            let files = read_template(template).await?;
            storage.seed_agent_files(id, user, files).await?;
        }
        inner.prepare_egress(id, &env_cfg).await?;
        let mode = inner.row(id).await?.mode;
        inner.write_extension_settings(id, mode).await?;
        inner.deliver_secrets(id, &env_cfg).await
    };
    // Independent, and both on the way to a running sandbox the client waits for.
    let (files, image_id) = tokio::join!(files, inner.image_id(&image));
    files?;
    let image_id = image_id?;
    let egress = inner.sandbox.capabilities().egress;
    let spec = crate::spec::spec_for(&inner.cfg, id, &env_cfg, image_id, egress);
    let cid = match inner.sandbox.create(&spec).await {
        Ok(cid) => cid,
        Err(SandboxError::Conflict(_)) => {
            // Left over from an earlier attempt: the name is ours, remove it and try again.
            inner.sandbox.remove(&SandboxId(spec.name.clone())).await?;
            inner.sandbox.create(&spec).await?
        }
        Err(SandboxError::ImageNotFound(m)) => {
            inner.forget_image(&image);
            return Err(SandboxError::ImageNotFound(m).into());
        }
        Err(e) => return Err(e.into()),
    };
    let hub = inner.hubs.get_or_create(id).await?;
    // A new sandbox: its output starts from line 0 (recorded before anything is journaled: the
    // hub's first batch is queued behind it).
    let (cursor, io) = tokio::join!(
        inner.store.set_stdout_cursor(id, 0),
        inner.sandbox.attach(&cid)
    );
    cursor?;
    hub.attach(io?, 0, bytes::Bytes::new()).await;
    inner.sandbox.start(&cid).await?;
    let info = inner.sandbox.inspect(&cid).await?;
    if info.status != SandboxStatus::Running {
        return Err(SessionError::SandboxUnavailable(
            SandboxError::InvalidState(format!(
                "the sandbox is {:?} right after start (exit code {})",
                info.status,
                info.exit_code.map_or("unknown".into(), |c| c.to_string())
            )),
        ));
    }
    let sandbox = SessionSandbox {
        provider: Some(inner.sandbox.kind().into()),
        provider_id: Some(cid.0.clone()),
        image_digest: Some(info.image_id.clone()),
    };
    let recorded = inner
        .transition_with_sandbox(id, SessionStatus::Creating, SessionStatus::Active, sandbox)
        .await?;
    if !recorded {
        // Deleted while we were creating it: leave nothing behind.
        inner.teardown(id, Some(cid.as_str())).await;
    }
    Ok(())
}

/// Every file under the agent template directory, with its path relative to it.
async fn read_template(dir: std::path::PathBuf) -> Result<Vec<AgentFile>, SessionError> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        collect(&dir, Path::new(""), &mut out).map(|()| out)
    })
    .await
    .map_err(|e| SessionError::Io(std::io::Error::other(e)))?
    .map_err(SessionError::Io)
}

fn collect(root: &Path, relative: &Path, out: &mut Vec<AgentFile>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root.join(relative))? {
        let entry = entry?;
        let path = relative.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(root, &path, out)?;
        } else if kind.is_file() {
            let content = std::fs::read(root.join(&path))?;
            out.push(AgentFile {
                path,
                content: content.into(),
            });
        }
    }
    Ok(())
}

impl Inner {
    /// Gives the session's sandbox (of an environment with `env`) the secrets meant for
    /// sandboxes (and takes away those deleted or disabled since). Called before every sandbox
    /// start, with the session locked. Model
    /// keys go in only when the sandbox has no gateway to add them (the host's network, or a
    /// provider that cannot run the forwarder): there pi calls its providers itself.
    pub(crate) async fn deliver_secrets(
        &self,
        id: &str,
        env: &EnvConfig,
    ) -> Result<(), SessionError> {
        let direct = !self.egress_for(env);
        let files = self.secrets.sandbox_files(direct).await?;
        self.sandbox
            .storage()
            .write_secrets(id, self.cfg.sandbox_user, files)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_agent_template_is_read_with_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("extensions/x")).unwrap();
        std::fs::write(dir.path().join("models.json"), "{}").unwrap();
        std::fs::write(dir.path().join("extensions/x/index.js"), "js").unwrap();
        let mut files = read_template(dir.path().to_path_buf()).await.unwrap();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let paths: Vec<_> = files
            .iter()
            .map(|f| f.path.to_string_lossy().into_owned())
            .collect();
        assert_eq!(paths, ["extensions/x/index.js", "models.json"]);
        assert_eq!(&files[1].content[..], b"{}");
        assert!(read_template(dir.path().join("missing")).await.is_err());
    }
}
