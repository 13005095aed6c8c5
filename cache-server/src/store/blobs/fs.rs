//! [`FsBlobStore`]: blobs as files under the data dir (`blobs/sha256/<2 hex>/<64 hex>`), the
//! default store; chunks of registry upload sessions as staging files
//! (`uploads/<session>/<chunk>`).
//!
//! An upload is staged in `tmp/` ([`super::spool`]), fsynced, and renamed into place only when the
//! digest matches; the directory is fsynced after the rename. Two concurrent uploads of one blob
//! both succeed and leave one copy: the rename is atomic and the content identical.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use layercache_shared::Digest;

use super::spool::{Spool, StageFile};
use super::{BlobError, BlobRead, BlobStore, BlobWriter, Committed, StagedWrite};

/// Blobs as files under a data dir.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    /// `<data>/blobs/sha256`.
    root: PathBuf,
    /// `<data>/tmp`: same filesystem as `root`, so the final rename is atomic.
    tmp: PathBuf,
    /// `<data>/quarantine`: corrupt blobs `verify` moved aside.
    quarantine: PathBuf,
    /// `<data>/uploads`: staging objects, `<session>/<chunk>` (same filesystem as `root`, so a
    /// chunk becomes a blob by a rename).
    staging: PathBuf,
}

impl FsBlobStore {
    /// Makes the finished upload at `staged` (`size` bytes that hashed to `found`) blob
    /// `expected`: refused on a mismatch; nothing to do when the blob is already stored (the
    /// caller's `rename` is not called, so the file stays where it is); else synced, moved into
    /// place by `rename` and its directory synced, so a crash never loses a blob a row is about to
    /// name.
    fn place(
        &self,
        expected: &Digest,
        found: Digest,
        size: u64,
        staged: &Path,
        rename: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<Committed, BlobError> {
        if found != *expected {
            return Err(BlobError::Mismatch {
                expected: *expected,
                found,
                size,
            });
        }
        let dest = self.path(expected);
        if dest.exists() {
            return Ok(Committed {
                size,
                newly_stored: false,
            });
        }
        // Opened again by path: a parked writer holds no fd. fsync through a read-only fd flushes
        // the file's pages all the same.
        File::open(staged)
            .and_then(|f| f.sync_all())
            .map_err(io_err("syncing upload", staged))?;
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err("creating directory", &dir))?;
        rename(&dest).map_err(io_err("renaming upload into", &dest))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing directory", &dir))?;
        Ok(Committed {
            size,
            newly_stored: true,
        })
    }

    /// Uses `blobs_dir` for blobs and `tmp_dir` for uploads in progress; creates both. Corrupt
    /// blobs go to `quarantine/` beside `blobs_dir`.
    pub fn new(blobs_dir: &Path, tmp_dir: &Path) -> Result<Self, BlobError> {
        let root = blobs_dir.join("sha256");
        for dir in [root.as_path(), tmp_dir] {
            fs::create_dir_all(dir).map_err(|source| BlobError::Io {
                action: "creating directory",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let data = blobs_dir.parent().unwrap_or(Path::new("."));
        Ok(FsBlobStore {
            root,
            tmp: tmp_dir.to_path_buf(),
            quarantine: data.join("quarantine"),
            staging: data.join("uploads"),
        })
    }

    /// Where the blob's file is (whether or not it exists).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join(&hex[..2]).join(hex)
    }
}

/// `Ok(None)` for a missing file, the value otherwise.
fn absent_as_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl BlobStore for FsBlobStore {
    fn open(&self, digest: &Digest) -> io::Result<Option<Box<dyn BlobRead>>> {
        let Some(file) = absent_as_none(File::open(self.path(digest)))? else {
            return Ok(None);
        };
        let len = file.metadata()?.len();
        Ok(Some(Box::new(FsBlobRead { file, len })))
    }

    fn len(&self, digest: &Digest) -> io::Result<Option<u64>> {
        Ok(absent_as_none(fs::metadata(self.path(digest)))?.map(|m| m.len()))
    }

    fn begin_write(&self) -> io::Result<Box<dyn BlobWriter>> {
        Ok(Box::new(FsBlobWriter {
            spool: Spool::new(&self.tmp)?,
            store: self.clone(),
        }))
    }

    fn delete(&self, digest: &Digest) -> io::Result<bool> {
        Ok(absent_as_none(fs::remove_file(self.path(digest)))?.is_some())
    }

    fn list(&self) -> io::Result<Vec<Digest>> {
        let mut out = Vec::new();
        let Some(top) = absent_as_none(fs::read_dir(&self.root))? else {
            return Ok(out);
        };
        for dir in top {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(dir.path())? {
                let name = f?.file_name();
                if let Some(d) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    fn modified(&self, digest: &Digest) -> io::Result<Option<u64>> {
        let Some(meta) = absent_as_none(fs::metadata(self.path(digest)))? else {
            return Ok(None);
        };
        let secs = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Some(secs))
    }

    fn quarantine(&self, digest: &Digest) -> io::Result<bool> {
        fs::create_dir_all(&self.quarantine)?;
        let to = self.quarantine.join(digest.hex());
        Ok(absent_as_none(fs::rename(self.path(digest), to))?.is_some())
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn stage(&self, name: &str) -> io::Result<Box<dyn StagedWrite>> {
        Ok(Box::new(FsStagedWrite {
            file: StageFile::new(&self.tmp)?,
            dest: self.staging.join(name),
        }))
    }

    fn open_staged(&self, name: &str) -> io::Result<Option<Box<dyn BlobRead>>> {
        let Some(file) = absent_as_none(File::open(self.staging.join(name)))? else {
            return Ok(None);
        };
        let len = file.metadata()?.len();
        Ok(Some(Box::new(FsBlobRead { file, len })))
    }

    fn adopt_staged(&self, name: &str, size: u64, digest: Digest) -> Option<Box<dyn BlobWriter>> {
        Some(Box::new(FsAdopted {
            staged: self.staging.join(name),
            size,
            digest,
            store: self.clone(),
        }))
    }

    fn delete_staged(&self, name: &str) -> io::Result<()> {
        absent_as_none(fs::remove_file(self.staging.join(name)))?;
        Ok(())
    }

    fn delete_staged_session(&self, session: &str) -> io::Result<()> {
        absent_as_none(fs::remove_dir_all(self.staging.join(session)))?;
        Ok(())
    }
}

/// A chunk on its way to `uploads/<session>/<chunk>`.
struct FsStagedWrite {
    /// The temp file in `tmp/`.
    file: StageFile,
    /// Where it goes at `finish`.
    dest: PathBuf,
}

impl Write for FsStagedWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl StagedWrite for FsStagedWrite {
    /// A rename, without fsync: a chunk outlives the death of the process that wrote it (the page
    /// cache is the kernel's), and is fsynced when it becomes a blob (see [`FsAdopted`]); a
    /// power cut may lose it, as it loses any upload in flight.
    fn finish(self: Box<Self>) -> io::Result<u64> {
        let (size, temp) = self.file.finish()?;
        if let Some(dir) = self.dest.parent() {
            fs::create_dir_all(dir)?;
        }
        temp.persist(&self.dest).map_err(|e| e.error)?;
        Ok(size)
    }
}

/// A staging object adopted as a blob: committed by renaming it into place.
struct FsAdopted {
    /// `uploads/<session>/<chunk>`.
    staged: PathBuf,
    /// Its size.
    size: u64,
    /// Its digest, as the session hashed it.
    digest: Digest,
    /// Where it goes.
    store: FsBlobStore,
}

impl Write for FsAdopted {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other(
            "an adopted staging object takes no writes",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobWriter for FsAdopted {
    fn written(&self) -> u64 {
        self.size
    }

    fn digest(&self) -> Digest {
        self.digest
    }

    /// The same checks and syncs as an upload's commit, with the staging object for the temp
    /// file. Left in place on a mismatch or when the blob is already stored (its session deletes
    /// it).
    fn commit(self: Box<Self>, expected: &Digest) -> Result<Committed, BlobError> {
        let FsAdopted {
            staged,
            size,
            digest,
            store,
        } = *self;
        store.place(expected, digest, size, &staged, |dest| {
            fs::rename(&staged, dest)
        })
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
        super::check_range(offset, len, self.len)?;
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
    /// The hashed temp file.
    spool: Spool,
    /// Where the blob goes on commit.
    store: FsBlobStore,
}

impl Write for FsBlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.spool.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.spool.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.spool.flush()
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
        self.spool.written()
    }

    fn digest(&self) -> Digest {
        self.spool.digest()
    }

    fn park(&mut self) -> io::Result<()> {
        self.spool.park()
    }

    fn commit(self: Box<Self>, expected: &Digest) -> Result<Committed, BlobError> {
        let FsBlobWriter { spool, store } = *self;
        let (found, size, temp) = spool
            .finish()
            .map_err(io_err("writing upload to", &store.tmp))?;
        let path = temp.to_path_buf();
        // Already stored: the temp file goes when `temp` drops with the unused closure.
        store.place(expected, found, size, &path, |dest| {
            temp.persist(dest).map_err(|e| e.error)
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
