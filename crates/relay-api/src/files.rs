//! `/api/sessions/:id/files`: a client uploads a file (`multipart/form-data`, field `file`),
//! lists a session's files, and downloads one (`…/files/:fileId/content`, raw).

use axum::Router;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use relay_session::files::{FileRow, HARD_MAX_BYTES, Upload};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::sessions::valid_id;
use crate::{AppState, envelope};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/sessions/{id}/files", get(list).post(upload))
        .route("/api/sessions/{id}/files/{file_id}/content", get(content))
        // The largest file any setting allows, and the form around it.
        .layer(DefaultBodyLimit::max(HARD_MAX_BYTES as usize + 64 * 1024))
}

fn view(f: FileRow) -> Value {
    json!({
        "id": f.id,
        "sessionId": f.session_id,
        "name": f.name,
        "mimeType": f.mime_type,
        "size": f.size,
        "uploadedAt": f.uploaded_at,
        "sandboxPath": f.sandbox_path,
        "writeDeferred": f.sandbox_path.is_none() && !f.mime_type.starts_with("image/"),
    })
}

async fn upload(
    State(state): State<AppState>,
    Path(id): Path<String>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    valid_id(&id)?;
    let mut multipart = multipart.map_err(|_| {
        ApiError::bad_request("expected a multipart/form-data body with a file field")
    })?;
    let mut found = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("unreadable form: {e}")))?
    {
        if field.name() != Some("file") {
            continue;
        }
        let name = field.file_name().map(str::to_owned);
        let mime_type = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_owned();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| ApiError::bad_request(format!("unreadable file: {e}")))?;
        found = Some(Upload {
            name,
            mime_type,
            bytes,
        });
        break;
    }
    let Some(upload) = found else {
        return Err(ApiError::bad_request("file is required"));
    };
    let file = state.sessions.upload_file(&id, upload).await?;
    Ok(envelope::ok(view(file)))
}

async fn list(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    valid_id(&id)?;
    let files: Vec<Value> = state
        .sessions
        .files(&id)
        .await?
        .into_iter()
        .map(view)
        .collect();
    Ok(envelope::ok(json!({"files": files})))
}

async fn content(
    State(state): State<AppState>,
    Path((id, file_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    valid_id(&id)?;
    let found = if uuid::Uuid::parse_str(&file_id).is_ok() {
        state.sessions.file_content(&id, &file_id).await?
    } else {
        None
    };
    let Some((file, bytes)) = found else {
        return Err(ApiError::Client(
            StatusCode::NOT_FOUND,
            "File not found".into(),
        ));
    };
    let disposition = format!("inline; filename=\"{}\"", file.name);
    Ok((
        [
            (header::CONTENT_TYPE, file.mime_type),
            (header::CONTENT_DISPOSITION, disposition),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            // An uploaded SVG or HTML opened from the relay's origin runs nothing.
            (header::CONTENT_SECURITY_POLICY, "sandbox".to_owned()),
        ],
        bytes,
    )
        .into_response())
}
