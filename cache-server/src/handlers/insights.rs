//! Operator JSON (issue 4): `POST`/`GET /v1/builds`, `GET /v1/stats/history`, `GET /v1/largest`,
//! `GET /v1/entries/{ns}/{key}` and `GET /v1/disk`. The dashboard renders the same data.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use layercache_shared::Namespace;
use layercache_shared::api::{
    BuildList, BuildRecorded, BuildReport, DiskUse, EntryDetail, Largest, StatsHistory,
};

use super::query::{ApiQuery, HistoryQuery, ListQuery};
use super::{entry_name, json_body};
use crate::auth::{Access, Role};
use crate::error::ServerError;
use crate::routes::AppState;
use crate::settings::Settings;
use crate::store::sqlite::{HISTORY_WINDOWS, now};

/// Default and maximum `limit` of list endpoints.
const DEFAULT_LIMIT: u64 = 10;
const MAX_LIMIT: u64 = 500;

/// The configured size limit of the data dir (`--max-size`), if any.
pub fn quota_bytes(settings: &Settings) -> Option<u64> {
    settings.max_size
}

/// The `window` query parameter: `1h` (default) or `24h`.
pub fn window_param(window: Option<&str>) -> Result<String, ServerError> {
    let w = window.unwrap_or("1h");
    if HISTORY_WINDOWS.iter().any(|(name, _, _)| *name == w) {
        Ok(w.to_string())
    } else {
        let names: Vec<&str> = HISTORY_WINDOWS.iter().map(|w| w.0).collect();
        Err(ServerError::bad_request(format!(
            "window `{w}` is not one of {}",
            names.join(", ")
        )))
    }
}

/// `POST /v1/builds`: records a runner's build report; answers 201 with the time saved.
pub async fn post_build(
    State(state): State<AppState>,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<BuildRecorded>), ServerError> {
    let (report, _) = json_body::<BuildReport>(body, "build report")?;
    // A runner reports builds of the namespaces it pushes to, not anyone else's statistics.
    access.require(Role::Write, report.namespace.as_str())?;
    let s = &report.seconds;
    for (name, v) in [
        ("lookup", s.lookup),
        ("restore", s.restore),
        ("build", s.build),
        ("push", s.push),
        ("total", s.total),
    ] {
        if !v.is_finite() || v < 0.0 {
            return Err(ServerError::bad_request(format!(
                "seconds.{name} is {v}: report a duration of 0 or more seconds"
            )));
        }
    }
    let recorded = state
        .store
        .blocking(move |st| Ok(st.db.record_build(&report, now())?))
        .await?;
    Ok((StatusCode::CREATED, Json(recorded)))
}

/// `GET /v1/builds[?namespace=NS][&limit=N]`.
pub async fn list_builds(
    State(state): State<AppState>,
    access: Access,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<BuildList>, ServerError> {
    let ns = q.namespace.clone();
    access.require_view(Role::Admin, ns.as_ref())?;
    let limit = q.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    Ok(Json(
        state
            .store
            .blocking(move |s| Ok(s.db.builds(ns.as_ref(), limit)?))
            .await?,
    ))
}

/// `GET /v1/stats/history?window=1h|24h[&namespace=NS]`.
pub async fn history(
    State(state): State<AppState>,
    access: Access,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<StatsHistory>, ServerError> {
    let ns = q.namespace;
    access.require_view(Role::Admin, ns.as_ref())?;
    let window = window_param(q.window.as_deref())?;
    let h = state
        .store
        .blocking(move |s| {
            s.db.history(&window, ns.as_ref(), now())?
                .ok_or_else(|| ServerError::Internal(format!("window `{window}` vanished")))
        })
        .await?;
    Ok(Json(h))
}

/// `GET /v1/largest[?limit=N]`.
pub async fn largest(
    State(state): State<AppState>,
    access: Access,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Largest>, ServerError> {
    access.require_all(Role::Admin)?;
    let limit = q.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    Ok(Json(
        state
            .store
            .blocking(move |s| Ok(s.db.largest(limit)?))
            .await?,
    ))
}

/// `GET /v1/entries/{ns}/{key}`: manifest plus layer sharing; does not count as a hit.
pub async fn entry_detail(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<EntryDetail>, ServerError> {
    let (ns, key) = entry_name(path)?;
    Ok(Json(load_entry_detail(&state, &access, ns, key).await?))
}

/// The detail of entry `ns`/`key`, or `not_found`.
///
/// Entries sharing a layer are listed only from namespaces `access` reads: which other tenants
/// use a layer is theirs to know.
pub async fn load_entry_detail(
    state: &AppState,
    access: &Access,
    ns: Namespace,
    key: layercache_shared::CacheKey,
) -> Result<EntryDetail, ServerError> {
    let mut detail = state
        .store
        .blocking(move |s| {
            // A concurrent re-PUT may replace the entry between the two reads: look again.
            let detail = crate::store::meta::retry_replaced(|| {
                s.db.find_entry(&ns, &key)?
                    .map(|id| s.db.entry_detail(id))
                    .transpose()
            })?;
            detail.ok_or_else(|| {
                ServerError::not_found(format!(
                    "entry `{ns}` `{key}` (list entries with GET /v1/entries)"
                ))
            })
        })
        .await?;
    for layer in &mut detail.shares {
        layer.shared_with.retain(|e| access.can_read(&e.namespace));
    }
    detail.shares.retain(|l| !l.shared_with.is_empty());
    Ok(detail)
}

/// `GET /v1/disk`.
pub async fn disk(State(state): State<AppState>) -> Result<Json<DiskUse>, ServerError> {
    let quota = quota_bytes(&state.settings);
    let stats = state.store.blocking(|s| Ok(s.db.stats()?)).await?;
    Ok(Json(DiskUse {
        stored_bytes: stats.stored_bytes,
        blobs: stats.blobs,
        quota_bytes: quota,
    }))
}
