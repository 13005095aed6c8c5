//! What `layercache steps` prints: log lines prefixed with the step name (coloured on a terminal),
//! the summary table, and the `--json` summary.
//!
//! With `--json`, stdout carries only the JSON document; log lines go to stderr so a tool can parse
//! stdout as is. Formatting is pure (`format_*` functions) and unit-tested; [`Printer`] only writes.

use std::io::{IsTerminal, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::plan::{Status, StepResult};

/// ANSI foreground colours cycled over steps; red is left out, it means failure in the table.
const PALETTE: [&str; 6] = ["36", "32", "33", "35", "34", "96"];

/// Writes prefixed log lines and the summary; cheap to clone into every step task.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    /// Colour the prefixes (stdout is a terminal and `--json` is off).
    color: bool,
    /// Logs go to stderr, stdout is reserved for the JSON summary.
    json: bool,
}

impl Printer {
    /// A printer for this process: colour only when the log stream is a terminal.
    pub fn new(json: bool) -> Printer {
        let color = if json {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        Printer { color, json }
    }

    /// Prints one log line of `prefix` (a step name, or `build <service>`); `slot` picks the colour.
    pub fn line(&self, prefix: &str, slot: usize, text: &str) {
        let line = format_line(prefix, slot, text, self.color);
        // A closed stdout (`| head`) must not abort the run: containers still need cleaning up.
        if self.json {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        } else {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    }

    /// Prints the summary: a table, or the JSON document with `--json`.
    pub fn summary(&self, summary: &Summary) {
        let text = if self.json {
            serde_json::to_string_pretty(summary)
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        } else if summary.services.is_empty() {
            format_table(&summary.steps, self.color)
        } else {
            format!(
                "{}\n\n{}",
                format_services(&summary.services),
                format_table(&summary.steps, self.color)
            )
        };
        let _ = writeln!(std::io::stdout().lock(), "{text}");
    }
}

/// `name | text`, the prefix padded for alignment and coloured when asked.
pub fn format_line(prefix: &str, slot: usize, text: &str, color: bool) -> String {
    let text = text.trim_end_matches(['\r', '\n']);
    if color {
        let c = PALETTE[slot % PALETTE.len()];
        format!("\x1b[{c}m{prefix:<16} |\x1b[0m {text}")
    } else {
        format!("{prefix:<16} | {text}")
    }
}

/// The summary table: step, status, duration, and a reason for skipped or errored steps.
pub fn format_table(rows: &[SummaryStep], color: bool) -> String {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:<width$}  {:<7}  {:>9}\n", "STEP", "STATUS", "DURATION");
    for r in rows {
        let status = format!("{:<7}", r.status);
        let status = match (color, r.status.as_str()) {
            (true, "passed") => format!("\x1b[32m{status}\x1b[0m"),
            (true, "failed") => format!("\x1b[31m{status}\x1b[0m"),
            (true, _) => format!("\x1b[2m{status}\x1b[0m"),
            (false, _) => status,
        };
        let duration = format!("{:.1}s", r.duration_ms as f64 / 1000.0);
        let note = r
            .reason
            .as_deref()
            .or(r.error.as_deref())
            .map(|n| format!("  ({n})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<width$}  {status}  {duration:>9}{note}\n",
            r.name
        ));
    }
    out.pop();
    out
}

/// The `--json` document.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// The run's uuid: every container and network carried `layercache.run=<run_id>`.
    pub run_id: String,
    /// Branch the tags were matched against.
    pub branch: String,
    /// Exit code 0: every step that ran passed and the run was not interrupted.
    pub passed: bool,
    /// The run was stopped by Ctrl-C.
    pub interrupted: bool,
    /// One row per built service, in name order (services with only `image:` are not built).
    pub services: Vec<SummaryService>,
    /// One row per step, in file order.
    pub steps: Vec<SummaryStep>,
}

/// One built service of the `--json` document: how the layer cache served its build.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SummaryService {
    /// The service's name.
    pub name: String,
    /// The tag its containers run (`layercache-steps/<project>-<service>:latest`).
    pub image: String,
    /// The built image's ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// `exact`, `fallback`, `prefix`, `miss`, or `off` (`cached: false` or `--no-cache-build`).
    pub cache: String,
    /// Namespace the build was looked up in first and pushed to.
    pub namespace: String,
    /// Whether the result was pushed to the cache.
    pub pushed: bool,
    /// Wall time of restore, build and push.
    pub seconds: f64,
    /// Problems that did not fail the build (cache server down, token refused).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl SummaryService {
    /// The row of service `name`, built as `req` asked, from the build's summary.
    pub fn new(
        name: &str,
        image: &str,
        req: &crate::build::BuildRequest,
        summary: &crate::report::Summary,
    ) -> SummaryService {
        SummaryService {
            name: name.to_string(),
            image: image.to_string(),
            image_id: summary.image_id.clone(),
            cache: if req.no_cache {
                "off".into()
            } else {
                summary.cache.clone()
            },
            namespace: summary.namespace.clone(),
            pushed: summary.pushed,
            seconds: summary.seconds,
            warnings: summary.warnings.clone(),
        }
    }

    /// The one line printed when the build is done.
    pub fn describe(&self) -> String {
        let pushed = if self.pushed { ", pushed" } else { "" };
        let warned = match self.warnings.len() {
            0 => String::new(),
            n => format!(", {n} warning(s) above"),
        };
        format!(
            "built {} in {:.1}s, cache {}{pushed}{warned}",
            self.image, self.seconds, self.cache
        )
    }
}

/// The services table printed above the steps table: service, cache result, duration.
pub fn format_services(rows: &[SummaryService]) -> String {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(7).max(7);
    let mut out = format!("{:<width$}  {:<8}  {:>9}\n", "SERVICE", "CACHE", "DURATION");
    for r in rows {
        let duration = format!("{:.1}s", r.seconds);
        out.push_str(&format!(
            "{:<width$}  {:<8}  {duration:>9}\n",
            r.name, r.cache
        ));
    }
    out.pop();
    out
}

/// One step of the `--json` document.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SummaryStep {
    /// The step's name.
    pub name: String,
    /// `passed`, `failed` or `skipped`.
    pub status: String,
    /// Why the step was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Engine or push error, when the failure was not the command's exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Exit code of the step's container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Unix time in milliseconds when the step started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// Milliseconds from the run's start to the step's start (overlap of parallel steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_offset_ms: Option<u64>,
    /// Milliseconds from the run's start to the step's end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_offset_ms: Option<u64>,
    /// Run time in milliseconds (0 when skipped).
    pub duration_ms: u64,
    /// Last lines of the step's output, so tools can check markers without scraping logs.
    pub log_tail: Vec<String>,
}

impl From<&StepResult> for SummaryStep {
    fn from(r: &StepResult) -> SummaryStep {
        let (status, reason) = match &r.status {
            Status::Passed => ("passed", None),
            Status::Failed => ("failed", None),
            Status::Skipped(why) => ("skipped", Some(why.to_string())),
        };
        SummaryStep {
            name: r.name.clone(),
            status: status.into(),
            reason,
            error: r.report.error.clone(),
            exit_code: r.report.exit_code,
            started_at_ms: r.started_at.map(unix_ms),
            start_offset_ms: r.start_offset_ms,
            end_offset_ms: r.end_offset_ms,
            duration_ms: r.duration_ms(),
            log_tail: r.report.log_tail.clone(),
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::plan::{SkipReason, StepReport};

    fn row(name: &str, status: Status, start: Option<u64>, end: Option<u64>) -> StepResult {
        StepResult {
            name: name.into(),
            status,
            started_at: start.map(|_| UNIX_EPOCH + std::time::Duration::from_secs(10)),
            start_offset_ms: start,
            end_offset_ms: end,
            report: StepReport {
                passed: true,
                exit_code: Some(0),
                error: None,
                log_tail: vec!["hi".into()],
            },
        }
    }

    #[test]
    fn line_is_prefixed_and_coloured_only_on_request() {
        assert_eq!(
            format_line("test-a", 0, "hello\n", false),
            "test-a           | hello"
        );
        let c = format_line("test-a", 1, "hello", true);
        assert!(
            c.starts_with("\x1b[32mtest-a") && c.ends_with("\x1b[0m hello"),
            "{c:?}"
        );
    }

    #[test]
    fn table_lists_status_duration_and_reason() {
        let rows: Vec<SummaryStep> = [
            row("test-a", Status::Passed, Some(0), Some(1500)),
            row(
                "deploy",
                Status::Skipped(SkipReason::Tag {
                    pattern: "^main$".into(),
                }),
                None,
                None,
            ),
        ]
        .iter()
        .map(SummaryStep::from)
        .collect();
        let t = format_table(&rows, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "STEP    STATUS    DURATION");
        assert_eq!(lines[1], "test-a  passed        1.5s");
        assert_eq!(
            lines[2],
            "deploy  skipped       0.0s  (tag `^main$` does not match the branch)"
        );
    }

    fn service(name: &str, cache: &str) -> SummaryService {
        SummaryService {
            name: name.into(),
            image: format!("layercache-steps/p-{name}:latest"),
            image_id: None,
            cache: cache.into(),
            namespace: format!("main/{name}"),
            pushed: false,
            seconds: 2.25,
            warnings: vec![],
        }
    }

    #[test]
    fn services_table_and_line_name_the_cache_result() {
        let rows = [service("app", "exact"), service("db", "off")];
        let t = format_services(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "SERVICE  CACHE      DURATION");
        assert_eq!(lines[1], "app      exact          2.2s");
        assert_eq!(lines[2], "db       off            2.2s");
        let mut warned = service("app", "miss");
        warned.warnings.push("server down".into());
        assert_eq!(
            warned.describe(),
            "built layercache-steps/p-app:latest in 2.2s, cache miss, 1 warning(s) above"
        );
        let v = serde_json::to_value(&rows[0]).expect("serializes");
        for field in ["name", "image", "cache", "seconds", "namespace", "pushed"] {
            assert!(v.get(field).is_some(), "missing {field}: {v}");
        }
        assert!(v.get("warnings").is_none());
    }

    #[test]
    fn json_summary_has_timestamps_and_skips_empty_fields() {
        let s = SummaryStep::from(&row("a", Status::Passed, Some(5), Some(25)));
        let v = serde_json::to_value(&s).expect("serializes");
        assert_eq!(v["status"], "passed");
        assert_eq!(v["started_at_ms"], 10_000);
        assert_eq!(v["duration_ms"], 20);
        assert!(v.get("reason").is_none());
        let skipped = SummaryStep::from(&row(
            "b",
            Status::Skipped(SkipReason::EarlierFailure),
            None,
            None,
        ));
        let v = serde_json::to_value(&skipped).expect("serializes");
        assert_eq!(v["reason"], "an earlier step failed");
        assert!(v.get("start_offset_ms").is_none());
    }
}
