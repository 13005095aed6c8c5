//! Quota and time-to-live accounting: which entries to evict, decided without any I/O so it can be
//! tested alone with made-up clocks. [`crate::gc`] loads the inputs from the index, applies the
//! plan and deletes the files.
//!
//! The model: an entry holds references to blobs (configs and layers); a blob's bytes count against
//! the quota while any entry references it, or while the collector cannot delete it yet (pinned by
//! an upload or download in progress, or uploaded too recently to be committed). Evicting an entry
//! frees exactly the blobs whose last reference it held, so the plan simulates refcounts while it
//! walks entries from least to most recently used.
//!
//! Also here: [`Reservations`], the space promised to uploads in progress (refused when it cannot
//! fit the quota). `--max-size` is parsed by `layercache_shared::size`.

use std::collections::HashMap;

use layercache_shared::Digest;

/// Seconds in a day, for `--ttl-days`.
pub const DAY_SECS: u64 = 24 * 60 * 60;

/// What the collector enforces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Upper bound on stored bytes (`--max-size`); `None` means unbounded.
    pub max_size: Option<u64>,
    /// Entries unused for this many seconds are evicted (`--ttl-days` × [`DAY_SECS`]).
    pub ttl_secs: Option<u64>,
}

/// What holds blobs for the planner: an entry of the v1 API, or a registry tag (which holds the
/// manifest it names and everything that manifest reaches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Holder {
    /// Row id in `entries`.
    Entry(i64),
    /// Row id in `tags`.
    Tag(i64),
}

/// An entry (or tag) as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryUse {
    /// Which entry or tag.
    pub id: Holder,
    /// When it was last restored, hit by a lookup or committed, in milliseconds since the epoch:
    /// for entries a use stamp, unique and in the order of use (see `Db::use_stamp`), so the
    /// least recently used goes first even among uses within one second; for registry tags, their
    /// second-resolution `last_used` × 1000.
    pub last_used: u64,
    /// Every distinct blob the entry references.
    pub blobs: Vec<Digest>,
}

/// Why an entry is in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not used within the time-to-live.
    Expired,
    /// Least recently used while the store was over quota.
    OverQuota,
}

/// The outcome of [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Entries to evict, in order, with the last-used time seen (the evictor skips an entry used
    /// since) and the reason.
    pub evict: Vec<(Holder, u64, Reason)>,
    /// Bytes counted against the quota before the plan.
    pub bytes_before: u64,
    /// Bytes counted against the quota once the plan ran and unreferenced blobs were collected.
    pub bytes_after: u64,
}

impl Plan {
    /// Whether the store stays over quota even after evicting everything it could.
    pub fn still_over(&self, policy: &Policy) -> bool {
        policy.max_size.is_some_and(|max| self.bytes_after > max)
    }
}

/// Decides which entries to evict at time `now` (seconds since the epoch).
///
/// `sizes` holds every blob's size; `kept_bytes` are bytes of unreferenced blobs uploaded within
/// the grace period (a push about to commit), which the collector keeps and so count against the
/// quota. Expired entries go first; then, while the bytes exceed `max_size`, the least recently
/// used (ties: lower id, the older commit).
pub fn plan(
    entries: &[EntryUse],
    sizes: &HashMap<Digest, u64>,
    kept_bytes: u64,
    policy: &Policy,
    now: u64,
) -> Plan {
    let mut refs: HashMap<Digest, u32> = HashMap::new();
    for e in entries {
        for d in &e.blobs {
            *refs.entry(*d).or_default() += 1;
        }
    }
    let size_of = |d: &Digest| sizes.get(d).copied().unwrap_or(0);
    let mut bytes = kept_bytes + refs.keys().map(size_of).sum::<u64>();
    let bytes_before = bytes;

    let mut order: Vec<&EntryUse> = entries.iter().collect();
    order.sort_by_key(|e| (e.last_used, e.id));
    let mut evict = Vec::new();
    let mut release = |e: &EntryUse, bytes: &mut u64| {
        for d in &e.blobs {
            if let Some(n) = refs.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    *bytes -= size_of(d);
                }
            }
        }
    };
    let mut remaining = Vec::with_capacity(order.len());
    for e in order {
        let expired = policy
            .ttl_secs
            .is_some_and(|ttl| now.saturating_mul(1000).saturating_sub(e.last_used) >= ttl * 1000);
        if expired {
            release(e, &mut bytes);
            evict.push((e.id, e.last_used, Reason::Expired));
        } else {
            remaining.push(e);
        }
    }
    if let Some(max) = policy.max_size {
        for e in remaining {
            if bytes <= max {
                break;
            }
            release(e, &mut bytes);
            evict.push((e.id, e.last_used, Reason::OverQuota));
        }
    }
    Plan {
        evict,
        bytes_before,
        bytes_after: bytes,
    }
}

/// Bytes promised to uploads in progress, counted against the quota before they are written
/// (bazel-remote reserves before it writes). Stored entries do not block a reservation: the
/// collector evicts them to make room, counting reservations like blobs about to be committed. What
/// cannot be made room for is refused: one upload larger than the quota, or uploads in progress
/// that together would pass it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reservations {
    /// Bytes reserved and not yet released.
    reserved: u64,
}

/// A reservation that cannot fit: what was asked, what was already promised, and the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom {
    pub requested: u64,
    pub reserved: u64,
    pub max_size: u64,
}

impl Reservations {
    /// Bytes currently reserved.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Reserves `bytes` if, with what is already reserved, they fit `max_size`; without a quota
    /// nothing is counted and everything fits.
    pub fn try_reserve(&mut self, max_size: Option<u64>, bytes: u64) -> Result<(), NoRoom> {
        let Some(max) = max_size else {
            return Ok(());
        };
        if self.reserved.saturating_add(bytes) > max {
            return Err(NoRoom {
                requested: bytes,
                reserved: self.reserved,
                max_size: max,
            });
        }
        self.reserved += bytes;
        Ok(())
    }

    /// Gives back `bytes` of an earlier reservation (the upload ended, stored or not).
    pub fn release(&mut self, bytes: u64) {
        self.reserved = self.reserved.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    fn entry(id: i64, last_used: u64, blobs: &[&str]) -> EntryUse {
        EntryUse {
            id: Holder::Entry(id),
            last_used: last_used * 1000,
            blobs: blobs.iter().map(|b| d(b)).collect(),
        }
    }

    fn sizes(list: &[(&str, u64)]) -> HashMap<Digest, u64> {
        list.iter().map(|(n, s)| (d(n), *s)).collect()
    }

    fn ids(p: &Plan) -> Vec<i64> {
        p.evict
            .iter()
            .map(|e| match e.0 {
                Holder::Entry(id) | Holder::Tag(id) => id,
            })
            .collect()
    }

    #[test]
    fn under_quota_nothing_is_evicted() {
        let s = sizes(&[("a", 100), ("b", 100)]);
        let entries = [entry(1, 10, &["a"]), entry(2, 20, &["b"])];
        let policy = Policy {
            max_size: Some(200),
            ttl_secs: None,
        };
        let p = plan(&entries, &s, 0, &policy, 1000);
        assert!(p.evict.is_empty());
        assert_eq!((p.bytes_before, p.bytes_after), (200, 200));
    }

    #[test]
    fn least_recently_used_goes_first_until_within_quota() {
        let s = sizes(&[("a", 100), ("b", 100), ("c", 100)]);
        // Ids out of time order: the order is by last use, not by commit.
        let entries = [
            entry(1, 30, &["a"]),
            entry(2, 10, &["b"]),
            entry(3, 20, &["c"]),
        ];
        let policy = Policy {
            max_size: Some(150),
            ttl_secs: None,
        };
        let p = plan(&entries, &s, 0, &policy, 1000);
        assert_eq!(ids(&p), vec![2, 3]);
        assert_eq!(p.bytes_after, 100);
        assert!(p.evict.iter().all(|e| e.2 == Reason::OverQuota));
    }

    #[test]
    fn shared_blobs_free_nothing_until_their_last_entry_goes() {
        // Entries 1 and 2 share a 300-byte base layer; evicting 1 frees only its own 10 bytes.
        let s = sizes(&[("base", 300), ("x", 10), ("y", 10), ("z", 50)]);
        let entries = [
            entry(1, 1, &["base", "x"]),
            entry(2, 2, &["base", "y"]),
            entry(3, 3, &["z"]),
        ];
        let policy = Policy {
            max_size: Some(360),
            ttl_secs: None,
        };
        let p = plan(&entries, &s, 0, &policy, 100);
        assert_eq!(p.bytes_before, 370);
        assert_eq!(ids(&p), vec![1]);
        assert_eq!(p.bytes_after, 360);
        let policy = Policy {
            max_size: Some(100),
            ..policy
        };
        let p = plan(&entries, &s, 0, &policy, 100);
        assert_eq!(ids(&p), vec![1, 2]);
        assert_eq!(p.bytes_after, 50);
    }

    #[test]
    fn kept_bytes_count_and_can_leave_the_store_over_quota() {
        let s = sizes(&[("a", 100)]);
        let entries = [entry(1, 1, &["a"])];
        let policy = Policy {
            max_size: Some(150),
            ttl_secs: None,
        };
        let p = plan(&entries, &s, 200, &policy, 10);
        assert_eq!(ids(&p), vec![1]);
        assert_eq!(p.bytes_after, 200);
        assert!(p.still_over(&policy));
    }

    #[test]
    fn expired_entries_go_whatever_the_quota_and_ties_break_by_id() {
        let now = 100 * DAY_SECS;
        let s = sizes(&[("a", 1), ("b", 1), ("c", 1)]);
        let entries = [
            entry(7, now - 8 * DAY_SECS, &["a"]),
            entry(5, now - 8 * DAY_SECS, &["b"]),
            // Used exactly 7 days minus a second ago: still alive.
            entry(6, now - 7 * DAY_SECS + 1, &["c"]),
        ];
        let policy = Policy {
            max_size: None,
            ttl_secs: Some(7 * DAY_SECS),
        };
        let p = plan(&entries, &s, 0, &policy, now);
        assert_eq!(ids(&p), vec![5, 7]);
        assert!(p.evict.iter().all(|e| e.2 == Reason::Expired));
        // A day later entry 6 expires too.
        let p = plan(&entries, &s, 0, &policy, now + DAY_SECS);
        assert_eq!(ids(&p), vec![5, 7, 6]);
    }

    #[test]
    fn reservations_fit_the_quota_together_and_are_released() {
        let mut r = Reservations::default();
        let max = Some(100);
        assert_eq!(r.try_reserve(max, 60), Ok(()));
        assert_eq!(
            r.try_reserve(max, 50),
            Err(NoRoom {
                requested: 50,
                reserved: 60,
                max_size: 100
            })
        );
        assert_eq!(r.reserved(), 60, "a refusal reserves nothing");
        assert_eq!(r.try_reserve(max, 40), Ok(()));
        r.release(60);
        assert_eq!(r.try_reserve(max, 50), Ok(()));
        assert_eq!(r.reserved(), 90);
        assert!(
            r.try_reserve(max, 101).is_err(),
            "larger than the quota alone"
        );
        let mut open = Reservations::default();
        assert_eq!(open.try_reserve(None, u64::MAX), Ok(()));
        assert_eq!(open.reserved(), 0, "without a quota nothing is counted");
    }
}
