//! The OCI distribution API (v1.1) under `/v2/`: the registry protocol BuildKit's registry cache,
//! `docker pull`/`push`, skopeo and containerd speak, served from the same store, auth,
//! statistics and collector as the v1 API.
//!
//! - [`path`]: what a `/v2/...` path names ([`path::Target`]), parsed once for auth and dispatch.
//! - [`blobs`]: blob GET/HEAD/DELETE, uploads (monolithic, chunked sessions) and mounts.
//! - [`uploads`]: upload sessions between requests, and their expiry.
//! - [`manifests`]: manifests by tag or digest, tags list, referrers, catalog.
//! - [`liveness`]: which tags hold which blobs, which manifests are garbage (no I/O).
//! - [`error`]: the spec's error codes and body.
//!
//! Repositories are layercache namespaces: a token for `acme/*` pushes to `acme/web/cache`.
//! `docker login` works with any user name and a token as the password (HTTP Basic).

pub mod blobs;
pub mod error;
pub mod liveness;
pub mod manifests;
pub mod path;
pub mod uploads;

use axum::body::Body;
use axum::extract::{Path, Query as QueryExtractor, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use layercache_shared::Digest;
use serde::Deserialize;

use crate::auth::Access;
use crate::error::ServerError;
use crate::routes::AppState;
use error::{OciCode, OciError};
use path::{Resource, Target};

/// The query parameters any `/v2/` endpoint takes.
#[derive(Debug, Default, Deserialize)]
pub struct Query {
    /// Upload: the blob's digest (monolithic POST, or the closing PUT).
    pub digest: Option<String>,
    /// Upload: mount this blob instead.
    pub mount: Option<String>,
    /// Upload: the repository to mount from.
    pub from: Option<String>,
    /// Listings: page size.
    pub n: Option<String>,
    /// Listings: the last item of the previous page.
    pub last: Option<String>,
    /// Referrers: only this artifact type.
    #[serde(rename = "artifactType")]
    pub artifact_type: Option<String>,
}

/// `GET /v2/`: the API version check clients (and `docker login`) start with.
pub async fn base() -> Response {
    with_version(axum::Json(serde_json::json!({})).into_response())
}

/// Every `/v2/<...>` request: parses the path, then hands it to the endpoint's handler.
pub async fn dispatch(
    State(state): State<AppState>,
    access: Access,
    Path(rest): Path<String>,
    query: Result<QueryExtractor<Query>, axum::extract::rejection::QueryRejection>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = match query {
        Ok(QueryExtractor(q)) => route(&state, &access, &rest, &q, method, &headers, body).await,
        Err(e) => Err(ServerError::bad_request(format!(
            "the query string is not usable: {}",
            e.body_text()
        ))),
    };
    match result {
        Ok(resp) => with_version(resp),
        Err(e) => OciError(e).into_response(),
    }
}

async fn route(
    state: &AppState,
    access: &Access,
    rest: &str,
    q: &Query,
    method: Method,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    let head = method == Method::HEAD;
    let unsupported = || {
        OciCode::Unsupported.err(format!(
            "{method} is not supported on `/v2/{rest}` (see the OCI distribution spec)"
        ))
    };
    let (repo, resource) = match path::parse(rest)? {
        Target::Catalog if method == Method::GET => {
            return manifests::catalog(state, access, q).await;
        }
        Target::Catalog => return Err(unsupported()),
        Target::Repo(repo, resource) => (repo, resource),
    };
    match (&method, &resource) {
        (&Method::GET | &Method::HEAD, Resource::Manifest(r)) => {
            manifests::get(state, &repo, r, head).await
        }
        (&Method::PUT, Resource::Manifest(r)) => {
            manifests::put(state, &repo, r, headers, body).await
        }
        (&Method::DELETE, Resource::Manifest(r)) => manifests::delete(state, &repo, r).await,
        (&Method::PUT, Resource::BadManifestRef(text)) => Err(text
            .parse::<path::ManifestRef>()
            .err()
            .unwrap_or_else(unsupported)),
        (_, Resource::BadManifestRef(text)) => Err(OciCode::ManifestUnknown.err(format!(
            "`{text}` is neither a tag nor a digest, so no manifest of `{repo}` has that name"
        ))),
        (&Method::GET | &Method::HEAD, Resource::Blob(d)) => {
            blobs::get(state, &repo, *d, headers, head).await
        }
        (&Method::DELETE, Resource::Blob(d)) => blobs::delete(state, &repo, *d).await,
        (&Method::POST, Resource::Uploads) => {
            blobs::start(state, access, &repo, q, headers, body).await
        }
        (&Method::PATCH, Resource::Upload(id)) => {
            blobs::patch(state, &repo, id, headers, body).await
        }
        (&Method::PUT, Resource::Upload(id)) => {
            blobs::finish(state, &repo, id, q, headers, body).await
        }
        (&Method::GET, Resource::Upload(id)) => blobs::status(state, &repo, id).await,
        (&Method::DELETE, Resource::Upload(id)) => blobs::cancel(state, &repo, id).await,
        (&Method::GET, Resource::Tags) => manifests::tags(state, &repo, q).await,
        (&Method::GET, Resource::Referrers(d)) => manifests::referrers(state, &repo, *d, q).await,
        _ => Err(unsupported()),
    }
}

/// Adds `Docker-Distribution-API-Version`, which clients check on every answer.
pub(crate) fn with_version(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

/// A digest as a header value.
pub(crate) fn digest_header(d: &Digest) -> HeaderValue {
    HeaderValue::from_str(&d.to_string()).expect("a digest is a valid header value")
}

/// A `Location` header value (paths built from validated names, digests and uuids).
pub(crate) fn location(path: &str) -> HeaderValue {
    HeaderValue::from_str(path).unwrap_or_else(|_| HeaderValue::from_static("/v2/"))
}
