//! Phases 2–4: the index's rows into PostgreSQL, table by table, then the comparison.
//!
//! Each page of source rows is written in one write transaction of the target (the same advisory
//! lock a server's writes take, see [`crate::store::postgres`]), skipping rows the target already
//! holds by their natural key, so a batch is either all there or not at all and a re-run picks up
//! after the last committed one. Ids are the target's own (entries, manifests and tags get new
//! ones; tokens keep theirs where free, since `token revoke` takes them): children are linked by
//! the id their parent got, found by its natural key.
//!
//! Refcounts are not copied but rebuilt: blob rows arrive with none, and each entry adds one to
//! each distinct blob it names, as a commit does; the comparison then checks the sums.

use std::collections::{BTreeSet, HashMap};

use postgres::Transaction;
use rusqlite::params;

use super::progress::Progress;
use super::source::{COUNT_SQL, Counts, PAGE, Source};
use super::{MigrateError, Summary, abort_point, marker};
use crate::store::postgres::{Fail, PgDb, R};

/// Refuses a target holding rows the source does not name (another cache; see the module docs
/// of [`super`]). Pages through the target's natural keys and looks each up in the source.
pub fn check_target(src: &Source, db: &PgDb) -> Result<(), MigrateError> {
    // (what, target keys as two text columns, source lookup of both).
    let checks: [(&str, &str, &str); 5] = [
        (
            "blobs",
            "SELECT digest, digest FROM blobs WHERE (digest, digest) > ($1, $2)
             ORDER BY digest LIMIT 500",
            "SELECT 1 FROM blobs WHERE digest = ?1 AND ?2 IS NOT NULL",
        ),
        (
            "entries",
            "SELECT namespace, key FROM entries WHERE (namespace, key) > ($1, $2)
             ORDER BY namespace, key LIMIT 500",
            "SELECT 1 FROM entries WHERE namespace = ?1 AND key = ?2",
        ),
        (
            "manifests",
            "SELECT repo, digest FROM manifests WHERE (repo, digest) > ($1, $2)
             ORDER BY repo, digest LIMIT 500",
            "SELECT 1 FROM manifests WHERE repo = ?1 AND digest = ?2",
        ),
        (
            "tags",
            "SELECT repo, tag FROM tags WHERE (repo, tag) > ($1, $2) ORDER BY repo, tag LIMIT 500",
            "SELECT 1 FROM tags WHERE repo = ?1 AND tag = ?2",
        ),
        (
            "tokens",
            "SELECT hash, hash FROM tokens WHERE (hash, hash) > ($1, $2)
             ORDER BY hash LIMIT 500",
            "SELECT 1 FROM tokens WHERE hash = ?1 AND ?2 IS NOT NULL",
        ),
    ];
    for (what, target_sql, source_sql) in checks {
        let mut after = (String::new(), String::new());
        loop {
            let page: Vec<(String, String)> = db.read(|tx| {
                tx.query(target_sql, &[&after.0, &after.1])?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<R<_>>()
            })?;
            let Some(last) = page.last() else { break };
            after = last.clone();
            for (a, b) in &page {
                if !src.has(source_sql, &[a, b])? {
                    let example = if a == b {
                        a.clone()
                    } else {
                        format!("{a} {b}")
                    };
                    return Err(MigrateError::TargetHoldsOtherCache {
                        url: db.url().to_string(),
                        what,
                        example,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Copies every table (see the module docs), counting into `summary`.
pub fn copy_all(src: &Source, db: &PgDb, summary: &mut Summary) -> Result<(), MigrateError> {
    let mut tally = Tally::default();
    blob_rows(src, db, &mut tally)?;
    entries(src, db, &mut tally)?;
    super::registry::copy(src, db, &mut tally)?;
    let tokens = super::registry::tokens(src, db, &mut tally)?;
    super::registry::blob_uploads(src, db, &tokens, &mut tally)?;
    summary.history_added = history(src, db)?;
    summary.rows_written = tally.written;
    summary.rows_present = tally.present;
    Ok(())
}

/// Rows written and found present, per table, in the order the tables were copied.
#[derive(Default)]
pub struct Tally {
    pub written: Vec<(&'static str, u64)>,
    pub present: Vec<(&'static str, u64)>,
}

impl Tally {
    /// Adds a batch's counts for `table`.
    pub fn add(&mut self, table: &'static str, written: u64, present: u64) {
        for (list, n) in [(&mut self.written, written), (&mut self.present, present)] {
            match list.iter_mut().find(|(t, _)| *t == table) {
                Some((_, v)) => *v += n,
                None => list.push((table, n)),
            }
        }
    }
}

/// Blob rows, with no references yet (the entries add them).
fn blob_rows(src: &Source, db: &PgDb, tally: &mut Tally) -> Result<(), MigrateError> {
    let mut progress = Progress::new("blob rows", None);
    let mut after = String::new();
    loop {
        let page = src.blobs_after(&after)?;
        let Some(last) = page.last() else { break };
        after = last.digest.clone();
        let written = db.write(|tx| {
            let ins = tx.prepare(
                "INSERT INTO blobs (digest, size, refcount, created, layer)
                 VALUES ($1, $2, 0, $3, $4) ON CONFLICT (digest) DO NOTHING",
            )?;
            let mut n = 0;
            for b in &page {
                n += tx.execute(&ins, &[&b.digest, &b.size, &b.created, &b.layer])?;
            }
            Ok(n)
        })?;
        tally.add("blobs", written, page.len() as u64 - written);
        progress.add(page.len() as u64, 0);
    }
    progress.finish();
    Ok(())
}

/// An entry with everything that hangs off it.
struct EntryRows {
    id: i64,
    namespace: String,
    key: String,
    /// created, last_used, hits, total_size, last_use.
    numbers: [i64; 5],
    images: Vec<EntryImage>,
    /// (depth, hash, last_use).
    prefixes: Vec<(i64, String, i64)>,
}

/// One image of an entry (a row of `entry_images` with its `images` row and layers).
struct EntryImage {
    image_id: String,
    position: i64,
    tags: String,
    parent: Option<String>,
    image_parent: Option<String>,
    config_size: i64,
    /// (idx, diff_id).
    layers: Vec<(i64, String)>,
}

impl EntryRows {
    /// The distinct blobs the entry references (what its refcounts count).
    fn blobs(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self
            .images
            .iter()
            .flat_map(|i| std::iter::once(&i.image_id).chain(i.layers.iter().map(|(_, d)| d)))
            .collect();
        set.into_iter().cloned().collect()
    }

    fn layers(&self) -> Vec<String> {
        self.images
            .iter()
            .flat_map(|i| i.layers.iter().map(|(_, d)| d.clone()))
            .collect()
    }
}

/// A page of the source's entries after id `after`, with their children.
fn entries_after(src: &Source, after: i64, limit: i64) -> rusqlite::Result<Vec<EntryRows>> {
    let mut st = src.conn.prepare_cached(
        "SELECT id, namespace, key, created, last_used, hits, total_size, last_use
         FROM entries WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let mut out: Vec<EntryRows> = st
        .query_map(params![after, limit], |r| {
            Ok(EntryRows {
                id: r.get(0)?,
                namespace: r.get(1)?,
                key: r.get(2)?,
                numbers: [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?],
                images: Vec::new(),
                prefixes: Vec::new(),
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut images = src.conn.prepare_cached(
        "SELECT ei.image_id, ei.position, ei.tags, ei.parent, i.parent, i.config_size
         FROM entry_images ei JOIN images i ON i.id = ei.image_id
         WHERE ei.entry_id = ?1 ORDER BY ei.position",
    )?;
    let mut layers = src
        .conn
        .prepare_cached("SELECT idx, diff_id FROM image_layers WHERE image_id = ?1 ORDER BY idx")?;
    let mut prefixes = src.conn.prepare_cached(
        "SELECT depth, hash, last_use FROM entry_prefixes WHERE entry_id = ?1 ORDER BY depth",
    )?;
    for e in &mut out {
        e.images = images
            .query_map([e.id], |r| {
                Ok(EntryImage {
                    image_id: r.get(0)?,
                    position: r.get(1)?,
                    tags: r.get(2)?,
                    parent: r.get(3)?,
                    image_parent: r.get(4)?,
                    config_size: r.get(5)?,
                    layers: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        for img in &mut e.images {
            img.layers = layers
                .query_map([&img.image_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
        }
        e.prefixes = prefixes
            .query_map([e.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
    }
    Ok(out)
}

/// Entries, each with its images, layers and prefixes, adding its references to blob refcounts.
fn entries(src: &Source, db: &PgDb, tally: &mut Tally) -> Result<(), MigrateError> {
    let abort_after = abort_point("entries");
    // With the test hook, one entry per transaction, so the abort falls between two.
    let limit = if abort_after.is_some() { 1 } else { PAGE / 5 };
    let mut progress = Progress::new("entries", None);
    let mut after = 0;
    let mut written_total = 0;
    loop {
        let page = entries_after(src, after, limit)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let written = db.write(|tx| {
            let mut n = 0;
            for e in &page {
                n += u64::from(insert_entry(tx, e)?);
            }
            let max_use = page.iter().map(|e| e.numbers[4]).max().unwrap_or(0);
            tx.execute(
                "UPDATE totals SET value = GREATEST(value, $1) WHERE name = 'last_use'",
                &[&max_use],
            )?;
            Ok(n)
        })?;
        tally.add("entries", written, page.len() as u64 - written);
        progress.add(page.len() as u64, 0);
        written_total += written;
        if abort_after.is_some_and(|n| written_total >= n) {
            tracing::warn!("LAYERCACHE_MIGRATE_ABORT_AFTER: aborting (test hook)");
            std::process::abort();
        }
    }
    progress.finish();
    Ok(())
}

/// Inserts one entry unless the target has one of that name; true when inserted.
fn insert_entry(tx: &mut Transaction<'_>, e: &EntryRows) -> R<bool> {
    let present = tx
        .query_opt(
            "SELECT 1 FROM entries WHERE namespace = $1 AND key = $2",
            &[&e.namespace, &e.key],
        )?
        .is_some();
    if present {
        return Ok(false);
    }
    let [created, last_used, hits, total_size, last_use] = e.numbers;
    let id: i64 = tx
        .query_one(
            "INSERT INTO entries (namespace, key, created, last_used, hits, total_size, last_use)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[
                &e.namespace,
                &e.key,
                &created,
                &last_used,
                &hits,
                &total_size,
                &last_use,
            ],
        )?
        .try_get(0)?;
    for img in &e.images {
        tx.execute(
            "INSERT INTO images (id, parent, config_size) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET parent = COALESCE(images.parent, excluded.parent)",
            &[&img.image_id, &img.image_parent, &img.config_size],
        )?;
        for (idx, diff_id) in &img.layers {
            tx.execute(
                "INSERT INTO image_layers (image_id, idx, diff_id) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&img.image_id, idx, diff_id],
            )?;
        }
        tx.execute(
            "INSERT INTO entry_images (entry_id, image_id, position, tags, parent)
             VALUES ($1, $2, $3, $4, $5)",
            &[&id, &img.image_id, &img.position, &img.tags, &img.parent],
        )?;
    }
    for (depth, hash, last_use) in &e.prefixes {
        tx.execute(
            "INSERT INTO entry_prefixes (entry_id, depth, hash, namespace, last_use)
             VALUES ($1, $2, $3, $4, $5)",
            &[&id, depth, hash, &e.namespace, last_use],
        )?;
    }
    let blobs = e.blobs();
    let counted = tx.execute(
        "UPDATE blobs SET refcount = refcount + 1 WHERE digest = ANY($1)",
        &[&blobs],
    )?;
    if counted != blobs.len() as u64 {
        // The blob rows went first; an entry naming a blob without one is a broken source.
        return Err(Fail::Corrupt(format!(
            "entry {}/{} names {} blobs, {} of them without a blob row in the source",
            e.namespace,
            e.key,
            blobs.len(),
            blobs.len() as u64 - counted
        )));
    }
    tx.execute(
        "UPDATE blobs SET layer = TRUE WHERE digest = ANY($1) AND NOT layer",
        &[&e.layers()],
    )?;
    Ok(true)
}

/// Counters, activity, lookup totals and build reports, added in one transaction with the
/// history marker; false when the marker was there already (an earlier run added them).
fn history(src: &Source, db: &PgDb) -> Result<bool, MigrateError> {
    let mark = marker(src.dir());
    let conn = &src.conn;
    let added = db.write(|tx| {
        if tx
            .query_opt("SELECT 1 FROM totals WHERE name = $1", &[&mark])?
            .is_some()
        {
            return Ok(false);
        }
        let mut counters = sq(conn.prepare("SELECT name, value FROM counters"))?;
        let mut rows = sq(counters.query([]))?;
        while let Some(r) = sq(rows.next())? {
            let (name, value): (String, i64) = (sq(r.get(0))?, sq(r.get(1))?);
            tx.execute(
                "INSERT INTO counters (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
                &[&name, &value],
            )?;
        }
        let mut activity = sq(conn.prepare(
            "SELECT width, start, namespace, kind, count FROM activity ORDER BY width, start",
        ))?;
        let mut rows = sq(activity.query([]))?;
        while let Some(r) = sq(rows.next())? {
            let (w, s, ns, kind, count): (i64, i64, String, String, i64) = (
                sq(r.get(0))?,
                sq(r.get(1))?,
                sq(r.get(2))?,
                sq(r.get(3))?,
                sq(r.get(4))?,
            );
            tx.execute(
                "INSERT INTO activity (width, start, namespace, kind, count)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (width, start, namespace, kind)
                 DO UPDATE SET count = activity.count + excluded.count",
                &[&w, &s, &ns, &kind, &count],
            )?;
        }
        // Row order: the dashboard lists namespaces in first-seen order.
        let mut totals =
            sq(conn.prepare("SELECT namespace, kind, count FROM lookup_totals ORDER BY rowid"))?;
        let mut rows = sq(totals.query([]))?;
        while let Some(r) = sq(rows.next())? {
            let (ns, kind, count): (String, String, i64) =
                (sq(r.get(0))?, sq(r.get(1))?, sq(r.get(2))?);
            tx.execute(
                "INSERT INTO lookup_totals (namespace, kind, count) VALUES ($1, $2, $3)
                 ON CONFLICT (namespace, kind)
                 DO UPDATE SET count = lookup_totals.count + excluded.count",
                &[&ns, &kind, &count],
            )?;
        }
        let mut builds = sq(conn.prepare(
            "SELECT at, namespace, key, cache, lookup_s, restore_s, build_s, push_s, total_s,
                    saved_s, image_id FROM builds ORDER BY id",
        ))?;
        let ins = tx.prepare(
            "INSERT INTO builds (at, namespace, key, cache, lookup_s, restore_s, build_s, push_s,
                                 total_s, saved_s, image_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )?;
        let mut rows = sq(builds.query([]))?;
        while let Some(r) = sq(rows.next())? {
            let at: i64 = sq(r.get(0))?;
            let (ns, key, cache): (String, String, String) =
                (sq(r.get(1))?, sq(r.get(2))?, sq(r.get(3))?);
            let secs: Vec<f64> = (4..10).map(|i| sq(r.get(i))).collect::<R<_>>()?;
            let image: Option<String> = sq(r.get(10))?;
            tx.execute(
                &ins,
                &[
                    &at, &ns, &key, &cache, &secs[0], &secs[1], &secs[2], &secs[3], &secs[4],
                    &secs[5], &image,
                ],
            )?;
        }
        tx.execute(
            "INSERT INTO totals (name, value) VALUES ($1, $2)",
            &[&mark, &(crate::store::sqlite::now() as i64)],
        )?;
        Ok(true)
    })?;
    tracing::info!(
        added,
        "counters, activity, lookup totals and build reports{}",
        if added {
            " added"
        } else {
            " were added by an earlier run"
        }
    );
    Ok(added)
}

/// A source read inside a target transaction, as the transaction's failure type.
pub fn sq<T>(r: rusqlite::Result<T>) -> R<T> {
    r.map_err(|e| Fail::Corrupt(format!("reading the source: {e}")))
}

/// The target's row counts.
pub fn target_counts(db: &PgDb) -> Result<Counts, MigrateError> {
    Ok(db.read(|tx| {
        let row = tx.query_one(COUNT_SQL, &[])?;
        let v: Vec<i64> = (0..13).map(|i| row.try_get(i)).collect::<Result<_, _>>()?;
        Ok(Counts::from_values(&v))
    })?)
}

/// Checks the target against the source: equal counts (and refcount sums) into a database that
/// held nothing else; with `merge`, at least the source's.
pub fn compare(source: &Counts, target: &Counts, merge: bool) -> Result<(), MigrateError> {
    let fields: HashMap<&str, (u64, u64)> = HashMap::from([
        ("blobs", (source.blobs, target.blobs)),
        ("blob bytes", (source.blob_bytes, target.blob_bytes)),
        ("refcounts", (source.refcounts, target.refcounts)),
        ("entries", (source.entries, target.entries)),
        ("images", (source.images, target.images)),
        ("prefixes", (source.prefixes, target.prefixes)),
        ("repo_blobs", (source.repo_blobs, target.repo_blobs)),
        ("manifests", (source.manifests, target.manifests)),
        (
            "manifest_refs",
            (source.manifest_refs, target.manifest_refs),
        ),
        ("tags", (source.tags, target.tags)),
        ("tokens", (source.tokens, target.tokens)),
        ("blob_uploads", (source.blob_uploads, target.blob_uploads)),
        ("builds", (source.builds, target.builds)),
    ]);
    let mut bad: Vec<String> = fields
        .iter()
        .filter(|(_, (s, t))| if merge { t < s } else { t != s })
        .map(|(name, (s, t))| format!("{name}: source {s}, target {t}"))
        .collect();
    bad.sort();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(MigrateError::Mismatch(bad.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_comparison_wants_equal_counts_or_at_least_the_sources_when_merging() {
        let source = Counts {
            blobs: 3,
            refcounts: 4,
            entries: 2,
            ..Counts::default()
        };
        assert!(compare(&source, &source, false).is_ok());
        let more = Counts {
            entries: 5,
            ..source.clone()
        };
        let e = compare(&source, &more, false).unwrap_err().to_string();
        assert!(e.contains("entries: source 2, target 5"), "{e}");
        assert!(compare(&source, &more, true).is_ok());
        let fewer = Counts {
            refcounts: 3,
            ..source.clone()
        };
        let e = compare(&source, &fewer, true).unwrap_err().to_string();
        assert!(e.contains("refcounts: source 4, target 3"), "{e}");
    }

    #[test]
    fn the_tally_adds_per_table_in_first_seen_order() {
        let mut t = Tally::default();
        t.add("blobs", 2, 1);
        t.add("entries", 1, 0);
        t.add("blobs", 3, 0);
        assert_eq!(t.written, vec![("blobs", 5), ("entries", 1)]);
        assert_eq!(t.present, vec![("blobs", 1), ("entries", 0)]);
    }
}
