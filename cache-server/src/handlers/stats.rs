//! `/v1/stats`, `/v1/entries`, `/v1/tags` and `/healthz`.

use axum::Json;
use axum::extract::{RawQuery, State};
use layercache_shared::Namespace;
use layercache_shared::api::{EntryList, Stats, TagList};

use super::query_param;
use crate::auth::{Access, Role};
use crate::error::ServerError;
use crate::routes::AppState;
use crate::store::sqlite::{Cursor, DEFAULT_PAGE, MAX_PAGE};

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
    RawQuery(query): RawQuery,
) -> Result<Json<EntryList>, ServerError> {
    let q = query.as_deref();
    let namespace: Option<Namespace> = query_param(q, "namespace")
        .filter(|n| !n.is_empty())
        .map(|n| n.parse())
        .transpose()?;
    if let Some(ns) = &namespace {
        access.require(Role::Read, ns.as_str())?;
    }
    let limit = match query_param(q, "limit").filter(|l| !l.is_empty()) {
        Some(l) => l.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ServerError::bad_request(format!(
                "`limit={l}` is not a positive whole number: ask for 1 to {MAX_PAGE} entries"
            ))
        })?,
        None => DEFAULT_PAGE,
    };
    let cursor = match query_param(q, "cursor").filter(|c| !c.is_empty()) {
        Some(c) => Some(Cursor::decode(&c).ok_or_else(|| {
            ServerError::bad_request(
                "the `cursor` is not one this server returned: pass `next_cursor` of the \
                 previous page unchanged",
            )
        })?),
        None => None,
    };
    let page = state
        .store
        .blocking(move |s| {
            Ok(s.db.list_entries(namespace.as_ref(), cursor.as_ref(), limit)?)
        })
        .await?;
    let mut entries = page.items;
    entries.retain(|e| access.can_read(&e.namespace));
    Ok(Json(EntryList {
        entries,
        next_cursor: page.next.map(|c| c.encode()),
    }))
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
