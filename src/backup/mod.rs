//! The backup pipeline: read a source in block order, hash and compare each block with
//! the previous point, compress what changed, and stream one archive into the
//! repository.
//!
//! Stages: a reader thread fills batches of blocks; batches are hashed, compared and
//! compressed on the blocking pool, several at a time (both cores), and come back in
//! order to one task that feeds the sans-IO [`ArchiveWriter`] and the multipart upload.
//! Queues are bounded, so memory is a few batches plus a few upload parts whatever the
//! volume size. Nothing is committed unless every stage succeeded.
//!
//! The volume's lock is taken here: [`backup`] and [`backup_lvm`] hold it for the whole
//! run, so no caller can back up without it.
//!
//! Commands floor. Imports only `format`, `lvm`, `progress`, `repo`, `source` and
//! `throttle`; must not import `point`, `target`, another command module (`restore`,
//! `prune`, `verify`, `copy`, `status`), `config` or `cli`.

mod lvm;
mod process;
mod state;

pub use lvm::{DryRun, backup_lvm, dry_run_lvm};

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde::Serialize;

use crate::format::{
    ArchivePart, ArchiveWriter, BlockSize, Compression, DEFAULT_BLOCK_SIZE, DEFAULT_ZSTD_LEVEL,
    Digest, Digester, FRAME_BYTES, FormatError, Geometry, Header, ImageHasher, Keys, LvmSnapshot,
    ParentRef, SourceInfo, WriterKey,
};
use crate::progress::Progress;
use crate::repo::{
    ArchiveId, ArchiveUpload, Chain, ChainCursor, Commit, DamageKind, DamageRecord, DamageScope,
    LEFTOVER_GRACE, LockError, PointSelector, RemoteArchive, RepairScope, RepoError, Repository,
    VolumeCatalog, VolumeListing, VolumeLock, VolumeName, chain_damage, clock_went_back,
    new_archive_id, new_id,
};
use crate::source::consistent::{Consistency, ConsistencyError, Freeze, HookEnv, Hooks};
use crate::source::{
    BATCH_BYTES, ChangedBlocks, Planned, RawSource, ReadPlan, SourceError, batch_buffers,
    batches_in_flight, plan_batches,
};
use crate::throttle::RateLimiter;
use process::process_batch;
use state::{StateCursor, StateMeta, StateWriter};

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The volume to back up into.
    pub volume: VolumeName,
    /// Block size for a new volume (an existing volume keeps its own).
    pub block_size: Option<BlockSize>,
    /// Byte ranges known to have changed since the last backup: only these are read.
    pub changed_blocks: Option<ChangedBlocks>,
    /// zstd compression level.
    pub zstd_level: i32,
    /// Batches processed in parallel.
    pub threads: usize,
    /// Limit on source reads (bytes actually read per second).
    pub read_limit: Option<Arc<RateLimiter>>,
    /// The point's time recorded in the header (default: now). For imports and tests
    /// of time-based retention.
    pub created: Option<chrono::DateTime<chrono::Utc>>,
    /// The new archive's id, when the caller needs it before the backup (the LVM
    /// source tags its snapshot with it); a new id if `None`.
    pub archive_id: Option<ArchiveId>,
    /// The LVM thin snapshot being read: recorded in the header (key `lvm`), and the
    /// source is described as `lvm` at the origin LV's path.
    pub lvm: Option<LvmSnapshot>,
    /// Start a new chain: a full archive even when the volume has points.
    pub full: bool,
    /// The operator's commands around the snapshot (around the read for a file or
    /// device source).
    pub hooks: Hooks,
    /// The built-in freeze around the snapshot (`lvm:` sources only).
    pub freeze: Option<Freeze>,
    /// This host's state directory: a write-only host (writer key of an encrypted
    /// repository) keeps there the block digests of the last point it wrote, to write
    /// deltas on it (see `state.rs`). Without it, such a host writes fulls.
    pub state_dir: Option<PathBuf>,
}

impl BackupOptions {
    /// Defaults for `volume`: default block size and level, one worker per core.
    pub fn new(volume: VolumeName) -> Self {
        BackupOptions {
            volume,
            block_size: None,
            changed_blocks: None,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            read_limit: None,
            created: None,
            archive_id: None,
            lvm: None,
            full: false,
            hooks: Hooks::default(),
            freeze: None,
            state_dir: None,
        }
    }
}

/// Full or delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveKind {
    /// No parent: holds every block.
    Full,
    /// Holds the blocks that changed since its parent.
    Delta,
}

/// The result of a successful backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// Volume name.
    pub volume: String,
    /// Archive id.
    pub archive: ArchiveId,
    /// Sequence number.
    pub seq: u64,
    /// Full or delta.
    pub kind: ArchiveKind,
    /// Parent archive id.
    pub parent: Option<ArchiveId>,
    /// How changed blocks were found: `full`, `scan` or `changed-blocks`.
    pub method: String,
    /// Volume size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Blocks recorded in the archive (data and zero).
    pub blocks_changed: u64,
    /// Size of the archive object.
    pub stored_bytes: u64,
    /// Image digest of the new point.
    pub image_digest: String,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Leftovers of interrupted runs removed after the commit (archive objects, staging
    /// files, incomplete uploads).
    pub leftovers_removed: usize,
    /// `application` when a pre-snapshot command or a freeze quiesced the source for
    /// the snapshot (the read, for a file or device), else `crash`.
    pub consistency: Consistency,
    /// Problems after the commit that did not affect it.
    pub warnings: Vec<String>,
}

/// Why a backup failed. Nothing was committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The volume is locked by another run, or its lock was lost mid-run (see
    /// [`crate::repo::VolumeLock::guard`]).
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The LVM source failed (nothing was committed; a new snapshot was removed).
    #[error(transparent)]
    Lvm(#[from] crate::source::lvm::LvmSourceError),
    /// The pre-snapshot command failed, or a required freeze; nothing was created.
    #[error(transparent)]
    Consistency(#[from] ConsistencyError),
    /// The requested block size differs from the volume's.
    #[error("volume {volume} uses block size {stored}; --block-size {requested} cannot change it")]
    BlockSizeMismatch {
        volume: String,
        stored: u32,
        requested: u32,
    },
    /// `--changed-blocks` without a previous point to apply them to.
    #[error(
        "volume {volume} has no backup yet: --changed-blocks needs a previous point (run a full backup first)"
    )]
    NoParentForChangedBlocks { volume: String },
    /// A changed range lies past the end of the source: the list is probably for
    /// another device.
    #[error(
        "{origin}: range {offset}+{len} lies past the end of the source ({size} bytes): is the list for this source? nothing was read or committed"
    )]
    ChangedBlocksOutOfRange {
        /// `--changed-blocks FILE:LINE`.
        origin: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// The archive could not be built.
    #[error("building the archive: {0}")]
    Format(#[from] FormatError),
    /// A pipeline task died.
    #[error("backup task failed: {0}")]
    Task(String),
    /// A write-only host's state of the last point could not be read or written.
    #[error("state of the last point {path}: {source} (remove it: the next backup is then a full)")]
    State {
        path: String,
        source: std::io::Error,
    },
}

/// The point a backup builds on: the volume's commits, the chain of its latest point
/// (none for a new volume, or when a new chain must start), the seq of the new point,
/// and the blocks the parent takes from archives recorded damaged.
#[derive(Debug)]
struct Base {
    commits: Vec<Commit>,
    parent: Option<Chain>,
    seq: u64,
    /// A new chain of an existing volume: its volume id and block size, when the old
    /// tip could be read.
    restart: Option<(String, BlockSize)>,
    /// Blocks to store again whatever the change detection says.
    forced: BTreeSet<u64>,
    /// What the backup must tell (re-commits, a new chain and why, damaged blocks).
    warnings: Vec<String>,
    /// Damage found while choosing the parent, to be recorded.
    found: Option<DamageRecord>,
    /// A write-only host: the state file of the volume's last point (written after
    /// the commit), and whether `parent`'s digests are read from it.
    state: Option<(PathBuf, bool)>,
    /// A write-only host: the recorded damaged blocks the new point's chain holds
    /// again (see [`StateMeta::stored_again`]), for its state.
    stored_again: BTreeMap<String, Vec<u64>>,
    /// The volume's folder as listed for its catalog (damage records are read from
    /// it).
    listing: VolumeListing,
}

/// How far a parent lookup reads before it builds on the latest chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// A backup's: the chain's whole index too (the backup reads it anyway), so that
    /// an index damaged at rest starts a new chain now.
    Backup,
    /// A dry run's: the catalog (markers, headers and trailers, which the summary
    /// holds) and the damage records only, no index: an index damaged at rest and not
    /// yet recorded (by `verify` or a restore) is found by the backup itself.
    Plan,
}

impl Base {
    /// The latest point of `catalog`'s volume as a dry run sees it (see
    /// [`Lookup::Plan`]); `full` starts a new chain. Reads only.
    ///
    /// # Errors
    /// [`BackupError::Repo`] when the repository cannot be read.
    async fn planned(
        repo: &Repository,
        volume: &VolumeName,
        catalog: VolumeCatalog,
        full: bool,
        state_dir: Option<&std::path::Path>,
    ) -> Result<Self, BackupError> {
        Self::listed(repo, (volume, catalog), full, state_dir, Lookup::Plan).await
    }

    /// The latest point of `volume` from `catalog`, the volume's catalog as listed, as
    /// `lookup` sees it; `full` starts a new chain. Reads only.
    ///
    /// # Errors
    /// [`BackupError::Repo`] when the repository cannot be read.
    async fn listed(
        repo: &Repository,
        (volume, catalog): (&VolumeName, VolumeCatalog),
        full: bool,
        state_dir: Option<&std::path::Path>,
        lookup: Lookup,
    ) -> Result<Self, BackupError> {
        // A write-only host cannot read an archive's index: it keeps its own record
        // of the last point it wrote.
        let writer = match repo.keys() {
            Keys::Writer(w) if repo.is_encrypted() => Some(w.key_id()),
            _ => None,
        };
        let state =
            writer.and_then(|_| state_dir.map(|d| (state::state_path(d, repo, volume), false)));
        let listing = catalog.listing().clone();
        let mut base = Base {
            seq: catalog.next_seq(),
            commits: catalog.commits,
            parent: None,
            restart: None,
            forced: BTreeSet::new(),
            warnings: Vec::new(),
            found: None,
            state,
            stored_again: BTreeMap::new(),
            listing,
        };
        let Some(latest_seq) = base.commits.last().map(|c| c.seq) else {
            return Ok(base);
        };
        let why = if full {
            Some("--full was given".to_string())
        } else {
            match repo.resolve(&base.commits, &PointSelector::Latest).await {
                Ok(chain) => match writer {
                    Some(key) => base.writer_parent(repo, chain, key).await?,
                    None => match base.damage(repo, &chain, lookup).await? {
                        None => {
                            base.parent = Some(chain);
                            None
                        }
                        some => some,
                    },
                },
                Err(e @ RepoError::Store { .. }) => return Err(e.into()),
                Err(e) => Some(e.to_string()),
            }
        };
        if let Some(why) = why {
            // The new chain keeps the volume's id and block size, from its newest
            // archive that can be read.
            for c in base.commits.iter().rev() {
                if let Ok(a) = RemoteArchive::open(repo, c).await
                    && let Ok(g) = a.header.geometry()
                {
                    base.restart = Some((a.header.volume_id.clone(), g.block_size()));
                    break;
                }
            }
            if !full {
                base.warnings.push(format!(
                    "seq {latest_seq} cannot be built on ({why}): this backup writes a full archive starting a new chain"
                ));
            }
        }
        Ok(base)
    }

    /// The latest point of `volume` as a backup builds on it, after committing again the complete orphan archives
    /// above the newest committed seq (a lost newest marker), with a warning each.
    /// The caller holds the volume's lock.
    ///
    /// # Errors
    /// [`BackupError::Repo`].
    async fn for_backup(
        repo: &Repository,
        volume: &VolumeName,
        full: bool,
        state_dir: Option<&std::path::Path>,
    ) -> Result<Self, BackupError> {
        // Listed once: the repair returns the catalog it leaves.
        let catalog = repo.catalog(volume).await?;
        let (actions, catalog) = repo
            .repair_listed(volume, catalog, RepairScope::AboveNewest, false)
            .await?;
        let mut base =
            Self::listed(repo, (volume, catalog), full, state_dir, Lookup::Backup).await?;
        if let Some(r) = &base.found
            && let Err(e) = repo.write_damage(volume, r).await
        {
            base.warnings
                .push(format!("cannot write the damage record: {e}"));
        }
        let notes = actions.iter().map(|a| match a.action {
            "recommit" => format!(
                "seq {}: archive {} was complete but not committed (its commit marker was lost or corrupt): {}",
                a.seq, a.object, a.detail
            ),
            _ => format!(
                "seq {}: archive {} is complete but not committed, and was not committed again: {}",
                a.seq, a.object, a.detail
            ),
        });
        base.warnings.splice(0..0, notes);
        Ok(base)
    }

    /// A write-only host builds on `chain` when its state is that of the chain's tip
    /// and no archive of the chain is recorded damaged as a whole; else `Some(why)`.
    /// Blocks recorded damaged (damage records are clear JSON) are stored again, as a
    /// key holder's backup does, unless this host's state says the chain holds them
    /// again already. (It cannot read an index to tell whether the tip still takes a
    /// block from the damaged archive: it stores every recorded block once.)
    async fn writer_parent(
        &mut self,
        repo: &Repository,
        chain: Chain,
        key: crate::format::KeyId,
    ) -> Result<Option<String>, BackupError> {
        let Some((path, from_state)) = &mut self.state else {
            return Ok(Some(
                "this host holds only a writer key and has no state directory to keep the last point's digests in".into(),
            ));
        };
        let meta = match state::usable(path, &chain, key) {
            Ok(meta) => meta,
            Err(why) => return Ok(Some(why)),
        };
        let records = repo.damage_records_listed(&self.listing).await;
        let end = chain.tip().geometry().blocks();
        let mut stored_again = BTreeMap::new();
        let mut forced: Vec<(u64, &DamageRecord)> = Vec::new();
        for r in records.iter().filter(|r| {
            chain
                .archives
                .iter()
                .any(|a| a.commit.archive_id == r.archive)
        }) {
            if r.kind == DamageKind::Archive {
                return Ok(Some(format!(
                    "seq {} is recorded damaged ({})",
                    r.seq, r.detail
                )));
            }
            let done = meta.stored_again.get(r.archive.as_str());
            forced.extend(
                r.blocks
                    .iter()
                    .filter(|b| **b < end && !done.is_some_and(|d| d.contains(b)))
                    .map(|&b| (b, r)),
            );
            stored_again.insert(r.archive.to_string(), r.blocks.clone());
        }
        if let Some((first, _)) = forced.iter().min_by_key(|(b, _)| *b) {
            let mut archives: Vec<String> = forced
                .iter()
                .map(|(_, r)| format!("{} (seq {})", r.archive, r.seq))
                .collect();
            archives.dedup();
            self.warnings.push(format!(
                "seq {} depends on {} damaged block(s) of {}, first block {first}, as recorded: these blocks are read from the source and stored again",
                chain.tip().commit.seq,
                forced.len(),
                archives.join(", ")
            ));
            self.forced.extend(forced.iter().map(|(b, _)| *b));
        }
        self.stored_again = stored_again;
        *from_state = true;
        self.parent = Some(chain);
        Ok(None)
    }

    /// What the damage records (and, for a backup's `lookup`, the chain's index) say
    /// about `chain`: `Some(why)` when an archive of it is structurally damaged (a new
    /// chain must start); else the blocks its tip takes from damaged archives become
    /// forced.
    async fn damage(
        &mut self,
        repo: &Repository,
        chain: &Chain,
        lookup: Lookup,
    ) -> Result<Option<String>, BackupError> {
        // The whole index of the chain is read before it is built on (the backup reads
        // it again as it compares blocks): damage found there starts a new chain now
        // instead of failing this backup and every later one.
        let indexed = match lookup {
            Lookup::Backup => chain.archives.as_slice(),
            Lookup::Plan => &[],
        };
        for a in indexed {
            for i in 0..a.directory().len() {
                match a.segment(i).await {
                    Ok(_) => {}
                    Err(e @ RepoError::Store { .. }) => return Err(e.into()),
                    Err(e) => {
                        let c = &a.commit;
                        self.found = Some(DamageRecord::new(
                            &c.archive_id,
                            c.seq,
                            &c.object,
                            (DamageKind::Archive, DamageScope::Structure),
                            e.to_string(),
                            "backup",
                        ));
                        return Ok(Some(e.to_string()));
                    }
                }
            }
        }
        let records = repo.damage_records_listed(&self.listing).await;
        let damage = chain_damage(chain, &records).await?;
        if damage.archive.is_some() {
            return Ok(Some(damage.to_string()));
        }
        if !damage.blocks.is_empty() {
            self.warnings.push(format!(
                "seq {} depends on {damage}: these blocks are read from the source and stored again",
                chain.tip().commit.seq
            ));
            self.forced.extend(damage.blocks.iter().map(|b| b.0));
        }
        Ok(None)
    }

    /// The header of the latest point this backup builds on.
    fn tip(&self) -> Option<&Header> {
        self.parent.as_ref().map(|p| &p.tip().header)
    }
}

/// What a backup of a file or device source into `opts.volume` would write, and why,
/// from `catalog` (the volume's, as [`Repository::catalog`] or
/// [`Repository::catalog_listed`] gives it) and the damage records it lists: nothing
/// is read from the source, locked or written (`run --dry-run`), and the chain's index
/// is not read (a backup reads it, and starts a new chain if it finds it damaged).
///
/// # Errors
/// [`BackupError::Repo`] when the repository cannot be read.
pub async fn dry_run(
    repo: &Repository,
    catalog: VolumeCatalog,
    opts: &BackupOptions,
) -> Result<(ArchiveKind, String), BackupError> {
    let state_dir = opts.state_dir.as_deref();
    let base = Base::planned(repo, &opts.volume, catalog, opts.full, state_dir).await?;
    let latest = base.commits.last().map(|c| c.seq);
    Ok(match (&base.parent, latest) {
        (Some(_), Some(seq)) => (
            ArchiveKind::Delta,
            format!(
                "reads the whole source and stores the blocks whose digest differs from seq {seq}'s"
            ),
        ),
        (_, None) => (
            ArchiveKind::Full,
            "the volume has no point yet: reads the whole source".into(),
        ),
        (None, Some(_)) => (
            ArchiveKind::Full,
            base.warnings
                .last()
                .cloned()
                .unwrap_or_else(|| "a new chain starts".into()),
        ),
    })
}

/// Backs `source` up into `repo` as a new point of `opts.volume`: a full archive for a
/// new volume, else a delta against the latest point. Holds the volume's lock
/// throughout: a second backup of the volume gets [`LockError::Held`].
///
/// # Errors
/// [`BackupError`]; [`BackupError::Lock`] with [`LockError::Held`] when another run
/// holds the volume. Nothing is committed on error and the partial upload is aborted.
pub async fn backup(
    repo: &Repository,
    source: RawSource,
    opts: &BackupOptions,
    progress: Arc<Progress>,
) -> Result<BackupReport, BackupError> {
    let path = source.path().display().to_string();
    let env = HookEnv {
        volume: opts.volume.to_string(),
        source: path.clone(),
        snapshot: String::new(),
    };
    locked(repo, &opts.volume, &path, async {
        // No snapshot: the hooks run around the whole read.
        let after = opts.hooks.before(&env).await?;
        let base =
            Base::for_backup(repo, &opts.volume, opts.full, opts.state_dir.as_deref()).await?;
        let mut report = backup_from(repo, base, source, opts, progress).await;
        let quiesced = after.quiesced();
        let warning = after.finish(report.is_ok());
        if let Ok(report) = &mut report {
            if quiesced {
                report.consistency = Consistency::Application;
            }
            report.warnings.extend(warning);
        }
        report
    })
    .await
}

/// Runs the backup `work` of `source` on `volume` holding the volume's lock: a backup
/// cannot run without it. Stale locks broken to take it are logged as warnings at once
/// (the backup may still fail), then the start; if the lock is lost, `work` is dropped and
/// [`BackupError::Lock`] returned; a failed release is a warning of the report.
///
/// # Errors
/// [`BackupError::Lock`] when the lock cannot be taken or is lost, else `work`'s.
async fn locked(
    repo: &Repository,
    volume: &VolumeName,
    source: &str,
    work: impl Future<Output = Result<BackupReport, BackupError>>,
) -> Result<BackupReport, BackupError> {
    // An encrypted repository needs a key to write to, before any work.
    repo.write_key("backup")?;
    let lock = VolumeLock::acquire(repo, volume, "backup").await?;
    for w in lock.broken() {
        tracing::warn!("{w}");
    }
    tracing::info!(volume = %volume, source, "backup started");
    let result = lock.guard(work).await;
    let released = lock.release().await;
    let mut report = result?;
    if let Err(e) = released {
        report
            .warnings
            .push(format!("releasing the lock failed: {e}"));
    }
    Ok(report)
}

/// [`backup`] on a base the caller already looked up (and based its changed-block
/// list on), holding the volume's lock.
///
/// # Errors
/// [`BackupError`]; nothing is committed on error and the partial upload is aborted.
async fn backup_from(
    repo: &Repository,
    base: Base,
    source: RawSource,
    opts: &BackupOptions,
    progress: Arc<Progress>,
) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let volume = &opts.volume;
    let Base {
        commits,
        parent,
        seq,
        restart,
        forced,
        mut warnings,
        state,
        stored_again,
        ..
    } = base;
    let block_size = match (&parent, opts.block_size) {
        (Some(p), Some(req)) if p.tip().header.block_size != req.get() => {
            return Err(BackupError::BlockSizeMismatch {
                volume: volume.to_string(),
                stored: p.tip().header.block_size,
                requested: req.get(),
            });
        }
        (Some(p), _) => p.tip().geometry().block_size(),
        (None, req) => match (req, &restart) {
            (Some(req), _) => req,
            (None, Some((_, bs))) => *bs,
            (None, None) => BlockSize::new(DEFAULT_BLOCK_SIZE)?,
        },
    };
    let geometry = Geometry::new(source.size(), block_size);
    let (plan, method) = read_plan(&parent, opts, geometry, &forced, !commits.is_empty())?;
    let archive_id = opts.archive_id.clone().unwrap_or_else(new_archive_id);
    let parent_id = parent.as_ref().map(|p| p.tip().commit.archive_id.clone());
    let header = Header {
        volume_name: volume.to_string(),
        volume_id: match (&parent, &restart) {
            (Some(p), _) => p.tip().header.volume_id.clone(),
            (None, Some((id, _))) => id.clone(),
            (None, None) => new_id(),
        },
        archive_id: archive_id.to_string(),
        seq,
        parent: parent.as_ref().map(|p| {
            let t = p.tip();
            ParentRef {
                id: t.commit.archive_id.to_string(),
                digest: t.trailer.trailer_sha256,
                seq: t.header.seq,
                image: Some(t.trailer.image_digest),
            }
        }),
        created: opts
            .created
            .unwrap_or_else(chrono::Utc::now)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        size: geometry.size(),
        block_size: block_size.get(),
        compression: Compression {
            algorithm: "zstd".into(),
            level: opts.zstd_level,
        },
        source: SourceInfo {
            kind: match (&opts.lvm, source.is_device()) {
                (Some(_), _) => "lvm",
                (None, true) => "device",
                (None, false) => "file",
            }
            .into(),
            path: match &opts.lvm {
                Some(l) => format!("/dev/{}/{}", l.vg, l.lv),
                None => std::fs::canonicalize(source.path())
                    .unwrap_or_else(|_| source.path().to_path_buf())
                    .display()
                    .to_string(),
            },
            method: method.into(),
        },
        lvm: opts.lvm.clone(),
        encryption: None,
    };
    progress.set_total(plan.blocks() * u64::from(block_size.get()));

    let mut upload = ArchiveUpload::start(
        repo,
        volume,
        header.seq,
        &archive_id,
        geometry.max_archive_len(),
    )
    .await?;
    let key = repo.write_key("backup")?.cloned();
    let run = Run::new(
        &header,
        geometry,
        parent.as_ref(),
        opts,
        forced,
        key.clone(),
    );
    match run
        .execute(source, plan, state.as_ref(), &mut upload, &progress)
        .await
    {
        Ok((stats, digest, record)) => {
            let published = match upload.commit(digest.trailer_sha256).await {
                Ok(p) => p,
                Err(e) => {
                    if let Some(r) = record {
                        r.abort();
                    }
                    return Err(e.into());
                }
            };
            // A write-only host's record of the point just committed.
            if let (Some(record), Some(key), Some((path, _))) = (record, &key, &state) {
                let meta = StateMeta {
                    version: 1,
                    key_id: key.key_id().to_string(),
                    seq: header.seq,
                    archive_id: archive_id.to_string(),
                    image_digest: digest.image_digest,
                    size: geometry.size(),
                    block_size: block_size.get(),
                    stored_again,
                };
                if let Err(e) = record.commit(&meta) {
                    warnings.push(format!(
                        "cannot keep the digests of this point in {}: {e} (the next backup is a full)",
                        path.display()
                    ));
                }
            }
            // The point is committed; housekeeping problems are reported, not fatal.
            let leftovers = match published.committed_at {
                Some(now) => repo
                    .clean_leftovers(volume, now, LEFTOVER_GRACE)
                    .await
                    .map_err(|e| e.to_string()),
                None => Ok(Default::default()),
            };
            Ok(BackupReport {
                volume: volume.to_string(),
                archive: archive_id,
                seq: header.seq,
                kind: if header.parent.is_some() {
                    ArchiveKind::Delta
                } else {
                    ArchiveKind::Full
                },
                parent: parent_id,
                method: method.into(),
                size: geometry.size(),
                block_size: block_size.get(),
                bytes_read: stats.bytes_read,
                blocks_changed: stats.blocks_changed,
                stored_bytes: published.size,
                image_digest: digest.image_digest.to_hex(),
                seconds: started.elapsed().as_secs_f64(),
                leftovers_removed: leftovers
                    .as_ref()
                    .map_or(0, |c| c.objects.len() + c.uploads.len()),
                consistency: Consistency::Crash,
                warnings: {
                    warnings.extend(
                        parent
                            .as_ref()
                            .and_then(|p| clock_went_back(&header, &p.tip().header)),
                    );
                    match leftovers {
                        Ok(c) => warnings.extend(c.warnings),
                        Err(e) => warnings.push(format!("cleaning leftovers failed: {e}")),
                    }
                    warnings
                },
            })
        }
        Err(e) => {
            upload.abort().await;
            Err(e)
        }
    }
}

/// Decides which blocks to read, and names the method. A new chain of an existing
/// volume (`restarted`) reads everything, whatever `--changed-blocks` says.
fn read_plan(
    parent: &Option<Chain>,
    opts: &BackupOptions,
    geometry: Geometry,
    forced: &BTreeSet<u64>,
    restarted: bool,
) -> Result<(ReadPlan, &'static str), BackupError> {
    let blocks = geometry.blocks();
    let (Some(parent), Some(changed)) = (parent, &opts.changed_blocks) else {
        if opts.changed_blocks.is_some() && !restarted {
            return Err(BackupError::NoParentForChangedBlocks {
                volume: opts.volume.to_string(),
            });
        }
        return Ok((
            ReadPlan::all(blocks),
            if parent.is_some() { "scan" } else { "full" },
        ));
    };
    if let Some((i, r)) = changed
        .ranges()
        .iter()
        .enumerate()
        .find(|(_, r)| r.start >= geometry.size() && !r.is_empty())
    {
        return Err(BackupError::ChangedBlocksOutOfRange {
            origin: changed.origin(i),
            offset: r.start,
            len: r.end - r.start,
            size: geometry.size(),
        });
    }
    let bs = u64::from(geometry.block_size().get());
    let mut ranges: Vec<Range<u64>> = changed
        .ranges()
        .iter()
        .map(|r| r.start / bs..r.end.div_ceil(bs))
        .collect();
    let old = parent.tip().geometry();
    if old.size() != geometry.size() {
        // The boundary block changes length, and blocks past the old end are new.
        let min = old.blocks().min(blocks);
        ranges.push(min.saturating_sub(1)..blocks.max(min));
    }
    // Blocks the parent takes from a damaged archive are read whatever the list says.
    ranges.extend(forced.iter().map(|&b| b..b + 1));
    Ok((ReadPlan::from_ranges(ranges, blocks), "changed-blocks"))
}

/// Counters of one run.
#[derive(Debug, Default)]
struct Stats {
    bytes_read: u64,
    blocks_changed: u64,
}

/// Where a delta's parent digests come from: the parent chain's index, or (a
/// write-only host) its state of the last point.
enum Previous {
    Index(ChainCursor),
    State(StateCursor, PathBuf),
}

impl Previous {
    async fn digests(
        &mut self,
        first: u64,
        count: u64,
    ) -> Result<Vec<Option<Digest>>, BackupError> {
        match self {
            Previous::Index(c) => Ok(c.digests(first, count).await?),
            Previous::State(c, path) => {
                c.digests(first, count)
                    .map_err(|source| BackupError::State {
                        path: path.display().to_string(),
                        source,
                    })
            }
        }
    }

    /// Feeds `hasher` (and a write-only host's `record`) with the parent's blocks up
    /// to `end`.
    async fn feed(
        &mut self,
        hasher: &mut ImageHasher,
        record: Option<&mut StateWriter>,
        end: u64,
    ) -> Result<(), BackupError> {
        match (self, record) {
            (Previous::Index(c), _) => Ok(c.feed(hasher, end).await?),
            (Previous::State(c, path), Some(record)) => {
                c.feed(hasher, record, end)
                    .map_err(|source| BackupError::State {
                        path: path.display().to_string(),
                        source,
                    })
            }
            (Previous::State(..), None) => unreachable!("a state parent is read while recording"),
        }
    }
}

/// Digests that finish a run.
struct Finished {
    image_digest: crate::format::Digest,
    trailer_sha256: crate::format::Digest,
}

/// One backup run's pipeline state.
struct Run {
    header: Header,
    /// The writer key of an encrypted repository.
    key: Option<WriterKey>,
    geometry: Geometry,
    parent: Option<Chain>,
    ctx: Arc<process::Context>,
    threads: usize,
    read_limit: Option<Arc<RateLimiter>>,
}

impl Run {
    fn new(
        header: &Header,
        geometry: Geometry,
        parent: Option<&Chain>,
        opts: &BackupOptions,
        mut forced: BTreeSet<u64>,
        key: Option<WriterKey>,
    ) -> Self {
        let bs = u64::from(geometry.block_size().get());
        forced.extend(
            parent
                .map(|p| p.tip().geometry())
                .filter(|old| old.size() != geometry.size())
                .and_then(|old| old.blocks().min(geometry.blocks()).checked_sub(1)),
        );
        let ctx = process::Context {
            geometry,
            digester: Digester::for_key(key.as_ref().map(|k| &k.digest_key)),
            forced,
            frame_blocks: (FRAME_BYTES / bs).max(1) as usize,
            level: opts.zstd_level,
            diff: parent.is_some(),
        };
        Run {
            header: header.clone(),
            key,
            geometry,
            parent: parent.cloned(),
            ctx: Arc::new(ctx),
            threads: opts.threads.max(1),
            read_limit: opts.read_limit.clone(),
        }
    }

    /// Runs the pipeline; a write-only host (`state`: its state file, and whether the
    /// parent's digests come from it) also records the new point's digests, returned
    /// to be committed with the point.
    async fn execute(
        self,
        source: RawSource,
        plan: ReadPlan,
        state: Option<&(PathBuf, bool)>,
        upload: &mut ArchiveUpload,
        progress: &Progress,
    ) -> Result<(Stats, Finished, Option<StateWriter>), BackupError> {
        let state_error = |path: &std::path::Path| {
            let path = path.display().to_string();
            move |source| BackupError::State { path, source }
        };
        let mut record = match state {
            Some((path, _)) => Some(StateWriter::create(path).map_err(state_error(path))?),
            None => None,
        };
        let result = self
            .pipeline(source, plan, state, record.as_mut(), upload, progress)
            .await;
        match result {
            Ok((stats, finished)) => Ok((stats, finished, record)),
            Err(e) => {
                if let Some(r) = record {
                    r.abort();
                }
                Err(e)
            }
        }
    }

    async fn pipeline(
        self,
        source: RawSource,
        plan: ReadPlan,
        state: Option<&(PathBuf, bool)>,
        mut record: Option<&mut StateWriter>,
        upload: &mut ArchiveUpload,
        progress: &Progress,
    ) -> Result<(Stats, Finished), BackupError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Planned>(self.threads);
        let batch_blocks = (BATCH_BYTES / u64::from(self.geometry.block_size().get())).max(1);
        let geometry = self.geometry;
        let buffers = Arc::new(batch_buffers(self.threads));
        let source = Arc::new(source);
        let planner = {
            let source = source.clone();
            tokio::task::spawn_blocking(move || {
                plan_batches(&source, &plan, geometry, batch_blocks, &tx)
            })
        };

        let mut out = Vec::with_capacity(1 << 20);
        let mut writer = ArchiveWriter::new(&self.header, self.key.as_ref(), &mut out)?;
        let mut hasher = ImageHasher::with(self.geometry, writer.digester());
        let previous = || -> Result<Option<Previous>, BackupError> {
            Ok(match (&self.parent, state) {
                (None, _) => None,
                (Some(p), None | Some((_, false))) => Some(Previous::Index(ChainCursor::new(p))),
                (Some(_), Some((path, true))) => Some(Previous::State(
                    StateCursor::open(path).map_err(|source| BackupError::State {
                        path: path.display().to_string(),
                        source,
                    })?,
                    path.clone(),
                )),
            })
        };
        let mut parents = previous()?;
        let mut gaps = previous()?;
        let mut stats = Stats::default();
        let mut inflight = FuturesOrdered::new();
        let mut reading = true;
        loop {
            while reading && inflight.len() < batches_in_flight(self.threads) {
                let Some(planned) = rx.recv().await else {
                    reading = false;
                    break;
                };
                let prev = match parents.as_mut() {
                    Some(p) => p.digests(planned.first, planned.count).await?,
                    None => Vec::new(),
                };
                let (ctx, buffers) = (self.ctx.clone(), buffers.clone());
                let (source, read_limit) = (source.clone(), self.read_limit.clone());
                inflight.push_back(tokio::task::spawn_blocking(move || {
                    let batch = planned.read(&source, read_limit.as_deref(), &buffers)?;
                    let part = process_batch(&ctx, &batch, prev);
                    buffers.give(batch.buf);
                    part
                }));
            }
            let Some(done) = inflight.next().await else {
                break;
            };
            let done: ArchivePart = done.map_err(|e| BackupError::Task(e.to_string()))??;
            if let Some(g) = gaps.as_mut() {
                g.feed(&mut hasher, record.as_deref_mut(), done.first)
                    .await?;
            }
            if let (Some(r), Some((path, _))) = (record.as_deref_mut(), state) {
                for run in &done.image {
                    r.push(run).map_err(|source| BackupError::State {
                        path: path.display().to_string(),
                        source,
                    })?;
                }
            }
            stats.bytes_read += done.bytes_read;
            progress.add(done.count * u64::from(self.geometry.block_size().get()));
            stats.blocks_changed += done.apply(&mut writer, &mut hasher, &mut out)?;
            upload.write(&out).await?;
            out.clear();
        }
        drop(rx);
        planner
            .await
            .map_err(|e| BackupError::Task(e.to_string()))??;
        source.check_size()?;
        if let Some(g) = gaps.as_mut() {
            g.feed(&mut hasher, record, self.geometry.blocks()).await?;
        }
        let image_digest = hasher.finish()?;
        let trailer = writer.finish(image_digest, &mut out);
        upload.write(&out).await?;
        Ok((
            stats,
            Finished {
                image_digest,
                trailer_sha256: trailer.trailer_sha256,
            },
        ))
    }
}
