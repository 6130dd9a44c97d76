//! `VG/LV` names as a user writes them (`lvm:VG/LV`), checked by LVM's own naming rules
//! (lvm(8), "VALID NAMES") when they enter, so a name LVM would refuse is refused at
//! once, naming the rule, instead of when a command runs.

/// Longest VG or LV name LVM accepts (`NAME_LEN` - 1).
pub const MAX_NAME_LEN: usize = 127;

/// Prefixes LVM reserves for LV names.
const RESERVED_PREFIXES: [&str; 2] = ["snapshot", "pvmove"];

/// Strings an LV name must not contain: the suffixes of LVM's internal LVs.
const RESERVED_PARTS: [&str; 16] = [
    "_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_iorig", "_mimage", "_mlog", "_pmspare",
    "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig",
];

/// A `VG/LV` pair, as given on the command line or in the config (`lvm:VG/LV`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvName {
    /// Volume group.
    pub vg: String,
    /// Logical volume.
    pub lv: String,
}

/// Which half of a `VG/LV` name broke a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamePart {
    /// The volume group.
    Vg,
    /// The logical volume.
    Lv,
}

impl std::fmt::Display for NamePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NamePart::Vg => "VG",
            NamePart::Lv => "LV",
        })
    }
}

/// The LVM naming rule a name breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameRule {
    /// Longer than [`MAX_NAME_LEN`].
    #[error("is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    /// Starts with `-`.
    #[error("starts with '-'")]
    LeadingHyphen,
    /// Holds a character other than `a-z A-Z 0-9 + _ . -`.
    #[error("contains {0:?}: only letters, digits and + _ . - are allowed")]
    Character(char),
    /// `.` or `..`.
    #[error("is reserved")]
    Dots,
    /// Starts with `snapshot` or `pvmove`.
    #[error("starts with {0:?}, which LVM reserves")]
    ReservedPrefix(&'static str),
    /// Contains the suffix of an internal LV (`_tdata`, `_rimage`...).
    #[error("contains {0:?}, which LVM reserves for its internal LVs")]
    ReservedPart(&'static str),
}

/// Why a `VG/LV` name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LvNameError {
    /// Not two non-empty names joined by one `/`.
    #[error("{} is not VG/LV", crate::quote::excerpt(.0))]
    Shape(String),
    /// A name LVM does not allow.
    #[error("{part} name {} {rule} (lvm(8), VALID NAMES)", crate::quote::excerpt(.name))]
    Invalid {
        /// VG or LV.
        part: NamePart,
        /// The name as given.
        name: String,
        /// The rule it breaks.
        rule: NameRule,
    },
}

impl LvName {
    /// Parses `VG/LV` (the part after `lvm:`), checking both names by lvm(8)'s rules:
    /// at most 127 characters of `a-z A-Z 0-9 + _ . -`, no leading `-`, not `.` or
    /// `..`; an LV name also does not start with `snapshot` or `pvmove` nor contain the
    /// suffix of an internal LV (`_tdata`, `_tmeta`, `_rimage`...).
    ///
    /// # Errors
    /// [`LvNameError`] naming the part and the rule it breaks.
    pub fn parse(s: &str) -> Result<Self, LvNameError> {
        let (vg, lv) = match s.split_once('/') {
            Some((vg, lv)) if !vg.is_empty() && !lv.is_empty() && !lv.contains('/') => (vg, lv),
            _ => return Err(LvNameError::Shape(s.to_string())),
        };
        check(NamePart::Vg, vg)?;
        check(NamePart::Lv, lv)?;
        Ok(LvName {
            vg: vg.into(),
            lv: lv.into(),
        })
    }

    /// The device node `/dev/VG/LV`.
    pub fn dev_path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/dev/{}/{}", self.vg, self.lv))
    }
}

/// Checks one LV name (a thin pool's, `--pool POOL`) by the rules of [`LvName::parse`].
///
/// # Errors
/// [`LvNameError`] naming the rule it breaks; an empty name is not `VG/LV`'s shape.
pub fn check_lv_name(name: &str) -> Result<(), LvNameError> {
    if name.is_empty() {
        return Err(LvNameError::Shape(name.to_string()));
    }
    check(NamePart::Lv, name)
}

/// Checks the non-empty `name` of a `part` by lvm(8)'s rules.
fn check(part: NamePart, name: &str) -> Result<(), LvNameError> {
    match broken_rule(part, name) {
        Some(rule) => Err(LvNameError::Invalid {
            part,
            name: name.to_string(),
            rule,
        }),
        None => Ok(()),
    }
}

/// The first rule of lvm(8) that the non-empty `name` breaks, if any.
pub(super) fn broken_rule(part: NamePart, name: &str) -> Option<NameRule> {
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "+_.-".contains(c)))
    {
        return Some(NameRule::Character(c));
    }
    if name.len() > MAX_NAME_LEN {
        return Some(NameRule::TooLong);
    }
    if name.starts_with('-') {
        return Some(NameRule::LeadingHyphen);
    }
    if name == "." || name == ".." {
        return Some(NameRule::Dots);
    }
    if part == NamePart::Lv {
        if let Some(p) = RESERVED_PREFIXES.iter().find(|p| name.starts_with(*p)) {
            return Some(NameRule::ReservedPrefix(p));
        }
        if let Some(p) = RESERVED_PARTS.iter().find(|p| name.contains(*p)) {
            return Some(NameRule::ReservedPart(p));
        }
    }
    None
}

impl std::fmt::Display for LvName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.vg, self.lv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lv_names() {
        let n = LvName::parse("vg0/web-1").unwrap();
        assert_eq!((n.vg.as_str(), n.lv.as_str()), ("vg0", "web-1"));
        assert_eq!(n.dev_path(), std::path::Path::new("/dev/vg0/web-1"));
        assert_eq!(n.to_string(), "vg0/web-1");
        for ok in [
            "vg_0/a+b.c_d-e",
            "vg/my_snapshot",
            "vg/lv_tdat",
            "vg/snapshoT",
        ] {
            assert!(LvName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn every_rule_is_named() {
        let long = "x".repeat(128);
        for (given, message) in [
            ("vg0", "\"vg0\" is not VG/LV"),
            ("/lv", "\"/lv\" is not VG/LV"),
            ("vg/", "\"vg/\" is not VG/LV"),
            ("vg/a/b", "\"vg/a/b\" is not VG/LV"),
            (
                "vg0/-web",
                "LV name \"-web\" starts with '-' (lvm(8), VALID NAMES)",
            ),
            (
                "-vg/web",
                "VG name \"-vg\" starts with '-' (lvm(8), VALID NAMES)",
            ),
            (
                "vg/a b",
                "LV name \"a b\" contains ' ': only letters, digits and + _ . - are allowed (lvm(8), VALID NAMES)",
            ),
            (
                "vg/wéb",
                "LV name \"wéb\" contains 'é': only letters, digits and + _ . - are allowed (lvm(8), VALID NAMES)",
            ),
            ("../web", "VG name \"..\" is reserved (lvm(8), VALID NAMES)"),
            ("vg/.", "LV name \".\" is reserved (lvm(8), VALID NAMES)"),
            (
                "vg/snapshot1",
                "LV name \"snapshot1\" starts with \"snapshot\", which LVM reserves (lvm(8), VALID NAMES)",
            ),
            (
                "vg/pvmove0",
                "LV name \"pvmove0\" starts with \"pvmove\", which LVM reserves (lvm(8), VALID NAMES)",
            ),
            (
                "vg/pool_tdata",
                "LV name \"pool_tdata\" contains \"_tdata\", which LVM reserves for its internal LVs (lvm(8), VALID NAMES)",
            ),
        ] {
            assert_eq!(LvName::parse(given).unwrap_err().to_string(), message);
        }
        assert_eq!(
            LvName::parse(&format!("vg/{long}"))
                .unwrap_err()
                .to_string(),
            format!(
                "LV name \"{}\"... (128 bytes) is longer than 127 characters (lvm(8), VALID NAMES)",
                &long[..60]
            )
        );
        for part in RESERVED_PARTS {
            let e = LvName::parse(&format!("vg/a{part}b")).unwrap_err();
            assert!(
                matches!(e, LvNameError::Invalid { rule: NameRule::ReservedPart(p), .. } if p == part),
                "{e}"
            );
        }
    }

    proptest! {
        /// A `VG/LV` of allowed characters parses (and prints back unchanged) exactly
        /// when both names keep lvm(8)'s rules.
        #[test]
        fn parse_agrees_with_the_rules(vg in "[a-zA-Z0-9+_.-]{1,130}", lv in "[a-zA-Z0-9+_.-]{1,130}") {
            let given = format!("{vg}/{lv}");
            let name_ok = |n: &str| n.len() <= 127 && !n.starts_with('-') && n != "." && n != "..";
            let ok = name_ok(&vg)
                && name_ok(&lv)
                && !lv.starts_with("snapshot")
                && !lv.starts_with("pvmove")
                && RESERVED_PARTS.iter().all(|p| !lv.contains(p));
            match LvName::parse(&given) {
                Ok(n) => {
                    prop_assert!(ok);
                    prop_assert_eq!(n.to_string(), given);
                }
                Err(_) => prop_assert!(!ok),
            }
        }

        /// Any character outside LVM's set is refused and named.
        #[test]
        fn foreign_characters_are_refused(lv in "[a-z]{0,5}[^a-zA-Z0-9+_.\\-/][a-z]{0,5}") {
            let e = LvName::parse(&format!("vg/{lv}")).unwrap_err();
            let is_character = matches!(e, LvNameError::Invalid { part: NamePart::Lv, rule: NameRule::Character(_), .. });
            prop_assert!(is_character, "{}", e);
        }
    }
}
