//! In-memory pins: blobs an upload or a download in progress uses, which the collector must not
//! delete under it.
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use layercache_shared::Digest;

/// Pin counts by blob.
#[derive(Debug, Default)]
pub struct Pins {
    /// How many holders pin each blob; absent means unpinned. A std `Mutex`: held for a map
    /// update, or by the collector for one batch of deletions, never across an `.await`.
    counts: Mutex<HashMap<Digest, usize>>,
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
pub struct PinTable<'a>(MutexGuard<'a, HashMap<Digest, usize>>);

impl PinTable<'_> {
    /// Whether anyone holds a pin on `digest`.
    pub fn is_pinned(&self, digest: &Digest) -> bool {
        self.0.contains_key(digest)
    }
}

impl Pins {
    fn counts(&self) -> MutexGuard<'_, HashMap<Digest, usize>> {
        // The map stays consistent even if a holder panicked mid-update: every update is one call.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins `digests` (duplicates are pinned once) until the guard drops. Blocks while the
    /// collector deletes a batch.
    pub fn pin(self: &Arc<Self>, digests: impl IntoIterator<Item = Digest>) -> PinGuard {
        let mut list: Vec<Digest> = digests.into_iter().collect();
        list.sort_unstable_by_key(|d| *d.bytes());
        list.dedup();
        let mut counts = self.counts();
        for d in &list {
            *counts.entry(*d).or_default() += 1;
        }
        PinGuard {
            pins: Arc::clone(self),
            digests: list,
        }
    }

    /// Locks the table: nobody can pin until the returned value drops.
    pub fn lock(&self) -> PinTable<'_> {
        PinTable(self.counts())
    }

    /// Number of pinned blobs (for tests and logs).
    pub fn pinned(&self) -> usize {
        self.counts().len()
    }
}

impl PinGuard {
    /// Adds more blobs to this guard (pinned now, released with the rest).
    pub fn extend(&mut self, digests: impl IntoIterator<Item = Digest>) {
        let mut more = self.pins.pin(digests);
        // `more` is left empty, so its drop releases nothing; the counts move to `self`.
        self.digests.append(&mut more.digests);
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if self.digests.is_empty() {
            return;
        }
        let mut counts = self.pins.counts();
        for d in &self.digests {
            if let Some(n) = counts.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(d);
                }
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
        let g1 = pins.pin([a, a, b]);
        let g2 = pins.pin([a]);
        assert!(pins.lock().is_pinned(&a));
        assert_eq!(pins.pinned(), 2);
        drop(g1);
        assert!(pins.lock().is_pinned(&a));
        assert!(!pins.lock().is_pinned(&b));
        drop(g2);
        assert_eq!(pins.pinned(), 0);
    }
}
