//! `/v2/<name>/blobs/...`: blob GET/HEAD (with `Range`) and DELETE, and uploads: monolithic
//! `POST ?digest=`, sessions (`POST`, `PATCH`, `PUT ?digest=`, status `GET`, cancel `DELETE`) and
//! cross-repository mounts.
//!
//! Blobs are stored once, in the same store as the v1 API's; a repository reads only the blobs
//! uploaded or mounted into it (`repo_blobs`), and a mount needs read access to the repository
//! mounted from.

use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use layercache_shared::Digest;

use super::error::OciCode;
use super::path::RepoName;
use super::uploads::{self, ChunkHash, ChunkWriter, StagedChunk, UploadSession};
use super::{Query, digest_header, location};
use crate::auth::Access;
use crate::error::ServerError;
use crate::handlers::blobs::{BlobAnswer, blob_response, redirect};
use crate::handlers::check_content_length;
use crate::ingest::{self, BlobUpload};
use crate::routes::AppState;
use crate::store::Store;
use crate::store::blobs::BlobWriter;
use crate::store::sqlite::now;
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
    if !head && let Some(mut redirect) = redirect(state, digest).await? {
        redirect
            .headers_mut()
            .insert("docker-content-digest", digest_header(&digest));
        return Ok(redirect);
    }
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
    let id = uuid::Uuid::new_v4().to_string();
    let (sid, name) = (id.clone(), repo.as_str().to_string());
    let hash = ChunkHash::default().save();
    state
        .store
        .blocking(move |s| Ok(s.db.open_upload(&sid, &name, &hash, now())?))
        .await?;
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
    let (sid, name) = (id.to_string(), repo.as_str().to_string());
    let session = state
        .store
        .blocking(move |s| Ok(s.db.upload_session(&sid)?))
        .await?
        .filter(|s| s.repo == name && !s.closing)
        .ok_or_else(|| unknown_upload(repo, id))?;
    let offset = append_chunk(state, repo, &session, headers, body).await?;
    Ok(session_answer(StatusCode::ACCEPTED, repo, id, offset))
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=`: appends the last chunk (if any), verifies the
/// digest and stores the blob. The session ends either way: it is claimed first (a concurrent
/// `PUT` or `DELETE` finds it gone), and its staging objects and row go at the end.
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
    let session = claim(state, repo, id).await?;
    let result = finish_claimed(state, repo, &session, digest, headers, body).await;
    end_session(state, id).await;
    let up = result?;
    Ok(created(repo, &up.digest))
}

/// Stores the blob of claimed `session` plus `body`, as `digest`.
async fn finish_claimed(
    state: &AppState,
    repo: &RepoName,
    session: &UploadSession,
    digest: Digest,
    headers: &HeaderMap,
    body: Body,
) -> Result<BlobUpload, ServerError> {
    check_chunk_range(headers, session.received)?;
    let limit = state.settings.max_upload_bytes;
    let room = limit.saturating_sub(session.received);
    check_content_length(headers, room).map_err(|_| ServerError::TooLarge { limit })?;
    // The body's size hint does not survive every middleware: `Content-Length: 0` says it too.
    let no_body = axum::body::HttpBody::size_hint(&body).exact() == Some(0)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0");
    if no_body && let [only] = session.chunks.as_slice() {
        // The common case (`docker push`: one PATCH, then an empty PUT): the chunk becomes the
        // blob where it is, its digest already known.
        let found = ChunkHash::resume(&session.hash_state)?.digest();
        if let Some(w) = state.store.blobs.adopt_staged(&only.name, only.size, found) {
            return store_blob(state, repo, w, digest, session.received).await;
        }
    }
    let writer = if session.chunks.is_empty() {
        None
    } else {
        let store = Arc::clone(&state.store);
        let chunks = session.chunks.clone();
        let copied = crate::bulk::spawn(move || copy_chunks(&store, &chunks)).await;
        Some(copied??)
    };
    let got = crate::receive::receive(&state.store, body, writer, room).await;
    got.result.map_err(|e| match e {
        ServerError::TooLarge { .. } => ServerError::TooLarge { limit },
        other => other,
    })?;
    let writer = crate::receive::writer_or_new(&state.store, got.writer)?;
    let up = store_blob(state, repo, writer, digest, session.received + got.received).await;
    drop(got.reservation);
    up
}

/// A new upload holding `chunks` in order, read from the staging area (on a bulk thread).
fn copy_chunks(store: &Store, chunks: &[StagedChunk]) -> Result<Box<dyn BlobWriter>, ServerError> {
    /// Read and written a MiB at a time: memory stays bounded whatever the chunk's size.
    const STEP: u64 = 1 << 20;
    let where_ = store.blobs.describe();
    let mut w = store
        .blobs
        .begin_write()
        .map_err(|e| ServerError::io("creating temp file in", &store.tmp_dir, e))?;
    for c in chunks {
        let r = store
            .blobs
            .open_staged(&c.name)
            .map_err(|e| ServerError::io("opening a chunk of an upload in", &where_, e))?
            .filter(|r| r.size() == c.size)
            .ok_or_else(|| {
                OciCode::BlobUploadInvalid.err(format!(
                    "chunk `{}` of this upload is missing from the store: start the upload again",
                    c.name
                ))
            })?;
        let mut at = 0;
        while at < c.size {
            let len = STEP.min(c.size - at);
            let bytes = r
                .chunk(at, len as usize)
                .map_err(|e| ServerError::io("reading a chunk of an upload in", &where_, e))?;
            w.write_all(&bytes)
                .map_err(|e| ServerError::io("writing upload to", &store.tmp_dir, e))?;
            at += len;
        }
    }
    Ok(w)
}

/// Commits `writer` as `digest` (a mismatch is DIGEST_INVALID and stores nothing), counts the
/// upload and links the blob into `repo`.
async fn store_blob(
    state: &AppState,
    repo: &RepoName,
    writer: Box<dyn BlobWriter>,
    digest: Digest,
    received: u64,
) -> Result<BlobUpload, ServerError> {
    let name = repo.as_str().to_string();
    state
        .store
        .blocking(move |s| {
            let pin = s.pins.pin([digest])?;
            let result = ingest::finish_blob(s, writer, Some(digest), Some(pin));
            ingest::count_upload(s, &result, received)?;
            let up = result?;
            s.db.link_blob(&name, &up.digest)?;
            Ok(up)
        })
        .await
}

/// `GET /v2/<name>/blobs/uploads/<id>`: where the upload stands.
pub async fn status(state: &AppState, repo: &RepoName, id: &str) -> Result<Response, ServerError> {
    let (sid, name) = (id.to_string(), repo.as_str().to_string());
    let offset = state
        .store
        .blocking(move |s| Ok(s.db.touch_upload(&sid, &name, now())?))
        .await?
        .ok_or_else(|| unknown_upload(repo, id))?;
    Ok(session_answer(StatusCode::NO_CONTENT, repo, id, offset))
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`: cancels the upload.
pub async fn cancel(state: &AppState, repo: &RepoName, id: &str) -> Result<Response, ServerError> {
    claim(state, repo, id).await?;
    end_session(state, id).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Claims open session `id` of `repo` for this request (see [`uploads`]).
async fn claim(state: &AppState, repo: &RepoName, id: &str) -> Result<UploadSession, ServerError> {
    let (sid, name) = (id.to_string(), repo.as_str().to_string());
    state
        .store
        .blocking(move |s| Ok(s.db.claim_upload(&sid, &name, now())?))
        .await?
        .ok_or_else(|| unknown_upload(repo, id))
}

/// Deletes claimed session `id`'s staging objects, then its row. A failure is logged: the row,
/// if left, expires with its objects.
async fn end_session(state: &AppState, id: &str) {
    let sid = id.to_string();
    let ended = state
        .store
        .blocking(move |s| {
            uploads::delete_staged(s, &sid);
            Ok(s.db.drop_upload(&sid)?)
        })
        .await;
    if let Err(e) = ended {
        tracing::warn!(session = id, error = %e, "ending an upload session failed; it expires");
    }
}

/// BLOB_UPLOAD_UNKNOWN for session `id`.
fn unknown_upload(repo: &RepoName, id: &str) -> ServerError {
    OciCode::BlobUploadUnknown.err(format!(
        "upload `{id}` is not open in repository `{repo}` (finished, cancelled, or idle too \
         long): start a new one"
    ))
}

/// Refuses a chunk whose `Content-Range` (when sent) does not continue an upload of `offset`
/// bytes, or disagrees with its `Content-Length`: 416.
fn check_chunk_range(headers: &HeaderMap, offset: u64) -> Result<(), ServerError> {
    let Some(range) = headers.get(header::CONTENT_RANGE) else {
        return Ok(());
    };
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
    Ok(())
}

/// Receives `body` as the next chunk of open `session` and appends it; the new offset. The chunk
/// is stored as a staging object first and appended only if the session still stands where it
/// did (416 when another chunk got there first). A chunk broken off midway is dropped whole: the
/// client asks where the upload stands and resends from there.
async fn append_chunk(
    state: &AppState,
    repo: &RepoName,
    session: &UploadSession,
    headers: &HeaderMap,
    body: Body,
) -> Result<u64, ServerError> {
    let offset = session.received;
    check_chunk_range(headers, offset)?;
    let limit = state.settings.max_upload_bytes;
    let room = limit.saturating_sub(offset);
    check_content_length(headers, room).map_err(|_| ServerError::TooLarge { limit })?;
    let hash = ChunkHash::resume(&session.hash_state)?;
    let name = format!("{}/{}", session.id, uuid::Uuid::new_v4());
    let staged = state
        .store
        .blobs
        .stage(&name)
        .map_err(|e| ServerError::io("creating temp file in", &state.store.tmp_dir, e))?;
    let chunk = ChunkWriter::new(staged, hash);
    let got =
        crate::receive::receive(&state.store, body, Some(Box::new(chunk.clone())), room).await;
    drop(got.writer);
    got.result.map_err(|e| match e {
        ServerError::TooLarge { .. } => ServerError::TooLarge { limit },
        other => other,
    })?;
    let id = session.id.clone();
    let unknown = unknown_upload(repo, &id);
    let repo_name = repo.as_str().to_string();
    let appended = state
        .store
        .blocking(move |s| {
            let (size, hash) = chunk
                .finish()
                .map_err(|e| ServerError::io("storing a chunk of an upload in", s.blobs.describe(), e))?;
            let c = StagedChunk { name, size };
            let now = now();
            if size > 0 && s.db.append_upload_chunk(&id, offset, &c, &hash.save(), now)? {
                return Ok(offset + size);
            }
            if let Err(e) = s.blobs.delete_staged(&c.name) {
                tracing::warn!(chunk = c.name, error = %e, "deleting a chunk that was not appended failed");
            }
            if size == 0 && let Some(at) = s.db.touch_upload(&id, &repo_name, now)? {
                return Ok(at);
            }
            match s.db.upload_session(&id)? {
                Some(now) if !now.closing => Err(OciCode::RangeInvalid.err(format!(
                    "another chunk was appended at byte {offset} meanwhile: the upload has {} \
                     bytes (GET the upload for its state)",
                    now.received
                ))),
                _ => Err(unknown),
            }
        })
        .await;
    drop(got.reservation);
    appended
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
