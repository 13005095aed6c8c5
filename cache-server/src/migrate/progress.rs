//! Progress lines for long phases: at most one every [`EVERY`], and one at the end, with counts
//! and bytes, so an operator watching a terabyte move sees it move.

use std::time::{Duration, Instant};

/// The longest silence during a phase.
const EVERY: Duration = Duration::from_secs(5);

/// Counts of one phase.
pub struct Progress {
    /// The phase's name in log lines (`blobs`, `entries`, …).
    phase: &'static str,
    /// How many items the phase has in all (`None`: unknown).
    total: Option<u64>,
    /// Items done (written or found present).
    pub done: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// When the phase started.
    started: Instant,
    /// When the last line was logged.
    last: Instant,
}

impl Progress {
    pub fn new(phase: &'static str, total: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress {
            phase,
            total,
            done: 0,
            bytes: 0,
            started: now,
            last: now,
        }
    }

    /// Counts `items` and `bytes` more; logs when the last line is old enough.
    pub fn add(&mut self, items: u64, bytes: u64) {
        self.done += items;
        self.bytes += bytes;
        if self.last.elapsed() >= EVERY {
            self.last = Instant::now();
            self.log("in progress");
        }
    }

    /// The phase's last line.
    pub fn finish(&self) {
        self.log("done");
    }

    fn log(&self, state: &str) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            phase = self.phase,
            done = self.done,
            total = self
                .total
                .map_or_else(|| "?".to_string(), |t| t.to_string()),
            bytes = self.bytes,
            mib_per_s = format!("{:.1}", self.bytes as f64 / secs / (1 << 20) as f64),
            "{state}"
        );
    }
}
