//! Thinning a volume's history: the retention policy, merging chains, and prune.
//!
//! [`merge`] synthesizes the archive of one point from a segment of its chain (used by
//! prune, and by consolidated copies into another repository).

mod merge;

pub use merge::{MergeError, MergeOptions, MergeReport, merge};
