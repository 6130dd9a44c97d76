//! The changed-blocks file: byte ranges that changed since the last backup.
//!
//! Format: one range per line, `OFFSET LENGTH` in bytes (decimal, or hex with `0x`),
//! separated by spaces or tabs. Blank lines and lines starting with `#` are ignored.
//! Ranges may overlap and come in any order; they are widened to whole blocks.

use std::ops::Range;

use crate::quote::excerpt;

/// A changed-blocks file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {detail}")]
pub struct ChangedBlocksError {
    /// The file.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong (quoting at most an excerpt of the line).
    pub detail: String,
}

/// Byte ranges known to have changed, each remembering the line of the file it came
/// from, so that a range that does not fit the source is named by its line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangedBlocks {
    ranges: Vec<Range<u64>>,
    /// The file the ranges were read from, and each range's 1-based line.
    origin: Option<(String, Vec<usize>)>,
}

impl ChangedBlocks {
    /// The ranges, in the order given.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Where range `i` came from: `--changed-blocks FILE:LINE`, or `--changed-blocks`
    /// for ranges not read from a file.
    pub fn origin(&self, i: usize) -> String {
        match &self.origin {
            Some((file, lines)) => format!("--changed-blocks {file}:{}", lines[i]),
            None => "--changed-blocks".to_string(),
        }
    }
}

impl From<Vec<Range<u64>>> for ChangedBlocks {
    /// Ranges from elsewhere than a file (e.g. the thin pool's metadata).
    fn from(ranges: Vec<Range<u64>>) -> Self {
        ChangedBlocks {
            ranges,
            origin: None,
        }
    }
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
/// overflows; the line is quoted as a short excerpt.
pub fn parse_changed_blocks(text: &str, file: &str) -> Result<ChangedBlocks, ChangedBlocksError> {
    let mut ranges = Vec::new();
    let mut lines = Vec::new();
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
        let mut fields = line.split_whitespace();
        let (Some(off), Some(len), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(err(format!(
                "expected `OFFSET LENGTH`, found {}",
                excerpt(line)
            )));
        };
        let off =
            number(off).ok_or_else(|| err(format!("offset {} is not a number", excerpt(off))))?;
        let len =
            number(len).ok_or_else(|| err(format!("length {} is not a number", excerpt(len))))?;
        let end = off
            .checked_add(len)
            .ok_or_else(|| err(format!("range {off}+{len} overflows")))?;
        if len > 0 {
            ranges.push(off..end);
            lines.push(i + 1);
        }
    }
    Ok(ChangedBlocks {
        ranges,
        origin: Some((file.to_string(), lines)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_comments_and_hex() {
        let r = parse_changed_blocks("# changed\n0 4096\n\n0x10000\t100\n  5 0\n", "f").unwrap();
        assert_eq!(r.ranges(), &[0..4096, 65536..65636]);
        assert_eq!(r.origin(1), "--changed-blocks f:4");
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

    #[test]
    fn long_bad_lines_are_quoted_as_an_excerpt() {
        let long = "1".repeat(5_000_000);
        for (text, what) in [
            (format!("0 1\n\n{long}"), "expected `OFFSET LENGTH`, found"),
            (format!("0 1\n\n{long} 5"), "offset"),
            (format!("0 1\n\n5 {long}"), "length"),
        ] {
            let e = parse_changed_blocks(&text, "cb.txt")
                .unwrap_err()
                .to_string();
            assert!(e.len() < 200, "{} bytes", e.len());
            assert!(e.starts_with(&format!("cb.txt:3: {what} \"111")), "{e}");
            assert!(e.contains("\"... (5000000 bytes)"), "{e}");
        }
    }
}
