//! Thinning a volume's history: the retention policy, planning, and prune.
//!
//! - [`RetentionPolicy`] (pure) decides which points to keep, by restic's and Proxmox
//!   Backup Server's rules; [`RetentionSpec`] is a retention as written (prune's
//!   options, a config's table), checked into a [`Retention`] in one place;
//! - [`plan`] (pure) decides which kept points' archives are rewritten, onto which
//!   parent, merging which dropped points;
//! - [`prune`] runs it all on a volume in a crash-safe order, rewriting archives with
//!   the merge engine of [`crate::point::merge`].
//!
//! Commands floor. Imports only `format`, `point` and `repo`; must not read sources or
//! write restore targets (`source`, `target`), nor import another command module
//! (`backup`, `restore`, `verify`, `copy`, `status`), `config` or `cli`.

mod execute;
mod plan;
mod policy;

pub use execute::{PointReport, PruneError, PruneOptions, PruneReport, prune};
pub use plan::{Node, Plan, PointPlan, Rewrite, plan};
pub use policy::{
    Decision, PointTime, PolicyError, Retention, RetentionPolicy, RetentionSpec, Within,
};
