//! The merge engine through the library: random chains (the model of `chain.rs`), a
//! point's archive rebuilt from a random segment of its chain on a random parent (or
//! as a full), committed as the point's next generation; then every point, the merged
//! one and its descendants (linked through `parent.image`), restores byte for byte.
//! Also: a full consolidation into another repository, size changes across the
//! segment, what the merged archive holds, the stored frames it copies whole, and
//! which merges keep the `lvm` record.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use thinarc::backup::{BackupOptions, backup};
use thinarc::copy::{CopyOptions, copy};
use thinarc::format::{ArchiveReader, BlockSize, EntryKind, Header, LvmSnapshot};
use thinarc::point::{MergeOptions, merge};
use thinarc::prune::{PruneOptions, RetentionPolicy, prune};
use thinarc::repo::{PointSelector, Repository, VolumeName};
use thinarc::source::RawSource;

use crate::chain::{LibRepo, MAX_SIZE, Op, apply, backup_file, op, restore_every_point, runtime};
use crate::util::{make_image, write};

/// Backs up a full of `make_image(size, seed)` and one delta per step (scan or
/// changed-blocks); returns the model image of every point, oldest first.
pub(crate) async fn build_chain(
    t: &LibRepo,
    volume: &VolumeName,
    size: usize,
    seed: u64,
    steps: &[(Op, bool)],
) -> Vec<Vec<u8>> {
    let src = t.path(&format!("{}.img", volume.as_str()));
    let mut img = make_image(size, seed);
    write(&src, &img);
    backup_file(&t.repo, volume, &src, None)
        .await
        .expect("full backup");
    let mut points = vec![img.clone()];
    for (i, (op, by_list)) in steps.iter().enumerate() {
        let touched = apply(&mut img, op);
        write(&src, &img);
        backup_file(&t.repo, volume, &src, by_list.then_some(touched))
            .await
            .unwrap_or_else(|e| panic!("step {i} ({op:?}): {e}"));
        points.push(img.clone());
    }
    points
}

/// Steps that write past the first GiB, grow the volume unannounced, zero its start and
/// shrink it: every geometry change a chain can see (`true`: changed blocks listed).
pub(crate) fn grow_and_shrink_steps() -> Vec<(Op, bool)> {
    vec![
        (
            Op::Write {
                at: 1 << 30,
                len: 9000,
                seed: 1,
            },
            true,
        ),
        (
            Op::Grow {
                by: 30_000,
                seed: Some(2),
                announce: false,
            },
            false,
        ),
        (Op::Zero { at: 0, len: 5000 }, true),
        (Op::Shrink { keep: 3 << 30 }, false),
    ]
}

/// Merges point `x` (1-based seq) of `volume` onto the point at seq `parent` (`None`:
/// a full) into its own repository as the next generation.
async fn merge_in_place(repo: &Repository, volume: &VolumeName, x: u64, parent: Option<u64>) {
    let commits = repo.commits(volume).await.unwrap();
    let chain = repo
        .resolve(&commits, &PointSelector::Seq(x))
        .await
        .unwrap();
    let p = parent.map(|seq| {
        chain
            .archives
            .iter()
            .position(|a| a.header.seq == seq)
            .expect("parent on the chain")
    });
    let generation = commits.iter().find(|c| c.seq == x).unwrap().generation + 1;
    let mut opts = MergeOptions::new("merge");
    opts.generation = generation;
    opts.threads = 2;
    let r = merge(repo, &chain, p, repo, volume, &opts)
        .await
        .unwrap_or_else(|e| panic!("merge of seq {x} onto {parent:?}: {e}"));
    assert_eq!((r.seq, r.generation), (x, generation));
    assert_eq!(r.image_digest, chain.tip().trailer.image_digest.to_hex());
    let after = repo.commits(volume).await.unwrap();
    let c = after.iter().find(|c| c.seq == x).unwrap();
    assert_eq!(
        (c.archive_id.as_str(), c.generation),
        (r.archive.as_str(), generation)
    );
}

async fn check_merge(
    size: usize,
    seed: u64,
    steps: Vec<(Op, bool)>,
    x: prop::sample::Index,
    p: prop::sample::Index,
    full: bool,
) {
    let t = LibRepo::new().await;
    let volume = VolumeName::new("m").unwrap();
    let points = build_chain(&t, &volume, size, seed, &steps).await;
    let n = points.len();
    // A point after the full, merged onto an earlier point or as a full.
    let x = 2 + x.index(n - 1) as u64;
    let parent = (!full).then(|| 1 + p.index(x as usize - 1) as u64);
    merge_in_place(&t.repo, &volume, x, parent).await;
    restore_every_point(&t.repo, t.dir.path(), &volume, &points).await;
    // A second merge of the next point over the replaced one still works.
    if x < n as u64 {
        merge_in_place(&t.repo, &volume, x + 1, parent.or(Some(x))).await;
        restore_every_point(&t.repo, t.dir.path(), &volume, &points).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Any segment of any chain merges into an archive of the same point, and the
    /// points after it still restore through the replaced archive.
    #[test]
    fn merged_points_restore_exactly(
        size in 0..=MAX_SIZE,
        seed in any::<u64>(),
        steps in proptest::collection::vec((op(), any::<bool>()), 2..7),
        x in any::<prop::sample::Index>(),
        p in any::<prop::sample::Index>(),
        full in any::<bool>(),
    ) {
        runtime().block_on(check_merge(size, seed, steps, x, p, full));
    }
}

/// A consolidation writes one full archive of a point into another repository, which
/// restores it alone.
#[tokio::test(flavor = "multi_thread")]
async fn consolidation_into_another_repository_restores_alone() {
    let t = LibRepo::new().await;
    let volume = VolumeName::new("c").unwrap();
    let steps = grow_and_shrink_steps();
    let points = build_chain(&t, &volume, 200_000, 9, &steps).await;
    let other = LibRepo::new().await;
    let commits = t.repo.commits(&volume).await.unwrap();
    for seq in 1..=points.len() as u64 {
        let chain = t
            .repo
            .resolve(&commits, &PointSelector::Seq(seq))
            .await
            .unwrap();
        let dest = VolumeName::new(&format!("copy-{seq}")).unwrap();
        let r = merge(
            &t.repo,
            &chain,
            None,
            &other.repo,
            &dest,
            &MergeOptions::new("consolidate"),
        )
        .await
        .expect("consolidate");
        assert_eq!(r.parent, None);
        assert_eq!(r.merged_archives as u64, seq);
        // The copy is one full archive holding every block.
        let info = other.repo.describe(&dest).await.unwrap();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].seq, seq);
        assert_eq!(
            info[0].blocks,
            (points[seq as usize - 1].len() as u64).div_ceil(4096)
        );
        assert_eq!(info[0].parent, None);
        // restore_every_point wants seqs 1..; the copy is at `seq`: restore it directly.
        let out = other.path(&format!("copy-{seq}.img"));
        crate::chain::restore_seq(&other.repo, &dest, seq, &out)
            .await
            .expect("restore the copy");
        crate::util::assert_same_image(&crate::util::read(&out), &points[seq as usize - 1], "copy");
    }
}

/// The `lvm` record of an LVM backup (no LVM needed: the library records what it is
/// given), naming snapshot `snap` of `vg0/web`.
fn lvm_record(snap: &str, thin_id: u64) -> LvmSnapshot {
    LvmSnapshot {
        vg: "vg0".into(),
        lv: "web".into(),
        lv_uuid: "rPA6P5-RfIj-Kxof-Od3P-pkvh-qnNc-rMpq1b".into(),
        pool: "pool".into(),
        snapshot: snap.into(),
        snapshot_uuid: format!("{snap}-uuid"),
        thin_id,
        chunk_size: 65536,
    }
}

/// The header of `volume`'s archive of point `seq`.
async fn header_of(repo: &Repository, volume: &VolumeName, seq: u64) -> Header {
    let commits = repo.commits(volume).await.unwrap();
    let chain = repo
        .resolve(&commits, &PointSelector::Seq(seq))
        .await
        .unwrap();
    chain.tip().header.clone()
}

/// A prune rewrites a point's archive as another archive of the same point, which
/// keeps the `lvm` record of the snapshot the point was read from (the next LVM backup
/// keeps using it as its base); a consolidated copy into another repository drops it.
#[tokio::test(flavor = "multi_thread")]
async fn merged_archive_keeps_the_points_lvm_snapshot_in_its_repository_only() {
    let t = LibRepo::new().await;
    let volume = VolumeName::new("web").unwrap();
    let src = t.path("web.img");
    let mut img = make_image(300_000, 5);
    let mut models = Vec::new();
    for seq in 1..=4u64 {
        img[seq as usize * 20_000..][..9000].fill(seq as u8);
        write(&src, &img);
        let mut opts = BackupOptions::new(volume.clone());
        opts.block_size = Some(BlockSize::new(4096).unwrap());
        opts.lvm = Some(lvm_record(&format!("web-thinarc-{seq}"), seq));
        backup(
            &t.repo,
            RawSource::open(&src).unwrap(),
            &opts,
            Arc::default(),
        )
        .await
        .expect("backup");
        models.push(img.clone());
    }
    let before = header_of(&t.repo, &volume, 4).await;
    assert_eq!(before.lvm, Some(lvm_record("web-thinarc-4", 4)));
    // Keep the last two points: seq 3 folds into a full, seq 4 stays a delta on it.
    let policy = RetentionPolicy {
        last: Some(2),
        ..RetentionPolicy::default()
    };
    let mut opts = PruneOptions::new(policy);
    opts.threads = 2;
    prune(&t.repo, &volume, &opts).await.expect("prune");
    let folded = header_of(&t.repo, &volume, 3).await;
    assert_eq!(
        (folded.parent.as_ref(), folded.source.kind.as_str()),
        (None, "archive")
    );
    assert_eq!(folded.lvm, Some(lvm_record("web-thinarc-3", 3)));
    // A merge of the latest point onto the folded full keeps its record too.
    merge_in_place(&t.repo, &volume, 4, Some(3)).await;
    let merged = header_of(&t.repo, &volume, 4).await;
    assert_ne!(merged.archive_id, before.archive_id);
    assert_eq!(
        (merged.source.kind.as_str(), merged.source.method.as_str()),
        ("archive", "merge")
    );
    assert_eq!(merged.lvm, before.lvm);
    for seq in [3, 4] {
        let out = t.path("restored.img");
        crate::chain::restore_seq(&t.repo, &volume, seq, &out)
            .await
            .expect("restore");
        crate::util::assert_same_image(
            &crate::util::read(&out),
            &models[seq as usize - 1],
            "point",
        );
    }
    // A consolidated copy in another repository does not name this repository's
    // snapshot: that repository's backups must not take it as their base.
    let other = LibRepo::new().await;
    let copy_opts = CopyOptions {
        volume: Some(volume.clone()),
        at: None,
        consolidate: true,
        threads: 2,
    };
    copy(&t.repo, &other.repo, false, &copy_opts, Arc::default())
        .await
        .expect("copy --consolidate");
    let copied = header_of(&other.repo, &volume, 4).await;
    assert_eq!(
        (copied.source.method.as_str(), copied.lvm.as_ref()),
        ("consolidate", None)
    );
}

/// The stored frames of the archive object of `volume`'s point `seq` in `t`, by their
/// first block.
async fn stored_frames(t: &LibRepo, volume: &VolumeName, seq: u64) -> BTreeMap<u64, Vec<u8>> {
    let commits = t.repo.commits(volume).await.unwrap();
    let c = commits.iter().find(|c| c.seq == seq).expect("point");
    let bytes = crate::util::read(&t.archives_dir(volume.as_str()).join(&c.object));
    let reader = ArchiveReader::open(&bytes).expect("archive");
    reader
        .entries()
        .expect("index")
        .into_iter()
        .filter_map(|e| match e.kind {
            EntryKind::Data {
                frame_offset,
                frame_len,
                slot: 0,
                ..
            } => {
                let at = frame_offset as usize;
                Some((e.block, bytes[at..at + frame_len as usize].to_vec()))
            }
            _ => None,
        })
        .collect()
}

/// A consolidation of a full and a small delta copies the full's frames that the delta
/// leaves whole and the delta's frame byte for byte, recompresses only the blocks of
/// the frame the delta breaks up, and so
/// writes no more than the chain stores; the copy restores byte for byte (the property
/// test above covers partly superseded frames in every shape).
#[tokio::test(flavor = "multi_thread")]
async fn consolidation_copies_the_frames_that_survive_whole() {
    let t = LibRepo::new().await;
    let volume = VolumeName::new("f").unwrap();
    let src = t.path("f.img");
    // Data around the change, and up to a short last block (the full's last frame
    // holds it and is copied too).
    let (size, changed) = (3_000_000 + 1234, 1_500_000);
    let mut img = make_image(size, 21);
    for range in [changed - 400_000..changed + 400_000, size - 300_000..size] {
        crate::util::Rng::new(range.start as u64).fill(&mut img[range]);
    }
    write(&src, &img);
    backup_file(&t.repo, &volume, &src, None)
        .await
        .expect("full");
    img[changed..changed + 100].fill(7);
    write(&src, &img);
    let list = std::iter::once(changed as u64..changed as u64 + 100);
    backup_file(&t.repo, &volume, &src, Some(list.collect()))
        .await
        .expect("delta");
    let full = stored_frames(&t, &volume, 1).await;
    let delta = stored_frames(&t, &volume, 2).await;
    let block = changed as u64 / 4096;
    assert_eq!(
        delta.keys().collect::<Vec<_>>(),
        [&block],
        "the delta's frame"
    );
    let broken = *full.range(..=block).next_back().expect("a frame").0;
    let last = full.keys().next_back().copied().expect("frames");
    assert!(
        full.len() > 5 && last + 64 > size as u64 / 4096,
        "several frames, the last holding the short block: {:?}",
        full.keys()
    );

    let other = LibRepo::new().await;
    let commits = t.repo.commits(&volume).await.unwrap();
    let chain = t
        .repo
        .resolve(&commits, &PointSelector::Latest)
        .await
        .unwrap();
    let mut opts = MergeOptions::new("consolidate");
    opts.threads = 2;
    let r = merge(&t.repo, &chain, None, &other.repo, &volume, &opts)
        .await
        .expect("consolidate");
    // Every frame of the full but the one the delta breaks up, and the delta's frame,
    // are copied; the broken frame's blocks before and after the delta's block are
    // recompressed.
    assert!(block > broken, "the change is inside a frame");
    assert_eq!(
        (r.frames_reused, r.frames_compressed),
        (full.len() as u64, 2),
        "frames copied and recompressed"
    );
    let copy = stored_frames(&other, &volume, 2).await;
    for (first, frame) in full.iter().filter(|(f, _)| **f != broken).chain(&delta) {
        assert_eq!(
            copy.get(first),
            Some(frame),
            "frame at block {first} copied"
        );
    }
    assert!(
        copy.contains_key(&broken),
        "the broken frame's first blocks are rewritten"
    );
    assert_eq!(copy.len(), full.len() + 2);
    let stored: u64 = commits.iter().map(|c| c.size).sum();
    assert!(
        r.stored_bytes <= stored,
        "wrote {} bytes, the chain stores {stored}",
        r.stored_bytes
    );
    let out = other.path("copy.img");
    crate::chain::restore_seq(&other.repo, &volume, 2, &out)
        .await
        .expect("restore the copy");
    crate::util::assert_same_image(&crate::util::read(&out), &img, "copy");
}
