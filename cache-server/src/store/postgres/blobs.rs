//! Blob rows on PostgreSQL: recording uploads and sizes, and the collector's and `verify`'s
//! queries and transactions (as SQLite's `blobs`).

use std::collections::{BTreeMap, HashMap, HashSet};

use layercache_shared::Digest;

use super::entries::release_entry;
use super::{PgDb, add_counter_tx, digest_at, exists, sql_u64, totals, u64_at};
use crate::lru::{EntryUse, Holder};
use crate::store::meta::{BlobRow, MetaResult};
use crate::store::sqlite::{counter, now};

impl PgDb {
    pub(crate) fn insert_blob(&self, digest: &Digest, size: u64) -> MetaResult<bool> {
        let d = digest.to_string();
        self.write(|tx| {
            // `xmax = 0`: the row was inserted, not updated by the conflict clause.
            Ok(tx
                .query_one(
                    "INSERT INTO blobs (digest, size, refcount, created) VALUES ($1, $2, 0, $3)
                     ON CONFLICT (digest) DO UPDATE SET created = excluded.created
                     RETURNING (xmax = 0)",
                    &[&d, &sql_u64(size), &sql_u64(now())],
                )?
                .try_get(0)?)
        })
    }

    pub(crate) fn blob_sizes(&self, digests: &[Digest]) -> MetaResult<HashMap<Digest, u64>> {
        let wanted: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
        self.run(|c| {
            c.query(
                "SELECT digest, size FROM blobs WHERE digest = ANY($1)",
                &[&wanted],
            )?
            .iter()
            .map(|r| Ok((digest_at(r, 0)?, u64_at(r, 1)?)))
            .collect()
        })
    }

    pub(crate) fn image_known(&self, id: &Digest) -> MetaResult<bool> {
        let id = id.to_string();
        self.run(|c| exists(c, "SELECT 1 FROM images WHERE id = $1", &[&id]))
    }

    pub(crate) fn entry_usage(&self) -> MetaResult<Vec<EntryUse>> {
        self.read(|tx| {
            let mut out: BTreeMap<i64, EntryUse> = BTreeMap::new();
            for r in tx.query("SELECT id, last_use FROM entries", &[])? {
                let id: i64 = r.try_get(0)?;
                out.insert(
                    id,
                    EntryUse {
                        id: Holder::Entry(id),
                        last_used: u64_at(&r, 1)?,
                        blobs: Vec::new(),
                    },
                );
            }
            for r in tx.query(
                "SELECT entry_id, image_id FROM entry_images
                 UNION
                 SELECT ei.entry_id, il.diff_id FROM entry_images ei
                 JOIN image_layers il ON il.image_id = ei.image_id",
                &[],
            )? {
                if let Some(e) = out.get_mut(&r.try_get::<_, i64>(0)?) {
                    e.blobs.push(digest_at(&r, 1)?);
                }
            }
            Ok(out.into_values().collect())
        })
    }

    pub(crate) fn blob_rows(&self) -> MetaResult<Vec<BlobRow>> {
        self.run(|c| {
            c.query("SELECT digest, size, refcount, created FROM blobs", &[])?
                .iter()
                .map(|r| {
                    Ok(BlobRow {
                        digest: digest_at(r, 0)?,
                        size: u64_at(r, 1)?,
                        refcount: u64_at(r, 2)?,
                        created: u64_at(r, 3)?,
                    })
                })
                .collect()
        })
    }

    pub(crate) fn evict_entry(&self, id: i64, last_used: u64) -> MetaResult<bool> {
        self.write(|tx| {
            let current: Option<i64> = tx
                .query_opt("SELECT last_use FROM entries WHERE id = $1", &[&id])?
                .map(|r| r.try_get(0))
                .transpose()?;
            if current != Some(sql_u64(last_used)) {
                return Ok(false);
            }
            release_entry(tx, id)?;
            add_counter_tx(tx, counter::EVICTED_ENTRIES, 1)?;
            Ok(true)
        })
    }

    pub(crate) fn delete_unreferenced(&self, digests: &[Digest]) -> MetaResult<Vec<(Digest, u64)>> {
        self.write(|tx| {
            let del = tx.prepare(
                "DELETE FROM blobs WHERE digest = $1 AND refcount = 0
                 AND NOT EXISTS (SELECT 1 FROM manifests WHERE digest = $1)
                 AND NOT EXISTS (SELECT 1 FROM manifest_refs WHERE digest = $1)
                 AND NOT EXISTS (SELECT 1 FROM blob_leases
                                 WHERE digest = $1 AND expires_at > clock_timestamp())
                 RETURNING size",
            )?;
            let mut deleted = Vec::new();
            for d in digests {
                let s = d.to_string();
                if let Some(r) = tx.query_opt(&del, &[&s])? {
                    tx.execute("DELETE FROM repo_blobs WHERE digest = $1", &[&s])?;
                    tx.execute("DELETE FROM blob_uploads WHERE digest = $1", &[&s])?;
                    deleted.push((*d, u64_at(&r, 0)?));
                }
            }
            let bytes: u64 = deleted.iter().map(|(_, s)| s).sum();
            add_counter_tx(tx, counter::COLLECTED_BLOBS, deleted.len() as u64)?;
            add_counter_tx(tx, counter::EVICTED_BYTES, bytes)?;
            Ok(deleted)
        })
    }

    pub(crate) fn drop_corrupt_blob(&self, digest: &Digest) -> MetaResult<u64> {
        let d = digest.to_string();
        self.write(|tx| {
            let ids: Vec<i64> = tx
                .query(
                    "SELECT entry_id FROM entry_images WHERE image_id = $1
                     UNION
                     SELECT ei.entry_id FROM entry_images ei
                     JOIN image_layers il ON il.image_id = ei.image_id WHERE il.diff_id = $1",
                    &[&d],
                )?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            for id in &ids {
                release_entry(tx, *id)?;
            }
            tx.execute(
                "DELETE FROM manifests WHERE digest = $1
                 OR id IN (SELECT manifest_id FROM manifest_refs WHERE digest = $1)",
                &[&d],
            )?;
            tx.execute("DELETE FROM repo_blobs WHERE digest = $1", &[&d])?;
            tx.execute("DELETE FROM blob_uploads WHERE digest = $1", &[&d])?;
            tx.execute("DELETE FROM blobs WHERE digest = $1", &[&d])?;
            add_counter_tx(tx, counter::QUARANTINED_BLOBS, 1)?;
            Ok(ids.len() as u64)
        })
    }

    pub(crate) fn stored_bytes(&self) -> MetaResult<u64> {
        self.run(|c| Ok(totals(c)?.blob_bytes))
    }

    pub(crate) fn unreferenced_blobs(&self, cutoff: u64) -> MetaResult<Vec<Digest>> {
        self.run(|c| {
            c.query(
                "SELECT digest FROM blobs WHERE refcount = 0 AND created <= $1 ORDER BY created",
                &[&sql_u64(cutoff)],
            )?
            .iter()
            .map(|r| digest_at(r, 0))
            .collect()
        })
    }

    pub(crate) fn blob_digests(&self) -> MetaResult<HashSet<Digest>> {
        self.run(|c| {
            c.query("SELECT digest FROM blobs", &[])?
                .iter()
                .map(|r| digest_at(r, 0))
                .collect()
        })
    }

    pub(crate) fn anything_expired(
        &self,
        entry_cutoff_ms: u64,
        tag_cutoff: u64,
    ) -> MetaResult<bool> {
        self.run(|c| {
            Ok(exists(
                c,
                "SELECT 1 FROM entries WHERE last_use < $1 LIMIT 1",
                &[&sql_u64(entry_cutoff_ms)],
            )? || exists(
                c,
                "SELECT 1 FROM tags WHERE last_used < $1 LIMIT 1",
                &[&sql_u64(tag_cutoff)],
            )?)
        })
    }
}
