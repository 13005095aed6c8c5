//! Blob rows: recording uploads, sizes, and the queries and transactions of the collector and
//! `verify` (disk: gc).

use std::collections::{BTreeMap, HashMap, HashSet};

use layercache_shared::Digest;
use rusqlite::{OptionalExtension, params};

use super::{Db, add_counter_tx, counter, digest_at, entries::release_entry, now, sql_u64, u64_at};

impl Db {
    /// Records a stored blob (or marks an existing one freshly uploaded); true when the row is new.
    pub fn insert_blob(&self, digest: &Digest, size: u64) -> rusqlite::Result<bool> {
        let conn = self.conn();
        let existed = conn
            .query_row(
                "SELECT 1 FROM blobs WHERE digest = ?1",
                [digest.to_string()],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        conn.execute(
            // An upload refreshes `created`: the collector spares unreferenced blobs uploaded within
            // its grace period, so a client's blob PUTs survive until its commit.
            "INSERT INTO blobs (digest, size, refcount, created) VALUES (?1, ?2, 0, ?3)
             ON CONFLICT (digest) DO UPDATE SET created = excluded.created",
            params![digest.to_string(), sql_u64(size), sql_u64(now())],
        )?;
        Ok(!existed)
    }

    /// Sizes of the given blobs that are recorded (absent ones are left out).
    pub fn blob_sizes(&self, digests: &[Digest]) -> rusqlite::Result<HashMap<Digest, u64>> {
        let conn = self.read()?;
        let mut stmt = conn.prepare_cached("SELECT size FROM blobs WHERE digest = ?1")?;
        let mut out = HashMap::new();
        for d in digests {
            if let Some(size) = stmt
                .query_row([d.to_string()], |r| u64_at(r, 0))
                .optional()?
            {
                out.insert(*d, size);
            }
        }
        Ok(out)
    }

    /// Whether an image (by config digest) is recorded, i.e. some entry uses it.
    pub fn image_known(&self, id: &Digest) -> rusqlite::Result<bool> {
        self.read()?
            .query_row(
                "SELECT 1 FROM images WHERE id = ?1",
                [id.to_string()],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
    }
}

/// A row of `blobs`, for the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRow {
    pub digest: Digest,
    pub size: u64,
    /// Entries referencing the blob.
    pub refcount: u64,
    /// When it was stored or last uploaded (seconds since the epoch); 0 once its last entry went,
    /// so the upload grace period spares only blobs waiting for their first commit.
    pub created: u64,
}

/// Queries and transactions of the collector and `verify` (disk: gc).
impl Db {
    /// Every entry with its last use stamp (milliseconds, see `Db::use_stamp`) and the distinct
    /// blobs it references. Read only when the collector has something to evict.
    pub fn entry_usage(&self) -> rusqlite::Result<Vec<crate::lru::EntryUse>> {
        let conn = self.read_settled()?;
        let mut out: BTreeMap<i64, crate::lru::EntryUse> = BTreeMap::new();
        let mut stmt = conn.prepare_cached("SELECT id, last_use FROM entries")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, u64_at(r, 1)?)))? {
            let (id, last_used) = row?;
            out.insert(
                id,
                crate::lru::EntryUse {
                    id: crate::lru::Holder::Entry(id),
                    last_used,
                    blobs: Vec::new(),
                },
            );
        }
        let mut stmt = conn.prepare_cached(
            "SELECT entry_id, image_id FROM entry_images
             UNION
             SELECT ei.entry_id, il.diff_id FROM entry_images ei
             JOIN image_layers il ON il.image_id = ei.image_id",
        )?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, digest_at(r, 1)?)))? {
            let (id, digest) = row?;
            if let Some(e) = out.get_mut(&id) {
                e.blobs.push(digest);
            }
        }
        Ok(out.into_values().collect())
    }

    /// Every blob row.
    pub fn blob_rows(&self) -> rusqlite::Result<Vec<BlobRow>> {
        let conn = self.read()?;
        let mut stmt = conn.prepare_cached("SELECT digest, size, refcount, created FROM blobs")?;
        stmt.query_map([], |r| {
            Ok(BlobRow {
                digest: digest_at(r, 0)?,
                size: u64_at(r, 1)?,
                refcount: u64_at(r, 2)?,
                created: u64_at(r, 3)?,
            })
        })?
        .collect()
    }

    /// Evicts entry `id` if it was not used since use stamp `last_use` (a restore in between
    /// keeps it); its blobs lose a reference. True when evicted.
    pub fn evict_entry(&self, id: i64, last_used: u64) -> rusqlite::Result<bool> {
        let mut conn = self.conn();
        // A use still queued must count: write it before comparing stamps.
        self.write_uses(&mut conn)?;
        let tx = conn.transaction()?;
        let current: Option<i64> = tx
            .query_row("SELECT last_use FROM entries WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        if current != Some(sql_u64(last_used)) {
            return Ok(false);
        }
        release_entry(&tx, id)?;
        add_counter_tx(&tx, counter::EVICTED_ENTRIES, 1)?;
        tx.commit()?;
        Ok(true)
    }

    /// Deletes the rows of those `digests` that no entry references (refcount re-checked in this
    /// transaction); returns the deleted blobs with their sizes. The caller unlinks the files after
    /// this returns, while still holding the pin lock (see [`crate::store::pins`]).
    pub fn delete_unreferenced(&self, digests: &[Digest]) -> rusqlite::Result<Vec<(Digest, u64)>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut deleted = Vec::new();
        {
            // A blob a manifest row names (its own bytes, or a reference) lives on: registry
            // liveness is decided on manifests first (disk: gc).
            let mut del = tx.prepare_cached(
                "DELETE FROM blobs WHERE digest = ?1 AND refcount = 0
                 AND NOT EXISTS (SELECT 1 FROM manifests WHERE digest = ?1)
                 AND NOT EXISTS (SELECT 1 FROM manifest_refs WHERE digest = ?1)
                 RETURNING size",
            )?;
            let mut unlink = tx.prepare_cached("DELETE FROM repo_blobs WHERE digest = ?1")?;
            let mut forget = tx.prepare_cached("DELETE FROM blob_uploads WHERE digest = ?1")?;
            for d in digests {
                if let Some(size) = del
                    .query_row([d.to_string()], |r| u64_at(r, 0))
                    .optional()?
                {
                    unlink.execute([d.to_string()])?;
                    forget.execute([d.to_string()])?;
                    deleted.push((*d, size));
                }
            }
        }
        let bytes: u64 = deleted.iter().map(|(_, s)| s).sum();
        add_counter_tx(&tx, counter::COLLECTED_BLOBS, deleted.len() as u64)?;
        add_counter_tx(&tx, counter::EVICTED_BYTES, bytes)?;
        tx.commit()?;
        Ok(deleted)
    }

    /// Drops a corrupt blob: every entry referencing it (so it is never served), then its row.
    /// Returns the entries dropped.
    pub fn drop_corrupt_blob(&self, digest: &Digest) -> rusqlite::Result<u64> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let d = digest.to_string();
        let ids: Vec<i64> = tx
            .prepare(
                "SELECT entry_id FROM entry_images WHERE image_id = ?1
                 UNION
                 SELECT ei.entry_id FROM entry_images ei
                 JOIN image_layers il ON il.image_id = ei.image_id WHERE il.diff_id = ?1",
            )?
            .query_map([&d], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for id in &ids {
            release_entry(&tx, *id)?;
        }
        // Registry manifests that are or reference the blob go too (their tags with them).
        tx.execute(
            "DELETE FROM manifests WHERE digest = ?1
             OR id IN (SELECT manifest_id FROM manifest_refs WHERE digest = ?1)",
            [&d],
        )?;
        tx.execute("DELETE FROM repo_blobs WHERE digest = ?1", [&d])?;
        tx.execute("DELETE FROM blob_uploads WHERE digest = ?1", [&d])?;
        tx.execute("DELETE FROM blobs WHERE digest = ?1", [&d])?;
        add_counter_tx(&tx, counter::QUARANTINED_BLOBS, 1)?;
        tx.commit()?;
        Ok(ids.len() as u64)
    }

    /// Bytes of all blob rows (maintained by triggers: no scan).
    pub fn stored_bytes(&self) -> rusqlite::Result<u64> {
        Ok(super::totals(&*self.read()?)?.blob_bytes)
    }

    /// Unreferenced blobs stored before `cutoff` (seconds since the epoch): the collector's
    /// candidates, read from the partial index `blobs_unreferenced` instead of every blob row.
    pub fn unreferenced_blobs(&self, cutoff: u64) -> rusqlite::Result<Vec<Digest>> {
        let conn = self.read()?;
        let mut stmt = conn.prepare_cached(
            "SELECT digest FROM blobs WHERE refcount = 0 AND created <= ?1 ORDER BY created",
        )?;
        stmt.query_map([sql_u64(cutoff)], |r| digest_at(r, 0))?
            .collect()
    }

    /// Every recorded blob digest (one scan, for the orphan sweep at start).
    pub fn blob_digests(&self) -> rusqlite::Result<HashSet<Digest>> {
        let conn = self.read()?;
        let mut stmt = conn.prepare("SELECT digest FROM blobs")?;
        stmt.query_map([], |r| digest_at(r, 0))?.collect()
    }

    /// Whether any entry was last used before `entry_cutoff_ms` (a use stamp) or any registry tag
    /// before `tag_cutoff` (seconds): the time-to-live has something to evict. Indexed on entries.
    pub fn anything_expired(
        &self,
        entry_cutoff_ms: u64,
        tag_cutoff: u64,
    ) -> rusqlite::Result<bool> {
        let conn = self.read_settled()?;
        let entry = conn
            .query_row(
                "SELECT 1 FROM entries WHERE last_use < ?1 LIMIT 1",
                [sql_u64(entry_cutoff_ms)],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        Ok(entry
            || conn
                .query_row(
                    "SELECT 1 FROM tags WHERE last_used < ?1 LIMIT 1",
                    [sql_u64(tag_cutoff)],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
    }

    /// Whether blob `digest` has a row, with its recorded size.
    pub fn blob_size(&self, digest: &Digest) -> rusqlite::Result<Option<u64>> {
        Ok(self
            .blob_sizes(std::slice::from_ref(digest))?
            .remove(digest))
    }
}
