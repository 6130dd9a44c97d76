//! Structural verify at scale (issue 14): each archive is opened once and each index
//! segment read once per verify, so a volume of n points costs a number of requests
//! linear in n (it was quadratic: every point resolved, and hashed, its whole chain
//! again). Damage in the middle of a chain is still named for every point above it.

use std::sync::Arc;

use object_store::{ObjectStoreExt, PutPayload};
use thinarc::repo::{
    Chain, ChainCursor, PointSelector, RemoteArchive, Repository, SegmentCache, VolumeName,
};
use thinarc::verify::{DataCheck, VerifyOptions, VerifyReport, verify};

use crate::catalog_scale::{open, point_of};
use crate::util::TempRepo;

const POINTS: u64 = 12;

/// A volume of `n` points on `t`, one block changed per point (each a delta of the
/// one before: one chain).
async fn chain_of_points(t: &TempRepo, name: &VolumeName, n: u64) {
    let repo = open(t).await;
    for p in 0..n {
        point_of(t, &repo, (name, 1), p as usize).await;
    }
}

/// A structural verify of `name` through a fresh handle, and the GETs it made.
async fn verified(t: &TempRepo, name: &VolumeName) -> (VerifyReport, u64) {
    let repo = open(t).await;
    let opts = VerifyOptions {
        volume: Some(name.clone()),
        data: DataCheck::Off,
        source: None,
        threads: 2,
    };
    let report = verify(&repo, &opts, Arc::default()).await.unwrap();
    (report, repo.requests().get)
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_requests_linear_in_points_s3() {
    let t = TempRepo::s3();
    for n in [POINTS / 2, POINTS] {
        let name = VolumeName::new(&format!("vm{n}/disk")).unwrap();
        chain_of_points(&t, &name, n).await;
        let (report, gets) = verified(&t, &name).await;
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!((report.archives, report.points), (n, n));
        // Per point: its commit marker, its archive's tail and head (opened once)
        // and its one index segment (read once, for the index check and every
        // point's image digest). Before: 126 GETs for 6 points (each point resolved,
        // and hashed, its whole chain again).
        assert_eq!(gets, 4 * n, "GETs of verifying a {n}-point chain");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_damage_mid_chain_named_for_every_dependent_point_s3() {
    let t = TempRepo::s3();
    let name = VolumeName::new("vm/disk").unwrap();
    chain_of_points(&t, &name, POINTS).await;
    // Corrupt the index segment of the point in the middle of the chain.
    let repo = open(&t).await;
    let commits = repo.commits(&name).await.unwrap();
    let mid = &commits[POINTS as usize / 2];
    let archive = RemoteArchive::open(&repo, mid).await.unwrap();
    let at = archive.directory()[0].offset as usize + 2;
    let key = mid.archive_key();
    let store = repo.store().clone();
    let mut bytes = store
        .get(&key)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    bytes[at] ^= 0xff;
    store.put(&key, PutPayload::from(bytes)).await.unwrap();

    let (report, _) = verified(&t, &name).await;
    let named: Vec<u64> = report.problems.iter().filter_map(|p| p.seq).collect();
    let above: Vec<u64> = commits
        .iter()
        .map(|c| c.seq)
        .filter(|s| *s >= mid.seq)
        .collect();
    let mut seqs = named.clone();
    seqs.dedup();
    assert_eq!(seqs, above, "{:#?}", report.problems);
    // Each point above it either cannot be hashed (its image needs the segment) or
    // depends on the damaged archive.
    for p in &report.problems {
        assert!(
            p.problem.contains(&format!("archive {key} is corrupt")),
            "{p}"
        );
    }
}

/// GETs of walking the point `chain` ends at through `segments`.
async fn walk(repo: &Repository, chain: &Chain, segments: &Arc<SegmentCache>) -> u64 {
    let before = repo.requests().get;
    let mut cursor = ChainCursor::new(chain).with_segments(segments);
    while cursor
        .next(chain.tip().geometry().blocks())
        .await
        .unwrap()
        .is_some()
    {}
    repo.requests().get - before
}

/// A cache bounded in bytes keeps what it read first while it fits, reads again what
/// does not (memory stays flat), and drops the segments of other chains.
#[tokio::test(flavor = "multi_thread")]
async fn verify_segment_cache_bounded_in_bytes_s3() {
    let t = TempRepo::s3();
    let name = VolumeName::new("vm/disk").unwrap();
    chain_of_points(&t, &name, POINTS).await;
    let repo = open(&t).await;
    let commits = repo.commits(&name).await.unwrap();
    let tip = repo
        .resolve(&commits, &PointSelector::Seq(POINTS))
        .await
        .unwrap();
    let fits = Arc::new(SegmentCache::bytes(16 << 20));
    let first = walk(&repo, &tip, &fits).await;
    assert!(first > 0);
    assert_eq!(walk(&repo, &tip, &fits).await, 0, "kept: read once");
    let none = Arc::new(SegmentCache::bytes(0));
    assert_eq!(walk(&repo, &tip, &none).await, first);
    assert_eq!(walk(&repo, &tip, &none).await, first, "nothing kept");
    // A chain of only the tip's archive (whose segment every walk reads) keeps only
    // that archive's segments.
    let only_tip = Chain {
        volume: name.clone(),
        archives: vec![tip.tip().clone()],
    };
    fits.retain(&only_tip);
    assert_eq!(
        walk(&repo, &tip, &fits).await,
        first - 1,
        "dropped but the tip's"
    );
}
