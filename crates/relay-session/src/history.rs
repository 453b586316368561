//! What pi wrote in a session's agent directory, served to clients: its conversation files
//! (`GET …/history`, the entries of its JSONL files) and its HTML export (`GET …/export`, the
//! file pi's `export_html` wrote), read without following links the agent may have planted; and
//! share links naming a session.

use bytes::Bytes;
use serde_json::Value;

use crate::{SessionError, SessionService};

/// Most bytes of conversation files read for one history.
pub const MAX_HISTORY_BYTES: u64 = 64 * 1024 * 1024;
/// Largest export served.
pub const MAX_EXPORT_BYTES: u64 = 64 * 1024 * 1024;

/// The entries of pi's JSONL files, in order: blank and malformed lines skipped.
pub fn entries(files: &[Bytes]) -> Vec<Value> {
    files
        .iter()
        .flat_map(|f| f.split(|b| *b == b'\n'))
        .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
        .filter(Value::is_object)
        .collect()
}

/// The export's name in the agent directory, where the dashboard asks pi to write it.
pub fn export_path(id: &str) -> String {
    format!("exports/session-{id}.html")
}

impl SessionService {
    /// Session `id`'s conversation as pi keeps it.
    pub async fn history(&self, id: &str) -> Result<Vec<Value>, SessionError> {
        let inner = &self.inner;
        inner.row(id).await?;
        let files = inner
            .sandbox
            .storage()
            .conversation_files(id, MAX_HISTORY_BYTES)
            .await?;
        Ok(entries(&files))
    }

    /// Session `id`'s HTML export, if pi wrote one.
    pub async fn export(&self, id: &str) -> Result<Option<Bytes>, SessionError> {
        let inner = &self.inner;
        inner.row(id).await?;
        Ok(inner
            .sandbox
            .storage()
            .read_agent_file(id, &export_path(id), MAX_EXPORT_BYTES)
            .await?)
    }
}

/// A session's share link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// The token (a random UUID).
    pub token: String,
    /// The session.
    pub session_id: String,
    /// When the link was made.
    pub created_at: String,
}

impl SessionService {
    /// Session `id`'s share link, made on first request and the same afterwards.
    pub async fn share(&self, id: &str) -> Result<Share, SessionError> {
        let token = uuid::Uuid::new_v4().to_string();
        let (token, created_at) = self
            .inner
            .store
            .share(id, &token, &relay_hub::timestamp())
            .await?
            .ok_or(SessionError::NotFound)?;
        Ok(Share {
            token,
            session_id: id.to_owned(),
            created_at,
        })
    }

    /// The session a share token names, with its name; `None` for an unknown token.
    pub async fn shared(
        &self,
        token: &str,
    ) -> Result<Option<(String, Option<String>)>, SessionError> {
        let Some(id) = self.inner.store.shared_session(token).await? else {
            return Ok(None);
        };
        let session = self.get(&id).await?;
        Ok(Some((id, session.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_skip_blank_and_malformed_lines_and_keep_order() {
        let files = [
            Bytes::from("{\"type\":\"session\",\"id\":\"a\"}\n\nnot json\n"),
            Bytes::from(
                "{\"type\":\"message\",\"id\":\"b\"}\n[1]\n{\"type\":\"message\",\"id\":\"c\"}",
            ),
        ];
        let ids: Vec<String> = entries(&files)
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }
}
