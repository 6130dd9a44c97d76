//! Thinning a volume's history: the retention policy, merging chains, and prune.
//!
//! - [`RetentionPolicy`] (pure) decides which points to keep, by restic's and Proxmox
//!   Backup Server's rules; [`RetentionSpec`] is a retention as written (prune's
//!   options, a config's table), checked into a [`Retention`] in one place;
//! - [`plan`] (pure) decides which kept points' archives are rewritten, onto which
//!   parent, merging which dropped points;
//! - [`merge`] synthesizes the archive of one point from a segment of its chain (used
//!   by prune, and by consolidated copies into another repository);
//! - [`prune`] runs it all on a volume in a crash-safe order.
//!
//! This module must not read sources or write restore targets.

mod execute;
mod plan;
mod policy;

pub use execute::{PointReport, PruneError, PruneOptions, PruneReport, prune};
pub use plan::{Node, Plan, PointPlan, Rewrite, plan};
pub use policy::{
    Decision, PointTime, PolicyError, Retention, RetentionPolicy, RetentionSpec, Within,
};
