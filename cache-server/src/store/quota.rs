//! Space reservations against `--max-size` for uploads in progress: the shared, locked side of
//! [`crate::lru::Reservations`] (which holds the accounting), with a guard that releases on drop.
//!
//! An upload reserves its declared size (`Content-Length`) before its first byte is read, and grows
//! its reservation as bytes arrive past it (chunked bodies); a reservation that cannot fit is a
//! 507. The collector counts reserved bytes like blobs about to be committed, so it evicts least
//! recently used entries to make room while the upload is written, not after.
//!
//! Replicas sharing a PostgreSQL index (a [`Fleet`]): a reservation that grows this replica's
//! total also writes the total to the index, checked against the other replicas' live totals in
//! the same transaction ([`Fleet::reserve`]), so replicas together never promise more than the
//! quota. Releases lower the row lazily: the server's heartbeat writes the lower total (woken
//! through [`Quota::lowered`]); until then the others see too much reserved, never too little.
//! The growing write runs under `tokio::task::block_in_place` when called on the multi-threaded
//! runtime (an upload's body stream is read there), so the runtime's other tasks move to other
//! workers meanwhile. With SQLite nothing leaves the process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::ServerError;
use crate::lru::Reservations;
use crate::store::leases::{DEFAULT_LEASE_TTL, Fleet};

/// Bytes a growing reservation takes at a time: a lock per body chunk would be wasted work.
const GROW_STEP: u64 = 8 << 20;

/// The quota and what is reserved under it.
pub struct Quota {
    /// `--max-size` and the reservations, under one lock: a check and its reservation are atomic.
    state: Mutex<(Option<u64>, Reservations)>,
    /// Woken when space is reserved, so the collector makes room while the upload is written.
    wake: Arc<tokio::sync::Notify>,
    /// The shared index's coordination; `None` with SQLite.
    fleet: Option<Arc<dyn Fleet>>,
    /// How long this replica's reservation row lives without renewal, in milliseconds.
    ttl_ms: AtomicU64,
    /// Woken when a reservation is released, so the heartbeat lowers this replica's row.
    pub lowered: tokio::sync::Notify,
}

impl std::fmt::Debug for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quota")
            .field("reserved", &self.reserved())
            .finish()
    }
}

impl Quota {
    /// A quota that wakes the collector through `wake`; no `--max-size` until set. With
    /// `fleet`, reservations are shared with the other replicas.
    pub fn new(wake: Arc<tokio::sync::Notify>, fleet: Option<Arc<dyn Fleet>>) -> Self {
        Quota {
            state: Mutex::default(),
            wake,
            fleet,
            ttl_ms: AtomicU64::new(DEFAULT_LEASE_TTL.as_millis() as u64),
            lowered: tokio::sync::Notify::new(),
        }
    }

    /// Sets `--max-size` (`None`: no quota, nothing reserved).
    pub fn set_max_size(&self, max_size: Option<u64>) {
        self.lock().0 = max_size;
    }

    /// Sets how long this replica's reservation row lives without renewal.
    pub fn set_lease_ttl(&self, ttl: Duration) {
        self.ttl_ms
            .store(ttl.as_millis().max(1000) as u64, Ordering::Relaxed);
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// Bytes reserved by uploads in progress in this process.
    pub fn reserved(&self) -> u64 {
        self.lock().1.reserved()
    }

    /// Bytes reserved by uploads in progress on every replica (this one's own count when the
    /// index is not shared). Blocking with a fleet.
    pub fn reserved_fleetwide(&self) -> Result<u64, ServerError> {
        let mine = self.reserved();
        match &self.fleet {
            Some(fleet) if self.lock().0.is_some() => Ok(fleet.reserved_total()?.max(mine)),
            _ => Ok(mine),
        }
    }

    /// Writes this replica's current total to the index (renewing it): the heartbeat's part.
    pub fn sync(&self) -> Result<(), ServerError> {
        let (max, total) = {
            let state = self.lock();
            (state.0, state.1.reserved())
        };
        if let (Some(fleet), Some(max)) = (&self.fleet, max) {
            // Lowering or keeping the total always fits.
            let _ = fleet.reserve(total, max, self.ttl())?;
        }
        Ok(())
    }

    /// Reserves `bytes`, or refuses with [`ServerError::QuotaFull`] (507) when they cannot fit.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Result<Reservation, ServerError> {
        let mut r = Reservation {
            quota: Arc::clone(self),
            bytes: 0,
        };
        r.add(bytes)?;
        Ok(r)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<u64>, Reservations)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the grown `total` to the index, checked against the other replicas; `Err(others)`
    /// when it does not fit. Off the async runtime's worker (see the module docs).
    fn reserve_shared(
        &self,
        fleet: &Arc<dyn Fleet>,
        total: u64,
        max: u64,
    ) -> Result<Result<(), u64>, ServerError> {
        let ttl = self.ttl();
        let call = || fleet.reserve(total, max, ttl);
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        Ok(if multi_thread {
            tokio::task::block_in_place(call)?
        } else {
            call()?
        })
    }
}

/// Space held for one upload; released when dropped (the upload stored, failed or broke off).
#[derive(Debug)]
pub struct Reservation {
    quota: Arc<Quota>,
    /// Bytes this reservation holds.
    bytes: u64,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Makes the reservation cover `total` bytes (taking [`GROW_STEP`] at least, so a chunked
    /// body does not lock per chunk).
    pub fn grow_to(&mut self, total: u64) -> Result<(), ServerError> {
        if total <= self.bytes {
            return Ok(());
        }
        self.add((total - self.bytes).max(GROW_STEP))
            .or_else(|_| self.add(total - self.bytes))
    }

    fn add(&mut self, bytes: u64) -> Result<(), ServerError> {
        let mut state = self.quota.lock();
        let (max, book) = &mut *state;
        let max = *max;
        book.try_reserve(max, bytes)
            .map_err(|no| ServerError::QuotaFull {
                requested: self.bytes + no.requested,
                reserved: no.reserved - self.bytes.min(no.reserved),
                max_size: no.max_size,
            })?;
        let total = book.reserved();
        drop(state);
        let Some(max) = max else {
            return Ok(());
        };
        if let (Some(fleet), true) = (&self.quota.fleet, bytes > 0) {
            let shared = self.quota.reserve_shared(fleet, total, max);
            if !matches!(shared, Ok(Ok(()))) {
                self.quota.lock().1.release(bytes);
                return Err(match shared {
                    Ok(Err(others)) => ServerError::QuotaFull {
                        requested: self.bytes + bytes,
                        reserved: others + total - self.bytes - bytes,
                        max_size: max,
                    },
                    Err(e) => e,
                    Ok(Ok(())) => unreachable!("matched above"),
                });
            }
        }
        self.bytes += bytes;
        if bytes > 0 {
            self.quota.wake.notify_one();
        }
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.quota.lock().1.release(self.bytes);
            if self.quota.fleet.is_some() {
                self.quota.lowered.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_release_on_drop_and_refuse_past_the_quota() {
        let q = Arc::new(Quota::new(Arc::default(), None));
        q.set_max_size(Some(100 << 20));
        let a = q.reserve(60 << 20).unwrap();
        assert_eq!(q.reserved(), 60 << 20);
        let err = q.reserve(50 << 20).unwrap_err();
        assert_eq!(err.status_and_code().1, "storage_full");
        let mut b = q.reserve(1).unwrap();
        b.grow_to(30 << 20).unwrap();
        assert_eq!(q.reserved(), 90 << 20);
        assert!(b.grow_to(50 << 20).is_err());
        drop(a);
        drop(b);
        assert_eq!(q.reserved(), 0);
    }

    #[test]
    fn without_a_quota_nothing_is_held() {
        let q = Arc::new(Quota::new(Arc::default(), None));
        let r = q.reserve(u64::MAX).unwrap();
        assert_eq!(r.bytes(), 0);
        assert_eq!(q.reserved(), 0);
    }
}
