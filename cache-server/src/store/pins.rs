//! Pins: blobs an upload or a download in progress uses, which the collector must not delete
//! under it.
//!
//! The rule, for every blob deletion by [`crate::gc`]: with the pin table locked, the blob's row is
//! deleted only if the blob is not pinned and its refcount is 0 (checked in the same transaction as
//! the delete), and the file is unlinked only after that transaction committed, still under the
//! lock. Whoever pins takes the pin *before* looking at rows or files. So a pinned blob whose row
//! exists keeps its row and its file until the pin is released; a pinner that finds the row gone
//! knows the blob is gone (a download answers 404, a commit reports the blob missing, an upload
//! writes the file again).
//!
//! (On Linux an open file stays readable after unlink anyway; the rule makes the guarantee
//! explicit and independent of that.)
//!
//! Replicas sharing a PostgreSQL index (a [`Fleet`]): the counts stay in-process, and a blob's
//! first pin also takes a lease row in the index before [`Pins::pin`] returns, so the rule holds
//! across processes ([`super::leases`] says how). When the last pin of a blob ends on a thread
//! that may block (inside [`super::Store::blocking`] or `bulk`: uploads, commits), its lease is
//! deleted there and then. When it ends on the async runtime (a download's body dropped), the
//! lease outlives it until the server's heartbeat task releases it ([`Pins::release_idle`], woken
//! through [`Pins::idle`] about half a second later): the runtime never waits for the database,
//! and a blob pinned again meanwhile (a popular layer) costs no round trip. With SQLite there is
//! no fleet, and a pin is what it always was: a map update under a mutex.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use layercache_shared::Digest;

use super::leases::{DEFAULT_LEASE_TTL, Fleet};
use crate::error::ServerError;

thread_local! {
    /// Whether this thread may wait for the database (set by [`may_block`]).
    static MAY_BLOCK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` marked as allowed to block, so pins it drops release their leases at once. For the
/// store's blocking pools only, never the async runtime's workers.
pub fn may_block<T>(f: impl FnOnce() -> T) -> T {
    let before = MAY_BLOCK.with(|m| m.replace(true));
    let out = f();
    MAY_BLOCK.with(|m| m.set(before));
    out
}

/// Pin counts by blob, and this replica's leases when it shares its index.
pub struct Pins {
    /// Each blob's pin count and lease. A std `Mutex`: held for a map update, or by the
    /// collector for one batch of deletions, never across an `.await` or a database round trip
    /// of a pinner.
    table: Mutex<HashMap<Digest, Slot>>,
    /// Signalled when a lease being taken is settled (taken or failed).
    settled: Condvar,
    /// The shared index's coordination; `None` with SQLite.
    fleet: Option<Arc<dyn Fleet>>,
    /// Lease time-to-live in milliseconds (`--lease-ttl-secs`).
    ttl_ms: AtomicU64,
    /// Woken when a leased blob's last pin ends, so the heartbeat task releases its lease.
    pub idle: tokio::sync::Notify,
}

/// One blob's entry in the table.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Holders pinning the blob; 0 only while an idle lease waits for the heartbeat.
    count: usize,
    /// This replica's lease on it (always [`Lease::None`] without a fleet).
    lease: Lease,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lease {
    /// No lease row (or one this replica no longer counts on).
    None,
    /// A pinner is writing the row; others pinning the blob wait for it.
    Taking,
    /// The row exists with generation `gen`, live at least until `until`.
    Held { generation: i64, until: Instant },
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pins")
            .field("pinned", &self.pinned())
            .field(
                "fleet",
                &self.fleet.as_ref().map(|f| f.replica().to_string()),
            )
            .finish()
    }
}

impl Default for Pins {
    fn default() -> Self {
        Pins::new(None)
    }
}

/// Releases its pins when dropped.
#[derive(Debug)]
pub struct PinGuard {
    /// The table the pins are in.
    pins: Arc<Pins>,
    /// The pinned blobs (each once).
    digests: Vec<Digest>,
}

/// The locked pin table, held by the collector while it deletes blobs.
pub struct PinTable<'a>(MutexGuard<'a, HashMap<Digest, Slot>>);

impl PinTable<'_> {
    /// Whether anyone in this process holds a pin on `digest`.
    pub fn is_pinned(&self, digest: &Digest) -> bool {
        self.0.get(digest).is_some_and(|s| s.count > 0)
    }
}

impl Pins {
    /// A pin table; with `fleet`, pins also take leases in the shared index.
    pub fn new(fleet: Option<Arc<dyn Fleet>>) -> Pins {
        Pins {
            table: Mutex::default(),
            settled: Condvar::new(),
            fleet,
            ttl_ms: AtomicU64::new(DEFAULT_LEASE_TTL.as_millis() as u64),
            idle: tokio::sync::Notify::new(),
        }
    }

    /// Sets the lease time-to-live (`--lease-ttl-secs`).
    pub fn set_lease_ttl(&self, ttl: Duration) {
        self.ttl_ms
            .store(ttl.as_millis().max(1000) as u64, Ordering::Relaxed);
    }

    /// The lease time-to-live.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// The shared index's coordination, when replicas share it.
    pub fn fleet(&self) -> Option<&Arc<dyn Fleet>> {
        self.fleet.as_ref()
    }

    fn table(&self) -> MutexGuard<'_, HashMap<Digest, Slot>> {
        // The map stays consistent even if a holder panicked mid-update: every update is one call.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins `digests` (duplicates are pinned once) until the guard drops. Blocks while the
    /// collector deletes a batch, and, when replicas share the index, while a lease is written
    /// (so call it on a blocking thread, never on the async runtime). Fails only when a lease
    /// cannot be written (the index unreachable: 503); nothing stays pinned then.
    pub fn pin(
        self: &Arc<Self>,
        digests: impl IntoIterator<Item = Digest>,
    ) -> Result<PinGuard, ServerError> {
        let mut list: Vec<Digest> = digests.into_iter().collect();
        list.sort_unstable_by_key(|d| *d.bytes());
        list.dedup();
        let mut table = self.table();
        for d in &list {
            table
                .entry(*d)
                .or_insert(Slot {
                    count: 0,
                    lease: Lease::None,
                })
                .count += 1;
        }
        let guard = PinGuard {
            pins: Arc::clone(self),
            digests: list,
        };
        let Some(fleet) = &self.fleet else {
            return Ok(guard);
        };
        let ttl = self.lease_ttl();
        loop {
            // A lease with less than half its time left is taken again: the heartbeat may have
            // failed to renew it.
            let fresh_until = Instant::now() + ttl / 2;
            let mut need = Vec::new();
            let mut waiting = false;
            for d in &guard.digests {
                let slot = table.get_mut(d).expect("pinned above");
                match slot.lease {
                    Lease::Held { until, .. } if until > fresh_until => {}
                    Lease::Taking => waiting = true,
                    _ => {
                        slot.lease = Lease::Taking;
                        need.push(*d);
                    }
                }
            }
            if need.is_empty() {
                if !waiting {
                    return Ok(guard);
                }
                table = self.settled.wait(table).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            drop(table);
            let started = Instant::now();
            let taken = fleet.lease(&need, ttl);
            table = self.table();
            match taken {
                Ok(gens) => {
                    for (d, generation) in need.iter().zip(gens) {
                        if let Some(slot) = table.get_mut(d) {
                            slot.lease = Lease::Held {
                                generation,
                                until: started + ttl,
                            };
                        }
                    }
                    self.settled.notify_all();
                }
                Err(e) => {
                    for d in &need {
                        if let Some(slot) = table.get_mut(d) {
                            slot.lease = Lease::None;
                        }
                    }
                    self.settled.notify_all();
                    drop(table);
                    drop(guard);
                    return Err(e.into());
                }
            }
        }
    }

    /// Locks the table: nobody in this process can pin until the returned value drops.
    pub fn lock(&self) -> PinTable<'_> {
        PinTable(self.table())
    }

    /// Number of pinned blobs (for tests and logs).
    pub fn pinned(&self) -> usize {
        self.table().values().filter(|s| s.count > 0).count()
    }

    /// Releases the leases of blobs no longer pinned (nothing without a fleet). Blocking.
    pub fn release_idle(&self) -> Result<(), ServerError> {
        let Some(fleet) = &self.fleet else {
            return Ok(());
        };
        let mut idle = Vec::new();
        self.table().retain(|d, slot| match slot.lease {
            Lease::Held { generation, .. } if slot.count == 0 => {
                idle.push((*d, generation));
                false
            }
            _ => true,
        });
        // A blob released here and pinned again meanwhile got a new generation: its row stays.
        fleet.release(&idle)?;
        Ok(())
    }

    /// Releases idle leases and renews those of blobs still pinned (nothing without a fleet).
    /// Blocking: the server runs it every quarter of the lease time-to-live.
    pub fn heartbeat(&self) -> Result<(), ServerError> {
        let Some(fleet) = &self.fleet else {
            return Ok(());
        };
        self.release_idle()?;
        let ttl = self.lease_ttl();
        let keep: Vec<Digest> = self
            .table()
            .iter()
            .filter(|(_, slot)| matches!(slot.lease, Lease::Held { .. }))
            .map(|(d, _)| *d)
            .collect();
        if keep.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let gens = fleet.lease(&keep, ttl)?;
        let mut table = self.table();
        for (d, generation) in keep.iter().zip(gens) {
            if let Some(slot) = table.get_mut(d)
                && matches!(slot.lease, Lease::Held { .. })
            {
                slot.lease = Lease::Held {
                    generation,
                    until: started + ttl,
                };
            }
        }
        Ok(())
    }
}

impl PinGuard {
    /// Adds more blobs to this guard (pinned now, released with the rest); see [`Pins::pin`].
    pub fn extend(&mut self, digests: impl IntoIterator<Item = Digest>) -> Result<(), ServerError> {
        let mut more = self.pins.pin(digests)?;
        // `more` is left empty, so its drop releases nothing; the counts move to `self`.
        self.digests.append(&mut more.digests);
        Ok(())
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if self.digests.is_empty() {
            return;
        }
        let now = MAY_BLOCK.with(|m| m.get()) && self.pins.fleet.is_some();
        let mut table = self.pins.table();
        let mut leased_idle = false;
        let mut release = Vec::new();
        for d in &self.digests {
            if let Some(slot) = table.get_mut(d) {
                slot.count = slot.count.saturating_sub(1);
                if slot.count == 0 {
                    match slot.lease {
                        Lease::None => {
                            table.remove(d);
                        }
                        Lease::Held { generation, .. } if now => {
                            release.push((*d, generation));
                            table.remove(d);
                        }
                        // Left for the heartbeat task.
                        _ => leased_idle = true,
                    }
                }
            }
        }
        drop(table);
        if leased_idle {
            self.pins.idle.notify_one();
        }
        if let (false, Some(fleet)) = (release.is_empty(), &self.pins.fleet) {
            // Pinned again meanwhile, a blob has a lease of a new generation, which stays. On
            // failure the lease lapses after its time-to-live.
            if let Err(e) = fleet.release(&release) {
                tracing::warn!(error = %e, "releasing leases failed; they lapse on their own");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_count_per_holder_and_release_on_drop() {
        let pins = Arc::new(Pins::default());
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let g1 = pins.pin([a, a, b]).unwrap();
        let g2 = pins.pin([a]).unwrap();
        assert!(pins.lock().is_pinned(&a));
        assert_eq!(pins.pinned(), 2);
        drop(g1);
        assert!(pins.lock().is_pinned(&a));
        assert!(!pins.lock().is_pinned(&b));
        drop(g2);
        assert_eq!(pins.pinned(), 0);
        assert!(pins.table().is_empty(), "no idle slots without a fleet");
    }
}
