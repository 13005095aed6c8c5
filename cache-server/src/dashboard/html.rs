//! HTML building blocks: number formatting, stat cards, the page shell and its stylesheet.
//!
//! Pages are maud templates: every value spliced into one (`(value)`, text or attribute) is escaped
//! by the `html!` macro, so a namespace, key or tag holding `<script>` or `"onmouseover=` shows
//! as text. Nothing is inserted unescaped except the stylesheet below and the chart's SVG, which
//! is itself a maud template. [`seg`] percent-encodes names into URL path segments.

use layercache_shared::size;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

/// Seconds between automatic reloads of a page.
pub const REFRESH_SECONDS: u32 = 30;

/// Percent-encodes one URL path segment or query value (a `/` in a namespace becomes `%2F`).
pub fn seg(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// `1.5 MiB`-style sizes.
pub fn bytes(n: u64) -> String {
    size::human(n)
}

/// `2h 5m`-style durations: the two largest units humantime names, rounded to the second.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    let full = humantime::format_duration(std::time::Duration::from_secs(s)).to_string();
    full.split(' ').take(2).collect::<Vec<_>>().join(" ")
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
pub fn card(id: &str, label: &str, shown: &str, value: &str, note: &str) -> Markup {
    html! {
        div.card {
            div.label { (label) }
            div.value id=(id) data-value=(value) { (shown) }
            @if !note.is_empty() {
                div.note { (note) }
            }
        }
    }
}

/// The page shell: head with refresh and styles, a top bar, then `body`.
pub fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(REFRESH_SECONDS);
                meta name="viewport" content="width=device-width, initial-scale=1";
                link rel="icon" href="data:,";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    a.brand href="/" { "layercache" }
                    nav {
                        a href="/" { "Dashboard" }
                        a href="/metrics" { "Metrics" }
                        a href="/v1/stats" { "JSON" }
                    }
                }
                main { (body) }
                footer {
                    "Refreshes every " (REFRESH_SECONDS) "s · all data also at "
                    code { "/v1/*" } " and " code { "/metrics" }
                }
            }
        }
    }
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
    fn cards_escape_what_they_show() {
        let c = card(
            "x",
            "<b>",
            r#""onmouseover=alert(1)"#,
            r#"1" onclick="x"#,
            "",
        )
        .into_string();
        assert!(c.contains("&lt;b&gt;"), "{c}");
        assert!(c.contains(r#"data-value="1&quot; onclick=&quot;x""#), "{c}");
        assert!(!c.contains(r#"" onclick"#), "{c}");
        assert_eq!(seg("acme/web"), "acme%2Fweb");
    }

    #[test]
    fn numbers_are_formatted_for_people() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(duration(3725.0), "1h 2m");
        assert_eq!(duration(0.2), "0s");
        assert_eq!(ago(100, 160), "1m ago");
        assert_eq!(ago(0, 160), "never");
    }
}
