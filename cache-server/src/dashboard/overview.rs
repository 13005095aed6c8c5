//! The main page (`GET /`): a maud template over [`Overview`]. Sections in order: the filter form,
//! the window's hit rate and chart, all-time lookups, transfer and time saved, disk, the largest
//! entries and layers, recent builds, entries per namespace, registry tags.

use layercache_shared::api::{EntrySummary, TagSummary};
use maud::{Markup, html};

use super::Overview;
use super::chart;
use super::html::{ago, bytes, card, count, duration, page, seg, short};

/// The page of `o`, filtered to namespace `ns` if given, with the quota `--max-size` set.
pub(super) fn render(o: &Overview, ns: Option<&str>, quota: Option<u64>, now: u64) -> Markup {
    let s = &o.stats;
    let h = &o.history;
    let bl = &o.builds;
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
    let rate = rate_text(w_hits, w_misses);
    let all_rate = rate_text(s.hits, s.misses);
    let (quota_shown, quota_value, quota_note) = match quota {
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
    let body = html! {
        h1 { "Cache overview" }
        // Filter form: plain GET, works without script.
        form.filter method="get" action="/" {
            label {
                "Window "
                select name="window" {
                    @for w in ["1h", "24h"] {
                        option value=(w) selected[h.window == w] { "last " (w) }
                    }
                }
            }
            label {
                "Namespace "
                select name="namespace" {
                    option value="" { "all" }
                    @for n in &o.namespaces {
                        option value=(n) selected[Some(n.as_str()) == ns] { (n) }
                    }
                }
            }
            button type="submit" { "Show" }
        }

        h2 { "Hit rate — " (scope) }
        div.grid {
            (card("window-hit-rate", "hit rate", &rate.0, &rate.1, ""))
            (card("window-hits", "hits", &count(w_hits), &w_hits.to_string(), ""))
            (card("window-misses", "misses", &count(w_misses), &w_misses.to_string(), ""))
            (card("window-builds", "builds reported", &count(w_builds), &w_builds.to_string(), ""))
            (card("window-seconds-saved", "time saved", &duration(w_saved), &format!("{w_saved:.3}"), ""))
        }
        div.panel style="margin-top:12px" {
            (chart::hit_rate_svg(h))
            div.legend {
                i style="background:#2f9e63" {} "hit rate (line) and hits"
                i style="background:#d9534f;opacity:.5" {} "misses"
            }
        }

        // All-time counters (= /v1/stats).
        h2 { "Lookups since the start" }
        div.grid {
            (card("stat-hit-rate", "hit rate", &all_rate.0, &all_rate.1, ""))
            @for (id, label, v) in [
                ("stat-hits", "hits", s.hits),
                ("stat-misses", "misses", s.misses),
                ("stat-hits-exact", "exact hits", s.hits_exact),
                ("stat-hits-fallback", "fallback hits", s.hits_fallback),
                ("stat-hits-prefix", "prefix hits", s.hits_prefix),
            ] {
                (card(id, label, &count(v), &v.to_string(), ""))
            }
        }
        h2 { "Transfer and time saved" }
        div.grid {
            @for (id, label, v) in [
                ("stat-bytes-served", "bytes served", s.bytes_served),
                ("stat-bytes-received", "bytes received", s.bytes_received),
                ("stat-bytes-deduplicated", "bytes deduplicated", s.bytes_deduplicated),
            ] {
                (card(id, label, &bytes(v), &v.to_string(), ""))
            }
            (card("stat-uploads-failed", "failed uploads", &count(s.uploads_failed), &s.uploads_failed.to_string(), ""))
            (card("stat-builds", "builds reported", &count(bl.builds), &bl.builds.to_string(), "all namespaces"))
            (card("stat-seconds-saved", "build time saved", &duration(bl.seconds_saved), &format!("{:.3}", bl.seconds_saved), "vs. the last cold build of each key"))
        }

        h2 { "Disk" }
        div.grid {
            (card("stat-stored-bytes", "stored", &bytes(s.stored_bytes), &s.stored_bytes.to_string(), ""))
            (card("stat-quota-bytes", "quota", &quota_shown, &quota_value, &quota_note))
            (card("stat-blobs", "blobs", &count(s.blobs), &s.blobs.to_string(), "layers and configs"))
            (card("stat-entries", "entries", &count(s.entries), &s.entries.to_string(), ""))
        }
        @if let Some(q) = quota {
            @let pct = (s.stored_bytes as f64 * 100.0 / q.max(1) as f64).min(100.0);
            div.bar title=(format!("{pct:.1}% of quota")) {
                span style=(format!("width:{pct:.1}%")) {}
            }
        }

        div.cols {
            div {
                h2 { "Largest entries" }
                (entries_table(&o.largest.entries, true, now, "largest-entries"))
            }
            div {
                h2 { "Largest layers" }
                table #largest-layers {
                    tr { th { "layer" } th.num { "size" } th.num { "entries" } }
                    @for l in &o.largest.layers {
                        tr {
                            td.mono title=(l.diff_id) { (short(&l.diff_id)) }
                            td.num data-value=(l.size) { (bytes(l.size)) }
                            td.num { (l.entries) }
                        }
                    }
                    @if o.largest.layers.is_empty() {
                        tr { td.muted colspan="3" { "no layers stored" } }
                    }
                }
            }
        }

        h2 { "Recent builds" }
        table #recent-builds {
            tr {
                th { "when" } th { "namespace" } th { "key" } th { "cache" }
                th.num { "took" } th.num { "saved" }
            }
            @for r in &bl.recent {
                tr {
                    td { (ago(r.at, now)) }
                    td { (r.namespace) }
                    td.mono { (r.key) }
                    td { (r.cache.as_str()) }
                    td.num { (duration(r.total_seconds)) }
                    td.num { (duration(r.seconds_saved)) }
                }
            }
            @if bl.recent.is_empty() {
                tr { td.muted colspan="6" { "no build reports yet (runners send them to POST /v1/builds)" } }
            }
        }

        h2 { "Entries" }
        @if o.sections.is_empty() {
            p.muted { "No entries stored." }
        }
        @for (n, count, total, shown) in &o.sections {
            @let n = n.as_str();
            h3 { (n) " " span.muted { "· " (count) " entries · " (bytes(*total)) } }
            (entries_table(shown, false, now, &format!("entries-{}", seg(n))))
            @let more = count.saturating_sub(shown.len() as u64);
            @if more > 0 {
                p.muted {
                    (more) " more: "
                    a href=(format!("/?namespace={}", seg(n))) { "this namespace" }
                    " · "
                    a href=(format!("/v1/entries?namespace={}", seg(n))) { "all as JSON" }
                    " (paged, see " code { "next_cursor" } ")"
                }
            }
        }
        (tags_table(&o.tags, o.more_tags, ns, now))
    };
    page("layercache", body)
}

/// The registry's tags: what BuildKit caches and `docker push` stored through `/v2/`.
fn tags_table(tags: &[TagSummary], more: bool, ns: Option<&str>, now: u64) -> Markup {
    let json = match ns {
        Some(n) => format!("/v1/tags?namespace={}", seg(n)),
        None => "/v1/tags".to_string(),
    };
    html! {
        h2 { "Registry tags" }
        table #registry-tags {
            tr {
                th { "repository" } th { "tag" } th { "manifest" } th.num { "size" }
                th.num { "pulls" } th { "pushed" } th { "last used" }
            }
            @for t in tags {
                tr {
                    td { (t.repository) }
                    td.mono { (t.tag) }
                    td.mono title=(t.media_type) { (short(&t.digest)) }
                    td.num data-value=(t.total_size) { (bytes(t.total_size)) }
                    td.num data-value=(t.hits) { (count(t.hits)) }
                    td { (ago(t.updated, now)) }
                    td { (ago(t.last_used, now)) }
                }
            }
            @if tags.is_empty() {
                tr { td.muted colspan="7" { "none (pushed through /v2/ by docker push or BuildKit's registry cache)" } }
            }
        }
        @if more {
            p.muted {
                "More tags: " a href=(json) { "all as JSON" } " (paged, see " code { "next_cursor" } ")"
            }
        }
    }
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
fn entries_table(entries: &[EntrySummary], with_ns: bool, now: u64, id: &str) -> Markup {
    html! {
        table id=(id) {
            tr {
                @if with_ns { th { "namespace" } }
                th { "key" } th.num { "size" } th.num { "images" } th.num { "hits" } th { "last used" }
            }
            @for e in entries {
                tr {
                    @if with_ns { td { (e.namespace) } }
                    td.mono {
                        a href=(format!("/entries/{}/{}", seg(e.namespace.as_str()), seg(e.key.as_str()))) { (e.key) }
                    }
                    td.num data-value=(e.total_size) { (bytes(e.total_size)) }
                    td.num { (e.images) }
                    td.num data-value=(e.hits) { (count(e.hits)) }
                    td { (ago(e.last_used, now)) }
                }
            }
            @if entries.is_empty() {
                tr { td.muted colspan=(if with_ns { 6 } else { 5 }) { "none" } }
            }
        }
    }
}
