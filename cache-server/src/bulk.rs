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
//! On Linux `nice(2)` changes the calling thread only; raising one's own nice value needs no
//! privilege. Elsewhere the threads keep the default priority.

use std::sync::OnceLock;

/// How much nicer bulk threads are than the process (request threads keep its value).
pub const NICE: i32 = 10;

/// The bulk pool: a runtime used only for its blocking threads.
fn pool() -> &'static tokio::runtime::Runtime {
    static POOL: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    POOL.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
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
