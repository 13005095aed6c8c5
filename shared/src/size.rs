//! Human sizes, in one place for the server and the runner: parsing `--max-size 10G` and compose
//! sizes (`64m`), and printing `1.5 MiB`. Both go through the bytesize crate; this module only
//! chooses which units a letter means.
//!
//! - [`parse`]: bytes, or a number with `KB`, `MB`, `GB`, `TB` (1000-based) or `KiB`, `MiB`,
//!   `GiB`, `TiB` (1024-based), case-insensitive; `K`, `M`, `G`, `T` alone are 1024-based, as
//!   `docker` and `du` read them.
//! - [`parse_binary`]: every unit 1024-based (`1gb` = 1 GiB), as the engine reads compose sizes.
//! - [`human`]: 1024-based with one decimal (`512 B`, `1.5 KiB`, `3.0 MiB`).

use bytesize::ByteSize;

/// Why a size was refused; the message gives the syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a size: give bytes, or a number with KB, MB, GB, TB (1000-based) or KiB, MiB, \
     GiB, TiB (1024-based), e.g. `200GiB`"
)]
pub struct SizeError(pub String);

/// Parses `200GiB`, `1.5 GB`, `1048576`, `10m` (see the module doc for the units).
pub fn parse(text: &str) -> Result<u64, SizeError> {
    parse_with(text, false)
}

/// Parses `64m`, `1gb`, `512000`: every unit 1024-based.
pub fn parse_binary(text: &str) -> Result<u64, SizeError> {
    parse_with(text, true)
}

fn parse_with(text: &str, all_binary: bool) -> Result<u64, SizeError> {
    let err = || SizeError(text.to_string());
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    // Only the letter (and, for compose, the `b` after it) decides the base; bytesize reads the
    // rest, `ki`/`kib` being 1024-based there and `k`/`kb` 1000-based.
    let unit = match unit.as_str() {
        "k" | "m" | "g" | "t" | "p" => format!("{unit}ib"),
        "kb" | "mb" | "gb" | "tb" | "pb" if all_binary => format!("{}ib", &unit[..1]),
        _ => unit,
    };
    if num.is_empty() || num.starts_with('.') {
        return Err(err());
    }
    let b: ByteSize = format!("{num} {unit}").trim().parse().map_err(|_| err())?;
    // bytesize saturates what does not fit in a u64.
    if b.as_u64() == u64::MAX {
        return Err(err());
    }
    Ok(b.as_u64())
}

/// `1.5 MiB`-style sizes: 1024-based units, one decimal; bytes as a whole number.
pub fn human(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_decimal_and_binary_units() {
        for (text, want) in [
            ("1048576", 1 << 20),
            ("200GiB", 200 << 30),
            ("200gib", 200 << 30),
            ("2 GB", 2_000_000_000),
            ("10kb", 10_000),
            ("10KiB", 10_240),
            ("3MB", 3_000_000),
            ("3MiB", 3 << 20),
            ("1.5GiB", 3 << 29),
            ("64b", 64),
            ("10G", 10 << 30),
            ("10m", 10 << 20),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn compose_sizes_are_binary() {
        assert_eq!(parse_binary("64m"), Ok(64 << 20));
        assert_eq!(parse_binary("1gb"), Ok(1 << 30));
        assert_eq!(parse_binary("512000"), Ok(512_000));
    }

    #[test]
    fn bad_sizes_are_refused_with_the_syntax() {
        for bad in ["", "GiB", "12 parsecs", "-5", "1.2.3GB", "99999999999TiB"] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().contains("200GiB"), "{bad}: {e}");
        }
    }

    #[test]
    fn human_sizes_pick_the_largest_fitting_unit() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 << 20), "5.0 MiB");
    }
}
