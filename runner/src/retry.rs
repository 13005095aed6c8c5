//! When and how long to wait before trying a cache-server request again.
//!
//! A fleet's runners hit one server: when it sheds load (`503`/`429` with `Retry-After`), restarts
//! (connection refused), or a proxy in front of it hiccups (`502`/`504`, a reset connection), every
//! runner retrying at the same instant would knock it over again. So waits grow exponentially with
//! *full jitter* (a uniform draw in `[0, cap]`, AWS's "Exponential Backoff and Jitter"), and a
//! server's `Retry-After` is honoured as a floor. Pure logic, no I/O: [`crate::client`] applies it.

use std::time::Duration;

use reqwest::StatusCode;

/// How a request is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: try once).
    pub retries: u32,
    /// The cap of the first wait; doubles with each retry.
    pub base: Duration,
    /// No single wait is longer than this, whatever the exponent.
    pub max_wait: Duration,
    /// A `Retry-After` longer than this is not waited for: the request fails at once, its message
    /// says when the server expects to be back (CI should not hang for an hour).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 3 retries, waits up to 0.25 s, 0.5 s, 1 s (about 1 s in all on average): a server that
    /// restarts or sheds a burst is ridden out, a dead one costs a CI job seconds, not minutes.
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            base: Duration::from_millis(250),
            max_wait: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// A policy with `retries` retries and the default waits.
    pub fn with_retries(retries: u32) -> Self {
        RetryPolicy {
            retries,
            ..RetryPolicy::default()
        }
    }

    /// The wait before retry number `retry` (1 = the first retry), or `None` when the retries are
    /// used up or the server asked for a longer pause than [`Self::max_retry_after`]. `jitter` is
    /// a draw in `[0, 1)`; the server's `retry_after` is a floor under the jittered wait.
    pub fn wait(&self, retry: u32, retry_after: Option<Duration>, jitter: f64) -> Option<Duration> {
        if retry == 0 || retry > self.retries {
            return None;
        }
        if retry_after.is_some_and(|after| after > self.max_retry_after) {
            return None;
        }
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(retry - 1).unwrap_or(u32::MAX))
            .min(self.max_wait);
        let jittered = exp.mul_f64(jitter.clamp(0.0, 1.0));
        Some(retry_after.map_or(jittered, |after| after.max(jittered)))
    }

    /// [`Self::wait`] with a fresh random jitter.
    pub fn next_wait(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        self.wait(retry, retry_after, fastrand::f64())
    }
}

/// Whether an answer with `status` is worth repeating: the server or a proxy is overloaded or
/// briefly down. Everything else (a refused token, a bad request, a miss) fails the same way again.
pub fn retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Whether a transport error is worth repeating: the connection could not be made, was reset or
/// closed early, or timed out. A request that could not even be built is not.
pub fn retryable_error(e: &reqwest::Error) -> bool {
    !e.is_builder() && !e.is_redirect() && !e.is_decode()
}

/// The `Retry-After` header as a wait: delay-seconds, or an HTTP date (then the time until it,
/// zero if past). `None` when absent or unreadable.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_exponentially_under_the_cap_and_stop_after_the_retries() {
        let p = RetryPolicy::default();
        assert_eq!(p.wait(1, None, 1.0), Some(Duration::from_millis(250)));
        assert_eq!(p.wait(2, None, 1.0), Some(Duration::from_millis(500)));
        assert_eq!(p.wait(3, None, 1.0), Some(Duration::from_secs(1)));
        assert_eq!(p.wait(4, None, 1.0), None);
        assert_eq!(p.wait(0, None, 1.0), None);
        let many = RetryPolicy::with_retries(40);
        assert_eq!(many.wait(40, None, 1.0), Some(Duration::from_secs(8)));
        assert_eq!(RetryPolicy::with_retries(0).wait(1, None, 1.0), None);
    }

    #[test]
    fn jitter_spreads_the_wait_over_zero_to_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.wait(3, None, 0.0), Some(Duration::ZERO));
        assert_eq!(p.wait(3, None, 0.5), Some(Duration::from_millis(500)));
        let draws: std::collections::HashSet<_> =
            (0..50).filter_map(|_| p.next_wait(3, None)).collect();
        assert!(draws.len() > 10, "jitter should vary the waits: {draws:?}");
        assert!(draws.iter().all(|w| *w <= Duration::from_secs(1)));
    }

    #[test]
    fn retry_after_is_a_floor_and_a_long_one_is_not_waited_for() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(2)), 1.0),
            Some(Duration::from_secs(2))
        );
        assert_eq!(p.wait(1, Some(Duration::from_secs(31)), 1.0), None);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let soon = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(
            reqwest::header::RETRY_AFTER,
            httpdate::fmt_http_date(soon).parse().unwrap(),
        );
        let wait = retry_after(&h).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn overload_and_gateway_answers_are_retried_others_not() {
        for s in [429, 502, 503, 504] {
            assert!(retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 413, 500, 507] {
            assert!(!retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
