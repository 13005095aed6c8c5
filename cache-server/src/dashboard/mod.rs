//! The operator dashboard: server-rendered HTML pages that need no script, no build step and
//! nothing from outside the binary, and reload themselves.
//!
//! - `GET /[?window=1h|24h][&namespace=NS]`: hit rate chart, lookup counts, bytes, time saved, disk
//!   use, largest entries and layers, recent builds, entries per namespace.
//! - `GET /entries/{ns}/{key}`: an entry's images as a parent → child tree, each image's layers with
//!   sizes, and the other entries sharing each layer.
//!
//! Numbers carry stable `id`s and exact `data-value`s (see [`html::card`]). The JSON endpoints of
//! [`crate::handlers`] serve the same data.
//!
//! - [`html`]: formatting, stat cards, the page shell (maud templates: every value escaped).
//! - [`overview`]: the main page.
//! - [`entry`]: an entry's page.
//! - [`chart`]: the inline SVG chart.

pub mod chart;
mod entry;
pub mod html;
mod overview;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Html;
use layercache_shared::Namespace;
use layercache_shared::api::{BuildList, EntrySummary, Largest, Stats, StatsHistory, TagSummary};

use crate::auth::{Access, Role};
use crate::error::ServerError;
use crate::handlers::entry_name;
use crate::handlers::insights::{load_entry_detail, quota_bytes, window_param};
use crate::handlers::query::{ApiQuery, HistoryQuery};
use crate::routes::AppState;
use crate::store::sqlite::now;

/// Entries listed per namespace on the main page before "more" (the JSON lists all).
const ENTRIES_PER_NAMESPACE: usize = 100;
/// Entries listed per namespace when the page shows every namespace: the page stays small (and
/// cheap) however many entries each holds; the namespace's own page lists more.
const ENTRIES_PER_NAMESPACE_ALL: usize = 10;
/// Registry tags listed (one page of `/v1/tags`; the page links the JSON for the rest).
const TAGS_SHOWN: u64 = 100;

/// Everything the main page shows, read in one blocking task.
struct Overview {
    stats: Stats,
    history: StatsHistory,
    largest: Largest,
    builds: BuildList,
    /// Per namespace shown: its name, entry count, bytes, and its first entries by key.
    sections: Vec<(Namespace, u64, u64, Vec<EntrySummary>)>,
    namespaces: Vec<String>,
    /// The first [`TAGS_SHOWN`] registry tags (of the filtered namespace, if any).
    tags: Vec<TagSummary>,
    /// Whether there are more tags than shown.
    more_tags: bool,
}

/// `GET /`.
pub async fn index(
    State(state): State<AppState>,
    access: Access,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Html<String>, ServerError> {
    let ns = q.namespace;
    // Without `?namespace=`, the page names every namespace: an admin of all of them only.
    access.require_view(Role::Admin, ns.as_ref())?;
    let window = window_param(q.window.as_deref())?;
    let quota = quota_bytes(&state.settings);
    let filter = ns.clone();
    let now = now();
    let o = state
        .store
        .blocking(move |s| {
            // Costs what the page shows: namespace totals are maintained rows, and each section
            // reads one page of its namespace.
            let mut totals = s.db.namespace_totals()?;
            totals.retain(|(n, _, _)| access.can_read(n));
            let namespaces: Vec<String> = totals.iter().map(|(n, _, _)| n.to_string()).collect();
            let per_namespace = if filter.is_some() {
                ENTRIES_PER_NAMESPACE
            } else {
                ENTRIES_PER_NAMESPACE_ALL
            };
            let mut sections = Vec::new();
            for (n, count, bytes) in totals {
                if filter.as_ref().is_some_and(|f| f != &n) {
                    continue;
                }
                let page = s.db.list_entries(Some(&n), None, per_namespace as u64)?;
                sections.push((n, count, bytes, page.items));
            }
            let tags =
                s.db.list_tags(filter.as_ref().map(|f| f.as_str()), None, TAGS_SHOWN)?;
            Ok(Overview {
                stats: s.db.stats()?,
                history: s
                    .db
                    .history(&window, filter.as_ref(), now)?
                    .ok_or_else(|| ServerError::Internal(format!("window `{window}` vanished")))?,
                largest: {
                    let mut l = s.db.largest(10)?;
                    l.entries.retain(|e| access.can_read(&e.namespace));
                    l
                },
                builds: s.db.builds(filter.as_ref(), 10)?,
                sections,
                namespaces,
                tags: tags.items,
                more_tags: tags.next.is_some(),
            })
        })
        .await?;
    let page = overview::render(&o, ns.as_ref().map(|n| n.as_str()), quota, now);
    Ok(Html(page.into_string()))
}

/// `GET /entries/{ns}/{key}`.
pub async fn entry_page(
    State(state): State<AppState>,
    access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Html<String>, ServerError> {
    let (ns, key) = entry_name(path)?;
    access.require(Role::Admin, ns.as_str())?;
    let detail = load_entry_detail(&state, &access, ns, key).await?;
    Ok(Html(entry::render(&detail, now()).into_string()))
}
