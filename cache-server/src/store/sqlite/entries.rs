//! Entries of the v1 API: commit, find (by name and by instruction prefix), manifests, hits,
//! listings, and `release_entry`, which drops an entry with its references.

use layercache_shared::api::{EntryManifest, EntrySummary, ImageInfo, LayerInfo, MatchKind};
use layercache_shared::{CacheKey, Digest, Namespace};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{
    Db, NewEntry, conv_err, digest_at, now, opt_digest_at, retry_replaced, sql_u64, u64_at,
};

/// Entries per page of [`Db::list_entries`] when the caller names no limit, and the most it may
/// ask for: a page costs what it shows, however large the cache.
pub const DEFAULT_PAGE: u64 = 100;
pub const MAX_PAGE: u64 = 1000;

/// Where a listing resumes: the `(namespace, key)` of the last entry of the previous page.
/// Opaque to clients (`namespace` + NUL + `key`, hex-encoded): only what a page returned is
/// passed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub namespace: String,
    pub key: String,
}

impl Cursor {
    /// The cursor's text form.
    pub fn encode(&self) -> String {
        hex::encode(format!("{}\0{}", self.namespace, self.key))
    }

    /// Parses [`Cursor::encode`]'s form; `None` when it is not one.
    pub fn decode(s: &str) -> Option<Cursor> {
        let raw = String::from_utf8(hex::decode(s).ok()?).ok()?;
        let (namespace, key) = raw.split_once('\0')?;
        Some(Cursor {
            namespace: namespace.to_string(),
            key: key.to_string(),
        })
    }
}

/// What [`Db::find_match`] found: the entry id, how it matched, the shared instruction depth of a
/// prefix match, and the manifest.
pub type Match = (i64, MatchKind, Option<u32>, EntryManifest);

/// One page of a listing and where the next one starts (`None` on the last page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

impl Db {
    /// Commits `entry` in one transaction, replacing an entry of the same name. Blob rows are
    /// added for any blob not yet recorded; refcounts follow.
    pub fn commit_entry(&self, entry: &NewEntry) -> rusqlite::Result<i64> {
        let blobs = entry.blobs();
        let total: u64 = blobs.values().sum();
        let now = sql_u64(now());
        let mut conn = self.conn();
        let stamp = sql_u64(self.use_stamp());
        let tx = conn.transaction()?;
        {
            let mut ins_blob = tx.prepare_cached(
                "INSERT OR IGNORE INTO blobs (digest, size, refcount, created) VALUES (?1, ?2, 0, ?3)",
            )?;
            for (d, size) in &blobs {
                ins_blob.execute(params![d.to_string(), sql_u64(*size), now])?;
            }
        }
        if let Some(old) = find_entry_tx(&tx, &entry.namespace, &entry.key)? {
            release_entry(&tx, old)?;
        }
        tx.execute(
            "INSERT INTO entries (namespace, key, created, last_used, hits, total_size, last_use)
             VALUES (?1, ?2, ?3, ?3, 0, ?4, ?5)",
            params![
                entry.namespace.as_str(),
                entry.key.as_str(),
                now,
                sql_u64(total),
                stamp
            ],
        )?;
        let entry_id = tx.last_insert_rowid();
        {
            let mut ins_image = tx.prepare_cached(
                "INSERT INTO images (id, parent, config_size) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET parent = COALESCE(images.parent, excluded.parent)",
            )?;
            let mut ins_layer = tx.prepare_cached(
                "INSERT OR IGNORE INTO image_layers (image_id, idx, diff_id) VALUES (?1, ?2, ?3)",
            )?;
            let mut ins_entry_image = tx.prepare_cached(
                "INSERT INTO entry_images (entry_id, image_id, position, tags, parent)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (pos, img) in entry.images.iter().enumerate() {
                let id = img.id.to_string();
                let parent = img.parent.map(|p| p.to_string());
                ins_image.execute(params![id, parent, sql_u64(img.config_size)])?;
                for (idx, (diff_id, _)) in img.layers.iter().enumerate() {
                    ins_layer.execute(params![id, idx as i64, diff_id.to_string()])?;
                }
                let tags = serde_json::to_string(&img.tags).map_err(|e| conv_err(3, e))?;
                ins_entry_image.execute(params![entry_id, id, pos as i64, tags, parent])?;
            }
            let mut ins_prefix = tx.prepare_cached(
                "INSERT INTO entry_prefixes (entry_id, depth, hash, namespace, last_use)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (i, h) in entry.prefixes.iter().enumerate() {
                ins_prefix.execute(params![
                    entry_id,
                    (i + 1) as i64,
                    h.to_string(),
                    entry.namespace.as_str(),
                    stamp
                ])?;
            }
            let mut inc =
                tx.prepare_cached("UPDATE blobs SET refcount = refcount + 1 WHERE digest = ?1")?;
            for d in blobs.keys() {
                inc.execute([d.to_string()])?;
            }
            let mut mark =
                tx.prepare_cached("UPDATE blobs SET layer = 1 WHERE digest = ?1 AND layer = 0")?;
            for img in &entry.images {
                for (d, _) in &img.layers {
                    mark.execute([d.to_string()])?;
                }
            }
        }
        tx.commit()?;
        Ok(entry_id)
    }

    /// The id of the entry `namespace`/`key`, if stored.
    pub fn find_entry(
        &self,
        namespace: &Namespace,
        key: &CacheKey,
    ) -> rusqlite::Result<Option<i64>> {
        find_entry_tx(&*self.read()?, namespace, key)
    }

    /// The id and manifest of `namespace`/`key`, if stored.
    ///
    /// A re-PUT replaces an entry by deleting its row and inserting a new one; a reader that found
    /// the old id just before may then find no row. That is a lost race, not a missing entry:
    /// look the name up again.
    pub fn find_manifest(
        &self,
        namespace: &Namespace,
        key: &CacheKey,
    ) -> rusqlite::Result<Option<(i64, EntryManifest)>> {
        retry_replaced(|| {
            let conn = self.read()?;
            let Some(id) = find_entry_tx(&conn, namespace, key)? else {
                return Ok(None);
            };
            Ok(Some((id, manifest_in(&conn, id)?)))
        })
    }

    /// Deletes an entry (refcounts drop with it); false when absent.
    pub fn delete_entry(&self, namespace: &Namespace, key: &CacheKey) -> rusqlite::Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(id) = find_entry_tx(&tx, namespace, key)? else {
            return Ok(false);
        };
        release_entry(&tx, id)?;
        tx.commit()?;
        Ok(true)
    }

    /// The manifest of entry `id`.
    pub fn manifest(&self, id: i64) -> rusqlite::Result<EntryManifest> {
        // One read transaction (every reader is in one), so the statements see one snapshot: an
        // eviction committed between them would otherwise leave images without their layer rows.
        manifest_in(&*self.read()?, id)
    }

    /// What a lookup finds, read in one snapshot: the entry `key` in the first of `namespaces`
    /// holding it (exact, then fallback), else the entry sharing the longest instruction prefix
    /// (see [`find_prefix_in`]); with its match kind, shared depth and manifest.
    pub fn find_match(
        &self,
        namespaces: &[Namespace],
        key: &CacheKey,
        prefixes: &[Digest],
    ) -> rusqlite::Result<Option<Match>> {
        retry_replaced(|| {
            let conn = self.read()?;
            let mut found = None;
            for (i, ns) in namespaces.iter().enumerate() {
                if let Some(id) = find_entry_tx(&conn, ns, key)? {
                    let kind = if i == 0 {
                        MatchKind::Exact
                    } else {
                        MatchKind::Fallback
                    };
                    found = Some((id, kind, None));
                    break;
                }
            }
            if found.is_none()
                && let Some((id, depth)) = find_prefix_in(&conn, namespaces, prefixes)?
            {
                found = Some((id, MatchKind::Prefix, Some(depth)));
            }
            found
                .map(|(id, kind, depth)| Ok((id, kind, depth, manifest_in(&conn, id)?)))
                .transpose()
        })
    }
}

/// [`Db::manifest`] on `conn`, inside the caller's transaction.
fn manifest_in(conn: &Connection, id: i64) -> rusqlite::Result<EntryManifest> {
    let (namespace, key, created, last_used, hits, total_size) = conn.query_row(
        "SELECT namespace, key, created, last_used, hits, total_size FROM entries WHERE id = ?1",
        [id],
        |r| {
            let ns: Namespace = r.get::<_, String>(0)?.parse().map_err(|e| conv_err(0, e))?;
            let key: CacheKey = r.get::<_, String>(1)?.parse().map_err(|e| conv_err(1, e))?;
            Ok((
                ns,
                key,
                u64_at(r, 2)?,
                u64_at(r, 3)?,
                u64_at(r, 4)?,
                u64_at(r, 5)?,
            ))
        },
    )?;
    let mut stmt = conn.prepare_cached(
        "SELECT ei.image_id, ei.parent, ei.tags, i.config_size
             FROM entry_images ei JOIN images i ON i.id = ei.image_id
             WHERE ei.entry_id = ?1 ORDER BY ei.position",
    )?;
    let rows = stmt.query_map([id], |r| {
        let tags: Vec<String> =
            serde_json::from_str(&r.get::<_, String>(2)?).map_err(|e| conv_err(2, e))?;
        Ok((digest_at(r, 0)?, opt_digest_at(r, 1)?, tags, u64_at(r, 3)?))
    })?;
    let mut images = Vec::new();
    for row in rows {
        let (id, parent, tags, config_size) = row?;
        images.push(ImageInfo {
            id,
            parent,
            tags,
            config_size,
            layers: Vec::new(),
        });
    }
    let mut layer_stmt = conn.prepare_cached(
        "SELECT il.diff_id, b.size FROM image_layers il JOIN blobs b ON b.digest = il.diff_id
             WHERE il.image_id = ?1 ORDER BY il.idx",
    )?;
    for img in &mut images {
        img.layers = layer_stmt
            .query_map([img.id.to_string()], |r| {
                Ok(LayerInfo {
                    diff_id: digest_at(r, 0)?,
                    size: u64_at(r, 1)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    // A parent outside the entry cannot be restored with it: `docker load` would refuse it.
    let ids: std::collections::HashSet<Digest> = images.iter().map(|i| i.id).collect();
    for img in &mut images {
        if img.parent.is_some_and(|p| !ids.contains(&p)) {
            img.parent = None;
        }
    }
    let prefixes = conn
        .prepare_cached("SELECT hash FROM entry_prefixes WHERE entry_id = ?1 ORDER BY depth")?
        .query_map([id], |r| digest_at(r, 0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(EntryManifest {
        namespace,
        key,
        images,
        total_size,
        created,
        last_used,
        hits,
        prefixes,
    })
}

/// The entry in `namespaces` sharing the longest instruction prefix with `prefixes`; at equal depth
/// the earlier namespace wins, then the most recently used entry. Returns the entry id and the
/// shared depth.
///
/// One index seek per (depth, namespace), deepest first (`entry_prefixes_by_namespace` ends in
/// the use stamp, which commits and hits keep equal to the entry's): a first instruction every
/// entry of the fleet shares costs one row per namespace asked, not the rows sharing it.
pub(super) fn find_prefix_in(
    conn: &Connection,
    namespaces: &[Namespace],
    prefixes: &[Digest],
) -> rusqlite::Result<Option<(i64, u32)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT entry_id FROM entry_prefixes
         WHERE hash = ?1 AND depth = ?2 AND namespace = ?3
         ORDER BY last_use DESC LIMIT 1",
    )?;
    for depth in (1..=prefixes.len()).rev() {
        let hash = prefixes[depth - 1].to_string();
        for ns in namespaces {
            if let Some(id) = stmt
                .query_row(params![hash, depth as i64, ns.as_str()], |r| r.get(0))
                .optional()?
            {
                return Ok(Some((id, depth as u32)));
            }
        }
    }
    Ok(None)
}

impl Db {
    /// [`find_prefix_in`] in its own read transaction.
    pub fn find_prefix(
        &self,
        namespaces: &[Namespace],
        prefixes: &[Digest],
    ) -> rusqlite::Result<Option<(i64, u32)>> {
        find_prefix_in(&*self.read()?, namespaces, prefixes)
    }

    /// One page of entries, all or of one namespace, sorted by (namespace, key), starting after
    /// `after`; `limit` is clamped to 1..=[`MAX_PAGE`]. Costs the page, not the cache: the
    /// `(namespace, key)` index gives the rows in order from the cursor on.
    pub fn list_entries(
        &self,
        namespace: Option<&Namespace>,
        after: Option<&Cursor>,
        limit: u64,
    ) -> rusqlite::Result<Page<EntrySummary>> {
        let limit = limit.clamp(1, MAX_PAGE);
        let conn = self.read_settled()?;
        let (ns_after, key_after) = after
            .map(|c| (c.namespace.as_str(), c.key.as_str()))
            .unwrap_or(("", ""));
        // Two statements rather than `?1 IS NULL OR namespace = ?1`, which defeats the index.
        let mut items: Vec<EntrySummary> = match namespace {
            Some(ns) => {
                // A cursor of another namespace (or none) starts at the namespace's first key.
                let key_after = if ns_after == ns.as_str() {
                    key_after
                } else {
                    ""
                };
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {SUMMARY_COLUMNS} FROM entries e
                     WHERE e.namespace = ?1 AND e.key > ?2 ORDER BY e.key LIMIT ?3"
                ))?;
                stmt.query_map(
                    params![ns.as_str(), key_after, sql_u64(limit + 1)],
                    summary_at,
                )?
                .collect::<rusqlite::Result<_>>()?
            }
            None => {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {SUMMARY_COLUMNS} FROM entries e
                     WHERE (e.namespace, e.key) > (?1, ?2) ORDER BY e.namespace, e.key LIMIT ?3"
                ))?;
                stmt.query_map(params![ns_after, key_after, sql_u64(limit + 1)], summary_at)?
                    .collect::<rusqlite::Result<_>>()?
            }
        };
        let next = if items.len() as u64 > limit {
            items.truncate(limit as usize);
            items.last().map(|e| Cursor {
                namespace: e.namespace.to_string(),
                key: e.key.to_string(),
            })
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// The summaries of entries `ids` that exist, in the order of `ids`.
    pub fn entry_summaries(&self, ids: &[i64]) -> rusqlite::Result<Vec<EntrySummary>> {
        let conn = self.read_settled()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM entries e WHERE e.id = ?1"
        ))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(s) = stmt.query_row([id], summary_at).optional()? {
                out.push(s);
            }
        }
        Ok(out)
    }
}

/// The columns [`summary_at`] reads, of `entries e`: the image and layer counts are per-row
/// subqueries over that entry's rows only.
const SUMMARY_COLUMNS: &str = "e.namespace, e.key, e.total_size, e.created, e.last_used, e.hits,
    (SELECT COUNT(*) FROM entry_images WHERE entry_id = e.id),
    (SELECT COUNT(DISTINCT il.diff_id) FROM entry_images ei
       JOIN image_layers il ON il.image_id = ei.image_id WHERE ei.entry_id = e.id)";

fn summary_at(r: &rusqlite::Row<'_>) -> rusqlite::Result<EntrySummary> {
    Ok(EntrySummary {
        namespace: r.get::<_, String>(0)?.parse().map_err(|e| conv_err(0, e))?,
        key: r.get::<_, String>(1)?.parse().map_err(|e| conv_err(1, e))?,
        total_size: u64_at(r, 2)?,
        created: u64_at(r, 3)?,
        last_used: u64_at(r, 4)?,
        hits: u64_at(r, 5)?,
        images: u64_at(r, 6)?,
        layers: u64_at(r, 7)?,
    })
}

pub(super) fn find_entry_tx(
    tx: &Connection,
    namespace: &Namespace,
    key: &CacheKey,
) -> rusqlite::Result<Option<i64>> {
    tx.query_row(
        "SELECT id FROM entries WHERE namespace = ?1 AND key = ?2",
        [namespace.as_str(), key.as_str()],
        |r| r.get(0),
    )
    .optional()
}

/// Drops entry `id` and its references: each blob it used loses one refcount, and each image it
/// used that no other entry uses loses its `images` and `image_layers` rows.
///
/// Refcounts count entries per distinct blob, not images, so the image rows go without touching
/// them; the blobs themselves stay for the collector (refcount 0). Doing it in this transaction
/// keeps "an image row exists while an entry uses it": a commit re-using the image (a replace, in
/// the same transaction, or a later PUT) inserts its rows again, and commits and releases are
/// serialised by the connection lock and SQLite's write lock, so none sees the other half done.
pub(super) fn release_entry(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<()> {
    tx.execute(
        // A blob losing its last reference loses its upload grace too (`created` = 0): the
        // collector may delete it at once (disk: gc).
        "UPDATE blobs SET refcount = refcount - 1,
            created = CASE WHEN refcount = 1 THEN 0 ELSE created END
         WHERE refcount > 0 AND digest IN (
            SELECT image_id FROM entry_images WHERE entry_id = ?1
            UNION
            SELECT il.diff_id FROM entry_images ei JOIN image_layers il ON il.image_id = ei.image_id
            WHERE ei.entry_id = ?1)",
        [id],
    )?;
    let images: Vec<String> = tx
        .prepare_cached("SELECT DISTINCT image_id FROM entry_images WHERE entry_id = ?1")?
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    tx.execute("DELETE FROM entry_images WHERE entry_id = ?1", [id])?;
    tx.execute("DELETE FROM entry_prefixes WHERE entry_id = ?1", [id])?;
    tx.execute("DELETE FROM entries WHERE id = ?1", [id])?;
    // After the entry's `entry_images` rows went: they reference `images`.
    let mut del_layers = tx.prepare_cached(
        "DELETE FROM image_layers WHERE image_id = ?1
         AND NOT EXISTS (SELECT 1 FROM entry_images WHERE image_id = ?1)",
    )?;
    let mut del_image = tx.prepare_cached(
        "DELETE FROM images WHERE id = ?1
         AND NOT EXISTS (SELECT 1 FROM entry_images WHERE image_id = ?1)",
    )?;
    for image in &images {
        del_layers.execute([image])?;
        del_image.execute([image])?;
    }
    Ok(())
}
