//! Bulk work on its own threads, at a lower CPU priority.
//!
//! Hashing and writing upload bodies, ingesting `docker save` tarballs and reading blobs for
//! downloads take most of the server's CPU under a busy fleet; lookups, manifests, auth checks and
//! commits take little, but a runner waits on each of them. On a shared blocking pool a lookup's
//! thread queued behind dozens of runnable transfer threads: its latency grew with the transfers
//! in flight. Bulk work now runs on a pool of its own whose threads run at a lower priority
//! ([`Priority`]), so the kernel runs a woken lookup ahead of them; with nothing else to run, bulk
//! threads still get the whole CPU, so throughput does not drop.
//!
//! Which lower priority matters:
//! - **`SCHED_IDLE`** (the default, [`Priority::Idle`]): a request thread that wakes on a CPU
//!   running a bulk thread takes the CPU at once. Under 32 busy runners this gave lookups 1.8 ms
//!   p50 and 34 ms p99, against 5.7 ms and 60 ms at nice 10, with the same requests/s
//!   (`layercache-loadgen`, 2 cores shared with the load generator).
//! - **nice 10** ([`Priority::Nice`]): the kernel's fair scheduler lets the running thread finish
//!   its slice before a woken one runs, so each wake-up of a lookup could wait a slice per CPU.
//!   Its share of a CPU other busy programs want is larger, though (about a tenth at nice 10,
//!   under one percent at `SCHED_IDLE`): the choice for a host where the server shares the CPU
//!   with other busy work (`--bulk-priority nice`).
//!
//! Niceness and `SCHED_IDLE` weigh each thread, not the pool: ten runnable bulk threads at nice
//! 10 together weigh about as much as one request thread, so a pool free to grow to hundreds of
//! threads (one per transfer in flight) took the CPU from request threads all the same (lookups
//! at 32 ms p50 under 32 busy runners). The pool is capped ([`configure`], `--bulk-threads`):
//! with blobs on local disk the work is CPU-bound and twice the cores are enough; with an object
//! store the threads also wait on the network, so the cap is higher.
//!
//! On Linux `nice(2)` and `sched_setscheduler(2)` with thread id 0 change the calling thread only;
//! lowering one's own priority needs no privilege. Elsewhere the threads keep the default
//! priority.

use std::sync::OnceLock;

/// How much nicer bulk threads are than the process with [`Priority::Nice`] (request threads
/// keep its value).
pub const NICE: i32 = 10;

/// How bulk threads are put below request threads (`--bulk-priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Priority {
    /// `SCHED_IDLE`: bulk threads run only when no request thread wants the CPU.
    #[default]
    Idle,
    /// Nice +10: bulk threads keep a share of a CPU other programs also want.
    Nice,
}

/// Bulk threads with an object store: each may wait on a ranged GET or a part upload.
const REMOTE_THREADS: usize = 64;

/// The default cap: twice the cores with blobs on local disk (the work is CPU-bound), more with
/// blobs in an object store (`remote_blobs`), where threads wait on the network.
pub fn default_threads(remote_blobs: bool) -> usize {
    if remote_blobs {
        return REMOTE_THREADS;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).max(2)
}

/// Starts the pool with at most `threads` threads (at least 1), each lowered to `priority`.
/// Takes effect only before the first bulk task, which otherwise starts the pool with the local
/// defaults (the server calls this at start); a later call is ignored, with a warning.
pub fn configure(threads: usize, priority: Priority) {
    // Built only if none runs yet: a runtime built here and dropped would panic in async code.
    let mut started = false;
    POOL.get_or_init(|| {
        started = true;
        build(threads.max(1), priority)
    });
    if !started {
        tracing::warn!(
            threads,
            ?priority,
            "the bulk pool is already running: its thread cap and priority stay"
        );
    }
}

/// The pool, started at first use.
static POOL: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The bulk pool: a runtime used only for its blocking threads.
fn pool() -> &'static tokio::runtime::Runtime {
    POOL.get_or_init(|| build(default_threads(false), Priority::default()))
}

/// A runtime of at most `threads` blocking threads, each lowered to `priority` as it starts.
fn build(threads: usize, priority: Priority) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(threads)
        .thread_name("layercache-bulk")
        .on_thread_start(move || lower_priority(priority))
        .enable_all()
        .build()
        .expect("starting the bulk thread pool")
}

#[cfg(target_os = "linux")]
fn lower_priority(priority: Priority) {
    let failed = match priority {
        Priority::Idle => {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is the
            // calling thread.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == -1 }
        }
        // SAFETY: nice has no memory-safety preconditions. It may return -1 as a value, so
        // errno tells a failure.
        Priority::Nice => unsafe {
            *libc::__errno_location() = 0;
            libc::nice(NICE) == -1 && *libc::__errno_location() != 0
        },
    };
    if failed {
        tracing::debug!(error = %std::io::Error::last_os_error(), "bulk thread keeps its priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_: Priority) {}

/// Runs `f` on a bulk thread; like `tokio::task::spawn_blocking`, from any runtime.
pub fn spawn<T, F>(f: F) -> tokio::task::JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    pool().spawn_blocking(f)
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::Priority;

    /// The calling thread's scheduling policy and nice value.
    fn own_policy_and_nice() -> (i32, i32) {
        // SAFETY: both calls only read the calling thread's attributes.
        unsafe {
            (
                libc::sched_getscheduler(0),
                libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t),
            )
        }
    }

    #[tokio::test]
    async fn bulk_threads_run_at_sched_idle_by_default() {
        let (policy, _) = super::spawn(own_policy_and_nice).await.unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        assert_eq!(own_policy_and_nice().0, libc::SCHED_OTHER);
    }

    #[test]
    fn with_nice_bulk_threads_stay_fair_but_nicer() {
        let pool = super::build(1, Priority::Nice);
        let (policy, nice) = pool
            .block_on(pool.spawn_blocking(own_policy_and_nice))
            .unwrap();
        let (_, own) = own_policy_and_nice();
        assert_eq!(policy, libc::SCHED_OTHER);
        assert_eq!(nice, (own + super::NICE).min(19));
    }
}
