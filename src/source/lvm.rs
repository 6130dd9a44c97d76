//! Source `lvm:VG/LV`: a thin LV read through a thin snapshot, with the changed
//! blocks found in the pool's metadata.
//!
//! One run: [`LvmPlan::inspect`] looks at the LV, its pool and thinarc's snapshots of
//! it and decides whether the snapshot recorded by the last archive can be trusted as
//! the base (creating nothing); [`LvmPlan::prepare`] checks the pool, removes stray
//! snapshots, takes the new snapshot (tagged, read-only, activated), reserves the
//! pool's metadata snapshot just long enough to run `thin_delta` (or `thin_dump` for a
//! full backup) and opens the snapshot for reading. After the archive is committed,
//! [`PreparedLvm::committed`] keeps the new snapshot as the next base and removes the
//! old one; if the run fails or is interrupted, dropping [`PreparedLvm`] removes the
//! new snapshot and the old base stays.
//!
//! Snapshots are named `<LV>-thinarc-<first 12 digits of the archive id>` and carry
//! three tags: `thinarc`, `thinarc-origin-<LV uuid>` (finds a volume's snapshots even
//! if they were renamed) and `thinarc-archive-<archive id>` (which archive was read
//! from it: a snapshot whose archive is not the volume's latest is a stray).

use std::ops::Range;

use serde::Serialize;

use crate::format::{ArchiveId, Header, LvmSnapshot};
use crate::lvm::{
    LvInfo, LvName, Lvm, LvmError, MetadataSnapshot, NO_ARCHIVE, PoolLimits, PoolLock, PoolProblem,
    PoolStatus, check_pool, dm_name, parse_pool_status, run_tool, thin_delta, thin_dump_mapped,
};
use crate::source::consistent::{After, ConsistencyError, Freeze, Frozen};
use crate::source::{RawSource, SourceError};

/// Tag on every snapshot thinarc creates (discovery never selects an LV carrying it).
pub const TAG: &str = crate::lvm::SNAPSHOT_TAG;

/// Tag naming the origin LV (by uuid) of a thinarc snapshot.
pub fn origin_tag(lv_uuid: &str) -> String {
    format!("thinarc-origin-{lv_uuid}")
}

/// Tag naming the archive read from a thinarc snapshot.
pub fn archive_tag(archive_id: &str) -> String {
    format!("thinarc-archive-{archive_id}")
}

/// The snapshot name for a backup of `lv` into archive `archive_id`.
pub fn snapshot_name(lv: &str, archive_id: &str) -> String {
    let lv: String = lv.chars().take(100).collect();
    let id: String = archive_id.chars().take(12).collect();
    format!("{lv}-thinarc-{id}")
}

/// The archive block size for a new volume on a pool with `chunk` byte chunks: the
/// largest power of two dividing the chunk size (chunks are multiples of 64 KiB, not
/// always powers of two), clamped to 4 KiB ..= 16 MiB. Every chunk is then a whole
/// number of blocks, so a changed chunk never drags in a neighbour's blocks.
pub fn block_size_for_chunk(chunk: u64) -> u32 {
    if chunk == 0 {
        return crate::format::DEFAULT_BLOCK_SIZE;
    }
    (1u64 << chunk.trailing_zeros()).clamp(4 << 10, 16 << 20) as u32
}

/// Why the LVM source cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LvmSourceError {
    /// An LVM or thin tool failed.
    #[error(transparent)]
    Lvm(#[from] LvmError),
    /// The pool is too full or unhealthy; nothing was created.
    #[error("{0}; nothing was created")]
    Pool(#[from] PoolProblem),
    /// The LV does not exist.
    #[error("LV {0} not found (lvs lists the LVs)")]
    NotFound(String),
    /// The LV is not a thin LV.
    #[error(
        "LV {lv} is not a thin LV (segment type {segtype}): the lvm: source needs a thin LV; back up /dev/{lv} as a device instead"
    )]
    NotThin { lv: String, segtype: String },
    /// The pool is not active.
    #[error("thin pool {pool} is not active ({detail}): activate it (lvchange -ay) first")]
    PoolInactive { pool: String, detail: String },
    /// No trustworthy base snapshot to read (verify `--source lvm:VG/LV`).
    #[error(
        "the thinarc snapshot of lvm:{lv} cannot be compared with the latest point: {reason}; the next backup of lvm:{lv} takes a new one"
    )]
    NoBase { lv: String, reason: String },
    /// The snapshot could not be opened.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The freeze is refused or failed (and is required); nothing was created.
    #[error(transparent)]
    Consistency(#[from] ConsistencyError),
}

/// A thinarc snapshot of an LV and its role (`status`, `backup --dry-run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThinarcSnapshot {
    /// `VG/NAME`.
    pub name: String,
    /// The archive read from it (its `thinarc-archive-` tag).
    pub archive: Option<String>,
    /// Whether it is the current base: the latest archive was read from it, it is
    /// intact, and the next backup's delta starts from it. Otherwise it is a stray
    /// (left by an interrupted run, or no longer trustworthy) that the next backup
    /// removes.
    pub base: bool,
}

/// Whether the base snapshot recorded by the last archive can be used for a delta.
#[derive(Debug, Clone)]
pub enum BaseState {
    /// The volume has no archive yet: full backup of the mapped chunks.
    NewVolume,
    /// The snapshot is intact: changed chunks from `thin_delta`.
    Trusted {
        /// The snapshot LV.
        snapshot: Box<LvInfo>,
        /// Its thin id.
        thin_id: u64,
    },
    /// The snapshot cannot be trusted: full scan against the last archive's digests.
    Untrusted {
        /// Why.
        reason: String,
    },
}

/// What a run finds before creating anything.
#[derive(Debug, Clone)]
pub struct LvmPlan {
    /// The LV.
    pub name: LvName,
    /// The LV as `lvs` reports it.
    pub origin: LvInfo,
    /// Its pool.
    pub pool: LvInfo,
    /// The pool's kernel status.
    pub pool_status: PoolStatus,
    /// The base for this run.
    pub base: BaseState,
    /// thinarc snapshots of this LV other than a trusted base: removed by the run.
    pub strays: Vec<LvInfo>,
}

impl LvmPlan {
    /// Inspects `name`, its pool and its thinarc snapshots against `last`, the header
    /// of the volume's latest archive. Creates and changes nothing.
    ///
    /// # Errors
    /// [`LvmSourceError`].
    pub fn inspect(name: &LvName, last: Option<&Header>) -> Result<Self, LvmSourceError> {
        let lvs = Lvm.lvs(&[&name.vg])?;
        let origin = lvs
            .iter()
            .find(|l| l.lv_name == name.lv)
            .cloned()
            .ok_or_else(|| LvmSourceError::NotFound(name.to_string()))?;
        if origin.segtype != "thin" {
            return Err(LvmSourceError::NotThin {
                lv: name.to_string(),
                segtype: origin.segtype.clone(),
            });
        }
        let pool = lvs
            .iter()
            .find(|l| l.lv_name == origin.pool_lv)
            .cloned()
            .ok_or_else(|| LvmSourceError::NotFound(format!("{}/{}", name.vg, origin.pool_lv)))?;
        let tpool = format!("{}-tpool", dm_name(&name.vg, &pool.lv_name));
        let status =
            run_tool("dmsetup", &["status", &tpool]).map_err(|e| LvmSourceError::PoolInactive {
                pool: format!("{}/{}", name.vg, pool.lv_name),
                detail: e.to_string(),
            })?;
        let pool_status = parse_pool_status(&status)?;
        let tagged: Vec<&LvInfo> = lvs
            .iter()
            .filter(|l| l.has_tag(TAG) && l.has_tag(&origin_tag(&origin.lv_uuid)))
            .collect();
        let base = judge_base(name, &origin, &pool, &lvs, last);
        let keep = match &base {
            BaseState::Trusted { snapshot, .. } => Some(snapshot.lv_uuid.clone()),
            _ => None,
        };
        let strays = tagged
            .into_iter()
            .filter(|l| Some(&l.lv_uuid) != keep.as_ref())
            .cloned()
            .collect();
        Ok(LvmPlan {
            name: name.clone(),
            origin,
            pool,
            pool_status,
            base,
            strays,
        })
    }

    /// Every thinarc snapshot of the LV: the trusted base first (the next backup's
    /// delta starts from it), then the strays (the next backup removes them).
    pub fn snapshots(&self) -> Vec<ThinarcSnapshot> {
        let base = match &self.base {
            BaseState::Trusted { snapshot, .. } => Some(snapshot.as_ref()),
            _ => None,
        };
        let entry = |lv: &LvInfo, is_base: bool| ThinarcSnapshot {
            name: format!("{}/{}", self.name.vg, lv.lv_name),
            archive: lv
                .tags
                .iter()
                .find_map(|t| t.strip_prefix("thinarc-archive-"))
                .map(str::to_string),
            base: is_base,
        };
        base.map(|b| entry(b, true))
            .into_iter()
            .chain(self.strays.iter().map(|s| entry(s, false)))
            .collect()
    }

    /// The pool as `VG/POOL`.
    pub fn pool_name(&self) -> String {
        format!("{}/{}", self.name.vg, self.pool.lv_name)
    }

    /// Checks the pool's usage and health.
    ///
    /// # Errors
    /// [`PoolProblem`].
    pub fn check_pool(&self, limits: PoolLimits) -> Result<(), PoolProblem> {
        check_pool(&self.pool, &self.pool_status, limits)
    }

    /// Checks the pool, removes strays, takes and opens the new snapshot for archive
    /// `archive_id` (with `freeze` around `lvcreate` only, and `after`'s post-command
    /// run once the snapshot exists or its creation failed), and finds what to read.
    /// Returns the post-command's failure as a warning.
    ///
    /// # Errors
    /// [`LvmSourceError`]; anything created is removed again, and anything frozen
    /// thawed.
    pub fn prepare(
        self,
        archive_id: &ArchiveId,
        limits: PoolLimits,
        freeze: Option<&Freeze>,
        after: After,
    ) -> Result<(PreparedLvm, Option<String>), LvmSourceError> {
        self.check_pool(limits)?;
        let vg = &self.name.vg;
        let mut warnings = Vec::new();
        for s in &self.strays {
            let what = format!("{vg}/{}", s.lv_name);
            match remove_snapshot(vg, &s.lv_name) {
                Ok(()) => warnings.push(format!(
                    "removed thinarc snapshot {what}: left by an interrupted run or no longer the base"
                )),
                Err(e) => warnings.push(format!("could not remove stray thinarc snapshot {what}: {e}")),
            }
        }
        let snap_name = snapshot_name(&self.name.lv, archive_id.as_str());
        let (t_origin, t_archive) = (
            origin_tag(&self.origin.lv_uuid),
            archive_tag(archive_id.as_str()),
        );
        let frozen = match freeze {
            Some(f) => {
                let origin = format!("/dev/mapper/{}", dm_name(vg, &self.name.lv));
                f.check(&self.name.to_string(), std::path::Path::new(&origin))?;
                f.freeze(&mut warnings)?
            }
            None => None,
        };
        let created = Lvm.run(
            "lvcreate",
            &[
                "--config",
                NO_ARCHIVE,
                "-s",
                "-n",
                &snap_name,
                "-p",
                "r",
                "--addtag",
                TAG,
                "--addtag",
                &t_origin,
                "--addtag",
                &t_archive,
                &self.name.to_string(),
            ],
        );
        let frozen = match frozen.map(Frozen::thaw) {
            Some(Ok(())) => true,
            Some(Err(w)) => {
                warnings.push(w);
                false
            }
            None => false,
        };
        let post_warning = after.finish(created.is_ok());
        created?;
        let guard = SnapshotGuard {
            vg: vg.clone(),
            name: snap_name.clone(),
            keep: false,
        };
        let snap_lv = format!("{vg}/{snap_name}");
        let dev = activate_snapshot(vg, &snap_name)?;
        let snap = Lvm
            .lv(&LvName {
                vg: vg.clone(),
                lv: snap_name.clone(),
            })?
            .ok_or_else(|| LvmSourceError::NotFound(snap_lv.clone()))?;
        let thin_id = snap.thin_id.ok_or_else(|| {
            LvmError::Unusable(format!(
                "lvs reports no thin id for the new snapshot {snap_lv}"
            ))
        })?;
        let size = self.origin.size;
        let (changed, unmapped) = self.read_metadata(thin_id, size, &mut warnings)?;
        let source = RawSource::open(&dev)?.with_unmapped(unmapped);
        let old_base = match &self.base {
            BaseState::Trusted { snapshot, .. } => Some(snapshot.lv_name.clone()),
            _ => None,
        };
        let prepared = PreparedLvm {
            frozen,
            source: Some(source),
            changed,
            record: LvmSnapshot {
                vg: vg.clone(),
                lv: self.name.lv.clone(),
                lv_uuid: self.origin.lv_uuid.clone(),
                pool: self.pool.lv_name.clone(),
                snapshot: snap_name,
                snapshot_uuid: snap.lv_uuid,
                thin_id,
                chunk_size: self.pool.chunk_size,
            },
            warnings,
            old_base,
            guard,
        };
        Ok((prepared, post_warning))
    }

    /// Under the pool lock: releases a metadata snapshot left reserved by a killed run,
    /// reserves one, and reads the changed chunks (trusted base) or the mapped chunks
    /// of the new snapshot. Returns the changed byte ranges (for a delta) and the byte
    /// ranges that read as zero.
    #[allow(clippy::type_complexity)]
    fn read_metadata(
        &self,
        thin_id: u64,
        size: u64,
        warnings: &mut Vec<String>,
    ) -> Result<(Option<Vec<Range<u64>>>, Vec<Range<u64>>), LvmSourceError> {
        let pool_dm = dm_name(&self.name.vg, &self.pool.lv_name);
        let tpool = format!("{pool_dm}-tpool");
        let meta = format!(
            "/dev/mapper/{}",
            dm_name(&self.name.vg, &format!("{}_tmeta", self.pool.lv_name))
        );
        let _lock = PoolLock::acquire(&pool_dm)?;
        let status = parse_pool_status(&run_tool("dmsetup", &["status", &tpool])?)?;
        if let Some(root) = status.held_metadata_root {
            MetadataSnapshot::release_stale(&tpool)?;
            warnings.push(format!(
                "released a metadata snapshot (root {root}) left reserved on pool {} by an interrupted run",
                self.pool_name()
            ));
        }
        let held = MetadataSnapshot::reserve(&tpool)?;
        let result = match &self.base {
            BaseState::Trusted { thin_id: old, .. } => thin_delta(&meta, *old, thin_id)
                .map(|d| (Some(d.changed_bytes()), d.unmapped_bytes())),
            _ => thin_dump_mapped(&meta, thin_id).map(|m| (None, m.unmapped_bytes(size))),
        };
        held.release()?;
        Ok(result?)
    }
}

/// Decides whether the snapshot recorded in `last` is a base to trust.
fn judge_base(
    name: &LvName,
    origin: &LvInfo,
    pool: &LvInfo,
    lvs: &[LvInfo],
    last: Option<&Header>,
) -> BaseState {
    let Some(last) = last else {
        return BaseState::NewVolume;
    };
    let untrusted = |reason: String| BaseState::Untrusted { reason };
    let Some(rec) = &last.lvm else {
        return untrusted(format!(
            "the latest archive {} was not read from an LVM snapshot",
            last.archive_id
        ));
    };
    let snap_name = format!("{}/{}", rec.vg, rec.snapshot);
    if rec.vg != name.vg || rec.lv_uuid != origin.lv_uuid {
        return untrusted(format!(
            "the latest archive was read from LV {}/{} (uuid {}), not {name} (uuid {})",
            rec.vg, rec.lv, rec.lv_uuid, origin.lv_uuid
        ));
    }
    let Some(snap) = lvs.iter().find(|l| l.lv_name == rec.snapshot) else {
        return untrusted(format!("its base snapshot {snap_name} is missing"));
    };
    if snap.lv_uuid != rec.snapshot_uuid {
        return untrusted(format!(
            "{snap_name} has uuid {}, the latest archive recorded {}",
            snap.lv_uuid, rec.snapshot_uuid
        ));
    }
    if snap.thin_id != Some(rec.thin_id) || snap.pool_lv != pool.lv_name || rec.pool != pool.lv_name
    {
        return untrusted(format!(
            "{snap_name} has thin id {:?} in pool {}, the latest archive recorded {} in pool {}",
            snap.thin_id, snap.pool_lv, rec.thin_id, rec.pool
        ));
    }
    if !read_for(snap, rec, last) {
        return untrusted(format!(
            "{snap_name} is not tagged {}",
            archive_tag(&last.archive_id)
        ));
    }
    if snap.is_writable() {
        return untrusted(format!(
            "{snap_name} was made writable, so it may have changed"
        ));
    }
    BaseState::Trusted {
        snapshot: Box::new(snap.clone()),
        thin_id: rec.thin_id,
    }
}

/// Whether `snap` is the snapshot the point of `last` was read from: it carries the
/// archive tag of `last`, or `last` is a merged archive (`source.kind` `"archive"`,
/// written by a prune in this repository) that replaced the archive read from it by
/// another archive of the same point and kept its `lvm` record. The snapshot then
/// carries the replaced archive's tag, whose id it is named after. (Copies into
/// another repository do not keep the record, FORMAT.md 5.1.)
fn read_for(snap: &LvInfo, rec: &LvmSnapshot, last: &Header) -> bool {
    if snap.has_tag(&archive_tag(&last.archive_id)) {
        return true;
    }
    last.source.kind == "archive"
        && snap.tags.iter().any(|t| {
            t.strip_prefix(archive_tag("").as_str())
                .is_some_and(|id| snapshot_name(&rec.lv, id) == rec.snapshot)
        })
}

/// The volume's base snapshot (the one its latest archive was read from), activated
/// for reading: verify `--source lvm:VG/LV` compares it with the latest point.
/// Deactivated again when dropped, unless it was active before.
#[derive(Debug)]
pub struct ActiveBase {
    vg: String,
    name: String,
    was_active: bool,
}

impl ActiveBase {
    /// Finds the base snapshot `last` (the header of the volume's latest archive)
    /// records, checks it as a backup does before trusting it for a delta (same LV,
    /// snapshot uuid, thin id and archive tag, still read-only), activates it and
    /// opens it.
    ///
    /// # Errors
    /// [`LvmSourceError::NoBase`] when the snapshot is missing or changed; others when
    /// LVM fails.
    pub fn open(name: &LvName, last: &Header) -> Result<(Self, RawSource), LvmSourceError> {
        let plan = LvmPlan::inspect(name, Some(last))?;
        let snap = match plan.base {
            BaseState::Trusted { snapshot, .. } => snapshot,
            BaseState::Untrusted { reason } => {
                return Err(LvmSourceError::NoBase {
                    lv: name.to_string(),
                    reason,
                });
            }
            BaseState::NewVolume => {
                return Err(LvmSourceError::NoBase {
                    lv: name.to_string(),
                    reason: "the volume has no archive".into(),
                });
            }
        };
        let dev = activate_snapshot(&name.vg, &snap.lv_name)?;
        let active = ActiveBase {
            vg: name.vg.clone(),
            name: snap.lv_name.clone(),
            was_active: snap.is_active(),
        };
        let source = RawSource::open(&dev)?;
        Ok((active, source))
    }

    /// The snapshot as `VG/NAME`.
    pub fn snapshot(&self) -> String {
        format!("{}/{}", self.vg, self.name)
    }
}

impl Drop for ActiveBase {
    fn drop(&mut self) {
        let _cleanup = crate::cleanup::guard();
        if !self.was_active
            && let Err(e) = deactivate_snapshot(&self.vg, &self.name)
        {
            eprintln!(
                "warning: deactivating snapshot {}/{} failed: {e}",
                self.vg, self.name
            );
        }
    }
}

/// Activates a thinarc snapshot (created read-only; `-K`: thin snapshots skip
/// activation by default) and returns its device path.
fn activate_snapshot(vg: &str, name: &str) -> Result<std::path::PathBuf, LvmError> {
    Lvm.run(
        "lvchange",
        &["--config", NO_ARCHIVE, "-ay", "-K", &format!("{vg}/{name}")],
    )?;
    Ok(std::path::PathBuf::from(format!(
        "/dev/mapper/{}",
        dm_name(vg, name)
    )))
}

/// Deactivates a thinarc snapshot: a kept base stays inactive between runs.
fn deactivate_snapshot(vg: &str, name: &str) -> Result<(), LvmError> {
    Lvm.run(
        "lvchange",
        &["--config", NO_ARCHIVE, "-an", &format!("{vg}/{name}")],
    )
}

/// thinarc's snapshots, among `lvs`, of the LV whose uuid is `lv_uuid` (tagged
/// `thinarc` and `thinarc-origin-<uuid>`), whether that LV still exists or not.
pub fn snapshots_of<'a>(lvs: &'a [LvInfo], lv_uuid: &str) -> Vec<&'a LvInfo> {
    let origin = origin_tag(lv_uuid);
    lvs.iter()
        .filter(|l| l.has_tag(TAG) && l.has_tag(&origin))
        .collect()
}

/// Removes a thinarc snapshot (active or not).
///
/// # Errors
/// [`LvmError`] of `lvremove`.
pub fn remove_snapshot(vg: &str, name: &str) -> Result<(), LvmError> {
    Lvm.run(
        "lvremove",
        &["--config", NO_ARCHIVE, &format!("{vg}/{name}")],
    )
}

/// How long a dropped [`SnapshotGuard`] retries `lvremove` while the snapshot is
/// still open.
const REMOVE_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Removes the new snapshot when dropped, unless it was kept. Runs `lvremove`
/// synchronously: Drop cannot await, and an interrupted run unwinds through here
/// before the process exits. A run dropped mid-read (Ctrl-C, SIGTERM) may still have
/// a reader thread finishing its last read of the snapshot, which keeps it open for a
/// moment: `lvremove` is retried until it is closed (at most [`REMOVE_RETRY`]).
#[derive(Debug)]
struct SnapshotGuard {
    vg: String,
    name: String,
    keep: bool,
}

impl Drop for SnapshotGuard {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let _cleanup = crate::cleanup::guard();
        let started = std::time::Instant::now();
        let mut result = remove_snapshot(&self.vg, &self.name);
        let open = |r: &Result<(), LvmError>| {
            matches!(r, Err(LvmError::Command { stderr, .. })
                if stderr.contains("in use") || stderr.contains("open logical volume"))
        };
        while open(&result) && started.elapsed() < REMOVE_RETRY {
            std::thread::sleep(std::time::Duration::from_millis(200));
            result = remove_snapshot(&self.vg, &self.name);
        }
        if let Err(e) = result {
            eprintln!(
                "warning: removing snapshot {}/{} failed: {e}; the next run removes it",
                self.vg, self.name
            );
        }
    }
}

/// A snapshot taken and opened, and what to read from it.
#[derive(Debug)]
pub struct PreparedLvm {
    source: Option<RawSource>,
    /// Changed byte ranges against the base (`None`: read every mapped chunk).
    pub changed: Option<Vec<Range<u64>>>,
    /// What the archive header records.
    pub record: LvmSnapshot,
    /// Things done or found along the way, for the report.
    pub warnings: Vec<String>,
    /// Whether the file systems were frozen for the snapshot (and thawed in time).
    pub frozen: bool,
    old_base: Option<String>,
    guard: SnapshotGuard,
}

impl PreparedLvm {
    /// The opened snapshot (once).
    ///
    /// # Panics
    /// If taken twice.
    pub fn take_source(&mut self) -> RawSource {
        self.source.take().expect("source taken once")
    }

    /// The archive is committed: keeps the new snapshot (deactivated) as the next
    /// base and removes the old base. Returns warnings; the commit stands whatever
    /// happens here.
    pub fn committed(mut self) -> Vec<String> {
        self.guard.keep = true;
        self.source = None;
        let vg = self.guard.vg.clone();
        let mut warnings = std::mem::take(&mut self.warnings);
        if let Err(e) = deactivate_snapshot(&vg, &self.guard.name) {
            warnings.push(format!(
                "could not deactivate snapshot {vg}/{}: {e}",
                self.guard.name
            ));
        }
        if let Some(old) = &self.old_base
            && let Err(e) = remove_snapshot(&vg, old)
        {
            warnings.push(format!(
                "could not remove the previous base snapshot {vg}/{old}: {e}; the next run removes it"
            ));
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_size_follows_the_chunk_size() {
        assert_eq!(block_size_for_chunk(64 << 10), 64 << 10);
        assert_eq!(block_size_for_chunk(192 << 10), 64 << 10);
        assert_eq!(block_size_for_chunk(1 << 20), 1 << 20);
        assert_eq!(block_size_for_chunk(1 << 30), 16 << 20);
        assert_eq!(block_size_for_chunk(0), crate::format::DEFAULT_BLOCK_SIZE);
    }

    #[test]
    fn names_and_tags() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(snapshot_name("web", id), "web-thinarc-0123456789ab");
        assert_eq!(archive_tag(id), format!("thinarc-archive-{id}"));
        assert_eq!(origin_tag("rPA6P5-RfIj"), "thinarc-origin-rPA6P5-RfIj");
        assert_eq!(snapshot_name(&"x".repeat(127), id).len(), 100 + 21);
    }

    const READ: &str = "a0000000000000000000000000000001";

    /// The LV `vg0/web`, its pool, and the snapshot archive [`READ`] was read from.
    fn lvs() -> (LvName, LvInfo, LvInfo, LvInfo) {
        let name = LvName {
            vg: "vg0".into(),
            lv: "web".into(),
        };
        let origin = LvInfo {
            lv_name: "web".into(),
            lv_uuid: "origin-uuid".into(),
            segtype: "thin".into(),
            pool_lv: "pool".into(),
            ..LvInfo::default()
        };
        let pool = LvInfo {
            lv_name: "pool".into(),
            segtype: "thin-pool".into(),
            ..LvInfo::default()
        };
        let snap = LvInfo {
            lv_name: snapshot_name("web", READ),
            lv_uuid: "snap-uuid".into(),
            lv_attr: "Vri---tz-k".into(),
            segtype: "thin".into(),
            pool_lv: "pool".into(),
            thin_id: Some(7),
            tags: vec![TAG.into(), origin_tag("origin-uuid"), archive_tag(READ)],
            ..LvInfo::default()
        };
        (name, origin, pool, snap)
    }

    /// The header of an archive `id` made by `kind` carrying the record of the snapshot.
    fn last(id: &str, kind: &str) -> Header {
        let mut h = crate::format::test_header(1 << 20);
        h.archive_id = id.into();
        h.source.kind = kind.into();
        h.lvm = Some(LvmSnapshot {
            vg: "vg0".into(),
            lv: "web".into(),
            lv_uuid: "origin-uuid".into(),
            pool: "pool".into(),
            snapshot: snapshot_name("web", READ),
            snapshot_uuid: "snap-uuid".into(),
            thin_id: 7,
            chunk_size: 65536,
        });
        h
    }

    fn judge(snap: &LvInfo, last: &Header) -> Result<u64, String> {
        let (name, origin, pool, _) = lvs();
        let all = [origin.clone(), pool.clone(), snap.clone()];
        match judge_base(&name, &origin, &pool, &all, Some(last)) {
            BaseState::Trusted { snapshot, thin_id } => {
                assert_eq!(snapshot.lv_uuid, "snap-uuid");
                Ok(thin_id)
            }
            BaseState::Untrusted { reason } => Err(reason),
            BaseState::NewVolume => unreachable!("there is a last archive"),
        }
    }

    #[test]
    fn a_merged_archive_of_the_point_keeps_its_snapshot_as_base() {
        let (.., snap) = lvs();
        let merged = "b0000000000000000000000000000002";
        assert_eq!(judge(&snap, &last(READ, "lvm")), Ok(7));
        // A prune replaced the archive read from the snapshot by a merged one.
        assert_eq!(judge(&snap, &last(merged, "archive")), Ok(7));
        // Another archive that claims the record without being a merge is not trusted.
        let tag = format!(
            "web-thinarc-a00000000000 is not tagged {}",
            archive_tag(merged)
        );
        assert_eq!(
            judge(&snap, &last(merged, "lvm")),
            Err(format!("vg0/{tag}"))
        );
        // Nor a merge when the snapshot's archive tag is not the one it is named after.
        let retagged = LvInfo {
            tags: vec![TAG.into(), archive_tag("c0000000000000000000000000000003")],
            ..snap.clone()
        };
        assert_eq!(
            judge(&retagged, &last(merged, "archive")),
            Err(format!("vg0/{tag}"))
        );
        // The identity checks still apply to merged archives.
        let recreated = LvInfo {
            lv_uuid: "other-uuid".into(),
            ..snap.clone()
        };
        assert!(
            judge(&recreated, &last(merged, "archive"))
                .is_err_and(|r| r.contains("has uuid other-uuid"))
        );
        let writable = LvInfo {
            lv_attr: "Vwi---tz-k".into(),
            ..snap.clone()
        };
        assert!(judge(&writable, &last(merged, "archive")).is_err_and(|r| r.contains("writable")));
        // A merged archive without the record (a consolidated copy) is no base.
        let copied = Header {
            lvm: None,
            ..last(merged, "archive")
        };
        assert!(judge(&snap, &copied).is_err_and(|r| r.contains("not read from an LVM snapshot")));
    }
}
