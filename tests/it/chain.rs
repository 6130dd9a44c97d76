//! Chains through the library API: random edits, zeroing, growing and shrinking of an
//! in-memory model image, each backed up as a scan or changed-blocks delta into a real
//! local repository, and every point restored and compared byte for byte with the
//! model. Also: the image digest does not depend on the chain, frames of the full
//! partially overridden by many deltas, and volumes whose index spans several segments.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use proptest::prelude::*;
use thinarc::backup::{BackupError, BackupOptions, BackupReport, backup};
use thinarc::format::{ArchiveReader, BlockSize};
use thinarc::repo::{PointSelector, Repository, VolumeName};
use thinarc::restore::{RestoreError, RestoreOptions, RestoreReport, restore};
use thinarc::source::RawSource;

use crate::util::{Rng, assert_same_image, make_image, read, write};

/// Block size of the chains built here: small, so frames hold 64 blocks and small
/// images have many blocks.
pub(crate) const BS: u32 = 4096;
/// Largest model image of the property tests.
pub(crate) const MAX_SIZE: usize = 300 << 10;

/// A local repository created through the library in a temporary directory.
pub(crate) struct LibRepo {
    pub dir: tempfile::TempDir,
    pub repo: Repository,
}

impl LibRepo {
    /// A new repository on the local file system.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = local_store(&dir.path().join("repo"));
        let repo = Repository::create(store, &dir.path().join("repo").display().to_string())
            .await
            .expect("create repository");
        LibRepo { dir, repo }
    }

    /// A path inside the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The directory of `volume`'s archive objects on disk.
    pub fn archives_dir(&self, volume: &str) -> PathBuf {
        self.path("repo")
            .join("volumes")
            .join(volume)
            .join("archives")
    }
}

/// A local file system store rooted at `root` (created if missing), as `open_store`
/// builds it.
pub(crate) fn local_store(root: &Path) -> Arc<dyn ObjectStore> {
    std::fs::create_dir_all(root).expect("create repository directory");
    Arc::new(
        LocalFileSystem::new_with_prefix(root)
            .expect("local store")
            .with_automatic_cleanup(true),
    )
}

/// Backs up the file at `path` into `volume` with 4 KiB blocks; `changed` are the
/// `--changed-blocks` byte ranges (`None`: a full or scan backup).
pub(crate) async fn backup_file(
    repo: &Repository,
    volume: &VolumeName,
    path: &Path,
    changed: Option<Vec<Range<u64>>>,
) -> Result<BackupReport, BackupError> {
    backup_file_at(repo, volume, path, changed, None).await
}

/// As [`backup_file`], recording `created` as the point's time (default: now).
pub(crate) async fn backup_file_at(
    repo: &Repository,
    volume: &VolumeName,
    path: &Path,
    changed: Option<Vec<Range<u64>>>,
    created: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<BackupReport, BackupError> {
    let source = RawSource::open(path).expect("open source");
    let mut opts = BackupOptions::new(volume.clone());
    opts.block_size = Some(BlockSize::new(BS).expect("block size"));
    opts.changed_blocks = changed.map(Into::into);
    opts.threads = 2;
    opts.created = created;
    backup(repo, source, &opts, Arc::default()).await
}

/// Restores point `seq` of `volume` onto `target`.
pub(crate) async fn restore_seq(
    repo: &Repository,
    volume: &VolumeName,
    seq: u64,
    target: &Path,
) -> Result<RestoreReport, RestoreError> {
    let opts = RestoreOptions {
        threads: 2,
        ..RestoreOptions::new(PointSelector::Seq(seq))
    };
    restore(repo, volume, target, &opts, Arc::default()).await
}

/// Restores every point of `volume` (seq `i + 1` must equal `points[i]`) to new files
/// and checks each against the model and the image digest `describe` reports.
pub(crate) async fn restore_every_point(
    repo: &Repository,
    scratch: &Path,
    volume: &VolumeName,
    points: &[Vec<u8>],
) -> Vec<RestoreReport> {
    let infos = repo.describe(volume).await.expect("describe");
    assert_eq!(infos.len(), points.len(), "one listed point per backup");
    let mut reports = Vec::new();
    for (i, (expected, info)) in points.iter().zip(&infos).enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(info.seq, seq);
        assert_eq!(info.size, expected.len() as u64, "listed size of seq {seq}");
        let out = scratch.join(format!("{}-restore-{seq}.img", volume.as_str()));
        let r = restore_seq(repo, volume, seq, &out)
            .await
            .unwrap_or_else(|e| panic!("restore seq {seq}: {e}"));
        assert_eq!(r.seq, seq);
        assert_eq!(
            r.image_digest, info.image_digest,
            "restored image digest of seq {seq} is the listed one"
        );
        assert_same_image(&read(&out), expected, &format!("seq {seq}"));
        std::fs::remove_file(&out).expect("remove restored image");
        reports.push(r);
    }
    reports
}

/// A fresh multi-threaded runtime for one property case.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One step applied to the model image.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// `len` random bytes at `at` (a position scaled to the current size).
    Write { at: u32, len: usize, seed: u64 },
    /// `len` zero bytes at `at`.
    Zero { at: u32, len: usize },
    /// Append `by` bytes: random ones from `seed`, or zeros. With `announce`, the new
    /// range is listed as changed; without, the backup must find it by itself.
    Grow {
        by: usize,
        seed: Option<u64>,
        announce: bool,
    },
    /// Truncate to `keep` (a fraction of the current size; 0 empties the volume).
    Shrink { keep: u32 },
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<u32>(), 0..20_000usize, any::<u64>())
            .prop_map(|(at, len, seed)| Op::Write { at, len, seed }),
        2 => (any::<u32>(), 0..40_000usize).prop_map(|(at, len)| Op::Zero { at, len }),
        1 => (1..60_000usize, proptest::option::of(any::<u64>()), any::<bool>())
            .prop_map(|(by, seed, announce)| Op::Grow { by, seed, announce }),
        1 => prop_oneof![any::<u32>(), Just(0)].prop_map(|keep| Op::Shrink { keep }),
    ]
}

/// `at` scaled into `0..size`.
fn scaled(at: u32, size: usize) -> usize {
    ((size as u64 * u64::from(at)) >> 32) as usize
}

/// The byte range `start..end` as a changed-block list.
fn touched(start: usize, end: usize) -> Vec<Range<u64>> {
    let range = start as u64..end as u64;
    vec![range]
}

/// Applies `op` to `img`; returns the byte ranges it touched (what a changed-block
/// tracker would report; empty for a size change the backup must handle alone).
pub(crate) fn apply(img: &mut Vec<u8>, op: &Op) -> Vec<Range<u64>> {
    let size = img.len();
    match *op {
        Op::Write { at, len, seed } => {
            let start = scaled(at, size);
            let end = (start + len).min(size);
            Rng::new(seed).fill(&mut img[start..end]);
            touched(start, end)
        }
        Op::Zero { at, len } => {
            let start = scaled(at, size);
            let end = (start + len).min(size);
            img[start..end].fill(0);
            touched(start, end)
        }
        Op::Grow { by, seed, announce } => {
            let new = (size + by).min(MAX_SIZE);
            img.resize(new, 0);
            if let Some(seed) = seed {
                Rng::new(seed).fill(&mut img[size..new]);
            }
            if announce { touched(size, new) } else { vec![] }
        }
        Op::Shrink { keep } => {
            img.truncate(scaled(keep, size));
            vec![]
        }
    }
}

/// Builds a chain from `size`/`seed` and `steps` and checks every point.
async fn check_random_chain(
    size: usize,
    seed: u64,
    steps: Vec<(Op, bool)>,
    garbage_point: prop::sample::Index,
) {
    let t = LibRepo::new().await;
    let volume = VolumeName::new("model").unwrap();
    let src = t.path("model.img");
    let mut img = make_image(size, seed);
    write(&src, &img);
    let full = backup_file(&t.repo, &volume, &src, None)
        .await
        .expect("full backup");
    let mut points = vec![img.clone()];
    let mut digests = vec![full.image_digest];
    for (i, (op, by_list)) in steps.iter().enumerate() {
        let touched = apply(&mut img, op);
        write(&src, &img);
        let changed = by_list.then_some(touched);
        let method = if changed.is_some() {
            "changed-blocks"
        } else {
            "scan"
        };
        let r = backup_file(&t.repo, &volume, &src, changed)
            .await
            .unwrap_or_else(|e| panic!("step {i} ({op:?}): {e}"));
        assert_eq!(r.seq, i as u64 + 2);
        assert_eq!(r.method, method);
        assert_eq!(r.size, img.len() as u64);
        points.push(img.clone());
        digests.push(r.image_digest);
    }
    let reports = restore_every_point(&t.repo, t.dir.path(), &volume, &points).await;
    for (r, d) in reports.iter().zip(&digests) {
        assert_eq!(
            &r.image_digest, d,
            "restore of seq {} and its backup agree on the image digest",
            r.seq
        );
    }

    // Onto an existing, larger file full of garbage: every byte is rewritten or zeroed,
    // and the file is trimmed to the volume size.
    let i = garbage_point.index(points.len());
    let out = t.path("garbage.img");
    write(&out, &vec![0xA5; points[i].len() + 3 * BS as usize + 123]);
    restore_seq(&t.repo, &volume, i as u64 + 1, &out)
        .await
        .expect("restore onto an existing file");
    assert_same_image(
        &read(&out),
        &points[i],
        &format!("seq {} onto garbage", i + 1),
    );
}

/// Backs up each step as a delta and as a fresh full of a new volume, and compares
/// their image digests.
async fn check_digest_against_fresh_fulls(size: usize, seed: u64, steps: Vec<(Op, bool)>) {
    let t = LibRepo::new().await;
    let volume = VolumeName::new("chain").unwrap();
    let src = t.path("chain.img");
    let mut img = make_image(size, seed);
    write(&src, &img);
    backup_file(&t.repo, &volume, &src, None)
        .await
        .expect("full backup");
    for (i, (op, by_list)) in steps.iter().enumerate() {
        let touched = apply(&mut img, op);
        write(&src, &img);
        let changed = by_list.then_some(touched);
        let delta = backup_file(&t.repo, &volume, &src, changed)
            .await
            .expect("delta");
        let fresh = VolumeName::new(&format!("fresh-{i}")).unwrap();
        let full = backup_file(&t.repo, &fresh, &src, None)
            .await
            .expect("fresh full");
        assert_eq!(full.seq, 1);
        assert_eq!(
            delta.image_digest, full.image_digest,
            "step {i} ({op:?}): delta and fresh full digests differ"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any sequence of edits, backed up by scan or by changed-block list, restores
    /// every point exactly.
    #[test]
    fn random_edits_restore_every_point(
        size in 0..=MAX_SIZE,
        seed in any::<u64>(),
        steps in proptest::collection::vec((op(), any::<bool>()), 3..10),
        garbage_point in any::<prop::sample::Index>(),
    ) {
        runtime().block_on(check_random_chain(size, seed, steps, garbage_point));
    }

    /// The image digest of a point is the same whether the point is a delta at the end
    /// of a chain or a fresh full backup of the same content.
    #[test]
    fn image_digest_does_not_depend_on_the_chain(
        size in 0..=MAX_SIZE,
        seed in any::<u64>(),
        steps in proptest::collection::vec((op(), any::<bool>()), 1..6),
    ) {
        runtime().block_on(check_digest_against_fresh_fulls(size, seed, steps));
    }
}

/// Overwrites block `b` of `img` (4 KiB blocks) with random bytes.
fn scribble(img: &mut [u8], b: usize, rng: &mut Rng) -> Range<u64> {
    let start = b * BS as usize;
    let end = (start + BS as usize).min(img.len());
    rng.fill(&mut img[start..end]);
    start as u64..end as u64
}

/// Zeroes block `b` of `img`.
fn zero_block(img: &mut [u8], b: usize) -> Range<u64> {
    let start = b * BS as usize;
    let end = (start + BS as usize).min(img.len());
    img[start..end].fill(0);
    start as u64..end as u64
}

/// Bytes of `img` in blocks that are not all zero (what a restore writes).
fn data_bytes(img: &[u8]) -> u64 {
    img.chunks(BS as usize)
        .filter(|c| c.iter().any(|&b| b != 0))
        .map(|c| c.len() as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_of_the_full_partially_overridden_by_many_deltas() {
    let t = LibRepo::new().await;
    let volume = VolumeName::new("frames").unwrap();
    let src = t.path("frames.img");
    // Incompressible, so every 64-block frame of the full is 256 KiB; a partial last
    // block.
    let mut rng = Rng::new(77);
    let mut img = vec![0u8; (1 << 20) + 1000];
    rng.fill(&mut img);
    let original = img.clone();
    write(&src, &img);
    backup_file(&t.repo, &volume, &src, None)
        .await
        .expect("full");
    let mut points = vec![img.clone()];
    let last = img.len().div_ceil(BS as usize) - 1;

    type Edit = fn(&mut Vec<u8>, &mut Rng, usize) -> Vec<Range<u64>>;
    let edits: [Edit; 5] = [
        // Single blocks inside frame 0 and a zeroed one.
        |img, rng, _| {
            vec![
                scribble(img, 1, rng),
                scribble(img, 2, rng),
                scribble(img, 3, rng),
                zero_block(img, 10),
            ]
        },
        // Block 2 again (the newest version wins), a run, the frame's last block.
        |img, rng, _| {
            let mut r = vec![scribble(img, 2, rng), scribble(img, 63, rng)];
            r.extend((20..24).map(|b| scribble(img, b, rng)));
            r
        },
        // The first block of frame 1 and a zero run inside it.
        |img, rng, _| {
            let mut r = vec![scribble(img, 64, rng)];
            r.extend((65..70).map(|b| zero_block(img, b)));
            r
        },
        // Block 0 and the partial last block.
        |img, rng, last| vec![scribble(img, 0, rng), scribble(img, last, rng)],
        // Every third block of frames 0 to 2.
        |img, rng, _| (2..190).step_by(3).map(|b| scribble(img, b, rng)).collect(),
    ];
    for (i, edit) in edits.iter().enumerate() {
        let changed = edit(&mut img, &mut rng, last);
        write(&src, &img);
        let r = backup_file(&t.repo, &volume, &src, (i % 2 == 0).then_some(changed))
            .await
            .expect("delta");
        assert_eq!(r.seq, i as u64 + 2);
        points.push(img.clone());
    }
    // Block 10 back to the full's content: it differs from its parent (zero), so the
    // last delta holds it again.
    let block10 = 10 * BS as usize..11 * BS as usize;
    img[block10.clone()].copy_from_slice(&original[block10.clone()]);
    write(&src, &img);
    let r = backup_file(&t.repo, &volume, &src, None)
        .await
        .expect("delta");
    assert_eq!((r.seq, r.blocks_changed), (7, 1));
    points.push(img.clone());

    let reports = restore_every_point(&t.repo, t.dir.path(), &volume, &points).await;
    for (r, p) in reports.iter().zip(&points) {
        assert_eq!(r.chain_length as u64, r.seq);
        assert_eq!(
            r.bytes_written,
            data_bytes(p),
            "seq {}: every data block is written exactly once",
            r.seq
        );
    }
    // How many bytes these restores fetch is checked by
    // `interleaved_layers_fetch_each_frame_once` below.
}

/// No fetch amplification: a delta that overrides every other block of the full must not
/// make the restore fetch (and decompress) a 256 KiB frame of the full once per
/// surviving block; a planner that cut a work unit at every layer switch fetched about
/// 21 times the chain here.
#[tokio::test(flavor = "multi_thread")]
async fn interleaved_layers_fetch_each_frame_once() {
    let t = LibRepo::new().await;
    let volume = VolumeName::new("interleave").unwrap();
    let src = t.path("interleave.img");
    let mut rng = Rng::new(5);
    let mut img = vec![0u8; 1 << 20];
    rng.fill(&mut img);
    write(&src, &img);
    let full = backup_file(&t.repo, &volume, &src, None)
        .await
        .expect("full");
    let changed: Vec<_> = (0..256)
        .step_by(2)
        .map(|b| scribble(&mut img, b, &mut rng))
        .collect();
    write(&src, &img);
    let delta = backup_file(&t.repo, &volume, &src, Some(changed))
        .await
        .expect("delta");
    let out = t.path("out.img");
    let r = restore_seq(&t.repo, &volume, 2, &out)
        .await
        .expect("restore");
    assert_same_image(&read(&out), &img, "interleaved");
    let stored = full.stored_bytes + delta.stored_bytes;
    assert!(
        r.bytes_fetched <= stored,
        "fetched {} bytes for a chain of {stored} bytes",
        r.bytes_fetched
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn index_of_many_segments_restores_at_every_point() {
    const MIB: usize = 1 << 20;
    let t = LibRepo::new().await;
    let volume = VolumeName::new("big").unwrap();
    let src = t.path("big.img");
    // 20 MiB, 5120 blocks: three of every four blocks hold 16 random bytes (mostly zero
    // bytes, but a data block each), so the full's index has 5120 entries.
    let mut rng = Rng::new(20);
    let mut img = vec![0u8; 20 * MIB];
    let blocks = img.len() / BS as usize;
    let dab = |img: &mut [u8], b: usize, rng: &mut Rng| {
        let at = b * BS as usize + rng.below(u64::from(BS) - 16) as usize;
        rng.fill(&mut img[at..at + 16]);
        b as u64 * u64::from(BS)..(b as u64 + 1) * u64::from(BS)
    };
    for b in (0..blocks).filter(|b| b % 4 != 3) {
        dab(&mut img, b, &mut rng);
    }
    write(&src, &img);
    let full = backup_file(&t.repo, &volume, &src, None)
        .await
        .expect("full");
    let mut points = vec![img.clone()];

    // Scattered changes across both segments, around the segment boundary.
    let mut changed = Vec::new();
    for b in [0, 1, 7, 3000, 4094, 4095, 4096, 4097, 5000, 5119] {
        changed.push(dab(&mut img, b, &mut rng));
    }
    changed.push(zero_block(&mut img, 4093));
    write(&src, &img);
    backup_file(&t.repo, &volume, &src, Some(changed))
        .await
        .expect("scattered delta");
    points.push(img.clone());

    // A changed-blocks delta that itself has more than 4096 entries.
    let changed: Vec<_> = (100..4700).map(|b| dab(&mut img, b, &mut rng)).collect();
    write(&src, &img);
    let d = backup_file(&t.repo, &volume, &src, Some(changed))
        .await
        .expect("large delta");
    assert_eq!(d.blocks_changed, 4600);
    points.push(img.clone());

    // Shrink into the middle of a block, then grow past the old end (found by a scan).
    img.truncate(19 * MIB + 123);
    write(&src, &img);
    backup_file(&t.repo, &volume, &src, Some(vec![]))
        .await
        .expect("shrink");
    points.push(img.clone());
    img.resize(21 * MIB, 0);
    dab(&mut img, 21 * MIB / BS as usize - 1, &mut rng);
    write(&src, &img);
    backup_file(&t.repo, &volume, &src, None)
        .await
        .expect("grow");
    points.push(img.clone());

    // The full and the large delta really have several index segments.
    for seq in [1, 3] {
        let commit = t
            .repo
            .commits(&volume)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.seq == seq)
            .unwrap();
        let bytes = read(&t.archives_dir("big").join(&commit.object));
        let a = ArchiveReader::open(&bytes).expect("archive reads");
        assert!(
            a.trailer.directory_entries >= 2,
            "seq {seq} has {} index segments",
            a.trailer.directory_entries
        );
    }
    assert_eq!(full.blocks_changed, blocks as u64);
    restore_every_point(&t.repo, t.dir.path(), &volume, &points).await;
}
