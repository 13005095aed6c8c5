//! `/v1/images/{ns}/{key}[/manifest]`: entries as tarballs and manifests.

use std::collections::HashSet;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use layercache_shared::api::{CommitRequest, EntryManifest, PREFIXES_HEADER, PutReport};
use layercache_shared::archive::{PlanImage, plan_legacy};
use layercache_shared::{CacheKey, Namespace};

use super::query::{ApiQuery, SkipQuery};
use super::{check_content_length, digest_list, entry_name, json_body};
use crate::auth::Access;
use crate::error::ServerError;
use crate::ingest;
use crate::routes::AppState;
use crate::tarball::{segments_of, stream_segments};

/// Distinct digests in `list`.
fn pins_len(list: &[layercache_shared::Digest]) -> usize {
    list.iter().collect::<HashSet<_>>().len()
}

fn entry_not_found(ns: &Namespace, key: &CacheKey) -> ServerError {
    ServerError::not_found(format!("entry `{key}` in namespace `{ns}`"))
}

/// `PUT /v1/images/{ns}/{key}`: ingest a `docker save` tarball.
pub async fn put_image(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<PutReport>), ServerError> {
    let (ns, key) = entry_name(path)?;
    let prefixes = match headers.get(PREFIXES_HEADER) {
        Some(v) => digest_list(
            v.to_str().map_err(|_| {
                ServerError::bad_request(format!("the {PREFIXES_HEADER} header is not ASCII"))
            })?,
            PREFIXES_HEADER,
        )?,
        None => Vec::new(),
    };
    let limit = state.settings.max_upload_bytes;
    check_content_length(&headers, limit)?;
    let report =
        ingest::ingest_tarball(state.store.clone(), ns, key, prefixes, body, limit).await?;
    Ok((StatusCode::CREATED, Json(report)))
}

/// `GET /v1/images/{ns}/{key}[?skip=…]`: the entry as a docker-loadable tarball.
pub async fn get_image(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    ApiQuery(query): ApiQuery<SkipQuery>,
) -> Result<Response, ServerError> {
    let (ns, key) = entry_name(path)?;
    let skip: HashSet<_> = match query.skip {
        Some(s) => digest_list(&s, "skip query parameter")?
            .into_iter()
            .collect(),
        None => HashSet::new(),
    };
    let (manifest, pins) = state
        .store
        .blocking(move |s| match s.db.find_manifest(&ns, &key)? {
            Some((id, manifest)) => {
                s.db.record_hit(id, None)?;
                // Pin, then confirm the rows: an entry evicted between the manifest and the pin
                // has lost them, and is answered as not found rather than half served.
                let blobs: Vec<_> = manifest
                    .images
                    .iter()
                    .flat_map(|i| std::iter::once(i.id).chain(i.layers.iter().map(|l| l.diff_id)))
                    .collect();
                let pins = s.pins.pin(blobs.iter().copied())?;
                if s.db.blob_sizes(&blobs)?.len() < pins_len(&blobs) {
                    return Err(entry_not_found(&ns, &key));
                }
                Ok((manifest, pins))
            }
            None => {
                s.db.record_miss(&ns)?;
                Err(entry_not_found(&ns, &key))
            }
        })
        .await?;
    let images: Vec<PlanImage> = manifest
        .images
        .iter()
        .map(|img| PlanImage {
            id: img.id,
            config_size: img.config_size,
            parent: img.parent,
            tags: img.tags.clone(),
            layers: img.layers.iter().map(|l| (l.diff_id, l.size)).collect(),
        })
        .collect();
    let plan = plan_legacy(&images, &skip);
    let body = stream_segments(state.store.clone(), segments_of(&plan), pins);
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(plan.total_len));
    Ok(resp)
}

/// `DELETE /v1/images/{ns}/{key}`.
pub async fn delete_image(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ServerError> {
    let (ns, key) = entry_name(path)?;
    state
        .store
        .blocking(move |s| {
            if s.db.delete_entry(&ns, &key)? {
                tracing::info!(namespace = %ns, %key, "entry deleted");
                Ok(StatusCode::NO_CONTENT)
            } else {
                Err(entry_not_found(&ns, &key))
            }
        })
        .await
}

/// `GET /v1/images/{ns}/{key}/manifest`.
pub async fn get_manifest(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<EntryManifest>, ServerError> {
    let (ns, key) = entry_name(path)?;
    let m = state
        .store
        .blocking(move |s| match s.db.find_manifest(&ns, &key)? {
            Some((_, manifest)) => Ok(manifest),
            None => Err(entry_not_found(&ns, &key)),
        })
        .await?;
    Ok(Json(m))
}

/// `PUT /v1/images/{ns}/{key}/manifest`: commit an entry from uploaded blobs.
pub async fn put_manifest(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<PutReport>), ServerError> {
    let (ns, key) = entry_name(path)?;
    let (request, received) = json_body::<CommitRequest>(body, "commit request")?;
    let mut report = state
        .store
        .blocking(move |s| ingest::commit_blocking(s, &access, ns, key, request))
        .await?;
    report.bytes_received = received;
    Ok((StatusCode::CREATED, Json(report)))
}

/// Answers a route that does not exist with the usual JSON error.
pub async fn not_found() -> ServerError {
    ServerError::not_found("this route (see the v1 API in README.md)")
}

/// Answers a known route called with the wrong method.
pub async fn method_not_allowed() -> ServerError {
    ServerError::MethodNotAllowed
}
