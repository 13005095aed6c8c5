//! The hit-rate chart as inline SVG: per bucket a stacked bar of hits (green) over misses (red)
//! scaled to the busiest bucket, and the hit rate (hits / lookups) as a line on a 0–100 % axis.
//! Buckets without lookups break the line instead of dropping it to 0 %.

use std::fmt::Write as _;

use layercache_shared::api::StatsHistory;

use super::html::esc;

const W: f64 = 1100.0;
const H: f64 = 240.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 26.0;

/// The chart of `history`; `now` labels the axis relative to the present.
pub fn hit_rate_svg(history: &StatsHistory) -> String {
    let points = &history.points;
    let n = points.len().max(1) as f64;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let slot = plot_w / n;
    let max_volume = points
        .iter()
        .map(|p| p.hits + p.misses)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg id="hit-rate-chart" viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="hit rate over the last {}" xmlns="http://www.w3.org/2000/svg">"#,
        esc(&history.window)
    );
    // Grid and left axis (hit rate %).
    for pct in [0, 25, 50, 75, 100] {
        let y = TOP + plot_h * (1.0 - pct as f64 / 100.0);
        let _ = write!(
            o,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e6ec"/><text x="{}" y="{:.1}" text-anchor="end">{pct}%</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let _ = write!(
        o,
        r#"<text x="{}" y="12" text-anchor="end">bars: lookups per {}, busiest {}</text>"#,
        W - RIGHT,
        if history.bucket_seconds >= 3600 {
            "hour"
        } else {
            "minute"
        },
        max_volume as u64
    );
    // Bars.
    for (i, p) in points.iter().enumerate() {
        let x = LEFT + slot * i as f64 + slot * 0.15;
        let bw = (slot * 0.7).max(1.0);
        let hits_h = plot_h * p.hits as f64 / max_volume;
        let miss_h = plot_h * p.misses as f64 / max_volume;
        let base = TOP + plot_h;
        if p.misses > 0 {
            let _ = write!(
                o,
                r##"<rect x="{x:.1}" y="{:.1}" width="{bw:.1}" height="{miss_h:.1}" fill="#d9534f" opacity="0.35"><title>{} misses</title></rect>"##,
                base - miss_h,
                p.misses
            );
        }
        if p.hits > 0 {
            let _ = write!(
                o,
                r##"<rect x="{x:.1}" y="{:.1}" width="{bw:.1}" height="{hits_h:.1}" fill="#2f9e63" opacity="0.35"><title>{} hits</title></rect>"##,
                base - miss_h - hits_h,
                p.hits
            );
        }
    }
    // Hit-rate line, in segments over buckets that had lookups.
    let mut segment: Vec<String> = Vec::new();
    let flush = |segment: &mut Vec<String>, o: &mut String| {
        if segment.len() == 1 {
            let (x, y) = segment[0].split_once(',').unwrap_or(("0", "0"));
            let _ = write!(o, r##"<circle cx="{x}" cy="{y}" r="3" fill="#2f9e63"/>"##);
        } else if segment.len() > 1 {
            let _ = write!(
                o,
                r##"<polyline points="{}" fill="none" stroke="#2f9e63" stroke-width="2.5"/>"##,
                segment.join(" ")
            );
        }
        segment.clear();
    };
    for (i, p) in points.iter().enumerate() {
        let total = p.hits + p.misses;
        if total == 0 {
            flush(&mut segment, &mut o);
            continue;
        }
        let rate = p.hits as f64 / total as f64;
        let x = LEFT + slot * (i as f64 + 0.5);
        let y = TOP + plot_h * (1.0 - rate);
        segment.push(format!("{x:.1},{y:.1}"));
    }
    flush(&mut segment, &mut o);
    // Time axis: start, middle, now.
    let span = history.bucket_seconds * points.len() as u64;
    for (frac, anchor) in [(0.0, "start"), (0.5, "middle"), (1.0, "end")] {
        let ago = (span as f64 * (1.0 - frac)).round() as u64;
        let label = if ago == 0 {
            "now".to_string()
        } else if ago >= 3600 {
            format!("-{}h", ago / 3600)
        } else {
            format!("-{}m", ago / 60)
        };
        let x = LEFT + plot_w * frac;
        let _ = write!(
            o,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="{anchor}">{label}</text>"#,
            H - 8.0
        );
    }
    o.push_str("</svg>");
    o
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
        });
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 4);
        // Bucket 1 is empty: no single polyline spans all points.
        assert_eq!(svg.matches("<circle").count(), 1);
        assert_eq!(svg.matches("<polyline").count(), 1);
    }
}
