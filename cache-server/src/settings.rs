//! Server settings, filled from flags and `LAYERCACHE_*` environment variables by `bin/main.rs`.

use std::path::PathBuf;

/// Default cap on one upload's body: a generous size for a CI image with its whole parent chain.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 64 << 30;

/// What the server needs to know besides its listening socket.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Holds `layercache.db`, `blobs/` and `tmp/`; created when absent.
    pub data_dir: PathBuf,
    /// Request bodies of image and blob PUTs larger than this are refused with 413, so one client
    /// cannot fill the disk with a single runaway upload.
    pub max_upload_bytes: u64,
}

impl Settings {
    /// Settings with the default upload limit.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Settings {
            data_dir: data_dir.into(),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
        }
    }
}
