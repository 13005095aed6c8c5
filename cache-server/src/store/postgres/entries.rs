//! Entries of the v1 API on PostgreSQL: commit, find, manifests, hits, listings, and
//! `release_entry`. Same statements and order as SQLite's `entries` (see there for the why of
//! each), in PostgreSQL's dialect.

use std::collections::HashSet;

use layercache_shared::api::{EntryManifest, EntrySummary, ImageInfo, LayerInfo, MatchKind};
use layercache_shared::{CacheKey, Digest, Namespace};
use postgres::{GenericClient, Row, Transaction};

use super::{
    Fail, PgDb, R, add_counter_tx, digest_at, insights, opt_digest_at, parse_at, sql_u64, u64_at,
    use_stamp,
};
use crate::store::meta::{MetaResult, retry_replaced};
use crate::store::sqlite::{Cursor, MAX_PAGE, Match, NewEntry, Page, counter, now};

impl PgDb {
    pub(crate) fn commit_entry(&self, entry: &NewEntry) -> MetaResult<i64> {
        let blobs = entry.blobs();
        let total: u64 = blobs.values().sum();
        let now = sql_u64(now());
        self.write(|tx| {
            let stamp = use_stamp(tx)?;
            let ins_blob = tx.prepare(
                "INSERT INTO blobs (digest, size, refcount, created) VALUES ($1, $2, 0, $3)
                 ON CONFLICT (digest) DO NOTHING",
            )?;
            for (d, size) in &blobs {
                tx.execute(&ins_blob, &[&d.to_string(), &sql_u64(*size), &now])?;
            }
            if let Some(old) = find_entry_tx(tx, &entry.namespace, &entry.key)? {
                release_entry(tx, old)?;
            }
            let entry_id: i64 = tx
                .query_one(
                    "INSERT INTO entries (namespace, key, created, last_used, hits, total_size,
                                          last_use)
                     VALUES ($1, $2, $3, $3, 0, $4, $5) RETURNING id",
                    &[
                        &entry.namespace.as_str(),
                        &entry.key.as_str(),
                        &now,
                        &sql_u64(total),
                        &stamp,
                    ],
                )?
                .try_get(0)?;
            let ins_image = tx.prepare(
                "INSERT INTO images (id, parent, config_size) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET parent = COALESCE(images.parent, excluded.parent)",
            )?;
            let ins_layer = tx.prepare(
                "INSERT INTO image_layers (image_id, idx, diff_id) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )?;
            let ins_entry_image = tx.prepare(
                "INSERT INTO entry_images (entry_id, image_id, position, tags, parent)
                 VALUES ($1, $2, $3, $4, $5)",
            )?;
            for (pos, img) in entry.images.iter().enumerate() {
                let id = img.id.to_string();
                let parent = img.parent.map(|p| p.to_string());
                tx.execute(&ins_image, &[&id, &parent, &sql_u64(img.config_size)])?;
                for (idx, (diff_id, _)) in img.layers.iter().enumerate() {
                    tx.execute(&ins_layer, &[&id, &(idx as i64), &diff_id.to_string()])?;
                }
                let tags =
                    serde_json::to_string(&img.tags).map_err(|e| Fail::Corrupt(e.to_string()))?;
                tx.execute(
                    &ins_entry_image,
                    &[&entry_id, &id, &(pos as i64), &tags, &parent],
                )?;
            }
            let ins_prefix = tx.prepare(
                "INSERT INTO entry_prefixes (entry_id, depth, hash, namespace, last_use)
                 VALUES ($1, $2, $3, $4, $5)",
            )?;
            for (i, h) in entry.prefixes.iter().enumerate() {
                tx.execute(
                    &ins_prefix,
                    &[
                        &entry_id,
                        &((i + 1) as i64),
                        &h.to_string(),
                        &entry.namespace.as_str(),
                        &stamp,
                    ],
                )?;
            }
            let digests: Vec<String> = blobs.keys().map(|d| d.to_string()).collect();
            tx.execute(
                "UPDATE blobs SET refcount = refcount + 1 WHERE digest = ANY($1)",
                &[&digests],
            )?;
            let layers: Vec<String> = entry
                .images
                .iter()
                .flat_map(|i| i.layers.iter().map(|(d, _)| d.to_string()))
                .collect();
            tx.execute(
                "UPDATE blobs SET layer = TRUE WHERE digest = ANY($1) AND NOT layer",
                &[&layers],
            )?;
            Ok(entry_id)
        })
    }

    pub(crate) fn find_entry(
        &self,
        namespace: &Namespace,
        key: &CacheKey,
    ) -> MetaResult<Option<i64>> {
        self.run(|c| find_entry_tx(c, namespace, key))
    }

    pub(crate) fn find_manifest(
        &self,
        namespace: &Namespace,
        key: &CacheKey,
    ) -> MetaResult<Option<(i64, EntryManifest)>> {
        retry_replaced(|| {
            self.read(|tx| {
                let Some(id) = find_entry_tx(tx, namespace, key)? else {
                    return Ok(None);
                };
                Ok(Some((id, manifest_in(tx, id)?)))
            })
        })
    }

    pub(crate) fn delete_entry(&self, namespace: &Namespace, key: &CacheKey) -> MetaResult<bool> {
        self.write(|tx| {
            let Some(id) = find_entry_tx(tx, namespace, key)? else {
                return Ok(false);
            };
            release_entry(tx, id)?;
            Ok(true)
        })
    }

    pub(crate) fn manifest(&self, id: i64) -> MetaResult<EntryManifest> {
        self.read(|tx| manifest_in(tx, id))
    }

    pub(crate) fn find_match(
        &self,
        namespaces: &[Namespace],
        key: &CacheKey,
        prefixes: &[Digest],
    ) -> MetaResult<Option<Match>> {
        retry_replaced(|| {
            self.read(|tx| {
                let mut found = None;
                for (i, ns) in namespaces.iter().enumerate() {
                    if let Some(id) = find_entry_tx(tx, ns, key)? {
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
                    && let Some((id, depth)) = find_prefix_in(tx, namespaces, prefixes)?
                {
                    found = Some((id, MatchKind::Prefix, Some(depth)));
                }
                found
                    .map(|(id, kind, depth)| Ok((id, kind, depth, manifest_in(tx, id)?)))
                    .transpose()
            })
        })
    }

    pub(crate) fn find_prefix(
        &self,
        namespaces: &[Namespace],
        prefixes: &[Digest],
    ) -> MetaResult<Option<(i64, u32)>> {
        self.run(|c| find_prefix_in(c, namespaces, prefixes))
    }

    pub(crate) fn record_hit(&self, id: i64, kind: Option<MatchKind>) -> MetaResult<()> {
        self.write(|tx| {
            let stamp = use_stamp(tx)?;
            tx.execute(
                "UPDATE entries SET hits = hits + 1, last_used = $2, last_use = $3 WHERE id = $1",
                &[&id, &sql_u64(now()), &stamp],
            )?;
            tx.execute(
                "UPDATE entry_prefixes SET last_use = $2 WHERE entry_id = $1",
                &[&id, &stamp],
            )?;
            add_counter_tx(tx, counter::HITS, 1)?;
            insights::count_lookup_tx(tx, id, kind, now())?;
            if let Some(kind) = kind {
                let name = match kind {
                    MatchKind::Exact => counter::HITS_EXACT,
                    MatchKind::Fallback => counter::HITS_FALLBACK,
                    MatchKind::Prefix => counter::HITS_PREFIX,
                };
                add_counter_tx(tx, name, 1)?;
            }
            Ok(())
        })
    }

    pub(crate) fn list_entries(
        &self,
        namespace: Option<&Namespace>,
        after: Option<&Cursor>,
        limit: u64,
    ) -> MetaResult<Page<EntrySummary>> {
        let limit = limit.clamp(1, MAX_PAGE);
        let (ns_after, key_after) = after
            .map(|c| (c.namespace.as_str(), c.key.as_str()))
            .unwrap_or(("", ""));
        let mut items: Vec<EntrySummary> = self.run(|c| {
            let rows = match namespace {
                Some(ns) => {
                    let key_after = if ns_after == ns.as_str() {
                        key_after
                    } else {
                        ""
                    };
                    c.query(
                        &format!(
                            "SELECT {SUMMARY_COLUMNS} FROM entries e
                             WHERE e.namespace = $1 AND e.key > $2 ORDER BY e.key LIMIT $3"
                        ),
                        &[&ns.as_str(), &key_after, &sql_u64(limit + 1)],
                    )?
                }
                None => c.query(
                    &format!(
                        "SELECT {SUMMARY_COLUMNS} FROM entries e
                         WHERE (e.namespace, e.key) > ($1, $2) ORDER BY e.namespace, e.key
                         LIMIT $3"
                    ),
                    &[&ns_after, &key_after, &sql_u64(limit + 1)],
                )?,
            };
            rows.iter().map(summary_at).collect()
        })?;
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

    pub(crate) fn entry_summaries(&self, ids: &[i64]) -> MetaResult<Vec<EntrySummary>> {
        self.read(|tx| {
            let stmt = tx.prepare(&format!(
                "SELECT {SUMMARY_COLUMNS} FROM entries e WHERE e.id = $1"
            ))?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(row) = tx.query_opt(&stmt, &[id])? {
                    out.push(summary_at(&row)?);
                }
            }
            Ok(out)
        })
    }
}

/// The columns [`summary_at`] reads, of `entries e`.
const SUMMARY_COLUMNS: &str = "e.namespace, e.key, e.total_size, e.created, e.last_used, e.hits,
    (SELECT COUNT(*) FROM entry_images WHERE entry_id = e.id),
    (SELECT COUNT(DISTINCT il.diff_id) FROM entry_images ei
       JOIN image_layers il ON il.image_id = ei.image_id WHERE ei.entry_id = e.id)";

fn summary_at(r: &Row) -> R<EntrySummary> {
    Ok(EntrySummary {
        namespace: parse_at(r, 0)?,
        key: parse_at(r, 1)?,
        total_size: u64_at(r, 2)?,
        created: u64_at(r, 3)?,
        last_used: u64_at(r, 4)?,
        hits: u64_at(r, 5)?,
        images: u64_at(r, 6)?,
        layers: u64_at(r, 7)?,
    })
}

/// The manifest of entry `id`, inside the caller's transaction; [`Fail::NoRow`] when gone.
pub(super) fn manifest_in(c: &mut impl GenericClient, id: i64) -> R<EntryManifest> {
    let row = c
        .query_opt(
            "SELECT namespace, key, created, last_used, hits, total_size FROM entries
             WHERE id = $1",
            &[&id],
        )?
        .ok_or(Fail::NoRow)?;
    let (namespace, key): (Namespace, CacheKey) = (parse_at(&row, 0)?, parse_at(&row, 1)?);
    let (created, last_used, hits, total_size) = (
        u64_at(&row, 2)?,
        u64_at(&row, 3)?,
        u64_at(&row, 4)?,
        u64_at(&row, 5)?,
    );
    let mut images = Vec::new();
    for r in c.query(
        "SELECT ei.image_id, ei.parent, ei.tags, i.config_size
         FROM entry_images ei JOIN images i ON i.id = ei.image_id
         WHERE ei.entry_id = $1 ORDER BY ei.position",
        &[&id],
    )? {
        let tags: Vec<String> = serde_json::from_str(r.try_get::<_, &str>(2)?)
            .map_err(|e| Fail::Corrupt(format!("entry_images.tags: {e}")))?;
        images.push(ImageInfo {
            id: digest_at(&r, 0)?,
            parent: opt_digest_at(&r, 1)?,
            tags,
            config_size: u64_at(&r, 3)?,
            layers: Vec::new(),
        });
    }
    let layer_stmt = c.prepare(
        "SELECT il.diff_id, b.size FROM image_layers il JOIN blobs b ON b.digest = il.diff_id
         WHERE il.image_id = $1 ORDER BY il.idx",
    )?;
    for img in &mut images {
        img.layers = c
            .query(&layer_stmt, &[&img.id.to_string()])?
            .iter()
            .map(|r| {
                Ok(LayerInfo {
                    diff_id: digest_at(r, 0)?,
                    size: u64_at(r, 1)?,
                })
            })
            .collect::<R<_>>()?;
    }
    // A parent outside the entry cannot be restored with it: `docker load` would refuse it.
    let ids: HashSet<Digest> = images.iter().map(|i| i.id).collect();
    for img in &mut images {
        if img.parent.is_some_and(|p| !ids.contains(&p)) {
            img.parent = None;
        }
    }
    let prefixes = c
        .query(
            "SELECT hash FROM entry_prefixes WHERE entry_id = $1 ORDER BY depth",
            &[&id],
        )?
        .iter()
        .map(|r| digest_at(r, 0))
        .collect::<R<_>>()?;
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

/// The entry in `namespaces` sharing the longest instruction prefix (see SQLite's
/// `find_prefix_in`): one index seek per (depth, namespace), deepest first.
pub(super) fn find_prefix_in(
    c: &mut impl GenericClient,
    namespaces: &[Namespace],
    prefixes: &[Digest],
) -> R<Option<(i64, u32)>> {
    if prefixes.is_empty() || namespaces.is_empty() {
        return Ok(None);
    }
    let stmt = c.prepare(
        "SELECT entry_id FROM entry_prefixes
         WHERE hash = $1 AND depth = $2 AND namespace = $3
         ORDER BY last_use DESC LIMIT 1",
    )?;
    for depth in (1..=prefixes.len()).rev() {
        let hash = prefixes[depth - 1].to_string();
        for ns in namespaces {
            if let Some(row) = c.query_opt(&stmt, &[&hash, &(depth as i64), &ns.as_str()])? {
                return Ok(Some((row.try_get(0)?, depth as u32)));
            }
        }
    }
    Ok(None)
}

pub(super) fn find_entry_tx(
    c: &mut impl GenericClient,
    namespace: &Namespace,
    key: &CacheKey,
) -> R<Option<i64>> {
    Ok(c.query_opt(
        "SELECT id FROM entries WHERE namespace = $1 AND key = $2",
        &[&namespace.as_str(), &key.as_str()],
    )?
    .map(|r| r.try_get(0))
    .transpose()?)
}

/// Drops entry `id` and its references, as SQLite's `release_entry` does (see there).
pub(super) fn release_entry(tx: &mut Transaction<'_>, id: i64) -> R<()> {
    tx.execute(
        "UPDATE blobs SET refcount = refcount - 1,
            created = CASE WHEN refcount = 1 THEN 0 ELSE created END
         WHERE refcount > 0 AND digest IN (
            SELECT image_id FROM entry_images WHERE entry_id = $1
            UNION
            SELECT il.diff_id FROM entry_images ei JOIN image_layers il ON il.image_id = ei.image_id
            WHERE ei.entry_id = $1)",
        &[&id],
    )?;
    let images: Vec<String> = tx
        .query(
            "SELECT DISTINCT image_id FROM entry_images WHERE entry_id = $1",
            &[&id],
        )?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    tx.execute("DELETE FROM entry_images WHERE entry_id = $1", &[&id])?;
    tx.execute("DELETE FROM entry_prefixes WHERE entry_id = $1", &[&id])?;
    tx.execute("DELETE FROM entries WHERE id = $1", &[&id])?;
    tx.execute(
        "DELETE FROM image_layers WHERE image_id = ANY($1)
         AND NOT EXISTS (SELECT 1 FROM entry_images ei WHERE ei.image_id = image_layers.image_id)",
        &[&images],
    )?;
    tx.execute(
        "DELETE FROM images WHERE id = ANY($1)
         AND NOT EXISTS (SELECT 1 FROM entry_images ei WHERE ei.image_id = images.id)",
        &[&images],
    )?;
    Ok(())
}
