//! Storage of a data dir: [`blobs`] (content-addressed blobs behind the `BlobStore` trait: files
//! in the data dir, or objects in an S3-compatible bucket with `--blob-store s3://…`) and the
//! index of blobs, images, entries and counters behind the [`meta::Metadata`] trait: [`sqlite`]
//! in the data dir (the default), or [`postgres`] (`--database postgres://…`).
//!
//! Files on disk:
//! - `layercache.db` (+ `-wal`, `-shm`): the SQLite index (absent with `--database`).
//! - `blobs/sha256/<2 hex>/<64 hex>`: layer (uncompressed tar) and image config blobs (in the
//!   bucket instead, under the same names, with `--blob-store s3://…`).
//! - `tmp/`: uploads in progress; wiped at start, since nothing there was committed.
//! - `quarantine/`: blobs `verify` found corrupt, kept for inspection, never served.
//!
//! Only the server's user may read any of it ([`permissions`]).
//!
//! Crash safety comes from ordering: a blob file is renamed into place before any row names it,
//! and an entry row is committed only after all its blobs exist.

pub mod bench_fill;
pub mod blobs;
#[cfg(test)]
mod conformance;
pub mod leases;
pub mod meta;
pub mod permissions;
pub mod pins;
pub mod postgres;
pub mod quota;
pub mod sqlite;
pub mod tokens;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::ServerError;
use blobs::{BlobLocation, BlobStore};
use meta::Metadata;
use pins::Pins;
use sqlite::Db;

/// How long the heartbeat task waits after a leased blob's last pin ended before it releases
/// idle leases: a burst of transfers ending costs one round trip, and a blob pinned again within
/// it keeps its lease.
const IDLE_RELEASE_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// The blob store and the index, shared by all requests.
pub struct Store {
    /// The index: SQLite in the data dir, or PostgreSQL (`--database`).
    pub db: Box<dyn Metadata>,
    /// Blob content.
    pub blobs: Arc<dyn BlobStore>,
    /// Where uploads are staged (checked by tests, wiped at start).
    pub tmp_dir: PathBuf,
    /// Blobs in use by uploads and downloads in progress, which the collector must spare.
    pub pins: Arc<Pins>,
    /// Woken after commits so the collector checks the quota without waiting for its timer.
    pub gc_wake: Arc<tokio::sync::Notify>,
    /// Space reserved against `--max-size` by uploads in progress (set by `serve`).
    pub quota: Arc<quota::Quota>,
}

impl Store {
    /// Opens (creating as needed) the data dir, blobs in it, and wipes leftover temp files.
    pub fn open(data_dir: &Path) -> Result<Store, ServerError> {
        Self::open_with(data_dir, &BlobLocation::DataDir)
    }

    /// Like [`Store::open`], with blobs at `blobs` (`--blob-store`). Blocks: an object store is
    /// checked with a request.
    pub fn open_with(data_dir: &Path, blobs: &BlobLocation) -> Result<Store, ServerError> {
        Self::open_with_index(data_dir, blobs, None)
    }

    /// Like [`Store::open_with`], with the index in PostgreSQL at `database` (a `postgres://`
    /// URL, `--database`) instead of SQLite in the data dir, when given.
    pub fn open_with_index(
        data_dir: &Path,
        blobs: &BlobLocation,
        database: Option<&str>,
    ) -> Result<Store, ServerError> {
        let tmp_dir = data_dir.join("tmp");
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir)
                .map_err(|e| ServerError::io("wiping temp dir", &tmp_dir, e))?;
        }
        Self::assemble(data_dir, tmp_dir, blobs, database)
    }

    /// The blob store and the index (in `data_dir`, or at `database`) of `data_dir`, with fresh
    /// pins.
    fn assemble(
        data_dir: &Path,
        tmp_dir: PathBuf,
        blobs: &BlobLocation,
        database: Option<&str>,
    ) -> Result<Store, ServerError> {
        permissions::secure(data_dir)?;
        let blobs = blobs.open(data_dir, &tmp_dir)?;
        let db = open_index(data_dir, database)?;
        let gc_wake: Arc<tokio::sync::Notify> = Arc::default();
        let fleet = db.fleet();
        Ok(Store {
            db,
            blobs: Arc::from(blobs),
            tmp_dir,
            pins: Arc::new(Pins::new(fleet.clone())),
            quota: Arc::new(quota::Quota::new(Arc::clone(&gc_wake), fleet)),
            gc_wake,
        })
    }

    /// Opens an existing data dir for `gc` or `verify` by hand, leaving `tmp/` alone: a server
    /// may be running on it with uploads in progress.
    pub fn open_for_maintenance(data_dir: &Path) -> Result<Store, ServerError> {
        Self::open_for_maintenance_with(data_dir, &BlobLocation::DataDir)
    }

    /// Like [`Store::open_for_maintenance`], with blobs at `blobs` (`--blob-store`).
    pub fn open_for_maintenance_with(
        data_dir: &Path,
        blobs: &BlobLocation,
    ) -> Result<Store, ServerError> {
        Self::open_for_maintenance_with_index(data_dir, blobs, None)
    }

    /// Like [`Store::open_for_maintenance_with`], with the index at `database` when given.
    pub fn open_for_maintenance_with_index(
        data_dir: &Path,
        blobs: &BlobLocation,
        database: Option<&str>,
    ) -> Result<Store, ServerError> {
        if database.is_none() && !data_dir.join("layercache.db").exists() {
            return Err(ServerError::bad_request(format!(
                "`{}` holds no layercache.db: pass the data dir the server uses (--data-dir)",
                data_dir.display()
            )));
        }
        let tmp_dir = data_dir.join("tmp");
        Self::assemble(data_dir, tmp_dir, blobs, database)
    }

    /// Writes the hits and misses requests queue (see `sqlite::uses`) as they come, until the
    /// task is aborted: the server runs one.
    pub async fn run_use_flusher(self: Arc<Self>) {
        loop {
            self.db.uses_queued().await;
            if let Err(e) = self.blocking(|s| Ok(s.db.flush_uses()?)).await {
                tracing::warn!(error = %e, "writing recorded hits and misses failed; they are lost");
            }
        }
    }

    /// Renews this replica's leases and quota reservation in the shared index, releases leases
    /// of blobs no longer pinned, and lowers the reservation after uploads end, until the task is
    /// aborted (see [`leases`]). Returns at once with an index one process owns.
    pub async fn run_heartbeat(self: Arc<Self>) {
        if self.pins.fleet().is_none() {
            return;
        }
        let every = self.pins.lease_ttl() / 4;
        let mut next = tokio::time::Instant::now() + every;
        loop {
            let (beat, idle) = tokio::select! {
                () = tokio::time::sleep_until(next) => (true, false),
                () = self.quota.lowered.notified() => (false, false),
                () = self.pins.idle.notified() => (false, true),
            };
            if idle {
                // Transfers end in bursts: one release for all of them.
                tokio::time::sleep(IDLE_RELEASE_DELAY).await;
            }
            let result = self
                .blocking(move |s| {
                    if beat {
                        s.pins.heartbeat()?;
                    } else if idle {
                        s.pins.release_idle()?;
                    }
                    s.quota.sync()
                })
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "renewing leases in the shared index failed; retrying");
            }
            if beat {
                next = tokio::time::Instant::now() + every;
            }
        }
    }

    /// Runs bulk storage work (hashing, writing and reading blob bytes, tarball ingest) on the
    /// low-priority pool of [`crate::bulk`], so it never delays a lookup.
    pub async fn bulk<T, F>(self: &Arc<Self>, f: F) -> Result<T, ServerError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, ServerError> + Send + 'static,
    {
        let store = Arc::clone(self);
        crate::bulk::spawn(move || pins::may_block(|| f(&store))).await?
    }

    /// Runs blocking storage work off the async runtime.
    pub async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T, ServerError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, ServerError> + Send + 'static,
    {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || pins::may_block(|| f(&store))).await?
    }
}

/// Opens the index: PostgreSQL at `database` when given (migrated, pool connected), else SQLite's
/// `layercache.db` in `data_dir`.
pub fn open_index(
    data_dir: &Path,
    database: Option<&str>,
) -> Result<Box<dyn Metadata>, ServerError> {
    Ok(match database {
        Some(url) => Box::new(postgres::PgDb::open(url)?),
        None => Box::new(Db::open(&data_dir.join("layercache.db")).map_err(meta::MetaError::from)?),
    })
}
