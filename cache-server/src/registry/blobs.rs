//! `/v2/<name>/blobs/...`: blob GET/HEAD (with `Range`) and DELETE, and uploads: monolithic
//! `POST ?digest=`, sessions (`POST`, `PATCH`, `PUT ?digest=`, status `GET`, cancel `DELETE`) and
//! cross-repository mounts.
//!
//! Blobs are stored once, in the same store as the v1 API's; a repository reads only the blobs
//! uploaded or mounted into it (`repo_blobs`), and a mount needs read access to the repository
//! mounted from.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use layercache_shared::Digest;
use tokio::sync::OwnedMutexGuard;

use super::error::OciCode;
use super::path::RepoName;
use super::uploads::Session;
use super::{Query, digest_header, location};
use crate::auth::Access;
use crate::error::ServerError;
use crate::handlers::blobs::{BlobAnswer, blob_response};
use crate::handlers::check_content_length;
use crate::ingest::{self, BlobUpload};
use crate::routes::AppState;
use crate::tarball::{Segment, stream_segments};

/// `GET`/`HEAD /v2/<name>/blobs/<digest>`.
pub async fn get(
    state: &AppState,
    repo: &RepoName,
    digest: Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, ServerError> {
    let name = repo.as_str().to_string();
    let linked = state
        .store
        .blocking(move |s| Ok(s.db.repo_blob_size(&name, &digest)?))
        .await?;
    let unknown =
        || OciCode::BlobUnknown.err(format!("blob {digest} is not in repository `{repo}`"));
    if linked.is_none() {
        return Err(unknown());
    }
    let BlobAnswer {
        mut resp,
        range,
        pin,
        size,
    } = blob_response(state, digest, headers)
        .await
        .map_err(|e| match e {
            ServerError::NotFound { .. } => unknown(),
            other => other,
        })?;
    resp.headers_mut()
        .insert("docker-content-digest", digest_header(&digest));
    if !head && let Some((start, end)) = range {
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

/// `DELETE /v2/<name>/blobs/<digest>`: the repository no longer holds the blob; its content goes
/// when nothing else uses it.
pub async fn delete(
    state: &AppState,
    repo: &RepoName,
    digest: Digest,
) -> Result<Response, ServerError> {
    let name = repo.as_str().to_string();
    let removed = state
        .store
        .blocking(move |s| Ok(s.db.unlink_blob(&name, &digest)?))
        .await?;
    if !removed {
        return Err(
            OciCode::BlobUnknown.err(format!("blob {digest} is not in repository `{repo}`"))
        );
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `POST /v2/<name>/blobs/uploads/`: a mount (`?mount=&from=`), a monolithic upload
/// (`?digest=`), or a new session.
pub async fn start(
    state: &AppState,
    access: &Access,
    repo: &RepoName,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    if let Some(mount) = &query.mount {
        let digest = parse_digest(mount, "mount")?;
        let from = query
            .from
            .as_deref()
            .map(str::parse::<RepoName>)
            .transpose()?;
        if mount_blob(state, access, repo, digest, from).await? {
            return Ok(created(repo, &digest));
        }
        // Not mountable (absent, or unreadable to the caller): the spec falls back to a session.
    } else if let Some(d) = &query.digest {
        let digest = parse_digest(d, "digest")?;
        let limit = state.settings.max_upload_bytes;
        check_content_length(headers, limit)?;
        let up = ingest::upload_blob(state.store.clone(), Some(digest), body, limit).await?;
        link(state, repo, up.digest).await?;
        return Ok(created(repo, &digest));
    }
    let writer = state
        .store
        .blobs
        .begin_write()
        .map_err(|e| ServerError::io("creating temp file in", &state.store.tmp_dir, e))?;
    let id = state.uploads.open(repo.clone(), writer);
    Ok(session_answer(StatusCode::ACCEPTED, repo, &id, 0))
}

/// Links `digest` into `repo` from a repository the caller reads: `from` when given, else any
/// (the spec's automatic content discovery). False when there is nothing to mount.
async fn mount_blob(
    state: &AppState,
    access: &Access,
    repo: &RepoName,
    digest: Digest,
    from: Option<RepoName>,
) -> Result<bool, ServerError> {
    let readable = |r: &str| access.allows(crate::auth::Role::Read, r);
    if let Some(from) = &from
        && !readable(from.as_str())
    {
        return Ok(false);
    }
    let name = repo.as_str().to_string();
    let candidates = from.map(|f| vec![f.as_str().to_string()]);
    let access = access.clone();
    state
        .store
        .blocking(move |s| {
            let repos = match candidates {
                Some(c) => c,
                None => s.db.blob_repos(&digest)?,
            };
            for r in repos {
                if access.allows(crate::auth::Role::Read, &r)
                    && s.db.repo_blob_size(&r, &digest)?.is_some()
                {
                    return Ok(s.db.link_blob(&name, &digest)?);
                }
            }
            Ok(false)
        })
        .await
}

/// Links a stored blob into `repo`.
async fn link(state: &AppState, repo: &RepoName, digest: Digest) -> Result<(), ServerError> {
    let name = repo.as_str().to_string();
    let linked = state
        .store
        .blocking(move |s| Ok(s.db.link_blob(&name, &digest)?))
        .await?;
    if linked {
        Ok(())
    } else {
        // Collected between its upload and the link: rare, and the client's retry stores it again.
        Err(OciCode::BlobUploadInvalid.err(format!(
            "blob {digest} was collected before it could be linked: upload it again"
        )))
    }
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`: appends a chunk.
pub async fn patch(
    state: &AppState,
    repo: &RepoName,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    let mut s = lock_session(state, repo, id).await?;
    append_chunk(state, &mut s, headers, body).await?;
    let offset = s.offset();
    Ok(session_answer(StatusCode::ACCEPTED, repo, id, offset))
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=`: appends the last chunk (if any), verifies the
/// digest and stores the blob. The session ends either way.
pub async fn finish(
    state: &AppState,
    repo: &RepoName,
    id: &str,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    let digest = parse_digest(
        query.digest.as_deref().ok_or_else(|| {
            OciCode::DigestInvalid.err("completing an upload needs `?digest=sha256:...`")
        })?,
        "digest",
    )?;
    let mut s = lock_session(state, repo, id).await?;
    let appended = append_chunk(state, &mut s, headers, body).await;
    state.uploads.close(id);
    appended?;
    let writer = s.writer.take().ok_or_else(|| {
        OciCode::BlobUploadInvalid.err("an earlier chunk of this upload failed: start it again")
    })?;
    let received = writer.written();
    let name = repo.as_str().to_string();
    let up: BlobUpload = state
        .store
        .blocking(move |s| {
            let pin = s.pins.pin([digest])?;
            let result = ingest::finish_blob(s, writer, Some(digest), Some(pin));
            ingest::count_upload(s, &result, received)?;
            let up = result?;
            s.db.link_blob(&name, &up.digest)?;
            Ok(up)
        })
        .await?;
    Ok(created(repo, &up.digest))
}

/// `GET /v2/<name>/blobs/uploads/<id>`: where the upload stands.
pub async fn status(state: &AppState, repo: &RepoName, id: &str) -> Result<Response, ServerError> {
    let mut s = lock_session(state, repo, id).await?;
    s.last_active = std::time::Instant::now();
    Ok(session_answer(StatusCode::NO_CONTENT, repo, id, s.offset()))
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`: cancels the upload.
pub async fn cancel(state: &AppState, repo: &RepoName, id: &str) -> Result<Response, ServerError> {
    drop(lock_session(state, repo, id).await?);
    state.uploads.close(id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The open session `id` of `repo`, locked for this request (a concurrent request on the same
/// session waits).
async fn lock_session(
    state: &AppState,
    repo: &RepoName,
    id: &str,
) -> Result<OwnedMutexGuard<Session>, ServerError> {
    let unknown = || {
        OciCode::BlobUploadUnknown.err(format!(
            "upload `{id}` is not open in repository `{repo}` (finished, cancelled, or idle too \
             long): start a new one"
        ))
    };
    let session = state.uploads.get(id).ok_or_else(unknown)?;
    let s = session.lock_owned().await;
    if s.repo != *repo {
        return Err(unknown());
    }
    Ok(s)
}

/// Appends a request body to the session, checking `Content-Range` (when sent) against where
/// the upload stands: a chunk that does not continue it is refused with 416.
async fn append_chunk(
    state: &AppState,
    s: &mut Session,
    headers: &HeaderMap,
    body: Body,
) -> Result<(), ServerError> {
    s.last_active = std::time::Instant::now();
    let offset = s.offset();
    if let Some(range) = headers.get(header::CONTENT_RANGE) {
        let (start, end) = parse_content_range(range.to_str().unwrap_or(""))?;
        if start != offset {
            return Err(OciCode::RangeInvalid.err(format!(
                "the chunk starts at byte {start} but the upload has {offset} bytes: send the \
                 chunk that starts at {offset} (GET the upload for its state)"
            )));
        }
        let announced = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n != end - start + 1) {
            return Err(OciCode::RangeInvalid.err(format!(
                "Content-Range {start}-{end} does not match the Content-Length of the chunk"
            )));
        }
    }
    let limit = state.settings.max_upload_bytes;
    let room = limit.saturating_sub(offset);
    check_content_length(headers, room).map_err(|_| ServerError::TooLarge { limit })?;
    let writer = s.writer.take().ok_or_else(|| {
        OciCode::BlobUploadInvalid.err("an earlier chunk of this upload failed: start it again")
    })?;
    // Read on the runtime, written in short blocking steps (see `crate::receive`).
    let got = crate::receive::receive(&state.store, body, Some(writer), room).await;
    // A chunk broken off midway leaves what arrived: the client asks where the upload stands
    // and resumes from there.
    s.writer = got.writer;
    s.last_active = std::time::Instant::now();
    got.result.map_err(|e| match e {
        ServerError::TooLarge { .. } => ServerError::TooLarge { limit },
        other => other,
    })
}

/// `Content-Range: <start>-<end>` of a chunk (inclusive; `bytes ` accepted in front).
fn parse_content_range(text: &str) -> Result<(u64, u64), ServerError> {
    let bad = || {
        OciCode::RangeInvalid.err(format!(
            "Content-Range `{text}` is not `<start>-<end>` with start <= end"
        ))
    };
    let spec = text.trim().trim_start_matches("bytes ").trim();
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end: u64 = b.trim().parse().map_err(|_| bad())?;
    if start > end {
        return Err(bad());
    }
    Ok((start, end))
}

fn parse_digest(text: &str, what: &str) -> Result<Digest, ServerError> {
    text.parse()
        .map_err(|e| OciCode::DigestInvalid.err(format!("`?{what}={text}`: {e}")))
}

/// 201 for a stored blob.
fn created(repo: &RepoName, digest: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        location(&format!("/v2/{repo}/blobs/{digest}")),
    );
    h.insert("docker-content-digest", digest_header(digest));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    resp
}

/// A session's state: where to send the next chunk, and the bytes it holds (`Range: 0-<last>`).
fn session_answer(status: StatusCode, repo: &RepoName, id: &str, offset: u64) -> Response {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        location(&format!("/v2/{repo}/blobs/uploads/{id}")),
    );
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("docker-upload-uuid", v);
    }
    let last = offset.saturating_sub(1);
    if let Ok(v) = HeaderValue::from_str(&format!("0-{last}")) {
        h.insert(header::RANGE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_are_inclusive_and_ordered() {
        assert_eq!(parse_content_range("0-9").unwrap(), (0, 9));
        assert_eq!(parse_content_range("bytes 10-19").unwrap(), (10, 19));
        for bad in ["", "5", "9-3", "a-b", "-1"] {
            assert_eq!(
                parse_content_range(bad).unwrap_err().oci_code(),
                OciCode::RangeInvalid,
                "{bad}"
            );
        }
    }
}
