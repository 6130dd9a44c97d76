//! The repository on a real S3-compatible server: moto's server over HTTP on loopback
//! (see `util/s3.rs`). The CLI scenarios of `cli.rs` run here unchanged; the rest
//! covers what only an object store has: multipart uploads, conditional creates,
//! racing writers, and the errors of buckets, endpoints and prefixes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use object_store::path::Path as Key;
use thinarc::backup::BackupError;
use thinarc::repo::{RepoError, Repository, VolumeName};
use tokio::sync::Barrier;

use crate::chain::{backup_file, restore_every_point};
use crate::faults::{Faults, FaultyStore, OwnLocksOnly};
use crate::util::s3::moto;
use crate::util::{Rng, TempRepo, assert_same_image, make_image, read, write};

const MIB: usize = 1 << 20;

#[test]
fn chain_restores_every_point_on_s3() {
    crate::cli::chain_scenario(&TempRepo::s3());
}

#[test]
fn list_json_describes_every_point_on_s3() {
    crate::cli::list_scenario(&TempRepo::s3());
}

#[test]
fn sparse_source_on_s3() {
    crate::cli::sparse_scenario(&TempRepo::s3());
}

#[test]
fn restore_onto_existing_file_from_s3() {
    crate::cli::existing_target_scenario(&TempRepo::s3());
}

#[test]
fn bad_input_is_rejected_on_s3() {
    crate::cli::bad_input_scenario(&TempRepo::s3());
}

#[test]
fn archive_larger_than_a_part_goes_up_in_parts_and_restores() {
    let t = TempRepo::s3();
    let src = t.path("big.img");
    let mut img = vec![0u8; 40 * MIB];
    Rng::new(21).fill(&mut img[..30 * MIB]);
    write(&src, &img);
    let r = t.json(&["backup", src.to_str().unwrap()]);
    assert!(
        r["stored_bytes"].as_u64().unwrap() > 3 * 8 * MIB as u64,
        "several 8 MiB parts: {r}"
    );
    let out = t.path("out.img");
    t.ok(&["restore", "big.img", out.to_str().unwrap()]);
    assert_same_image(&read(&out), &img, "restored from S3");
}

#[test]
fn bad_buckets_endpoints_and_prefixes_fail_early_with_clear_errors() {
    let moto = moto();
    let mut env = moto.env();
    let run = |location: &str, args: &[&str], env: &[(String, String)]| {
        let mut full = vec!["-r".to_string(), location.to_string()];
        full.extend(args.iter().map(|s| s.to_string()));
        crate::util::thinarc_env(&full, env)
    };

    let o = run("s3://no-such-bucket-thinarc/repo", &["list"], &env);
    assert!(!o.success, "{}", o.show());
    assert!(
        o.stderr
            .contains("bucket no-such-bucket-thinarc does not exist or is not accessible"),
        "{}",
        o.show()
    );
    let o = run(
        "s3://no-such-bucket-thinarc/repo",
        &["init", "--no-encryption"],
        &env,
    );
    assert!(
        !o.success && o.stderr.contains("no-such-bucket-thinarc"),
        "{}",
        o.show()
    );

    // A prefix that holds other things but no repository, and one whose config is not
    // a thinarc config.
    let bucket = moto.bucket();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = moto.store(&bucket);
    rt.block_on(store.put(&Key::from("photos/cat.jpg"), b"meow".to_vec().into()))
        .unwrap();
    rt.block_on(store.put(
        &Key::from("other/config"),
        b"[core]\nbare = true\n".to_vec().into(),
    ))
    .unwrap();
    let o = run(&format!("s3://{bucket}/photos"), &["list"], &env);
    assert!(
        o.stderr
            .contains(&format!("no thinarc repository at s3://{bucket}/photos")),
        "{}",
        o.show()
    );
    let o = run(&format!("s3://{bucket}/other"), &["list"], &env);
    assert!(
        o.stderr
            .contains(&format!("s3://{bucket}/other is not a thinarc repository")),
        "{}",
        o.show()
    );
    let o = run(
        &format!("s3://{bucket}/other"),
        &["init", "--no-encryption"],
        &env,
    );
    assert!(
        o.stderr.contains("a thinarc repository already exists")
            || o.stderr.contains("not a thinarc repository"),
        "{}",
        o.show()
    );

    // An endpoint nobody listens on: retried briefly, then a clear error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (k, v) in env.iter_mut() {
        match k.as_str() {
            "AWS_ENDPOINT_URL" => *v = format!("http://127.0.0.1:{port}"),
            "THINARC_RETRY_TIMEOUT" => *v = "1".into(),
            _ => {}
        }
    }
    let started = Instant::now();
    let o = run(&format!("s3://{bucket}/repo"), &["list"], &env);
    assert!(!o.success, "{}", o.show());
    assert!(
        o.stderr.contains(&format!("s3://{bucket}/repo/config")),
        "the error names the object: {}",
        o.show()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn init_refuses_a_store_that_ignores_create_if_absent() {
    let moto = moto();
    let faults = Arc::new(Mutex::new(Faults {
        ignore_conditions: true,
        ..Faults::default()
    }));
    let bucket = moto.bucket();
    let store = Arc::new(FaultyStore {
        inner: moto.store(&bucket),
        faults: faults.clone(),
    });
    let e = Repository::create_checked(store.clone(), "s3://unsafe", true, None)
        .await
        .unwrap_err();
    assert!(matches!(e, RepoError::NoConditionalWrites { .. }), "{e:?}");
    assert!(e.to_string().contains("--allow-unsafe-store"), "{e}");
    // Nothing but the (removed) probe was written: the location is still empty.
    let open = Repository::open(store.clone(), "s3://unsafe")
        .await
        .unwrap_err();
    assert!(matches!(open, RepoError::NotARepository { .. }), "{open:?}");
    // The operator may accept the risk.
    Repository::create_checked(store, "s3://unsafe", false, None)
        .await
        .expect("init with the risk accepted");
    // moto itself honours If-None-Match: the check passes.
    Repository::create_checked(moto.store(&moto.bucket()), "s3://safe", true, None)
        .await
        .expect("moto honours create-if-absent");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_writers_racing_on_s3_exactly_one_commits() {
    let moto = moto();
    let faults = Arc::new(Mutex::new(Faults::default()));
    let store = Arc::new(FaultyStore {
        inner: moto.store(&moto.bucket()),
        faults: faults.clone(),
    });
    let repo = Repository::create(store, "s3://race").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let volume = VolumeName::new("race").unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let base = make_image(2 * MIB, 31);
    write(&a, &base);
    backup_file(&repo, &volume, &a, None).await.expect("parent");
    let (mut img_a, mut img_b) = (base.clone(), base.clone());
    img_a[..4096].fill(0xA);
    img_b[MIB..MIB + 4096].fill(0xB);
    write(&a, &img_a);
    write(&b, &img_b);

    // Each writer's lock listings miss the other's lock (see `OwnLocksOnly`): the
    // commit guard behind the volume lock decides.
    let writer = async || {
        let store = Arc::new(OwnLocksOnly::new(repo.store().clone()));
        Repository::open(store, "s3://race").await.unwrap()
    };
    let (writer_a, writer_b) = (writer().await, writer().await);
    faults.lock().unwrap().commit_barrier = Some(Arc::new(Barrier::new(2)));
    let (ra, rb) = tokio::join!(
        backup_file(&writer_a, &volume, &a, None),
        backup_file(&writer_b, &volume, &b, None)
    );
    faults.lock().unwrap().commit_barrier = None;
    let (winner, loser, img) = match (ra, rb) {
        (Ok(w), Err(e)) => (w, e, img_a),
        (Err(e), Ok(w)) => (w, e, img_b),
        (ra, rb) => panic!("exactly one writer must commit: {ra:?} / {rb:?}"),
    };
    assert_eq!(winner.seq, 2);
    assert!(
        matches!(
            &loser,
            BackupError::Repo(RepoError::Conflict { seq: 2, .. })
        ),
        "{loser:?}"
    );
    let commits = repo.commits(&volume).await.unwrap();
    assert_eq!(commits.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(commits[1].archive_id, winner.archive);
    // The loser removed its archive: only committed archives remain in the bucket.
    let listed: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(
        repo.store().list(Some(&Key::from("volumes/race/archives"))),
    )
    .await
    .unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    restore_every_point(&repo, dir.path(), &volume, &[base, img]).await;
}

#[test]
fn archive_deleted_from_under_a_restore_is_named() {
    let t = TempRepo::s3();
    let src = t.path("d.img");
    write(&src, &make_image(2 * MIB, 33));
    t.ok(&["backup", src.to_str().unwrap()]);
    let moto = moto();
    let store = moto.store(t.bucket());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listed: Vec<_> = rt
        .block_on(futures::TryStreamExt::try_collect::<Vec<_>>(
            store.list(Some(&Key::from("repo/volumes/d.img/archives"))),
        ))
        .unwrap();
    assert_eq!(listed.len(), 1);
    rt.block_on(store.delete(&listed[0].location)).unwrap();
    let out = t.path("out.img");
    let e = t.fails(&["restore", "d.img", out.to_str().unwrap()]);
    assert!(e.contains("the archive object is missing"), "{e}");
    assert!(
        e.contains(listed[0].location.as_ref().trim_start_matches("repo/")),
        "{e}"
    );
    assert!(!out.exists());
}
