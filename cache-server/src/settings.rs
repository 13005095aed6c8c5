//! Server settings, filled from flags and `LAYERCACHE_*` environment variables by `bin/main.rs`.

use std::path::PathBuf;
use std::time::Duration;

/// Default cap on one upload's body: a generous size for a CI image with its whole parent chain.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 64 << 30;

/// What the server needs to know besides its listening socket.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Holds `layercache.db`, `blobs/` and `tmp/`; created when absent.
    pub data_dir: PathBuf,
    /// Where blobs live (`--blob-store`): `blobs/` in the data dir (the default), or an
    /// S3-compatible bucket configured from the `AWS_*` environment.
    pub blob_store: crate::store::blobs::BlobLocation,
    /// `--database postgres://…`: the index in PostgreSQL instead of `layercache.db` in the data
    /// dir (which then holds only blobs and temp files). `None`: the embedded SQLite index.
    pub database: Option<String>,
    /// `--redirect-blobs`: blob GETs (v1 and registry) answer `307` to a presigned URL of the
    /// object (valid [`REDIRECT_EXPIRY`]), after the usual auth and existence checks, so the bytes
    /// flow from the object store to the client without passing through the server. Needs an
    /// S3 `blob_store` (`serve` refuses it otherwise).
    pub redirect_blobs: bool,
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
    /// Replicas on one PostgreSQL index: how long this replica's leases on blobs in use and its
    /// quota reservations outlive it (see [`crate::store::leases`]).
    pub lease_ttl: std::time::Duration,
    /// `--bulk-threads`: the cap of the low-priority pool for blob bytes (see [`crate::bulk`]);
    /// `None`: [`crate::bulk::default_threads`] for the blob store.
    pub bulk_threads: Option<usize>,
    /// `--bulk-priority`: how the pool's threads are put below request threads (see
    /// [`crate::bulk::Priority`]).
    pub bulk_priority: crate::bulk::Priority,
    /// `--open`: serve without tokens while the data dir holds none (see [`crate::auth_gate`]).
    /// Off by default: a server without tokens refuses every request until one is created.
    pub open: bool,
    /// Blob uploads (v1 blobs, registry blob uploads and chunks) handled at once; more wait
    /// [`Settings::queue_wait`], then get 503 (see [`crate::transfers`]).
    pub max_uploads: usize,
    /// Tarball uploads (`PUT /v1/images/...`) handled at once: each holds a blocking thread while
    /// the archive streams through the reader, so these are kept well below tokio's 512.
    pub max_tarball_uploads: usize,
    /// Blob and tarball downloads streaming at once.
    pub max_downloads: usize,
    /// How long a transfer waits for a free slot before it is answered 503 with `Retry-After`.
    pub queue_wait: Duration,
    /// A request body that sends nothing for this long is aborted (a stalled upload).
    pub body_timeout: Duration,
    /// Time a connection has to send a request's headers; also how long a kept-alive connection
    /// may sit between requests (hyper runs one timer for both).
    pub header_timeout: Duration,
    /// A connection with no request in a handler that moves no byte for this long is closed (a
    /// client that stopped reading its download).
    pub idle_timeout: Duration,
    /// Open connections at most; lowered at start to fit the open-file limit (see
    /// [`crate::serving`]).
    pub max_connections: usize,
    /// After SIGTERM, how long in-flight requests may take before the server exits anyway.
    pub shutdown_timeout: Duration,
}

/// Default for [`Settings::max_uploads`]: an upload waiting on its client costs a socket, a temp
/// file and a few KiB, so the bound is about descriptors, not threads.
pub const DEFAULT_MAX_UPLOADS: usize = 1024;
/// Default for [`Settings::max_tarball_uploads`].
pub const DEFAULT_MAX_TARBALL_UPLOADS: usize = 32;
/// Default for [`Settings::max_downloads`]: each buffers up to a few MiB for a slow reader.
pub const DEFAULT_MAX_DOWNLOADS: usize = 256;
/// Default for [`Settings::queue_wait`].
pub const DEFAULT_QUEUE_WAIT: Duration = Duration::from_secs(2);
/// Default for [`Settings::body_timeout`].
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`Settings::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// Default for [`Settings::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for [`Settings::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default for [`Settings::shutdown_timeout`].
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Async worker threads by default: twice the cores. Request threads mostly wait on sockets, so
/// extra ones cost little; but when the CPUs are busy the kernel preempts a worker with woken
/// requests queued on it, and those wait until it runs again unless another worker is free to
/// take new wake-ups. Under 32 busy runners on 2 cores, 4 workers instead of 2 took lookups'
/// p99 from 20 to 15 ms, at 14 % more memory (`layercache-loadgen`, medians of 5 runs).
pub fn default_worker_threads() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Default for [`Settings::gc_interval`].
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(60);
/// Default for [`Settings::upload_grace`].
pub const DEFAULT_UPLOAD_GRACE: Duration = Duration::from_secs(15 * 60);

/// How long a presigned blob URL of `--redirect-blobs` stays valid: clients follow a redirect at
/// once, so this only has to cover the request's start plus clock skew between this server and
/// the object store; a leaked URL is useless soon after.
pub const REDIRECT_EXPIRY: Duration = Duration::from_secs(300);

impl Settings {
    /// Settings with the default upload limit, no quota and no time-to-live.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Settings {
            data_dir: data_dir.into(),
            blob_store: Default::default(),
            database: None,
            redirect_blobs: false,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_size: None,
            ttl_days: None,
            gc_interval: DEFAULT_GC_INTERVAL,
            upload_grace: DEFAULT_UPLOAD_GRACE,
            upload_timeout: crate::registry::uploads::DEFAULT_UPLOAD_TIMEOUT,
            lease_ttl: crate::store::leases::DEFAULT_LEASE_TTL,
            bulk_threads: None,
            bulk_priority: crate::bulk::Priority::default(),
            open: false,
            max_uploads: DEFAULT_MAX_UPLOADS,
            max_tarball_uploads: DEFAULT_MAX_TARBALL_UPLOADS,
            max_downloads: DEFAULT_MAX_DOWNLOADS,
            queue_wait: DEFAULT_QUEUE_WAIT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}
