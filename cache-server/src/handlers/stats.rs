//! `/v1/stats`, `/v1/entries`, `/v1/tags` and `/healthz`.

use axum::Json;
use axum::extract::{RawQuery, State};
use layercache_shared::Namespace;
use layercache_shared::api::{EntryList, Stats, TagList};

use super::query_param;
use crate::auth::{Access, Role};
use crate::error::ServerError;
use crate::routes::AppState;

/// `GET /v1/stats`.
pub async fn stats(State(state): State<AppState>) -> Result<Json<Stats>, ServerError> {
    let mut stats = state.store.blocking(|s| Ok(s.db.stats()?)).await?;
    stats.max_size = state.settings.max_size;
    Ok(Json(stats))
}

/// `GET /v1/entries[?namespace=NS]`: only namespaces the caller may read are listed; asking for
/// one it may not read is a 403.
pub async fn entries(
    State(state): State<AppState>,
    access: Access,
    RawQuery(query): RawQuery,
) -> Result<Json<EntryList>, ServerError> {
    let namespace: Option<Namespace> = query_param(query.as_deref(), "namespace")
        .map(|n| n.parse())
        .transpose()?;
    if let Some(ns) = &namespace {
        access.require(Role::Read, ns.as_str())?;
    }
    let mut entries = state
        .store
        .blocking(move |s| Ok(s.db.list_entries(namespace.as_ref())?))
        .await?;
    entries.retain(|e| access.can_read(&e.namespace));
    Ok(Json(EntryList { entries }))
}

/// `GET /v1/tags[?namespace=NS]`: the registry's tags, in the namespaces the caller may read.
pub async fn tags(
    State(state): State<AppState>,
    access: Access,
    RawQuery(query): RawQuery,
) -> Result<Json<TagList>, ServerError> {
    let namespace: Option<Namespace> = query_param(query.as_deref(), "namespace")
        .map(|n| n.parse())
        .transpose()?;
    if let Some(ns) = &namespace {
        access.require(Role::Read, ns.as_str())?;
    }
    let mut tags = state
        .store
        .blocking(move |s| Ok(s.db.list_tags(namespace.as_ref().map(Namespace::as_str))?))
        .await?;
    tags.retain(|t| access.allows(Role::Read, &t.repository));
    Ok(Json(TagList { tags }))
}

/// `GET /healthz`: the server accepts and answers requests.
pub async fn healthz() -> &'static str {
    "ok\n"
}
