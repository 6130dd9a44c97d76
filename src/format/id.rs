//! Archive ids (FORMAT.md 5.1 and 15) as a type, and the id prefixes that name a
//! point on the command line.

use serde::{Deserialize, Serialize};

/// An archive id (FORMAT.md 5.1, 15): 32 lowercase hex digits, checked where it enters
/// (a commit marker, an archive object name, a damage record, a command line) and
/// carried typed from there. Serialized as the string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ArchiveId(String);

/// A string that is not an archive id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("archive {} is not 32 lowercase hex digits", crate::quote::excerpt(.0))]
pub struct InvalidArchiveId(pub String);

impl ArchiveId {
    /// Checks an archive id: exactly 32 lowercase hex digits (as writers write it: a
    /// flipped byte that turns a letter upper case is damage, not another spelling).
    ///
    /// # Errors
    /// [`InvalidArchiveId`] quoting the string.
    pub fn parse(s: &str) -> Result<Self, InvalidArchiveId> {
        if s.len() == 32 && s.bytes().all(is_lower_hex) {
            Ok(ArchiveId(s.to_string()))
        } else {
            Err(InvalidArchiveId(s.to_string()))
        }
    }

    /// The 32 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_lower_hex(c: u8) -> bool {
    c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
}

impl TryFrom<String> for ArchiveId {
    type Error = InvalidArchiveId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        ArchiveId::parse(&s)
    }
}

impl From<ArchiveId> for String {
    fn from(id: ArchiveId) -> String {
        id.0
    }
}

impl std::str::FromStr for ArchiveId {
    type Err = InvalidArchiveId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ArchiveId::parse(s)
    }
}

impl std::fmt::Display for ArchiveId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for ArchiveId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<String> for ArchiveId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

/// The start of an archive id that names a point on the command line (`--at 3f9c2a`):
/// 6 to 32 hex digits, either case as typed, kept lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveIdPrefix(String);

impl ArchiveIdPrefix {
    /// Checks a prefix: 6 to 32 hex digits; `None` otherwise.
    pub fn parse(s: &str) -> Option<Self> {
        ((6..=32).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_hexdigit()))
            .then(|| ArchiveIdPrefix(s.to_ascii_lowercase()))
    }

    /// Whether `id` starts with this prefix.
    pub fn matches(&self, id: &ArchiveId) -> bool {
        id.0.starts_with(&self.0)
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn archive_ids() {
        let id = ArchiveId::parse("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(id.to_string(), "0123456789abcdef0123456789abcdef");
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"0123456789abcdef0123456789abcdef\""
        );
        for bad in [
            "",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcdeg",
        ] {
            assert_eq!(
                ArchiveId::parse(bad).unwrap_err().to_string(),
                format!("archive {bad:?} is not 32 lowercase hex digits")
            );
            assert!(serde_json::from_str::<ArchiveId>(&format!("{bad:?}")).is_err());
        }
        let prefix = ArchiveIdPrefix::parse("0123AB").unwrap();
        assert!(!prefix.matches(&id));
        assert!(ArchiveIdPrefix::parse("012345").unwrap().matches(&id));
        for bad in ["01234", "012345x", &"0".repeat(33)] {
            assert_eq!(ArchiveIdPrefix::parse(bad), None, "{bad}");
        }
    }

    proptest! {
        /// Every id prints and serializes back to itself; each of its prefixes of 6 or
        /// more digits, in either case, matches it.
        #[test]
        fn ids_round_trip(digits in "[0-9a-f]{32}", cut in 6usize..=32) {
            let id = ArchiveId::parse(&digits).unwrap();
            prop_assert_eq!(ArchiveId::parse(id.as_str()).unwrap(), id.clone());
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<ArchiveId>(&json).unwrap(), id.clone());
            let prefix = ArchiveIdPrefix::parse(&id.as_str()[..cut].to_ascii_uppercase()).unwrap();
            prop_assert!(prefix.matches(&id));
        }
    }
}
