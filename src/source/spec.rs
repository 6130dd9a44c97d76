//! What a user names as a source (`backup SOURCE`, `verify --source`, a config's
//! `source =`): an LVM thin LV written `lvm:VG/LV`, or a path to an image file or block
//! device. Parsed by one function, [`SourceSpec::parse`], wherever it enters.

use std::ffi::OsStr;
use std::path::PathBuf;

use crate::lvm::{LvName, LvNameError};

/// A source as named by the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// An image file or block device, by path.
    Path(PathBuf),
    /// A thin LV (`lvm:VG/LV`).
    Lvm(LvName),
}

/// Why a source name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceSpecError {
    /// Nothing was given.
    #[error("an empty source: use lvm:VG/LV or the path of a device or image file")]
    Empty,
    /// `lvm:` not followed by `VG/LV`.
    #[error("an LVM source is written lvm:VG/LV")]
    LvmShape,
    /// `lvm:VG/LV` with a name LVM does not allow.
    #[error("{0}")]
    LvName(LvNameError),
}

impl SourceSpec {
    /// Parses a source: `lvm:VG/LV` (both names checked by [`LvName::parse`]) or any
    /// other non-empty string as a path.
    ///
    /// # Errors
    /// [`SourceSpecError`] saying what is wrong.
    pub fn parse(s: impl AsRef<OsStr>) -> Result<Self, SourceSpecError> {
        let s = s.as_ref();
        if s.is_empty() {
            return Err(SourceSpecError::Empty);
        }
        match s.as_encoded_bytes().strip_prefix(b"lvm:") {
            // Names outside LVM's ASCII set are refused by LvName::parse, which names
            // the first foreign character.
            Some(_) => match LvName::parse(&s.to_string_lossy()["lvm:".len()..]) {
                Ok(lv) => Ok(SourceSpec::Lvm(lv)),
                Err(LvNameError::Shape(_)) => Err(SourceSpecError::LvmShape),
                Err(e) => Err(SourceSpecError::LvName(e)),
            },
            None => Ok(SourceSpec::Path(PathBuf::from(s))),
        }
    }

    /// The thin LV, for an `lvm:` source.
    pub fn lv(&self) -> Option<&LvName> {
        match self {
            SourceSpec::Lvm(lv) => Some(lv),
            SourceSpec::Path(_) => None,
        }
    }
}

impl std::str::FromStr for SourceSpec {
    type Err = SourceSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SourceSpec::parse(s)
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Path(p) => write!(f, "{}", p.display()),
            SourceSpec::Lvm(lv) => write!(f, "lvm:{lv}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::ffi::OsStrExt as _;

    #[test]
    fn sources() {
        assert_eq!(
            SourceSpec::parse("lvm:vg0/web").unwrap(),
            SourceSpec::Lvm(LvName::parse("vg0/web").unwrap())
        );
        assert_eq!(
            SourceSpec::parse("disk.img").unwrap(),
            SourceSpec::Path("disk.img".into())
        );
        // Not an LVM source: a relative path that happens to start with "lvm".
        assert_eq!(
            SourceSpec::parse("lvm/x").unwrap(),
            SourceSpec::Path("lvm/x".into())
        );
        let raw = OsStr::from_bytes(b"/srv/\xff.img");
        assert_eq!(
            SourceSpec::parse(raw).unwrap(),
            SourceSpec::Path(raw.into())
        );
        for (given, message) in [
            (
                "",
                "an empty source: use lvm:VG/LV or the path of a device or image file",
            ),
            ("lvm:", "an LVM source is written lvm:VG/LV"),
            ("lvm:web", "an LVM source is written lvm:VG/LV"),
            ("lvm:vg0/web/x", "an LVM source is written lvm:VG/LV"),
            (
                "lvm:vg0/-web",
                "LV name \"-web\" starts with '-' (lvm(8), VALID NAMES)",
            ),
        ] {
            assert_eq!(SourceSpec::parse(given).unwrap_err().to_string(), message);
        }
        let lvm_bytes = OsStr::from_bytes(b"lvm:vg/w\xffb");
        assert_eq!(
            SourceSpec::parse(lvm_bytes).unwrap_err().to_string(),
            "LV name \"w\u{fffd}b\" contains '\u{fffd}': only letters, digits and + _ . - are allowed (lvm(8), VALID NAMES)"
        );
    }

    proptest! {
        /// Whatever parses prints back as given.
        #[test]
        fn display_round_trips(s in "(lvm:)?[a-z./_-]{1,20}") {
            if let Ok(spec) = SourceSpec::parse(&s) {
                prop_assert_eq!(spec.to_string(), s);
            }
        }
    }
}
