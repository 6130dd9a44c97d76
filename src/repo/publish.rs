//! Publishing an archive: a streaming multipart upload of the archive object, then a
//! small create-if-absent commit marker that makes it part of the repository.
//!
//! Multipart uploads cannot be conditional on S3, so the archive object itself is only
//! data under a unique key; the commit marker (`commits/<seq>`) is the atomic commit
//! point. Two writers racing for the same seq both upload, exactly one creates the
//! marker, and the loser deletes its object. Readers ignore archive objects that no
//! marker names.

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};

use super::{RepoError, Repository, VolumeName};
use crate::format::Digest;

/// Size of one multipart part.
const PART_SIZE: u64 = 8 << 20;
/// Parts an upload may have: S3 allows 10,000; the margin covers index and trailer.
const MAX_PARTS: u64 = 9_000;
/// Parts uploaded concurrently; with [`PART_SIZE`] this bounds upload memory.
const PARTS_IN_FLIGHT: usize = 2;

/// Contents of a commit marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMarker {
    /// Archive id.
    pub archive: String,
    /// Object name of the archive under the volume's `archives/` folder.
    pub object: String,
    /// Size of the archive object in bytes.
    pub size: u64,
    /// Archive digest (the trailer checksum).
    pub digest: Digest,
}

/// An archive being uploaded.
pub struct ArchiveUpload {
    repo: Repository,
    volume: VolumeName,
    seq: u64,
    generation: u32,
    archive_id: String,
    key: Path,
    upload: WriteMultipart,
    written: u64,
}

/// A committed archive.
#[derive(Debug, Clone)]
pub struct Published {
    /// Key of the archive object.
    pub key: String,
    /// Size of the archive object.
    pub size: u64,
    /// When the store says the commit marker was written (`None` if it could not be
    /// read back); the store's clock, for grace periods.
    pub committed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Part size for an archive of at most `max_len` bytes: 8 MiB, or more (in whole MiB)
/// when 8 MiB parts would exceed [`MAX_PARTS`]. Upload memory is about three parts.
fn part_size(max_len: u64) -> usize {
    let needed = max_len.div_ceil(MAX_PARTS).next_multiple_of(1 << 20);
    usize::try_from(PART_SIZE.max(needed)).unwrap_or(usize::MAX)
}

impl ArchiveUpload {
    /// Starts uploading archive `archive_id` for `volume` at `seq`. `max_len` bounds
    /// the archive's size (the volume's size will do: stored frames are never larger
    /// than their content) and sets the part size, so that the upload stays within
    /// S3's 10,000 parts.
    ///
    /// # Errors
    /// [`RepoError::Store`] if the upload cannot start (e.g. the repository is not
    /// writable).
    pub async fn start(
        repo: &Repository,
        volume: &VolumeName,
        seq: u64,
        archive_id: &str,
        max_len: u64,
    ) -> Result<Self, RepoError> {
        let key = volume.archive_key(seq, archive_id);
        let upload = repo
            .store()
            .put_multipart(&key)
            .await
            .map_err(RepoError::store("start upload of", &key))?;
        Ok(ArchiveUpload {
            repo: repo.clone(),
            volume: volume.clone(),
            seq,
            generation: 0,
            archive_id: archive_id.to_string(),
            key,
            upload: WriteMultipart::new_with_chunk_size(upload, part_size(max_len)),
            written: 0,
        })
    }

    /// Makes this upload commit under marker generation `generation` of its seq: it
    /// replaces the archive of an existing point (a merge) instead of adding a point.
    pub fn with_generation(mut self, generation: u32) -> Self {
        self.generation = generation;
        self
    }

    /// Appends archive bytes, waiting while too many parts are in flight.
    ///
    /// # Errors
    /// [`RepoError::Store`] when a part upload failed; the caller must then
    /// [`abort`](Self::abort).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), RepoError> {
        self.upload
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(RepoError::store("upload", &self.key))?;
        self.upload.write(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Abandons the upload and removes what was uploaded. Errors are ignored: what is
    /// left is never named by a commit marker and is removed by a later run.
    pub async fn abort(self) {
        let _ = self.upload.abort().await;
    }

    /// Completes the upload and commits it with a create-if-absent marker.
    ///
    /// # Errors
    /// [`RepoError::Conflict`] if another writer committed this seq first (our object
    /// is deleted), [`RepoError::Store`] if the upload or the commit failed.
    pub async fn commit(self, digest: Digest) -> Result<Published, RepoError> {
        let store = self.repo.store().clone();
        self.upload
            .finish()
            .await
            .map_err(RepoError::store("complete upload of", &self.key))?;
        let marker = CommitMarker {
            archive: self.archive_id.clone(),
            object: self.key.filename().unwrap_or_default().to_string(),
            size: self.written,
            digest,
        };
        let commit_key = self.volume.commit_key(self.seq, self.generation);
        let body = PutPayload::from(serde_json::to_vec_pretty(&marker).expect("marker serialises"));
        // Retried on transient errors: a retry of a create that did land comes back as
        // AlreadyExists and is recognised below.
        let put = super::retry::retry(|| {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            store.put_opts(&commit_key, body.clone(), opts)
        });
        match put.await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                // A retried create whose first response was lost also lands here: it is
                // ours if the marker names our archive. Only a marker that provably
                // names another archive makes ours garbage; if it cannot be read, the
                // outcome is unknown and our archive may be the committed one.
                match super::catalog::read_marker(&self.repo, &commit_key).await {
                    Ok(m) if m == marker => {}
                    Ok(_) => {
                        let _ = store.delete(&self.key).await;
                        return Err(RepoError::Conflict {
                            volume: self.volume.to_string(),
                            seq: self.seq,
                        });
                    }
                    Err(e) => {
                        return Err(RepoError::CommitUnknown {
                            key: commit_key.to_string(),
                            detail: e.to_string(),
                        });
                    }
                }
            }
            Err(e) => return Err(RepoError::store("commit", &commit_key)(e)),
        }
        let committed_at = store.head(&commit_key).await.ok().map(|m| m.last_modified);
        Ok(Published {
            key: self.key.to_string(),
            size: self.written,
            committed_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_stay_within_the_s3_limit() {
        assert_eq!(part_size(0), 8 << 20);
        assert_eq!(part_size(70 << 30), 8 << 20);
        for len in [100u64 << 30, 1 << 40, 16 << 40] {
            let part = part_size(len) as u64;
            assert!(len.div_ceil(part) <= MAX_PARTS, "{len}: part {part}");
            assert_eq!(part % (1 << 20), 0);
        }
    }
}
