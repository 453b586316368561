//! Reading what clients send: resource ids in paths and JSON bodies, with the protocol's errors.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Ids of sessions, secrets and environments are UUIDs: anything else cannot exist, and gets
/// the resource's own not-found error without a lookup.
pub(crate) fn uuid_id(id: &str, not_found: impl FnOnce() -> ApiError) -> Result<(), ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| not_found())
}

/// A body that must be a JSON object.
pub(crate) fn json_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::invalid_json()),
    }
}
