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
//! - [`html`]: escaping, formatting, the page shell.
//! - [`chart`]: the inline SVG chart.

pub mod chart;
pub mod html;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::Html;
use layercache_shared::api::{
    BuildList, EntryDetail, EntryRef, EntrySummary, ImageInfo, Largest, LayerInfo, Stats,
    StatsHistory, TagSummary,
};
use layercache_shared::{Digest, Namespace};

use crate::auth::{Access, Role};
use crate::error::ServerError;
use crate::handlers::entry_name;
use crate::handlers::insights::{load_entry_detail, namespace_param, quota_bytes, window_param};
use crate::routes::AppState;
use crate::store::sqlite::now;
use html::{ago, bytes, card, count, duration, esc, page, seg, short};

/// Entries listed per namespace on the main page before "more" (the JSON lists all).
const ENTRIES_PER_NAMESPACE: usize = 100;
/// Entries listed per namespace when the page shows every namespace: the page stays small (and
/// cheap) however many entries each holds; the namespace's own page lists more.
const ENTRIES_PER_NAMESPACE_ALL: usize = 10;

/// Everything the main page shows, read in one blocking task.
struct Overview {
    stats: Stats,
    history: StatsHistory,
    largest: Largest,
    builds: BuildList,
    /// Per namespace shown: its name, entry count, bytes, and its first entries by key.
    sections: Vec<(Namespace, u64, u64, Vec<EntrySummary>)>,
    namespaces: Vec<String>,
    /// Registry tags (of the filtered namespace, if any).
    tags: Vec<TagSummary>,
}

/// `GET /`.
pub async fn index(
    State(state): State<AppState>,
    access: Access,
    RawQuery(query): RawQuery,
) -> Result<Html<String>, ServerError> {
    let ns = namespace_param(query.as_deref())?;
    // Without `?namespace=`, the page names every namespace: an admin of all of them only.
    access.require_view(Role::Admin, ns.as_ref())?;
    let window = window_param(query.as_deref())?;
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
                tags: s.db.list_tags(filter.as_ref().map(|f| f.as_str()))?,
            })
        })
        .await?;
    Ok(Html(render_index(
        &o,
        ns.as_ref().map(|n| n.as_str()),
        quota,
        now,
    )))
}

fn render_index(o: &Overview, ns: Option<&str>, quota: Option<u64>, now: u64) -> String {
    let s = &o.stats;
    let h = &o.history;
    let mut b = String::new();
    b.push_str("<h1>Cache overview</h1>");

    // Filter form: plain GET, works without script.
    b.push_str(
        r#"<form class="filter" method="get" action="/"><label>Window <select name="window">"#,
    );
    for w in ["1h", "24h"] {
        let sel = if h.window == w { " selected" } else { "" };
        let _ = write!(b, r#"<option value="{w}"{sel}>last {w}</option>"#);
    }
    b.push_str(r#"</select></label><label>Namespace <select name="namespace"><option value="">all</option>"#);
    for n in &o.namespaces {
        let sel = if Some(n.as_str()) == ns {
            " selected"
        } else {
            ""
        };
        let _ = write!(b, r#"<option value="{}"{sel}>{}</option>"#, esc(n), esc(n));
    }
    b.push_str(r#"</select></label><button type="submit">Show</button></form>"#);

    // Window totals and chart.
    let (w_hits, w_misses, w_builds, w_saved) = h.points.iter().fold((0, 0, 0, 0.0), |a, p| {
        (
            a.0 + p.hits,
            a.1 + p.misses,
            a.2 + p.builds,
            a.3 + p.seconds_saved,
        )
    });
    let scope = match ns {
        Some(n) => format!("namespace {n}, last {}", h.window),
        None => format!("all namespaces, last {}", h.window),
    };
    let _ = write!(b, "<h2>Hit rate — {}</h2>", esc(&scope));
    b.push_str(r#"<div class="grid">"#);
    let rate = rate_text(w_hits, w_misses);
    card(&mut b, "window-hit-rate", "hit rate", &rate.0, &rate.1, "");
    card(
        &mut b,
        "window-hits",
        "hits",
        &count(w_hits),
        &w_hits.to_string(),
        "",
    );
    card(
        &mut b,
        "window-misses",
        "misses",
        &count(w_misses),
        &w_misses.to_string(),
        "",
    );
    card(
        &mut b,
        "window-builds",
        "builds reported",
        &count(w_builds),
        &w_builds.to_string(),
        "",
    );
    card(
        &mut b,
        "window-seconds-saved",
        "time saved",
        &duration(w_saved),
        &format!("{w_saved:.3}"),
        "",
    );
    b.push_str("</div>");
    let _ = write!(
        b,
        r#"<div class="panel" style="margin-top:12px">{}<div class="legend"><i style="background:#2f9e63"></i>hit rate (line) and hits<i style="background:#d9534f;opacity:.5"></i>misses</div></div>"#,
        chart::hit_rate_svg(h)
    );

    // All-time counters (= /v1/stats).
    b.push_str("<h2>Lookups since the start</h2><div class=\"grid\">");
    let all_rate = rate_text(s.hits, s.misses);
    card(
        &mut b,
        "stat-hit-rate",
        "hit rate",
        &all_rate.0,
        &all_rate.1,
        "",
    );
    for (id, label, v) in [
        ("stat-hits", "hits", s.hits),
        ("stat-misses", "misses", s.misses),
        ("stat-hits-exact", "exact hits", s.hits_exact),
        ("stat-hits-fallback", "fallback hits", s.hits_fallback),
        ("stat-hits-prefix", "prefix hits", s.hits_prefix),
    ] {
        card(&mut b, id, label, &count(v), &v.to_string(), "");
    }
    b.push_str("</div><h2>Transfer and time saved</h2><div class=\"grid\">");
    for (id, label, v) in [
        ("stat-bytes-served", "bytes served", s.bytes_served),
        ("stat-bytes-received", "bytes received", s.bytes_received),
        (
            "stat-bytes-deduplicated",
            "bytes deduplicated",
            s.bytes_deduplicated,
        ),
    ] {
        card(&mut b, id, label, &bytes(v), &v.to_string(), "");
    }
    card(
        &mut b,
        "stat-uploads-failed",
        "failed uploads",
        &count(s.uploads_failed),
        &s.uploads_failed.to_string(),
        "",
    );
    let bl = &o.builds;
    card(
        &mut b,
        "stat-builds",
        "builds reported",
        &count(bl.builds),
        &bl.builds.to_string(),
        "all namespaces",
    );
    card(
        &mut b,
        "stat-seconds-saved",
        "build time saved",
        &duration(bl.seconds_saved),
        &format!("{:.3}", bl.seconds_saved),
        "vs. the last cold build of each key",
    );

    // Disk.
    b.push_str("</div><h2>Disk</h2><div class=\"grid\">");
    let (quota_shown, quota_value, note) = match quota {
        Some(q) => {
            let pct = s.stored_bytes as f64 * 100.0 / q.max(1) as f64;
            (bytes(q), q.to_string(), format!("{pct:.1}% used"))
        }
        None => (
            "no quota".to_string(),
            String::new(),
            "--max-size not set".to_string(),
        ),
    };
    card(
        &mut b,
        "stat-stored-bytes",
        "stored",
        &bytes(s.stored_bytes),
        &s.stored_bytes.to_string(),
        "",
    );
    card(
        &mut b,
        "stat-quota-bytes",
        "quota",
        &quota_shown,
        &quota_value,
        &note,
    );
    card(
        &mut b,
        "stat-blobs",
        "blobs",
        &count(s.blobs),
        &s.blobs.to_string(),
        "layers and configs",
    );
    card(
        &mut b,
        "stat-entries",
        "entries",
        &count(s.entries),
        &s.entries.to_string(),
        "",
    );
    b.push_str("</div>");
    if let Some(q) = quota {
        let pct = (s.stored_bytes as f64 * 100.0 / q.max(1) as f64).min(100.0);
        let _ = write!(
            b,
            r#"<div class="bar" title="{pct:.1}% of quota"><span style="width:{pct:.1}%"></span></div>"#
        );
    }

    // Largest.
    b.push_str(r#"<div class="cols"><div><h2>Largest entries</h2>"#);
    entries_table(&mut b, &o.largest.entries, true, now, "largest-entries");
    b.push_str("</div><div><h2>Largest layers</h2>");
    b.push_str(r#"<table id="largest-layers"><tr><th>layer</th><th class="num">size</th><th class="num">entries</th></tr>"#);
    for l in &o.largest.layers {
        let _ = write!(
            b,
            r#"<tr><td class="mono" title="{}">{}</td><td class="num" data-value="{}">{}</td><td class="num">{}</td></tr>"#,
            l.diff_id,
            short(&l.diff_id),
            l.size,
            bytes(l.size),
            l.entries
        );
    }
    if o.largest.layers.is_empty() {
        b.push_str(r#"<tr><td colspan="3" class="muted">no layers stored</td></tr>"#);
    }
    b.push_str("</table></div></div>");

    // Builds.
    b.push_str("<h2>Recent builds</h2>");
    b.push_str(r#"<table id="recent-builds"><tr><th>when</th><th>namespace</th><th>key</th><th>cache</th><th class="num">took</th><th class="num">saved</th></tr>"#);
    for r in &bl.recent {
        let _ = write!(
            b,
            r#"<tr><td>{}</td><td>{}</td><td class="mono">{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            ago(r.at, now),
            esc(r.namespace.as_str()),
            esc(r.key.as_str()),
            r.cache.as_str(),
            duration(r.total_seconds),
            duration(r.seconds_saved)
        );
    }
    if bl.recent.is_empty() {
        b.push_str(r#"<tr><td colspan="6" class="muted">no build reports yet (runners send them to POST /v1/builds)</td></tr>"#);
    }
    b.push_str("</table>");

    // Entries per namespace.
    b.push_str("<h2>Entries</h2>");
    if o.sections.is_empty() {
        b.push_str(r#"<p class="muted">No entries stored.</p>"#);
    }
    for (n, count, total, shown) in &o.sections {
        let n = n.as_str();
        let _ = write!(
            b,
            r#"<h3>{} <span class="muted">· {} entries · {}</span></h3>"#,
            esc(n),
            count,
            bytes(*total)
        );
        entries_table(&mut b, shown, false, now, &format!("entries-{}", seg(n)));
        let more = count.saturating_sub(shown.len() as u64);
        if more > 0 {
            let _ = write!(
                b,
                r#"<p class="muted">{} more: <a href="/?namespace={}">this namespace</a> · <a href="/v1/entries?namespace={}">all as JSON</a> (paged, see <code>next_cursor</code>)</p>"#,
                more,
                seg(n),
                seg(n)
            );
        }
    }
    tags_table(&mut b, &o.tags, now);
    page("layercache", &b)
}

/// The registry's tags: what BuildKit caches and `docker push` stored through `/v2/`.
fn tags_table(b: &mut String, tags: &[TagSummary], now: u64) {
    b.push_str(r#"<h2>Registry tags</h2><table id="registry-tags"><tr><th>repository</th><th>tag</th><th>manifest</th><th class="num">size</th><th class="num">pulls</th><th>pushed</th><th>last used</th></tr>"#);
    for t in tags {
        let _ = write!(
            b,
            r#"<tr><td>{}</td><td class="mono">{}</td><td class="mono" title="{}">{}</td><td class="num" data-value="{}">{}</td><td class="num" data-value="{}">{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&t.repository),
            esc(&t.tag),
            esc(&t.media_type),
            short(&t.digest),
            t.total_size,
            bytes(t.total_size),
            t.hits,
            count(t.hits),
            ago(t.updated, now),
            ago(t.last_used, now)
        );
    }
    if tags.is_empty() {
        b.push_str(r#"<tr><td colspan="7" class="muted">none (pushed through /v2/ by docker push or BuildKit's registry cache)</td></tr>"#);
    }
    b.push_str("</table>");
}

/// `("87.5%", "0.875")`, or a dash when nothing was looked up.
fn rate_text(hits: u64, misses: u64) -> (String, String) {
    let total = hits + misses;
    if total == 0 {
        return ("—".into(), String::new());
    }
    let r = hits as f64 / total as f64;
    (format!("{:.1}%", r * 100.0), format!("{r:.4}"))
}

/// A table of entries linking to their pages.
fn entries_table(b: &mut String, entries: &[EntrySummary], with_ns: bool, now: u64, id: &str) {
    let _ = write!(b, r#"<table id="{}"><tr>"#, esc(id));
    if with_ns {
        b.push_str("<th>namespace</th>");
    }
    b.push_str(r#"<th>key</th><th class="num">size</th><th class="num">images</th><th class="num">hits</th><th>last used</th></tr>"#);
    for e in entries {
        let href = format!(
            "/entries/{}/{}",
            seg(e.namespace.as_str()),
            seg(e.key.as_str())
        );
        b.push_str("<tr>");
        if with_ns {
            let _ = write!(b, "<td>{}</td>", esc(e.namespace.as_str()));
        }
        let _ = write!(
            b,
            r#"<td class="mono"><a href="{}">{}</a></td><td class="num" data-value="{}">{}</td><td class="num">{}</td><td class="num" data-value="{}">{}</td><td>{}</td></tr>"#,
            esc(&href),
            esc(e.key.as_str()),
            e.total_size,
            bytes(e.total_size),
            e.images,
            e.hits,
            count(e.hits),
            ago(e.last_used, now)
        );
    }
    if entries.is_empty() {
        let cols = if with_ns { 6 } else { 5 };
        let _ = write!(
            b,
            r#"<tr><td colspan="{cols}" class="muted">none</td></tr>"#
        );
    }
    b.push_str("</table>");
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
    Ok(Html(render_entry(&detail, now())))
}

fn render_entry(d: &EntryDetail, now: u64) -> String {
    let m = &d.manifest;
    let mut b = String::new();
    let _ = write!(
        b,
        r#"<p><a href="/">← overview</a></p><h1>{} <span class="muted">/</span> <span class="mono">{}</span></h1>"#,
        esc(m.namespace.as_str()),
        esc(m.key.as_str())
    );
    b.push_str(r#"<div class="grid">"#);
    card(
        &mut b,
        "entry-size",
        "size",
        &bytes(m.total_size),
        &m.total_size.to_string(),
        "distinct blobs",
    );
    card(
        &mut b,
        "entry-images",
        "images",
        &m.images.len().to_string(),
        &m.images.len().to_string(),
        "",
    );
    card(
        &mut b,
        "entry-hits",
        "hits",
        &count(m.hits),
        &m.hits.to_string(),
        "",
    );
    card(
        &mut b,
        "entry-last-used",
        "last used",
        &ago(m.last_used, now),
        &m.last_used.to_string(),
        "",
    );
    card(
        &mut b,
        "entry-created",
        "stored",
        &ago(m.created, now),
        &m.created.to_string(),
        "",
    );
    b.push_str("</div><h2>Images (parent → child)</h2>");

    let shares: HashMap<Digest, &[EntryRef]> = d
        .shares
        .iter()
        .map(|s| (s.diff_id, s.shared_with.as_slice()))
        .collect();
    let ids: HashSet<Digest> = m.images.iter().map(|i| i.id).collect();
    let mut children: HashMap<Option<Digest>, Vec<&ImageInfo>> = HashMap::new();
    for img in &m.images {
        let parent = img.parent.filter(|p| ids.contains(p) && *p != img.id);
        children.entry(parent).or_default().push(img);
    }
    b.push_str(r#"<ul class="tree root">"#);
    let mut seen = HashSet::new();
    tree(&mut b, &children, None, &shares, &mut seen);
    b.push_str("</ul>");
    page(&format!("{} {} · layercache", m.namespace, m.key), &b)
}

/// Renders the images whose parent is `parent`. A run of single children stays at one level (a
/// Dockerfile's chain reads top to bottom instead of indenting once per step); only a parent with
/// several children opens a nested list.
fn tree(
    b: &mut String,
    children: &HashMap<Option<Digest>, Vec<&ImageInfo>>,
    parent: Option<&ImageInfo>,
    shares: &HashMap<Digest, &[EntryRef]>,
    seen: &mut HashSet<Digest>,
) {
    let Some(list) = children.get(&parent.map(|p| p.id)) else {
        return;
    };
    for first in list {
        let mut cur: &ImageInfo = first;
        let mut cur_parent = parent;
        loop {
            if !seen.insert(cur.id) {
                break; // a cycle in stored parents would otherwise loop forever
            }
            image_item(b, cur, cur_parent, shares);
            match children.get(&Some(cur.id)).map(Vec::as_slice) {
                Some([only]) => {
                    cur_parent = Some(cur);
                    cur = only;
                }
                Some(_) => {
                    b.push_str(r#"<li><ul class="tree">"#);
                    tree(b, children, Some(cur), shares, seen);
                    b.push_str("</ul></li>");
                    break;
                }
                None => break,
            }
        }
    }
}

/// One image: id, tags, sizes, and the layers it adds over its parent with their sharing.
fn image_item(
    b: &mut String,
    img: &ImageInfo,
    parent: Option<&ImageInfo>,
    shares: &HashMap<Digest, &[EntryRef]>,
) {
    let inherited: HashSet<Digest> = parent
        .map(|p| p.layers.iter().map(|l| l.diff_id).collect())
        .unwrap_or_default();
    let _ = write!(
        b,
        r#"<li><div class="panel image" id="image-{}" data-parent="{}">"#,
        img.id.hex(),
        parent.map(|p| p.id.hex()).unwrap_or_default(),
    );
    if let Some(p) = parent {
        let _ = write!(
            b,
            r#"<div class="muted child-of">↳ child of <span class="mono">{}</span></div>"#,
            short(&p.id)
        );
    }
    let _ = write!(
        b,
        r#"<b class="mono" title="{}">{}</b> "#,
        img.id,
        short(&img.id)
    );
    for t in &img.tags {
        let _ = write!(b, r#"<span class="tag">{}</span>"#, esc(t));
    }
    let own: Vec<(usize, &LayerInfo)> = img
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| !inherited.contains(&l.diff_id))
        .collect();
    let own_bytes: u64 = own.iter().map(|(_, l)| l.size).sum();
    let _ = write!(
        b,
        r#" <span class="muted">· {} layers ({} from parent) · {} added · config {}</span>"#,
        img.layers.len(),
        img.layers.len() - own.len(),
        bytes(own_bytes),
        bytes(img.config_size)
    );
    if own.is_empty() {
        b.push_str(r#"<div class="muted" style="margin-top:6px">no new layer (a metadata-only step)</div></div></li>"#);
        return;
    }
    b.push_str(r#"<table style="margin-top:8px"><tr><th>#</th><th>layer</th><th class="num">size</th><th>shared with</th></tr>"#);
    for (i, l) in own {
        let _ = write!(
            b,
            r#"<tr><td>{}</td><td class="mono" title="{}">{}</td><td class="num" data-value="{}">{}</td><td>"#,
            i + 1,
            l.diff_id,
            short(&l.diff_id),
            l.size,
            bytes(l.size)
        );
        match shares.get(&l.diff_id) {
            Some(refs) => {
                for (j, r) in refs.iter().enumerate() {
                    if j > 0 {
                        b.push_str(", ");
                    }
                    let href = format!(
                        "/entries/{}/{}",
                        seg(r.namespace.as_str()),
                        seg(r.key.as_str())
                    );
                    let _ = write!(
                        b,
                        r#"<a href="{}">{}/{}</a>"#,
                        esc(&href),
                        esc(r.namespace.as_str()),
                        esc(r.key.as_str())
                    );
                }
            }
            None => b.push_str(r#"<span class="muted">only this entry</span>"#),
        }
        b.push_str("</td></tr>");
    }
    b.push_str("</table></div></li>");
}

#[cfg(test)]
mod tests {
    use layercache_shared::api::{EntryManifest, LayerInfo};

    use super::*;

    #[test]
    fn entry_page_nests_children_under_parents_and_escapes_tags() {
        let l1 = Digest::of(b"l1");
        let l2 = Digest::of(b"l2");
        let a = ImageInfo {
            id: Digest::of(b"a"),
            parent: None,
            tags: vec!["<b>evil</b>:1".into()],
            config_size: 10,
            layers: vec![LayerInfo {
                diff_id: l1,
                size: 5,
            }],
        };
        let child = ImageInfo {
            id: Digest::of(b"b"),
            parent: Some(a.id),
            tags: vec![],
            config_size: 10,
            layers: vec![
                LayerInfo {
                    diff_id: l1,
                    size: 5,
                },
                LayerInfo {
                    diff_id: l2,
                    size: 7,
                },
            ],
        };
        let d = EntryDetail {
            manifest: EntryManifest {
                namespace: "acme/web".parse().unwrap(),
                key: "k".parse().unwrap(),
                images: vec![child.clone(), a.clone()],
                total_size: 32,
                created: 1,
                last_used: 1,
                hits: 0,
                prefixes: vec![],
            },
            shares: vec![],
        };
        let html = render_entry(&d, 100);
        assert!(!html.contains("<b>evil"), "tags are escaped");
        assert!(html.contains("&lt;b&gt;evil&lt;/b&gt;:1"));
        let pa = html.find(&format!("image-{}", a.id.hex())).unwrap();
        let pb = html.find(&format!("image-{}", child.id.hex())).unwrap();
        assert!(pa < pb, "the parent comes first");
        assert!(
            html[pa..].contains("child of"),
            "the child names its parent"
        );
        assert!(
            html.contains("(1 from parent)"),
            "inherited layers are summarised"
        );
    }
}
