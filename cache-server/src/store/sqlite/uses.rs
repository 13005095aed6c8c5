//! Hits and misses, recorded off the request path.
//!
//! Every lookup and image GET marks its entry used (hit counter, use stamp for the LRU, activity
//! buckets). Written one transaction per request, each of those waited for the single writer,
//! behind the fsyncs of commits in progress: under a busy fleet a lookup's latency was mostly that
//! wait. Now a request only appends its use to an in-memory queue ([`Db::record_hit`],
//! [`Db::record_miss`]) and a flusher writes the queue in one transaction ([`Db::flush_uses`]);
//! while it writes, the next batch gathers, so batches grow with the load.
//!
//! The contract that keeps this invisible:
//! - Order: a use's stamp is taken while holding the queue's lock, so the queue is in stamp order;
//!   flushes are serialised by the writer, and a stamp only ever raises `last_use`.
//! - Read-your-writes: every read that reports uses (statistics, listings, the dashboard, the
//!   collector's plan and its eviction check) flushes first ([`Db::read_settled`]); the hot reads
//!   (lookups, manifests, auth) do not, and never wait for a flush.
//! - Bounded: past [`MAX_PENDING`] queued uses, the recording request flushes itself.
//! - Durability: uses still queued when the process dies are lost (a hit count and a stamp, never
//!   an entry); the server flushes at shutdown.

use std::collections::HashMap;
use std::sync::Mutex;

use layercache_shared::Namespace;
use layercache_shared::api::MatchKind;
use rusqlite::{Connection, params};

use super::insights::{self, ActivityKind};
use super::{Db, add_counter_tx, counter, now, pool, sql_u64};

/// Queued uses past which the recording request writes the queue itself, so a flusher that
/// cannot keep up slows requests down instead of growing memory.
pub const MAX_PENDING: usize = 4096;

/// One use waiting to be written.
#[derive(Debug, Clone)]
enum Use {
    /// Entry `id` was found: by a lookup (`kind`) or an image GET (`None`).
    Hit {
        id: i64,
        kind: Option<MatchKind>,
        stamp: u64,
        at: u64,
    },
    /// Nothing was found in `namespace`.
    Miss { namespace: Namespace, at: u64 },
}

/// The queue of uses not yet written, and the flusher's wake-up.
#[derive(Default)]
pub(crate) struct UseQueue {
    pending: Mutex<Vec<Use>>,
    /// Notified on every use; [`Db::run_use_flusher`] waits on it.
    wake: tokio::sync::Notify,
}

impl UseQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Use>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Db {
    /// Counts a hit on entry `id` (by match kind for lookups) and marks it used now. Queued: see
    /// the module docs.
    pub fn record_hit(&self, id: i64, kind: Option<MatchKind>) -> rusqlite::Result<()> {
        let mut pending = self.uses.lock();
        let stamp = self.use_stamp();
        pending.push(Use::Hit {
            id,
            kind,
            stamp,
            at: now(),
        });
        self.queued(pending)
    }

    /// Counts a miss of a lookup or image GET, in `namespace` (the first one asked). Queued.
    pub fn record_miss(&self, namespace: &Namespace) -> rusqlite::Result<()> {
        let mut pending = self.uses.lock();
        pending.push(Use::Miss {
            namespace: namespace.clone(),
            at: now(),
        });
        self.queued(pending)
    }

    fn queued(&self, pending: std::sync::MutexGuard<'_, Vec<Use>>) -> rusqlite::Result<()> {
        let full = pending.len() >= MAX_PENDING;
        drop(pending);
        if full {
            return self.flush_uses();
        }
        self.uses.wake.notify_one();
        Ok(())
    }

    /// Writes every queued use in one transaction. Holds the writer from before taking the queue
    /// to the commit, so flushes apply in queue order.
    pub fn flush_uses(&self) -> rusqlite::Result<()> {
        self.write_uses(&mut self.conn())
    }

    /// [`Db::flush_uses`] on the writer the caller holds.
    pub(super) fn write_uses(&self, conn: &mut Connection) -> rusqlite::Result<()> {
        let batch = std::mem::take(&mut *self.uses.lock());
        if batch.is_empty() {
            return Ok(());
        }
        let tx = conn.transaction()?;
        let mut counters: HashMap<&str, u64> = HashMap::new();
        for u in &batch {
            match u {
                Use::Hit {
                    id,
                    kind,
                    stamp,
                    at,
                } => {
                    let stamp = sql_u64(*stamp);
                    tx.prepare_cached(
                        "UPDATE entries SET hits = hits + 1, last_used = MAX(last_used, ?2),
                         last_use = MAX(last_use, ?3) WHERE id = ?1",
                    )?
                    .execute(params![id, sql_u64(*at), stamp])?;
                    tx.prepare_cached(
                        "UPDATE entry_prefixes SET last_use = MAX(last_use, ?2) WHERE entry_id = ?1",
                    )?
                    .execute(params![id, stamp])?;
                    insights::count_lookup_tx(&tx, *id, *kind, *at)?;
                    *counters.entry(counter::HITS).or_default() += 1;
                    if let Some(kind) = kind {
                        let name = match kind {
                            MatchKind::Exact => counter::HITS_EXACT,
                            MatchKind::Fallback => counter::HITS_FALLBACK,
                            MatchKind::Prefix => counter::HITS_PREFIX,
                        };
                        *counters.entry(name).or_default() += 1;
                    }
                }
                Use::Miss { namespace, at } => {
                    insights::count_event(&tx, namespace.as_str(), ActivityKind::Miss, *at)?;
                    *counters.entry(counter::MISSES).or_default() += 1;
                }
            }
        }
        for (name, by) in counters {
            add_counter_tx(&tx, name, by)?;
        }
        tx.commit()
    }

    /// A reader that sees every use recorded before the call: for the reads that report uses
    /// (see the module docs).
    pub(crate) fn read_settled(&self) -> rusqlite::Result<pool::Reader<'_>> {
        self.flush_uses()?;
        self.read()
    }

    /// Returns once a use was queued since the last call (the flusher's wake-up; see
    /// `Store::run_use_flusher`).
    pub async fn uses_queued(&self) {
        self.uses.wake.notified().await;
    }
}
