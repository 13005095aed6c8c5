//! Content-addressed blob storage behind the small [`BlobStore`] trait, with two implementations:
//!
//! - [`fs`]: [`FsBlobStore`], files under the data dir (`blobs/sha256/<2 hex>/<64 hex>`), the
//!   default;
//! - [`s3`]: [`S3BlobStore`], objects in an S3-compatible bucket (`--blob-store s3://BUCKET/PREFIX`,
//!   keys `<PREFIX>/sha256/<2 hex>/<64 hex>`).
//!
//! Both stage an upload in the same way ([`spool`]): an `O_EXCL` temp file in the data dir's
//! `tmp/`, hashed while written. Only content whose digest matches is stored (renamed into place,
//! or sent to the bucket), so a blob is never visible under a digest it does not hash to, and any
//! failure (or dropping the writer) deletes the temp file.
//!
//! Staging objects hold the chunks of registry upload sessions between requests, where every
//! replica of a fleet reads them (`crate::registry::uploads`): `uploads/<session>/<chunk>` beside
//! `blobs/` in the data dir, or `<PREFIX>/uploads/<session>/<chunk>` in the bucket. They are
//! outside the `sha256/` tree that [`BlobStore::list`] walks, so the collector's orphan sweep
//! never takes a live session's chunk for an orphan blob; the session that owns them deletes
//! them when it finishes, is cancelled or expires.
//!
//! The API is blocking: callers run it on `spawn_blocking` threads. [`BlobStore::begin_write`],
//! writes and dropping a writer only touch the local temp file, so they may also run on the
//! runtime for a moment (a registry session is opened there).

pub mod fs;
pub mod s3;
mod spool;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bytes::Bytes;
use layercache_shared::Digest;

pub use fs::FsBlobStore;
pub use s3::{S3BlobStore, S3Location};

/// Why storing a blob failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob content has digest {found} ({size} bytes), expected {expected}")]
    Mismatch {
        expected: Digest,
        found: Digest,
        /// Bytes received.
        size: u64,
    },
    #[error("{action} `{}` failed: {source}", path.display())]
    Io {
        /// What the store was doing, e.g. "renaming blob into".
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The object store refused or failed a request (or could not be reached).
    #[error("{action} `{location}` failed: {source}")]
    Remote {
        /// What the store was doing, e.g. "uploading blob to".
        action: &'static str,
        /// `s3://bucket/key`.
        location: String,
        #[source]
        source: io::Error,
    },
}

/// Refuses a chunk of `len` bytes at `offset` that runs past the end of a blob of `size` bytes
/// (every [`BlobRead::chunk`] checks this before reading).
fn check_range(offset: u64, len: usize, size: u64) -> io::Result<()> {
    if offset + len as u64 > size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{len} bytes at {offset} are past the end ({size})"),
        ));
    }
    Ok(())
}

/// A stored blob opened for sending.
pub trait BlobRead: Send {
    /// Its size as stored (the caller compares it with the recorded size).
    fn size(&self) -> u64;
    /// Bytes `offset..offset + len` (within [`BlobRead::size`]), as memory a response body can
    /// hand to the socket without another copy. May block on disk or network: call it on a
    /// blocking thread. Reading chunks in order is the fast path (the object store keeps one
    /// ranged GET streaming between calls).
    fn chunk(&self, offset: u64, len: usize) -> io::Result<Bytes>;
}

/// The outcome of a successful [`BlobWriter::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Bytes of the blob.
    pub size: u64,
    /// False when the blob was already stored, so this copy was discarded (deduplicated).
    pub newly_stored: bool,
}

/// An upload in progress: bytes written are hashed on the way to a temp file.
pub trait BlobWriter: Write + Send {
    /// Bytes written so far.
    fn written(&self) -> u64;
    /// The digest of the bytes written so far: what an upload whose digest the client does not
    /// name commits as.
    fn digest(&self) -> Digest;
    /// Stores the content as `expected` if its digest matches; otherwise discards it with
    /// [`BlobError::Mismatch`]. Dropping a writer without committing discards the content.
    fn commit(self: Box<Self>, expected: &Digest) -> Result<Committed, BlobError>;
    /// Done writing, but not committing yet: flushes and gives back the write buffer and the open
    /// file, keeping only what [`BlobWriter::commit`] needs. Ingest parks each layer once it is
    /// written, so a tarball of hundreds of layers holds one buffer and one file open at a time,
    /// not hundreds. Writing to a parked writer fails. The default does nothing.
    fn park(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where blobs live: [`FsBlobStore`] or [`S3BlobStore`].
pub trait BlobStore: Send + Sync + 'static {
    /// Opens a blob for reading, `None` when absent.
    fn open(&self, digest: &Digest) -> io::Result<Option<Box<dyn BlobRead>>>;
    /// The blob's length, `None` when absent.
    fn len(&self, digest: &Digest) -> io::Result<Option<u64>>;
    /// Whether the blob is stored.
    fn contains(&self, digest: &Digest) -> io::Result<bool> {
        Ok(self.len(digest)?.is_some())
    }
    /// Starts an upload whose digest is checked at [`BlobWriter::commit`].
    fn begin_write(&self) -> io::Result<Box<dyn BlobWriter>>;
    /// Removes a blob; false when it was absent.
    fn delete(&self, digest: &Digest) -> io::Result<bool>;
    /// Every stored blob's digest (objects or files with other names are skipped): the orphan
    /// sweep compares them with the index. One pass over the store.
    fn list(&self) -> io::Result<Vec<Digest>>;
    /// When the blob was last written, in seconds since the epoch (`None` when absent): the orphan
    /// sweep spares blobs younger than the upload grace period (an upload about to insert its row).
    fn modified(&self, digest: &Digest) -> io::Result<Option<u64>>;
    /// Moves a corrupt blob aside (`quarantine/<hex>`), where nothing serves it but an operator
    /// can look at it; false when it was absent.
    fn quarantine(&self, digest: &Digest) -> io::Result<bool>;
    /// Where the blobs are, for logs and error messages (`/data/blobs`, `s3://bucket/prefix`).
    fn describe(&self) -> String;
    /// A URL anyone holding it may `GET` the blob from, straight from the store, for the next
    /// `expires_in` (`--redirect-blobs`); `None` when the store has no such URLs (local files).
    /// Computed locally (a signature), no request; whether the blob exists is the caller's check.
    fn presigned_get(
        &self,
        digest: &Digest,
        expires_in: std::time::Duration,
    ) -> io::Result<Option<String>> {
        let _ = (digest, expires_in);
        Ok(None)
    }

    // Staging objects: the chunks of registry upload sessions (see the module docs).
    /// Starts writing staging object `name` (`<session>/<chunk>`); it exists, for every replica,
    /// once [`StagedWrite::finish`] returns. Dropping the writer unfinished leaves nothing.
    fn stage(&self, name: &str) -> io::Result<Box<dyn StagedWrite>>;
    /// Opens staging object `name` for reading, `None` when absent.
    fn open_staged(&self, name: &str) -> io::Result<Option<Box<dyn BlobRead>>>;
    /// A writer that holds staging object `name` (`size` bytes, `digest` as its session hashed
    /// it while it arrived) and whose commit moves it into place as a blob without copying it
    /// through this process (a rename, or a server-side copy). Nothing may be written to it.
    /// `None` when this store cannot move such an object (the caller copies it instead).
    fn adopt_staged(&self, name: &str, size: u64, digest: Digest) -> Option<Box<dyn BlobWriter>>;
    /// Deletes staging object `name` (absent is fine).
    fn delete_staged(&self, name: &str) -> io::Result<()>;
    /// Deletes every staging object of `session` (absent is fine): also a chunk whose writer
    /// died before the session recorded it.
    fn delete_staged_session(&self, session: &str) -> io::Result<()>;
}

/// A staging object being written (see [`BlobStore::stage`]).
pub trait StagedWrite: Write + Send {
    /// Makes the object readable by every replica under its name: renamed into the staging
    /// directory, or sent to the bucket. Its size.
    fn finish(self: Box<Self>) -> io::Result<u64>;
}

/// `--blob-store`: where a server keeps its blobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BlobLocation {
    /// `blobs/` in the data dir (the default).
    #[default]
    DataDir,
    /// An S3-compatible bucket ([`S3BlobStore::open`]).
    S3(S3Location),
}

impl BlobLocation {
    /// With the `AWS_*` environment added to an S3 location's settings (the binary's way to
    /// configure the client, as other S3 tools do).
    pub fn with_env(self) -> Self {
        match self {
            BlobLocation::S3(loc) => BlobLocation::S3(loc.with_env()),
            other => other,
        }
    }

    /// Whether blobs are in an object store (some maintenance commands are not supported there).
    pub fn is_remote(&self) -> bool {
        matches!(self, BlobLocation::S3(_))
    }

    /// Opens the store: `<data_dir>/blobs`, or the bucket (checked to exist and to accept the
    /// credentials before the server starts). Uploads are staged in `tmp_dir` either way.
    pub fn open(&self, data_dir: &Path, tmp_dir: &Path) -> Result<Box<dyn BlobStore>, BlobError> {
        Ok(match self {
            BlobLocation::DataDir => Box::new(FsBlobStore::new(&data_dir.join("blobs"), tmp_dir)?),
            BlobLocation::S3(loc) => Box::new(S3BlobStore::open(loc, tmp_dir)?),
        })
    }
}

impl std::fmt::Display for BlobLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobLocation::DataDir => f.write_str("dir"),
            BlobLocation::S3(loc) => loc.fmt(f),
        }
    }
}

/// A `--blob-store` value that is neither `dir` nor `s3://BUCKET[/PREFIX]`.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a blob store: use `dir` (the data dir, the default) or `s3://BUCKET[/PREFIX]`"
)]
pub struct BadLocation(pub String);

impl FromStr for BlobLocation {
    type Err = BadLocation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "dir" {
            return Ok(BlobLocation::DataDir);
        }
        S3Location::parse(s)
            .map(BlobLocation::S3)
            .ok_or_else(|| BadLocation(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_store_flags_parse() {
        assert_eq!(
            "dir".parse::<BlobLocation>().unwrap(),
            BlobLocation::DataDir
        );
        let BlobLocation::S3(loc) = "s3://cache/ci/layers/".parse().unwrap() else {
            panic!("not s3");
        };
        assert_eq!(
            (loc.bucket.as_str(), loc.prefix.as_str()),
            ("cache", "ci/layers")
        );
        let BlobLocation::S3(loc) = "s3://cache".parse().unwrap() else {
            panic!("not s3");
        };
        assert_eq!((loc.bucket.as_str(), loc.prefix.as_str()), ("cache", ""));
        assert_eq!(loc.to_string(), "s3://cache");
        for bad in ["s3://", "s3:///x", "/data/blobs", "gs://b", ""] {
            assert!(bad.parse::<BlobLocation>().is_err(), "{bad}");
        }
    }
}
