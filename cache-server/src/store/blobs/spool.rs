//! The staging half of every blob upload, whichever store it goes to: an `O_EXCL` temp file in
//! the data dir's `tmp/`, hashed as it is written, parkable (closed, kept by path) until the
//! commit. The file is deleted when the [`Spool`] (or the finished [`TempPath`]) drops.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use layercache_shared::Digest;
use layercache_shared::digest::HashingWriter;
use tempfile::{NamedTempFile, TempPath};

/// Buffer between the hashing writer and the temp file: tar readers hand out small slices, and
/// one write syscall per MiB keeps ingest disk-bound rather than syscall-bound.
const WRITE_BUFFER: usize = 1 << 20;

/// Every this many bytes an upload asks the kernel to start writing the temp file back, so the
/// disk works while the rest arrives and the fsync at commit has little left to flush.
const WRITE_BEHIND: u64 = 8 << 20;

/// An upload's temp file, hashed as written.
pub(super) struct Spool {
    /// Open for writing, or parked.
    state: State,
    /// Bytes written when write-back was last started (see [`WRITE_BEHIND`]).
    kicked: u64,
}

/// Where a [`Spool`] is in its life.
enum State {
    /// Hashes then buffers into the temp file.
    Open(HashingWriter<BufWriter<NamedTempFile>>),
    /// Written and closed ([`Spool::park`]): the temp file by path only, no fd, no buffer.
    Parked {
        digest: Digest,
        size: u64,
        path: TempPath,
    },
    /// Parking failed half-way; the temp file is gone.
    Broken,
}

/// Writing to a spool that was parked (or broke while parking).
fn parked_error() -> io::Error {
    io::Error::other("the upload was already finished (parked); it takes no more writes")
}

impl Spool {
    /// A new temp file in `tmp`.
    pub(super) fn new(tmp: &Path) -> io::Result<Spool> {
        let temp = NamedTempFile::new_in(tmp)?;
        Ok(Spool {
            state: State::Open(HashingWriter::new(BufWriter::with_capacity(
                WRITE_BUFFER,
                temp,
            ))),
            kicked: 0,
        })
    }

    /// The open writer, or an error once parked.
    fn open(&mut self) -> io::Result<&mut HashingWriter<BufWriter<NamedTempFile>>> {
        match &mut self.state {
            State::Open(w) => Ok(w),
            _ => Err(parked_error()),
        }
    }

    /// Starts write-back of what reached the temp file so far, without waiting for it.
    fn write_behind(&mut self) {
        let State::Open(inner) = &self.state else {
            return;
        };
        if inner.len() - self.kicked < WRITE_BEHIND {
            return;
        }
        self.kicked = inner.len();
        start_writeback(inner.get_ref().get_ref().as_file());
    }

    /// Bytes written so far.
    pub(super) fn written(&self) -> u64 {
        match &self.state {
            State::Open(w) => w.len(),
            State::Parked { size, .. } => *size,
            State::Broken => 0,
        }
    }

    /// The digest of the bytes written so far.
    pub(super) fn digest(&self) -> Digest {
        match &self.state {
            State::Open(w) => w.digest(),
            State::Parked { digest, .. } => *digest,
            State::Broken => Digest::of(b""),
        }
    }

    /// Flushes and closes the file, keeping it by path (see `BlobWriter::park`).
    pub(super) fn park(&mut self) -> io::Result<()> {
        let State::Open(inner) = std::mem::replace(&mut self.state, State::Broken) else {
            return Ok(()); // already parked (or broken: finish reports it)
        };
        let (digest, size, buffered) = inner.finish();
        let temp = buffered.into_inner().map_err(|e| e.into_error())?;
        self.state = State::Parked {
            digest,
            size,
            path: temp.into_temp_path(),
        };
        Ok(())
    }

    /// Done: the digest and size of everything written, and the closed temp file (deleted when
    /// the returned path drops).
    pub(super) fn finish(self) -> io::Result<(Digest, u64, TempPath)> {
        match self.state {
            State::Open(inner) => {
                let (found, size, buffered) = inner.finish();
                let temp = buffered.into_inner().map_err(|e| e.into_error())?;
                Ok((found, size, temp.into_temp_path()))
            }
            State::Parked { digest, size, path } => Ok((digest, size, path)),
            State::Broken => Err(parked_error()),
        }
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

impl Write for Spool {
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
            State::Open(w) => w.flush(),
            State::Parked { .. } => Ok(()),
            State::Broken => Err(parked_error()),
        }
    }
}

/// A chunk of a registry upload session on its way to the store's staging area: a temp file in
/// `tmp/`, buffered and written back as it grows like a [`Spool`], but not hashed (the session
/// hashes across its chunks, see `crate::registry::uploads`). Deleted on drop unless finished.
pub(super) struct StageFile {
    /// The buffered temp file.
    file: BufWriter<NamedTempFile>,
    /// Bytes written.
    written: u64,
    /// Bytes written when write-back was last started.
    kicked: u64,
}

impl StageFile {
    /// A new temp file in `tmp`.
    pub(super) fn new(tmp: &Path) -> io::Result<StageFile> {
        Ok(StageFile {
            file: BufWriter::with_capacity(WRITE_BUFFER, NamedTempFile::new_in(tmp)?),
            written: 0,
            kicked: 0,
        })
    }

    /// Flushes and closes the file: its size and path (deleted when the path drops).
    pub(super) fn finish(self) -> io::Result<(u64, TempPath)> {
        let temp = self.file.into_inner().map_err(|e| e.into_error())?;
        Ok((self.written, temp.into_temp_path()))
    }
}

impl Write for StageFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.kicked >= WRITE_BEHIND {
            self.kicked = self.written;
            start_writeback(self.file.get_ref().as_file());
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
