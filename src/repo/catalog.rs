//! The catalog, rebuilt from the repository on every call: volumes, their commits, and
//! the chain of archives behind a point.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use object_store::path::Path;

use super::archive::Preread;
use super::archive::parse_archive_name;
use super::layout::{ArchiveId, ArchiveIdPrefix, parse_commit_key, volumes_prefix};
use super::marker::{CommitMarker, check_marker, read_marker};
use super::summary::Summary;
use super::{RemoteArchive, RepoError, Repository, VolumeName};
use crate::format::Digest;

/// Commit markers read concurrently.
const MARKER_READS: usize = 16;
/// Volumes cataloged at once by commands over every volume: enough summary GETs in
/// flight to hide 20 ms per request (README "The catalog at scale": 8, 16 and 32
/// measured on garage at 1000 volumes).
const VOLUMES_AT_ONCE: usize = 32;

/// A committed point of a volume, as its commit marker describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The volume.
    pub volume: VolumeName,
    /// Sequence number.
    pub seq: u64,
    /// Generation of the marker: 0 for the point's first archive, higher once a merge
    /// replaced it (the highest generation of a seq is the committed one).
    pub generation: u32,
    /// Archive id.
    pub archive_id: ArchiveId,
    /// Archive object name (under the volume's `archives/`).
    pub object: String,
    /// Archive object size.
    pub size: u64,
    /// Archive digest.
    pub digest: Digest,
    /// Key of the commit marker.
    pub key: Path,
    /// The archive's bytes that opening it reads, from the volume's summary (checked
    /// as read bytes are, when the archive is opened).
    pub(crate) preread: Option<Arc<Preread>>,
}

impl Commit {
    /// Key of the archive object.
    pub fn archive_key(&self) -> Path {
        self.volume.archives_prefix().join(self.object.as_str())
    }
}

/// Which point of a volume to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointSelector {
    /// The newest point.
    Latest,
    /// The point with this sequence number.
    Seq(u64),
    /// The point whose archive id starts with these hex digits (at least 6).
    Id(ArchiveIdPrefix),
    /// Six to twelve digits: a sequence number or an archive id prefix, whichever
    /// matches (refused if they match different points).
    SeqOrId(u64, ArchiveIdPrefix),
}

impl PointSelector {
    /// Parses `latest`, a sequence number, or an archive id (or unique prefix of at
    /// least 6 hex digits).
    ///
    /// # Errors
    /// A message saying what is accepted.
    pub fn parse(s: &str) -> Result<Self, String> {
        let digits = !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        if s == "latest" {
            Ok(PointSelector::Latest)
        } else if digits && s.len() < 6 {
            s.parse().map(PointSelector::Seq).map_err(|e| e.to_string())
        } else if let Some(prefix) = ArchiveIdPrefix::parse(s) {
            if digits && s.len() <= 12 {
                let seq = s
                    .parse()
                    .map_err(|e: std::num::ParseIntError| e.to_string())?;
                Ok(PointSelector::SeqOrId(seq, prefix))
            } else {
                Ok(PointSelector::Id(prefix))
            }
        } else {
            Err(format!(
                "{} is not `latest`, a sequence number or an archive id (in full, or a unique prefix of at least 6 hex digits)",
                crate::quote::excerpt(s)
            ))
        }
    }

    /// The commit this selects among `commits`: `Ok(None)` if none, `Err(())` if it
    /// matches several.
    fn select<'a>(&self, commits: &'a [Commit]) -> Result<Option<&'a Commit>, ()> {
        let by_seq = |seq: u64| commits.iter().filter(move |c| c.seq == seq);
        let by_id = |prefix: &ArchiveIdPrefix| {
            let prefix = prefix.clone();
            commits
                .iter()
                .filter(move |c| prefix.matches(&c.archive_id))
        };
        let mut hits: Vec<&Commit> = match self {
            PointSelector::Latest => commits.last().into_iter().collect(),
            PointSelector::Seq(seq) => by_seq(*seq).collect(),
            PointSelector::Id(prefix) => by_id(prefix).collect(),
            PointSelector::SeqOrId(seq, prefix) => by_seq(*seq).chain(by_id(prefix)).collect(),
        };
        hits.dedup_by_key(|c| c.seq);
        match hits[..] {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => Err(()),
        }
    }
}

impl std::fmt::Display for PointSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PointSelector::Latest => f.write_str("latest"),
            PointSelector::Seq(seq) => write!(f, "{seq}"),
            PointSelector::Id(s) | PointSelector::SeqOrId(_, s) => f.write_str(s.as_str()),
        }
    }
}

/// What is wrong with a volume's catalog (see [`Repository::catalog`]).
#[derive(Debug, Clone)]
pub enum CatalogProblem {
    /// A commit marker that cannot be read or parsed.
    CorruptMarker {
        volume: VolumeName,
        seq: u64,
        generation: u32,
        key: String,
        detail: String,
    },
    /// A complete archive object whose seq has no valid marker and that has no
    /// tombstone: a lost or corrupt marker, or a run killed between upload and commit.
    /// Its `commit` is the marker that would commit it.
    Orphan(Arc<RemoteArchive>),
}

impl CatalogProblem {
    /// The seq concerned.
    pub fn seq(&self) -> u64 {
        match self {
            CatalogProblem::CorruptMarker { seq, .. } => *seq,
            CatalogProblem::Orphan(a) => a.commit.seq,
        }
    }
}

impl std::fmt::Display for CatalogProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatalogProblem::CorruptMarker {
                volume,
                key,
                detail,
                ..
            } => write!(
                f,
                "commit marker {key} is corrupt ({detail}): run `thinarc repair {volume}` to set it aside and re-commit its archive if intact"
            ),
            CatalogProblem::Orphan(a) => write!(
                f,
                "archive {} is complete but not committed (its commit marker is lost or corrupt): run `thinarc repair {}` to re-commit it",
                a.key(),
                a.commit.volume
            ),
        }
    }
}

/// The objects under one volume's folder, as one listing showed them: the catalog,
/// damage records, result records and locks are all read from it.
#[derive(Debug, Clone, Default)]
pub struct VolumeListing {
    pub(crate) objects: Vec<ObjectMeta>,
}

impl VolumeListing {
    /// The same listing without the volume's summary: a catalog built from it reads
    /// every marker and archive (what `verify` checks is what is stored).
    pub fn without_summary(mut self) -> Self {
        self.objects.retain(|m| {
            m.location
                .parts()
                .nth(2)
                .is_none_or(|p| p.as_ref() != "summary")
        });
        self
    }

    /// The volume's archive objects.
    pub fn archives(&self) -> impl Iterator<Item = &ObjectMeta> {
        self.folder("archives")
    }

    /// The listing of the volume's locks.
    pub(crate) fn locks(&self) -> impl Iterator<Item = &ObjectMeta> {
        self.folder("locks")
    }

    /// The objects directly in folder `dir` of the volume (`commits`, `archives`, ...).
    pub(crate) fn folder<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = &'a ObjectMeta> {
        self.objects.iter().filter(move |m| {
            let mut parts = m.location.parts().skip(2);
            parts.next().is_some_and(|p| p.as_ref() == dir)
                && parts.next().is_some()
                && parts.next().is_none()
        })
    }

    /// Whether object `key` is listed.
    pub fn contains(&self, key: &Path) -> bool {
        self.get(key).is_some()
    }

    /// The object `key`, if listed.
    pub(crate) fn get(&self, key: &Path) -> Option<&ObjectMeta> {
        self.objects.iter().find(|m| &m.location == key)
    }

    /// The commit marker keys, sorted by seq and generation.
    pub(crate) fn markers(&self) -> Vec<MarkerKey> {
        let mut keys: Vec<MarkerKey> = self
            .folder("commits")
            .filter_map(|m| {
                let (seq, generation) = m.location.filename().and_then(parse_commit_key)?;
                Some(MarkerKey {
                    seq,
                    generation,
                    key: m.location.clone(),
                })
            })
            .collect();
        keys.sort_by_key(|k| (k.seq, k.generation));
        keys
    }
}

/// A volume's committed points and the problems of its catalog.
#[derive(Debug, Clone, Default)]
pub struct VolumeCatalog {
    /// Committed points, oldest first.
    pub commits: Vec<Commit>,
    /// Corrupt markers, then complete orphan archives, each by seq.
    pub problems: Vec<CatalogProblem>,
    /// The highest seq any marker key (valid or not), set-aside marker or archive
    /// object of the volume names: the next point gets a higher one.
    pub max_seq: u64,
    /// The listing it was built from.
    pub(crate) listing: VolumeListing,
}

impl VolumeCatalog {
    /// The listing of the volume's folder it was built from.
    pub fn listing(&self) -> &VolumeListing {
        &self.listing
    }

    /// The seq of the next point: above every seq ever named, so none is reused.
    pub fn next_seq(&self) -> u64 {
        self.max_seq + 1
    }
}

/// The key of one commit marker, not yet read.
#[derive(Debug, Clone)]
pub(crate) struct MarkerKey {
    pub seq: u64,
    pub generation: u32,
    pub key: Path,
}

/// The archives that make up one point, oldest (the full) first.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The volume.
    pub volume: VolumeName,
    /// Archives from the full to the point itself.
    pub archives: Vec<Arc<RemoteArchive>>,
}

impl Chain {
    /// The archive of the point itself.
    pub fn tip(&self) -> &Arc<RemoteArchive> {
        self.archives
            .last()
            .expect("a chain holds at least one archive")
    }
}

impl Repository {
    /// Every object under `prefix`.
    ///
    /// # Errors
    /// [`RepoError::Store`].
    pub(crate) async fn list(
        &self,
        prefix: &Path,
    ) -> Result<Vec<object_store::ObjectMeta>, RepoError> {
        self.store()
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(RepoError::store("list", prefix))
    }

    /// The listing of `volume`'s folder: one recursive listing.
    ///
    /// # Errors
    /// [`RepoError::Store`].
    pub(crate) async fn list_volume(
        &self,
        volume: &VolumeName,
    ) -> Result<VolumeListing, RepoError> {
        Ok(VolumeListing {
            objects: self.list(&volume.prefix()).await?,
        })
    }

    /// The listings of every volume folder, from one recursive (paged) listing of
    /// `volumes/`, sorted by volume.
    ///
    /// # Errors
    /// [`RepoError::Store`].
    pub async fn list_volumes(&self) -> Result<Vec<(VolumeName, VolumeListing)>, RepoError> {
        let mut volumes: std::collections::BTreeMap<VolumeName, VolumeListing> = Default::default();
        for m in self.list(&volumes_prefix()).await? {
            let Some(Ok(v)) = m
                .location
                .parts()
                .nth(1)
                .map(|p| VolumeName::from_key(p.as_ref()))
            else {
                continue;
            };
            volumes.entry(v).or_default().objects.push(m);
        }
        Ok(volumes.into_iter().collect())
    }

    /// Names of all volumes with at least one committed point, sorted.
    ///
    /// # Errors
    /// [`RepoError::Store`].
    pub async fn volumes(&self) -> Result<Vec<VolumeName>, RepoError> {
        let listed = self.list_volumes().await?.into_iter().collect();
        self.volumes_listed(&listed).await
    }

    /// [`volumes`](Self::volumes) among `listed`, the volume folders as
    /// [`list_volumes`](Self::list_volumes) gave them.
    ///
    /// # Errors
    /// [`RepoError::Store`].
    pub async fn volumes_listed(
        &self,
        listed: &std::collections::BTreeMap<VolumeName, VolumeListing>,
    ) -> Result<Vec<VolumeName>, RepoError> {
        // A volume exists once it has a commit marker, or a complete archive whose
        // marker is lost: an interrupted first backup may leave an empty folder or a
        // partial archive behind.
        let mut names = Vec::new();
        for (v, listing) in listed {
            let has_point = !listing.markers().is_empty();
            if has_point
                || !self
                    .catalog_listed(v, listing.clone())
                    .await?
                    .problems
                    .is_empty()
            {
                names.push(v.clone());
            }
        }
        Ok(names)
    }

    /// The catalog of every volume (as [`volumes`](Self::volumes) names them), sorted
    /// by volume, from one listing of the repository's volumes: a volume whose markers
    /// cannot be read has its error instead. The catalogs are built a few at a time as
    /// the stream is read, so a caller that drops each once used holds only those.
    ///
    /// # Errors
    /// [`RepoError::Store`] when the volumes cannot be listed.
    pub async fn catalogs(
        &self,
    ) -> Result<
        impl futures::Stream<Item = (VolumeName, Result<VolumeCatalog, RepoError>)> + '_,
        RepoError,
    > {
        Ok(futures::stream::iter(self.list_volumes().await?)
            .map(move |(v, listing)| async move {
                let catalog = self.catalog_listed(&v, listing).await;
                (v, catalog)
            })
            .buffered(VOLUMES_AT_ONCE)
            .filter(|(_, c)| {
                let shown = c
                    .as_ref()
                    .map_or(true, |c| !c.commits.is_empty() || !c.problems.is_empty());
                async move { shown }
            }))
    }

    /// Every commit marker of `volume`, superseded generations included, sorted by
    /// seq and generation.
    ///
    /// # Errors
    /// [`RepoError::Store`].
    pub(crate) async fn markers(&self, volume: &VolumeName) -> Result<Vec<MarkerKey>, RepoError> {
        let objects = self.list(&volume.commits_prefix()).await?;
        Ok(VolumeListing { objects }.markers())
    }

    /// Reads the commit markers `keys` of `volume`.
    ///
    /// # Errors
    /// [`RepoError::Store`] or [`RepoError::BadCommit`].
    pub(crate) async fn read_commits(
        &self,
        volume: &VolumeName,
        keys: Vec<MarkerKey>,
    ) -> Result<Vec<Commit>, RepoError> {
        self.read_markers(volume, keys, &Summary::default())
            .await
            .into_iter()
            .collect()
    }

    /// Reads the commit markers `keys` of `volume`, each to its commit or its error;
    /// a marker `summary` holds is taken from it (and checked as a read one is).
    pub(crate) async fn read_markers(
        &self,
        volume: &VolumeName,
        keys: Vec<MarkerKey>,
        summary: &Summary,
    ) -> Vec<Result<Commit, RepoError>> {
        futures::stream::iter(keys)
            .map(|k| async move {
                let summarised = k
                    .key
                    .filename()
                    .and_then(|name| summary.get(name))
                    .filter(|(m, _)| check_marker(k.seq, m).is_ok());
                let (m, preread): (CommitMarker, _) = match summarised {
                    Some((m, preread)) => (m.clone(), preread.clone()),
                    None => (read_marker(self, &k.key, k.seq).await?, None),
                };
                Ok(Commit {
                    volume: volume.clone(),
                    seq: k.seq,
                    generation: k.generation,
                    archive_id: m.archive,
                    object: m.object,
                    size: m.size,
                    digest: m.digest,
                    key: k.key,
                    preread,
                })
            })
            .buffered(MARKER_READS)
            .collect()
            .await
    }

    /// The catalog of `volume`: its committed points and what is wrong with its
    /// markers. A marker that cannot be read or parsed is a problem of its seq, not a
    /// failure of the volume: for each seq, the highest generation whose marker is
    /// valid is the committed one. Archive objects whose seq has no valid marker and
    /// no tombstone, and whose header, trailer and directory check out, are complete
    /// orphans (a lost marker, or a run killed between upload and commit).
    ///
    /// # Errors
    /// [`RepoError::Store`] when listing fails (a marker or archive that cannot be
    /// read is a problem, not an error).
    pub async fn catalog(&self, volume: &VolumeName) -> Result<VolumeCatalog, RepoError> {
        let listing = self.list_volume(volume).await?;
        self.catalog_listed(volume, listing).await
    }

    /// [`catalog`](Self::catalog) read from the markers and archives themselves, the
    /// volume's summary ignored: what `verify` checks is what is stored.
    ///
    /// # Errors
    /// As [`catalog`](Self::catalog).
    pub async fn catalog_unsummarised(
        &self,
        volume: &VolumeName,
    ) -> Result<VolumeCatalog, RepoError> {
        let listing = self.list_volume(volume).await?;
        self.catalog_listed(volume, listing.without_summary()).await
    }

    /// [`catalog`](Self::catalog) from `listing`, the volume's folder as listed.
    ///
    /// # Errors
    /// As [`catalog`](Self::catalog).
    pub async fn catalog_listed(
        &self,
        volume: &VolumeName,
        listing: VolumeListing,
    ) -> Result<VolumeCatalog, RepoError> {
        self.catalog_listings
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let keys = listing.markers();
        let summary = self.read_summary(volume, &listing.objects).await;
        let mut max_seq = keys.last().map_or(0, |k| k.seq);
        let mut commits: Vec<Commit> = Vec::new();
        let mut problems = Vec::new();
        for (key, read) in keys
            .clone()
            .into_iter()
            .zip(self.read_markers(volume, keys, &summary).await)
        {
            match read {
                Ok(c) => {
                    if commits.last().is_some_and(|l| l.seq == c.seq) {
                        commits.pop();
                    }
                    commits.push(c);
                }
                Err(e @ RepoError::Store { .. }) => return Err(e),
                Err(e) => problems.push(CatalogProblem::CorruptMarker {
                    volume: volume.clone(),
                    seq: key.seq,
                    generation: key.generation,
                    key: key.key.to_string(),
                    detail: match e {
                        RepoError::BadCommit { detail, .. } => detail,
                        e => e.to_string(),
                    },
                }),
            }
        }
        let committed: HashSet<u64> = commits.iter().map(|c| c.seq).collect();
        let tombstones: HashSet<&str> = listing
            .folder("tombstones")
            .filter_map(|m| m.location.filename())
            .collect();
        let mut orphans = Vec::new();
        for m in listing.folder("archives") {
            let Some(name) = m.location.filename() else {
                continue;
            };
            let Some((seq, _)) = parse_archive_name(name) else {
                continue;
            };
            max_seq = max_seq.max(seq);
            if committed.contains(&seq) || tombstones.contains(name) {
                continue;
            }
            if let Ok(a) = RemoteArchive::open_uncommitted(self, volume, name, m.size).await {
                orphans.push(a);
            }
        }
        for m in listing.folder("damaged") {
            if let Some((seq, _)) = m.location.filename().and_then(parse_commit_key) {
                max_seq = max_seq.max(seq);
            }
        }
        orphans.sort_by_key(|a| a.commit.seq);
        problems.extend(
            orphans
                .into_iter()
                .map(|a| CatalogProblem::Orphan(Arc::new(a))),
        );
        Ok(VolumeCatalog {
            commits,
            problems,
            max_seq,
            listing,
        })
    }

    /// Committed points of `volume`, oldest first (empty for an unknown volume): for
    /// each seq, the valid marker of the highest generation (see
    /// [`catalog`](Self::catalog), which also says what is wrong).
    ///
    /// # Errors
    /// [`RepoError::Store`].
    pub async fn commits(&self, volume: &VolumeName) -> Result<Vec<Commit>, RepoError> {
        Ok(self.catalog(volume).await?.commits)
    }

    /// Committed points of `volume`, failing when the volume does not exist.
    ///
    /// # Errors
    /// [`RepoError::VolumeNotFound`] listing the known volumes,
    /// [`RepoError::NoIntactPoint`] naming the first catalog problem of a volume that
    /// exists without an intact commit, or what [`commits`](Self::commits) returns.
    pub async fn existing_commits(&self, volume: &VolumeName) -> Result<Vec<Commit>, RepoError> {
        let catalog = self.catalog(volume).await?;
        if !catalog.commits.is_empty() {
            return Ok(catalog.commits);
        }
        match catalog.problems.first() {
            Some(problem) => Err(RepoError::NoIntactPoint {
                volume: volume.to_string(),
                problem: problem.to_string(),
            }),
            None => Err(self.volume_not_found(volume).await?),
        }
    }

    /// [`RepoError::VolumeNotFound`] for `volume`, listing the known volumes.
    ///
    /// # Errors
    /// [`RepoError::Store`] when the volumes cannot be listed.
    async fn volume_not_found(&self, volume: &VolumeName) -> Result<RepoError, RepoError> {
        let known: Vec<String> = self
            .volumes()
            .await?
            .iter()
            .map(|v| v.to_string())
            .collect();
        let known = if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        };
        Ok(RepoError::VolumeNotFound {
            name: volume.to_string(),
            known,
        })
    }

    /// Resolves the chain of archives behind the point `at` of `commits` (as returned
    /// by [`commits`](Self::commits)), checking every parent link by id and digest.
    ///
    /// # Errors
    /// [`RepoError::PointNotFound`], [`RepoError::ChainBroken`], [`RepoError::Corrupt`]
    /// or [`RepoError::Store`].
    pub async fn resolve(
        &self,
        commits: &[Commit],
        at: &PointSelector,
    ) -> Result<Chain, RepoError> {
        self.resolve_opened(commits, at, &HashMap::new()).await
    }

    /// As [`resolve`](Self::resolve), taking the archives of `opened` (by seq) whose
    /// commit is the one `commits` names instead of opening them again: verify opens
    /// each archive once, not once per point whose chain holds it.
    ///
    /// # Errors
    /// As [`resolve`](Self::resolve).
    pub async fn resolve_opened(
        &self,
        commits: &[Commit],
        at: &PointSelector,
        opened: &HashMap<u64, Arc<RemoteArchive>>,
    ) -> Result<Chain, RepoError> {
        let open = async |c: &Commit| match opened.get(&c.seq).filter(|a| a.commit == *c) {
            Some(a) => Ok(a.clone()),
            None => RemoteArchive::open(self, c).await.map(Arc::new),
        };
        let volume =
            commits
                .first()
                .map(|c| c.volume.clone())
                .ok_or_else(|| RepoError::PointNotFound {
                    volume: "?".into(),
                    at: at.to_string(),
                })?;
        let not_found = || RepoError::PointNotFound {
            volume: volume.to_string(),
            at: at.to_string(),
        };
        let tip = at
            .select(commits)
            .map_err(|()| RepoError::PointNotFound {
                volume: volume.to_string(),
                at: format!("{at} (ambiguous: give more digits of the archive id)"),
            })?
            .ok_or_else(not_found);
        let tip = match tip {
            Ok(tip) => tip,
            Err(e) => return Err(self.corrupt_marker_of(&volume, at).await.unwrap_or(e)),
        };
        let mut archives = vec![open(tip).await?];
        while let Some(parent) = archives.last().expect("non-empty").header.parent.clone() {
            let child_seq = archives.last().expect("non-empty").header.seq;
            let broken = |detail: String| RepoError::ChainBroken {
                volume: volume.to_string(),
                seq: child_seq,
                detail,
            };
            let Some(commit) = commits.iter().find(|c| c.seq == parent.seq) else {
                let why = self
                    .problem_of(&volume, parent.seq)
                    .await
                    .map(|p| format!(": {p}"))
                    .unwrap_or_default();
                return Err(broken(format!(
                    "parent seq {} (archive {}) is not committed{why}",
                    parent.seq, parent.id
                )));
            };
            let same_archive = commit.archive_id == parent.id && commit.digest == parent.digest;
            // A merge may have replaced the parent's archive by another of the same
            // point: the child's `parent.image` then still matches (FORMAT.md 11.4).
            if !same_archive && parent.image.is_none() {
                return Err(broken(format!(
                    "parent seq {} is archive {} digest {}, expected {} digest {}",
                    parent.seq, commit.archive_id, commit.digest, parent.id, parent.digest
                )));
            }
            let archive = open(commit).await?;
            if !same_archive && parent.image != Some(archive.trailer.image_digest) {
                return Err(broken(format!(
                    "parent seq {} is archive {} of image {}, expected archive {} or image {}",
                    parent.seq,
                    commit.archive_id,
                    archive.trailer.image_digest,
                    parent.id,
                    parent.image.map(|d| d.to_hex()).unwrap_or_default()
                )));
            }
            let child = archives.last().expect("non-empty");
            if archive.header.volume_id != child.header.volume_id
                || archive.header.block_size != child.header.block_size
            {
                return Err(broken(format!(
                    "parent seq {} belongs to another volume id or block size",
                    parent.seq
                )));
            }
            archives.push(archive);
        }
        archives.reverse();
        Ok(Chain { volume, archives })
    }
}

impl Repository {
    /// The corrupt commit marker of the seq `at` names, as an error that names it and
    /// the way back (a point that is not listed because its marker is corrupt).
    async fn corrupt_marker_of(
        &self,
        volume: &VolumeName,
        at: &PointSelector,
    ) -> Option<RepoError> {
        let seq = match at {
            PointSelector::Seq(seq) | PointSelector::SeqOrId(seq, _) => *seq,
            PointSelector::Latest | PointSelector::Id(_) => return None,
        };
        match self.problem_of(volume, seq).await? {
            CatalogProblem::CorruptMarker { key, detail, .. } => Some(RepoError::BadCommit {
                key,
                detail: format!(
                    "{detail}; run `thinarc repair {volume}` to set it aside and re-commit its archive if intact"
                ),
            }),
            CatalogProblem::Orphan(_) => None,
        }
    }

    /// What is wrong with the catalog at `seq` of `volume`, if anything: its corrupt
    /// marker, else its complete orphan archive.
    async fn problem_of(&self, volume: &VolumeName, seq: u64) -> Option<CatalogProblem> {
        let problems = self.catalog(volume).await.ok()?.problems;
        problem_at(&problems, seq).cloned()
    }
}

/// Among `problems`, the corrupt marker of `seq`, else its complete orphan archive.
fn problem_at(problems: &[CatalogProblem], seq: u64) -> Option<&CatalogProblem> {
    let at = |p: &&CatalogProblem| p.seq() == seq;
    problems
        .iter()
        .filter(at)
        .find(|p| matches!(p, CatalogProblem::CorruptMarker { .. }))
        .or_else(|| problems.iter().find(at))
}

/// One point of a volume as `list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PointInfo {
    /// Volume name.
    pub volume: String,
    /// Archive id.
    pub id: String,
    /// Sequence number.
    pub seq: u64,
    /// Creation time, RFC 3339.
    pub created: String,
    /// The parent as it resolves now, the archive a restore reads (`null` for a full
    /// archive): after a prune merged into the parent, its new archive, not the one
    /// this point was built on.
    pub parent: Option<String>,
    /// The parent's sequence number.
    pub parent_seq: Option<u64>,
    /// The archive this point was built on (its header's parent), when a prune has
    /// replaced the parent's archive since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub built_on: Option<String>,
    /// Volume size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Blocks held by this archive (data and zero).
    pub blocks: u64,
    /// Data blocks held by this archive.
    pub data_blocks: u64,
    /// Size of the archive object.
    pub stored_bytes: u64,
    /// Image digest of the point.
    pub image_digest: String,
    /// Archive digest.
    pub archive_digest: String,
    /// Source path recorded at backup.
    pub source: String,
    /// Why the point cannot be restored (absent for an intact point).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damage: Option<String>,
}

impl PointInfo {
    /// A row for point `seq` of `volume` that is damaged as `damage` says.
    fn damaged(volume: &VolumeName, seq: u64, id: &str, stored_bytes: u64, damage: String) -> Self {
        PointInfo {
            volume: volume.to_string(),
            id: id.to_string(),
            seq,
            created: String::new(),
            parent: None,
            parent_seq: None,
            built_on: None,
            size: 0,
            block_size: 0,
            blocks: 0,
            data_blocks: 0,
            stored_bytes,
            image_digest: String::new(),
            archive_digest: String::new(),
            source: String::new(),
            damage: Some(damage),
        }
    }

    fn of(a: &RemoteArchive) -> Self {
        let (h, t) = (&a.header, &a.trailer);
        PointInfo {
            volume: h.volume_name.clone(),
            id: h.archive_id.clone(),
            seq: h.seq,
            created: h.created.clone(),
            parent: h.parent.as_ref().map(|p| p.id.clone()),
            parent_seq: h.parent.as_ref().map(|p| p.seq),
            built_on: None,
            size: h.size,
            block_size: h.block_size,
            blocks: t.data_blocks + t.zero_blocks,
            data_blocks: t.data_blocks,
            stored_bytes: a.commit.size,
            image_digest: t.image_digest.to_hex(),
            archive_digest: t.trailer_sha256.to_hex(),
            source: h.source.path.clone(),
            damage: None,
        }
    }
}

impl Repository {
    /// Describes every point of `volume`, oldest first, reading each archive's header
    /// and trailer (and, for points whose chain holds an archive recorded damaged in
    /// some blocks, the index segments of those blocks). A point that cannot be
    /// restored says why in [`PointInfo::damage`]: its archive cannot be read, its
    /// chain is broken, it depends on damaged data; so do rows for corrupt markers and
    /// for complete archives whose marker is lost.
    ///
    /// # Errors
    /// [`RepoError::VolumeNotFound`], or [`RepoError::Store`] when listing fails.
    pub async fn describe(&self, volume: &VolumeName) -> Result<Vec<PointInfo>, RepoError> {
        self.describe_catalog(volume, &self.catalog(volume).await?)
            .await
    }

    /// [`describe`](Self::describe) of every volume, from one listing of the
    /// repository's volumes (see [`catalogs`](Self::catalogs)): a volume that cannot
    /// be described has its error instead.
    ///
    /// # Errors
    /// [`RepoError::Store`] when the volumes cannot be listed.
    #[allow(clippy::type_complexity)]
    pub async fn describe_all(
        &self,
    ) -> Result<Vec<(VolumeName, Result<Vec<PointInfo>, RepoError>)>, RepoError> {
        // Each catalog is dropped once its rows are made.
        Ok(futures::stream::iter(self.list_volumes().await?)
            .map(|(v, listing)| async move {
                let rows = match self.catalog_listed(&v, listing).await {
                    Ok(c) if c.commits.is_empty() && c.problems.is_empty() => return None,
                    Ok(c) => self.describe_catalog(&v, &c).await,
                    Err(e) => Err(e),
                };
                Some((v, rows))
            })
            .buffered(VOLUMES_AT_ONCE)
            .filter_map(|r| async move { r })
            .collect()
            .await)
    }

    /// [`describe`](Self::describe) from `catalog`, the volume's catalog the caller
    /// already listed (and uses for more: it is listed once).
    ///
    /// # Errors
    /// As [`describe`](Self::describe).
    pub async fn describe_catalog(
        &self,
        volume: &VolumeName,
        catalog: &VolumeCatalog,
    ) -> Result<Vec<PointInfo>, RepoError> {
        if catalog.commits.is_empty() && catalog.problems.is_empty() {
            return Err(self.volume_not_found(volume).await?);
        }
        let opened: Vec<Result<RemoteArchive, RepoError>> =
            futures::stream::iter(catalog.commits.iter())
                .map(|c| RemoteArchive::open(self, c))
                .buffered(MARKER_READS)
                .collect()
                .await;
        let records = self.damage_records_listed(&catalog.listing).await;
        let mut rows: Vec<PointInfo> = Vec::new();
        // Per listed seq: the archive, if it opened and its chain links hold (block
        // damage does not break a chain: a child may hold those blocks again).
        let mut linked: std::collections::HashMap<u64, &RemoteArchive> = Default::default();
        // Points that depend on recorded damage, told once every row is known.
        let mut recorded: Vec<(u64, super::ChainDamage)> = Vec::new();
        for (c, a) in catalog.commits.iter().zip(&opened) {
            let a = match a {
                Ok(a) => a,
                Err(e) => {
                    rows.push(PointInfo::damaged(
                        volume,
                        c.seq,
                        c.archive_id.as_str(),
                        c.size,
                        format!("{e}"),
                    ));
                    continue;
                }
            };
            let mut row = PointInfo::of(a);
            row.damage = match &a.header.parent {
                None => None,
                Some(p) => match linked.get(&p.seq) {
                    None if rows.iter().any(|r| r.seq == p.seq) => Some(format!(
                        "depends on damaged seq {} (run `thinarc verify {volume}`)",
                        p.seq
                    )),
                    None => Some(format!(
                        "chain broken: parent seq {} (archive {}) is not committed{}",
                        p.seq,
                        p.id,
                        problem_at(&catalog.problems, p.seq)
                            .map(|p| format!(": {p}"))
                            .unwrap_or_default()
                    )),
                    Some(pa) => {
                        let same = pa.commit.archive_id == p.id && pa.commit.digest == p.digest;
                        let image = p.image == Some(pa.trailer.image_digest);
                        (!(same || image) || pa.header.volume_id != a.header.volume_id).then(|| {
                            format!(
                                "chain broken: parent seq {} is not archive {} it was built on",
                                p.seq, p.id
                            )
                        })
                    }
                },
            };
            // The parent as it resolves now (a prune may have replaced its archive).
            if let Some(pa) = a.header.parent.as_ref().and_then(|p| linked.get(&p.seq)) {
                let now = pa.commit.archive_id.to_string();
                if row.parent.as_ref() != Some(&now) {
                    row.built_on = row.parent.replace(now);
                }
            }
            if row.damage.is_none() {
                linked.insert(c.seq, a);
                match self.record_damage_of(&catalog.commits, c, &records).await {
                    Some(Ok(d)) => recorded.push((c.seq, d)),
                    Some(Err(e)) => row.damage = Some(e.to_string()),
                    None => {}
                }
            }
            rows.push(row);
        }
        // The way back from recorded damage depends on the points newer than it.
        let whole: Vec<u64> = rows
            .iter()
            .filter(|r| r.damage.is_none() && !recorded.iter().any(|(s, _)| *s == r.seq))
            .map(|r| r.seq)
            .collect();
        let newest = rows.iter().map(|r| r.seq).max().unwrap_or_default();
        for (seq, d) in recorded {
            let newer = super::Newer::than(seq, whole.iter().copied(), newest);
            if let Some(row) = rows.iter_mut().find(|r| r.seq == seq) {
                row.damage = Some(format!(
                    "depends on {d} ({}; see `thinarc verify`)",
                    d.way_back(volume, newer)
                ));
            }
        }
        for p in &catalog.problems {
            match p {
                CatalogProblem::CorruptMarker { seq, .. }
                    if catalog.commits.iter().any(|c| c.seq == *seq) => {}
                CatalogProblem::CorruptMarker { seq, .. } => {
                    rows.push(PointInfo::damaged(volume, *seq, "?", 0, p.to_string()))
                }
                // The archive of a corrupt marker: the row names the marker.
                CatalogProblem::Orphan(a) => rows.push(PointInfo {
                    damage: problem_at(&catalog.problems, p.seq()).map(|p| p.to_string()),
                    ..PointInfo::of(a)
                }),
            }
        }
        // A corrupt marker and the orphan archive of the same seq: one row.
        rows.sort_by_key(|r| (r.seq, r.id == "?"));
        rows.dedup_by(|b, a| a.seq == b.seq && b.id == "?");
        Ok(rows)
    }

    /// What point `c` depends on among the damage `records`, if its chain holds a
    /// recorded archive (an error when its chain's index cannot be read).
    async fn record_damage_of(
        &self,
        commits: &[Commit],
        c: &Commit,
        records: &[super::DamageRecord],
    ) -> Option<Result<super::ChainDamage, RepoError>> {
        if records.is_empty() {
            return None;
        }
        let chain = self
            .resolve(commits, &PointSelector::Seq(c.seq))
            .await
            .ok()?;
        if !chain
            .archives
            .iter()
            .any(|a| records.iter().any(|r| r.archive == a.commit.archive_id))
        {
            return None;
        }
        match super::chain_damage(&chain, records).await {
            Ok(d) if d.is_empty() => None,
            result => Some(result),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(seq: u64, id: &str) -> Commit {
        let volume = VolumeName::new("v").unwrap();
        Commit {
            key: volume.commit_key(seq, 0),
            volume,
            seq,
            generation: 0,
            archive_id: ArchiveId::parse(id).unwrap(),
            object: format!("{seq:012}-{id}.tarc"),
            size: 0,
            digest: Digest::default(),
            preread: None,
        }
    }

    #[test]
    fn selectors_parse_and_select() {
        let commits = [
            commit(1, "5692801467aaaaaaaaaaaaaaaaaaaaaa"),
            commit(2, "abcdef0123456789abcdef0123456789"),
            commit(569280, "0000000000000000000000000000000f"),
        ];
        let pick = |s: &str| {
            PointSelector::parse(s)
                .unwrap()
                .select(&commits)
                .map(|c| c.map(|c| c.seq))
        };
        assert_eq!(pick("latest"), Ok(Some(569280)));
        assert_eq!(pick("2"), Ok(Some(2)));
        assert_eq!(pick("abcdef"), Ok(Some(2)));
        assert_eq!(pick("ABCDEF01"), Ok(Some(2)));
        // All digits: a sequence number or an id prefix, whichever exists.
        assert_eq!(pick("5692801467"), Ok(Some(1)));
        assert_eq!(
            pick("569280"),
            Err(()),
            "seq 569280 and the id prefix of seq 1"
        );
        assert_eq!(pick("7"), Ok(None));
        assert_eq!(pick("777777"), Ok(None));
        assert!(PointSelector::parse("yesterday").is_err());
        assert!(PointSelector::parse("").is_err());
    }
}
