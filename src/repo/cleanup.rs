//! Superseded archives and leftovers.
//!
//! A merge (prune) replaces archives, and dropping a point unlists its archive. Such an
//! archive is not deleted at once: a restore that listed the repository before may
//! still be reading it. It gets a *tombstone* (`tombstones/<object>`), a small object
//! whose last-modified time, taken from the store's clock, says when it was
//! superseded; the archive is deleted by a later run once the tombstone is older than
//! a grace period (which `prune --no-grace` sets to zero).
//!
//! Archive objects that no marker names and that have no tombstone are leftovers of
//! interrupted or failed writers. Cleaning runs under the volume's lock, so no other
//! writer of the volume can be mid-upload, and *partial* leftovers go at once: an
//! archive whose seq is committed under another archive (a losing writer, an
//! interrupted merge, a failed commit) and, on a local repository, staging files of
//! interrupted uploads. An *orphan*, an archive whose seq has no commit marker at all,
//! may be a complete point whose marker was lost: it keeps the grace period.
//!
//! [`Repository::clean_leftovers`] also finishes an interrupted prune: markers of
//! superseded generations get a tombstone for their archive and are then deleted.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::archive::{RemoteArchive, parse_archive_name};
use super::catalog::VolumeCatalog;
use super::marker::CommitMarker;
use super::summary::{Entry, FORMAT, SummaryFile, VERSION, checksum, listed_version};
use super::{RepoError, Repository, VolumeName};

/// How old a tombstone or an uncommitted object must be before its archive is removed.
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(3600);

/// Contents of a tombstone (informational: its last-modified time is what counts).
#[derive(Debug, Serialize, Deserialize)]
struct Tombstone {
    /// The superseded archive object.
    object: String,
    /// Why it was superseded.
    reason: String,
}

/// What [`Repository::clean_leftovers`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleaned {
    /// Archive objects (and local staging files) deleted.
    pub objects: Vec<String>,
    /// Bytes of the archive objects deleted.
    pub bytes: u64,
    /// Markers of superseded generations deleted.
    pub markers: usize,
    /// Bytes of superseded archives kept for the grace period (a reader may be
    /// reading them; `prune --no-grace` deletes them).
    pub waiting_bytes: u64,
    /// Incomplete multipart uploads aborted (S3), by key.
    pub uploads: Vec<String>,
    /// Problems that did not stop the cleaning (incomplete uploads that could not be
    /// listed or aborted).
    pub warnings: Vec<String>,
}

impl Repository {
    /// The store's current time: writes the volume's clock object and reads back its
    /// last-modified time, so that grace periods do not depend on the local clock.
    ///
    /// # Errors
    /// [`RepoError::Store`].
    pub async fn store_time(&self, volume: &VolumeName) -> Result<DateTime<Utc>, RepoError> {
        let key = volume.clock_key();
        let body = PutPayload::from(Utc::now().to_rfc3339().into_bytes());
        self.store()
            .put(&key, body)
            .await
            .map_err(RepoError::store("write", &key))?;
        let meta = self
            .store()
            .head(&key)
            .await
            .map_err(RepoError::store("read", &key))?;
        Ok(meta.last_modified)
    }

    /// Writes a tombstone for archive object `object` of `volume` (kept if one exists:
    /// the first supersession time counts).
    ///
    /// # Errors
    /// [`RepoError::Store`].
    pub(crate) async fn write_tombstone(
        &self,
        volume: &VolumeName,
        object: &str,
        reason: &str,
    ) -> Result<(), RepoError> {
        let key = volume.tombstone_key(object);
        let t = Tombstone {
            object: object.to_string(),
            reason: reason.to_string(),
        };
        let body = PutPayload::from(serde_json::to_vec(&t).expect("tombstone serialises"));
        match super::retry::retry(|| self.put_create(&key, body.clone())).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(RepoError::store("write tombstone", &key)(e)),
        }
    }

    /// Removes this repository, which the command now running created, when it holds
    /// no committed point (its first copy failed): the objects of the repository's
    /// own names (FORMAT.md section 15: `config`, `keys/`, `volumes/`: key slots and
    /// what the failed writer left) and, on a local store, their folders left empty,
    /// then the root if nothing else is in it. Anything else at the location (a
    /// folder that held the user's files before `init` made a repository in it) is
    /// left untouched. Returns whether it removed it; a repository holding a point is
    /// left as it is.
    ///
    /// # Errors
    /// [`RepoError::Store`] when listing or deleting fails.
    pub async fn remove_created(&self) -> Result<bool, RepoError> {
        let mut objects = vec![object_store::ObjectMeta {
            location: super::layout::config_key(),
            last_modified: Default::default(),
            size: 0,
            e_tag: None,
            version: None,
        }];
        let prefixes = [super::keys::keys_prefix(), super::layout::volumes_prefix()];
        for prefix in &prefixes {
            objects.extend(self.list(prefix).await?);
        }
        let committed = |m: &object_store::ObjectMeta| {
            let parts: Vec<_> = m.location.parts().collect();
            parts.len() == 4
                && parts[0].as_ref() == prefixes[1].as_ref()
                && parts[2].as_ref() == "commits"
        };
        if objects.iter().any(committed) {
            return Ok(false);
        }
        for m in &objects {
            self.delete("delete the new destination", &m.location)
                .await?;
        }
        if let Some(root) = &self.local_root {
            for prefix in &prefixes {
                remove_empty_dirs(&root.join(prefix.as_ref()));
            }
            // Only if empty: a folder that held files of its own stays.
            let _ = std::fs::remove_dir(root);
        }
        Ok(true)
    }

    /// Deletes `key`; an object already gone counts as deleted.
    ///
    /// # Errors
    /// [`RepoError::Store`].
    pub(crate) async fn delete(
        &self,
        action: &'static str,
        key: &object_store::path::Path,
    ) -> Result<(), RepoError> {
        match self.store().delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(RepoError::store(action, key)(e)),
        }
    }

    /// Unlists point `seq` of `volume`: tombstones the archive of each of its markers,
    /// then deletes the markers, lowest generation first (so that an older generation
    /// never becomes the committed one).
    ///
    /// # Errors
    /// [`RepoError::Store`] or [`RepoError::BadCommit`].
    pub(crate) async fn retire(
        &self,
        volume: &VolumeName,
        seq: u64,
        reason: &str,
    ) -> Result<(), RepoError> {
        let keys: Vec<_> = self
            .markers(volume)
            .await?
            .into_iter()
            .filter(|k| k.seq == seq)
            .collect();
        // A corrupt marker of the seq names no archive to tombstone: it is deleted
        // with the others.
        let read = self
            .read_markers(volume, keys.clone(), &Default::default())
            .await;
        for c in read.iter().flatten() {
            self.write_tombstone(volume, &c.object, reason).await?;
        }
        for k in &keys {
            self.delete("delete marker", &k.key).await?;
        }
        Ok(())
    }

    /// Cleans `volume` relative to `now`, which should be a time read from the store
    /// itself (the last-modified time of an object just written, or
    /// [`store_time`](Self::store_time)), so the local clock does not matter. The
    /// caller must hold the volume's lock.
    ///
    /// 1. markers of superseded generations: tombstone their archive, then delete them;
    /// 2. archives with a tombstone older than `grace` that no committed point names:
    ///    delete the archive, then the tombstone;
    /// 3. partial leftovers (see the module docs): delete them now; orphans older than
    ///    `grace`: delete them;
    /// 4. tombstones of archives a committed point names again, or that are gone;
    /// 5. on S3, incomplete multipart uploads started before `now - grace` (left by
    ///    killed runs) are aborted; a failure there is a warning.
    ///
    /// # Errors
    /// [`RepoError::Store`] if listing or deleting fails, [`RepoError::BadCommit`] if a
    /// marker cannot be read.
    pub async fn clean_leftovers(
        &self,
        volume: &VolumeName,
        now: DateTime<Utc>,
        grace: Duration,
    ) -> Result<Cleaned, RepoError> {
        let cutoff = now - grace;
        let mut cleaned = Cleaned::default();
        // Damage is left for `repair`: corrupt markers are not read, and complete
        // orphan archives (a lost marker) are kept like committed ones.
        // The objects below all come from this one listing, taken under the lock.
        let catalog = self.catalog(volume).await?;
        let committed = &catalog.commits;
        let mut listed: HashSet<String> = committed.iter().map(|c| c.object.clone()).collect();
        let committed_seqs: HashSet<u64> = committed.iter().map(|c| c.seq).collect();
        let mut current: HashSet<(u64, u32)> =
            committed.iter().map(|c| (c.seq, c.generation)).collect();
        for p in &catalog.problems {
            match p {
                super::CatalogProblem::CorruptMarker {
                    seq, generation, ..
                } => current.insert((*seq, *generation)),
                super::CatalogProblem::Orphan(a) => listed.insert(a.commit.object.clone()),
            };
        }
        let superseded: Vec<_> = catalog
            .listing
            .markers()
            .into_iter()
            .filter(|k| !current.contains(&(k.seq, k.generation)))
            .collect();
        let mut tombstones: HashMap<String, DateTime<Utc>> = catalog
            .listing
            .folder("tombstones")
            .filter_map(|m| Some((m.location.filename()?.to_string(), m.last_modified)))
            .collect();
        for c in self.read_commits(volume, superseded).await? {
            if !listed.contains(&c.object) && !tombstones.contains_key(&c.object) {
                let reason = format!("seq {} generation {} superseded", c.seq, c.generation);
                self.write_tombstone(volume, &c.object, &reason).await?;
                tombstones.insert(c.object.clone(), now);
            }
            self.delete("delete superseded marker", &c.key).await?;
            cleaned.markers += 1;
        }
        let prefix = volume.archives_prefix();
        let mut present = HashSet::new();
        for m in catalog.listing.folder("archives") {
            let Some(name) = m.location.filename().map(str::to_string) else {
                continue;
            };
            let expired = match tombstones.get(&name) {
                _ if listed.contains(&name) => false,
                // `<=`: with no grace (`prune --no-grace`) a tombstone written in this run
                // (at `now`, or in the same second of the store's clock) has expired too.
                Some(t) => *t <= cutoff,
                None if parse_archive_name(&name)
                    .is_some_and(|(s, _)| committed_seqs.contains(&s)) =>
                {
                    true
                }
                // An orphan: its seq has no marker. It may be a complete point whose
                // marker was lost (a lost-marker candidate that repair re-commits):
                // that decision belongs here, not to the partial-leftover rule above.
                None => m.last_modified < cutoff,
            };
            if expired {
                self.delete("delete superseded archive", &m.location)
                    .await?;
                cleaned.bytes += m.size;
                cleaned.objects.push(name);
            } else {
                if !listed.contains(&name) && tombstones.contains_key(&name) {
                    cleaned.waiting_bytes += m.size;
                }
                present.insert(name);
            }
        }
        for name in tombstones.keys() {
            if listed.contains(name) || !present.contains(name) {
                self.delete("delete tombstone", &volume.tombstone_key(name))
                    .await?;
            }
        }
        if let Some(root) = &self.local_root {
            let (objects, bytes) = clean_staging(&root.join(prefix.as_ref()));
            cleaned.objects.extend(objects);
            cleaned.bytes += bytes;
        }
        match self.abort_stale_uploads(volume, cutoff).await {
            Ok(keys) => cleaned.uploads = keys,
            Err(e) => cleaned.warnings.push(e.to_string()),
        }
        // The committed set this listing shows is what the caller left: the summary
        // follows it (only the points new to it are read).
        if let Err(e) = self.write_summary(volume, &catalog).await {
            cleaned.warnings.push(summary_warning(volume, &e));
        }
        Ok(cleaned)
    }
}

/// Removes `dir` and the folders under it that hold no file, deepest first; a folder
/// that cannot be removed (it holds a file) is left.
fn remove_empty_dirs(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes the `*.tarc#N` staging files of the local store (the caller holds the
/// volume's lock: no upload of it is in progress); returns their names and bytes.
/// Best effort: a file that cannot be removed is left for the next run.
fn clean_staging(dir: &std::path::Path) -> (Vec<String>, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (Vec::new(), 0);
    };
    let (mut removed, mut bytes) = (Vec::new(), 0);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let staging = name
            .split_once(".tarc#")
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
        let size = e.metadata().map_or(0, |m| m.len());
        if staging && std::fs::remove_file(e.path()).is_ok() {
            removed.push(name);
            bytes += size;
        }
    }
    (removed, bytes)
}

/// Archives opened at once to write a summary.
const OPENS: usize = 16;

/// The summary of a volume (FORMAT.md §15.5), written by those who change its
/// committed set.
impl Repository {
    /// Writes the summary of `volume` for `catalog`, a catalog just listed: every
    /// committed point whose marker and archive the listing shows, each known by its
    /// size and ETag (or, listed without one, its modification time), and whose
    /// archive opens (its bytes come from the summary it replaces where that is still
    /// valid).
    ///
    /// # Errors
    /// [`RepoError::Store`] when the summary cannot be written (a caller warns).
    pub(crate) async fn write_summary(
        &self,
        volume: &VolumeName,
        catalog: &VolumeCatalog,
    ) -> Result<(), RepoError> {
        let listing = &catalog.listing;
        let opened: Vec<Option<Entry>> = futures::stream::iter(&catalog.commits)
            .map(|c| async move {
                let marker = listing.get(&c.key)?;
                let archive = listing.get(&c.archive_key())?;
                let ends = RemoteArchive::open(self, c).await.ok()?.ends()?;
                let (marker_etag, marker_modified) = listed_version(marker);
                let (archive_etag, archive_modified) = listed_version(archive);
                Some(Entry {
                    marker: c.key.filename()?.to_string(),
                    marker_size: marker.size,
                    marker_etag,
                    marker_modified,
                    commit: CommitMarker {
                        archive: c.archive_id.clone(),
                        object: c.object.clone(),
                        size: c.size,
                        digest: c.digest,
                    },
                    archive_size: archive.size,
                    archive_etag,
                    archive_modified,
                    head: hex::encode(&ends.head),
                    tail: hex::encode(&ends.tail),
                })
            })
            .buffered(OPENS)
            .collect()
            .await;
        let points: Vec<Entry> = opened.into_iter().flatten().collect();
        let file = SummaryFile {
            format: FORMAT.into(),
            version: VERSION,
            repository: self.config().id.clone(),
            volume: volume.to_string(),
            sha256: checksum(&points),
            points,
        };
        let key = volume.summary_key();
        let body = serde_json::to_vec(&file).expect("a summary serialises");
        self.store()
            .put(&key, PutPayload::from(body))
            .await
            .map_err(RepoError::store("write", &key))?;
        Ok(())
    }

    /// Lists `volume` and writes its summary (see [`write_summary`]): what `repair`
    /// calls after it changed the committed set, under the volume's lock (backup,
    /// prune and copy write it as they clean leftovers). A failure is returned as a
    /// warning: the summary is derived, and readers do without it.
    ///
    /// [`write_summary`]: Repository::write_summary
    pub(crate) async fn refresh_summary(&self, volume: &VolumeName) -> Option<String> {
        let result = async {
            self.write_summary(volume, &self.catalog(volume).await?)
                .await
        };
        result.await.err().map(|e| summary_warning(volume, &e))
    }
}

/// The warning of a summary of `volume` that could not be written.
pub(crate) fn summary_warning(volume: &VolumeName, e: &RepoError) -> String {
    format!(
        "cannot write the summary of {volume} (`list` and `status` read each point instead): {e}"
    )
}
