//! The changed-blocks file: byte ranges that changed since the last backup.
//!
//! Format: one range per line, `OFFSET LENGTH` in bytes (decimal, or hex with `0x`),
//! separated by spaces or tabs. Blank lines and lines starting with `#` are ignored.
//! Ranges may overlap and come in any order; they are widened to whole blocks.

use std::ops::Range;

/// A changed-blocks file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {detail}")]
pub struct ChangedBlocksError {
    /// The file.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub detail: String,
}

fn number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses a changed-blocks file into byte ranges. `file` names it in errors.
///
/// # Errors
/// [`ChangedBlocksError`] with the line number for a malformed line or a range that
/// overflows.
pub fn parse_changed_blocks(text: &str, file: &str) -> Result<Vec<Range<u64>>, ChangedBlocksError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |detail: String| ChangedBlocksError {
            file: file.to_string(),
            line: i + 1,
            detail,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [off, len] = fields[..] else {
            return Err(err(format!("expected `OFFSET LENGTH`, found {line:?}")));
        };
        let off = number(off).ok_or_else(|| err(format!("offset {off:?} is not a number")))?;
        let len = number(len).ok_or_else(|| err(format!("length {len:?} is not a number")))?;
        let end = off
            .checked_add(len)
            .ok_or_else(|| err(format!("range {off}+{len} overflows")))?;
        if len > 0 {
            out.push(off..end);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_comments_and_hex() {
        let r = parse_changed_blocks("# changed\n0 4096\n\n0x10000\t100\n  5 0\n", "f").unwrap();
        assert_eq!(r, vec![0..4096, 65536..65636]);
    }

    #[test]
    fn reports_line_of_bad_input() {
        let e = parse_changed_blocks("0 1\nabc 5\n", "cb.txt").unwrap_err();
        assert_eq!(e.to_string(), "cb.txt:2: offset \"abc\" is not a number");
        let e = parse_changed_blocks("1 2 3\n", "cb.txt").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cb.txt:1: expected `OFFSET LENGTH`, found \"1 2 3\""
        );
        let e = parse_changed_blocks("18446744073709551615 2\n", "cb.txt").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cb.txt:1: range 18446744073709551615+2 overflows"
        );
    }
}
