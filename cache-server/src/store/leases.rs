//! What replicas sharing one index (`--database postgres://…`) and one bucket coordinate through
//! the index: [`Fleet`], implemented by PostgreSQL only. With the embedded SQLite index there is
//! one process per data dir, the in-process tables ([`super::pins`], [`super::quota`]) already
//! give every guarantee, and [`super::meta::Metadata::fleet`] is `None`: nothing here runs and
//! nothing costs anything.
//!
//! - **Leases on blobs in use.** A pin ([`super::pins`]) of a blob this replica holds no live
//!   lease on writes a lease row `(digest, replica, gen, expires_at)` before the pinner reads
//!   rows or files. The heartbeat ([`super::pins::Pins::heartbeat`], every quarter of the lease
//!   time-to-live) renews the leases of blobs still pinned and deletes those of blobs no longer
//!   pinned (by `gen`, so a lease taken again meanwhile stays). A replica killed with `kill -9`
//!   stops renewing: its leases lapse after the time-to-live (`--lease-ttl-secs`, 120 s).
//! - **The deletion rule across processes.** The in-process rule of [`super::pins`] ("the
//!   collector deletes a row only if unpinned, under the lock, and unlinks before releasing it;
//!   a pinner pins before reading rows") holds fleet-wide through one advisory lock,
//!   [`LEASE_LOCK`]: a lease is written in a transaction holding it *shared*; the collector holds
//!   it *exclusively* (session-level, [`Fleet::lock_deletions`]) from before its deleting
//!   transaction (which skips blobs with a live lease, in the same statement as the delete) until
//!   its unlinks are done. So either the lease committed before the collector's delete statement
//!   began (the delete sees it and spares the blob), or the lease waits for the collector's lock
//!   and the pinner reads rows only after the row deletion committed and the file is gone (it
//!   finds the blob absent: a download answers 404, an upload writes the file again, and no
//!   unlink of the old deletion can follow). Lease writes never take [`super::postgres::WRITE_LOCK`]
//!   and the collector takes `LEASE_LOCK` before `WRITE_LOCK`, so the two cannot deadlock.
//! - **One collector at a time** ([`Fleet::try_lock_collector`]): a session-level advisory lock
//!   on a connection of its own, tried at the start of each run; a replica that does not get it
//!   skips the run. A killed replica's connection closes, and PostgreSQL releases the lock.
//! - **Quota reservations** ([`Fleet::reserve`]): each replica keeps one row with the total its
//!   uploads in progress reserved, renewed by the heartbeat; a reservation that grows the total
//!   is checked against the other replicas' live rows and written in one transaction under
//!   [`QUOTA_LOCK`], so replicas together never promise more than `--max-size`. The collector
//!   counts every replica's live reservations ([`Fleet::reserved_total`]).
//!
//! Clocks: expiry is compared with the database's clock only, never a replica's.
//!
//! What a lease cannot promise: a replica that cannot reach the database for longer than the
//! time-to-live (or is stopped that long) may have a blob it streams deleted under it; the
//! download then fails, as it would with the bucket unreachable.

use std::collections::HashSet;
use std::time::Duration;

use layercache_shared::Digest;

use super::meta::MetaResult;

/// The advisory lock lease writes take shared and the collector's deletions exclusively;
/// "lcls" in ASCII.
pub const LEASE_LOCK: i64 = 0x6c63_6c73;

/// The advisory lock of the one collector running fleet-wide; "lcgc" in ASCII.
pub const COLLECT_LOCK: i64 = 0x6c63_6763;

/// The advisory lock quota reservations are checked and written under; "lcqt" in ASCII.
pub const QUOTA_LOCK: i64 = 0x6c63_7174;

/// Default lease time-to-live (`--lease-ttl-secs`): a killed replica's pins and reservations
/// lapse after this.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(120);

/// Held until dropped: an advisory lock on a connection of its own (released on drop, or by
/// PostgreSQL when the process dies).
pub type FleetLock = Box<dyn Send>;

/// Coordination of replicas through a shared index (see the module docs).
pub trait Fleet: Send + Sync {
    /// This replica's id in lease and reservation rows (unique per process).
    fn replica(&self) -> &str;

    /// Takes (or renews) this replica's leases on `digests` for `ttl`, under [`LEASE_LOCK`]
    /// shared; returns each lease's generation, in the order of `digests`.
    fn lease(&self, digests: &[Digest], ttl: Duration) -> MetaResult<Vec<i64>>;

    /// Deletes this replica's leases `(digest, gen)` whose generation is still `gen`, and every
    /// replica's leases that lapsed a while ago.
    fn release(&self, leases: &[(Digest, i64)]) -> MetaResult<()>;

    /// Which of `digests` any replica holds a live lease on.
    fn leased(&self, digests: &[Digest]) -> MetaResult<HashSet<Digest>>;

    /// Waits for [`LEASE_LOCK`] exclusively: no lease can be written until the value drops.
    fn lock_deletions(&self) -> MetaResult<FleetLock>;

    /// [`COLLECT_LOCK`] if no other replica holds it (`None`: another one is collecting).
    fn try_lock_collector(&self) -> MetaResult<Option<FleetLock>>;

    /// Sets this replica's reserved total to `total` if, with the other replicas' live
    /// reservations, it fits `max_size`; otherwise leaves it and returns `Err(others)`, what the
    /// other replicas hold. Lowering (or keeping) the total always succeeds.
    fn reserve(&self, total: u64, max_size: u64, ttl: Duration) -> MetaResult<Result<(), u64>>;

    /// Bytes every replica's live reservations hold together.
    fn reserved_total(&self) -> MetaResult<u64>;
}
