//! Content-addressed blob storage behind the small [`BlobStore`] trait, and its filesystem
//! implementation [`FsBlobStore`] (`blobs/sha256/<2 hex>/<64 hex>`, uploads staged in `tmp/`).
//!
//! Writes go to an `O_EXCL` temp file, are hashed while written, fsynced, and renamed into place
//! only when the digest matches; any failure (or dropping the writer) deletes the temp file. Two
//! concurrent uploads of one blob both succeed and leave one copy: the rename is atomic and the
//! content identical.
//!
//! The API is blocking: callers run it on `spawn_blocking` threads.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use layercache_shared::Digest;
use layercache_shared::digest::HashingWriter;
use tempfile::{NamedTempFile, TempPath};

/// Buffer between the hashing writer and the temp file: tar readers hand out small slices, and
/// one write syscall per MiB keeps ingest disk-bound rather than syscall-bound.
const WRITE_BUFFER: usize = 1 << 20;

/// Every this many bytes an upload asks the kernel to start writing the temp file back, so the
/// disk works while the rest arrives and the fsync at commit has little left to flush.
const WRITE_BEHIND: u64 = 8 << 20;

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
}

/// A stored blob opened for sending.
pub trait BlobRead: Send {
    /// Its size as stored (the caller compares it with the recorded size).
    fn size(&self) -> u64;
    /// Bytes `offset..offset + len` (within [`BlobRead::size`]), as memory a response body can
    /// hand to the socket without another copy. May block on disk: call it on a blocking thread.
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

/// Where blobs live. Implemented by [`FsBlobStore`]; an object-store backend can follow.
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
}

/// Blobs as files under a data dir.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    /// `<data>/blobs/sha256`.
    root: PathBuf,
    /// `<data>/tmp`: same filesystem as `root`, so the final rename is atomic.
    tmp: PathBuf,
}

impl FsBlobStore {
    /// Uses `blobs_dir` for blobs and `tmp_dir` for uploads in progress; creates both.
    pub fn new(blobs_dir: &Path, tmp_dir: &Path) -> Result<Self, BlobError> {
        let root = blobs_dir.join("sha256");
        for dir in [root.as_path(), tmp_dir] {
            fs::create_dir_all(dir).map_err(|source| BlobError::Io {
                action: "creating directory",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        Ok(FsBlobStore {
            root,
            tmp: tmp_dir.to_path_buf(),
        })
    }

    /// Where the blob's file is (whether or not it exists).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join(&hex[..2]).join(hex)
    }
}

impl BlobStore for FsBlobStore {
    fn open(&self, digest: &Digest) -> io::Result<Option<Box<dyn BlobRead>>> {
        let file = match File::open(self.path(digest)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        Ok(Some(Box::new(FsBlobRead { file, len })))
    }

    fn len(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn begin_write(&self) -> io::Result<Box<dyn BlobWriter>> {
        let temp = NamedTempFile::new_in(&self.tmp)?;
        Ok(Box::new(FsBlobWriter {
            state: WriterState::Open(HashingWriter::new(BufWriter::with_capacity(
                WRITE_BUFFER,
                temp,
            ))),
            store: self.clone(),
            kicked: 0,
        }))
    }

    fn delete(&self, digest: &Digest) -> io::Result<bool> {
        match fs::remove_file(self.path(digest)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A blob file opened for sending.
struct FsBlobRead {
    file: File,
    len: u64,
}

impl BlobRead for FsBlobRead {
    fn size(&self) -> u64 {
        self.len
    }

    /// Reads the chunk with `pread` into a fresh buffer, on the caller's blocking thread, so the
    /// async thread that writes it to the socket never waits on the disk; memory stays at the
    /// chunks in flight.
    ///
    /// Not a memory map, although mapping saves a copy: a blob file truncated behind the server's
    /// back (a full disk repaired by hand, a bad restore of the data dir) turns a mapped read
    /// into SIGBUS, which kills the whole server; a read just comes up short, and the transfer
    /// aborts with an error naming the blob.
    fn chunk(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        if len == 0 {
            return Ok(Bytes::new());
        }
        if offset + len as u64 > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{len} bytes at {offset} are past the end ({})", self.len),
            ));
        }
        let mut buf = bytes::BytesMut::zeroed(len);
        self.file.read_exact_at(&mut buf, offset).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading {len} bytes at {offset} (was the file changed?): {e}"),
            )
        })?;
        Ok(buf.freeze())
    }
}

/// An upload into an [`FsBlobStore`]; the temp file is deleted on drop unless committed.
struct FsBlobWriter {
    /// Open for writing, or parked.
    state: WriterState,
    /// Where the blob goes on commit.
    store: FsBlobStore,
    /// Bytes written when write-back was last started (see [`WRITE_BEHIND`]).
    kicked: u64,
}

/// Where an [`FsBlobWriter`] is in its life.
enum WriterState {
    /// Hashes then buffers into the temp file.
    Open(HashingWriter<BufWriter<NamedTempFile>>),
    /// Written and closed ([`BlobWriter::park`]): the temp file by path only, no fd, no buffer.
    Parked {
        digest: Digest,
        size: u64,
        path: TempPath,
    },
    /// Parking failed half-way; the temp file is gone.
    Broken,
}

/// Writing to a writer that was parked (or broke while parking).
fn parked_error() -> io::Error {
    io::Error::other("the upload was already finished (parked); it takes no more writes")
}

impl FsBlobWriter {
    /// The open writer, or an error once parked.
    fn open(&mut self) -> io::Result<&mut HashingWriter<BufWriter<NamedTempFile>>> {
        match &mut self.state {
            WriterState::Open(w) => Ok(w),
            _ => Err(parked_error()),
        }
    }

    /// Starts write-back of what reached the temp file so far, without waiting for it.
    fn write_behind(&mut self) {
        let WriterState::Open(inner) = &self.state else {
            return;
        };
        if inner.len() - self.kicked < WRITE_BEHIND {
            return;
        }
        self.kicked = inner.len();
        start_writeback(inner.get_ref().get_ref().as_file());
    }
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)` over the whole file: queue dirty pages for writing and
/// return at once. Only a hint; durability still comes from the fsync at commit.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is open for the duration of the call; the call reads no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File) {}

impl Write for FsBlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.open()?.write(buf)?;
        self.write_behind();
        Ok(n)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.open()?.write_all(buf)?;
        self.write_behind();
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.state {
            WriterState::Open(w) => w.flush(),
            WriterState::Parked { .. } => Ok(()),
            WriterState::Broken => Err(parked_error()),
        }
    }
}

/// Maps an I/O error of the blob store to [`BlobError::Io`] naming `path`.
fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BlobError {
    let path = path.to_path_buf();
    move |source| BlobError::Io {
        action,
        path,
        source,
    }
}

impl BlobWriter for FsBlobWriter {
    fn written(&self) -> u64 {
        match &self.state {
            WriterState::Open(w) => w.len(),
            WriterState::Parked { size, .. } => *size,
            WriterState::Broken => 0,
        }
    }

    fn digest(&self) -> Digest {
        match &self.state {
            WriterState::Open(w) => w.digest(),
            WriterState::Parked { digest, .. } => *digest,
            WriterState::Broken => Digest::of(b""),
        }
    }

    fn park(&mut self) -> io::Result<()> {
        let WriterState::Open(inner) = std::mem::replace(&mut self.state, WriterState::Broken)
        else {
            return Ok(()); // already parked (or broken: commit reports it)
        };
        let (digest, size, buffered) = inner.finish();
        let temp = buffered.into_inner().map_err(|e| e.into_error())?;
        self.state = WriterState::Parked {
            digest,
            size,
            path: temp.into_temp_path(),
        };
        Ok(())
    }

    fn commit(self: Box<Self>, expected: &Digest) -> Result<Committed, BlobError> {
        let FsBlobWriter { state, store, .. } = *self;
        let (found, size, temp) = match state {
            WriterState::Open(inner) => {
                let (found, size, buffered) = inner.finish();
                let temp = buffered
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .map_err(io_err("writing upload to", &store.tmp))?;
                (found, size, temp.into_temp_path())
            }
            WriterState::Parked { digest, size, path } => (digest, size, path),
            WriterState::Broken => {
                return Err(io_err("writing upload to", &store.tmp)(parked_error()));
            }
        };
        if found != *expected {
            return Err(BlobError::Mismatch {
                expected: *expected,
                found,
                size,
            });
        }
        let dest = store.path(expected);
        if dest.exists() {
            // Already stored: the temp file goes when `temp` drops.
            return Ok(Committed {
                size,
                newly_stored: false,
            });
        }
        // Opened again by path: a parked writer holds no fd. fsync through a read-only fd flushes
        // the file's pages all the same.
        File::open(&temp)
            .and_then(|f| f.sync_all())
            .map_err(io_err("syncing upload", &temp))?;
        let dir = dest.parent().unwrap_or(&store.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err("creating directory", &dir))?;
        temp.persist(&dest)
            .map_err(|e| e.error)
            .map_err(io_err("renaming upload into", &dest))?;
        // The rename is durable only once the directory entry is: a crash must not lose a blob
        // the database is about to reference.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing directory", &dir))?;
        Ok(Committed {
            size,
            newly_stored: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, FsBlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = FsBlobStore::new(&dir.path().join("blobs"), &dir.path().join("tmp")).unwrap();
        (dir, s)
    }

    fn count_files(dir: &Path) -> usize {
        fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    #[test]
    fn commit_stores_once_and_dedups_the_second_copy() {
        let (dir, s) = store();
        let d = Digest::of(b"hello");
        for expect_new in [true, false] {
            let mut w = s.begin_write().unwrap();
            w.write_all(b"hello").unwrap();
            let c = w.commit(&d).unwrap();
            assert_eq!(c.size, 5);
            assert_eq!(c.newly_stored, expect_new);
        }
        assert_eq!(s.len(&d).unwrap(), Some(5));
        let blob = s.open(&d).unwrap().unwrap();
        assert_eq!(blob.size(), 5);
        assert_eq!(blob.chunk(0, 5).unwrap(), "hello");
        assert_eq!(blob.chunk(1, 3).unwrap(), "ell");
        assert_eq!(blob.chunk(5, 0).unwrap(), "");
        assert!(blob.chunk(3, 3).is_err(), "past the end");
        assert_eq!(count_files(&dir.path().join("tmp")), 0);
    }

    /// A mapped chunk of a file cut behind the server's back faults (SIGBUS) when read in user
    /// space (TLS encryption does): reading a chunk must fail instead.
    #[test]
    fn a_chunk_of_a_truncated_blob_is_an_error_not_a_mapping() {
        let (_dir, s) = store();
        let content = vec![5u8; 3 << 20];
        let d = Digest::of(&content);
        let mut w = s.begin_write().unwrap();
        w.write_all(&content).unwrap();
        w.commit(&d).unwrap();
        let blob = s.open(&d).unwrap().unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(s.path(&d))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        assert_eq!(blob.chunk(0, 4096).unwrap()[..], [5u8; 4096]);
        let err = blob.chunk(2 << 20, 4096).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[test]
    fn mismatch_leaves_no_file_anywhere() {
        let (dir, s) = store();
        let d = Digest::of(b"other");
        let mut w = s.begin_write().unwrap();
        w.write_all(b"hello").unwrap();
        let err = w.commit(&d).unwrap_err();
        assert!(matches!(err, BlobError::Mismatch { size: 5, .. }), "{err}");
        assert!(!s.contains(&d).unwrap());
        assert_eq!(count_files(&dir.path().join("tmp")), 0);
        assert_eq!(count_files(&dir.path().join("blobs/sha256")), 0);
    }

    #[test]
    fn dropped_writer_removes_its_temp_file() {
        let (dir, s) = store();
        let mut w = s.begin_write().unwrap();
        w.write_all(&[0u8; 3 << 20]).unwrap();
        assert_eq!(count_files(&dir.path().join("tmp")), 1);
        drop(w);
        assert_eq!(count_files(&dir.path().join("tmp")), 0);
    }

    /// Issue 12: a tarball of hundreds of layers held each one's buffer and open file until the
    /// commit. A parked writer keeps its temp file (by path) and commits as before.
    #[test]
    fn a_parked_writer_closes_its_file_and_still_commits() {
        let (dir, s) = store();
        let fds = || {
            fs::read_dir("/proc/self/fd")
                .map(|d| d.count())
                .unwrap_or(0)
        };
        let mut writers = Vec::new();
        let before = fds();
        for i in 0..50u8 {
            let mut w = s.begin_write().unwrap();
            w.write_all(&[i; 1000]).unwrap();
            w.park().unwrap();
            assert!(
                w.write_all(b"more").is_err(),
                "a parked writer takes no writes"
            );
            assert_eq!(w.written(), 1000);
            writers.push(w);
        }
        assert!(
            fds() < before + 10,
            "{} fds open for 50 parked writers",
            fds() - before
        );
        assert_eq!(count_files(&dir.path().join("tmp")), 50);
        let w = writers.remove(7);
        let d = Digest::of(&[7u8; 1000]);
        assert_eq!(w.digest(), d);
        assert!(w.commit(&d).unwrap().newly_stored);
        assert_eq!(
            s.open(&d).unwrap().unwrap().chunk(0, 3).unwrap(),
            [7u8; 3][..]
        );
        drop(writers);
        assert_eq!(count_files(&dir.path().join("tmp")), 0);
    }

    #[test]
    fn delete_reports_absence() {
        let (_dir, s) = store();
        let d = Digest::of(b"x");
        assert!(!s.delete(&d).unwrap());
        let mut w = s.begin_write().unwrap();
        w.write_all(b"x").unwrap();
        w.commit(&d).unwrap();
        assert!(s.delete(&d).unwrap());
        assert!(s.open(&d).unwrap().is_none());
    }
}
