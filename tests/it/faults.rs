//! Failures of the store and damage to the repository, injected through a wrapping
//! `ObjectStore` on a real local repository: a disk that fills up mid-upload, commit
//! markers that cannot be written or whose response is lost, two writers racing for one
//! seq, a corrupt archive in the middle of a chain, an archive deleted from under the
//! repository, and a read failing mid-restore.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path as Key;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};
use thinarc::backup::BackupError;
use thinarc::format::{ArchiveReader, DIR_ENTRY_LEN, DirEntry};
use thinarc::repo::{Commit, RepoError, Repository, VolumeName};
use tokio::sync::Barrier;

use crate::chain::{LibRepo, backup_file, local_store, restore_every_point, restore_seq};
use crate::util::{Rng, assert_same_image, make_image, read, write};

const MIB: usize = 1 << 20;

/// How a lost commit response shows up to the writer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lost {
    /// A transport error.
    Generic,
    /// The retried create finds the object (which is the writer's own).
    AlreadyExists,
}

/// What the wrapper does wrong; changed by the tests between operations.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Bytes multipart uploads may still store; a part that does not fit fails with
    /// ENOSPC (as a full disk or quota).
    pub(crate) space: Option<u64>,
    /// Commit-marker puts fail without writing.
    pub(crate) fail_commits: bool,
    /// The next commit-marker put is performed, then reports this failure.
    pub(crate) lose_commit_response: Option<Lost>,
    /// Commit-marker puts wait here first (to line up racing writers).
    pub(crate) commit_barrier: Option<Arc<Barrier>>,
    /// Multipart uploads wait here before they start (so that racing writers have both
    /// chosen their seq before either archive exists).
    pub(crate) upload_barrier: Option<Arc<Barrier>>,
    /// The next read of the commit marker whose key ends with this fails.
    pub(crate) fail_marker_read: Option<String>,
    /// Ranged archive reads longer than this fail (frame fetches, not header reads).
    pub(crate) fail_reads_longer_than: Option<u64>,
    /// Create-if-absent puts overwrite, as some S3-compatible servers do.
    pub(crate) ignore_conditions: bool,
    /// Every store operation from this index on fails, as if the process had been
    /// killed there (operations are counted from 0 in `ops`).
    pub(crate) crash_at: Option<usize>,
    /// Store operations seen so far.
    pub(crate) ops: usize,
}

impl Faults {
    /// Counts one operation; fails it if the process is "dead".
    fn tick(&mut self) -> object_store::Result<()> {
        let i = self.ops;
        self.ops += 1;
        match self.crash_at {
            // A final error, so that nothing retries a dead process's calls.
            Some(k) if i >= k => Err(object_store::Error::PermissionDenied {
                path: format!("operation {i}"),
                source: "the process was killed before this store operation".into(),
            }),
            _ => Ok(()),
        }
    }
}

fn enospc() -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: std::io::Error::from_raw_os_error(libc::ENOSPC).into(),
    }
}

fn is_commit(key: &Key) -> bool {
    key.as_ref().contains("/commits/")
}

/// An `ObjectStore` that forwards to `inner` except where [`Faults`] say otherwise.
#[derive(Debug)]
pub(crate) struct FaultyStore {
    pub(crate) inner: Arc<dyn ObjectStore>,
    pub(crate) faults: Arc<Mutex<Faults>>,
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Key,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.faults.lock().unwrap().tick()?;
        if self.faults.lock().unwrap().ignore_conditions {
            opts.mode = object_store::PutMode::Overwrite;
        }
        if !is_commit(location) {
            return self.inner.put_opts(location, payload, opts).await;
        }
        let (fail, lose, barrier) = {
            let mut f = self.faults.lock().unwrap();
            (
                f.fail_commits,
                f.lose_commit_response.take(),
                f.commit_barrier.clone(),
            )
        };
        if let Some(b) = barrier {
            b.wait().await;
        }
        if fail {
            return Err(enospc());
        }
        let result = self.inner.put_opts(location, payload, opts).await?;
        match lose {
            None => Ok(result),
            Some(Lost::Generic) => Err(object_store::Error::Generic {
                store: "faulty",
                source: std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset before the response",
                )
                .into(),
            }),
            Some(Lost::AlreadyExists) => Err(object_store::Error::AlreadyExists {
                path: location.to_string(),
                source: "the retried create found the object".into(),
            }),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Key,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.faults.lock().unwrap().tick()?;
        let barrier = self.faults.lock().unwrap().upload_barrier.clone();
        if let Some(b) = barrier {
            b.wait().await;
        }
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            faults: self.faults.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Key,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let limit = {
            let mut f = self.faults.lock().unwrap();
            f.tick()?;
            if f.fail_marker_read
                .as_ref()
                .is_some_and(|k| location.as_ref().ends_with(k.as_str()))
            {
                f.fail_marker_read = None;
                return Err(object_store::Error::Generic {
                    store: "faulty",
                    source: std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "injected marker read failure",
                    )
                    .into(),
                });
            }
            f.fail_reads_longer_than
        };
        if let (Some(limit), Some(object_store::GetRange::Bounded(r))) = (limit, &options.range)
            && r.end - r.start > limit
        {
            return Err(object_store::Error::Generic {
                store: "faulty",
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "injected read timeout")
                    .into(),
            });
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Key,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        if self.faults.lock().unwrap().fail_reads_longer_than.is_some() {
            unimplemented!("get_ranges is not used by thinarc");
        }
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Key>>,
    ) -> BoxStream<'static, object_store::Result<Key>> {
        let faults = self.faults.clone();
        let alive = locations.map(move |k| {
            faults.lock().unwrap().tick()?;
            k
        });
        self.inner.delete_stream(alive.boxed())
    }

    fn list(&self, prefix: Option<&Key>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Err(e) = self.faults.lock().unwrap().tick() {
            return futures::stream::once(async { Err(e) }).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Key>) -> object_store::Result<ListResult> {
        self.faults.lock().unwrap().tick()?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Key,
        to: &Key,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Key,
        to: &Key,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// A writer's view of a store whose listings of lock objects miss the other writers'
/// locks (as a store with stale listings would): the volume lock no longer keeps two
/// writers apart, so the commit guard behind it is what is left.
#[derive(Debug)]
pub(crate) struct OwnLocksOnly {
    inner: Arc<dyn ObjectStore>,
    /// Lock objects this writer put.
    own: Mutex<std::collections::HashSet<Key>>,
}

impl OwnLocksOnly {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>) -> Self {
        OwnLocksOnly {
            inner,
            own: Mutex::default(),
        }
    }

    fn is_lock(key: &Key) -> bool {
        key.as_ref().contains("/locks/")
    }
}

impl fmt::Display for OwnLocksOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnLocksOnly({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for OwnLocksOnly {
    async fn put_opts(
        &self,
        location: &Key,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if Self::is_lock(location) {
            self.own.lock().unwrap().insert(location.clone());
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Key,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Key,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Key>>,
    ) -> BoxStream<'static, object_store::Result<Key>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Key>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let own = self.own.lock().unwrap().clone();
        self.inner
            .list(prefix)
            .filter(move |m| {
                let keep = match m {
                    Ok(m) => !Self::is_lock(&m.location) || own.contains(&m.location),
                    Err(_) => true,
                };
                futures::future::ready(keep)
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Key>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Key,
        to: &Key,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Key,
        to: &Key,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// A multipart upload whose parts fail once the space budget is used up.
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    faults: Arc<Mutex<Faults>>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let len = data.content_length() as u64;
        {
            let mut f = self.faults.lock().unwrap();
            if let Err(e) = f.tick() {
                return futures::future::ready(Err(e)).boxed();
            }
            if let Some(space) = f.space.as_mut() {
                if len > *space {
                    *space = 0;
                    return futures::future::ready(Err(enospc())).boxed();
                }
                *space -= len;
            }
        }
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.faults.lock().unwrap().tick()?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

/// A local repository reached through a [`FaultyStore`].
struct FaultyRepo {
    t: LibRepo,
    repo: Repository,
    faults: Arc<Mutex<Faults>>,
}

impl FaultyRepo {
    async fn new() -> Self {
        let t = LibRepo::new().await;
        let faults = Arc::new(Mutex::new(Faults::default()));
        let store = FaultyStore {
            inner: local_store(&t.path("repo")),
            faults: faults.clone(),
        };
        let repo = Repository::open(Arc::new(store), "faulty")
            .await
            .expect("open through the wrapper");
        FaultyRepo { t, repo, faults }
    }

    fn set(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.faults.lock().unwrap());
    }

    /// Names of the files in `volume`'s archives folder on disk, staging files
    /// included.
    fn archive_files(&self, volume: &str) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(self.t.archives_dir(volume)) {
            Ok(dir) => dir
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    /// Whether the commit marker of `seq` exists on disk.
    fn marker_exists(&self, volume: &str, seq: u64) -> bool {
        self.t
            .path("repo")
            .join("volumes")
            .join(volume)
            .join("commits")
            .join(format!("{seq:012}"))
            .exists()
    }

    /// Asserts that every commit names an archive object that exists.
    async fn assert_commits_name_existing_objects(&self, volume: &VolumeName) -> Vec<Commit> {
        let commits = self.repo.commits(volume).await.expect("commits");
        let files = self.archive_files(volume.as_str());
        for c in &commits {
            assert!(
                files.contains(&c.object),
                "seq {} names {} which is not among {files:?}",
                c.seq,
                c.object
            );
        }
        commits
    }
}

fn seqs(commits: &[Commit]) -> Vec<u64> {
    commits.iter().map(|c| c.seq).collect()
}

/// Random (incompressible) bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_full_during_upload_commits_nothing_and_keeps_earlier_points() {
    let f = FaultyRepo::new().await;
    let volume = VolumeName::new("full").unwrap();
    let src = f.t.path("full.img");
    // 30 MiB of noise: archives of four 8 MiB parts.
    let mut img = noise(30 * MIB, 1);
    write(&src, &img);
    backup_file(&f.repo, &volume, &src, None)
        .await
        .expect("full");
    let mut points = vec![img.clone()];
    img[5 * MIB..5 * MIB + 3].copy_from_slice(b"abc");
    write(&src, &img);
    backup_file(&f.repo, &volume, &src, None)
        .await
        .expect("delta");
    points.push(img.clone());

    // Space for one part: the second part fails while the archive is still being
    // written (the upload is aborted by the backup). Space for three parts: the last
    // part fails when the upload completes. No space and a small change: the only part
    // fails when the upload completes.
    for (space, change) in [
        (8 * MIB as u64, noise(30 * MIB, 2)),
        (24 * MIB as u64, noise(30 * MIB, 3)),
        (0, noise(100, 4)),
    ] {
        let mut next = img.clone();
        next[..change.len()].copy_from_slice(&change);
        write(&src, &next);
        f.set(|x| x.space = Some(space));
        let e = backup_file(&f.repo, &volume, &src, None)
            .await
            .expect_err("the disk is full");
        f.set(|x| x.space = None);
        let msg = e.to_string();
        assert!(msg.contains("No space left on device"), "{msg}");
        assert!(
            matches!(e, BackupError::Repo(RepoError::Store { .. })),
            "{e:?}"
        );
        assert!(
            !f.marker_exists("full", 3),
            "no commit marker for the failed seq"
        );
        let commits = f.assert_commits_name_existing_objects(&volume).await;
        assert_eq!(seqs(&commits), [1, 2], "only the earlier points are listed");
        let leftovers: Vec<_> = f
            .archive_files("full")
            .into_iter()
            .filter(|n| n.starts_with("000000000003-"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "the aborted upload left {leftovers:?} (space {space})"
        );
    }
    restore_every_point(&f.repo, f.t.dir.path(), &volume, &points).await;

    // Space again: the next backup gets the next seq and restores.
    let r = backup_file(&f.repo, &volume, &src, None)
        .await
        .expect("backup after the disk was freed");
    assert_eq!(r.seq, 3);
    let out = f.t.path("after.img");
    restore_seq(&f.repo, &volume, 3, &out)
        .await
        .expect("restore seq 3");
    assert_same_image(&read(&out), &read(&src), "seq 3");
}

#[tokio::test]
async fn failed_commit_marker_put_lists_nothing_and_a_retry_succeeds() {
    let f = FaultyRepo::new().await;
    let volume = VolumeName::new("marker").unwrap();
    let src = f.t.path("marker.img");
    let img = make_image(MIB + 5, 11);
    write(&src, &img);

    f.set(|x| x.fail_commits = true);
    let e = backup_file(&f.repo, &volume, &src, None)
        .await
        .expect_err("the marker cannot be written");
    let msg = e.to_string();
    assert!(
        msg.contains("commit") && msg.contains("commits/000000000001"),
        "{msg}"
    );
    assert!(msg.contains("No space left on device"), "{msg}");
    assert!(
        f.repo.commits(&volume).await.unwrap().is_empty(),
        "nothing is listed"
    );
    // The marker was read back and is absent: the run removed its archive, and says so.
    assert!(
        msg.contains("this run's archive") && msg.contains("was removed"),
        "{msg}"
    );
    let left = f
        .repo
        .store()
        .list(None)
        .map(|m| m.unwrap().location.to_string());
    let left: Vec<String> = left.collect().await;
    assert!(
        !left.iter().any(|k| k.contains("/archives/")),
        "the uncommitted archive is gone: {left:?}"
    );
    f.set(|x| x.fail_commits = false);

    let r = backup_file(&f.repo, &volume, &src, None)
        .await
        .expect("retry");
    // The failed run's archive is gone, so seq 1 was never a point and is used now.
    assert_eq!(r.seq, 1);
    let commits = f.assert_commits_name_existing_objects(&volume).await;
    assert_eq!(seqs(&commits), [1]);
    assert_eq!(commits[0].archive_id, r.archive);
    restore_every_point(&f.repo, f.t.dir.path(), &volume, &[img]).await;
}

/// The marker put reached the store but its response was lost (a transport error). The
/// commit is retried, the retry finds the marker, reads it back, recognises its own
/// write and succeeds: the point is listed, restores, and the next backup builds on it.
#[tokio::test]
async fn lost_commit_response_leaves_a_complete_listed_point() {
    let f = FaultyRepo::new().await;
    let volume = VolumeName::new("lost").unwrap();
    let src = f.t.path("lost.img");
    let mut img = make_image(MIB, 12);
    write(&src, &img);
    backup_file(&f.repo, &volume, &src, None)
        .await
        .expect("full");
    let mut points = vec![img.clone()];

    img[1000..2000].fill(9);
    write(&src, &img);
    f.set(|x| x.lose_commit_response = Some(Lost::Generic));
    let r = backup_file(&f.repo, &volume, &src, None)
        .await
        .expect("the retried commit recognises its own marker");
    assert_eq!(r.seq, 2);
    let commits = f.assert_commits_name_existing_objects(&volume).await;
    assert_eq!(
        seqs(&commits),
        [1, 2],
        "the marker was written, so seq 2 is listed"
    );
    points.push(img.clone());

    img[3000..4000].fill(7);
    write(&src, &img);
    let r = backup_file(&f.repo, &volume, &src, None)
        .await
        .expect("next backup");
    assert_eq!(r.seq, 3);
    points.push(img.clone());
    restore_every_point(&f.repo, f.t.dir.path(), &volume, &points).await;
}

/// A retried create that finds the marker it wrote itself is a success.
#[tokio::test]
async fn commit_recognises_its_own_marker_on_already_exists() {
    let f = FaultyRepo::new().await;
    let volume = VolumeName::new("own").unwrap();
    let src = f.t.path("own.img");
    let mut img = make_image(MIB, 13);
    write(&src, &img);
    backup_file(&f.repo, &volume, &src, None)
        .await
        .expect("full");
    let mut points = vec![img.clone()];

    img[70_000..80_000].fill(3);
    write(&src, &img);
    f.set(|x| x.lose_commit_response = Some(Lost::AlreadyExists));
    let r = backup_file(&f.repo, &volume, &src, None)
        .await
        .expect("our own marker is a success");
    assert_eq!(r.seq, 2);
    let commits = f.assert_commits_name_existing_objects(&volume).await;
    assert_eq!(seqs(&commits), [1, 2]);
    assert_eq!(commits[1].archive_id, r.archive);
    points.push(img.clone());
    restore_every_point(&f.repo, f.t.dir.path(), &volume, &points).await;
}

/// As above, but reading the marker back fails (the same flaky network that lost the
/// response). The writer cannot tell whose marker it is, so it must not delete its
/// archive: the marker may name it.
#[tokio::test]
async fn commit_keeps_its_archive_when_its_marker_cannot_be_read_back() {
    let f = FaultyRepo::new().await;
    let volume = VolumeName::new("unread").unwrap();
    let src = f.t.path("unread.img");
    let mut img = make_image(MIB, 17);
    write(&src, &img);
    backup_file(&f.repo, &volume, &src, None)
        .await
        .expect("full");
    let mut points = vec![img.clone()];

    img[70_000..80_000].fill(4);
    write(&src, &img);
    f.set(|x| {
        x.lose_commit_response = Some(Lost::AlreadyExists);
        x.fail_marker_read = Some("commits/000000000002".into());
    });
    // Reporting an error is fine (the outcome is unknown to the writer); claiming that
    // another writer won, or destroying the committed point, is not.
    let r = backup_file(&f.repo, &volume, &src, None).await;
    assert!(
        !matches!(r, Err(BackupError::Repo(RepoError::Conflict { .. }))),
        "no other writer was involved: {r:?}"
    );
    f.set(|x| *x = Faults::default());
    let commits = f.assert_commits_name_existing_objects(&volume).await;
    assert_eq!(seqs(&commits), [1, 2], "the marker was written");
    points.push(img.clone());
    restore_every_point(&f.repo, f.t.dir.path(), &volume, &points).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_writers_racing_for_one_seq_one_wins_the_loser_cleans_up() {
    let f = FaultyRepo::new().await;
    let volume = VolumeName::new("race").unwrap();
    let (a, b) = (f.t.path("a.img"), f.t.path("b.img"));
    let base = make_image(2 * MIB, 14);
    write(&a, &base);
    backup_file(&f.repo, &volume, &a, None)
        .await
        .expect("parent");
    let mut img_a = base.clone();
    img_a[..4096].fill(0xA);
    let mut img_b = base.clone();
    img_b[MIB..MIB + 4096].fill(0xB);
    write(&a, &img_a);
    write(&b, &img_b);

    // Both compute seq 2 and upload (a writer takes a seq above every archive object,
    // so the first barrier holds both uploads back until both have chosen); the second
    // lets neither commit before the other has its archive uploaded. (Writers take the
    // volume lock, which each writer's listings here do not show to the other; this is
    // the guard behind it.)
    f.set(|x| {
        x.upload_barrier = Some(Arc::new(Barrier::new(2)));
        x.commit_barrier = Some(Arc::new(Barrier::new(2)));
    });
    let writer = async || {
        let store = Arc::new(OwnLocksOnly::new(f.repo.store().clone()));
        Repository::open(store, "faulty").await.unwrap()
    };
    let (writer_a, writer_b) = (writer().await, writer().await);
    let both = async {
        tokio::join!(
            backup_file(&writer_a, &volume, &a, None),
            backup_file(&writer_b, &volume, &b, None)
        )
    };
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(60), both)
        .await
        .expect("both writers reach the commit");
    f.set(|x| {
        x.upload_barrier = None;
        x.commit_barrier = None;
    });

    let (winner, loser_err, winner_img) = match (ra, rb) {
        (Ok(w), Err(e)) => (w, e, &img_a),
        (Err(e), Ok(w)) => (w, e, &img_b),
        (ra, rb) => panic!("exactly one writer must win: {ra:?} / {rb:?}"),
    };
    assert_eq!(winner.seq, 2);
    assert!(
        matches!(
            &loser_err,
            BackupError::Repo(RepoError::Conflict { seq: 2, .. })
        ),
        "the loser gets a conflict: {loser_err:?}"
    );
    assert!(
        loser_err.to_string().contains("committed seq 2 first"),
        "{loser_err}"
    );

    let commits = f.assert_commits_name_existing_objects(&volume).await;
    assert_eq!(seqs(&commits), [1, 2]);
    assert_eq!(commits[1].archive_id, winner.archive);
    let mut named: Vec<String> = commits.iter().map(|c| c.object.clone()).collect();
    named.sort();
    assert_eq!(
        f.archive_files("race"),
        named,
        "the loser's archive object was deleted"
    );
    restore_every_point(
        &f.repo,
        f.t.dir.path(),
        &volume,
        &[base, winner_img.clone()],
    )
    .await;
}

/// A 3-point chain with 4 KiB blocks; returns the repository, the volume, the points
/// and the seq-2 archive's file and key.
async fn three_point_chain(
    name: &str,
) -> (
    LibRepo,
    VolumeName,
    Vec<Vec<u8>>,
    std::path::PathBuf,
    String,
) {
    let t = LibRepo::new().await;
    let volume = VolumeName::new(name).unwrap();
    let src = t.path("chain.img");
    let mut img = make_image(MIB + 100, 15);
    write(&src, &img);
    backup_file(&t.repo, &volume, &src, None)
        .await
        .expect("full");
    let mut points = vec![img.clone()];
    for (i, at) in [(2u8, 300_000), (3, 600_000)] {
        img[at..at + 20_000].fill(i);
        write(&src, &img);
        backup_file(&t.repo, &volume, &src, None)
            .await
            .expect("delta");
        points.push(img.clone());
    }
    let c2 = t
        .repo
        .commits(&volume)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.seq == 2)
        .unwrap();
    let file = t.archives_dir(name).join(&c2.object);
    (t, volume, points, file, c2.archive_key().to_string())
}

/// Restores seq 3 expecting a failure that names `key`; then seq 1 must still restore.
async fn assert_seq3_fails_naming(
    t: &LibRepo,
    volume: &VolumeName,
    points: &[Vec<u8>],
    key: &str,
    also: &str,
) {
    let out = t.path("seq3.img");
    let e = restore_seq(&t.repo, volume, 3, &out)
        .await
        .expect_err("seq 3 depends on the damaged seq 2");
    let msg = e.to_string();
    assert!(
        msg.contains(key),
        "error names the seq-2 archive {key}: {msg}"
    );
    assert!(msg.contains(also), "{msg}");
    assert!(!out.exists(), "a failed restore leaves no target");
    let leftovers: Vec<_> = std::fs::read_dir(t.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary targets left: {leftovers:?}"
    );
    let out = t.path("seq1.img");
    restore_seq(&t.repo, volume, 1, &out)
        .await
        .expect("seq 1 does not need seq 2");
    assert_same_image(&read(&out), &points[0], "seq 1");
    std::fs::remove_file(&out).unwrap();
}

#[tokio::test]
async fn corrupt_directory_in_the_middle_of_a_chain() {
    let (t, volume, points, file, key) = three_point_chain("dir").await;
    let mut bytes = read(&file);
    let dir = ArchiveReader::open(&bytes)
        .expect("intact")
        .trailer
        .directory_offset as usize;
    bytes[dir + 20] ^= 0x01;
    write(&file, &bytes);
    assert_seq3_fails_naming(&t, &volume, &points, &key, "corrupt").await;
}

#[tokio::test]
async fn corrupt_index_segment_in_the_middle_of_a_chain() {
    let (t, volume, points, file, key) = three_point_chain("seg").await;
    let mut bytes = read(&file);
    let dir = ArchiveReader::open(&bytes)
        .expect("intact")
        .trailer
        .directory_offset as usize;
    let first: [u8; DIR_ENTRY_LEN] = bytes[dir..dir + DIR_ENTRY_LEN].try_into().unwrap();
    let seg = DirEntry::decode(&first).expect("directory entry").offset as usize;
    bytes[seg + 40] ^= 0x80;
    write(&file, &bytes);
    assert_seq3_fails_naming(&t, &volume, &points, &key, "corrupt").await;
}

#[tokio::test]
async fn archive_deleted_from_under_the_repository() {
    let (t, volume, points, file, key) = three_point_chain("gone").await;
    std::fs::remove_file(&file).unwrap();
    assert_seq3_fails_naming(&t, &volume, &points, &key, "missing").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_failure_mid_restore_leaves_no_target() {
    let f = FaultyRepo::new().await;
    let volume = VolumeName::new("read").unwrap();
    let src = f.t.path("read.img");
    write(&src, &noise(4 * MIB, 16));
    backup_file(&f.repo, &volume, &src, None)
        .await
        .expect("full");
    // Frame fetches are at least one 256 KiB frame; header, trailer and index reads of
    // this archive are smaller.
    f.set(|x| x.fail_reads_longer_than = Some(200 << 10));
    let out = f.t.path("out.img");
    let e = restore_seq(&f.repo, &volume, 1, &out)
        .await
        .expect_err("a frame read fails");
    assert!(e.to_string().contains("injected read timeout"), "{e}");
    assert!(!out.exists(), "a failed restore leaves no target");
    let tmp: Vec<_> = std::fs::read_dir(f.t.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "temporary targets left: {tmp:?}");
    f.set(|x| x.fail_reads_longer_than = None);
    restore_seq(&f.repo, &volume, 1, &out)
        .await
        .expect("restore once reads work");
    assert_same_image(&read(&out), &read(&src), "after the read error");
}
