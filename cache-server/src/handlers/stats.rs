//! `/v1/stats`, `/v1/entries`, `/v1/tags` and `/healthz`.

use axum::Json;
use axum::extract::State;
use layercache_shared::Namespace;
use layercache_shared::api::{EntryList, Stats, TagList};

use super::query::{ApiQuery, PageQuery};
use crate::auth::{Access, Role};
use crate::error::ServerError;
use crate::routes::AppState;
use crate::store::sqlite::{DEFAULT_PAGE, MAX_PAGE};

/// `GET /v1/stats`.
pub async fn stats(State(state): State<AppState>) -> Result<Json<Stats>, ServerError> {
    let mut stats = state.store.blocking(|s| Ok(s.db.stats()?)).await?;
    stats.max_size = state.settings.max_size;
    Ok(Json(stats))
}

/// `GET /v1/entries[?namespace=NS][&limit=N][&cursor=C]`: one page of entries sorted by namespace
/// and key ([`DEFAULT_PAGE`] unless `limit` says, at most [`MAX_PAGE`]); `next_cursor` in the
/// answer fetches the next. Only namespaces the caller may read are listed (a page may come back
/// shorter than `limit`, its cursor still moves on); asking for one it may not read is a 403.
pub async fn entries(
    State(state): State<AppState>,
    access: Access,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<EntryList>, ServerError> {
    if let Some(ns) = &q.namespace {
        access.require(Role::Read, ns.as_str())?;
    }
    let limit = q.limit(DEFAULT_PAGE, MAX_PAGE)?;
    let page = state
        .store
        .blocking(move |s| {
            let cursor = q.cursor.map(|c| c.0);
            Ok(s.db.list_entries(q.namespace.as_ref(), cursor.as_ref(), limit)?)
        })
        .await?;
    let mut entries = page.items;
    entries.retain(|e| access.can_read(&e.namespace));
    Ok(Json(EntryList {
        entries,
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

/// `GET /v1/tags[?namespace=NS][&limit=N][&cursor=C]`: one page of the registry's tags sorted by
/// repository and tag, paged like `/v1/entries`, in the namespaces the caller may read.
pub async fn tags(
    State(state): State<AppState>,
    access: Access,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<TagList>, ServerError> {
    if let Some(ns) = &q.namespace {
        access.require(Role::Read, ns.as_str())?;
    }
    let limit = q.limit(DEFAULT_PAGE, MAX_PAGE)?;
    let page = state
        .store
        .blocking(move |s| {
            let cursor = q.cursor.map(|c| c.0);
            Ok(s.db.list_tags(
                q.namespace.as_ref().map(Namespace::as_str),
                cursor.as_ref(),
                limit,
            )?)
        })
        .await?;
    let mut tags = page.items;
    tags.retain(|t| access.allows(Role::Read, &t.repository));
    Ok(Json(TagList {
        tags,
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

/// `GET /healthz`: the server accepts and answers requests.
pub async fn healthz() -> &'static str {
    "ok\n"
}
