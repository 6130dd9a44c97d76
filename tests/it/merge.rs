//! The merge engine through the library: random chains (the model of `chain.rs`), a
//! point's archive rebuilt from a random segment of its chain on a random parent (or
//! as a full), committed as the point's next generation; then every point, the merged
//! one and its descendants (linked through `parent.image`), restores byte for byte.
//! Also: a full consolidation into another repository, size changes across the
//! segment, and what the merged archive holds.

use proptest::prelude::*;
use thinarc::prune::{MergeOptions, merge};
use thinarc::repo::{PointSelector, Repository, VolumeName};

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
    let steps = vec![
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
    ];
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
