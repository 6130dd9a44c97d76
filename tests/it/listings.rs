//! Resolve once (issue 11): a command lists each volume's catalog (commit markers,
//! archives, tombstones, set-aside markers) once and passes it down; counted through
//! [`Repository::catalog_listings`] on the handle the command is given.

use std::sync::Arc;

use thinarc::copy::{CopyOptions, copy};
use thinarc::repo::{PointSelector, Repository, VolumeName};
use thinarc::restore::{RestoreOptions, restore};
use thinarc::status::{Records, gather};

use crate::util::{TempRepo, make_image, read, write};

/// Two volumes of three points each (the second and third change a few blocks).
fn two_volumes(t: &TempRepo) {
    for (name, seed) in [("a", 1), ("b", 2)] {
        let img = t.path(&format!("{name}.img"));
        let mut data = make_image(2 << 20, seed);
        for round in 0..3u8 {
            data[usize::from(round) * 70_000] ^= 0xff;
            write(&img, &data);
            t.ok(&["backup", img.to_str().unwrap(), "--volume", name, "-q"]);
        }
    }
}

async fn open(t: &TempRepo) -> Repository {
    Repository::open_location(t.location()).await.unwrap()
}

/// `restore --since` lists the volume once: the restored point and the `--since`
/// point are resolved from the same list.
#[tokio::test(flavor = "multi_thread")]
async fn restore_since_lists_the_catalog_once() {
    let t = TempRepo::new();
    two_volumes(&t);
    let volume = VolumeName::new("a").unwrap();
    let target = t.path("replica.img");
    let repo = open(&t).await;
    let first = RestoreOptions::new(PointSelector::Seq(1));
    restore(&repo, &volume, &target, &first, Arc::default())
        .await
        .unwrap();
    assert_eq!(repo.catalog_listings(), 1);

    let repo = open(&t).await;
    let opts = RestoreOptions {
        since: Some(PointSelector::Seq(1)),
        ..RestoreOptions::new(PointSelector::Latest)
    };
    let report = restore(&repo, &volume, &target, &opts, Arc::default())
        .await
        .unwrap();
    assert_eq!(report.since, Some(1));
    assert_eq!(repo.catalog_listings(), 1, "restore --since");
    assert_eq!(read(&target), read(&t.path("a.img")));
}

/// `status` lists each volume's catalog once (it was three times: the rows, the
/// counts and the newest chain).
#[tokio::test(flavor = "multi_thread")]
async fn status_lists_each_catalog_once() {
    let t = TempRepo::new();
    two_volumes(&t);
    let repo = open(&t).await;
    let records = Records::new(t.location(), Some(t.path("state")));
    let status = gather(Some(&repo), t.location(), &records, None, None)
        .await
        .unwrap();
    assert_eq!(status.volumes.len(), 2);
    assert!(
        status
            .volumes
            .iter()
            .all(|v| v.points == 3 && v.chain_length == 3)
    );
    assert_eq!(repo.catalog_listings(), 2);
}

/// `copy` lists each source volume's catalog once, whether it copies the chain or
/// consolidates a point. A plain copy lists each destination volume twice, whatever
/// the number of points: what it holds, and after the commits for the cleanup of
/// leftovers (a committed point is opened from its marker, not found by listing again).
#[tokio::test(flavor = "multi_thread")]
async fn copy_lists_each_source_catalog_once() {
    let t = TempRepo::new();
    two_volumes(&t);
    for consolidate in [false, true] {
        let src = open(&t).await;
        let dest = t.path(&format!("copy-{consolidate}"));
        let dest = Repository::create_location(dest.to_str().unwrap(), true, None)
            .await
            .unwrap();
        let opts = CopyOptions {
            volume: None,
            at: None,
            consolidate,
            threads: 2,
        };
        let report = copy(&src, &dest, true, &opts, Arc::default())
            .await
            .unwrap();
        assert_eq!(report.copied.len(), if consolidate { 2 } else { 6 });
        assert_eq!(src.catalog_listings(), 2, "consolidate: {consolidate}");
        if !consolidate {
            assert_eq!(dest.catalog_listings(), 2 * 2, "destination");
        }
    }
}

/// A backup lists the volume's catalog once to choose its base (the check for a lost
/// newest marker returns the catalog it leaves), and once more after its commit, for
/// the cleanup of leftovers.
#[tokio::test(flavor = "multi_thread")]
async fn backup_lists_the_catalog_once_before_it_writes() {
    let t = TempRepo::new();
    two_volumes(&t);
    let repo = open(&t).await;
    let opts = thinarc::backup::BackupOptions::new(VolumeName::new("a").unwrap());
    let source = thinarc::source::RawSource::open(&t.path("a.img")).unwrap();
    let report = thinarc::backup::backup(&repo, source, &opts, Arc::default())
        .await
        .unwrap();
    assert_eq!(report.seq, 4);
    assert_eq!(repo.catalog_listings(), 2);
}
