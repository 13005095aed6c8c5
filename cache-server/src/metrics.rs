//! `GET /metrics` in the Prometheus text format (0.0.4), written by hand: a few counters, gauges
//! and one histogram do not need a metrics framework, and the escaping rules are small.
//!
//! Two sources:
//! - HTTP requests: counted in memory by [`track`] (since the process started, as Prometheus
//!   expects of counters), labelled with the matched route template (never the raw path, which
//!   holds namespaces and keys without bound; captures written `:name`), the method and the
//!   status.
//! - Everything else is read from the index when scraped, so it matches `/v1/stats` and survives
//!   restarts: lookups by namespace and result, bytes in/out, stored bytes, blobs, evictions,
//!   upload failures by error code, builds and time saved.
//!
//! Lookup labels are bounded: the first [`TOP_NAMESPACES`] namespaces ever seen keep their own
//! label, all later ones add up in `namespace="other"`. First-seen (not "largest now") keeps each
//! series growing monotonically.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ServerError;
use crate::routes::AppState;
use crate::store::sqlite::{Db, counter};

/// Namespaces that get their own `namespace` label on lookup counters.
pub const TOP_NAMESPACES: usize = 20;

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Label of requests no route matched (404s of unknown paths).
const UNMATCHED: &str = "unmatched";

/// One `(route, method, status)` series of the request histogram.
#[derive(Debug, Default, Clone)]
struct Series {
    /// Requests per bucket (not cumulative; summed when rendered).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

/// Request counts and latencies of this process.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// A std `Mutex`: held for one map update, never across an await.
    series: Mutex<HashMap<(String, String, u16), Series>>,
}

impl HttpMetrics {
    /// Counts one request that took `seconds` to produce its response head.
    pub fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = map
            .entry((route.to_string(), method.to_string(), status))
            .or_default();
        s.count += 1;
        s.sum_seconds += seconds;
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            s.buckets[i] += 1;
        }
    }

    fn snapshot(&self) -> BTreeMap<(String, String, u16), Series> {
        let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// The route template a request matched, passed from [`tag_route`] to [`track`].
#[derive(Debug, Clone)]
struct RouteTemplate(String);

/// Route-level middleware (runs only for matched routes): hands the matched path template out on
/// the response, where [`track`], which wraps the whole router, finds it.
pub async fn tag_route(req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| route_label(m.as_str()));
    let mut resp = next.run(req).await;
    if let Some(t) = template {
        resp.extensions_mut().insert(RouteTemplate(t));
    }
    resp
}

/// The `route` label of a path template: `{name}` captures written `:name`
/// (`/v1/images/:ns/:key`), since some text-format parsers split labels at braces.
pub fn route_label(template: &str) -> String {
    template.replace('{', ":").replace('}', "")
}

/// Router-wide middleware: times every request up to its response head and counts it by route
/// template, method and status. A streaming download's body is not included in its latency.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    let route = resp
        .extensions()
        .get::<RouteTemplate>()
        .map_or(UNMATCHED, |t| t.0.as_str());
    state.metrics.observe(
        route,
        &method,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// Counts `entries` evicted entries freeing `bytes`: for the size-limit eviction to call after
/// each eviction pass. Persisted like the other counters, so `/metrics` keeps it across restarts.
pub fn record_eviction(db: &Db, entries: u64, bytes: u64) -> rusqlite::Result<()> {
    db.add_counters(&[
        (counter::EVICTIONS, entries),
        (counter::BYTES_EVICTED, bytes),
    ])
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ServerError> {
    let http = state.metrics.snapshot();
    let text = state
        .store
        .blocking(move |s| {
            let stats = s.db.stats()?;
            let counters: HashMap<String, u64> = s.db.counters()?.into_iter().collect();
            let lookups = s.db.lookup_totals()?;
            Ok(render(&http, &stats, &counters, &lookups))
        })
        .await?;
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes `# HELP` and `# TYPE` of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample; `labels` are `(name, unescaped value)`.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Lookup totals folded to the first [`TOP_NAMESPACES`] namespaces plus `other`.
fn bounded_lookups(lookups: &[(String, String, u64)]) -> BTreeMap<(String, String), u64> {
    let mut named: Vec<&str> = Vec::new();
    let mut out = BTreeMap::new();
    for (ns, kind, n) in lookups {
        let known = named.contains(&ns.as_str());
        if !known && named.len() < TOP_NAMESPACES {
            named.push(ns);
        }
        let label = if named.contains(&ns.as_str()) {
            ns.as_str()
        } else {
            "other"
        };
        *out.entry((label.to_string(), kind.clone())).or_default() += n;
    }
    out
}

fn render(
    http: &BTreeMap<(String, String, u16), Series>,
    stats: &layercache_shared::api::Stats,
    counters: &HashMap<String, u64>,
    lookups: &[(String, String, u64)],
) -> String {
    let mut o = String::new();
    let c = |name: &str| counters.get(name).copied().unwrap_or(0);

    family(
        &mut o,
        "layercache_http_requests_total",
        "counter",
        "HTTP requests answered, by route template, method and status.",
    );
    for ((route, method, status), s) in http {
        let status = status.to_string();
        let labels = [
            ("route", route.as_str()),
            ("method", method),
            ("status", &status),
        ];
        sample(&mut o, "layercache_http_requests_total", &labels, s.count);
    }
    family(
        &mut o,
        "layercache_http_request_duration_seconds",
        "histogram",
        "Time to the response head, by route template, method and status.",
    );
    for ((route, method, status), s) in http {
        let status = status.to_string();
        let name = "layercache_http_request_duration_seconds";
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(s.buckets) {
            cumulative += n;
            let le = bound.to_string();
            let labels = [
                ("route", route.as_str()),
                ("method", method),
                ("status", &status),
                ("le", &le),
            ];
            sample(&mut o, &format!("{name}_bucket"), &labels, cumulative);
        }
        let base = [
            ("route", route.as_str()),
            ("method", method),
            ("status", &status),
        ];
        let inf = [base[0], base[1], base[2], ("le", "+Inf")];
        sample(&mut o, &format!("{name}_bucket"), &inf, s.count);
        sample(&mut o, &format!("{name}_sum"), &base, s.sum_seconds);
        sample(&mut o, &format!("{name}_count"), &base, s.count);
    }

    family(
        &mut o,
        "layercache_lookups_total",
        "counter",
        "Lookups and image GETs by namespace (first asked; the first 20 seen, then `other`) and \
         result: exact, fallback, prefix, get (image GET hit), miss.",
    );
    for ((ns, kind), n) in bounded_lookups(lookups) {
        let labels = [("namespace", ns.as_str()), ("result", kind.as_str())];
        sample(&mut o, "layercache_lookups_total", &labels, n);
    }

    let counters_out: &[(&str, &str, u64)] = &[
        (
            "layercache_hits_total",
            "Lookups and image GETs that found an entry.",
            stats.hits,
        ),
        (
            "layercache_misses_total",
            "Lookups and image GETs that found nothing.",
            stats.misses,
        ),
        (
            "layercache_bytes_served_total",
            "Response body bytes of image and blob GETs.",
            stats.bytes_served,
        ),
        (
            "layercache_bytes_received_total",
            "Request body bytes of image and blob PUTs.",
            stats.bytes_received,
        ),
        (
            "layercache_bytes_deduplicated_total",
            "Uploaded bytes already stored, so not stored again.",
            stats.bytes_deduplicated,
        ),
        (
            "layercache_evictions_total",
            "Entries evicted to stay under the size limit.",
            c(counter::EVICTIONS),
        ),
        (
            "layercache_evicted_bytes_total",
            "Bytes freed by evictions.",
            c(counter::BYTES_EVICTED),
        ),
        (
            "layercache_builds_total",
            "Build reports received from runners.",
            c(counter::BUILDS),
        ),
    ];
    for (name, help, v) in counters_out {
        family(&mut o, name, "counter", help);
        sample(&mut o, name, &[], v);
    }
    family(
        &mut o,
        "layercache_build_seconds_saved_total",
        "counter",
        "Build time saved, as reported builds compare with the last cold build of their key.",
    );
    sample(
        &mut o,
        "layercache_build_seconds_saved_total",
        &[],
        c(counter::MS_SAVED) as f64 / 1000.0,
    );

    family(
        &mut o,
        "layercache_upload_failures_total",
        "counter",
        "Uploads refused or broken off, by error code.",
    );
    let mut failures: Vec<(&str, u64)> = counters
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(counter::UPLOADS_FAILED_PREFIX)
                .map(|code| (code, *v))
        })
        .collect();
    failures.sort();
    for (code, n) in failures {
        sample(
            &mut o,
            "layercache_upload_failures_total",
            &[("reason", code)],
            n,
        );
    }

    let gauges: &[(&str, &str, u64)] = &[
        (
            "layercache_stored_bytes",
            "Bytes of all stored blobs, each once.",
            stats.stored_bytes,
        ),
        (
            "layercache_blobs",
            "Stored blobs (layers and configs).",
            stats.blobs,
        ),
        ("layercache_entries", "Stored entries.", stats.entries),
        (
            "layercache_registry_tags",
            "Registry tags (each an entry for the quota).",
            stats.tags,
        ),
        (
            "layercache_registry_manifests",
            "Registry manifests, tagged or not.",
            stats.manifests,
        ),
    ];
    for (name, help, v) in gauges {
        family(&mut o, name, "gauge", help);
        sample(&mut o, name, &[], v);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_write_captures_without_braces() {
        assert_eq!(route_label("/v1/images/{ns}/{key}"), "/v1/images/:ns/:key");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }

    #[test]
    fn namespaces_past_the_first_twenty_fold_into_other() {
        let lookups: Vec<(String, String, u64)> = (0..25)
            .map(|i| (format!("ns{i}"), "miss".to_string(), 1))
            .collect();
        let b = bounded_lookups(&lookups);
        assert_eq!(b.len(), TOP_NAMESPACES + 1);
        assert_eq!(b[&("other".to_string(), "miss".to_string())], 5);
        assert_eq!(b[&("ns0".to_string(), "miss".to_string())], 1);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let m = HttpMetrics::default();
        m.observe("/v1/stats", "GET", 200, 0.001);
        m.observe("/v1/stats", "GET", 200, 0.2);
        m.observe("/v1/stats", "GET", 200, 100.0);
        let text = render(&m.snapshot(), &Default::default(), &HashMap::new(), &[]);
        let line = |needle: &str| -> String {
            text.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no `{needle}` in\n{text}"))
                .to_string()
        };
        assert!(line("layercache_http_request_duration_seconds_bucket{route=\"/v1/stats\",method=\"GET\",status=\"200\",le=\"0.005\"}").ends_with(" 1"));
        assert!(line("layercache_http_request_duration_seconds_bucket{route=\"/v1/stats\",method=\"GET\",status=\"200\",le=\"0.25\"}").ends_with(" 2"));
        assert!(line("layercache_http_request_duration_seconds_bucket{route=\"/v1/stats\",method=\"GET\",status=\"200\",le=\"+Inf\"}").ends_with(" 3"));
        assert!(line("layercache_http_requests_total{").ends_with(" 3"));
    }
}
