//! Publishing an archive: a streaming multipart upload of the archive object, then a
//! small create-if-absent commit marker that makes it part of the repository.
//!
//! Multipart uploads cannot be conditional on S3, so the archive object itself is only
//! data under a unique key; the commit marker (`commits/<seq>`) is the atomic commit
//! point. Two writers racing for the same seq both upload, exactly one creates the
//! marker, and the loser deletes its object. Readers ignore archive objects that no
//! marker names.
//!
//! A run gives back what it wrote: an upload that fails, or whose commit fails, is
//! aborted and its object deleted before the error is returned; an upload dropped
//! unfinished (the run was interrupted by a signal) is aborted in the background, and
//! [`settle_dropped_uploads`] waits for those aborts and says how they went.

use std::sync::Mutex;

use object_store::path::Path;
use std::sync::Arc;

use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult, WriteMultipart,
};
use tokio::task::JoinHandle;

use super::marker::{CommitMarker, read_marker};
use super::{ArchiveId, Commit, RepoError, Repository, VolumeName};
use crate::format::Digest;

/// Size of one multipart part.
const PART_SIZE: u64 = 8 << 20;
/// Parts an upload may have: S3 allows 10,000; the margin covers index and trailer.
const MAX_PARTS: u64 = 9_000;
/// Parts uploaded concurrently; with [`PART_SIZE`] this bounds upload memory.
const PARTS_IN_FLIGHT: usize = 2;

/// An archive being uploaded.
pub struct ArchiveUpload {
    repo: Repository,
    volume: VolumeName,
    seq: u64,
    generation: u32,
    archive_id: ArchiveId,
    key: Path,
    /// `None` once finished or aborted; an upload dropped while `Some` is aborted in
    /// the background.
    upload: Option<WriteMultipart>,
    written: u64,
}

/// Aborts of uploads dropped unfinished, for [`settle_dropped_uploads`].
static DROPPED: Mutex<Vec<JoinHandle<Result<(), String>>>> = Mutex::new(Vec::new());

/// What became of the uploads dropped unfinished (an interrupted run).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DroppedUploads {
    /// Uploads aborted: nothing of them is left on the store.
    pub aborted: usize,
    /// Uploads whose abort failed, with the reason: a later run of the volume removes
    /// them.
    pub failed: Vec<String>,
}

/// Waits for the aborts of uploads that were dropped unfinished (a command unwound by
/// a signal) and says how they went.
pub async fn settle_dropped_uploads() -> DroppedUploads {
    let tasks = std::mem::take(&mut *DROPPED.lock().expect("dropped uploads"));
    let mut out = DroppedUploads::default();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => out.aborted += 1,
            Ok(Err(e)) => out.failed.push(e),
            Err(e) => out.failed.push(e.to_string()),
        }
    }
    out
}

impl Drop for ArchiveUpload {
    fn drop(&mut self) {
        let Some(upload) = self.upload.take() else {
            return;
        };
        let key = self.key.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let task = rt.spawn(async move {
                upload
                    .abort()
                    .await
                    .map_err(|e| format!("aborting the upload of {key}: {e}"))
            });
            DROPPED.lock().expect("dropped uploads").push(task);
        }
    }
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
    /// The committed point, as its marker says (no need to list the catalog again).
    pub commit: Commit,
}

/// Part size for an archive of at most `max_len` bytes: 8 MiB, or more (in whole MiB)
/// when 8 MiB parts would exceed [`MAX_PARTS`]. Upload memory is about three parts.
fn part_size(max_len: u64) -> usize {
    let needed = max_len.div_ceil(MAX_PARTS).next_multiple_of(1 << 20);
    usize::try_from(PART_SIZE.max(needed)).unwrap_or(usize::MAX)
}

impl Repository {
    /// Creates `key` with `body` if it does not exist yet (`PutMode::Create`). On a
    /// repository created with `--allow-unsafe-store`, a store that answers HTTP 501 to
    /// the conditional put gets a HEAD check and an unconditional put instead (a race
    /// between two writers is then not detected: the volume lock is the only guard).
    ///
    /// # Errors
    /// `AlreadyExists` if it does, or what the store returns.
    pub(crate) async fn put_create(
        &self,
        key: &Path,
        body: PutPayload,
    ) -> Result<PutResult, object_store::Error> {
        self.put_create_in(self.store(), key, body).await
    }

    /// [`put_create`](Self::put_create) through `store` (the repository's store, or
    /// the unthrottled one for locks).
    ///
    /// # Errors
    /// As [`put_create`](Self::put_create).
    pub(crate) async fn put_create_in(
        &self,
        store: &Arc<dyn ObjectStore>,
        key: &Path,
        body: PutPayload,
    ) -> Result<PutResult, object_store::Error> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match store.put_opts(key, body.clone(), opts).await {
            Err(e)
                if self.config().unsafe_store
                    && super::s3http::conditional_unsupported(&e).is_some() =>
            {
                match store.head(key).await {
                    Ok(_) => Err(object_store::Error::AlreadyExists {
                        path: key.to_string(),
                        source: "the object exists (checked with HEAD: the store cannot create conditionally)".into(),
                    }),
                    Err(object_store::Error::NotFound { .. }) => store.put(key, body).await,
                    Err(e) => Err(e),
                }
            }
            r => r,
        }
    }
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
        archive_id: &ArchiveId,
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
            archive_id: archive_id.clone(),
            key,
            upload: Some(WriteMultipart::new_with_chunk_size(
                upload,
                part_size(max_len),
            )),
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
        let upload = self.upload.as_mut().expect("upload not finished");
        upload
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(RepoError::store("upload", &self.key))?;
        upload.write(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Abandons the upload and removes what was uploaded. Errors are ignored: what is
    /// left is never named by a commit marker and is removed by a later run.
    pub async fn abort(mut self) {
        if let Some(upload) = self.upload.take() {
            let _ = upload.abort().await;
        }
    }

    /// Deletes the completed but uncommitted archive object; says whether it is gone.
    async fn remove_object(&self) -> bool {
        self.repo.delete("delete", &self.key).await.is_ok()
    }

    /// The error of a commit that failed after the archive object was completed:
    /// the object is deleted first, and the error says whether that worked.
    async fn uncommitted(&self, commit_key: &Path, source: object_store::Error) -> RepoError {
        RepoError::CommitFailed {
            key: commit_key.to_string(),
            removed: if self.remove_object().await {
                format!("this run's archive {} was removed", self.key)
            } else {
                format!(
                    "this run's archive {} is left uncommitted; the next run of the volume removes it",
                    self.key
                )
            },
            source,
        }
    }

    /// Completes the upload and commits it with a create-if-absent marker.
    ///
    /// # Errors
    /// [`RepoError::Conflict`] if another writer committed this seq first (our object
    /// is deleted), [`RepoError::Store`] if the upload or the commit failed.
    pub async fn commit(mut self, digest: Digest) -> Result<Published, RepoError> {
        let store = self.repo.store().clone();
        let mut upload = self.upload.take().expect("upload not finished");
        // Parts in flight fail here, while the upload can still be aborted.
        if let Err(e) = upload.wait_for_capacity(0).await {
            let _ = upload.abort().await;
            return Err(RepoError::store("upload", &self.key)(e));
        }
        if let Err(e) = upload.finish().await {
            // A completion whose answer was lost may have made the object: remove it.
            self.remove_object().await;
            return Err(RepoError::store("complete upload of", &self.key)(e));
        }
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
        let put = super::retry::retry(|| self.repo.put_create(&commit_key, body.clone()));
        if let Err(e) = put.await {
            if super::s3http::conditional_unsupported(&e).is_some() {
                self.remove_object().await;
                return Err(RepoError::store("commit", &commit_key)(e));
            }
            // Either another writer won (AlreadyExists), or the create failed, or
            // it landed and its answer was lost. The marker decides: ours if it
            // names our archive object (a retried create, or a repair that
            // re-committed it); another writer's if it names another; absent, the
            // commit failed. If it cannot be read, the outcome is unknown and our
            // archive may be the committed one: nothing is deleted.
            match read_marker(&self.repo, &commit_key, self.seq).await {
                Ok(m) if m.object == marker.object => {}
                Ok(_) => {
                    self.remove_object().await;
                    return Err(RepoError::Conflict {
                        volume: self.volume.to_string(),
                        seq: self.seq,
                    });
                }
                Err(RepoError::Store {
                    source: object_store::Error::NotFound { .. },
                    ..
                }) => return Err(self.uncommitted(&commit_key, e).await),
                Err(read) => {
                    return Err(RepoError::CommitUnknown {
                        key: commit_key.to_string(),
                        detail: format!("{e}; reading it back: {read}"),
                    });
                }
            }
        }
        let committed_at = store.head(&commit_key).await.ok().map(|m| m.last_modified);
        Ok(Published {
            key: self.key.to_string(),
            size: self.written,
            committed_at,
            commit: Commit {
                volume: self.volume.clone(),
                seq: self.seq,
                generation: self.generation,
                archive_id: marker.archive,
                object: marker.object,
                size: marker.size,
                digest,
                key: commit_key,
            },
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
