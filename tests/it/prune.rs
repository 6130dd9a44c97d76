//! Prune through the library: random chains with random point times and random
//! policies (every kept point restores byte for byte, dropped points are gone, nothing
//! but the listed archives is left after the grace period); kill points (the store
//! dies at every operation index of a prune: every point listed before is still
//! restorable or replaced by its merged successor, a second prune completes, leftovers
//! go after the grace period), on the local store and on the S3 test server.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use proptest::prelude::*;
use thinarc::prune::{PointTime, PruneOptions, RetentionPolicy, Within, prune};
use thinarc::repo::{LEFTOVER_GRACE, Repository, VolumeName};

use crate::chain::{
    LibRepo, MAX_SIZE, Op, apply, backup_file_at, local_store, op, restore_seq, runtime,
};
use crate::faults::{Faults, FaultyStore};
use crate::util::{assert_same_image, make_image, read, write};

/// Backs up a full of `make_image(size, seed)` at `times[0]` and one delta per step at
/// the following times; returns the model image of every point.
async fn timed_chain(
    repo: &Repository,
    scratch: &std::path::Path,
    volume: &VolumeName,
    size: usize,
    seed: u64,
    steps: &[(Op, bool)],
    times: &[DateTime<Utc>],
) -> Vec<Vec<u8>> {
    let src = scratch.join(format!("{}.img", volume.as_str()));
    let mut img = make_image(size, seed);
    write(&src, &img);
    backup_file_at(repo, volume, &src, None, Some(times[0]))
        .await
        .expect("full backup");
    let mut points = vec![img.clone()];
    for (i, (op, by_list)) in steps.iter().enumerate() {
        let touched = apply(&mut img, op);
        write(&src, &img);
        backup_file_at(
            repo,
            volume,
            &src,
            by_list.then_some(touched),
            Some(times[i + 1]),
        )
        .await
        .unwrap_or_else(|e| panic!("step {i} ({op:?}): {e}"));
        points.push(img.clone());
    }
    points
}

/// Checks that exactly `kept` are listed and each restores to its model image.
async fn assert_points(
    repo: &Repository,
    scratch: &std::path::Path,
    volume: &VolumeName,
    models: &[Vec<u8>],
    kept: &[u64],
) {
    assert_eq!(listed(repo, volume).await, kept, "listed points");
    assert_restore(repo, scratch, volume, models, kept).await;
}

/// Seqs of the listed points.
async fn listed(repo: &Repository, volume: &VolumeName) -> Vec<u64> {
    repo.commits(volume)
        .await
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect()
}

/// Checks that each of `seqs` restores to its model image.
async fn assert_restore(
    repo: &Repository,
    scratch: &std::path::Path,
    volume: &VolumeName,
    models: &[Vec<u8>],
    seqs: &[u64],
) {
    for &seq in seqs {
        let out = scratch.join(format!("prune-restore-{seq}.img"));
        restore_seq(repo, volume, seq, &out)
            .await
            .unwrap_or_else(|e| panic!("restore seq {seq}: {e}"));
        assert_same_image(
            &read(&out),
            &models[seq as usize - 1],
            &format!("seq {seq}"),
        );
        std::fs::remove_file(&out).unwrap();
    }
}

/// Runs the cleanup as if the grace period had passed, and checks that only the
/// committed archives, one marker per point and no tombstone are left.
async fn assert_clean_after_grace(repo: &Repository, volume: &VolumeName) {
    let later = Utc::now() + TimeDelta::hours(2);
    repo.clean_leftovers(volume, later, LEFTOVER_GRACE)
        .await
        .expect("cleanup");
    let commits = repo.commits(volume).await.unwrap();
    let names = |dir: &str| {
        let prefix = object_store::path::Path::from(format!("volumes/{}/{dir}", volume.as_str()));
        let store = repo.store().clone();
        async move {
            let mut v: Vec<String> = store
                .list(Some(&prefix))
                .map_ok(|m| m.location.filename().unwrap().to_string())
                .try_collect()
                .await
                .unwrap();
            v.sort();
            v
        }
    };
    let mut objects: Vec<String> = commits.iter().map(|c| c.object.clone()).collect();
    objects.sort();
    assert_eq!(
        names("archives").await,
        objects,
        "archive objects after the grace period"
    );
    assert_eq!(
        names("tombstones").await,
        Vec::<String>::new(),
        "tombstones left"
    );
    let markers = names("commits").await;
    assert_eq!(
        markers.len(),
        commits.len(),
        "one marker per point: {markers:?}"
    );
}

/// A random policy: some of the count rules and maybe `--keep-within`.
fn policy() -> impl Strategy<Value = RetentionPolicy> {
    let n = || proptest::option::of(1..4u32);
    (n(), n(), n(), n(), n(), proptest::option::of(1..72u32)).prop_map(
        |(last, hourly, daily, weekly, monthly, within)| {
            let mut p = RetentionPolicy {
                last,
                hourly,
                daily,
                weekly,
                monthly,
                yearly: None,
                within: within.map(|h| Within::parse(&format!("{h}h")).unwrap()),
            };
            if p.check().is_err() {
                p.last = Some(1);
            }
            p
        },
    )
}

async fn check_prune(
    size: usize,
    seed: u64,
    steps: Vec<(Op, bool)>,
    gaps: Vec<u32>,
    policy: RetentionPolicy,
    max_chain: Option<u32>,
) {
    let t = LibRepo::new().await;
    let volume = VolumeName::new("p").unwrap();
    let start = DateTime::parse_from_rfc3339("2026-11-02T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let mut times = vec![start];
    for g in &gaps[..steps.len()] {
        let last = *times.last().unwrap();
        times.push(last + TimeDelta::minutes(i64::from(*g)));
    }
    let models = timed_chain(&t.repo, t.dir.path(), &volume, size, seed, &steps, &times).await;
    let expected: Vec<u64> = policy
        .apply(
            &times
                .iter()
                .enumerate()
                .map(|(i, &created)| PointTime {
                    seq: i as u64 + 1,
                    created,
                })
                .collect::<Vec<_>>(),
        )
        .unwrap()
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.seq)
        .collect();
    let mut opts = PruneOptions::new(policy);
    opts.max_chain_length = max_chain;
    opts.threads = 2;
    let r = prune(&t.repo, &volume, &opts).await.expect("prune");
    assert_eq!(
        r.points
            .iter()
            .filter(|p| p.keep)
            .map(|p| p.seq)
            .collect::<Vec<_>>(),
        expected
    );
    assert_points(&t.repo, t.dir.path(), &volume, &models, &expected).await;
    if let Some(m) = max_chain {
        for c in r.points.iter().filter(|p| p.keep) {
            assert!(
                c.chain_length <= m,
                "seq {} has a chain of {}",
                c.seq,
                c.chain_length
            );
        }
        for p in &r.points {
            if p.keep {
                let chain = t
                    .repo
                    .resolve(
                        &t.repo.commits(&volume).await.unwrap(),
                        &thinarc::repo::PointSelector::Seq(p.seq),
                    )
                    .await
                    .unwrap();
                assert_eq!(chain.archives.len() as u32, p.chain_length, "seq {}", p.seq);
            }
        }
    }
    assert_clean_after_grace(&t.repo, &volume).await;
    assert_points(&t.repo, t.dir.path(), &volume, &models, &expected).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20, ..ProptestConfig::default() })]

    /// Random chains, random times (minutes to days apart), random policies: the kept
    /// points are the policy's and restore exactly, the dropped ones are gone, and after
    /// the grace period nothing but the listed archives remains.
    #[test]
    fn pruned_chains_restore_every_kept_point(
        size in 0..=MAX_SIZE,
        seed in any::<u64>(),
        steps in proptest::collection::vec((op(), any::<bool>()), 2..9),
        gaps in proptest::collection::vec(prop_oneof![1..120u32, 600..3000u32, 5000..20000u32], 9),
        policy in policy(),
        max_chain in proptest::option::of(1..4u32),
    ) {
        runtime().block_on(check_prune(size, seed, steps, gaps, policy, max_chain));
    }
}

/// Six points over three days; `--keep-daily 3` keeps seqs 3, 5 and 6: seqs 1 and 2 are
/// folded into 3 (a new full), 4 is merged into 5.
fn kill_scenario() -> (Vec<(Op, bool)>, Vec<DateTime<Utc>>, RetentionPolicy) {
    let steps = vec![
        (
            Op::Write {
                at: 1 << 30,
                len: 20_000,
                seed: 1,
            },
            true,
        ),
        (
            Op::Grow {
                by: 12_000,
                seed: Some(2),
                announce: false,
            },
            false,
        ),
        (Op::Zero { at: 0, len: 9000 }, true),
        (
            Op::Write {
                at: 3 << 30,
                len: 30_000,
                seed: 3,
            },
            false,
        ),
        (Op::Shrink { keep: 3 << 30 }, false),
    ];
    let times = [
        "2026-11-01T01:00:00Z",
        "2026-11-01T02:00:00Z",
        "2026-11-01T03:00:00Z",
        "2026-11-02T01:00:00Z",
        "2026-11-02T02:00:00Z",
        "2026-11-03T01:00:00Z",
    ]
    .iter()
    .map(|s| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
    .collect();
    let policy = RetentionPolicy {
        daily: Some(3),
        ..Default::default()
    };
    (steps, times, policy)
}

/// Copies every object of `from` into `to` (a fresh repository for one kill point).
async fn copy_all(from: &Arc<dyn ObjectStore>, to: &Arc<dyn ObjectStore>) {
    let metas: Vec<_> = from.list(None).try_collect().await.unwrap();
    for m in metas {
        let bytes = from.get(&m.location).await.unwrap().bytes().await.unwrap();
        to.put(&m.location, bytes.into()).await.unwrap();
    }
}

/// Which store operations of the prune to kill it at.
enum KillPoints {
    /// Every one in turn, until a prune finishes.
    Every,
    /// This many, drawn from all of them with a seed that rotates per run (printed;
    /// `THINARC_TEST_SEED` replays it), plus the run that finishes.
    Sample(usize),
}

/// Kills a prune at store operations chosen by `points` (`fresh` makes an empty store
/// for each attempt), then checks the repository as described in the module doc.
async fn kill_prune_everywhere(fresh: impl Fn() -> Arc<dyn ObjectStore>, points: KillPoints) {
    let scratch = tempfile::tempdir().unwrap();
    let volume = VolumeName::new("k").unwrap();
    let (steps, times, policy) = kill_scenario();
    let base_store = fresh();
    let base = Repository::create(base_store.clone(), "base")
        .await
        .unwrap();
    let models = timed_chain(&base, scratch.path(), &volume, 90_000, 4, &steps, &times).await;
    let mut opts = PruneOptions::new(policy);
    opts.threads = 2;
    let kill = |k| {
        kill_prune_at(
            k,
            &fresh,
            &base_store,
            scratch.path(),
            &volume,
            &models,
            &opts,
        )
    };

    let started = std::time::Instant::now();
    match points {
        KillPoints::Every => {
            let mut k = 0;
            while !kill(k).await {
                k += 1;
            }
            assert!(k > 20, "the prune did {k} store operations");
            eprintln!("{k} kill points checked in {:?}", started.elapsed());
        }
        KillPoints::Sample(n) => {
            // The store operations of a whole prune, counted on a copy.
            let store = fresh();
            copy_all(&base_store, &store).await;
            let faults = Arc::new(Mutex::new(Faults::default()));
            let counting: Arc<dyn ObjectStore> = Arc::new(FaultyStore {
                inner: store,
                faults: faults.clone(),
            });
            let repo = Repository::open(counting, "count").await.unwrap();
            prune(&repo, &volume, &opts)
                .await
                .expect("uninterrupted prune");
            let ops = faults.lock().unwrap().ops;
            let seed = std::env::var("THINARC_TEST_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs()
                });
            let mut rng = crate::util::Rng::new(seed);
            let mut ks: Vec<usize> = (0..n).map(|_| rng.below(ops as u64) as usize).collect();
            ks.sort_unstable();
            ks.dedup();
            eprintln!(
                "killing the prune at {ks:?} of {ops} store operations (THINARC_TEST_SEED={seed} replays them)"
            );
            for &k in &ks {
                assert!(
                    !kill(k).await,
                    "kill at op {k} of {ops}: the prune finished"
                );
            }
            assert!(
                kill(ops).await,
                "a prune with {ops} operations allowed finishes"
            );
            eprintln!(
                "{} kill points checked in {:?}",
                ks.len() + 1,
                started.elapsed()
            );
        }
    }
}

/// One kill point: a copy of `base_store` whose prune dies at store operation `k`,
/// checked after the kill and after a second prune. Returns whether the prune finished
/// before operation `k`.
async fn kill_prune_at(
    k: usize,
    fresh: &impl Fn() -> Arc<dyn ObjectStore>,
    base_store: &Arc<dyn ObjectStore>,
    scratch: &std::path::Path,
    volume: &VolumeName,
    models: &[Vec<u8>],
    opts: &PruneOptions,
) -> bool {
    let kept = [3, 5, 6];
    let store = fresh();
    copy_all(base_store, &store).await;
    let faults = Arc::new(Mutex::new(Faults {
        crash_at: Some(k),
        ..Faults::default()
    }));
    let faulty: Arc<dyn ObjectStore> = Arc::new(FaultyStore {
        inner: store.clone(),
        faults: faults.clone(),
    });
    let dying = Repository::open(faulty, "faulty").await;
    // A kill while the derived summary is written, or while the lock is released (the
    // last operation), leaves every point committed: the prune ends with a warning,
    // which is not finishing the job.
    let finished = match dying {
        Ok(repo) => prune(&repo, volume, opts).await.is_ok_and(|r| {
            !r.warnings
                .iter()
                .any(|w| w.contains("summary") || w.contains("releasing the lock"))
        }),
        Err(_) => false,
    };
    // After the kill, through a healthy store: each point listed before is listed
    // and restores, or was dropped and its merged successor restores.
    let repo = Repository::open(store.clone(), "after").await.unwrap();
    let listed = listed(&repo, volume).await;
    for seq in 1..=6u64 {
        assert!(
            listed.contains(&seq) || !kept.contains(&seq),
            "kill at op {k}: kept seq {seq} is not listed ({listed:?})"
        );
    }
    assert_points(&repo, scratch, volume, models, &listed).await;
    // The killed run's lock goes stale after its TTL (see the lock tests); here it
    // is removed at once. Then a second prune completes the job.
    let locks = object_store::path::Path::from("volumes/k/locks");
    let stale: Vec<_> = store.list(Some(&locks)).try_collect().await.unwrap();
    for m in stale {
        store.delete(&m.location).await.unwrap();
    }
    prune(&repo, volume, opts)
        .await
        .unwrap_or_else(|e| panic!("kill at op {k}: second prune: {e}"));
    assert_points(&repo, scratch, volume, models, &kept).await;
    assert_clean_after_grace(&repo, volume).await;
    finished
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_prune_keeps_every_point_restorable_locally() {
    let dirs = Mutex::new(Vec::new());
    kill_prune_everywhere(
        || {
            let d = tempfile::tempdir().unwrap();
            let store = local_store(d.path());
            dirs.lock().unwrap().push(d);
            store
        },
        KillPoints::Every,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_prune_keeps_every_point_restorable_on_s3() {
    let moto = crate::util::s3::moto();
    kill_prune_everywhere(|| moto.store(&moto.bucket()), KillPoints::Sample(8)).await;
}

/// A dry run changes nothing and reports the plan; a corrupt archive in the middle of
/// the merged segment stops the prune before anything is deleted, naming the archive.
#[tokio::test(flavor = "multi_thread")]
async fn dry_run_and_corrupt_mid_chain_archive() {
    let t = LibRepo::new().await;
    let volume = VolumeName::new("d").unwrap();
    let (steps, times, policy) = kill_scenario();
    let models = timed_chain(&t.repo, t.dir.path(), &volume, 90_000, 4, &steps, &times).await;
    let mut opts = PruneOptions::new(policy);
    opts.dry_run = true;
    let before = t.repo.commits(&volume).await.unwrap();
    let r = prune(&t.repo, &volume, &opts).await.expect("dry run");
    assert!(r.dry_run && r.merges.is_empty());
    let plan: Vec<_> = r
        .points
        .iter()
        .map(|p| (p.seq, p.keep, p.new_parent, p.merged.clone()))
        .collect();
    assert_eq!(
        plan,
        vec![
            (1, false, None, vec![]),
            (2, false, None, vec![]),
            (3, true, None, vec![1, 2, 3]),
            (4, false, None, vec![]),
            (5, true, Some(3), vec![4, 5]),
            (6, true, Some(5), vec![]),
        ]
    );
    let size = |seqs: &[u64]| -> u64 {
        before
            .iter()
            .filter(|c| seqs.contains(&c.seq))
            .map(|c| c.size)
            .sum()
    };
    assert_eq!(r.read_estimate, size(&[1, 2, 3, 4, 5]));
    assert_eq!(r.delete_bytes, size(&[1, 2, 3, 4, 5]));
    assert_eq!(
        t.repo.commits(&volume).await.unwrap(),
        before,
        "dry run changed nothing"
    );

    // Flip a byte in a frame of seq 4 (merged into 5): the merge into seq 5 needs
    // damaged data and is skipped with a warning naming it; the rest of the plan runs.
    let c4 = before.iter().find(|c| c.seq == 4).unwrap();
    let path = t.archives_dir("d").join(&c4.object);
    let mut bytes = read(&path);
    let a = thinarc::format::ArchiveReader::open(&bytes).unwrap();
    let at = a.trailer.body_offset as usize + 10;
    bytes[at] ^= 0x40;
    write(&path, &bytes);
    opts.dry_run = false;
    let r = prune(&t.repo, &volume, &opts).await.expect("prune goes on");
    assert_eq!(r.merges.len(), 1, "seq 3 was rewritten, seq 5 was not");
    assert!(
        r.warnings.iter().any(|w| w.starts_with(
            "seq 5 was not rewritten, it needs damaged data (archive volumes/d/archives/"
        ) && w.contains(&c4.object)
            && w.contains("seq(s) [4, 5] stay listed")),
        "{:?}",
        r.warnings
    );
    // Seq 3 became a full archive and 1, 2 were dropped; 4 and 5 stay (5 needs 4).
    let after = t.repo.commits(&volume).await.unwrap();
    assert_eq!(
        after.iter().map(|c| c.seq).collect::<Vec<_>>(),
        vec![3, 4, 5, 6]
    );
    assert_eq!(after[0].generation, 1);
    assert_restore(&t.repo, t.dir.path(), &volume, &models, &[3]).await;
}
