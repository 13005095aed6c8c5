//! The open-file limit: raised to the hard limit at start-up (every connection, upload temp file
//! and blob being read is a descriptor), and the connection cap that fits under it.

use std::io;

/// Descriptors kept for everything but connections: the database, logs, and a little slack.
const RESERVED_FDS: u64 = 32;

/// The current soft and hard `RLIMIT_NOFILE`.
pub fn current() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft open-file limit to the hard limit (at most 2^20 when the hard one is
/// unlimited); returns the soft limit before and after.
pub fn raise() -> io::Result<(u64, u64)> {
    let (soft, hard) = current()?;
    let target = if hard == libc::RLIM_INFINITY {
        1 << 20
    } else {
        hard
    };
    if soft >= target {
        return Ok((soft, soft));
    }
    let lim = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((soft, target))
}

/// The connection cap for `wanted` (`--max-connections`) under a soft limit of `soft`
/// descriptors: half of them, less a reserve, since a connection uploading or downloading holds a
/// second descriptor (the temp file or the blob). At least 8.
pub fn connection_cap(wanted: usize, soft: u64) -> usize {
    let fits = (soft / 2).saturating_sub(RESERVED_FDS).max(8);
    wanted
        .min(usize::try_from(fits).unwrap_or(usize::MAX))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_a_descriptor_per_transfer() {
        assert_eq!(connection_cap(4096, 1 << 20), 4096);
        assert_eq!(connection_cap(4096, 1024), 480);
        assert_eq!(connection_cap(4096, 10), 8);
        assert_eq!(connection_cap(3, 1024), 3);
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let (before, after) = raise().unwrap();
        assert!(after >= before);
        assert_eq!(current().unwrap().0, after);
    }
}
