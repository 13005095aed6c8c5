//! The hit-rate chart as inline SVG: per bucket a stacked bar of hits (green) over misses (red)
//! scaled to the busiest bucket, and the hit rate (hits / lookups) as a line on a 0–100 % axis.
//! Buckets without lookups break the line instead of dropping it to 0 %.

use layercache_shared::api::StatsHistory;
use maud::{Markup, html};

const W: f64 = 1100.0;
const H: f64 = 240.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 26.0;

/// One decimal, as SVG coordinates are written.
fn c(v: f64) -> String {
    format!("{v:.1}")
}

/// The chart of `history`, its time axis labelled relative to the present.
pub fn hit_rate_svg(history: &StatsHistory) -> Markup {
    let points = &history.points;
    let n = points.len().max(1) as f64;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let slot = plot_w / n;
    let base = TOP + plot_h;
    let max_volume = points
        .iter()
        .map(|p| p.hits + p.misses)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let per = if history.bucket_seconds >= 3600 {
        "hour"
    } else {
        "minute"
    };
    // The hit-rate line, in segments over buckets that had lookups.
    let mut segments: Vec<Vec<String>> = vec![Vec::new()];
    for (i, p) in points.iter().enumerate() {
        let total = p.hits + p.misses;
        if total == 0 {
            segments.push(Vec::new());
            continue;
        }
        let rate = p.hits as f64 / total as f64;
        let x = LEFT + slot * (i as f64 + 0.5);
        let y = TOP + plot_h * (1.0 - rate);
        if let Some(s) = segments.last_mut() {
            s.push(format!("{x:.1},{y:.1}"));
        }
    }
    // Time axis: start, middle, now.
    let span = history.bucket_seconds * points.len() as u64;
    let axis = [(0.0, "start"), (0.5, "middle"), (1.0, "end")].map(|(frac, anchor)| {
        let ago = (span as f64 * (1.0 - frac)).round() as u64;
        let label = if ago == 0 {
            "now".to_string()
        } else if ago >= 3600 {
            format!("-{}h", ago / 3600)
        } else {
            format!("-{}m", ago / 60)
        };
        (LEFT + plot_w * frac, anchor, label)
    });
    html! {
        svg #hit-rate-chart viewBox=(format!("0 0 {W} {H}")) width="100%" role="img"
            aria-label=(format!("hit rate over the last {}", history.window))
            xmlns="http://www.w3.org/2000/svg" {
            // Grid and left axis (hit rate %).
            @for pct in [0, 25, 50, 75, 100] {
                @let y = TOP + plot_h * (1.0 - pct as f64 / 100.0);
                line x1=(LEFT) x2=(W - RIGHT) y1=(c(y)) y2=(c(y)) stroke="#e3e6ec" {}
                text x=(LEFT - 6.0) y=(c(y + 4.0)) text-anchor="end" { (pct) "%" }
            }
            text x=(W - RIGHT) y="12" text-anchor="end" {
                "bars: lookups per " (per) ", busiest " (max_volume as u64)
            }
            // Bars.
            @for (i, p) in points.iter().enumerate() {
                @let x = LEFT + slot * i as f64 + slot * 0.15;
                @let bw = (slot * 0.7).max(1.0);
                @let hits_h = plot_h * p.hits as f64 / max_volume;
                @let miss_h = plot_h * p.misses as f64 / max_volume;
                @if p.misses > 0 {
                    rect x=(c(x)) y=(c(base - miss_h)) width=(c(bw)) height=(c(miss_h))
                        fill="#d9534f" opacity="0.35" { title { (p.misses) " misses" } }
                }
                @if p.hits > 0 {
                    rect x=(c(x)) y=(c(base - miss_h - hits_h)) width=(c(bw)) height=(c(hits_h))
                        fill="#2f9e63" opacity="0.35" { title { (p.hits) " hits" } }
                }
            }
            @for s in &segments {
                @if let [only] = s.as_slice() {
                    @let (x, y) = only.split_once(',').unwrap_or(("0", "0"));
                    circle cx=(x) cy=(y) r="3" fill="#2f9e63" {}
                } @else if s.len() > 1 {
                    polyline points=(s.join(" ")) fill="none" stroke="#2f9e63" stroke-width="2.5" {}
                }
            }
            @for (x, anchor, label) in &axis {
                text x=(c(*x)) y=(c(H - 8.0)) text-anchor=(anchor) { (label) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use layercache_shared::api::HistoryPoint;

    use super::*;

    #[test]
    fn empty_buckets_break_the_line_and_busy_ones_get_bars() {
        let mut points: Vec<HistoryPoint> = (0..4)
            .map(|i| HistoryPoint {
                start: i * 60,
                ..HistoryPoint::default()
            })
            .collect();
        points[0].hits = 3;
        points[0].misses = 1;
        points[2].hits = 1;
        points[3].misses = 2;
        let svg = hit_rate_svg(&StatsHistory {
            window: "1h".into(),
            bucket_seconds: 60,
            namespace: None,
            points,
        })
        .into_string();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 4);
        // Bucket 1 is empty: no single polyline spans all points.
        assert_eq!(svg.matches("<circle").count(), 1);
        assert_eq!(svg.matches("<polyline").count(), 1);
    }
}
