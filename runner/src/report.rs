//! What a run reports: the final summary (text on stderr, or one JSON object on stdout with
//! `--json`), warnings, and byte progress (bars on a terminal, plain lines in CI logs).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Where the log lines of a build, restore or push go: stderr for the single-image commands, a
/// prefixing printer for `layercache steps` (several services build at once).
#[derive(Clone)]
pub struct Log {
    /// Receives each line, without a trailing newline.
    sink: Arc<dyn Fn(&str) + Send + Sync>,
    /// Draw progress bars: only on stderr to a terminal, bars of parallel builds would overwrite
    /// each other and the prefixed lines.
    bars: bool,
}

impl Log {
    /// Lines to stderr, progress bars when stderr is a terminal.
    pub fn stderr() -> Log {
        Log {
            sink: Arc::new(|line| eprintln!("{line}")),
            bars: std::io::stderr().is_terminal(),
        }
    }

    /// Lines to `sink`, no progress bars (start and end lines instead).
    pub fn to(sink: impl Fn(&str) + Send + Sync + 'static) -> Log {
        Log {
            sink: Arc::new(sink),
            bars: false,
        }
    }

    /// Writes one line.
    pub fn line(&self, text: &str) {
        (self.sink)(text);
    }
}

/// The summary of a build, restore or save.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// `exact`, `fallback`, `prefix` or `miss`.
    pub cache: String,
    /// The entry key computed from the Dockerfile.
    pub key: String,
    /// Namespace written to (and looked up first).
    pub namespace: String,
    /// Namespace and key of the entry restored, when there was a hit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// The built or saved image.
    pub image_id: Option<String>,
    /// Bytes of the cache tarball downloaded.
    pub bytes_downloaded: u64,
    /// Bytes of blobs uploaded.
    pub bytes_uploaded: u64,
    /// Layers uploaded because the server lacked them.
    pub layers_uploaded: u64,
    /// Layers of the pushed images the server already had.
    pub layers_reused: u64,
    /// Whether an entry was committed (classic path) or the build cache exported (BuildKit path).
    pub pushed: bool,
    /// The engine: version and image store (`26.1.5 (containerd store)`).
    pub engine: String,
    /// `classic` or `buildkit`: the builder that ran.
    pub builder: String,
    /// How the cache was used: `classic-cachefrom` or `buildkit-registry` (see `detect.rs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<crate::detect::BuildPath>,
    /// Build steps the engine ran (from its own build output; `FROM` not counted).
    pub steps_run: u64,
    /// Build steps the engine reused from its cache.
    pub steps_reused: u64,
    /// Total wall time.
    pub seconds: f64,
    /// Wall time of each phase (`key`, `lookup`, `restore`, `build`, `push`); `restore` is the
    /// download and load after a hit, without the lookup.
    pub phases: BTreeMap<String, f64>,
    /// Problems that did not fail the run (server down, restore failed).
    pub warnings: Vec<String>,
    /// The server problem that made this run uncached, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_error: Option<String>,
}

impl Summary {
    /// Records a warning and logs it right away.
    pub fn warn(&mut self, log: &Log, text: String) {
        log.line(&format!("warning: {text}"));
        self.warnings.push(text);
    }

    /// Records a server problem: a warning that also marks the run as uncached by the server.
    pub fn server_problem(&mut self, log: &Log, text: String) {
        if self.server_error.is_none() {
            self.server_error = Some(text.clone());
        }
        self.warn(log, text);
    }

    /// Prints the summary: JSON on stdout, or readable lines on stderr.
    pub fn print(&self, json: bool) {
        if json {
            match serde_json::to_string(self) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("warning: cannot print the JSON summary: {e}"),
            }
            return;
        }
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}s"))
            .collect();
        eprintln!("── layercache summary ──");
        eprintln!("cache:      {}", self.cache);
        eprintln!("key:        {} (namespace {})", self.key, self.namespace);
        if let Some(from) = &self.restored_from {
            eprintln!("restored:   {from}");
        }
        if let Some(id) = &self.image_id {
            eprintln!("image:      {id}");
        }
        if let Some(path) = &self.path {
            eprintln!("engine:     {}: {path}", self.engine);
            eprintln!(
                "steps:      {} run, {} reused",
                self.steps_run, self.steps_reused
            );
        }
        eprintln!(
            "layers:     {} reused, {} uploaded",
            self.layers_reused, self.layers_uploaded
        );
        eprintln!(
            "bytes:      {} downloaded, {} uploaded",
            human(self.bytes_downloaded),
            human(self.bytes_uploaded)
        );
        eprintln!("time:       {:.1}s ({})", self.seconds, phases.join(", "));
        for w in &self.warnings {
            eprintln!("warning:    {w}");
        }
    }
}

/// Times phases into a summary.
pub struct Phase {
    name: &'static str,
    start: Instant,
}

impl Phase {
    pub fn start(name: &'static str) -> Phase {
        Phase {
            name,
            start: Instant::now(),
        }
    }
    pub fn end(self, summary: &mut Summary) {
        *summary.phases.entry(self.name.to_string()).or_default() +=
            self.start.elapsed().as_secs_f64();
    }
}

pub use layercache_shared::size::human;

/// Byte progress of one transfer: a bar on a terminal, a start and an end line otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    start: Instant,
    /// Where the start and end lines go.
    log: Log,
}

impl Progress {
    /// Starts reporting `label`; `total` when known.
    pub fn new(log: &Log, label: &str, total: Option<u64>) -> Progress {
        let bar = log.bars.then(|| {
            let bar = match total {
                Some(n) => ProgressBar::new(n),
                None => ProgressBar::no_length(),
            };
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_string());
            bar
        });
        if bar.is_none() {
            match total {
                Some(n) => log.line(&format!("{label}: {} …", human(n))),
                None => log.line(&format!("{label} …")),
            }
        }
        Progress {
            bar,
            label: label.to_string(),
            start: Instant::now(),
            log: log.clone(),
        }
    }

    /// Adds `n` transferred bytes.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Ends the report with the amount transferred.
    pub fn finish(self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.log.line(&format!(
            "{}: {} in {:.1}s",
            self.label,
            human(bytes),
            self.start.elapsed().as_secs_f64()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_go_to_the_log_and_the_first_server_problem_is_kept() {
        let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = Arc::clone(&lines);
        let log = Log::to(move |l| seen.lock().unwrap().push(l.to_string()));
        let mut s = Summary::default();
        s.server_problem(&log, "down".into());
        s.server_problem(&log, "still down".into());
        assert_eq!(s.server_error.as_deref(), Some("down"));
        assert_eq!(s.warnings, ["down", "still down"]);
        assert_eq!(
            *lines.lock().unwrap(),
            ["warning: down", "warning: still down"]
        );
    }

    #[test]
    fn json_summary_has_the_fields_ci_reads() {
        let s = Summary {
            cache: "miss".into(),
            ..Summary::default()
        };
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        for field in [
            "cache",
            "key",
            "image_id",
            "bytes_downloaded",
            "bytes_uploaded",
            "layers_uploaded",
            "layers_reused",
            "seconds",
            "namespace",
            "phases",
            "warnings",
            "engine",
            "builder",
            "steps_run",
            "steps_reused",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
    }
}
