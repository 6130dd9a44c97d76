//! Restore onto an LV (`lvm:VG/LV`): find or create it, restore as onto a block device
//! (a new thin LV gets only its data blocks), then read it back.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{RestoreError, RestoreOptions, RestoreReport, restore_chain, target_image_digest};
use crate::lvm::LvName;
use crate::progress::Progress;
use crate::repo::{Repository, VolumeName};
use crate::target::lv::{LvTarget, LvTargetOptions};

/// The result of a restore onto an LV.
#[derive(Debug, Clone, Serialize)]
pub struct LvRestoreReport {
    /// The restore.
    #[serde(flatten)]
    pub restore: RestoreReport,
    /// The LV's device.
    pub device: String,
    /// Whether zero blocks were skipped (a new thin LV).
    pub sparse: bool,
    /// Whether the LV was read back and its image digest checked.
    pub read_back: bool,
}

/// Restores the point `opts.at` of `volume` onto the LV `name`.
///
/// # Errors
/// [`RestoreError`]; an LV created for the restore is removed again.
pub async fn restore_to_lv(
    repo: &Repository,
    volume: &VolumeName,
    name: &LvName,
    target: &LvTargetOptions,
    opts: &RestoreOptions,
    readback: bool,
    progress: Arc<Progress>,
) -> Result<LvRestoreReport, RestoreError> {
    let started = Instant::now();
    repo.read_key("restore")?;
    let commits = repo.existing_commits(volume).await?;
    let chain = repo.resolve(&commits, &opts.at).await?;
    let geometry = chain.tip().geometry();
    let digester = chain.tip().digester().clone();
    let lv = LvTarget::prepare(name, geometry.size(), geometry.block_size().get(), target)?;
    let mut opts = opts.clone();
    opts.fresh_target = lv.fresh;
    let mut report = restore_chain(
        repo,
        &commits,
        chain,
        &lv.path,
        &opts,
        progress.clone(),
        started,
    )
    .await?;
    if readback {
        let seq = report.seq;
        let actual = target_image_digest(
            &lv.path,
            (geometry, &digester),
            seq,
            opts.threads,
            &progress,
        )
        .await?
        .to_hex();
        if actual != report.image_digest {
            return Err(RestoreError::ReadbackMismatch {
                target: lv.path.display().to_string(),
                expected: report.image_digest,
                actual,
            });
        }
        report.image_verified = true;
    }
    let (device, sparse) = (lv.path.display().to_string(), lv.fresh);
    lv.keep();
    Ok(LvRestoreReport {
        restore: report,
        device,
        sparse,
        read_back: readback,
    })
}
