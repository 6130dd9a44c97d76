//! Wrappers around the LVM (`lvs`, `lvcreate`, `lvchange`, `lvremove`), device-mapper
//! (`dmsetup`) and thin-provisioning-tools (`thin_delta`, `thin_dump`) commands, and
//! pure parsers of their output.
//!
//! Every command asks for machine-readable output; a failed command is reported with
//! its argv, exit status and trimmed stderr. Parsers are pure functions tested on real
//! tool output. This module knows nothing of archives or repositories: the LVM source
//! (`crate::source::lvm`), the LV restore target (`crate::target`) and the commands
//! that name LVs use it.
//!
//! Tools floor (with `throttle`). Imports only `cleanup` and `quote`; must not import
//! `format`, `repo`, `source`, `target` nor anything else above it.

mod cmd;
mod dm;
mod health;
mod lvs;
mod metasnap;
mod thin;

pub use cmd::{Lvm, NO_ARCHIVE, run_tool};
pub use dm::{PoolMode, PoolStatus, dm_name, parse_pool_status};
pub use health::{PoolLimits, PoolProblem, check_pool};
pub use lvs::{LvInfo, parse_lvs};
pub use metasnap::{MetadataSnapshot, PoolLock};
pub use thin::{
    DeltaKind, DeltaRange, Mapped, ThinDelta, parse_thin_delta, parse_thin_dump, thin_delta,
    thin_dump_mapped,
};

/// Why an LVM or thin-provisioning command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LvmError {
    /// The program could not be started.
    #[error("cannot run {program}: {source} (is {package} installed?)")]
    Spawn {
        program: String,
        package: &'static str,
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("`{argv}` failed ({status}): {stderr}")]
    Command {
        argv: String,
        status: String,
        stderr: String,
    },
    /// The output could not be understood.
    #[error("cannot parse the output of {what}: {detail}")]
    Parse { what: String, detail: String },
    /// An LV is not what the operation needs.
    #[error("{0}")]
    Unusable(String),
}

impl LvmError {
    pub(crate) fn parse(what: impl Into<String>, detail: impl Into<String>) -> Self {
        LvmError::Parse {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// A `VG/LV` pair, as given on the command line (`lvm:VG/LV`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvName {
    /// Volume group.
    pub vg: String,
    /// Logical volume.
    pub lv: String,
}

impl LvName {
    /// Parses `VG/LV` (the part after `lvm:`).
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let valid = |n: &str| {
            !n.is_empty()
                && !n.starts_with('-')
                && n.len() <= 127
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b))
        };
        match s.split_once('/') {
            Some((vg, lv)) if valid(vg) && valid(lv) => Ok(LvName {
                vg: vg.into(),
                lv: lv.into(),
            }),
            _ => Err(format!(
                "{s:?} is not VG/LV (names of letters, digits and + _ . -)"
            )),
        }
    }

    /// The device node `/dev/VG/LV`.
    pub fn dev_path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/dev/{}/{}", self.vg, self.lv))
    }
}

impl std::fmt::Display for LvName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.vg, self.lv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lv_names() {
        let n = LvName::parse("vg0/web-1").unwrap();
        assert_eq!((n.vg.as_str(), n.lv.as_str()), ("vg0", "web-1"));
        assert_eq!(n.dev_path(), std::path::Path::new("/dev/vg0/web-1"));
        assert_eq!(n.to_string(), "vg0/web-1");
        for bad in ["vg0", "/lv", "vg/", "vg/a/b", "vg/-x", "vg/a b"] {
            assert!(LvName::parse(bad).is_err(), "{bad}");
        }
    }
}
