//! The cache being migrated: its data dir and a read connection to its SQLite index, with the
//! checks that come first (is it a data dir, is a server still on it) and the keyset-paged reads
//! the copy phases use (one page in memory at a time, whatever the size of the cache).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::MigrateError;
use crate::store::sqlite::Db;

/// Rows per page read from the source.
pub const PAGE: i64 = 500;

/// Row counts of one index, compared at the end (see [`super::rows::compare`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Sum of every blob's refcount: the entries' references, rebuilt by the copy.
    pub refcounts: u64,
    pub entries: u64,
    pub images: u64,
    pub prefixes: u64,
    pub repo_blobs: u64,
    pub manifests: u64,
    pub manifest_refs: u64,
    pub tags: u64,
    pub tokens: u64,
    pub blob_uploads: u64,
    pub builds: u64,
}

/// The SQL that counts each of [`Counts`]' fields, the same on both backends (sums cast: they
/// are NUMERIC in PostgreSQL).
pub const COUNT_SQL: &str = "SELECT
    (SELECT COUNT(*) FROM blobs), (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blobs),
    (SELECT CAST(COALESCE(SUM(refcount), 0) AS BIGINT) FROM blobs), (SELECT COUNT(*) FROM entries),
    (SELECT COUNT(*) FROM images), (SELECT COUNT(*) FROM entry_prefixes),
    (SELECT COUNT(*) FROM repo_blobs), (SELECT COUNT(*) FROM manifests),
    (SELECT COUNT(*) FROM manifest_refs), (SELECT COUNT(*) FROM tags),
    (SELECT COUNT(*) FROM tokens), (SELECT COUNT(*) FROM blob_uploads),
    (SELECT COUNT(*) FROM builds)";

impl Counts {
    /// From the 13 numbers [`COUNT_SQL`] returns, in order.
    pub fn from_values(v: &[i64]) -> Counts {
        let n = |i: usize| v[i].max(0) as u64;
        Counts {
            blobs: n(0),
            blob_bytes: n(1),
            refcounts: n(2),
            entries: n(3),
            images: n(4),
            prefixes: n(5),
            repo_blobs: n(6),
            manifests: n(7),
            manifest_refs: n(8),
            tags: n(9),
            tokens: n(10),
            blob_uploads: n(11),
            builds: n(12),
        }
    }
}

/// An embedded cache, opened for reading.
pub struct Source {
    /// Its data dir, canonical (the history marker names it).
    dir: PathBuf,
    /// A connection to `layercache.db` (only ever reads).
    pub conn: Connection,
}

impl Source {
    /// Checks that `data_dir` is an embedded cache no process has open, brings its schema up to
    /// date (as a server start would) and opens it.
    pub fn open(data_dir: &Path) -> Result<Source, MigrateError> {
        let db = data_dir.join("layercache.db");
        if !db.is_file() {
            return Err(MigrateError::NotADataDir(data_dir.to_path_buf()));
        }
        if open_elsewhere(&db).map_err(|e| MigrateError::io("checking locks on", &db, e))? {
            return Err(MigrateError::SourceInUse(db));
        }
        let dir = data_dir
            .canonicalize()
            .map_err(|e| MigrateError::io("resolving", data_dir, e))?;
        // Applies migrations the old server's version lacked, then closes again.
        drop(Db::open(&db)?);
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| MigrateError::io("wiping", &tmp, e))?;
        }
        let conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Source { dir, conn })
    }

    /// The data dir, canonical.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Row counts.
    pub fn counts(&self) -> Result<Counts, MigrateError> {
        let v: Vec<i64> = self.conn.query_row(COUNT_SQL, [], |r| {
            (0..13).map(|i| r.get(i)).collect::<Result<_, _>>()
        })?;
        Ok(Counts::from_values(&v))
    }

    /// Blob rows `(digest, size, created, layer)` after `after`, by digest.
    pub fn blobs_after(&self, after: &str) -> rusqlite::Result<Vec<BlobRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT digest, size, created, layer FROM blobs WHERE digest > ?1
             ORDER BY digest LIMIT ?2",
        )?;
        st.query_map(params![after, PAGE], |r| {
            Ok(BlobRow {
                digest: r.get(0)?,
                size: r.get(1)?,
                created: r.get(2)?,
                layer: r.get::<_, i64>(3)? != 0,
            })
        })?
        .collect()
    }

    /// Whether the source holds a row where `sql` (with `args`) finds one.
    pub fn has(&self, sql: &str, args: &[&dyn rusqlite::ToSql]) -> rusqlite::Result<bool> {
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_row(args, |_| Ok(()))
            .optional()?
            .is_some())
    }
}

/// A row of `blobs`.
#[derive(Debug, Clone)]
pub struct BlobRow {
    pub digest: String,
    pub size: i64,
    pub created: i64,
    pub layer: bool,
}

/// Whether another process has the SQLite database at `db` open: every connection holds a shared
/// lock on the "DMS" byte of the `-shm` file (offset 128: SQLite's `UNIX_SHM_DMS`) while open, so
/// a write lock on it can only be had when none does. Call before this process opens it: POSIX
/// locks are per process, and closing the file here would drop this process's own locks.
fn open_elsewhere(db: &Path) -> std::io::Result<bool> {
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    let file = match OpenOptions::new().read(true).write(true).open(&shm) {
        Ok(f) => f,
        // No shared-memory file: no connection has it open in WAL mode.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    // SAFETY: a zeroed `flock` is a valid value; the fields that matter are set below.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    lock.l_start = 128;
    lock.l_len = 1;
    // SAFETY: `fcntl` on an fd this function owns, with a pointer to a live `flock`.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) } == -1 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(true),
            _ => Err(e),
        };
    }
    lock.l_type = libc::F_UNLCK as _;
    // SAFETY: as above; releasing the lock just taken (closing the file would release it too).
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) };
    Ok(false)
}
