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
    /// Size quota (`--max-size`): above it the collector evicts least recently used entries.
    pub max_size: Option<u64>,
    /// Entries unused for this many days are evicted (`--ttl-days`).
    pub ttl_days: Option<u64>,
    /// How often the collector runs besides after commits (and unreferenced blobs are swept).
    pub gc_interval: std::time::Duration,
    /// Unreferenced blobs younger than this are spared: a client uploads blobs, then commits the
    /// entry naming them, and the blobs must survive in between.
    pub upload_grace: std::time::Duration,
    /// A registry blob upload session idle this long is dropped with what it received.
    pub upload_timeout: std::time::Duration,
    /// `--open`: serve without tokens while the data dir holds none (see [`crate::auth_gate`]).
    /// Off by default: a server without tokens refuses every request until one is created.
    pub open: bool,
}

/// Default for [`Settings::gc_interval`].
pub const DEFAULT_GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// Default for [`Settings::upload_grace`].
pub const DEFAULT_UPLOAD_GRACE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl Settings {
    /// Settings with the default upload limit, no quota and no time-to-live.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Settings {
            data_dir: data_dir.into(),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_size: None,
            ttl_days: None,
            gc_interval: DEFAULT_GC_INTERVAL,
            upload_grace: DEFAULT_UPLOAD_GRACE,
            upload_timeout: crate::registry::uploads::DEFAULT_UPLOAD_TIMEOUT,
            open: false,
        }
    }
}
