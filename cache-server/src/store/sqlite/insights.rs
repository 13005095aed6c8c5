//! What operators look at (issue 4): lookup activity over time, build reports and time saved, the
//! largest entries and layers, which entries share a layer, and the all-time totals `/metrics`
//! exports.
//!
//! Tables (migration "issue 4"):
//! - `activity (width, start, namespace, kind, count)`: event counts in buckets of `width` seconds
//!   (60 and 3600). Every event is added to both widths: minute rows are kept 2 hours (the `1h`
//!   window), hour rows 30 days (the `24h` window), so a history query reads at most
//!   60 or 24 buckets × namespaces × kinds rows, and the table stays bounded however long the
//!   server runs. Old rows go when newer ones are written.
//! - `lookup_totals (namespace, kind, count)`: all-time lookup counts for `/metrics`. Never pruned,
//!   so the first-seen order of namespaces (rowid) is stable and the top-N label set never
//!   reshuffles: each exported series only grows, as a Prometheus counter must.
//! - `builds`: one row per build report, kept 30 days; the newest `miss` of a key is the baseline
//!   time saved is computed from.
//!
//! Every writer takes `now` so tests drive time explicitly.

use layercache_shared::Namespace;
use layercache_shared::api::{
    BuildCache, BuildList, BuildRecorded, BuildReport, BuildSummary, EntryDetail, EntryRef,
    EntrySummary, HistoryPoint, Largest, LayerShares, LayerUsage, MatchKind, StatsHistory,
};
use rusqlite::{Connection, OptionalExtension, params};

use super::{Db, add_counter_tx, conv_err, counter, digest_at, sql_u64, u64_at};

/// Bucket widths and how long their rows are kept, in seconds.
const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
const MINUTES_KEPT: u64 = 2 * HOUR;
const HOURS_KEPT: u64 = 30 * 24 * HOUR;
/// Build reports older than this are dropped (with them, baselines that old).
const BUILDS_KEPT: u64 = 30 * 24 * HOUR;
/// Cap on the entries listed as sharing one layer.
const SHARES_CAP: i64 = 50;

/// The windows `GET /v1/stats/history` accepts: name, bucket width, bucket count.
pub const HISTORY_WINDOWS: &[(&str, u64, u64)] = &[("1h", MINUTE, 60), ("24h", HOUR, 24)];

/// What an `activity` row counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityKind {
    /// A lookup hit, by how it matched.
    Lookup(MatchKind),
    /// An image GET that found its entry (no match kind).
    Get,
    Miss,
    /// A build report.
    Build,
    /// Milliseconds saved by reported builds (a sum, not a count).
    MsSaved,
}

impl ActivityKind {
    /// The `kind` column value.
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityKind::Lookup(k) => k.as_str(),
            ActivityKind::Get => "get",
            ActivityKind::Miss => "miss",
            ActivityKind::Build => "build",
            ActivityKind::MsSaved => "ms_saved",
        }
    }
}

/// Adds `by` to `kind` of `namespace` in the buckets holding `now`, and drops expired buckets.
fn add_activity(
    conn: &Connection,
    now: u64,
    namespace: &str,
    kind: ActivityKind,
    by: u64,
) -> rusqlite::Result<()> {
    let mut up = conn.prepare_cached(
        "INSERT INTO activity (width, start, namespace, kind, count) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (width, start, namespace, kind) DO UPDATE SET count = count + excluded.count",
    )?;
    let mut prune = conn.prepare_cached("DELETE FROM activity WHERE width = ?1 AND start < ?2")?;
    for (width, kept) in [(MINUTE, MINUTES_KEPT), (HOUR, HOURS_KEPT)] {
        let start = now - now % width;
        up.execute(params![
            sql_u64(width),
            sql_u64(start),
            namespace,
            kind.as_str(),
            sql_u64(by)
        ])?;
        prune.execute(params![sql_u64(width), sql_u64(now.saturating_sub(kept))])?;
    }
    Ok(())
}

/// Counts a hit on entry `id` in its namespace's activity and all-time totals (inside
/// `record_hit`'s transaction).
pub(super) fn count_lookup_tx(
    conn: &Connection,
    id: i64,
    kind: Option<MatchKind>,
    now: u64,
) -> rusqlite::Result<()> {
    // The entry may have been replaced by a concurrent re-PUT since it was found: the hit still
    // counts in the totals, only its per-namespace activity is lost.
    let Some(ns): Option<String> = conn
        .query_row("SELECT namespace FROM entries WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?
    else {
        return Ok(());
    };
    let kind = kind.map_or(ActivityKind::Get, ActivityKind::Lookup);
    count_event(conn, &ns, kind, now)
}

pub(super) fn count_event(
    conn: &Connection,
    ns: &str,
    kind: ActivityKind,
    now: u64,
) -> rusqlite::Result<()> {
    add_activity(conn, now, ns, kind, 1)?;
    conn.prepare_cached(
        "INSERT INTO lookup_totals (namespace, kind, count) VALUES (?1, ?2, 1)
         ON CONFLICT (namespace, kind) DO UPDATE SET count = count + 1",
    )?
    .execute(params![ns, kind.as_str()])?;
    Ok(())
}

/// Parses a `cache` column value.
fn build_cache(s: &str) -> rusqlite::Result<BuildCache> {
    Ok(match s {
        "exact" => BuildCache::Exact,
        "fallback" => BuildCache::Fallback,
        "prefix" => BuildCache::Prefix,
        "miss" => BuildCache::Miss,
        other => {
            return Err(conv_err(
                0,
                std::io::Error::other(format!("unknown build cache result `{other}`")),
            ));
        }
    })
}

/// Rounds seconds to whole milliseconds for the integer counters.
fn millis(seconds: f64) -> u64 {
    (seconds * 1000.0).round().max(0.0) as u64
}

/// The newest builds of namespace `?1`, at most `?2` (index `builds_by_namespace_at`).
pub(super) const BUILDS_OF_NAMESPACE: &str =
    "SELECT at, namespace, key, cache, total_s, saved_s, image_id FROM builds
     WHERE namespace = ?1 ORDER BY at DESC, id DESC LIMIT ?2";
/// The newest builds of every namespace, at most `?1` (index `builds_by_at`).
pub(super) const BUILDS_ALL: &str =
    "SELECT at, namespace, key, cache, total_s, saved_s, image_id FROM builds
     ORDER BY at DESC, id DESC LIMIT ?1";

impl Db {
    /// [`Db::record_miss`] at an explicit time.
    pub fn record_miss_at(&self, namespace: &Namespace, now: u64) -> rusqlite::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        add_counter_tx(&tx, counter::MISSES, 1)?;
        count_event(&tx, namespace.as_str(), ActivityKind::Miss, now)?;
        tx.commit()
    }

    /// [`Db::record_hit`]'s activity part at an explicit time (for tests of the history).
    pub fn record_hit_activity_at(
        &self,
        namespace: &Namespace,
        kind: Option<MatchKind>,
        now: u64,
    ) -> rusqlite::Result<()> {
        let kind = kind.map_or(ActivityKind::Get, ActivityKind::Lookup);
        count_event(&self.conn(), namespace.as_str(), kind, now)
    }

    /// Counts a failed upload under its error `code` (`uploads_failed:<code>`), for `/metrics`.
    pub fn count_upload_failure(&self, code: &str) -> rusqlite::Result<()> {
        let name = format!("{}{code}", counter::UPLOADS_FAILED_PREFIX);
        add_counter_tx(&self.conn(), &name, 1)
    }

    /// Records a build report received at `now` and credits the cache with the time saved: the
    /// newest cold build (`miss`) of the same key, same namespace first, minus this build's total.
    pub fn record_build(&self, report: &BuildReport, now: u64) -> rusqlite::Result<BuildRecorded> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let baseline: Option<f64> = if report.cache == BuildCache::Miss {
            None
        } else {
            tx.query_row(
                "SELECT total_s FROM builds WHERE key = ?1 AND cache = 'miss'
                 ORDER BY namespace = ?2 DESC, at DESC, id DESC LIMIT 1",
                params![report.key.as_str(), report.namespace.as_str()],
                |r| r.get(0),
            )
            .optional()?
        };
        let saved = baseline.map_or(0.0, |b| (b - report.seconds.total).max(0.0));
        let s = &report.seconds;
        tx.execute(
            "INSERT INTO builds (at, namespace, key, cache, lookup_s, restore_s, build_s, push_s,
                                 total_s, saved_s, image_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                sql_u64(now),
                report.namespace.as_str(),
                report.key.as_str(),
                report.cache.as_str(),
                s.lookup,
                s.restore,
                s.build,
                s.push,
                s.total,
                saved,
                report.image_id.map(|d| d.to_string()),
            ],
        )?;
        tx.execute(
            "DELETE FROM builds WHERE at < ?1",
            [sql_u64(now.saturating_sub(BUILDS_KEPT))],
        )?;
        add_counter_tx(&tx, counter::BUILDS, 1)?;
        add_counter_tx(&tx, counter::MS_SAVED, millis(saved))?;
        let ns = report.namespace.as_str();
        add_activity(&tx, now, ns, ActivityKind::Build, 1)?;
        add_activity(&tx, now, ns, ActivityKind::MsSaved, millis(saved))?;
        tx.commit()?;
        Ok(BuildRecorded {
            seconds_saved: saved,
            baseline_seconds: baseline,
        })
    }

    /// All-time build totals and the `limit` newest reports, of one namespace or all.
    pub fn builds(&self, namespace: Option<&Namespace>, limit: u64) -> rusqlite::Result<BuildList> {
        let conn = self.read()?;
        let counter_value = |name: &str| -> rusqlite::Result<u64> {
            conn.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
                u64_at(r, 0)
            })
            .optional()
            .map(Option::unwrap_or_default)
        };
        let builds = counter_value(counter::BUILDS)?;
        let seconds_saved = counter_value(counter::MS_SAVED)? as f64 / 1000.0;
        let summary = |r: &rusqlite::Row<'_>| {
            Ok(BuildSummary {
                at: u64_at(r, 0)?,
                namespace: r.get::<_, String>(1)?.parse().map_err(|e| conv_err(1, e))?,
                key: r.get::<_, String>(2)?.parse().map_err(|e| conv_err(2, e))?,
                cache: build_cache(&r.get::<_, String>(3)?)?,
                total_seconds: r.get(4)?,
                seconds_saved: r.get(5)?,
                image_id: super::opt_digest_at(r, 6)?,
            })
        };
        // Two statements rather than `?1 IS NULL OR namespace = ?1`, which the planner cannot
        // match to an index: each reads the newest `limit` rows of its index
        // (`builds_by_namespace_at` or `builds_by_at`; both end in the rowid, so `id DESC` needs
        // no sort).
        let recent = match namespace {
            Some(ns) => conn
                .prepare_cached(BUILDS_OF_NAMESPACE)?
                .query_map(params![ns.as_str(), sql_u64(limit)], summary)?
                .collect::<rusqlite::Result<_>>()?,
            None => conn
                .prepare_cached(BUILDS_ALL)?
                .query_map(params![sql_u64(limit)], summary)?
                .collect::<rusqlite::Result<_>>()?,
        };
        Ok(BuildList {
            builds,
            seconds_saved,
            recent,
        })
    }

    /// Activity of `window` (a [`HISTORY_WINDOWS`] name) ending at `now`, of one namespace or all.
    /// `None` for an unknown window.
    pub fn history(
        &self,
        window: &str,
        namespace: Option<&Namespace>,
        now: u64,
    ) -> rusqlite::Result<Option<StatsHistory>> {
        let Some(&(name, width, count)) = HISTORY_WINDOWS.iter().find(|w| w.0 == window) else {
            return Ok(None);
        };
        let last = now - now % width;
        let first = last.saturating_sub(width * (count - 1));
        let mut points: Vec<HistoryPoint> = (0..count)
            .map(|i| HistoryPoint {
                start: first + i * width,
                ..HistoryPoint::default()
            })
            .collect();
        let conn = self.read_settled()?;
        let mut stmt = conn.prepare_cached(
            "SELECT start, kind, SUM(count) FROM activity
             WHERE width = ?1 AND start >= ?2 AND start <= ?3 AND (?4 IS NULL OR namespace = ?4)
             GROUP BY start, kind",
        )?;
        let rows = stmt.query_map(
            params![
                sql_u64(width),
                sql_u64(first),
                sql_u64(last),
                namespace.map(|n| n.as_str())
            ],
            |r| Ok((u64_at(r, 0)?, r.get::<_, String>(1)?, u64_at(r, 2)?)),
        )?;
        for row in rows {
            let (start, kind, n) = row?;
            let Some(p) = points.get_mut(((start - first) / width) as usize) else {
                continue;
            };
            match kind.as_str() {
                "exact" => p.hits_exact += n,
                "fallback" => p.hits_fallback += n,
                "prefix" => p.hits_prefix += n,
                "get" => {}
                "miss" => p.misses += n,
                "build" => p.builds += n,
                "ms_saved" => p.seconds_saved += n as f64 / 1000.0,
                _ => continue,
            }
            if matches!(kind.as_str(), "exact" | "fallback" | "prefix" | "get") {
                p.hits += n;
            }
        }
        Ok(Some(StatsHistory {
            window: name.to_string(),
            bucket_seconds: width,
            namespace: namespace.cloned(),
            points,
        }))
    }

    /// The `limit` largest entries and layers.
    ///
    /// Both walk a size index from the top and stop after `limit` rows (layers: the partial index
    /// of referenced layer blobs, so configs larger than every layer are not walked past). A
    /// layer's entry count is its blob's maintained `refcount` (entries referencing it), not a
    /// count over the entries.
    pub fn largest(&self, limit: u64) -> rusqlite::Result<Largest> {
        let ids: Vec<i64> = {
            let conn = self.read_settled()?;
            let mut stmt = conn.prepare_cached(
                "SELECT id FROM entries ORDER BY total_size DESC, id DESC LIMIT ?1",
            )?;
            stmt.query_map([sql_u64(limit)], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let entries = self.entry_summaries(&ids)?;
        let conn = self.read()?;
        let mut stmt = conn.prepare_cached(
            "SELECT b.digest, b.size, b.refcount FROM blobs b
             WHERE b.layer = 1 AND b.refcount > 0
               AND EXISTS (SELECT 1 FROM image_layers il WHERE il.diff_id = b.digest)
             ORDER BY b.size DESC, b.rowid DESC LIMIT ?1",
        )?;
        let layers = stmt
            .query_map([sql_u64(limit)], |r| {
                Ok(LayerUsage {
                    diff_id: digest_at(r, 0)?,
                    size: u64_at(r, 1)?,
                    entries: u64_at(r, 2)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Largest { entries, layers })
    }

    /// Every namespace holding entries, with its entry count and bytes (maintained by triggers),
    /// by name.
    pub fn namespace_totals(&self) -> rusqlite::Result<Vec<(Namespace, u64, u64)>> {
        let conn = self.read_settled()?;
        let mut stmt = conn.prepare_cached(
            "SELECT namespace, entries, bytes FROM namespace_totals ORDER BY namespace",
        )?;
        stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?.parse().map_err(|e| conv_err(0, e))?,
                u64_at(r, 1)?,
                u64_at(r, 2)?,
            ))
        })?
        .collect()
    }

    /// Entry `id`'s manifest and, per layer, the other entries that reference it.
    pub fn entry_detail(&self, id: i64) -> rusqlite::Result<EntryDetail> {
        let manifest = self.manifest(id)?;
        let conn = self.read_settled()?;
        let mut stmt = conn.prepare_cached(
            "SELECT DISTINCT e.namespace, e.key FROM image_layers il
             JOIN entry_images ei ON ei.image_id = il.image_id
             JOIN entries e ON e.id = ei.entry_id
             WHERE il.diff_id = ?1 AND e.id != ?2 ORDER BY e.namespace, e.key LIMIT ?3",
        )?;
        let mut seen = std::collections::HashSet::new();
        let mut shares = Vec::new();
        for layer in manifest.images.iter().flat_map(|i| &i.layers) {
            if !seen.insert(layer.diff_id) {
                continue;
            }
            let shared_with: Vec<EntryRef> = stmt
                .query_map(params![layer.diff_id.to_string(), id, SHARES_CAP], |r| {
                    Ok(EntryRef {
                        namespace: r.get::<_, String>(0)?.parse().map_err(|e| conv_err(0, e))?,
                        key: r.get::<_, String>(1)?.parse().map_err(|e| conv_err(1, e))?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            if !shared_with.is_empty() {
                shares.push(LayerShares {
                    diff_id: layer.diff_id,
                    shared_with,
                });
            }
        }
        Ok(EntryDetail { manifest, shares })
    }

    /// All-time lookup counts as `(namespace, kind, count)`, namespaces in first-seen order.
    pub fn lookup_totals(&self) -> rusqlite::Result<Vec<(String, String, u64)>> {
        let conn = self.read_settled()?;
        let mut stmt = conn.prepare_cached(
            "SELECT t.namespace, t.kind, t.count FROM lookup_totals t
             JOIN (SELECT namespace, MIN(rowid) AS first FROM lookup_totals GROUP BY namespace) f
               ON f.namespace = t.namespace
             ORDER BY f.first, t.kind",
        )?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, u64_at(r, 2)?)))?
            .collect()
    }

    /// Every counter of the `counters` table, by name.
    pub fn counters(&self) -> rusqlite::Result<Vec<(String, u64)>> {
        let conn = self.read_settled()?;
        let mut stmt = conn.prepare_cached("SELECT name, value FROM counters ORDER BY name")?;
        stmt.query_map([], |r| Ok((r.get(0)?, u64_at(r, 1)?)))?
            .collect()
    }

    /// The summary of one entry (as in `GET /v1/entries`), when stored.
    pub fn entry_summary(&self, id: i64) -> rusqlite::Result<Option<EntrySummary>> {
        Ok(self.entry_summaries(&[id])?.pop())
    }
}
