//! Phase 1: every blob the source index records goes to the target store, verified on the way.
//!
//! A copy streams the source file a [`CHUNK`] at a time into the target's own writer
//! ([`crate::store::blobs::BlobWriter`]), which hashes what it is given and stores it under the
//! digest only if the hash matches (a temp file in the data dir's `tmp/`, then a rename or an
//! upload of at most a few parts at a time): memory stays bounded by a chunk and the writer's
//! parts, and the target never holds content under a name it does not hash to. A blob the target
//! already holds with the recorded size (an earlier, interrupted run) is skipped; its content was
//! checked when it was written, and `verify` on the target re-hashes everything.

use std::io::Write;

use layercache_shared::Digest;
use layercache_shared::digest::Hasher;

use super::progress::Progress;
use super::source::Source;
use super::{MigrateError, Summary, abort_point};
use crate::store::blobs::{BlobError, BlobLocation, BlobRead, BlobStore, FsBlobStore};

/// Bytes read from the source per step.
const CHUNK: usize = 1 << 20;

/// Copies (or, with `--blob-store dir`, re-hashes in place) every blob of `src`.
pub fn copy_all(
    src: &Source,
    target: &BlobLocation,
    summary: &mut Summary,
) -> Result<(), MigrateError> {
    let tmp = src.dir().join("tmp");
    let from = FsBlobStore::new(&src.dir().join("blobs"), &tmp)?;
    let to = match target {
        BlobLocation::DataDir => None,
        other => Some(other.open(src.dir(), &tmp)?),
    };
    let mut progress = Progress::new("blobs", Some(summary.source.blobs));
    let abort_after = abort_point("blobs");
    let mut after = String::new();
    loop {
        let page = src.blobs_after(&after)?;
        let Some(last) = page.last() else { break };
        after = last.digest.clone();
        for row in &page {
            let digest: Digest = row
                .digest
                .parse()
                .map_err(|e| MigrateError::CorruptSource {
                    digest: row.digest.clone(),
                    reason: format!("not a digest: {e}"),
                    data_dir: src.dir().to_path_buf(),
                })?;
            let size = row.size.max(0) as u64;
            let moved = match &to {
                None => {
                    rehash(src, &from, &digest, size)?;
                    summary.blobs_verified += 1;
                    size
                }
                Some(to) => {
                    if copy_one(src, &from, &**to, &digest, size)? {
                        summary.blobs_copied += 1;
                        summary.bytes_copied += size;
                        if abort_after == Some(summary.blobs_copied) {
                            tracing::warn!(
                                copied = summary.blobs_copied,
                                "LAYERCACHE_MIGRATE_ABORT_AFTER: aborting (test hook)"
                            );
                            std::process::abort();
                        }
                        size
                    } else {
                        summary.blobs_present += 1;
                        0
                    }
                }
            };
            progress.add(1, moved);
        }
    }
    progress.finish();
    tracing::info!(
        copied = summary.blobs_copied,
        present = summary.blobs_present,
        rehashed = summary.blobs_verified,
        "blobs done"
    );
    Ok(())
}

/// Copies one blob unless the target has it; true when it was copied.
fn copy_one(
    src: &Source,
    from: &FsBlobStore,
    to: &dyn BlobStore,
    digest: &Digest,
    size: u64,
) -> Result<bool, MigrateError> {
    let remote = |e: std::io::Error| BlobError::Remote {
        action: "reading the size of",
        location: format!("{} {digest}", to.describe()),
        source: e,
    };
    match to.len(digest).map_err(remote)? {
        Some(found) if found == size => return Ok(false),
        Some(found) => {
            return Err(MigrateError::TargetBlobWrongSize {
                digest: digest.to_string(),
                expected: size,
                found,
            });
        }
        None => {}
    }
    let reader = open_source(src, from, digest, size)?;
    let mut writer = to
        .begin_write()
        .map_err(|e| MigrateError::io("starting a blob write in", &src.dir().join("tmp"), e))?;
    for_each_chunk(src, &*reader, digest, size, |bytes| {
        writer
            .write_all(bytes)
            .map_err(|e| MigrateError::io("staging a blob in", &src.dir().join("tmp"), e))
    })?;
    match writer.commit(digest) {
        Ok(_) => Ok(true),
        Err(BlobError::Mismatch { found, .. }) => Err(corrupt(
            src,
            digest,
            format!("its content hashes to {found}"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Re-hashes one blob where it is (the target keeps the data dir's blobs).
fn rehash(
    src: &Source,
    from: &FsBlobStore,
    digest: &Digest,
    size: u64,
) -> Result<(), MigrateError> {
    let reader = open_source(src, from, digest, size)?;
    let mut hasher = Hasher::new();
    for_each_chunk(src, &*reader, digest, size, |bytes| {
        hasher.update(bytes);
        Ok(())
    })?;
    let (found, _) = hasher.finish();
    if found != *digest {
        return Err(corrupt(
            src,
            digest,
            format!("its content hashes to {found}"),
        ));
    }
    Ok(())
}

/// Reads `reader` (the source's blob `digest`, opened by [`open_source`]) in [`CHUNK`]s, handing
/// each to `f`; a failed read is a corrupt source.
fn for_each_chunk(
    src: &Source,
    reader: &dyn BlobRead,
    digest: &Digest,
    size: u64,
    mut f: impl FnMut(&[u8]) -> Result<(), MigrateError>,
) -> Result<(), MigrateError> {
    let mut offset = 0;
    while offset < size {
        let len = CHUNK.min((size - offset) as usize);
        let bytes = reader
            .chunk(offset, len)
            .map_err(|e| corrupt(src, digest, format!("reading it failed: {e}")))?;
        f(&bytes)?;
        offset += len as u64;
    }
    Ok(())
}

/// The error for a source blob that cannot be migrated as recorded.
fn corrupt(src: &Source, digest: &Digest, reason: String) -> MigrateError {
    MigrateError::CorruptSource {
        digest: digest.to_string(),
        reason,
        data_dir: src.dir().to_path_buf(),
    }
}

/// The source's file of `digest`, checked to have the recorded `size`.
fn open_source(
    src: &Source,
    from: &FsBlobStore,
    digest: &Digest,
    size: u64,
) -> Result<Box<dyn BlobRead>, MigrateError> {
    let reader = from
        .open(digest)
        .map_err(|e| corrupt(src, digest, format!("opening it failed: {e}")))?
        .ok_or_else(|| corrupt(src, digest, "its file is missing".into()))?;
    if reader.size() != size {
        return Err(corrupt(
            src,
            digest,
            format!(
                "its file has {} bytes, the index records {size}",
                reader.size()
            ),
        ));
    }
    Ok(reader)
}
