//! Repairing a volume's catalog: corrupt commit markers (those that do not parse or
//! break the consistency rules, and those that disagree with an intact archive in
//! size or digest) are set aside, and complete orphan archives (a lost or corrupt
//! marker, or a run killed between upload and commit) whose parent link holds are
//! committed again.
//!
//! Nothing here deletes an archive or rewrites block data. A re-commit writes a new
//! create-if-absent marker at a generation above every marker key of its seq, so it
//! never races with or replaces a valid marker.

use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde::Serialize;

use super::catalog::VolumeCatalog;
use super::marker::{CommitMarker, read_marker};
use super::{CatalogProblem, Commit, DamageKind, RemoteArchive, RepoError, Repository, VolumeName};

/// Archives opened concurrently to check their markers.
const MARKER_CHECKS: usize = 8;

/// Which orphans to re-commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairScope {
    /// Every complete orphan, and set every corrupt marker aside (`thinarc repair`).
    All,
    /// Only complete orphans above the newest committed seq, and no marker is set
    /// aside (what a backup does before choosing its parent).
    AboveNewest,
}

/// One action of a repair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepairAction {
    /// The seq concerned.
    pub seq: u64,
    /// `recommit`, `set-aside` or `skip`.
    pub action: &'static str,
    /// The object concerned (archive or marker key).
    pub object: String,
    /// Why, or what was found.
    pub detail: String,
}

impl std::fmt::Display for RepairAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seq {} {} {}: {}",
            self.seq, self.action, self.object, self.detail
        )
    }
}

impl Repository {
    /// Repairs the catalog of `volume` as `scope` says (nothing is written with
    /// `dry_run`). The caller holds the volume's lock.
    ///
    /// # Errors
    /// [`RepoError::Store`] when listing or writing fails.
    pub async fn repair_catalog(
        &self,
        volume: &VolumeName,
        scope: RepairScope,
        dry_run: bool,
    ) -> Result<Vec<RepairAction>, RepoError> {
        let catalog = self.catalog(volume).await?;
        let actions = self.repair_listed(volume, catalog, scope, dry_run).await?.0;
        if !dry_run && let Some(warning) = self.refresh_summary(volume).await {
            tracing::warn!("{warning}");
        }
        Ok(actions)
    }

    /// [`repair_catalog`](Self::repair_catalog) of `catalog`, the volume's catalog the
    /// caller listed; also returns it as repaired (points committed again are listed;
    /// the problems are those found), so that the caller need not list it again.
    ///
    /// # Errors
    /// As [`repair_catalog`](Self::repair_catalog).
    pub async fn repair_listed(
        &self,
        volume: &VolumeName,
        catalog: VolumeCatalog,
        scope: RepairScope,
        dry_run: bool,
    ) -> Result<(Vec<RepairAction>, VolumeCatalog), RepoError> {
        let VolumeCatalog {
            mut commits,
            mut problems,
            max_seq,
            listing,
        } = catalog;
        if scope == RepairScope::All {
            self.check_markers(&mut commits, &mut problems).await?;
        }
        let newest = commits.last().map_or(0, |c| c.seq);
        let records = self.damage_records_listed(&listing).await;
        let mut actions = Vec::new();
        for p in &problems {
            let CatalogProblem::Orphan(a) = p else {
                continue;
            };
            if scope == RepairScope::AboveNewest && a.commit.seq <= newest {
                continue;
            }
            let mut action = RepairAction {
                seq: a.commit.seq,
                action: "recommit",
                object: a.key().to_string(),
                detail: String::new(),
            };
            if let Err(why) = self.check_orphan(a, &commits).await {
                action.action = "skip";
                action.detail = why;
                actions.push(action);
                continue;
            }
            let generation = problems
                .iter()
                .filter_map(|p| match p {
                    CatalogProblem::CorruptMarker {
                        seq, generation, ..
                    } if *seq == a.commit.seq => Some(generation + 1),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            let commit = Commit {
                generation,
                key: volume.commit_key(a.commit.seq, generation),
                ..a.commit.clone()
            };
            action.detail = format!("committed again as {}", commit.key);
            if !dry_run {
                self.put_marker(&commit).await?;
                // A record of the whole archive (written while its marker disagreed
                // with it) is stale: the archive was just checked in full.
                if records
                    .iter()
                    .any(|r| r.archive == commit.archive_id && r.kind == DamageKind::Archive)
                {
                    self.clear_damage(volume, &commit.archive_id).await?;
                }
            }
            let at = commits.partition_point(|c| c.seq < commit.seq);
            commits.insert(at, commit);
            actions.push(action);
        }
        if scope == RepairScope::All {
            for p in &problems {
                if let CatalogProblem::CorruptMarker {
                    seq, key, detail, ..
                } = p
                {
                    let key = object_store::path::Path::from(key.as_str());
                    let aside = volume
                        .damaged_prefix()
                        .join(key.filename().unwrap_or_default());
                    if !dry_run {
                        self.set_aside(&key, &aside).await?;
                    }
                    actions.push(RepairAction {
                        seq: *seq,
                        action: "set-aside",
                        object: key.to_string(),
                        detail: format!("corrupt ({detail}): moved to {aside}"),
                    });
                }
            }
        }
        actions.sort_by_key(|a| a.seq);
        let repaired = VolumeCatalog {
            commits,
            problems,
            max_seq,
            listing,
        };
        Ok((actions, repaired))
    }

    /// Checks every committed marker against its archive (header and trailer reads).
    /// A marker that disagrees with an archive that is intact at its listed size (a
    /// flipped byte in `size` or `digest`) is moved from `commits` to `problems` as a
    /// corrupt marker, and its archive becomes an orphan to commit again.
    async fn check_markers(
        &self,
        commits: &mut Vec<Commit>,
        problems: &mut Vec<CatalogProblem>,
    ) -> Result<(), RepoError> {
        let opened: Vec<_> = futures::stream::iter(commits.iter())
            .map(|c| RemoteArchive::open(self, c))
            .buffered(MARKER_CHECKS)
            .collect()
            .await;
        let mut bad = Vec::new();
        for (c, opened) in commits.iter().zip(opened) {
            let e = match opened {
                Ok(_) => continue,
                Err(e @ RepoError::Store { .. }) => return Err(e),
                Err(e) => e,
            };
            let Some(a) = RemoteArchive::intact_at_listed_size(self, c).await else {
                continue; // the archive is damaged: verify and backup deal with that
            };
            if a.commit.size == c.size && a.commit.digest == c.digest {
                continue;
            }
            let detail = match e {
                RepoError::BadCommit { detail, .. } => detail,
                e => e.to_string(),
            };
            problems.push(CatalogProblem::CorruptMarker {
                volume: c.volume.clone(),
                seq: c.seq,
                generation: c.generation,
                key: c.key.to_string(),
                detail,
            });
            problems.push(CatalogProblem::Orphan(std::sync::Arc::new(a)));
            bad.push(c.seq);
        }
        commits.retain(|c| !bad.contains(&c.seq));
        // Orphans oldest first, so that a parent is committed again before its child.
        problems.sort_by_key(|p| (matches!(p, CatalogProblem::Orphan(_)), p.seq()));
        Ok(())
    }

    /// Checks an orphan in full before it is committed again: every index segment, a
    /// parent that is committed (or re-committed) and the archive its header names (by
    /// id and digest, or by image digest after a merge), of the same volume id and
    /// block size.
    async fn check_orphan(&self, a: &RemoteArchive, commits: &[Commit]) -> Result<(), String> {
        for i in 0..a.directory().len() {
            // Without the key, an encrypted archive's segments are checked against
            // their checksums (which cover the sealed bytes).
            let checked = if a.is_readable() {
                a.segment(i).await.map(drop)
            } else {
                a.check_segment_sum(i).await
            };
            checked.map_err(|e| format!("not intact, left as it is: {e}"))?;
        }
        if a.header.volume_name != a.commit.volume.as_str() {
            return Err(format!(
                "belongs to volume {}, left as it is",
                a.header.volume_name
            ));
        }
        let Some(parent) = &a.header.parent else {
            return Ok(()); // a full archive needs no parent
        };
        let Some(c) = commits.iter().find(|c| c.seq == parent.seq) else {
            return Err(format!(
                "its parent seq {} is not committed, left as it is",
                parent.seq
            ));
        };
        let p = RemoteArchive::open(self, c)
            .await
            .map_err(|e| format!("its parent cannot be read ({e}), left as it is"))?;
        let same = c.archive_id == parent.id && c.digest == parent.digest;
        let same_image = parent.image == Some(p.trailer.image_digest);
        if !(same || same_image)
            || p.header.volume_id != a.header.volume_id
            || p.header.block_size != a.header.block_size
        {
            return Err(format!(
                "its parent link to seq {} (archive {}) does not hold, left as it is",
                parent.seq, parent.id
            ));
        }
        Ok(())
    }

    /// Writes the create-if-absent marker of `commit`.
    async fn put_marker(&self, commit: &Commit) -> Result<(), RepoError> {
        let marker = CommitMarker {
            archive: commit.archive_id.clone(),
            object: commit.object.clone(),
            size: commit.size,
            digest: commit.digest,
        };
        let body = PutPayload::from(serde_json::to_vec_pretty(&marker).expect("marker serialises"));
        // Through `put_create`, like every commit: a store without conditional writes
        // falls back as `init --allow-unsafe-store` allowed.
        match super::retry::retry(|| self.put_create(&commit.key, body.clone())).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                match read_marker(self, &commit.key, commit.seq).await {
                    Ok(m) if m == marker => Ok(()),
                    _ => Err(RepoError::BadCommit {
                        key: commit.key.to_string(),
                        detail: format!(
                            "was written meanwhile and does not name archive {} (run `thinarc repair {}` again)",
                            commit.archive_id, commit.volume
                        ),
                    }),
                }
            }
            Err(e) => Err(RepoError::store("commit", &commit.key)(e)),
        }
    }

    /// Copies the object at `key` to `aside`, then deletes it.
    async fn set_aside(
        &self,
        key: &object_store::path::Path,
        aside: &object_store::path::Path,
    ) -> Result<(), RepoError> {
        let bytes = self
            .store()
            .get(key)
            .await
            .map_err(RepoError::store("read", key))?
            .bytes()
            .await
            .map_err(RepoError::store("read", key))?;
        self.store()
            .put(aside, PutPayload::from(bytes))
            .await
            .map_err(RepoError::store("write", aside))?;
        self.delete("set aside", key).await
    }
}
