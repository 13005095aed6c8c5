//! `/v1/blobs/...`: which blobs are missing, uploads (verified by digest, or named by it),
//! downloads with `Range`.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use layercache_shared::Digest;
use layercache_shared::api::{BlobStored, MissingRequest, MissingResponse};

use super::{check_content_length, json_body};
use crate::auth::Access;
use crate::error::ServerError;
use crate::ingest;
use crate::routes::AppState;
use crate::store::pins::PinGuard;
use crate::tarball::{Segment, stream_segments};

fn blob_digest(path: Result<Path<String>, PathRejection>) -> Result<Digest, ServerError> {
    let Path(text) = path.map_err(|e| ServerError::bad_request(e.body_text()))?;
    text.parse().map_err(|source| ServerError::InvalidDigest {
        what: "blob digest in the URL".into(),
        source,
    })
}

/// `POST /v1/blobs/missing`.
///
/// Blobs the caller may not see (another tenant's) are reported missing: the client uploads them
/// (stored once all the same) and so proves it has the content before it may name it.
pub async fn missing(
    State(state): State<AppState>,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<MissingResponse>, ServerError> {
    let (req, _) = json_body::<MissingRequest>(body, "missing blobs request")?;
    let missing = state
        .store
        .blocking(move |s| {
            let have = access.visible_blobs(&s.db, &req.digests)?;
            let mut seen = std::collections::HashSet::new();
            Ok(req
                .digests
                .into_iter()
                .filter(|d| !have.contains(d) && seen.insert(*d))
                .collect())
        })
        .await?;
    Ok(Json(MissingResponse {
        missing,
        streamed_uploads: true,
    }))
}

/// `PUT /v1/blobs/{digest}`: 201 when stored, 200 when already there.
pub async fn put_blob(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ServerError> {
    let digest = blob_digest(path)?;
    let limit = state.settings.max_upload_bytes;
    check_content_length(&headers, limit)?;
    let up = ingest::upload_blob(state.store.clone(), Some(digest), body, limit).await?;
    record_uploader(&state, &access, up.digest).await?;
    Ok(created_or_ok(up.new))
}

/// Remembers that the caller uploaded `digest` in full, so it may name it in a commit.
async fn record_uploader(
    state: &AppState,
    access: &Access,
    digest: Digest,
) -> Result<(), ServerError> {
    if let Some(id) = access.token_id() {
        state
            .store
            .blocking(move |s| Ok(s.db.record_blob_upload(&digest, id)?))
            .await?;
    }
    Ok(())
}

/// `POST /v1/blobs`: stores the body under the digest it hashes to and answers with it, 201 when
/// stored, 200 when already there. For clients that upload a layer while they still read it (the
/// runner during `docker save`) and so cannot name its digest up front; they compare the answer
/// with their own hash.
pub async fn post_blob(
    State(state): State<AppState>,
    access: Access,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<BlobStored>), ServerError> {
    let limit = state.settings.max_upload_bytes;
    check_content_length(&headers, limit)?;
    let up = ingest::upload_blob(state.store.clone(), None, body, limit).await?;
    record_uploader(&state, &access, up.digest).await?;
    Ok((
        created_or_ok(up.new),
        Json(BlobStored {
            digest: up.digest,
            size: up.size,
        }),
    ))
}

fn created_or_ok(new: bool) -> StatusCode {
    if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// Why a `Range` header cannot be served.
#[derive(Debug, PartialEq, Eq)]
pub struct BadRange;

/// The inclusive byte range a `Range` header asks of a `len`-byte blob. `Ok(None)` means serve
/// the whole blob (no header, another unit, or several ranges, which the server does not split).
pub fn parse_range(header: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, BadRange> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.trim().split_once('-').ok_or(BadRange)?;
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| BadRange);
    let (start, end) = match (a.trim().is_empty(), b.trim().is_empty()) {
        (false, false) => (num(a)?, num(b)?.min(len.saturating_sub(1))),
        (false, true) => (num(a)?, len.saturating_sub(1)),
        (true, false) => {
            let n = num(b)?;
            if n == 0 {
                return Err(BadRange);
            }
            (len.saturating_sub(n), len.saturating_sub(1))
        }
        (true, true) => return Err(BadRange),
    };
    if len == 0 || start >= len || start > end {
        return Err(BadRange);
    }
    Ok(Some((start, end)))
}

/// A blob answer before its body is attached.
pub(crate) struct BlobAnswer {
    /// Status and headers.
    pub resp: Response,
    /// The inclusive byte range to send, `None` for an empty body.
    pub range: Option<(u64, u64)>,
    /// Keeps the blob from the collector until the body is sent (see [`crate::store::pins`]).
    pub pin: PinGuard,
    /// The blob's full recorded size.
    pub size: u64,
}

/// Status, headers and the byte range to send for a blob request.
pub(crate) async fn blob_response(
    state: &AppState,
    digest: Digest,
    headers: &HeaderMap,
) -> Result<BlobAnswer, ServerError> {
    let (len, pin) = state
        .store
        .blocking(move |s| {
            let pin = s.pins.pin([digest])?;
            // Only blobs with a row are served: a file without one is an upload in flight or an
            // orphan.
            let not_found = || ServerError::not_found(format!("blob {digest}"));
            let recorded = s.db.blob_size(&digest)?.ok_or_else(not_found)?;
            let on_disk = s
                .blobs
                .len(&digest)
                .map_err(|e| ServerError::io("reading blob", digest.to_string(), e))?
                .ok_or_else(not_found)?;
            if on_disk != recorded {
                return Err(ServerError::CorruptBlob {
                    digest,
                    recorded,
                    on_disk,
                });
            }
            Ok((recorded, pin))
        })
        .await?;
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let range = parse_range(range_header, len)
        .map_err(|BadRange| ServerError::RangeNotSatisfiable { len })?;
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let (start, end) = match range {
        Some((start, end)) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let v = format!("bytes {start}-{end}/{len}");
            if let Ok(v) = HeaderValue::from_str(&v) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            (start, end)
        }
        None if len == 0 => {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
            return Ok(BlobAnswer {
                resp,
                range: None,
                pin,
                size: len,
            });
        }
        None => (0, len - 1),
    };
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
    Ok(BlobAnswer {
        resp,
        range: Some((start, end)),
        pin,
        size: len,
    })
}

/// With `--redirect-blobs`, the `307 Temporary Redirect` to a presigned URL of the blob that a
/// GET answers instead of its bytes (the client sends its `Range` again to the object store);
/// `None` when the flag is off. Call after the auth and existence checks ([`blob_response`]).
pub(crate) async fn redirect(
    state: &AppState,
    digest: Digest,
) -> Result<Option<Response>, ServerError> {
    if !state.settings.redirect_blobs {
        return Ok(None);
    }
    let url = state
        .store
        .blocking(move |s| {
            s.blobs
                .presigned_get(&digest, crate::settings::REDIRECT_EXPIRY)
                .map_err(|e| ServerError::io("presigning", digest.to_string(), e))
        })
        .await?;
    let Some(url) = url else {
        return Ok(None);
    };
    let location = HeaderValue::from_str(&url)
        .map_err(|e| ServerError::Internal(format!("a presigned URL is no header value: {e}")))?;
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, location);
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    Ok(Some(resp))
}

/// `GET /v1/blobs/{digest}`, with a single `Range` honoured (or a redirect, see [`redirect`]).
pub async fn get_blob(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    let digest = blob_digest(path)?;
    // Existence (and size) first: a redirect to nothing would be a 404 from the store.
    let answer = blob_response(&state, digest, &headers).await?;
    if let Some(resp) = redirect(&state, digest).await? {
        return Ok(resp);
    }
    let BlobAnswer {
        mut resp,
        range,
        pin,
        size,
    } = answer;
    if let Some((start, end)) = range {
        *resp.body_mut() = stream_segments(
            state.store.clone(),
            vec![Segment::Blob {
                digest,
                size,
                offset: start,
                len: end - start + 1,
            }],
            pin,
        );
    }
    Ok(resp)
}

/// `HEAD /v1/blobs/{digest}`: the GET headers without the body.
pub async fn head_blob(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ServerError> {
    let digest = blob_digest(path)?;
    Ok(blob_response(&state, digest, &headers).await?.resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Ok(Some((0, 4))));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Ok(Some((5, 9))));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Ok(Some((8, 9))));
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Ok(None));
        assert_eq!(parse_range(Some("items=0-1"), 10), Ok(None));
    }

    #[test]
    fn unsatisfiable_or_garbled_ranges_are_refused() {
        for bad in [
            "bytes=10-",
            "bytes=5-2",
            "bytes=-0",
            "bytes=x-1",
            "bytes=-",
            "bytes=3",
        ] {
            assert_eq!(parse_range(Some(bad), 10), Err(BadRange), "{bad}");
        }
        assert_eq!(parse_range(Some("bytes=0-"), 0), Err(BadRange));
    }
}
