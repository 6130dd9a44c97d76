//! Quoting input in messages: a value the user gave (a line of a file, a config value,
//! an argument) is quoted in full when it is short, and as a short excerpt with its
//! length when it is not, so one bad 50 MB line cannot flood a log or a terminal.
//!
//! Ground floor. Imports nothing of the crate.

/// Characters of a long value that are quoted.
pub const EXCERPT_CHARS: usize = 60;

/// `value` quoted for a message: `"value"` (Rust string escaping) if it has at most
/// [`EXCERPT_CHARS`] characters, else its first [`EXCERPT_CHARS`] characters quoted
/// and followed by `... (N bytes)`.
pub fn excerpt(value: &str) -> String {
    match head(value) {
        None => format!("{value:?}"),
        Some(head) => format!("{head:?}... ({} bytes)", value.len()),
    }
}

/// The first [`EXCERPT_CHARS`] characters of `value`, if it is longer than that.
pub fn head(value: &str) -> Option<&str> {
    value
        .char_indices()
        .nth(EXCERPT_CHARS)
        .map(|(cut, _)| &value[..cut])
}

/// Characters of a message from another library (which may quote input in full)
/// that are kept when it is too long.
const MESSAGE_CHARS: usize = 240;

/// A message from another library that may quote input in full (a TOML parser's, for
/// example), cut to its first `MESSAGE_CHARS` (240) characters when it is longer.
pub fn bounded(message: &str) -> String {
    match message.char_indices().nth(MESSAGE_CHARS) {
        None => message.to_string(),
        Some((cut, _)) => format!("{}... ({} bytes)", &message[..cut], message.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole_and_long_ones_cut() {
        assert_eq!(excerpt("abc"), "\"abc\"");
        let exact = "x".repeat(EXCERPT_CHARS);
        assert_eq!(excerpt(&exact), format!("{exact:?}"));
        let long = "é".repeat(50_000);
        let e = excerpt(&long);
        assert_eq!(
            e,
            format!("{:?}... (100000 bytes)", "é".repeat(EXCERPT_CHARS))
        );
        assert_eq!(bounded("short"), "short");
        let cut = bounded(&"m".repeat(1000));
        assert_eq!(
            cut,
            format!("{}... (1000 bytes)", "m".repeat(MESSAGE_CHARS))
        );
    }
}
