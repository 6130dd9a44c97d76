//! Sizes as people write them on the command line and in the config file
//! (`64K`, `1M`, `2GiB`). One parser, so the CLI, the config and rate limits agree.
//!
//! Ground floor. Imports only `quote`; must not import `throttle`, `config` or anything
//! else that uses it.

use crate::quote::excerpt;

/// Parses a byte size: a number with an optional `K`, `M`, `G` or `T` suffix (powers
/// of 1024; `KiB` etc. and a trailing `B` are accepted too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{} is not a size (e.g. 65536, 64K, 1M)", excerpt(s)))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches('B')
        .trim_end_matches('I')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => {
            return Err(format!(
                "{} has an unknown unit (use K, M, G or T)",
                excerpt(s)
            ));
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{} is too large", excerpt(s)))
}

/// Formats bytes for people: `512 B`, `1.5 KiB`, `3.0 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("K").is_err());
    }
}
