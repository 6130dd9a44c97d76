//! Backup of an LVM thin LV (`lvm:VG/LV`): the LVM source around the generic pipeline.

use std::sync::Arc;

use serde::Serialize;

use super::{ArchiveKind, BackupError, BackupOptions, BackupReport, Base, backup_from, locked};
use crate::lvm::{LvName, PoolLimits};
use crate::progress::Progress;
use crate::repo::{Repository, VolumeCatalog, new_archive_id};
use crate::source::consistent::{Consistency, HookEnv};
use crate::source::lvm::{
    BaseState, LvmPlan, LvmSourceError, ThinarcSnapshot, block_size_for_chunk, snapshot_name,
};

/// Backs up the thin LV `name` as a new point of `opts.volume`.
///
/// A full backup reads only the chunks mapped in the snapshot; a delta reads the
/// chunks `thin_delta` reports against the base snapshot. With no trustworthy base the
/// run falls back to a full scan against the latest archive's digests and says so in
/// the report's warnings.
///
/// The volume's lock is held throughout, as by [`super::backup`].
///
/// # Errors
/// [`BackupError`] ([`BackupError::Lock`] when another run holds the volume); nothing
/// is committed, the new snapshot is removed and the old base is kept.
pub async fn backup_lvm(
    repo: &Repository,
    name: &LvName,
    opts: &BackupOptions,
    limits: PoolLimits,
    progress: Arc<Progress>,
) -> Result<BackupReport, BackupError> {
    let source = format!("lvm:{name}");
    let work = backup_lvm_locked(repo, name, opts, limits, progress);
    locked(repo, &opts.volume, &source, work).await
}

/// [`backup_lvm`] under the volume's lock.
async fn backup_lvm_locked(
    repo: &Repository,
    name: &LvName,
    opts: &BackupOptions,
    limits: PoolLimits,
    progress: Arc<Progress>,
) -> Result<BackupReport, BackupError> {
    let base = Base::for_backup(repo, &opts.volume, opts.full, opts.state_dir.as_deref()).await?;
    // The LVM commands block briefly; they run inline so that an interrupted run
    // unwinds through the snapshot guards before the process exits.
    let plan = LvmPlan::inspect(name, base.tip())?;
    let mut warnings = Vec::new();
    if let BaseState::Untrusted { reason } = &plan.base {
        warnings.push(format!(
            "not using the base snapshot: {reason}; reading the whole snapshot and comparing with the latest archive's digests (correct, but slower)"
        ));
    }
    let mut opts = opts.clone();
    if base.tip().is_none() && opts.block_size.is_none() {
        opts.block_size = Some(crate::format::BlockSize::new(block_size_for_chunk(
            plan.pool.chunk_size,
        ))?);
    }
    let archive_id = new_archive_id();
    // The pool is checked before the pre-command, so that a full pool does not
    // quiesce the application for nothing.
    plan.check_pool(limits).map_err(LvmSourceError::from)?;
    let env = HookEnv {
        volume: opts.volume.to_string(),
        source: format!("lvm:{name}"),
        snapshot: format!(
            "{}/{}",
            name.vg,
            snapshot_name(&name.lv, archive_id.as_str())
        ),
    };
    let after = opts.hooks.before(&env).await?;
    let quiesced = after.quiesced();
    // The post-command runs once the snapshot exists or its creation failed (`after`
    // is dropped on error): not after the upload.
    let prepared = plan.prepare(&archive_id, limits, opts.freeze.as_ref(), after);
    let (mut prepared, post_warning) = prepared?;
    warnings.extend(post_warning);
    let consistency = if quiesced || prepared.frozen {
        Consistency::Application
    } else {
        Consistency::Crash
    };
    opts.archive_id = Some(archive_id);
    opts.lvm = Some(prepared.record.clone());
    opts.changed_blocks = prepared.changed.clone().map(Into::into);
    let source = prepared.take_source();
    let mut report = backup_from(repo, base, source, &opts, progress).await?;
    warnings.extend(prepared.committed());
    warnings.append(&mut report.warnings);
    report.warnings = warnings;
    report.consistency = consistency;
    Ok(report)
}

/// What `backup lvm:VG/LV --dry-run` found and would do.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    /// The LV.
    pub lv: String,
    /// Its pool.
    pub pool: String,
    /// Pool data usage, percent.
    pub pool_data_percent: Option<f64>,
    /// Pool metadata usage, percent.
    pub pool_metadata_percent: Option<f64>,
    /// Why the run would be refused, if it would.
    pub pool_problem: Option<String>,
    /// A metadata snapshot is reserved on the pool (the run would release it).
    pub metadata_snapshot_reserved: bool,
    /// thinarc snapshots the run would remove.
    pub strays: Vec<String>,
    /// Every thinarc snapshot of the LV and its role.
    pub snapshots: Vec<ThinarcSnapshot>,
    /// What the run would write: `full`, or `delta` (of the changed chunks, or of a
    /// scan against the latest archive's digests when the base cannot be trusted).
    pub kind: ArchiveKind,
    /// What the run would do.
    pub action: String,
    /// The snapshot the run would create (the name's last part depends on the new
    /// archive id).
    pub snapshot: String,
}

/// Inspects what `backup_lvm` would do, creating nothing, from `catalog` (the
/// volume's: see [`super::dry_run`], which reads no index either).
///
/// # Errors
/// [`BackupError`].
pub async fn dry_run_lvm(
    repo: &Repository,
    catalog: VolumeCatalog,
    name: &LvName,
    opts: &BackupOptions,
    limits: PoolLimits,
) -> Result<DryRun, BackupError> {
    let state_dir = opts.state_dir.as_deref();
    let base = Base::planned(repo, &opts.volume, catalog, opts.full, state_dir).await?;
    let plan = LvmPlan::inspect(name, base.tip())?;
    let snapshots = plan.snapshots();
    let kind = match &plan.base {
        BaseState::NewVolume => ArchiveKind::Full,
        BaseState::Trusted { .. } | BaseState::Untrusted { .. } => ArchiveKind::Delta,
    };
    let action = match &plan.base {
        BaseState::NewVolume => format!(
            "full backup of the chunks mapped in a new snapshot (block size {})",
            opts.block_size
                .map_or(block_size_for_chunk(plan.pool.chunk_size), |b| b.get())
        ),
        BaseState::Trusted { snapshot, .. } => format!(
            "delta of the chunks thin_delta reports changed since snapshot {}/{}",
            name.vg, snapshot.lv_name
        ),
        BaseState::Untrusted { reason } => {
            format!("full scan against the latest archive's digests: {reason}")
        }
    };
    Ok(DryRun {
        lv: name.to_string(),
        pool: plan.pool_name(),
        pool_data_percent: plan.pool.data_percent,
        pool_metadata_percent: plan.pool.metadata_percent,
        pool_problem: plan.check_pool(limits).err().map(|e| e.to_string()),
        metadata_snapshot_reserved: plan.pool_status.held_metadata_root.is_some(),
        strays: snapshots
            .iter()
            .filter(|s| !s.base)
            .map(|s| s.name.clone())
            .collect(),
        snapshots,
        kind,
        action,
        snapshot: format!("{}/{}", name.vg, snapshot_name(&name.lv, "<archive id>")),
    })
}
