//! The collector (eviction, blob deletion, orphan cleanup) and `verify`: the I/O around the pure
//! plan of [`crate::lru`].
//!
//! A collection:
//! 1. plans evictions from the index (time-to-live, then least recently used over `--max-size`)
//!    and evicts each planned entry in its own transaction, unless it was used meanwhile (its
//!    images no other entry uses go in that transaction too, see `release_entry`);
//!    Registry tags are entries too: each holds every blob its manifest reaches
//!    ([`crate::registry::liveness`]);
//! 2. deletes registry manifests no tag reaches, once older than the upload grace period;
//! 3. deletes unreferenced blobs (no entry, no manifest row): under the pin lock, rows with refcount 0 (re-checked in the
//!    deleting transaction) that are not pinned and older than the upload grace period; files
//!    are unlinked after the rows are gone (see [`crate::store::pins`] for the rule);
//! 4. with [`Sweep::orphans`] (at start and in `layercache-server gc`): deletes stored blobs with
//!    no row (a crash between storing a blob and inserting its row) and temp files.
//!
//! Crash safety: every step is a committed transaction followed by unlinks of files no row names,
//! so a crash at any point leaves at worst orphan files, which the next start removes.
//!
//! Replicas sharing a PostgreSQL index ([`crate::store::leases`]): one collection runs at a time
//! fleet-wide (a replica that cannot take the collector lock skips its run, reported as
//! [`GcReport::skipped`]); blob deletions also hold the fleet's deletion lock and spare blobs any
//! replica holds a live lease on; the quota counts every replica's reservations.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use layercache_shared::Digest;
use layercache_shared::digest::Hasher;

use crate::error::ServerError;
pub use crate::lru::DAY_SECS;
use crate::lru::{self, Holder, Policy};
use crate::registry::liveness;
use crate::settings::Settings;
use crate::store::Store;
use crate::store::sqlite::now;

/// Blobs deleted per pin-lock hold: short enough that a pinning request waits milliseconds.
const DELETE_BATCH: usize = 64;

/// What a collection may do besides the policy.
#[derive(Debug, Clone, Copy)]
pub struct Sweep {
    /// Unreferenced blobs (and orphan files) stored more recently than this are kept.
    pub grace_secs: u64,
    /// Also delete blob files without a row and temp files older than this many seconds (walks
    /// the whole blob dir). At start nothing is in flight, so 0 is safe there.
    pub orphans: Option<u64>,
}

/// What a collection freed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Entries evicted because they expired.
    pub entries_expired: u64,
    /// Entries evicted to get under the quota.
    pub entries_evicted: u64,
    /// Registry manifests no tag reached any more.
    pub manifests_deleted: u64,
    /// Blob rows and files deleted.
    pub blobs_deleted: u64,
    /// Bytes of those blobs.
    pub bytes_freed: u64,
    /// Blob files without a row, and temp files, deleted.
    pub orphan_files: u64,
    /// Bytes counted against the quota afterwards.
    pub bytes_after: u64,
    /// Another replica sharing the index was collecting: this run did nothing.
    pub skipped: bool,
}

impl GcReport {
    /// Whether anything was deleted.
    pub fn freed_anything(&self) -> bool {
        self.entries_expired
            + self.entries_evicted
            + self.manifests_deleted
            + self.blobs_deleted
            + self.orphan_files
            > 0
    }
}

/// The policy of `settings`.
pub fn policy_of(settings: &Settings) -> Policy {
    Policy {
        max_size: settings.max_size,
        ttl_secs: settings.ttl_days.map(|d| d.saturating_mul(DAY_SECS)),
    }
}

/// Runs one collection at time `now` (seconds since the epoch). Blocking.
pub fn collect(
    store: &Store,
    policy: &Policy,
    sweep: Sweep,
    now: u64,
) -> Result<GcReport, ServerError> {
    let mut report = GcReport::default();
    // Held for the whole run: one collector at a time fleet-wide.
    let _collector = match store.pins.fleet() {
        Some(fleet) => match fleet.try_lock_collector()? {
            Some(lock) => Some(lock),
            None => {
                tracing::debug!("another replica is collecting; skipping this run");
                report.skipped = true;
                return Ok(report);
            }
        },
        None => None,
    };
    let fresh = |created: u64| now.saturating_sub(created) < sweep.grace_secs;

    // 1. Plan and evict, only when there is something to evict: over the quota (the maintained
    // byte total counts every blob row, so at or under it nothing counts more), or an entry or tag
    // past the time-to-live (an indexed probe). Otherwise the run reads no entry or blob rows.
    let over_quota = match policy.max_size {
        // Space reserved by uploads in progress counts too: room is made before they land.
        Some(max) => store.db.stored_bytes()? + store.quota.reserved_fleetwide()? > max,
        None => false,
    };
    let expired = match policy.ttl_secs {
        Some(ttl) => {
            let cutoff = now.saturating_sub(ttl);
            store
                .db
                .anything_expired(cutoff.saturating_mul(1000).saturating_add(1), cutoff + 1)?
        }
        None => false,
    };
    if over_quota || expired {
        evict(store, policy, &fresh, now, &mut report)?;
    }

    // 2. Registry manifests no tag reaches any more (a replaced cache manifest, or children of
    // an evicted tag), once past the grace period. Their blobs become candidates below.
    let dead = liveness::dead_manifests(&store.db.registry_graph()?, now, sweep.grace_secs);
    if !dead.is_empty() {
        let cutoff = now.saturating_sub(sweep.grace_secs);
        report.manifests_deleted = store.db.delete_dead_manifests(&dead, cutoff)?;
    }

    // 3. Unreferenced blobs (refcounts as of after the evictions; a blob any manifest row still
    // names is spared by `delete_unreferenced`), from the partial index of refcount-0 rows.
    let candidates = if sweep.grace_secs > now {
        Vec::new()
    } else {
        store.db.unreferenced_blobs(now - sweep.grace_secs)?
    };
    for batch in candidates.chunks(DELETE_BATCH) {
        // Replicas: no lease can be written from here until the unlinks are done (the fleet's
        // side of the pin rule; `delete_unreferenced` spares leased blobs).
        let fleet_lock = store.pins.fleet().map(|f| f.lock_deletions()).transpose()?;
        let pins = store.pins.lock();
        let unpinned: Vec<Digest> = batch
            .iter()
            .filter(|d| !pins.is_pinned(d))
            .copied()
            .collect();
        let deleted = store.db.delete_unreferenced(&unpinned)?;
        for (digest, size) in deleted {
            store
                .blobs
                .delete(&digest)
                .map_err(|e| ServerError::io("deleting blob", digest.to_string(), e))?;
            report.blobs_deleted += 1;
            report.bytes_freed += size;
        }
        drop(pins);
        drop(fleet_lock);
    }

    // 4. Orphans.
    if let Some(grace) = sweep.orphans {
        report.orphan_files = remove_orphans(store, grace, now)?;
    }
    report.bytes_after = store.db.stored_bytes()?;
    if report.freed_anything() {
        tracing::info!(?report, "collection freed space");
    }
    Ok(report)
}

/// Step 1 of [`collect`]: loads the plan's inputs (every entry and tag with its blobs, every blob
/// row; through a reader, so requests do not wait) and evicts what the plan says, each entry in
/// its own write transaction.
fn evict(
    store: &Store,
    policy: &Policy,
    fresh: &dyn Fn(u64) -> bool,
    now: u64,
    report: &mut GcReport,
) -> Result<(), ServerError> {
    let rows = store.db.blob_rows()?;
    let sizes = rows.iter().map(|r| (r.digest, r.size)).collect();
    // Fresh unreferenced blobs are a push about to commit: they count against the quota. Blobs
    // only pinned by a transfer of an entry already evicted (their `created` was reset) go when
    // it ends; counting them would evict live entries for space that is about to be free.
    // Registry tags count as entries: each holds what its manifest reaches.
    let mut entries = store.db.entry_usage()?;
    entries.extend(liveness::tag_uses(&store.db.registry_graph()?));
    let held: HashSet<Digest> = entries
        .iter()
        .flat_map(|e| e.blobs.iter().copied())
        .collect();
    let kept_bytes: u64 = rows
        .iter()
        .filter(|r| r.refcount == 0 && fresh(r.created) && !held.contains(&r.digest))
        .map(|r| r.size)
        .sum::<u64>()
        + store.quota.reserved_fleetwide()?;
    let plan = lru::plan(&entries, &sizes, kept_bytes, policy, now);
    for (holder, last_used, reason) in &plan.evict {
        let evicted = match holder {
            Holder::Entry(id) => store.db.evict_entry(*id, *last_used)?,
            // Tags keep seconds; the plan saw them × 1000.
            Holder::Tag(id) => store.db.evict_tag(*id, *last_used / 1000)?,
        };
        if evicted {
            match reason {
                lru::Reason::Expired => report.entries_expired += 1,
                lru::Reason::OverQuota => report.entries_evicted += 1,
            }
        }
    }
    if plan.still_over(policy) {
        tracing::warn!(
            bytes = plan.bytes_after,
            max_size = ?policy.max_size,
            "still over the size quota after evicting: the rest is pinned by transfers in progress, \
             reserved by uploads, or uploaded within the grace period"
        );
    }
    Ok(())
}

/// Deletes stored blobs no row names and temp files, older than the grace period.
fn remove_orphans(store: &Store, grace_secs: u64, now: u64) -> Result<u64, ServerError> {
    let blobs = &store.blobs;
    let listed = blobs
        .list()
        .map_err(|e| ServerError::io("listing blobs in", blobs.describe(), e))?;
    let mut removed = 0;
    // One scan of the rows instead of one query per blob; only blobs without a row then get the
    // authoritative check below.
    let recorded = store.db.blob_digests()?;
    for digest in listed {
        if recorded.contains(&digest) {
            continue;
        }
        let modified = blobs
            .modified(&digest)
            .map_err(|e| ServerError::io("reading blob", digest.to_string(), e))?;
        if modified.is_none_or(|m| now.saturating_sub(m) < grace_secs) {
            continue;
        }
        // Under the pin lock: an upload that pinned the digest may be between storing the blob
        // and inserting its row (and so missing from `recorded`); on another replica, when it
        // holds a lease.
        let fleet_lock = store.pins.fleet().map(|f| f.lock_deletions()).transpose()?;
        let pins = store.pins.lock();
        if pins.is_pinned(&digest) || store.db.blob_size(&digest)?.is_some() {
            continue;
        }
        if let Some(fleet) = store.pins.fleet()
            && !fleet.leased(&[digest])?.is_empty()
        {
            continue;
        }
        if blobs
            .delete(&digest)
            .map_err(|e| ServerError::io("deleting orphan blob", digest.to_string(), e))?
        {
            removed += 1;
        }
        drop(pins);
        drop(fleet_lock);
    }
    let tmp = &store.tmp_dir;
    if let Ok(list) = fs::read_dir(tmp) {
        for f in list.flatten() {
            let path = f.path();
            if !modified_within(&path, grace_secs, now) && fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed orphan blobs and temp files");
    }
    Ok(removed)
}

/// Whether `path` was modified less than `grace_secs` before `now`.
fn modified_within(path: &Path, grace_secs: u64, now: u64) -> bool {
    let mtime = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(now);
    now.saturating_sub(mtime) < grace_secs
}

/// Runs the collector until the server stops: after commits (woken through `store.gc_wake`) and
/// every `settings.gc_interval`.
pub async fn run_collector(store: Arc<Store>, settings: Arc<Settings>) {
    let policy = policy_of(&settings);
    let sweep = Sweep {
        grace_secs: settings.upload_grace.as_secs(),
        orphans: None,
    };
    loop {
        let wake = store.gc_wake.notified();
        tokio::select! {
            () = wake => {
                // A commit woke us: skip the full pass when the quota is not exceeded.
                let Some(max) = policy.max_size else { continue };
                let s = Arc::clone(&store);
                match tokio::task::spawn_blocking(move || s.db.stored_bytes()).await {
                    Ok(Ok(bytes)) if bytes <= max => continue,
                    _ => {}
                }
            }
            () = tokio::time::sleep(settings.gc_interval) => {}
        }
        let s = Arc::clone(&store);
        let result = tokio::task::spawn_blocking(move || collect(&s, &policy, sweep, now())).await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "collection failed; retrying later"),
            Err(e) => tracing::error!(error = %e, "collection panicked; retrying later"),
        }
        // Do not spin when commits keep the store over quota with pinned blobs.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Blob rows checked.
    pub checked: u64,
    /// Blobs whose content does not hash to their digest, or whose size is wrong; moved to
    /// `quarantine/`.
    pub corrupt: Vec<Digest>,
    /// Blobs with a row but no file.
    pub missing: Vec<Digest>,
    /// Entries dropped because they referenced a corrupt or missing blob.
    pub entries_dropped: u64,
}

/// Re-hashes every stored blob (reading it back from the blob store, a bucket included). A
/// corrupt one is moved to `quarantine/<hex>` (in the data dir, or under the bucket prefix); a
/// corrupt or missing one loses its row and every entry referencing it, so it is never served.
/// Blocking.
pub fn verify(store: &Store) -> Result<VerifyReport, ServerError> {
    let mut report = VerifyReport::default();
    for row in store.db.blob_rows()? {
        report.checked += 1;
        let ok = match hash_blob(store, &row.digest) {
            Ok(Some((found, size))) => found == row.digest && size == row.size,
            Ok(None) => {
                report.missing.push(row.digest);
                report.entries_dropped += store.db.drop_corrupt_blob(&row.digest)?;
                continue;
            }
            Err(e) => return Err(ServerError::io("reading blob", row.digest.to_string(), e)),
        };
        if ok {
            continue;
        }
        tracing::error!(digest = %row.digest, "blob is corrupt; quarantining it");
        // The row goes first: from then on nothing serves the blob; the content follows.
        report.entries_dropped += store.db.drop_corrupt_blob(&row.digest)?;
        store
            .blobs
            .quarantine(&row.digest)
            .map_err(|e| ServerError::io("quarantining blob", row.digest.to_string(), e))?;
        report.corrupt.push(row.digest);
    }
    Ok(report)
}

/// The digest and length of a stored blob's content, `None` when it is absent.
fn hash_blob(store: &Store, digest: &Digest) -> io::Result<Option<(Digest, u64)>> {
    let Some(blob) = store.blobs.open(digest)? else {
        return Ok(None);
    };
    let mut hasher = Hasher::new();
    let size = blob.size();
    let mut at = 0;
    while at < size {
        let n = (size - at).min(1 << 20) as usize;
        hasher.update(&blob.chunk(at, n)?);
        at += n as u64;
    }
    Ok(Some(hasher.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::blobs::FsBlobStore;
    use crate::store::sqlite::{NewEntry, NewImage};
    use std::io::Write;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        (dir, s)
    }

    /// Stores blob `content` and returns its digest and size.
    fn put(s: &Store, content: &[u8]) -> (Digest, u64) {
        let d = Digest::of(content);
        let mut w = s.blobs.begin_write().unwrap();
        w.write_all(content).unwrap();
        w.commit(&d).unwrap();
        (d, content.len() as u64)
    }

    /// Commits entry `key` of one image whose config and layers are the given contents.
    fn commit(s: &Store, key: &str, layers: &[&[u8]]) -> (i64, Vec<Digest>) {
        let config = format!("config of {key}");
        let (cfg, cfg_size) = put(s, config.as_bytes());
        let layers: Vec<(Digest, u64)> = layers.iter().map(|l| put(s, l)).collect();
        let mut digests = vec![cfg];
        digests.extend(layers.iter().map(|l| l.0));
        let id =
            s.db.commit_entry(&NewEntry {
                namespace: "ns".parse().unwrap(),
                key: key.parse().unwrap(),
                images: vec![NewImage {
                    id: cfg,
                    parent: None,
                    tags: vec![],
                    config_size: cfg_size,
                    layers,
                }],
                prefixes: vec![],
            })
            .unwrap();
        (id, digests)
    }

    /// The ids in `images` and the image ids `image_layers` rows name, sorted.
    fn image_rows(s: &Store) -> (Vec<String>, Vec<String>) {
        let conn = s.db.as_sqlite().expect("these tests run on SQLite").conn();
        let ids = |sql: &str| -> Vec<String> {
            conn.prepare(sql)
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        (
            ids("SELECT id FROM images ORDER BY id"),
            ids("SELECT DISTINCT image_id FROM image_layers ORDER BY image_id"),
        )
    }

    fn no_grace() -> Sweep {
        Sweep {
            grace_secs: 0,
            orphans: Some(0),
        }
    }

    #[test]
    fn unreferenced_blobs_go_unless_pinned_or_fresh() {
        let (_dir, s) = store();
        let (kept, _) = commit(&s, "k", &[b"layer"]);
        let (free, _) = put(&s, b"loose");
        s.db.insert_blob(&free, 5).unwrap();
        let (pinned, _) = put(&s, b"pinned");
        s.db.insert_blob(&pinned, 6).unwrap();
        let guard = s.pins.pin([pinned]).unwrap();
        let policy = Policy::default();
        // Both loose blobs were uploaded "now": the grace period spares them.
        let sweep = Sweep {
            grace_secs: 60,
            orphans: None,
        };
        let r = collect(&s, &policy, sweep, now()).unwrap();
        assert_eq!(r.blobs_deleted, 0);
        let r = collect(&s, &policy, no_grace(), now() + 120).unwrap();
        assert_eq!((r.blobs_deleted, r.bytes_freed), (1, 5));
        assert!(!s.blobs.contains(&free).unwrap());
        assert!(s.blobs.contains(&pinned).unwrap());
        drop(guard);
        let r = collect(&s, &policy, no_grace(), now() + 120).unwrap();
        assert_eq!(r.blobs_deleted, 1);
        assert!(s.db.manifest(kept).is_ok());
        assert_eq!(s.db.stats().unwrap().collected_blobs, 2);
    }

    #[test]
    fn over_quota_evicts_lru_entries_and_their_blobs() {
        let (_dir, s) = store();
        let big = vec![1u8; 1000];
        let (old, old_blobs) = commit(&s, "old", &[&big[..], b"shared"]);
        let (new, _) = commit(&s, "new", &[b"fresh", b"shared"]);
        // "old" is the least recently used: committed first, never hit (a tie within the same
        // second breaks by id, and "old" has the lower one).
        s.db.record_hit(new, None).unwrap();
        let usage = s.db.entry_usage().unwrap();
        assert_eq!(usage.len(), 2);
        let policy = Policy {
            max_size: Some(500),
            ttl_secs: None,
        };
        let r = collect(&s, &policy, no_grace(), now()).unwrap();
        assert_eq!(r.entries_evicted, 1);
        assert!(r.bytes_after <= 500, "{r:?}");
        assert!(s.db.manifest(old).is_err());
        assert!(s.db.manifest(new).is_ok());
        assert!(
            !s.blobs.contains(&old_blobs[1]).unwrap(),
            "the big layer goes"
        );
        assert!(
            s.blobs.contains(&Digest::of(b"shared")).unwrap(),
            "the shared layer stays"
        );
        let stats = s.db.stats().unwrap();
        assert_eq!(stats.evicted_entries, 1);
        assert!(stats.evicted_bytes >= 1000);
        // Regression: the evicted entry's image and its layer rows go with it.
        let new_image = vec![s.db.manifest(new).unwrap().images[0].id.to_string()];
        assert_eq!(image_rows(&s), (new_image.clone(), new_image));
    }

    #[test]
    fn blobs_pinned_by_a_transfer_of_an_evicted_entry_do_not_evict_more_entries() {
        let (_dir, s) = store();
        let (old, old_blobs) = commit(&s, "old", &[&[1u8; 1000][..]]);
        let (new, _) = commit(&s, "new", &[&[2u8; 1000][..]]);
        s.db.record_hit(new, None).unwrap();
        let policy = Policy {
            max_size: Some(1500),
            ttl_secs: None,
        };
        // A restore of "old" is streaming: its blobs stay pinned while "old" is evicted.
        let guard = s.pins.pin(old_blobs.clone()).unwrap();
        let r = collect(&s, &policy, no_grace(), now()).unwrap();
        assert_eq!(r.entries_evicted, 1);
        assert!(s.db.manifest(old).is_err());
        // Collections during the transfer leave "new" alone although the disk is over quota.
        let r = collect(&s, &policy, no_grace(), now()).unwrap();
        assert_eq!(r.entries_evicted, 0, "{r:?}");
        assert!(s.db.manifest(new).is_ok());
        assert!(s.blobs.contains(&old_blobs[1]).unwrap(), "pinned");
        drop(guard);
        let r = collect(&s, &policy, no_grace(), now()).unwrap();
        assert_eq!((r.entries_evicted, r.blobs_deleted), (0, 2), "{r:?}");
        assert!(s.db.manifest(new).is_ok());
    }

    #[test]
    fn ttl_evicts_unused_entries_with_an_injected_clock() {
        let (_dir, s) = store();
        let (id, _) = commit(&s, "k", &[b"l"]);
        let policy = Policy {
            max_size: None,
            ttl_secs: Some(7 * DAY_SECS),
        };
        let t = now();
        let r = collect(&s, &policy, no_grace(), t + 6 * DAY_SECS).unwrap();
        assert_eq!(r.entries_expired, 0);
        let r = collect(&s, &policy, no_grace(), t + 8 * DAY_SECS).unwrap();
        assert_eq!((r.entries_expired, r.blobs_deleted), (1, 2));
        assert!(s.db.manifest(id).is_err());
    }

    #[test]
    fn orphan_files_without_rows_are_removed() {
        let (dir, s) = store();
        let (orphan, _) = put(&s, b"renamed but never recorded");
        let (recorded, _) = put(&s, b"recorded");
        s.db.insert_blob(&recorded, 8).unwrap();
        fs::write(dir.path().join("tmp").join("partial"), b"x").unwrap();
        // The recorded (unreferenced) blob is within the upload grace; files without rows are not.
        let sweep = Sweep {
            grace_secs: 3600,
            orphans: Some(0),
        };
        let r = collect(&s, &Policy::default(), sweep, now() + 10).unwrap();
        assert_eq!(r.orphan_files, 2);
        assert!(!s.blobs.contains(&orphan).unwrap());
        assert!(s.blobs.contains(&recorded).unwrap());
    }

    #[test]
    fn verify_quarantines_corrupt_blobs_and_drops_their_entries() {
        let (dir, s) = store();
        let (id, blobs) = commit(&s, "k", &[b"good layer", b"bad layer"]);
        let (other, blobs_of_other) = commit(&s, "other", &[b"good layer"]);
        let bad = Digest::of(b"bad layer");
        let fsb = FsBlobStore::new(&dir.path().join("blobs"), &dir.path().join("tmp")).unwrap();
        fs::write(fsb.path(&bad), b"bad layeR").unwrap();
        let r = verify(&s).unwrap();
        assert_eq!(r.corrupt, vec![bad]);
        assert_eq!(r.entries_dropped, 1);
        assert!(s.db.manifest(id).is_err());
        assert!(s.db.manifest(other).is_ok());
        assert!(dir.path().join("quarantine").join(bad.hex()).exists());
        assert!(!s.blobs.contains(&bad).unwrap());
        // The good layer is still referenced by "other"; the dropped entry's config is now
        // unreferenced and collectable.
        let r = collect(&s, &Policy::default(), no_grace(), now() + 10).unwrap();
        assert_eq!(r.blobs_deleted, 1);
        assert!(s.blobs.contains(&blobs[1]).unwrap());
        assert_eq!(s.db.stats().unwrap().quarantined_blobs, 1);
        assert_eq!(
            verify(&s).unwrap(),
            VerifyReport {
                checked: 2,
                ..VerifyReport::default()
            }
        );
        // Only the image of the entry left is recorded.
        let other_image = vec![blobs_of_other[0].to_string()];
        assert_eq!(image_rows(&s), (other_image.clone(), other_image));
    }
}
