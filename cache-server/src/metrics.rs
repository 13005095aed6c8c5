//! `GET /metrics` in the Prometheus text format (0.0.4), written by the `prometheus` crate's
//! `TextEncoder` (escaping, histogram buckets, `# HELP`/`# TYPE`).
//!
//! Two sources:
//! - HTTP requests: counted in memory by [`track`] (since the process started, as Prometheus
//!   expects of counters), labelled with the matched route template (never the raw path, which
//!   holds namespaces and keys without bound; captures written `:name`), the method and the
//!   status.
//! - Everything else is read from the index when scraped, so it matches `/v1/stats` and survives
//!   restarts: lookups by namespace and result, bytes in/out, stored bytes, blobs, evictions,
//!   upload failures by error code, builds and time saved. Each scrape registers them, with the
//!   values just read, in a registry of its own beside the long-lived HTTP collectors.
//!
//! Lookup labels are bounded: the first [`TOP_NAMESPACES`] namespaces ever seen keep their own
//! label, all later ones add up in `namespace="other"`. First-seen (not "largest now") keeps each
//! series growing monotonically.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::core::Collector;
use prometheus::{
    Counter, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::auth::{Access, Role};
use crate::error::ServerError;
use crate::routes::AppState;
use crate::store::meta::{MetaResult, Metadata};
use crate::store::sqlite::counter;

/// Namespaces that get their own `namespace` label on lookup counters.
pub const TOP_NAMESPACES: usize = 20;

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Label of requests no route matched (404s of unknown paths).
const UNMATCHED: &str = "unmatched";

/// Labels of the HTTP series, in this order.
const HTTP_LABELS: &[&str] = &["route", "method", "status"];

/// Request counts and latencies of this process (the collectors share their state when cloned).
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    /// `layercache_http_requests_total{route, method, status}`.
    requests: IntCounterVec,
    /// `layercache_http_request_duration_seconds{route, method, status}`.
    duration: HistogramVec,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        // Names, help texts and labels are constants: these constructors cannot fail on them.
        let requests = IntCounterVec::new(
            Opts::new(
                "layercache_http_requests_total",
                "HTTP requests answered, by route template, method and status.",
            ),
            HTTP_LABELS,
        )
        .expect("valid counter options");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "layercache_http_request_duration_seconds",
                "Time to the response head, by route template, method and status.",
            )
            .buckets(BUCKETS.to_vec()),
            HTTP_LABELS,
        )
        .expect("valid histogram options");
        HttpMetrics { requests, duration }
    }
}

impl HttpMetrics {
    /// Counts one request that took `seconds` to produce its response head.
    pub fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        let labels = [route, method, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.duration.with_label_values(&labels).observe(seconds);
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
    let method = method_label(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    let route = resp
        .extensions()
        .get::<RouteTemplate>()
        .map_or(UNMATCHED, |t| t.0.as_str());
    state.metrics.observe(
        route,
        method,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// The `method` label: the standard methods by name, anything else as `other`, so a client
/// sending made-up methods cannot add series without bound.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    match *method {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts `entries` evicted entries freeing `bytes`: for the size-limit eviction to call after
/// each eviction pass. Persisted like the other counters, so `/metrics` keeps it across restarts.
pub fn record_eviction(db: &dyn Metadata, entries: u64, bytes: u64) -> MetaResult<()> {
    db.add_counters(&[
        (counter::EVICTIONS, entries),
        (counter::BYTES_EVICTED, bytes),
    ])
}

/// `GET /metrics`.
pub async fn metrics(
    State(state): State<AppState>,
    access: Access,
) -> Result<Response, ServerError> {
    // Series name namespaces and count everyone's traffic: an admin of every namespace only.
    access.require_all(Role::Admin)?;
    let http = state.metrics.as_ref().clone();
    let text = state
        .store
        .blocking(move |s| {
            let stats = s.db.stats()?;
            let counters: HashMap<String, u64> = s.db.counters()?.into_iter().collect();
            let lookups = s.db.lookup_totals()?;
            render(&http, &stats, &counters, &lookups)
                .map_err(|e| ServerError::Internal(format!("metrics: {e}")))
        })
        .await?;
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
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

/// Registers `c` in `r`.
fn add(r: &Registry, c: impl Collector + 'static) -> prometheus::Result<()> {
    r.register(Box::new(c))
}

/// A gauge's value: the index's counts fit an i64 long before they could overflow one.
fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The text exposition of `http` and of the values just read from the index.
fn render(
    http: &HttpMetrics,
    stats: &layercache_shared::api::Stats,
    counters: &HashMap<String, u64>,
    lookups: &[(String, String, u64)],
) -> prometheus::Result<String> {
    let c = |name: &str| counters.get(name).copied().unwrap_or(0);
    let r = Registry::new();
    add(&r, http.requests.clone())?;
    add(&r, http.duration.clone())?;

    let lookup_totals = IntCounterVec::new(
        Opts::new(
            "layercache_lookups_total",
            "Lookups and image GETs by namespace (first asked; the first 20 seen, then `other`) \
             and result: exact, fallback, prefix, get (image GET hit), miss.",
        ),
        &["namespace", "result"],
    )?;
    for ((ns, kind), n) in bounded_lookups(lookups) {
        lookup_totals
            .with_label_values(&[ns.as_str(), kind.as_str()])
            .inc_by(n);
    }
    add(&r, lookup_totals)?;

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
        let m = IntCounter::new(*name, *help)?;
        m.inc_by(*v);
        add(&r, m)?;
    }
    let saved = Counter::new(
        "layercache_build_seconds_saved_total",
        "Build time saved, as reported builds compare with the last cold build of their key.",
    )?;
    saved.inc_by(c(counter::MS_SAVED) as f64 / 1000.0);
    add(&r, saved)?;

    let failures = IntCounterVec::new(
        Opts::new(
            "layercache_upload_failures_total",
            "Uploads refused or broken off, by error code.",
        ),
        &["reason"],
    )?;
    for (k, v) in counters {
        if let Some(code) = k.strip_prefix(counter::UPLOADS_FAILED_PREFIX) {
            failures.with_label_values(&[code]).inc_by(*v);
        }
    }
    add(&r, failures)?;

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
        let g = IntGauge::new(*name, *help)?;
        g.set(gauge_value(*v));
        add(&r, g)?;
    }

    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
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
        let lookups = vec![(r#"a"b\c"#.to_string(), "miss\nx".to_string(), 1)];
        let text = render(
            &HttpMetrics::default(),
            &Default::default(),
            &HashMap::new(),
            &lookups,
        )
        .unwrap();
        assert!(
            text.contains(r#"layercache_lookups_total{namespace="a\"b\\c",result="miss\nx"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn made_up_methods_count_as_other() {
        let odd = axum::http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&odd), "other");
        assert_eq!(method_label(&axum::http::Method::PATCH), "PATCH");
        let m = HttpMetrics::default();
        m.observe("unmatched", method_label(&odd), 404, 0.001);
        let text = render(&m, &Default::default(), &HashMap::new(), &[]).unwrap();
        assert!(
            text.contains(
                r#"layercache_http_requests_total{method="other",route="unmatched",status="404"} 1"#
            ),
            "{text}"
        );
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
        let text = render(&m, &Default::default(), &HashMap::new(), &[]).unwrap();
        let line = |needle: &str| -> String {
            text.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no `{needle}` in\n{text}"))
                .to_string()
        };
        assert!(line("layercache_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/stats\",status=\"200\",le=\"0.005\"}").ends_with(" 1"));
        assert!(line("layercache_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/stats\",status=\"200\",le=\"0.25\"}").ends_with(" 2"));
        assert!(line("layercache_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/stats\",status=\"200\",le=\"+Inf\"}").ends_with(" 3"));
        assert!(line("layercache_http_requests_total{").ends_with(" 3"));
    }
}
