//! Bulk work on its own threads, at a lower CPU priority.
//!
//! Hashing and writing upload bodies, ingesting `docker save` tarballs and reading blobs for
//! downloads take most of the server's CPU under a busy fleet; lookups, manifests, auth checks and
//! commits take little, but a runner waits on each of them. On a shared blocking pool a lookup's
//! thread queued behind dozens of runnable transfer threads: its latency grew with the transfers
//! in flight. Bulk work now runs on a pool of its own whose threads are niced ([`NICE`]), so the
//! kernel runs a woken lookup ahead of them; with nothing else to run, bulk threads still get the
//! whole CPU, so throughput does not drop.
//!
//!
//! Niceness weighs each thread, not the pool: ten runnable bulk threads at nice 10 together weigh
//! about as much as one request thread, so a pool free to grow to hundreds of threads (one per
//! transfer in flight) took the CPU from request threads all the same (lookups at 32 ms p50 under
//! 32 busy runners). The pool is capped ([`set_threads`], `--bulk-threads`): with blobs on local
//! disk the work is CPU-bound and twice the cores are enough (3 ms p50, and more requests/s);
//! with an object store the threads also wait on the network, so the cap is higher.
//!
//! On Linux `nice(2)` changes the calling thread only; raising one's own nice value needs no
//! privilege. Elsewhere the threads keep the default priority.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How much nicer bulk threads are than the process (request threads keep its value).
pub const NICE: i32 = 10;

/// Bulk threads with an object store: each may wait on a ranged GET or a part upload.
const REMOTE_THREADS: usize = 64;

/// The cap set by [`set_threads`]; 0 until then (the pool then takes [`default_threads`] for
/// local blobs).
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// The default cap: twice the cores with blobs on local disk (the work is CPU-bound), more with
/// blobs in an object store (`remote_blobs`), where threads wait on the network.
pub fn default_threads(remote_blobs: bool) -> usize {
    if remote_blobs {
        return REMOTE_THREADS;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).max(2)
}

/// Caps the pool at `threads` (at least 1). Takes effect only before the first bulk task (the
/// server calls it at start); later calls are ignored, with a warning.
pub fn set_threads(threads: usize) {
    THREADS.store(threads.max(1), Ordering::Relaxed);
    if POOL.get().is_some() {
        tracing::warn!(
            threads,
            "the bulk pool is already running: its thread cap stays"
        );
    }
}

/// The pool, started at first use.
static POOL: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The bulk pool: a runtime used only for its blocking threads.
fn pool() -> &'static tokio::runtime::Runtime {
    POOL.get_or_init(|| {
        let threads = match THREADS.load(Ordering::Relaxed) {
            0 => default_threads(false),
            n => n,
        };
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(threads)
            .thread_name("layercache-bulk")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .expect("starting the bulk thread pool")
    })
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: nice has no memory-safety preconditions. It may return -1 as a value, so errno
    // tells a failure.
    let failed = unsafe {
        *libc::__errno_location() = 0;
        libc::nice(NICE) == -1 && *libc::__errno_location() != 0
    };
    if failed {
        tracing::debug!(error = %std::io::Error::last_os_error(), "bulk thread keeps its priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Runs `f` on a bulk thread; like `tokio::task::spawn_blocking`, from any runtime.
pub fn spawn<T, F>(f: F) -> tokio::task::JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    pool().spawn_blocking(f)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    #[cfg(target_os = "linux")]
    async fn bulk_threads_run_at_the_lower_priority() {
        let nice = super::spawn(|| {
            // SAFETY: as above.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        })
        .await
        .unwrap();
        let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(nice, (own + super::NICE).min(19));
    }
}
