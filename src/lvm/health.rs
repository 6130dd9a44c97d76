//! Pool health: whether a thin pool may take a snapshot.

use super::{LvInfo, PoolMode, PoolStatus};

/// Usage limits above which a pool is refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolLimits {
    /// Data usage limit, percent.
    pub max_data: f64,
    /// Metadata usage limit, percent.
    pub max_metadata: f64,
}

impl Default for PoolLimits {
    /// 90 % data, 80 % metadata: a snapshot of a busy volume keeps old chunks alive,
    /// and a pool that runs out of metadata space is much harder to repair than one
    /// out of data space.
    fn default() -> Self {
        PoolLimits {
            max_data: 90.0,
            max_metadata: 80.0,
        }
    }
}

/// Why a pool is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolProblem {
    /// Data usage above the limit.
    #[error(
        "thin pool {pool} data usage is {percent:.2}%, above the limit of {limit}% (--max-pool-data): extend the pool (lvextend) or free space first"
    )]
    DataFull {
        pool: String,
        percent: f64,
        limit: f64,
    },
    /// Metadata usage above the limit.
    #[error(
        "thin pool {pool} metadata usage is {percent:.2}%, above the limit of {limit}% (--max-pool-metadata): extend the metadata (lvextend --poolmetadatasize) first"
    )]
    MetadataFull {
        pool: String,
        percent: f64,
        limit: f64,
    },
    /// LVM reports the pool unhealthy.
    #[error("thin pool {pool} health is {health:?}: repair the pool (lvconvert --repair) first")]
    Unhealthy { pool: String, health: String },
    /// The kernel reports the pool failed, read-only or out of space, or needing a
    /// check.
    #[error("thin pool {pool} is {state} (dmsetup status): repair or extend the pool first")]
    BadState { pool: String, state: &'static str },
}

/// Checks a pool before any snapshot is taken.
///
/// # Errors
/// The first [`PoolProblem`] found.
pub fn check_pool(
    pool: &LvInfo,
    status: &PoolStatus,
    limits: PoolLimits,
) -> Result<(), PoolProblem> {
    let name = format!("{}/{}", pool.vg_name, pool.lv_name);
    let state = if status.failed {
        Some("failed")
    } else if status.needs_check {
        Some("flagged needs_check")
    } else {
        match status.mode {
            PoolMode::ReadWrite => None,
            PoolMode::ReadOnly => Some("read-only"),
            PoolMode::OutOfDataSpace => Some("out of data space"),
        }
    };
    if let Some(state) = state {
        return Err(PoolProblem::BadState { pool: name, state });
    }
    if !pool.health.is_empty() {
        return Err(PoolProblem::Unhealthy {
            pool: name,
            health: pool.health.clone(),
        });
    }
    let data = pool.data_percent.unwrap_or(0.0);
    if data > limits.max_data {
        return Err(PoolProblem::DataFull {
            pool: name,
            percent: data,
            limit: limits.max_data,
        });
    }
    let meta = pool.metadata_percent.unwrap_or(0.0);
    if meta > limits.max_metadata {
        return Err(PoolProblem::MetadataFull {
            pool: name,
            percent: meta,
            limit: limits.max_metadata,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(data: f64, meta: f64, health: &str) -> LvInfo {
        LvInfo {
            lv_name: "pool".into(),
            vg_name: "vg".into(),
            data_percent: Some(data),
            metadata_percent: Some(meta),
            health: health.into(),
            ..LvInfo::default()
        }
    }

    fn ok_status() -> PoolStatus {
        PoolStatus {
            failed: false,
            mode: PoolMode::ReadWrite,
            held_metadata_root: None,
            needs_check: false,
        }
    }

    #[test]
    fn thresholds_and_states() {
        let l = PoolLimits::default();
        assert_eq!(check_pool(&pool(90.0, 80.0, ""), &ok_status(), l), Ok(()));
        assert_eq!(
            check_pool(&pool(90.5, 1.0, ""), &ok_status(), l)
                .unwrap_err()
                .to_string(),
            "thin pool vg/pool data usage is 90.50%, above the limit of 90% (--max-pool-data): extend the pool (lvextend) or free space first"
        );
        assert_eq!(
            check_pool(&pool(1.0, 80.01, ""), &ok_status(), l)
                .unwrap_err()
                .to_string(),
            "thin pool vg/pool metadata usage is 80.01%, above the limit of 80% (--max-pool-metadata): extend the metadata (lvextend --poolmetadatasize) first"
        );
        assert_eq!(
            check_pool(&pool(1.0, 1.0, "out_of_data"), &ok_status(), l)
                .unwrap_err()
                .to_string(),
            "thin pool vg/pool health is \"out_of_data\": repair the pool (lvconvert --repair) first"
        );
        let ro = PoolStatus {
            mode: PoolMode::ReadOnly,
            ..ok_status()
        };
        assert_eq!(
            check_pool(&pool(1.0, 1.0, ""), &ro, l)
                .unwrap_err()
                .to_string(),
            "thin pool vg/pool is read-only (dmsetup status): repair or extend the pool first"
        );
        let nc = PoolStatus {
            needs_check: true,
            ..ok_status()
        };
        assert!(matches!(
            check_pool(&pool(1.0, 1.0, ""), &nc, l),
            Err(PoolProblem::BadState { .. })
        ));
        let strict = PoolLimits {
            max_data: 10.0,
            max_metadata: 5.0,
        };
        assert!(check_pool(&pool(11.0, 1.0, ""), &ok_status(), strict).is_err());
    }
}
