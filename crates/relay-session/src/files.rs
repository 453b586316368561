//! Files clients upload to a session (`/api/sessions/:id/files`), with the pi-apps relay's
//! limits (settings `session_file_upload_max_bytes`, default 10 MiB, and
//! `session_file_upload_max_files`, default 50) and kinds (images, text and code, documents).
//! The bytes are kept where no sandbox sees them; a file that is not an image is also put in the
//! workspace (`/workspace/.pi-uploads/<id>-<name>`) for the agent to read (images travel inline
//! in prompts).

use bytes::Bytes;
use relay_model::SessionStatus;
pub use relay_store::FileRow;

use crate::{SessionError, SessionService};

/// Default of `session_file_upload_max_bytes`.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default of `session_file_upload_max_files`.
pub const DEFAULT_MAX_FILES: u64 = 50;
/// Largest upload whatever the setting says (the route's body limit).
pub const HARD_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// The workspace directory uploads are put in.
pub const WORKSPACE_DIR: &str = ".pi-uploads";

/// A file as a client sent it.
#[derive(Clone, Debug)]
pub struct Upload {
    /// Its name as sent.
    pub name: Option<String>,
    /// Its media type as sent.
    pub mime_type: String,
    /// Its bytes.
    pub bytes: Bytes,
}

/// Whether files of `mime` may be uploaded: images, text and code, JSON/YAML/XML, PDF.
pub fn allowed_mime(mime: &str) -> bool {
    let m = mime
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    m.starts_with("text/")
        || matches!(
            m.as_str(),
            "image/png"
                | "image/jpeg"
                | "image/webp"
                | "image/gif"
                | "image/svg+xml"
                | "application/json"
                | "application/yaml"
                | "application/x-yaml"
                | "application/xml"
                | "application/pdf"
        )
}

/// A file name safe anywhere: the last component, runs of other characters than letters,
/// digits, `.`, `_` and `-` made `-`, at most 128 characters; `upload-<millis>` when nothing is
/// left (or only dots).
pub fn sanitize_name(raw: Option<&str>, millis: u128) -> String {
    let base = raw
        .unwrap_or_default()
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default();
    let mut out = String::new();
    for c in base.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out.chars().take(128).collect();
    if out.trim_matches('.').is_empty() {
        format!("upload-{millis}")
    } else {
        out
    }
}

fn invalid(m: impl Into<String>) -> SessionError {
    SessionError::Invalid(m.into())
}

impl SessionService {
    /// `(max bytes, max files)` from the settings, or their defaults.
    async fn upload_limits(&self) -> Result<(u64, u64), SessionError> {
        let get = |v: Option<String>, default: u64| {
            v.and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()))
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        let store = &self.inner.store;
        let bytes = get(
            store.setting("session_file_upload_max_bytes").await?,
            DEFAULT_MAX_BYTES,
        );
        let files = get(
            store.setting("session_file_upload_max_files").await?,
            DEFAULT_MAX_FILES,
        );
        Ok((bytes.min(HARD_MAX_BYTES), files))
    }

    /// Stores `upload` for session `id`.
    pub async fn upload_file(&self, id: &str, upload: Upload) -> Result<FileRow, SessionError> {
        let inner = &self.inner;
        let row = inner.row(id).await?;
        if row.status == SessionStatus::Archived {
            return Err(SessionError::NotFound);
        }
        let (max_bytes, max_files) = self.upload_limits().await?;
        if upload.bytes.is_empty() {
            return Err(invalid("file is empty"));
        }
        if upload.bytes.len() as u64 > max_bytes {
            return Err(invalid(format!("file too large (max {max_bytes} bytes)")));
        }
        if !allowed_mime(&upload.mime_type) {
            return Err(invalid(
                "unsupported file type. allowed categories: images, text/code, docs",
            ));
        }
        // Checked again when the file is recorded; refused early so nothing is written.
        if inner.store.files(id).await?.len() as u64 >= max_files {
            return Err(invalid("session file quota reached"));
        }
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let name = sanitize_name(upload.name.as_deref(), millis);
        let file_id = uuid::Uuid::new_v4().to_string();
        let storage = inner.sandbox.storage();
        storage
            .save_upload(id, &file_id, upload.bytes.clone())
            .await?;
        let sandbox_path = if upload.mime_type.starts_with("image/") {
            None
        } else {
            let in_workspace = format!("{file_id}-{name}");
            match storage
                .add_workspace_file(
                    id,
                    inner.cfg.sandbox_user,
                    WORKSPACE_DIR,
                    &in_workspace,
                    upload.bytes.clone(),
                )
                .await
            {
                Ok(()) => Some(format!(
                    "{}/{WORKSPACE_DIR}/{in_workspace}",
                    relay_sandbox::WORKSPACE_PATH
                )),
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "cannot put an upload in the workspace");
                    None
                }
            }
        };
        let file = FileRow {
            id: file_id,
            session_id: id.to_owned(),
            name,
            mime_type: upload.mime_type,
            size: upload.bytes.len() as u64,
            uploaded_at: relay_hub::timestamp(),
            sandbox_path,
        };
        if !inner.store.add_file(file.clone(), max_files).await? {
            return Err(invalid("session file quota reached"));
        }
        Ok(file)
    }

    /// Session `id`'s uploaded files, oldest first.
    pub async fn files(&self, id: &str) -> Result<Vec<FileRow>, SessionError> {
        self.inner.row(id).await?;
        Ok(self.inner.store.files(id).await?)
    }

    /// One uploaded file with its bytes.
    pub async fn file_content(
        &self,
        id: &str,
        file_id: &str,
    ) -> Result<Option<(FileRow, Bytes)>, SessionError> {
        self.inner.row(id).await?;
        let Some(file) = self.inner.store.file(id, file_id).await? else {
            return Ok(None);
        };
        let bytes = self
            .inner
            .sandbox
            .storage()
            .read_upload(id, file_id)
            .await?;
        Ok(bytes.map(|b| (file, b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe_and_kinds_checked() {
        assert_eq!(
            sanitize_name(Some("../../etc/pass wd.txt"), 1),
            "pass-wd.txt"
        );
        assert_eq!(sanitize_name(Some("C:\\x\\ré sumé.md"), 1), "r-sum-.md");
        assert_eq!(sanitize_name(Some(".."), 7), "upload-7");
        assert_eq!(sanitize_name(None, 7), "upload-7");
        assert_eq!(sanitize_name(Some(&"a".repeat(300)), 1).len(), 128);
        for ok in [
            "text/plain",
            "text/x-rust",
            "image/png",
            "application/pdf",
            "application/json; charset=utf-8",
        ] {
            assert!(allowed_mime(ok), "{ok}");
        }
        for bad in [
            "application/octet-stream",
            "application/x-sh",
            "video/mp4",
            "",
        ] {
            assert!(!allowed_mime(bad), "{bad}");
        }
    }
}
