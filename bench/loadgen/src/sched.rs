//! The load generator's threads stand in for other machines.
//!
//! The 32 clients are 32 runners, each on a machine of its own; here they share the server's two
//! cores. At the same priority as the server they take half the CPU, and each of their runnable
//! threads delays the wake-up of a server thread (and of the thread timing the lookups) by up to
//! a scheduler slice: that is the clients' doing, not the server's. So the clients' threads (the
//! runtime's workers and the threads hashing restored tarballs) run at `SCHED_IDLE`: they still
//! take every cycle the server and the lookup thread leave (the server stays saturated), but no
//! more. The lookup thread and the server run at the normal policy. `--clients-compete` keeps
//! every thread at the normal policy, as earlier versions did.

/// Puts the calling thread at `SCHED_IDLE`, or back at the normal policy.
pub fn set_idle(idle: bool) {
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is valid for the call; pid 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } == -1 {
        eprintln!(
            "cannot set the scheduling policy of a load generator thread: {}",
            std::io::Error::last_os_error()
        );
    }
}
