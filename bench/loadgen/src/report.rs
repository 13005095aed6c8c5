//! What a run measured, and the table printed at the end (medians over runs, ratios to the
//! baseline).

use std::time::Duration;

/// What the clients of one run counted.
#[derive(Default)]
pub struct Stats {
    lookup_ms: Vec<f64>,
    requests: u64,
    got_bytes: u64,
    put_bytes: u64,
    pub errors: Vec<String>,
}

impl Stats {
    pub fn lookup(&mut self, took: Duration) {
        self.lookup_ms.push(took.as_secs_f64() * 1000.0);
        self.requests += 1;
    }

    pub fn got(&mut self, bytes: u64, _took: Duration) {
        self.got_bytes += bytes;
        self.requests += 1;
    }

    pub fn put(&mut self, bytes: u64, _took: Duration) {
        self.put_bytes += bytes;
        self.requests += 1;
    }
}

/// One run's figures.
pub struct Run {
    pub binary: String,
    requests_per_s: f64,
    lookup_p50: f64,
    lookup_p99: f64,
    restore_mib_s: f64,
    push_mib_s: f64,
    rss_mib: f64,
    pub errors: Vec<String>,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p / 100.0) as usize).min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    pct(&v, 50.0)
}

impl Run {
    pub fn of(binary: &str, mut stats: Stats, elapsed: Duration, rss_kib: u64) -> Run {
        stats.lookup_ms.sort_by(f64::total_cmp);
        let secs = elapsed.as_secs_f64();
        let mib = (1u64 << 20) as f64;
        Run {
            binary: binary.to_string(),
            requests_per_s: stats.requests as f64 / secs,
            lookup_p50: pct(&stats.lookup_ms, 50.0),
            lookup_p99: pct(&stats.lookup_ms, 99.0),
            restore_mib_s: stats.got_bytes as f64 / mib / secs,
            push_mib_s: stats.put_bytes as f64 / mib / secs,
            rss_mib: rss_kib as f64 / 1024.0,
            errors: stats.errors,
        }
    }

    /// The figures as one JSON object (`errors` counted, the first few quoted).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests_per_s": self.requests_per_s,
            "lookup_p50_ms": self.lookup_p50,
            "lookup_p99_ms": self.lookup_p99,
            "restore_mib_s": self.restore_mib_s,
            "push_mib_s": self.push_mib_s,
            "errors": self.errors.len(),
            "first_errors": self.errors.iter().take(3).collect::<Vec<_>>(),
        })
    }

    pub fn line(&self) -> String {
        format!(
            "{:.0} req/s, lookup p50 {:.2} ms p99 {:.2} ms, restore {:.0} MiB/s, push {:.0} MiB/s, RSS {:.0} MiB, {} errors",
            self.requests_per_s,
            self.lookup_p50,
            self.lookup_p99,
            self.restore_mib_s,
            self.push_mib_s,
            self.rss_mib,
            self.errors.len()
        )
    }
}

/// Rows of medians per binary, the first binary against the second.
pub fn table(binaries: &[String], runs: &[Run]) -> String {
    type Col = (&'static str, fn(&Run) -> f64);
    let cols: [Col; 6] = [
        ("requests/s", |r| r.requests_per_s),
        ("lookup p50 (ms)", |r| r.lookup_p50),
        ("lookup p99 (ms)", |r| r.lookup_p99),
        ("restore (MiB/s)", |r| r.restore_mib_s),
        ("push (MiB/s)", |r| r.push_mib_s),
        ("server peak RSS (MiB)", |r| r.rss_mib),
    ];
    let medians: Vec<Vec<f64>> = binaries
        .iter()
        .map(|b| {
            cols.iter()
                .map(|(_, f)| median(runs.iter().filter(|r| &r.binary == b).map(f).collect()))
                .collect()
        })
        .collect();
    let mut out = String::from("| measurement (median over runs) |");
    for b in binaries {
        out += &format!(" {b} |");
    }
    if binaries.len() == 2 {
        out += " ratio |";
    }
    out += "\n|---|";
    out += &"---:|".repeat(binaries.len() + usize::from(binaries.len() == 2));
    out += "\n";
    for (i, (name, _)) in cols.iter().enumerate() {
        out += &format!("| {name} |");
        for m in &medians {
            out += &format!(" {:.2} |", m[i]);
        }
        if medians.len() == 2 {
            out += &format!(" {:.2}x |", medians[0][i] / medians[1][i]);
        }
        out += "\n";
    }
    let errors: Vec<String> = binaries
        .iter()
        .map(|b| {
            runs.iter()
                .filter(|r| &r.binary == b)
                .map(|r| r.errors.len())
                .sum::<usize>()
                .to_string()
        })
        .collect();
    out += &format!("| errors | {} |\n", errors.join(" | "));
    out
}
