//! Request handlers, one module per resource, and the small parsing helpers they share.
//!
//! - [`images`]: entries (`/v1/images/...`): tarball PUT/GET, manifest GET/PUT, DELETE.
//! - [`blobs`]: `/v1/blobs/...`: missing check, upload, download with ranges.
//! - [`lookup`]: `POST /v1/lookup`.
//! - [`stats`]: `/v1/stats`, `/v1/entries`, `/v1/tags`, `/healthz`.
//! - [`query`]: the typed query strings of all of them (axum's `Query` with serde structs).
//! - [`insights`]: operator JSON: builds, history, largest, entry detail, disk use.

pub mod blobs;
pub mod images;
pub mod insights;
pub mod lookup;
pub mod query;
pub mod stats;

use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::{HeaderMap, StatusCode, header};
use layercache_shared::archive::format::json_value_count;
use layercache_shared::{CacheKey, Digest, Namespace};
use serde::de::DeserializeOwned;

use crate::error::ServerError;

/// The entry name in a `/v1/images/{ns}/{key}` path, validated.
pub fn entry_name(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(Namespace, CacheKey), ServerError> {
    let Path((ns, key)) = path.map_err(|e| ServerError::bad_request(e.body_text()))?;
    Ok((ns.parse()?, key.parse()?))
}

/// Largest JSON request body (commit, lookup, missing blobs, build report): a commit of a
/// 12 000-image chain is 2 MiB. Set on the router as axum's `DefaultBodyLimit`, so the body is
/// refused while it is read, not after.
pub const MAX_JSON_BODY: usize = 4 << 20;

/// Values (array elements, object members) in one JSON request body: parsed requests hold a heap
/// object per value, so this bounds their memory whatever the body's shape.
pub const MAX_JSON_VALUES: usize = 200_000;

/// A JSON request body read within [`MAX_JSON_BODY`] and [`MAX_JSON_VALUES`], with the parse
/// error said in the error body. Returns the value and the body's size.
pub fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<(T, u64), ServerError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServerError::JsonTooLarge {
                what: format!("the {what} body is larger than {MAX_JSON_BODY} bytes"),
            }
        } else {
            ServerError::bad_request(format!("reading the {what} body failed: {}", e.body_text()))
        }
    })?;
    let bad_json = |e: serde_json::Error| {
        ServerError::bad_request(format!("the {what} body is not valid JSON: {e}"))
    };
    let values = json_value_count(&body).map_err(bad_json)?;
    if values > MAX_JSON_VALUES {
        return Err(ServerError::JsonTooLarge {
            what: format!(
                "the {what} body holds {values} JSON values, more than {MAX_JSON_VALUES}"
            ),
        });
    }
    let value = serde_json::from_slice(&body).map_err(bad_json)?;
    Ok((value, body.len() as u64))
}

/// Comma-separated digests, empty items skipped.
pub fn digest_list(text: &str, what: &str) -> Result<Vec<Digest>, ServerError> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().map_err(|source| ServerError::InvalidDigest {
                what: what.to_string(),
                source,
            })
        })
        .collect()
}

/// Refuses a body announced larger than the upload limit before reading any of it.
pub fn check_content_length(headers: &HeaderMap, limit: u64) -> Result<(), ServerError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(n) if n > limit => Err(ServerError::TooLarge { limit }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_lists_skip_blanks_and_refuse_garbage() {
        let d = Digest::of(b"x");
        assert_eq!(
            digest_list(&format!(" {d},,{d} "), "t").unwrap(),
            vec![d, d]
        );
        assert!(digest_list("", "t").unwrap().is_empty());
        assert!(digest_list("sha256:zz", "t").is_err());
    }
}
