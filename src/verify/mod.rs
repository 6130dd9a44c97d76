//! Verify: proves that what the repository holds can be restored.
//!
//! - **Structure** (always, no block data read): every archive's object exists with
//!   the size its commit marker names; its header, directory, trailer and every index
//!   segment check out against their checksums and the format rules; the index agrees
//!   with the trailer's counts and tiles the body; every point resolves through the
//!   catalog's parent links ([`Repository::resolve`]); and each point's image digest,
//!   recomputed from the indexes along its chain ([`ChainCursor`] and
//!   [`ImageHasher`]), equals the one its archive records.
//! - **Data** (`--data`, or `--data-subset`): every data block of every archive (or of
//!   a sample of its frames) is read, decoded and checked against its SHA-256 through
//!   the point reader that restore uses ([`crate::point`]).
//! - **Source** (`--source`): the image digest of the current source, read in full,
//!   against the latest point's. For `lvm:VG/LV` the source is the volume's base
//!   snapshot, the one the latest archive was read from (the LV itself has changed
//!   since): it must still exist unchanged, and is activated only for the read.
//!
//! - **Catalog**: corrupt commit markers and complete archives whose marker is lost.
//!
//! Every problem is recorded with the volume, archive and block it concerns, and the
//! check goes on; every point that depends on damaged data is named. Only a failure to
//! run at all (no such volume, the store unreachable, an unreadable source) is an
//! error. The only thing written is a damage record per damaged archive
//! (`damage/<archive-id>`), which the next backup and `status` read.
//!
//! Commands floor. Imports only `format`, `lvm`, `point`, `progress`, `repo` and
//! `source`; must not import `target`, another command module (`backup`, `restore`,
//! `prune`, `copy`, `status`), `config` or `cli`.

mod data;
mod index;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::format::ImageHasher;
use crate::progress::Progress;
use crate::repo::{
    ArchiveId, CatalogProblem, ChainCursor, Commit, DamageKind, DamageRecord, DamageScope,
    KeyError, Newer, PointSelector, RemoteArchive, RepoError, Repository, Resolved, SegmentCache,
    VolumeCatalog, VolumeName, chain_damage, clock_went_back,
};
use crate::source::lvm::ActiveBase;
use crate::source::lvm::LvmSourceError;
use crate::source::source_image_digest;
use crate::source::{RawSource, SourceSpec};

/// How much block data to read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DataCheck {
    /// None: structure only.
    Off,
    /// Every data block of every archive.
    All,
    /// The frames a seeded hash selects: `percent` of them, spread over every archive.
    /// The same seed selects the same frames; a new seed other ones.
    Sample { percent: f64, seed: u64 },
}

/// What to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// One volume, or every volume.
    pub volume: Option<VolumeName>,
    /// Block data to read.
    pub data: DataCheck,
    /// Compare this source with the latest point of `volume`.
    pub source: Option<SourceSpec>,
    /// Blocks decoded in parallel.
    pub threads: usize,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The volume, or [`CONFIG`] for a problem of the repository itself.
    pub volume: String,
    /// Sequence number of the point or archive concerned.
    pub seq: Option<u64>,
    /// Archive id concerned.
    pub archive: Option<ArchiveId>,
    /// First block concerned.
    pub block: Option<u64>,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.volume)?;
        if let Some(seq) = self.seq {
            write!(f, " seq {seq}")?;
        }
        if let Some(id) = &self.archive {
            write!(f, " archive {id}")?;
        }
        if let Some(b) = self.block {
            write!(f, " block {b}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// The outcome of `--source`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceCheck {
    /// The source read (for `lvm:VG/LV`, with the snapshot read).
    pub source: String,
    /// The point compared with.
    pub seq: u64,
    /// Its archive id.
    pub archive: ArchiveId,
    /// The point's image digest.
    pub expected: String,
    /// The source's image digest.
    pub actual: String,
    /// Whether they are equal.
    pub matches: bool,
}

/// What was verified, and every problem found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Volumes checked.
    pub volumes: Vec<String>,
    /// Archives checked.
    pub archives: u64,
    /// Points examined: every committed point, counted whether its chain and image
    /// digest check out or not (a point whose own archive is damaged, in its frames,
    /// index, header or trailer, or missing, counts and fails).
    pub points: u64,
    /// `off`, `all` or `sample P% seed N`.
    pub data: String,
    /// Data blocks read and checked against their digests.
    pub data_blocks_checked: u64,
    /// Bytes of block data read from the repository.
    pub bytes_read: u64,
    /// The `--source` comparison.
    pub source: Option<SourceCheck>,
    /// Every problem found, in the order found.
    pub problems: Vec<Problem>,
    /// Findings that are not damage (a writer's clock that went backwards), and
    /// recorded data damage this check did not read (and so kept).
    pub warnings: Vec<String>,
    /// Incomplete multipart uploads under the repository (S3): left by killed runs,
    /// aborted by the volume's next backup, prune or copy; not a problem.
    pub incomplete_uploads: Vec<crate::repo::PendingUpload>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Why verify could not run (problems found are not errors: see
/// [`VerifyReport::problems`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The repository could not be read.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// `--source` could not be read.
    #[error("reading --source {path}: {source}")]
    Source {
        path: String,
        source: LvmSourceError,
    },
    /// The key slots could not be listed.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// `--source` without a volume.
    #[error("--source needs the VOLUME to compare it with")]
    SourceWithoutVolume,
}

/// Verifies the repository as `opts` say.
///
/// # Errors
/// [`VerifyError`] when verify cannot run; problems are in the report.
pub async fn verify(
    repo: &Repository,
    opts: &VerifyOptions,
    progress: Arc<Progress>,
) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    if opts.source.is_some() && opts.volume.is_none() {
        return Err(VerifyError::SourceWithoutVolume);
    }
    // Block data needs the repository key; a source's image digest the digest key.
    if opts.data != DataCheck::Off {
        repo.read_key("verify --data")?;
    }
    if opts.source.is_some() {
        repo.write_key("verify --source")?;
    }
    // Each volume's catalog, read from its markers and archives (not its summary):
    // every volume's from one listing of the repository.
    let mut catalogs: Vec<(VolumeName, Result<VolumeCatalog, RepoError>)> = match &opts.volume {
        Some(v) => {
            // A volume without an intact point is verified too: its problems are
            // what verify reports (exit 4).
            let catalog = repo.catalog_unsummarised(v).await?;
            if catalog.commits.is_empty() && catalog.problems.is_empty() {
                // An unknown volume: the error names the known ones.
                repo.existing_commits(v).await?;
            }
            vec![(v.clone(), Ok(catalog))]
        }
        None => {
            let mut all = Vec::new();
            for (v, listing) in repo.list_volumes().await? {
                let catalog = repo.catalog_listed(&v, listing.without_summary()).await;
                if catalog
                    .as_ref()
                    .map_or(true, |c| !c.commits.is_empty() || !c.problems.is_empty())
                {
                    all.push((v, catalog));
                }
            }
            all
        }
    };
    let key_problem = key_slots_problem(repo).await?;
    let volumes: Vec<VolumeName> = catalogs.iter().map(|(v, _)| v.clone()).collect();
    let mut report = VerifyReport {
        volumes: volumes.iter().map(ToString::to_string).collect(),
        archives: 0,
        points: 0,
        data: match opts.data {
            DataCheck::Off => "off".into(),
            DataCheck::All => "all".into(),
            DataCheck::Sample { percent, seed } => format!("sample {percent}% seed {seed}"),
        },
        data_blocks_checked: 0,
        bytes_read: 0,
        source: None,
        problems: Vec::new(),
        warnings: Vec::new(),
        incomplete_uploads: Vec::new(),
        seconds: 0.0,
    };
    report.problems.extend(key_problem);
    match repo.pending_uploads(opts.volume.as_ref()).await {
        Ok(u) => report.incomplete_uploads.extend(u),
        Err(e) => tracing::warn!("{e}"),
    }
    for (volume, catalog) in catalogs.drain(..) {
        let volume = &volume;
        let good = check_volume(repo, volume, catalog, opts, &progress, &mut report).await;
        if opts.source.is_some() && good.is_none() {
            report.problems.push(Problem {
                volume: volume.to_string(),
                seq: None,
                archive: None,
                block: None,
                problem: "--source was not compared: the latest point is damaged (see above)"
                    .into(),
            });
        }
        if let (Some(src), Some(latest)) = (&opts.source, good) {
            report.source = Some(compare_source(src, &latest, opts, &progress).await?);
            if let Some(s) = report.source.as_ref().filter(|s| !s.matches) {
                report.problems.push(Problem {
                    volume: volume.to_string(),
                    seq: Some(s.seq),
                    archive: Some(s.archive.clone()),
                    block: None,
                    problem: format!(
                        "source {} has image digest {}, the point records {}: the source changed since, or the point is not a copy of it",
                        s.source, s.actual, s.expected
                    ),
                });
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// An encrypted repository with key slot objects of which none wraps the key
/// `config` names (each slot names the key id it wraps): nothing can unlock it,
/// whether `config` or the slots are what changed. A problem of the repository, reported as volume
/// [`CONFIG`]; no key is needed to see it.
///
/// # Errors
/// [`VerifyError::Keys`] when the slots cannot be listed.
async fn key_slots_problem(repo: &Repository) -> Result<Option<Problem>, VerifyError> {
    let Some(enc) = &repo.config().encryption else {
        return Ok(None);
    };
    let slots = repo.key_slots().await?;
    // No slot object at all is how a repository made through the library starts.
    if !slots.slots.is_empty() || slots.problems.is_empty() {
        return Ok(None);
    }
    let corrupt = slots.problems.len() - slots.other_key.len();
    let mut found: Vec<String> = slots
        .other_key
        .iter()
        .map(|(object, key)| format!("{object} wraps key {key}"))
        .collect();
    if corrupt > 0 {
        found.push(format!(
            "{corrupt} slot object(s) are corrupt (`thinarc key list --json`)"
        ));
    }
    Ok(Some(Problem {
        volume: CONFIG.into(),
        seq: None,
        archive: None,
        block: None,
        problem: format!(
            "config names key {}, but no key slot wraps it ({}): nothing can unlock the repository; compare config and keys/ with a copy and put back the one that changed",
            enc.key_id,
            found.join("; ")
        ),
    }))
}

/// The volume a problem of the repository itself (its config and key slots) is
/// reported as.
pub const CONFIG: &str = "config";

/// Records problems of one archive or point.
struct Recorder<'a> {
    report: &'a mut VerifyReport,
    volume: &'a VolumeName,
}

impl Recorder<'_> {
    fn add(&mut self, commit: Option<&Commit>, block: Option<u64>, problem: String) {
        self.report.problems.push(Problem {
            volume: self.volume.to_string(),
            seq: commit.map(|c| c.seq),
            archive: commit.map(|c| c.archive_id.clone()),
            block,
            problem,
        });
    }
}

/// Checks one volume; returns its latest archive if that one is sound (for
/// `--source`).
async fn check_volume(
    repo: &Repository,
    volume: &VolumeName,
    catalog: Result<VolumeCatalog, RepoError>,
    opts: &VerifyOptions,
    progress: &Arc<Progress>,
    report: &mut VerifyReport,
) -> Option<Arc<RemoteArchive>> {
    let mut rec = Recorder { report, volume };
    let (commits, catalog_problems, listing) = match catalog {
        Ok(c) => (c.commits.clone(), c.problems.clone(), c.listing().clone()),
        Err(e) => {
            rec.add(None, None, format!("cannot read the commit markers: {e}"));
            return None;
        }
    };
    for p in &catalog_problems {
        rec.report.problems.push(Problem {
            volume: volume.to_string(),
            seq: Some(p.seq()),
            archive: match p {
                CatalogProblem::Orphan(a) => Some(a.commit.archive_id.clone()),
                CatalogProblem::CorruptMarker { .. } => None,
            },
            block: None,
            problem: p.to_string(),
        });
    }
    // What is found damaged, by archive id: recorded for later runs, and every point
    // that depends on it is named.
    let mut damage: HashMap<ArchiveId, DamageRecord> = HashMap::new();
    // (Data is only checked in archives whose structure is whole: a record holds
    // one scope.)
    let mut damaged =
        |c: &Commit, kind: DamageKind, scope: DamageScope, blocks: &[u64], detail: &str| {
            let r = damage.entry(c.archive_id.clone()).or_insert_with(|| {
                DamageRecord::new(
                    &c.archive_id,
                    c.seq,
                    &c.object,
                    (kind, scope),
                    detail.to_string(),
                    "verify",
                )
            });
            if kind == DamageKind::Archive && r.kind != DamageKind::Archive {
                r.kind = DamageKind::Archive;
                r.blocks.clear();
                r.detail = detail.to_string();
            }
            if r.kind == DamageKind::Blocks {
                r.add_blocks(blocks.iter().copied());
            }
        };
    let objects: HashMap<String, u64> = listing
        .archives()
        .filter_map(|m| Some((m.location.filename()?.to_string(), m.size)))
        .collect();

    // Archives: object, header, trailer, directory, index. Each is opened once: the
    // points' chains are resolved from `opened`. A point is checked right after its
    // archive (its chain's archives have lower seqs, so are open by then), through a
    // cache of the index segments of its chain; its problems are reported after those
    // of the archives.
    let mut sound: Vec<Arc<RemoteArchive>> = Vec::new();
    let mut opened: HashMap<u64, Arc<RemoteArchive>> = HashMap::new();
    let segments = Arc::new(SegmentCache::bytes(SEGMENT_CACHE_BYTES));
    let mut points: Vec<(&Commit, Result<(), String>)> = Vec::new();
    for c in &commits {
        rec.report.archives += 1;
        rec.report.points += 1;
        match objects.get(&c.object) {
            None => {
                let problem = format!("archive object {} is missing", c.archive_key());
                damaged(
                    c,
                    DamageKind::Archive,
                    DamageScope::Structure,
                    &[],
                    &problem,
                );
                rec.add(Some(c), None, problem);
                continue;
            }
            // A marker whose size is wrong for an intact archive: `open` names it. An
            // object shorter than its marker: `open` says what it holds.
            Some(&size)
                if size > c.size
                    && RemoteArchive::intact_at_listed_size(repo, c)
                        .await
                        .is_none() =>
            {
                let problem = format!(
                    "archive object {} has {size} bytes, its commit marker says {}",
                    c.archive_key(),
                    c.size
                );
                damaged(
                    c,
                    DamageKind::Archive,
                    DamageScope::Structure,
                    &[],
                    &problem,
                );
                rec.add(Some(c), None, problem);
                continue;
            }
            Some(_) => {}
        }
        let archive = match RemoteArchive::open(repo, c).await {
            Ok(a) => Arc::new(a),
            Err(e) => {
                // A marker that disagrees with its archive is no damage of the
                // archive: `repair` sets it aside, and no record outlives it.
                if !matches!(e, RepoError::BadCommit { .. }) {
                    damaged(
                        c,
                        DamageKind::Archive,
                        DamageScope::Structure,
                        &[],
                        &describe(&e),
                    );
                }
                rec.add(Some(c), None, describe(&e));
                continue;
            }
        };
        opened.insert(c.seq, archive.clone());
        let found = index::check_index(&archive, &segments).await;
        let clean = found.is_empty();
        for (block, problem) in found {
            damaged(
                c,
                DamageKind::Archive,
                DamageScope::Structure,
                &[],
                &problem,
            );
            rec.add(Some(c), block, problem);
        }
        if clean {
            sound.push(archive);
            points.push((c, check_point(repo, &commits, c, &opened, &segments).await));
        }
    }

    // Points are ordered by seq: a clock that went backwards is only a warning.
    for a in &sound {
        let parent = a
            .header
            .parent
            .as_ref()
            .and_then(|p| sound.iter().find(|q| q.commit.seq == p.seq));
        if let Some(w) = parent.and_then(|p| clock_went_back(&a.header, &p.header)) {
            rec.report.warnings.push(w);
        }
    }

    // Points: parent links through the catalog, image digests from the indexes.
    // (A point whose archive is damaged is counted above and fails with its archive:
    // its problem is reported there.)
    let mut resolved: Vec<u64> = Vec::new();
    for (c, checked) in points {
        match checked {
            Ok(()) => resolved.push(c.seq),
            Err(problem) => rec.add(Some(c), None, problem),
        }
    }

    // Block data, archive by archive.
    if opts.data != DataCheck::Off {
        for a in &sound {
            let checked = data::check_data(repo, volume, a, opts, progress).await;
            rec.report.data_blocks_checked += checked.blocks;
            rec.report.bytes_read += checked.bytes;
            for (blocks, problem) in checked.problems {
                let kind = match blocks.is_empty() {
                    false => DamageKind::Blocks,
                    true => DamageKind::Archive,
                };
                damaged(&a.commit, kind, DamageScope::Data, &blocks, &problem);
                rec.add(Some(&a.commit), blocks.first().copied(), problem);
            }
        }
    }

    // Points that depend on damaged data of an older archive: their chain holds it and
    // no newer archive of the chain holds the damaged blocks. (A point whose chain does
    // not resolve, or whose own archive is damaged, is named above.)
    let mut dependent = Vec::new();
    for c in commits.iter().filter(|c| resolved.contains(&c.seq)) {
        let Ok(chain) = repo
            .resolve_opened(&commits, &PointSelector::Seq(c.seq), &opened)
            .await
        else {
            continue;
        };
        let records: Vec<DamageRecord> = damage
            .values()
            .filter(|r| r.archive != c.archive_id)
            .cloned()
            .collect();
        match chain_damage(&chain, &records).await {
            Ok(d) if d.is_empty() => {}
            Ok(d) => dependent.push((c, d)),
            Err(e) => rec.add(Some(c), None, describe(&e)),
        }
    }
    // Their way back depends on the points newer than them: whole ones (no problem
    // found) are restored instead, and the next backup heals only the newest.
    let whole: Vec<u64> = resolved
        .iter()
        .copied()
        .filter(|s| {
            !dependent.iter().any(|(c, _)| c.seq == *s)
                && !rec
                    .report
                    .problems
                    .iter()
                    .any(|p| p.seq == Some(*s) && p.volume == volume.as_str())
        })
        .collect();
    let newest = commits.last().map_or(0, |c| c.seq);
    for (c, d) in dependent {
        let newer = Newer::than(c.seq, whole.iter().copied(), newest);
        let full = match newer {
            Newer::Whole(_) => "",
            Newer::Nothing | Newer::Damaged => " (or run `thinarc backup --full`)",
        };
        rec.add(
            Some(c),
            d.blocks.first().map(|b| b.0),
            format!(
                "the point depends on {d}: it cannot be restored in full; {}{full}",
                d.way_back(volume, newer)
            ),
        );
    }

    // Damage records for the next backup and status. A record of an archive now
    // found whole is removed when this check read what it is about: the structure
    // (every verify) or all of the data (`--data`); one it did not read is kept,
    // with a warning naming the check that clears it.
    for r in damage.values() {
        if let Err(e) = repo.write_damage(volume, r).await {
            rec.add(None, None, format!("cannot write the damage record: {e}"));
        }
    }
    let whole = |r: &&DamageRecord| {
        !damage.contains_key(&r.archive) && sound.iter().any(|a| a.commit.archive_id == r.archive)
    };
    for r in repo
        .damage_records_listed(&listing)
        .await
        .iter()
        .filter(whole)
    {
        if r.found_in == DamageScope::Structure || opts.data == DataCheck::All {
            if let Err(e) = repo.clear_damage(volume, &r.archive).await {
                rec.add(None, None, format!("cannot remove the damage record: {e}"));
            }
        } else {
            rec.report.warnings.push(format!(
                "{volume} seq {} archive {}: the data damage recorded by {} at {} ({}) is kept: this check did not read all of its block data; `{}` reads it and clears the record if the data is whole",
                r.seq,
                r.archive,
                r.found_by,
                r.found_at,
                r.detail,
                r.found_in.cleared_by()
            ));
        }
    }
    let latest = commits.last()?;
    sound.into_iter().find(|a| a.commit.seq == latest.seq)
}

/// Bytes of decoded index segments a verify keeps for the points of a volume: the
/// segments of a chain are read once while they fit, and those that did not fit again
/// for each point. An entry takes about 64 bytes: 16 MiB holds the index of about
/// 250,000 data blocks (1 TiB of 4 MiB blocks, all holding data).
const SEGMENT_CACHE_BYTES: usize = 16 << 20;

/// Resolves the point `c` through the catalog (from the archives `opened`) and
/// recomputes its image digest from the indexes of its chain (through `segments`,
/// which then keeps the segments of this chain only).
async fn check_point(
    repo: &Repository,
    commits: &[Commit],
    c: &Commit,
    opened: &HashMap<u64, Arc<RemoteArchive>>,
    segments: &Arc<SegmentCache>,
) -> Result<(), String> {
    let chain = repo
        .resolve_opened(commits, &PointSelector::Seq(c.seq), opened)
        .await
        .map_err(|e| format!("the point cannot be restored: {}", describe(&e)))?;
    segments.retain(&chain);
    let tip = chain.tip();
    if !tip.is_readable() {
        // An encrypted repository without its key: the links were checked, the
        // indexes cannot be read.
        return Ok(());
    }
    let geometry = tip.geometry();
    let mut hasher = ImageHasher::with(geometry, tip.digester());
    let mut cursor = ChainCursor::new(&chain).with_segments(segments);
    loop {
        match cursor.next(geometry.blocks()).await {
            Ok(Some(Resolved::Zero { count, .. })) => hasher.zeros(count),
            Ok(Some(r)) => hasher.data(&r.digest().expect("a data block has a digest")),
            Ok(None) => break,
            Err(e) => {
                return Err(format!("the point cannot be restored: {}", describe(&e)));
            }
        }
    }
    let actual = hasher
        .finish()
        .map_err(|e| format!("the chain's indexes do not cover the volume: {e}"))?;
    if actual != tip.trailer.image_digest {
        return Err(format!(
            "image digest recomputed from the indexes of its chain is {actual}, the archive records {}",
            tip.trailer.image_digest
        ));
    }
    Ok(())
}

/// A repository error as a problem line: a corrupt archive without the advice to run
/// verify, which is running.
pub(super) fn describe(e: &RepoError) -> String {
    match e {
        RepoError::Corrupt { key, source } => format!("archive {key} is corrupt: {source}"),
        RepoError::Truncated {
            key,
            actual,
            expected,
        } => format!("archive {key} is truncated: {actual} of {expected} bytes"),
        e => e.to_string(),
    }
}

/// Reads `src` in full and compares its image digest with `latest`'s. An LVM source
/// is read through its base snapshot, activated for the read only.
async fn compare_source(
    src: &SourceSpec,
    latest: &RemoteArchive,
    opts: &VerifyOptions,
    progress: &Arc<Progress>,
) -> Result<SourceCheck, VerifyError> {
    let failed = |source: LvmSourceError| VerifyError::Source {
        path: src.to_string(),
        source,
    };
    let (source, _active, label) = match src {
        SourceSpec::Path(p) => (
            RawSource::open(p).map_err(|e| failed(e.into()))?,
            None,
            src.to_string(),
        ),
        SourceSpec::Lvm(lv) => {
            let (active, source) = ActiveBase::open(lv, &latest.header).map_err(failed)?;
            let label = format!("{src} (snapshot {})", active.snapshot());
            (source, Some(active), label)
        }
    };
    let actual = source_image_digest(
        source,
        latest.geometry().block_size(),
        latest.digester(),
        opts.threads,
        progress.clone(),
    )
    .await
    .map_err(|e| failed(e.into()))?;
    let expected = latest.trailer.image_digest;
    Ok(SourceCheck {
        source: label,
        seq: latest.commit.seq,
        archive: latest.commit.archive_id.clone(),
        expected: expected.to_hex(),
        actual: actual.to_hex(),
        matches: actual == expected,
    })
}
