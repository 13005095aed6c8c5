//! `/v2/<name>/manifests/<reference>` (PUT, GET, HEAD, DELETE), `tags/list`, `referrers/<digest>`
//! and `/v2/_catalog`.
//!
//! A manifest is stored as a blob (its bytes, served back unchanged) plus a row naming what it
//! references; it is accepted only when every blob it references is in its repository and every
//! child manifest of an index is too. BuildKit's cache index lists layer blobs as entries: those
//! are checked as blobs ([`ManifestDoc::references`]).

use std::io::Write;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use layercache_shared::Digest;
use layercache_shared::oci::{Descriptor, ManifestDoc, MediaType, Reference};
use serde::Serialize;

use super::error::OciCode;
use super::path::{ManifestRef, RepoName};
use super::{Query, digest_header, location};
use crate::auth::{Access, Role};
use crate::error::ServerError;
use crate::routes::AppState;
use crate::store::sqlite::{ManifestRow, NewManifest};

/// Largest manifest accepted (distribution's default limit): real ones are a few KiB, BuildKit's
/// `mode=max` cache indexes of big builds a few hundred.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// Default and largest page of `tags/list` and `_catalog`.
const DEFAULT_PAGE: u64 = 1000;
const MAX_PAGE: u64 = 10_000;

/// `PUT /v2/<name>/manifests/<reference>`.
pub async fn put(
    state: &AppState,
    repo: &RepoName,
    reference: &ManifestRef,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    let bytes = axum::body::to_bytes(body, MAX_MANIFEST_BYTES)
        .await
        .map_err(|_| {
            OciCode::SizeInvalid.err(format!(
                "the manifest is larger than {MAX_MANIFEST_BYTES} bytes (or its upload broke off)"
            ))
        })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parsed = ManifestDoc::parse(&bytes, content_type)
        .map_err(|e| OciCode::ManifestInvalid.err(e.to_string()))?;
    let digest = Digest::of(&bytes);
    if let ManifestRef::Digest(named) = reference
        && *named != digest
    {
        return Err(OciCode::DigestInvalid.err(format!(
            "the manifest's content has digest {digest}, not the {named} in the URL"
        )));
    }
    let doc = &parsed.doc;
    let manifest = NewManifest {
        repo: repo.to_string(),
        digest,
        media_type: parsed.media_type.to_string(),
        size: bytes.len() as u64,
        artifact_type: doc.effective_artifact_type(),
        subject: doc.subject.as_ref().map(|s| s.digest),
        annotations: doc
            .annotations
            .as_ref()
            .and_then(|a| serde_json::to_string(a).ok()),
        refs: doc.references(),
    };
    let tag = match reference {
        ManifestRef::Tag(t) => Some(t.clone()),
        ManifestRef::Digest(_) => None,
    };
    let subject = manifest.subject;
    state
        .store
        .blocking(move |s| store_manifest(s, &manifest, tag.as_deref(), &bytes))
        .await?;
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        location(&format!("/v2/{repo}/manifests/{digest}")),
    );
    h.insert("docker-content-digest", digest_header(&digest));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    if let Some(subject) = subject {
        h.insert("oci-subject", digest_header(&subject));
    }
    Ok(resp)
}

/// Writes the manifest's bytes as a blob and its row, pinning everything it references first so
/// the collector cannot take a blob between the check and the commit.
fn store_manifest(
    store: &crate::store::Store,
    m: &NewManifest,
    tag: Option<&str>,
    bytes: &Bytes,
) -> Result<(), ServerError> {
    let referenced = m.refs.iter().map(|r| match r {
        Reference::Blob(d) | Reference::Manifest(d) => *d,
    });
    let pins = store.pins.pin(referenced.chain([m.digest]))?;
    let mut w = store
        .blobs
        .begin_write()
        .map_err(|e| ServerError::io("creating temp file in", &store.tmp_dir, e))?;
    w.write_all(bytes)
        .map_err(|e| ServerError::io("writing manifest to", &store.tmp_dir, e))?;
    let c = w.commit(&m.digest)?;
    store.db.insert_blob(&m.digest, c.size)?;
    let result = store.db.put_manifest(m, tag)?;
    drop(pins);
    store.gc_wake.notify_one();
    match result {
        Ok(_) => Ok(()),
        Err(missing) => {
            let list: Vec<String> = missing.iter().map(Digest::to_string).collect();
            Err(OciCode::ManifestBlobUnknown.err(format!(
                "the manifest references content repository `{}` does not hold: {}; push those \
                 blobs (and child manifests) first",
                m.repo,
                list.join(", ")
            )))
        }
    }
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`. A tag lookup counts as a hit or a miss of the
/// repository.
pub async fn get(
    state: &AppState,
    repo: &RepoName,
    reference: &ManifestRef,
    head: bool,
) -> Result<Response, ServerError> {
    let name = repo.to_string();
    let r = reference.clone();
    let found: Option<(ManifestRow, Option<Bytes>)> = state
        .store
        .blocking(move |s| {
            let row = match &r {
                ManifestRef::Tag(t) => s.db.resolve_tag(&name, t)?,
                ManifestRef::Digest(d) => s.db.manifest_by_digest(&name, d)?,
            };
            let Some(row) = row else { return Ok(None) };
            if head {
                return Ok(Some((row, None)));
            }
            let bytes = read_manifest(s, &row)?;
            Ok(Some((row, Some(bytes))))
        })
        .await?;
    let Some((row, bytes)) = found else {
        return Err(OciCode::ManifestUnknown.err(format!(
            "manifest `{reference}` is not in repository `{repo}`"
        )));
    };
    let mut resp = match bytes {
        Some(b) => Response::new(Body::from(b)),
        None => Response::new(Body::empty()),
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&row.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert("docker-content-digest", digest_header(&row.digest));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", row.digest)) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(row.size));
    Ok(resp)
}

/// The stored bytes of manifest `row`.
fn read_manifest(store: &crate::store::Store, row: &ManifestRow) -> Result<Bytes, ServerError> {
    let d = row.digest;
    let blob = store
        .blobs
        .open(&d)
        .map_err(|e| ServerError::io("opening manifest blob", d.to_string(), e))?
        .ok_or_else(|| ServerError::Internal(format!("manifest {d} has a row but no blob file")))?;
    if blob.size() != row.size {
        return Err(ServerError::CorruptBlob {
            digest: d,
            recorded: row.size,
            on_disk: blob.size(),
        });
    }
    // Copied out of the mapping: a manifest is small, and the copy frees the mapping at once.
    let chunk = blob
        .chunk(0, row.size as usize)
        .map_err(|e| ServerError::io("reading manifest blob", d.to_string(), e))?;
    Ok(Bytes::copy_from_slice(&chunk))
}

/// `DELETE /v2/<name>/manifests/<reference>`: by digest, the manifest and its tags; by tag, only
/// the tag.
pub async fn delete(
    state: &AppState,
    repo: &RepoName,
    reference: &ManifestRef,
) -> Result<Response, ServerError> {
    let name = repo.to_string();
    let r = reference.clone();
    let removed = state
        .store
        .blocking(move |s| {
            Ok(match &r {
                ManifestRef::Tag(t) => s.db.delete_tag(&name, t)?,
                ManifestRef::Digest(d) => s.db.delete_manifest(&name, d)?,
            })
        })
        .await?;
    if !removed {
        return Err(OciCode::ManifestUnknown.err(format!(
            "manifest `{reference}` is not in repository `{repo}`"
        )));
    }
    state.store.gc_wake.notify_one();
    Ok(StatusCode::ACCEPTED.into_response())
}

/// The `n` of a listing: at most [`MAX_PAGE`].
fn page_size(query: &Query) -> Result<u64, ServerError> {
    match &query.n {
        None => Ok(DEFAULT_PAGE),
        Some(n) => n.parse::<u64>().map(|n| n.min(MAX_PAGE)).map_err(|_| {
            ServerError::bad_request(format!("`?n={n}` is not a whole number of results"))
        }),
    }
}

/// A `Link` header to the page after `last`.
fn next_link(path: &str, n: u64, last: &str) -> HeaderValue {
    let last = percent_encoding::utf8_percent_encode(last, percent_encoding::NON_ALPHANUMERIC);
    HeaderValue::from_str(&format!("<{path}?n={n}&last={last}>; rel=\"next\""))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[derive(Serialize)]
struct TagList {
    name: String,
    tags: Vec<String>,
}

/// `GET /v2/<name>/tags/list?n=&last=`.
pub async fn tags(
    state: &AppState,
    repo: &RepoName,
    query: &Query,
) -> Result<Response, ServerError> {
    let n = page_size(query)?;
    let name = repo.to_string();
    let last = query.last.clone();
    let found = state
        .store
        .blocking(move |s| Ok(s.db.tags(&name, last.as_deref(), n + 1)?))
        .await?;
    let Some(mut tags) = found else {
        return Err(OciCode::NameUnknown.err(format!("repository `{repo}` holds nothing")));
    };
    let more = tags.len() as u64 > n;
    tags.truncate(n as usize);
    let next = more.then(|| tags.last().cloned()).flatten();
    let mut resp = axum::Json(TagList {
        name: repo.to_string(),
        tags,
    })
    .into_response();
    if let Some(last) = next {
        resp.headers_mut().insert(
            header::LINK,
            next_link(&format!("/v2/{repo}/tags/list"), n, &last),
        );
    }
    Ok(resp)
}

/// The referrers answer: an OCI index of the manifests naming the subject.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReferrersIndex {
    schema_version: u32,
    media_type: MediaType,
    manifests: Vec<Descriptor>,
}

/// `GET /v2/<name>/referrers/<digest>?artifactType=`.
pub async fn referrers(
    state: &AppState,
    repo: &RepoName,
    subject: Digest,
    query: &Query,
) -> Result<Response, ServerError> {
    let name = repo.to_string();
    let filter = query.artifact_type.clone();
    let f = filter.clone();
    let rows = state
        .store
        .blocking(move |s| Ok(s.db.referrers(&name, &subject, f.as_deref())?))
        .await?;
    let manifests = rows
        .into_iter()
        .map(|r| Descriptor {
            media_type: MediaType::parse(&r.media_type),
            digest: r.digest,
            size: r.size,
            urls: None,
            annotations: r.annotations.and_then(|a| serde_json::from_str(&a).ok()),
            artifact_type: r.artifact_type,
            platform: None,
        })
        .collect();
    let index = ReferrersIndex {
        schema_version: 2,
        media_type: MediaType::OciIndex,
        manifests,
    };
    let mut resp = axum::Json(index).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
    );
    if filter.is_some() {
        h.insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}

#[derive(Serialize)]
struct Catalog {
    repositories: Vec<String>,
}

/// `GET /v2/_catalog?n=&last=`: the repositories the caller may read.
pub async fn catalog(
    state: &AppState,
    access: &Access,
    query: &Query,
) -> Result<Response, ServerError> {
    let n = page_size(query)?;
    let last = query.last.clone();
    let all = state
        .store
        .blocking(move |s| Ok(s.db.repositories(last.as_deref())?))
        .await?;
    let mut repos: Vec<String> = all
        .into_iter()
        .filter(|r| access.allows(Role::Read, r))
        .take(n as usize + 1)
        .collect();
    let more = repos.len() as u64 > n;
    repos.truncate(n as usize);
    let next = more.then(|| repos.last().cloned()).flatten();
    let mut resp = axum::Json(Catalog {
        repositories: repos,
    })
    .into_response();
    if let Some(last) = next {
        resp.headers_mut()
            .insert(header::LINK, next_link("/v2/_catalog", n, &last));
    }
    Ok(resp)
}
