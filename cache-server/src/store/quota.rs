//! Space reservations against `--max-size` for uploads in progress: the shared, locked side of
//! [`crate::lru::Reservations`] (which holds the accounting), with a guard that releases on drop.
//!
//! An upload reserves its declared size (`Content-Length`) before its first byte is read, and grows
//! its reservation as bytes arrive past it (chunked bodies); a reservation that cannot fit is a
//! 507. The collector counts reserved bytes like blobs about to be committed, so it evicts least
//! recently used entries to make room while the upload is written, not after.

use std::sync::{Arc, Mutex};

use crate::error::ServerError;
use crate::lru::Reservations;

/// Bytes a growing reservation takes at a time: a lock per body chunk would be wasted work.
const GROW_STEP: u64 = 8 << 20;

/// The quota and what is reserved under it.
#[derive(Debug, Default)]
pub struct Quota {
    /// `--max-size` and the reservations, under one lock: a check and its reservation are atomic.
    state: Mutex<(Option<u64>, Reservations)>,
    /// Woken when space is reserved, so the collector makes room while the upload is written.
    wake: Arc<tokio::sync::Notify>,
}

impl Quota {
    /// A quota that wakes the collector through `wake`; no `--max-size` until set.
    pub fn new(wake: Arc<tokio::sync::Notify>) -> Self {
        Quota {
            state: Mutex::default(),
            wake,
        }
    }

    /// Sets `--max-size` (`None`: no quota, nothing reserved).
    pub fn set_max_size(&self, max_size: Option<u64>) {
        self.lock().0 = max_size;
    }

    /// Bytes reserved by uploads in progress.
    pub fn reserved(&self) -> u64 {
        self.lock().1.reserved()
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
        book.try_reserve(*max, bytes)
            .map_err(|no| ServerError::QuotaFull {
                requested: self.bytes + no.requested,
                reserved: no.reserved - self.bytes.min(no.reserved),
                max_size: no.max_size,
            })?;
        let quota = state.0.is_some();
        drop(state);
        if quota {
            self.bytes += bytes;
            if bytes > 0 {
                self.quota.wake.notify_one();
            }
        }
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.quota.lock().1.release(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_release_on_drop_and_refuse_past_the_quota() {
        let q = Arc::new(Quota::default());
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
        let q = Arc::new(Quota::default());
        let r = q.reserve(u64::MAX).unwrap();
        assert_eq!(r.bytes(), 0);
        assert_eq!(q.reserved(), 0);
    }
}
