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
    MultipartUpload, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutPayloadMut,
    PutResult,
};
use tokio::task::{JoinHandle, JoinSet};

use super::marker::{CommitMarker, read_marker};
use super::{ArchiveId, Commit, RepoError, Repository, VolumeName};
use crate::format::Digest;

/// Size of a multipart part, the least and (for archives up to `PART_SIZE` x
/// [`SMALL_PARTS`]) the usual.
const PART_SIZE: u64 = 8 << 20;
/// Parts an upload may have: S3 allows 10,000; the margin covers index and trailer.
const MAX_PARTS: u64 = 9_000;
/// Parts of [`PART_SIZE`] an upload starts with, whatever the volume's size: the rest
/// of the parts are enough for the rest of the largest archive.
const SMALL_PARTS: u64 = MAX_PARTS / 4;
/// Bytes of parts uploaded concurrently: three 8 MiB parts, so that an object store's
/// latency per request overlaps the next part's sending; at least two parts of larger
/// sizes. (Four took a full backup's peak RSS to 61 MiB.)
const IN_FLIGHT_BYTES: u64 = 24 << 20;

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
    upload: Option<Parts>,
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

/// Size of part `index` (from 0) of an archive of at most `max_len` bytes whose earlier
/// parts hold `sent` bytes: [`PART_SIZE`] for the first [`SMALL_PARTS`], then (in whole
/// MiB) at least what the rest of `max_len` needs in the parts left. Parts follow the
/// archive, not the volume: a sparse 4 TiB volume whose archive is 200 MB uploads 8 MiB
/// parts. The index can take an archive past `max_len` by a little (a 16th is allowed
/// for); past it parts are `PART_SIZE` again, within S3's margin above [`MAX_PARTS`].
fn part_size(max_len: u64, index: u64, sent: u64) -> u64 {
    if index < SMALL_PARTS {
        return PART_SIZE;
    }
    let left = MAX_PARTS.saturating_sub(index).max(1);
    let rest = (max_len + max_len / 16).saturating_sub(sent);
    PART_SIZE.max(rest.div_ceil(left).next_multiple_of(1 << 20))
}

/// A multipart upload in parts of [`part_size`], the parts in flight uploaded by tasks.
/// (`object_store`'s `WriteMultipart` has one part size for the whole upload, which
/// the volume's size would set.)
struct Parts {
    upload: Box<dyn MultipartUpload>,
    buffer: PutPayloadMut,
    tasks: JoinSet<object_store::Result<()>>,
    max_len: u64,
    /// Parts started, and the bytes they hold.
    started: u64,
    sent: u64,
}

impl Parts {
    fn new(upload: Box<dyn MultipartUpload>, max_len: u64) -> Self {
        Parts {
            upload,
            buffer: PutPayloadMut::new(),
            tasks: JoinSet::new(),
            max_len,
            started: 0,
            sent: 0,
        }
    }

    /// Waits until fewer than `parts` parts are in flight (none with 0).
    async fn wait_for_capacity(&mut self, parts: usize) -> object_store::Result<()> {
        while !self.tasks.is_empty() && self.tasks.len() >= parts.max(1) {
            if let Some(done) = self.tasks.join_next().await {
                done.map_err(|e| object_store::Error::Generic {
                    store: "upload",
                    source: Box::new(e),
                })??;
            }
        }
        Ok(())
    }

    /// Parts in flight at most, for parts of the next part's size.
    fn parts_in_flight(&self) -> usize {
        let part = part_size(self.max_len, self.started, self.sent);
        (IN_FLIGHT_BYTES / part).max(2) as usize
    }

    /// Buffers `bytes`, starting the upload of every part that fills.
    fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let len = part_size(self.max_len, self.started, self.sent) as usize;
            let take = bytes.len().min(len - self.buffer.content_length());
            self.buffer.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buffer.content_length() == len {
                self.put_part();
            }
        }
    }

    fn put_part(&mut self) {
        let part: PutPayload = std::mem::take(&mut self.buffer).into();
        self.started += 1;
        self.sent += part.content_length() as u64;
        self.tasks.spawn(self.upload.put_part(part));
    }

    /// Abandons the upload, removing the parts uploaded.
    async fn abort(mut self) -> object_store::Result<()> {
        self.tasks.shutdown().await;
        self.upload.abort().await
    }

    /// Uploads the last part and completes the upload (aborting it on failure).
    async fn finish(mut self) -> object_store::Result<PutResult> {
        if self.buffer.content_length() > 0 {
            self.put_part();
        }
        if let Err(e) = self.wait_for_capacity(0).await {
            self.abort().await?;
            return Err(e);
        }
        match self.upload.complete().await {
            Err(e) => {
                self.tasks.shutdown().await;
                self.upload.abort().await?;
                Err(e)
            }
            Ok(result) => Ok(result),
        }
    }
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
            upload: Some(Parts::new(upload, max_len)),
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
            .wait_for_capacity(upload.parts_in_flight())
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
                preread: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_follow_the_archive_and_stay_within_the_s3_limit() {
        for max_len in [0u64, 70 << 30, 100 << 30, 1 << 40, 4 << 40, 16 << 40] {
            // A small archive of any volume is sent in 8 MiB parts.
            assert_eq!(part_size(max_len, 0, 0), 8 << 20);
            assert_eq!(part_size(max_len, 24, 24 * (8 << 20)), 8 << 20);
            // The largest archive (and its index) fits in MAX_PARTS parts.
            let (mut index, mut sent) = (0, 0);
            let end = max_len + max_len / 16;
            while sent < end {
                let part = part_size(max_len, index, sent);
                assert_eq!(part % (1 << 20), 0);
                assert!(part <= 5 << 30, "{max_len}: part {part} over S3's 5 GiB");
                sent += part;
                index += 1;
            }
            assert!(index <= MAX_PARTS, "{max_len}: {index} parts");
        }
    }
}
