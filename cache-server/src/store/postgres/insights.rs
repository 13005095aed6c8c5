//! What operators look at, on PostgreSQL: activity buckets, build reports and time saved, the
//! largest entries and layers, shared layers and the all-time totals (as SQLite's `insights`,
//! whose docs describe the tables; bucket widths and retention are the same).

use layercache_shared::Namespace;
use layercache_shared::api::{
    BuildCache, BuildList, BuildRecorded, BuildReport, BuildSummary, EntryDetail, EntryRef,
    EntrySummary, HistoryPoint, Largest, LayerShares, LayerUsage, MatchKind, StatsHistory,
};
use postgres::{GenericClient, Row};

use super::{Fail, PgDb, R, add_counter_tx, digest_at, opt_digest_at, parse_at, sql_u64, u64_at};
use crate::store::meta::MetaResult;
use crate::store::sqlite::{ActivityKind, HISTORY_WINDOWS, counter};

/// Bucket widths and how long their rows are kept, in seconds (SQLite's values).
const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
const MINUTES_KEPT: u64 = 2 * HOUR;
const HOURS_KEPT: u64 = 30 * 24 * HOUR;
/// Build reports older than this are dropped.
const BUILDS_KEPT: u64 = 30 * 24 * HOUR;
/// Cap on the entries listed as sharing one layer.
const SHARES_CAP: i64 = 50;

/// Adds `by` to `kind` of `namespace` in the buckets holding `now`, and drops expired buckets.
fn add_activity(
    c: &mut impl GenericClient,
    now: u64,
    namespace: &str,
    kind: ActivityKind,
    by: u64,
) -> R<()> {
    for (width, kept) in [(MINUTE, MINUTES_KEPT), (HOUR, HOURS_KEPT)] {
        let start = now - now % width;
        c.execute(
            "INSERT INTO activity (width, start, namespace, kind, count) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (width, start, namespace, kind)
             DO UPDATE SET count = activity.count + excluded.count",
            &[
                &sql_u64(width),
                &sql_u64(start),
                &namespace,
                &kind.as_str(),
                &sql_u64(by),
            ],
        )?;
        c.execute(
            "DELETE FROM activity WHERE width = $1 AND start < $2",
            &[&sql_u64(width), &sql_u64(now.saturating_sub(kept))],
        )?;
    }
    Ok(())
}

/// Counts a hit on entry `id` in its namespace's activity and all-time totals.
pub(super) fn count_lookup_tx(
    c: &mut impl GenericClient,
    id: i64,
    kind: Option<MatchKind>,
    now: u64,
) -> R<()> {
    let Some(row) = c.query_opt("SELECT namespace FROM entries WHERE id = $1", &[&id])? else {
        return Ok(());
    };
    let ns: String = row.try_get(0)?;
    let kind = kind.map_or(ActivityKind::Get, ActivityKind::Lookup);
    count_event(c, &ns, kind, now)
}

pub(super) fn count_event(
    c: &mut impl GenericClient,
    ns: &str,
    kind: ActivityKind,
    now: u64,
) -> R<()> {
    add_activity(c, now, ns, kind, 1)?;
    c.execute(
        "INSERT INTO lookup_totals (namespace, kind, count) VALUES ($1, $2, 1)
         ON CONFLICT (namespace, kind) DO UPDATE SET count = lookup_totals.count + 1",
        &[&ns, &kind.as_str()],
    )?;
    Ok(())
}

fn build_cache(s: &str) -> R<BuildCache> {
    Ok(match s {
        "exact" => BuildCache::Exact,
        "fallback" => BuildCache::Fallback,
        "prefix" => BuildCache::Prefix,
        "miss" => BuildCache::Miss,
        other => {
            return Err(Fail::Corrupt(format!(
                "unknown build cache result `{other}`"
            )));
        }
    })
}

fn millis(seconds: f64) -> u64 {
    (seconds * 1000.0).round().max(0.0) as u64
}

fn build_summary(r: &Row) -> R<BuildSummary> {
    Ok(BuildSummary {
        at: u64_at(r, 0)?,
        namespace: parse_at(r, 1)?,
        key: parse_at(r, 2)?,
        cache: build_cache(r.try_get(3)?)?,
        total_seconds: r.try_get(4)?,
        seconds_saved: r.try_get(5)?,
        image_id: opt_digest_at(r, 6)?,
    })
}

impl PgDb {
    pub(crate) fn record_miss_at(&self, namespace: &Namespace, now: u64) -> MetaResult<()> {
        self.write(|tx| {
            add_counter_tx(tx, counter::MISSES, 1)?;
            count_event(tx, namespace.as_str(), ActivityKind::Miss, now)
        })
    }

    pub(crate) fn record_hit_activity_at(
        &self,
        namespace: &Namespace,
        kind: Option<MatchKind>,
        now: u64,
    ) -> MetaResult<()> {
        let kind = kind.map_or(ActivityKind::Get, ActivityKind::Lookup);
        self.write(|tx| count_event(tx, namespace.as_str(), kind, now))
    }

    pub(crate) fn count_upload_failure(&self, code: &str) -> MetaResult<()> {
        let name = format!("{}{code}", counter::UPLOADS_FAILED_PREFIX);
        self.write(|tx| add_counter_tx(tx, &name, 1))
    }

    pub(crate) fn record_build(&self, report: &BuildReport, now: u64) -> MetaResult<BuildRecorded> {
        self.write(|tx| {
            let baseline: Option<f64> = if report.cache == BuildCache::Miss {
                None
            } else {
                tx.query_opt(
                    "SELECT total_s FROM builds WHERE key = $1 AND cache = 'miss'
                     ORDER BY (namespace = $2) DESC, at DESC, id DESC LIMIT 1",
                    &[&report.key.as_str(), &report.namespace.as_str()],
                )?
                .map(|r| r.try_get(0))
                .transpose()?
            };
            let saved = baseline.map_or(0.0, |b| (b - report.seconds.total).max(0.0));
            let s = &report.seconds;
            tx.execute(
                "INSERT INTO builds (at, namespace, key, cache, lookup_s, restore_s, build_s,
                                     push_s, total_s, saved_s, image_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &sql_u64(now),
                    &report.namespace.as_str(),
                    &report.key.as_str(),
                    &report.cache.as_str(),
                    &s.lookup,
                    &s.restore,
                    &s.build,
                    &s.push,
                    &s.total,
                    &saved,
                    &report.image_id.map(|d| d.to_string()),
                ],
            )?;
            tx.execute(
                "DELETE FROM builds WHERE at < $1",
                &[&sql_u64(now.saturating_sub(BUILDS_KEPT))],
            )?;
            add_counter_tx(tx, counter::BUILDS, 1)?;
            add_counter_tx(tx, counter::MS_SAVED, millis(saved))?;
            let ns = report.namespace.as_str();
            add_activity(tx, now, ns, ActivityKind::Build, 1)?;
            add_activity(tx, now, ns, ActivityKind::MsSaved, millis(saved))?;
            Ok(BuildRecorded {
                seconds_saved: saved,
                baseline_seconds: baseline,
            })
        })
    }

    pub(crate) fn builds(
        &self,
        namespace: Option<&Namespace>,
        limit: u64,
    ) -> MetaResult<BuildList> {
        self.read(|tx| {
            let mut counter_value = |name: &str| -> R<u64> {
                tx.query_opt("SELECT value FROM counters WHERE name = $1", &[&name])?
                    .map(|r| u64_at(&r, 0))
                    .transpose()
                    .map(Option::unwrap_or_default)
            };
            let builds = counter_value(counter::BUILDS)?;
            let seconds_saved = counter_value(counter::MS_SAVED)? as f64 / 1000.0;
            // Two statements rather than `$1 IS NULL OR namespace = $1`, which defeats an index.
            let rows = match namespace {
                Some(ns) => tx.query(
                    "SELECT at, namespace, key, cache, total_s, saved_s, image_id FROM builds
                     WHERE namespace = $1 ORDER BY at DESC, id DESC LIMIT $2",
                    &[&ns.as_str(), &sql_u64(limit)],
                )?,
                None => tx.query(
                    "SELECT at, namespace, key, cache, total_s, saved_s, image_id FROM builds
                     ORDER BY at DESC, id DESC LIMIT $1",
                    &[&sql_u64(limit)],
                )?,
            };
            let recent = rows.iter().map(build_summary).collect::<R<_>>()?;
            Ok(BuildList {
                builds,
                seconds_saved,
                recent,
            })
        })
    }

    pub(crate) fn history(
        &self,
        window: &str,
        namespace: Option<&Namespace>,
        now: u64,
    ) -> MetaResult<Option<StatsHistory>> {
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
        let rows = self.run(|c| {
            c.query(
                "SELECT start, kind, SUM(count)::BIGINT FROM activity
                 WHERE width = $1 AND start >= $2 AND start <= $3
                   AND ($4::TEXT IS NULL OR namespace = $4)
                 GROUP BY start, kind",
                &[
                    &sql_u64(width),
                    &sql_u64(first),
                    &sql_u64(last),
                    &namespace.map(|n| n.as_str()),
                ],
            )?
            .iter()
            .map(|r| Ok((u64_at(r, 0)?, r.try_get::<_, String>(1)?, u64_at(r, 2)?)))
            .collect::<R<Vec<_>>>()
        })?;
        for (start, kind, n) in rows {
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

    pub(crate) fn largest(&self, limit: u64) -> MetaResult<Largest> {
        let ids: Vec<i64> = self.run(|c| {
            Ok(c.query(
                "SELECT id FROM entries ORDER BY total_size DESC, id DESC LIMIT $1",
                &[&sql_u64(limit)],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
        })?;
        let entries = self.entry_summaries(&ids)?;
        let layers = self.run(|c| {
            c.query(
                "SELECT b.digest, b.size, b.refcount FROM blobs b
                 WHERE b.layer AND b.refcount > 0
                   AND EXISTS (SELECT 1 FROM image_layers il WHERE il.diff_id = b.digest)
                 ORDER BY b.size DESC, b.seq DESC LIMIT $1",
                &[&sql_u64(limit)],
            )?
            .iter()
            .map(|r| {
                Ok(LayerUsage {
                    diff_id: digest_at(r, 0)?,
                    size: u64_at(r, 1)?,
                    entries: u64_at(r, 2)?,
                })
            })
            .collect()
        })?;
        Ok(Largest { entries, layers })
    }

    pub(crate) fn namespace_totals(&self) -> MetaResult<Vec<(Namespace, u64, u64)>> {
        self.run(|c| {
            c.query(
                "SELECT namespace, entries, bytes FROM namespace_totals ORDER BY namespace",
                &[],
            )?
            .iter()
            .map(|r| Ok((parse_at(r, 0)?, u64_at(r, 1)?, u64_at(r, 2)?)))
            .collect()
        })
    }

    pub(crate) fn entry_detail(&self, id: i64) -> MetaResult<EntryDetail> {
        let manifest = self.manifest(id)?;
        let mut seen = std::collections::HashSet::new();
        let layers: Vec<String> = manifest
            .images
            .iter()
            .flat_map(|i| &i.layers)
            .filter(|l| seen.insert(l.diff_id))
            .map(|l| l.diff_id.to_string())
            .collect();
        let shares = self.read(|tx| {
            let stmt = tx.prepare(
                "SELECT DISTINCT e.namespace, e.key FROM image_layers il
                 JOIN entry_images ei ON ei.image_id = il.image_id
                 JOIN entries e ON e.id = ei.entry_id
                 WHERE il.diff_id = $1 AND e.id != $2 ORDER BY e.namespace, e.key LIMIT $3",
            )?;
            let mut shares = Vec::new();
            for diff_id in &layers {
                let shared_with: Vec<EntryRef> = tx
                    .query(&stmt, &[diff_id, &id, &SHARES_CAP])?
                    .iter()
                    .map(|r| {
                        Ok(EntryRef {
                            namespace: parse_at(r, 0)?,
                            key: parse_at(r, 1)?,
                        })
                    })
                    .collect::<R<_>>()?;
                if !shared_with.is_empty() {
                    shares.push(LayerShares {
                        diff_id: diff_id
                            .parse()
                            .map_err(|e| Fail::Corrupt(format!("{diff_id}: {e}")))?,
                        shared_with,
                    });
                }
            }
            Ok(shares)
        })?;
        Ok(EntryDetail { manifest, shares })
    }

    pub(crate) fn lookup_totals(&self) -> MetaResult<Vec<(String, String, u64)>> {
        self.run(|c| {
            c.query(
                "SELECT t.namespace, t.kind, t.count FROM lookup_totals t
                 JOIN (SELECT namespace, MIN(seq) AS first FROM lookup_totals GROUP BY namespace) f
                   ON f.namespace = t.namespace
                 ORDER BY f.first, t.kind",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, u64_at(r, 2)?)))
            .collect()
        })
    }

    pub(crate) fn counters(&self) -> MetaResult<Vec<(String, u64)>> {
        self.run(|c| {
            c.query("SELECT name, value FROM counters ORDER BY name", &[])?
                .iter()
                .map(|r| Ok((r.try_get(0)?, u64_at(r, 1)?)))
                .collect()
        })
    }

    pub(crate) fn entry_summary(&self, id: i64) -> MetaResult<Option<EntrySummary>> {
        Ok(self.entry_summaries(&[id])?.pop())
    }
}
