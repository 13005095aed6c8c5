//! The SQLite index: which blobs exist, which images and entries reference them, hit counters.
//!
//! One writer connection behind a std `Mutex` and a pool of read-only connections
//! ([`pool::ReaderPool`]), all in WAL mode: writes are serialised (SQLite allows one writer
//! anyway) and each holds the writer for one short transaction; reads take a reader, inside one
//! read transaction, and never wait for the writer, the collector or another slow read. Every call
//! runs on a `spawn_blocking` thread.
//!
//! Submodules, one idea each: [`migrations`] (the schema), `entries` (commit, find, manifest,
//! listings), `blobs` (blob rows and the collector's queries), `insights` (dashboard and
//! `/metrics`), `registry` (the `/v2/` tables), `sessions` (registry upload sessions), [`pool`] (the readers).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use layercache_shared::api::Stats;
use layercache_shared::{CacheKey, Digest, Namespace};
use rusqlite::types::Type;
use rusqlite::{Connection, Row, params};

mod blobs;
mod entries;
pub mod migrations;
pub mod pool;
pub use blobs::BlobRow;
pub use entries::{Cursor, DEFAULT_PAGE, MAX_PAGE, Match, Page};
mod insights;
mod registry;
mod sessions;
mod uses;
pub use insights::{ActivityKind, HISTORY_WINDOWS};
pub use registry::{GraphManifest, ManifestRow, NewManifest, Referrer, RegistryGraph};
pub(crate) use sessions::{APPEND_SQL, SESSION_COLUMNS, decode_chunks, encode_chunk};
pub use sessions::{StagedChunk, UploadSession};

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
    /// The writer; see the module docs.
    conn: Mutex<Connection>,
    /// Read-only connections for every read.
    readers: pool::ReaderPool,
    /// The last use stamp handed out (see [`Db::use_stamp`]).
    last_stamp: AtomicU64,
    /// Hits and misses not yet written (see [`uses`]).
    uses: uses::UseQueue,
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
        migrations::migrate(&mut conn)?;
        let last: i64 =
            conn.query_row("SELECT COALESCE(MAX(last_use), 0) FROM entries", [], |r| {
                r.get(0)
            })?;
        let readers = pool::ReaderPool::open(path, pool::READERS)?;
        Ok(Db {
            conn: Mutex::new(conn),
            readers,
            last_stamp: AtomicU64::new(last.max(0) as u64),
            uses: Default::default(),
        })
    }

    /// A use stamp for `entries.last_use`: milliseconds since the epoch, but strictly above every
    /// stamp handed out before, so two uses in the same millisecond (or a clock step back) still
    /// order as they happened and eviction follows the order of use exactly. Taken while holding
    /// the writer (commits) or the queue of uses (hits, see [`uses`]), and written with `MAX`, so
    /// an entry's stamp only moves forward.
    fn use_stamp(&self) -> u64 {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut last = self.last_stamp.load(Ordering::Relaxed);
        loop {
            let next = now_ms.max(last + 1);
            match self.last_stamp.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// A reader connection inside one read transaction (see [`pool`]): for every read that needs
    /// no write in the same transaction.
    pub(crate) fn read(&self) -> rusqlite::Result<pool::Reader<'_>> {
        self.readers.get()
    }

    /// The writer connection: for writes, and reads that must see the transaction's own writes.
    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock rolled back its transaction on unwind; the connection is
        // still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
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
        let conn = self.read_settled()?;
        let mut counters: HashMap<String, u64> = HashMap::new();
        let mut stmt = conn.prepare_cached("SELECT name, value FROM counters")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, u64_at(r, 1)?)))? {
            let (k, v) = row?;
            counters.insert(k, v);
        }
        let t = totals(&conn)?;
        let tags = conn.query_row("SELECT COUNT(*) FROM tags", [], |r| u64_at(r, 0))?;
        let manifests = conn.query_row("SELECT COUNT(*) FROM manifests", [], |r| u64_at(r, 0))?;
        Ok(stats_of(&counters, t, tags, manifests))
    }
}

/// The server-wide statistics from the `counters` rows, the maintained totals and the registry's
/// row counts: one assembly for both index backends.
pub(crate) fn stats_of(
    counters: &HashMap<String, u64>,
    t: Totals,
    tags: u64,
    manifests: u64,
) -> Stats {
    let c = |name: &str| counters.get(name).copied().unwrap_or(0);
    Stats {
        hits: c(counter::HITS),
        misses: c(counter::MISSES),
        hits_exact: c(counter::HITS_EXACT),
        hits_fallback: c(counter::HITS_FALLBACK),
        hits_prefix: c(counter::HITS_PREFIX),
        entries: t.entries,
        blobs: t.blobs,
        stored_bytes: t.blob_bytes,
        bytes_served: c(counter::BYTES_SERVED),
        bytes_received: c(counter::BYTES_RECEIVED),
        bytes_deduplicated: c(counter::BYTES_DEDUPLICATED),
        uploads_failed: c(counter::UPLOADS_FAILED),
        evicted_entries: c(counter::EVICTED_ENTRIES),
        evicted_bytes: c(counter::EVICTED_BYTES),
        collected_blobs: c(counter::COLLECTED_BLOBS),
        quarantined_blobs: c(counter::QUARANTINED_BLOBS),
        max_size: None,
        tags,
        manifests,
    }
}

impl Drop for Db {
    /// Writes the uses still queued: a store closed in order loses none.
    fn drop(&mut self) {
        if let Err(e) = self.flush_uses() {
            tracing::warn!(error = %e, "writing recorded hits and misses at close failed");
        }
    }
}

/// The totals the triggers of migration 7 maintain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Rows of `entries`.
    pub entries: u64,
    /// Rows of `blobs`.
    pub blobs: u64,
    /// Sum of `blobs.size`: what counts against the quota, and more (unreferenced blobs too).
    pub blob_bytes: u64,
}

/// Reads the maintained totals (one row each; no scan).
pub(crate) fn totals(conn: &Connection) -> rusqlite::Result<Totals> {
    let mut t = Totals::default();
    let mut stmt = conn.prepare_cached("SELECT name, value FROM totals")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, u64_at(r, 1)?)))? {
        let (name, v) = row?;
        match name.as_str() {
            "entries" => t.entries = v,
            "blobs" => t.blobs = v,
            "blob_bytes" => t.blob_bytes = v,
            _ => {}
        }
    }
    Ok(t)
}

fn add_counter_tx(conn: &Connection, name: &str, by: u64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        params![name, sql_u64(by)],
    )?;
    Ok(())
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
mod plan_tests;
#[cfg(test)]
mod tests;
