//! The router: every v1 route, the registry's `/v2/` routes, their handlers, and the state they
//! share.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{any, get, post, put};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::dashboard;
use crate::handlers::{blobs, images, insights, lookup, stats};
use crate::metrics::{self, HttpMetrics};
use crate::registry;
use crate::settings::Settings;
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Blobs and index.
    pub store: Arc<Store>,
    /// Limits such as the upload size.
    pub settings: Arc<Settings>,
    /// Request counts and latencies for `/metrics`.
    pub metrics: Arc<HttpMetrics>,
    /// Whether requests need a token (decided at start, only ever switched on).
    pub auth: Arc<crate::auth_gate::AuthGate>,
}

/// The v1 API. Unknown routes and methods answer JSON errors like every other failure.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(stats::healthz))
        .route(
            "/v1/images/{ns}/{key}",
            put(images::put_image)
                .get(images::get_image)
                .delete(images::delete_image),
        )
        .route(
            "/v1/images/{ns}/{key}/manifest",
            get(images::get_manifest).put(images::put_manifest),
        )
        .route("/v1/blobs", post(blobs::post_blob))
        .route("/v1/blobs/missing", post(blobs::missing))
        .route(
            "/v1/blobs/{digest}",
            put(blobs::put_blob)
                .get(blobs::get_blob)
                .head(blobs::head_blob),
        )
        .route("/v1/lookup", post(lookup::lookup))
        .route("/v1/stats", get(stats::stats))
        .route("/v1/entries", get(stats::entries))
        .route("/v1/tags", get(stats::tags))
        // Operator views (issue 4).
        .route("/", get(dashboard::index))
        .route("/entries/{ns}/{key}", get(dashboard::entry_page))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/stats/history", get(insights::history))
        .route("/v1/largest", get(insights::largest))
        .route("/v1/disk", get(insights::disk))
        .route("/v1/entries/{ns}/{key}", get(insights::entry_detail))
        .route(
            "/v1/builds",
            post(insights::post_build).get(insights::list_builds),
        )
        // The registry protocol (issue 10): repository names contain `/`, so one wildcard route
        // takes every `/v2/...` path and `registry::path` finds the endpoint from its end.
        .route("/v2/", get(registry::base))
        .route("/v2", get(registry::base))
        .route("/v2/{*rest}", any(registry::dispatch))
        .route_layer(from_fn(metrics::tag_route))
        // JSON bodies (read with the `Bytes` extractor) stop at this size while they arrive;
        // tarball and blob bodies stream with their own limit (`--max-upload-bytes`).
        .layer(DefaultBodyLimit::max(crate::handlers::MAX_JSON_BODY))
        .fallback(images::not_found)
        .method_not_allowed_fallback(images::method_not_allowed)
        // Uploads and downloads take a slot or get 503 (inside auth and metrics: a refused token
        // takes no slot, and 503s are counted).
        .layer(from_fn_with_state(
            Arc::new(crate::transfers::TransferLimits::new(&state.settings)),
            crate::transfers::limit,
        ))
        .layer(from_fn_with_state(state.clone(), metrics::track))
        // Every route above, fallbacks included: tokens, roles, namespaces (see `auth`).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authorize,
        ))
        .layer(from_fn(crate::request_id::scope))
        // One INFO line per request (method, path, status, latency, request id): operators see
        // what happened without turning on debug logs.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::extract::Request| {
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        uri = %req.uri(),
                        request_id = %crate::request_id::of(req),
                    )
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}
