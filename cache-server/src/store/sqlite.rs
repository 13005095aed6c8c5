//! The SQLite index: which blobs exist, which images and entries reference them, hit counters.
//!
//! One connection behind a std `Mutex`: every call runs on a `spawn_blocking` thread, holds the
//! lock for one short statement or transaction, and SQLite serialises writers anyway, so a pool
//! would add contention without adding throughput. WAL mode keeps readers of the file (backups,
//! `sqlite3` for debugging) from blocking the server.
//!
//! Migrations are append-only: [`MIGRATIONS`]`[i]` moves `user_version` from `i` to `i + 1`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use layercache_shared::api::{EntryManifest, EntrySummary, ImageInfo, LayerInfo, MatchKind, Stats};
use layercache_shared::{CacheKey, Digest, Namespace};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

/// Schema steps; never edit one that shipped, append a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    refcount INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL
);
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    created INTEGER NOT NULL,
    last_used INTEGER NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    total_size INTEGER NOT NULL,
    UNIQUE (namespace, key)
);
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    parent TEXT,
    config_size INTEGER NOT NULL
);
CREATE TABLE image_layers (
    image_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    diff_id TEXT NOT NULL,
    PRIMARY KEY (image_id, idx)
);
CREATE TABLE entry_images (
    entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
    image_id TEXT NOT NULL REFERENCES images(id),
    position INTEGER NOT NULL,
    tags TEXT NOT NULL,
    parent TEXT,
    PRIMARY KEY (entry_id, position)
);
CREATE TABLE entry_prefixes (
    entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
    depth INTEGER NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (entry_id, depth)
);
CREATE INDEX entry_prefixes_by_hash ON entry_prefixes (hash, depth);
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"#,
    // Access (issue 5): bearer tokens, stored as the sha256 of the token, never the token; and
    // indexes for "which namespaces reference this blob" (blob GET by a namespace-limited token).
    r#"
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    name TEXT,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    namespaces TEXT NOT NULL,
    created INTEGER NOT NULL,
    last_used INTEGER,
    revoked INTEGER
);
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked IS NULL;
CREATE INDEX image_layers_by_diff_id ON image_layers (diff_id);
CREATE INDEX entry_images_by_image ON entry_images (image_id);
"#,
    // Issue 4 (dashboard, /metrics): see `insights` for how these tables are used.
    r#"
CREATE TABLE activity (
    width INTEGER NOT NULL,
    start INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (width, start, namespace, kind)
);
CREATE TABLE lookup_totals (
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (namespace, kind)
);
CREATE TABLE builds (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    cache TEXT NOT NULL,
    lookup_s REAL NOT NULL,
    restore_s REAL NOT NULL,
    build_s REAL NOT NULL,
    push_s REAL NOT NULL,
    total_s REAL NOT NULL,
    saved_s REAL NOT NULL,
    image_id TEXT
);
CREATE INDEX builds_by_key ON builds (key, cache, at);
CREATE INDEX builds_by_at ON builds (at);
CREATE INDEX blobs_by_size ON blobs (size);
CREATE INDEX entries_by_size ON entries (total_size);
"#,
    // Images no entry uses, which earlier versions kept after their last entry went (now
    // `release_entry` removes them with it).
    r#"
DELETE FROM image_layers WHERE image_id NOT IN (SELECT image_id FROM entry_images);
DELETE FROM images WHERE id NOT IN (SELECT image_id FROM entry_images);
"#,
    // Issue 10, the registry protocol: see `registry` for how these tables are used.
    r#"
CREATE TABLE repo_blobs (
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (repo, digest)
) WITHOUT ROWID;
CREATE INDEX repo_blobs_by_digest ON repo_blobs (digest);
CREATE TABLE manifests (
    id INTEGER PRIMARY KEY,
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    artifact_type TEXT,
    subject TEXT,
    annotations TEXT,
    created INTEGER NOT NULL,
    last_used INTEGER NOT NULL,
    UNIQUE (repo, digest)
);
CREATE INDEX manifests_by_subject ON manifests (repo, subject) WHERE subject IS NOT NULL;
CREATE INDEX manifests_by_digest ON manifests (digest);
CREATE TABLE manifest_refs (
    manifest_id INTEGER NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    is_manifest INTEGER NOT NULL,
    PRIMARY KEY (manifest_id, digest)
);
CREATE INDEX manifest_refs_by_digest ON manifest_refs (digest);
CREATE TABLE tags (
    id INTEGER PRIMARY KEY,
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    manifest_id INTEGER NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
    updated INTEGER NOT NULL,
    last_used INTEGER NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    UNIQUE (repo, tag)
);
CREATE INDEX tags_by_manifest ON tags (manifest_id);
"#,
];

mod insights;
mod registry;
pub use insights::{ActivityKind, HISTORY_WINDOWS};
pub use registry::{GraphManifest, ManifestRow, NewManifest, Referrer, RegistryGraph};

/// Counter names in the `counters` table.
pub mod counter {
    pub const HITS: &str = "hits";
    pub const MISSES: &str = "misses";
    pub const HITS_EXACT: &str = "hits_exact";
    pub const HITS_FALLBACK: &str = "hits_fallback";
    pub const HITS_PREFIX: &str = "hits_prefix";
    pub const BYTES_SERVED: &str = "bytes_served";
    pub const BYTES_RECEIVED: &str = "bytes_received";
    pub const BYTES_DEDUPLICATED: &str = "bytes_deduplicated";
    pub const UPLOADS_FAILED: &str = "uploads_failed";
    /// Entries evicted by the quota or the time-to-live (disk: gc).
    pub const EVICTED_ENTRIES: &str = "evicted_entries";
    /// Bytes of blobs the collector deleted (disk: gc).
    pub const EVICTED_BYTES: &str = "evicted_bytes";
    /// Blobs the collector deleted (disk: gc).
    pub const COLLECTED_BLOBS: &str = "collected_blobs";
    /// Blobs `verify` found corrupt and quarantined (disk: gc).
    pub const QUARANTINED_BLOBS: &str = "quarantined_blobs";
    /// What `/metrics` calls evictions: the collector's counters above.
    pub const EVICTIONS: &str = EVICTED_ENTRIES;
    pub const BYTES_EVICTED: &str = EVICTED_BYTES;
    /// Prefix of per-reason failure counters: `uploads_failed:<error code>`.
    pub const UPLOADS_FAILED_PREFIX: &str = "uploads_failed:";
    /// Build reports received, and the milliseconds they saved.
    pub const BUILDS: &str = "builds";
    pub const MS_SAVED: &str = "ms_saved";
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One image of an entry to commit.
#[derive(Debug, Clone)]
pub struct NewImage {
    /// Config digest.
    pub id: Digest,
    /// The image it was built on, as the upload said.
    pub parent: Option<Digest>,
    /// `repo:tag` names to restore with it.
    pub tags: Vec<String>,
    /// Bytes of the config blob.
    pub config_size: u64,
    /// `(diff_id, size)` bottom-up.
    pub layers: Vec<(Digest, u64)>,
}

/// An entry to commit: every blob it names must already be stored (files renamed into place).
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub namespace: Namespace,
    pub key: CacheKey,
    /// Parents before children.
    pub images: Vec<NewImage>,
    /// Instruction-prefix hashes, instruction 1 first.
    pub prefixes: Vec<Digest>,
}

impl NewEntry {
    /// Every distinct blob (configs and layers) with its size.
    pub fn blobs(&self) -> BTreeMap<Digest, u64> {
        let mut out = BTreeMap::new();
        for img in &self.images {
            out.insert(img.id, img.config_size);
            out.extend(img.layers.iter().copied());
        }
        out
    }
}

/// The SQLite index of a data dir.
pub struct Db {
    /// The one connection; see the module docs for why a plain `Mutex`.
    conn: Mutex<Connection>,
}

fn conv_err(idx: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e))
}

fn digest_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<Digest> {
    row.get::<_, String>(idx)?
        .parse()
        .map_err(|e| conv_err(idx, e))
}

fn opt_digest_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<Digest>> {
    row.get::<_, Option<String>>(idx)?
        .map(|s| s.parse().map_err(|e| conv_err(idx, e)))
        .transpose()
}

pub(crate) fn u64_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    Ok(row.get::<_, i64>(idx)?.max(0) as u64)
}

/// SQLite stores integers as i64; sizes above 2^63 do not occur.
pub(crate) fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Db {
    /// Opens (creating if needed) `path` and brings its schema up to date.
    pub fn open(path: &Path) -> rusqlite::Result<Db> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit the client was told about survives power loss, not just a crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        migrate(&mut conn)?;
        Ok(Db {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock rolled back its transaction on unwind; the connection is
        // still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

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
        let conn = self.conn();
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
        self.conn()
            .query_row(
                "SELECT 1 FROM images WHERE id = ?1",
                [id.to_string()],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
    }

    /// Commits `entry` in one transaction, replacing an entry of the same name. Blob rows are
    /// added for any blob not yet recorded; refcounts follow.
    pub fn commit_entry(&self, entry: &NewEntry) -> rusqlite::Result<i64> {
        let blobs = entry.blobs();
        let total: u64 = blobs.values().sum();
        let now = sql_u64(now());
        let mut conn = self.conn();
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
            "INSERT INTO entries (namespace, key, created, last_used, hits, total_size)
             VALUES (?1, ?2, ?3, ?3, 0, ?4)",
            params![
                entry.namespace.as_str(),
                entry.key.as_str(),
                now,
                sql_u64(total)
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
                "INSERT INTO entry_prefixes (entry_id, depth, hash) VALUES (?1, ?2, ?3)",
            )?;
            for (i, h) in entry.prefixes.iter().enumerate() {
                ins_prefix.execute(params![entry_id, (i + 1) as i64, h.to_string()])?;
            }
            let mut inc =
                tx.prepare_cached("UPDATE blobs SET refcount = refcount + 1 WHERE digest = ?1")?;
            for d in blobs.keys() {
                inc.execute([d.to_string()])?;
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
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        find_entry_tx(&tx, namespace, key)
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
            let Some(id) = self.find_entry(namespace, key)? else {
                return Ok(None);
            };
            Ok(Some((id, self.manifest(id)?)))
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
        let mut conn = self.conn();
        // One read transaction, so the statements below see one snapshot: a `gc` run by hand is
        // another process, and an eviction it commits between them would otherwise leave images
        // without their layer rows in the answer.
        let conn = conn.transaction()?;
        let (namespace, key, created, last_used, hits, total_size) = conn.query_row(
            "SELECT namespace, key, created, last_used, hits, total_size FROM entries WHERE id = ?1",
            [id],
            |r| {
                let ns: Namespace = r.get::<_, String>(0)?.parse().map_err(|e| conv_err(0, e))?;
                let key: CacheKey = r.get::<_, String>(1)?.parse().map_err(|e| conv_err(1, e))?;
                Ok((ns, key, u64_at(r, 2)?, u64_at(r, 3)?, u64_at(r, 4)?, u64_at(r, 5)?))
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

    /// The entry in `namespaces` sharing the longest instruction prefix with `prefixes`; at equal
    /// depth the earlier namespace wins, then the most recently used entry. Returns the entry id
    /// and the shared depth.
    pub fn find_prefix(
        &self,
        namespaces: &[Namespace],
        prefixes: &[Digest],
    ) -> rusqlite::Result<Option<(i64, u32)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT e.id, e.namespace, e.last_used FROM entry_prefixes p
             JOIN entries e ON e.id = p.entry_id WHERE p.hash = ?1 AND p.depth = ?2",
        )?;
        for depth in (1..=prefixes.len()).rev() {
            let hash = prefixes[depth - 1].to_string();
            let mut best: Option<(usize, i64, i64)> = None; // (namespace rank, -last_used, id)
            let rows = stmt.query_map(params![hash, depth as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (id, ns, last_used) = row?;
                let Some(rank) = namespaces.iter().position(|n| n.as_str() == ns) else {
                    continue;
                };
                let cand = (rank, -last_used, id);
                if best.is_none_or(|b| cand < b) {
                    best = Some(cand);
                }
            }
            if let Some((_, _, id)) = best {
                return Ok(Some((id, depth as u32)));
            }
        }
        Ok(None)
    }

    /// Counts a hit on entry `id` (by match kind for lookups) and marks it used now.
    pub fn record_hit(&self, id: i64, kind: Option<MatchKind>) -> rusqlite::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE entries SET hits = hits + 1, last_used = ?2 WHERE id = ?1",
            params![id, sql_u64(now())],
        )?;
        add_counter_tx(&tx, counter::HITS, 1)?;
        insights::count_lookup_tx(&tx, id, kind, now())?;
        if let Some(kind) = kind {
            let name = match kind {
                MatchKind::Exact => counter::HITS_EXACT,
                MatchKind::Fallback => counter::HITS_FALLBACK,
                MatchKind::Prefix => counter::HITS_PREFIX,
            };
            add_counter_tx(&tx, name, 1)?;
        }
        tx.commit()
    }

    /// Adds `by` to counter `name`.
    pub fn add_counter(&self, name: &str, by: u64) -> rusqlite::Result<()> {
        if by == 0 {
            return Ok(());
        }
        add_counter_tx(&self.conn(), name, by)
    }

    /// Adds several counters in one transaction.
    pub fn add_counters(&self, changes: &[(&str, u64)]) -> rusqlite::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (name, by) in changes {
            if *by > 0 {
                add_counter_tx(&tx, name, *by)?;
            }
        }
        tx.commit()
    }

    /// Server-wide statistics.
    pub fn stats(&self) -> rusqlite::Result<Stats> {
        let conn = self.conn();
        let mut counters: HashMap<String, u64> = HashMap::new();
        let mut stmt = conn.prepare_cached("SELECT name, value FROM counters")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, u64_at(r, 1)?)))? {
            let (k, v) = row?;
            counters.insert(k, v);
        }
        let c = |name: &str| counters.get(name).copied().unwrap_or(0);
        let entries = conn.query_row("SELECT COUNT(*) FROM entries", [], |r| u64_at(r, 0))?;
        let (blobs, stored_bytes) = conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs",
            [],
            |r| Ok((u64_at(r, 0)?, u64_at(r, 1)?)),
        )?;
        Ok(Stats {
            hits: c(counter::HITS),
            misses: c(counter::MISSES),
            hits_exact: c(counter::HITS_EXACT),
            hits_fallback: c(counter::HITS_FALLBACK),
            hits_prefix: c(counter::HITS_PREFIX),
            entries,
            blobs,
            stored_bytes,
            bytes_served: c(counter::BYTES_SERVED),
            bytes_received: c(counter::BYTES_RECEIVED),
            bytes_deduplicated: c(counter::BYTES_DEDUPLICATED),
            uploads_failed: c(counter::UPLOADS_FAILED),
            evicted_entries: c(counter::EVICTED_ENTRIES),
            evicted_bytes: c(counter::EVICTED_BYTES),
            collected_blobs: c(counter::COLLECTED_BLOBS),
            quarantined_blobs: c(counter::QUARANTINED_BLOBS),
            max_size: None,
            tags: conn.query_row("SELECT COUNT(*) FROM tags", [], |r| u64_at(r, 0))?,
            manifests: conn.query_row("SELECT COUNT(*) FROM manifests", [], |r| u64_at(r, 0))?,
        })
    }

    /// Entries, all or of one namespace, sorted by name.
    pub fn list_entries(
        &self,
        namespace: Option<&Namespace>,
    ) -> rusqlite::Result<Vec<EntrySummary>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT e.namespace, e.key, e.total_size, e.created, e.last_used, e.hits,
                (SELECT COUNT(*) FROM entry_images WHERE entry_id = e.id),
                (SELECT COUNT(DISTINCT il.diff_id) FROM entry_images ei
                   JOIN image_layers il ON il.image_id = ei.image_id WHERE ei.entry_id = e.id)
             FROM entries e WHERE ?1 IS NULL OR e.namespace = ?1
             ORDER BY e.namespace, e.key",
        )?;
        stmt.query_map([namespace.map(|n| n.as_str())], |r| {
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
        })?
        .collect()
    }
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn find_entry_tx(
    tx: &Transaction<'_>,
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
fn release_entry(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<()> {
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

fn add_counter_tx(conn: &Connection, name: &str, by: u64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        params![name, sql_u64(by)],
    )?;
    Ok(())
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
    /// Every entry with its last use and the distinct blobs it references.
    pub fn entry_usage(&self) -> rusqlite::Result<Vec<crate::lru::EntryUse>> {
        let conn = self.conn();
        let mut out: BTreeMap<i64, crate::lru::EntryUse> = BTreeMap::new();
        let mut stmt = conn.prepare_cached("SELECT id, last_used FROM entries")?;
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
        let conn = self.conn();
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

    /// Evicts entry `id` if it was not used since `last_used` (a restore in between keeps it);
    /// its blobs lose a reference. True when evicted.
    pub fn evict_entry(&self, id: i64, last_used: u64) -> rusqlite::Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let current: Option<i64> = tx
            .query_row("SELECT last_used FROM entries WHERE id = ?1", [id], |r| {
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
            for d in digests {
                if let Some(size) = del
                    .query_row([d.to_string()], |r| u64_at(r, 0))
                    .optional()?
                {
                    unlink.execute([d.to_string()])?;
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
        tx.execute("DELETE FROM blobs WHERE digest = ?1", [&d])?;
        add_counter_tx(&tx, counter::QUARANTINED_BLOBS, 1)?;
        tx.commit()?;
        Ok(ids.len() as u64)
    }

    /// Bytes of all blob rows.
    pub fn stored_bytes(&self) -> rusqlite::Result<u64> {
        self.conn()
            .query_row("SELECT COALESCE(SUM(size), 0) FROM blobs", [], |r| {
                u64_at(r, 0)
            })
    }

    /// Whether blob `digest` has a row, with its recorded size.
    pub fn blob_size(&self, digest: &Digest) -> rusqlite::Result<Option<u64>> {
        Ok(self
            .blob_sizes(std::slice::from_ref(digest))?
            .remove(digest))
    }
}

/// Runs `read` again (a few times) when an entry row it found vanished before it was read: the
/// entry was replaced or evicted at that moment (see [`Db::find_manifest`]).
pub fn retry_replaced<T>(mut read: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let mut tries = 0;
    loop {
        match read() {
            Err(rusqlite::Error::QueryReturnedNoRows) if tries < 5 => tries += 1,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    pub(super) fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        (dir, db)
    }

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    pub(super) fn entry(ns: &str, key: &str, layers: &[&str], prefixes: &[&str]) -> NewEntry {
        NewEntry {
            namespace: ns.parse().unwrap(),
            key: key.parse().unwrap(),
            images: vec![NewImage {
                id: image_of(layers),
                parent: None,
                tags: vec!["a:1".into()],
                config_size: 10,
                layers: layers.iter().map(|l| (d(l), 100)).collect(),
            }],
            prefixes: prefixes.iter().map(|p| d(p)).collect(),
        }
    }

    fn refcount(db: &Db, digest: &Digest) -> i64 {
        db.conn()
            .query_row(
                "SELECT refcount FROM blobs WHERE digest = ?1",
                [digest.to_string()],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// The ids in `images` and the image ids `image_layers` rows name.
    fn image_rows(db: &Db) -> (BTreeSet<Digest>, BTreeSet<Digest>) {
        let conn = db.conn();
        let ids = |sql: &str| -> BTreeSet<Digest> {
            conn.prepare(sql)
                .unwrap()
                .query_map([], |r| digest_at(r, 0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        (
            ids("SELECT id FROM images"),
            ids("SELECT DISTINCT image_id FROM image_layers"),
        )
    }

    /// The config digest [`entry`] gives an image of these layers.
    fn image_of(layers: &[&str]) -> Digest {
        d(&format!("config-{}", layers.join("+")))
    }

    #[test]
    fn migrations_are_idempotent_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        Db::open(&path)
            .unwrap()
            .commit_entry(&entry("a", "k", &["l1"], &[]))
            .unwrap();
        let db = Db::open(&path).unwrap();
        assert_eq!(db.stats().unwrap().entries, 1);
    }

    #[test]
    fn refcounts_follow_commit_replace_and_delete() {
        let (_dir, db) = db();
        db.commit_entry(&entry("a", "k", &["l1", "l2"], &[]))
            .unwrap();
        db.commit_entry(&entry("b", "k", &["l1"], &[])).unwrap();
        assert_eq!(refcount(&db, &d("l1")), 2);
        assert_eq!(refcount(&db, &d("l2")), 1);
        // Replacing a/k drops its reference to l2 and keeps one to l1.
        db.commit_entry(&entry("a", "k", &["l1", "l3"], &[]))
            .unwrap();
        assert_eq!(refcount(&db, &d("l1")), 2);
        assert_eq!(refcount(&db, &d("l2")), 0);
        assert!(
            db.delete_entry(&"b".parse().unwrap(), &"k".parse().unwrap())
                .unwrap()
        );
        assert_eq!(refcount(&db, &d("l1")), 1);
        assert!(
            !db.delete_entry(&"b".parse().unwrap(), &"k".parse().unwrap())
                .unwrap()
        );
        assert_eq!(db.stats().unwrap().entries, 1);
    }

    /// Regression: `images` and `image_layers` rows outlived the last entry using them (after a
    /// delete or a replace), so the index grew with every image ever pushed.
    #[test]
    fn images_go_with_the_last_entry_using_them() {
        let (_dir, db) = db();
        let ns = |s: &str| -> Namespace { s.parse().unwrap() };
        let k: CacheKey = "k".parse().unwrap();
        db.commit_entry(&entry("a", "k", &["l1", "l2"], &[]))
            .unwrap();
        db.commit_entry(&entry("b", "k", &["l1"], &[])).unwrap();
        // c/k shares a/k's image.
        db.commit_entry(&entry("c", "k", &["l1", "l2"], &[]))
            .unwrap();
        // Replacing a/k with a different image keeps the shared one (c/k uses it).
        db.commit_entry(&entry("a", "k", &["l1", "l3"], &[]))
            .unwrap();
        let all = BTreeSet::from([
            image_of(&["l1", "l2"]),
            image_of(&["l1"]),
            image_of(&["l1", "l3"]),
        ]);
        assert_eq!(image_rows(&db), (all.clone(), all));
        // Deleting its last user removes the shared image and its layer rows.
        assert!(db.delete_entry(&ns("c"), &k).unwrap());
        assert!(db.delete_entry(&ns("b"), &k).unwrap());
        let left = BTreeSet::from([image_of(&["l1", "l3"])]);
        assert_eq!(image_rows(&db), (left.clone(), left));
        assert!(!db.image_known(&image_of(&["l1", "l2"])).unwrap());
        // Refcounts are per entry, untouched by the image rows going.
        assert_eq!(refcount(&db, &d("l1")), 1);
        assert_eq!(refcount(&db, &d("l2")), 0);
        assert_eq!(refcount(&db, &image_of(&["l1", "l2"])), 0);
        // An image pushed again after its rows went comes back whole.
        let id = db
            .commit_entry(&entry("c", "k", &["l1", "l2"], &[]))
            .unwrap();
        assert_eq!(db.manifest(id).unwrap().images[0].layers.len(), 2);
        assert_eq!(refcount(&db, &d("l2")), 1);
        assert!(db.delete_entry(&ns("c"), &k).unwrap());
        assert_eq!(refcount(&db, &d("l2")), 0);
        assert_eq!(image_rows(&db).0, BTreeSet::from([image_of(&["l1", "l3"])]));
    }

    /// Replacing an entry with one of the same image (a re-PUT of the same build) releases the
    /// image and takes it again in one transaction: its rows stay whole.
    #[test]
    fn replacing_an_entry_with_the_same_image_keeps_it() {
        let (_dir, db) = db();
        db.commit_entry(&entry("a", "k", &["l1", "l2"], &[]))
            .unwrap();
        let id = db
            .commit_entry(&entry("a", "k", &["l1", "l2"], &[]))
            .unwrap();
        let m = db.manifest(id).unwrap();
        assert_eq!(m.images[0].id, image_of(&["l1", "l2"]));
        assert_eq!(m.images[0].layers.len(), 2);
        assert_eq!(refcount(&db, &d("l1")), 1);
        let one = BTreeSet::from([image_of(&["l1", "l2"])]);
        assert_eq!(image_rows(&db), (one.clone(), one));
    }

    /// Databases of earlier versions hold images no entry uses; opening one removes them.
    #[test]
    fn opening_removes_images_left_by_earlier_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let db = Db::open(&path).unwrap();
            db.commit_entry(&entry("a", "k", &["l1"], &[])).unwrap();
            let conn = db.conn();
            conn.execute_batch(&format!(
                "INSERT INTO images (id, parent, config_size) VALUES ('{0}', NULL, 10);
                 INSERT INTO image_layers (image_id, idx, diff_id) VALUES ('{0}', 0, '{1}');
                 DROP TABLE tags; DROP TABLE manifest_refs; DROP TABLE manifests;
                 DROP TABLE repo_blobs;
                 PRAGMA user_version = 3;",
                image_of(&["old"]),
                d("old"),
            ))
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let kept = BTreeSet::from([image_of(&["l1"])]);
        assert_eq!(image_rows(&db), (kept.clone(), kept));
    }

    #[test]
    fn manifest_lists_layers_sizes_and_prefixes() {
        let (_dir, db) = db();
        let id = db
            .commit_entry(&entry("a/b", "k", &["l1", "l2"], &["p1", "p2"]))
            .unwrap();
        let m = db.manifest(id).unwrap();
        assert_eq!(m.namespace.as_str(), "a/b");
        assert_eq!(m.images.len(), 1);
        assert_eq!(m.images[0].layers.len(), 2);
        assert_eq!(m.images[0].tags, vec!["a:1".to_string()]);
        assert_eq!(m.total_size, 210);
        assert_eq!(m.prefixes, vec![d("p1"), d("p2")]);
    }

    #[test]
    fn prefix_match_prefers_depth_then_namespace_order() {
        let (_dir, db) = db();
        let shallow = db
            .commit_entry(&entry("main", "k1", &["l1"], &["p1", "x2"]))
            .unwrap();
        let deep_late = db
            .commit_entry(&entry("main", "k2", &["l2"], &["p1", "p2", "y3"]))
            .unwrap();
        let deep_early = db
            .commit_entry(&entry("br", "k3", &["l3"], &["p1", "p2"]))
            .unwrap();
        let other_ns = db
            .commit_entry(&entry("zzz", "k4", &["l4"], &["p1", "p2", "p3"]))
            .unwrap();
        let ns: Vec<Namespace> = vec!["br".parse().unwrap(), "main".parse().unwrap()];
        let asked = [d("p1"), d("p2"), d("p3")];
        assert_eq!(db.find_prefix(&ns, &asked).unwrap(), Some((deep_early, 2)));
        let ns_main: Vec<Namespace> = vec!["main".parse().unwrap()];
        assert_eq!(
            db.find_prefix(&ns_main, &asked).unwrap(),
            Some((deep_late, 2))
        );
        assert_eq!(
            db.find_prefix(&ns_main, &[d("p1"), d("q")]).unwrap(),
            Some((shallow, 1))
        );
        assert_eq!(db.find_prefix(&ns_main, &[d("q")]).unwrap(), None);
        let _ = other_ns;
    }

    #[test]
    fn hits_and_counters_show_in_stats() {
        let (_dir, db) = db();
        let id = db.commit_entry(&entry("a", "k", &["l1"], &[])).unwrap();
        db.record_hit(id, Some(MatchKind::Fallback)).unwrap();
        db.record_hit(id, None).unwrap();
        db.add_counter(counter::MISSES, 1).unwrap();
        let s = db.stats().unwrap();
        assert_eq!((s.hits, s.hits_fallback, s.misses, s.blobs), (2, 1, 1, 2));
        assert_eq!(s.stored_bytes, 110);
        assert_eq!(db.manifest(id).unwrap().hits, 2);
        let list = db.list_entries(Some(&"a".parse().unwrap())).unwrap();
        assert_eq!((list.len(), list[0].layers, list[0].images), (1, 1, 1));
        assert!(
            db.list_entries(Some(&"b".parse().unwrap()))
                .unwrap()
                .is_empty()
        );
    }
}
