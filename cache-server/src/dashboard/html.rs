//! HTML building blocks: escaping, number formatting, the page shell and its stylesheet.
//!
//! Pages are assembled as strings. Every value that comes from users (namespaces, keys, tags) goes
//! through [`esc`] (text and attributes) or [`seg`] (URL path segments) — nothing else is needed
//! since pages carry no script and no inline event handlers.

use std::fmt::Write as _;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

/// Seconds between automatic reloads of a page.
pub const REFRESH_SECONDS: u32 = 30;

/// Escapes text for HTML element content and double- or single-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes one URL path segment or query value (a `/` in a namespace becomes `%2F`).
pub fn seg(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// `1.5 MiB`-style sizes.
pub fn bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `2h 5m`-style durations.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `5m ago`-style age of Unix time `at` as seen at `now`.
pub fn ago(at: u64, now: u64) -> String {
    if at == 0 {
        return "never".into();
    }
    format!("{} ago", duration(now.saturating_sub(at) as f64))
}

/// A number with thousands separators.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or("?"))
        .collect();
    groups.join(",")
}

/// The first 12 hex digits of a digest, as `docker images` shows ids.
pub fn short(d: &layercache_shared::Digest) -> String {
    d.hex().chars().take(12).collect()
}

/// A stat card: a label, the value shown, and the exact value in `data-value` under a stable `id`
/// so tests and scrapers read numbers without parsing formatted text.
pub fn card(out: &mut String, id: &str, label: &str, shown: &str, value: &str, note: &str) {
    let _ = write!(
        out,
        r#"<div class="card"><div class="label">{}</div><div class="value" id="{}" data-value="{}">{}</div>"#,
        esc(label),
        esc(id),
        esc(value),
        esc(shown)
    );
    if !note.is_empty() {
        let _ = write!(out, r#"<div class="note">{}</div>"#, esc(note));
    }
    out.push_str("</div>");
}

/// The page shell: head with refresh and styles, a top bar, then `body`.
pub fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{STYLE}</style></head>
<body><header><a class="brand" href="/">layercache</a><nav><a href="/">Dashboard</a><a href="/metrics">Metrics</a><a href="/v1/stats">JSON</a></nav></header>
<main>{body}</main>
<footer>Refreshes every {REFRESH_SECONDS}s · all data also at <code>/v1/*</code> and <code>/metrics</code></footer>
</body></html>
"#,
        title = esc(title),
    )
}

/// Styles of every page: system fonts, cards in a grid, quiet tables.
const STYLE: &str = r#"
:root{--bg:#f5f6f8;--fg:#1d2430;--muted:#6b7485;--card:#fff;--line:#e3e6ec;--hit:#2f9e63;--miss:#d9534f;--accent:#3b6fd8}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{display:flex;align-items:center;gap:24px;padding:12px 28px;background:#1d2430;color:#fff}
header a{color:#cfd6e4;text-decoration:none;margin-right:16px}
header .brand{color:#fff;font-weight:700;font-size:17px;letter-spacing:.3px}
main{max-width:1220px;margin:0 auto;padding:20px 28px}
h1{font-size:20px;margin:4px 0 14px}h2{font-size:15px;margin:26px 0 10px;color:#39414f;text-transform:uppercase;letter-spacing:.6px}
h3{font-size:14px;margin:16px 0 6px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.card .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.5px}
.card .value{font-size:22px;font-weight:600;margin-top:2px;font-variant-numeric:tabular-nums}
.card .note{color:var(--muted);font-size:12px}
.panel{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 16px}
table{width:100%;border-collapse:collapse;background:var(--card);border:1px solid var(--line);border-radius:8px;overflow:hidden}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);font-variant-numeric:tabular-nums}
th{background:#eef0f4;font-weight:600;font-size:12px;color:#4a5262}
td.num,th.num{text-align:right}
tr:last-child td{border-bottom:0}
a{color:var(--accent)}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
form.filter{display:flex;gap:10px;align-items:center;margin:0 0 14px}
form.filter select,form.filter button{font:inherit;padding:4px 8px}
.bar{height:10px;background:#e6e9ef;border-radius:5px;overflow:hidden;margin-top:8px}
.bar span{display:block;height:100%;background:var(--accent)}
.muted{color:var(--muted)}
.tag{display:inline-block;background:#e8eefc;color:#2b4e9b;border-radius:4px;padding:0 6px;margin-right:4px;font-size:12px}
ul.tree{list-style:none;padding-left:22px;border-left:2px solid var(--line);margin:6px 0}
ul.tree.root{padding-left:0;border-left:0}
ul.tree li{margin:10px 0}
.child-of{font-size:12px;margin-bottom:2px}
.legend{font-size:12px;color:var(--muted);margin-top:4px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 12px;vertical-align:-1px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:16px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:18px}
svg text{font:11px system-ui,sans-serif;fill:#6b7485}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_quotes_are_escaped() {
        assert_eq!(
            esc(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
        assert_eq!(seg("acme/web"), "acme%2Fweb");
    }

    #[test]
    fn numbers_are_formatted_for_people() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(duration(3725.0), "1h 2m");
        assert_eq!(ago(100, 160), "1m 0s ago");
    }
}
