//! Wrappers around the LVM (`lvs`, `lvcreate`, `lvchange`, `lvremove`), device-mapper
//! (`dmsetup`) and thin-provisioning-tools (`thin_delta`, `thin_dump`) commands, and
//! pure parsers of their output; and the one parser of `VG/LV` names as users write
//! them ([`LvName::parse`], by lvm(8)'s naming rules); and discovery, the thin LVs a
//! pattern (`VG/GLOB`, `VG/POOL/GLOB`) selects, never thinarc's own ([`LvPattern`]).
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
mod discover;
mod dm;
mod health;
mod lvs;
mod metasnap;
mod name;
mod thin;

pub use cmd::{Lvm, NO_ARCHIVE, run_tool};
pub use discover::{LvGlob, LvPattern, PatternError, RESTORED_TAG, SNAPSHOT_TAG, made_by_thinarc};
pub use dm::{PoolMode, PoolStatus, dm_name, parse_pool_status};
pub use health::{PoolLimits, PoolProblem, check_pool};
pub use lvs::{LvInfo, parse_lvs};
pub use metasnap::{MetadataSnapshot, PoolLock};
pub use name::{LvName, LvNameError, MAX_NAME_LEN, NamePart, NameRule, check_lv_name};
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
