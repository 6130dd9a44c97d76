//! `copy`: every point copied restores from the destination alone, byte for byte;
//! copying again transfers nothing; `--consolidate` writes one full archive that later
//! plain deltas chain onto; local to S3 and S3 to local through the CLI; and a copy
//! killed after any number of store operations leaves every destination point
//! restorable or absent, and the next copy completes.

use std::path::Path;
use std::sync::{Arc, Mutex};

use object_store::path::Path as Key;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt};
use thinarc::copy::{CopyKind, CopyOptions, CopyReport, copy};
use thinarc::repo::{PointSelector, Repository, VolumeName};

use crate::chain::{LibRepo, backup_file, local_store, restore_every_point, restore_seq};
use crate::faults::{Faults, FaultyStore};
use crate::util::s3::moto;
use crate::util::{TempRepo, assert_same_image, make_image, read, write};

/// A source repository with a chain of `n` points of one volume; returns the models.
async fn source(t: &LibRepo, volume: &VolumeName, n: usize) -> Vec<Vec<u8>> {
    let src = t.path("src.img");
    let mut img = make_image(400 << 10, 41);
    let mut points = Vec::new();
    for i in 0..n {
        if i > 0 {
            let at = (i * 70_000) % (img.len() - 20_000);
            img[at..at + 20_000].fill(i as u8);
            if i % 3 == 0 {
                img.truncate(img.len() - 5000); // the volume shrinks
            }
        }
        write(&src, &img);
        backup_file(&t.repo, volume, &src, None)
            .await
            .expect("backup");
        points.push(img.clone());
    }
    points
}

fn opts(volume: &VolumeName, at: Option<u64>, consolidate: bool) -> CopyOptions {
    CopyOptions {
        volume: Some(volume.clone()),
        at: at.map(PointSelector::Seq),
        consolidate,
        threads: 2,
    }
}

async fn run_copy(src: &Repository, dest: &Repository, o: &CopyOptions) -> CopyReport {
    copy(src, dest, false, o, Arc::default())
        .await
        .expect("copy")
}

fn kinds(r: &CopyReport) -> Vec<(u64, CopyKind)> {
    r.copied.iter().map(|p| (p.seq, p.kind)).collect()
}

/// Restores every point `dest` holds and compares it with the model of its seq.
async fn restore_held_points(
    dest: &Repository,
    scratch: &Path,
    volume: &VolumeName,
    models: &[Vec<u8>],
) -> Vec<u64> {
    let commits = dest.commits(volume).await.expect("commits");
    for c in &commits {
        let out = scratch.join(format!("held-{}.img", c.seq));
        restore_seq(dest, volume, c.seq, &out)
            .await
            .unwrap_or_else(|e| panic!("restore seq {} from the destination: {e}", c.seq));
        assert_same_image(
            &read(&out),
            &models[c.seq as usize - 1],
            &format!("seq {}", c.seq),
        );
        std::fs::remove_file(&out).unwrap();
    }
    commits.iter().map(|c| c.seq).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn copied_points_restore_from_the_destination_and_copying_again_transfers_nothing() {
    let (src, dest) = (LibRepo::new().await, LibRepo::new().await);
    let volume = VolumeName::new("vm-disk").unwrap();
    let models = source(&src, &volume, 5).await;
    let r = run_copy(&src.repo, &dest.repo, &opts(&volume, None, false)).await;
    assert_eq!(
        kinds(&r),
        (1..=5).map(|s| (s, CopyKind::Copied)).collect::<Vec<_>>()
    );
    assert_eq!(r.present, 0);
    // The archives are the same bytes: the same ids and digests.
    let (a, b) = (
        src.repo.commits(&volume).await.unwrap(),
        dest.repo.commits(&volume).await.unwrap(),
    );
    assert_eq!(
        a.iter()
            .map(|c| (&c.archive_id, c.digest))
            .collect::<Vec<_>>(),
        b.iter()
            .map(|c| (&c.archive_id, c.digest))
            .collect::<Vec<_>>()
    );
    let again = run_copy(&src.repo, &dest.repo, &opts(&volume, None, false)).await;
    assert!(again.copied.is_empty(), "{:?}", again.copied);
    assert_eq!(
        (again.present, again.bytes_read, again.bytes_written),
        (5, 0, 0)
    );
    // The source can go: the destination alone restores every point.
    drop(src);
    restore_every_point(&dest.repo, dest.dir.path(), &volume, &models).await;
    let lock_dir = dest.path("repo/volumes/vm-disk/locks");
    assert_eq!(
        std::fs::read_dir(lock_dir).map_or(0, |d| d.count()),
        0,
        "lock released"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_and_one_point_with_its_chain() {
    let (src, dest) = (LibRepo::new().await, LibRepo::new().await);
    let volume = VolumeName::new("disk").unwrap();
    let models = source(&src, &volume, 4).await;
    // One point: its chain (seqs 1..3) and nothing after it.
    let r = run_copy(&src.repo, &dest.repo, &opts(&volume, Some(3), false)).await;
    assert_eq!(
        kinds(&r),
        [
            (1, CopyKind::Copied),
            (2, CopyKind::Copied),
            (3, CopyKind::Copied)
        ]
    );
    let again = run_copy(&src.repo, &dest.repo, &opts(&volume, Some(3), false)).await;
    assert!(again.copied.is_empty());
    assert_eq!(
        (again.present, again.bytes_read, again.bytes_written),
        (3, 0, 0)
    );
    let all = run_copy(&src.repo, &dest.repo, &opts(&volume, None, false)).await;
    assert_eq!(kinds(&all), [(4, CopyKind::Copied)]);
    assert_eq!(all.present, 3);
    restore_every_point(&dest.repo, dest.dir.path(), &volume, &models).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn consolidated_point_is_one_full_archive_and_later_deltas_chain_onto_it() {
    let (src, dest) = (LibRepo::new().await, LibRepo::new().await);
    let volume = VolumeName::new("disk").unwrap();
    let mut models = source(&src, &volume, 4).await;
    let r = run_copy(&src.repo, &dest.repo, &opts(&volume, Some(3), true)).await;
    assert_eq!(kinds(&r), [(3, CopyKind::Consolidated)]);
    let held = dest.repo.describe(&volume).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].seq, &held[0].parent), (3, &None), "a full archive");
    assert_eq!(held[0].blocks, (models[2].len() as u64).div_ceil(4096));
    let src_info = src.repo.describe(&volume).await.unwrap();
    assert_eq!(held[0].image_digest, src_info[2].image_digest);
    let out = dest.path("c3.img");
    restore_seq(&dest.repo, &volume, 3, &out).await.unwrap();
    assert_same_image(&read(&out), &models[2], "consolidated seq 3");
    // Consolidating the same point again: already there.
    let again = run_copy(&src.repo, &dest.repo, &opts(&volume, Some(3), true)).await;
    assert!(again.copied.is_empty() && again.present == 1);

    // A new backup (a delta on seq 4) and a plain copy: seq 4 is a delta on seq 3,
    // which the destination holds as the consolidated full (linked by image digest).
    let img_path = src.path("src.img");
    let mut img = models[3].clone();
    img[..10_000].fill(0x5a);
    write(&img_path, &img);
    backup_file(&src.repo, &volume, &img_path, None)
        .await
        .unwrap();
    models.push(img);
    let plain = run_copy(&src.repo, &dest.repo, &opts(&volume, None, false)).await;
    assert_eq!(
        kinds(&plain),
        [
            (1, CopyKind::Copied),
            (2, CopyKind::Copied),
            (4, CopyKind::Copied),
            (5, CopyKind::Copied)
        ]
    );
    assert_eq!(plain.present, 1);
    restore_every_point(&dest.repo, dest.dir.path(), &volume, &models).await;
}

#[test]
fn local_to_s3_and_s3_to_local_through_the_cli() {
    let local = TempRepo::new();
    let img = local.path("disk.img");
    let mut data = make_image(500 << 10, 9);
    let mut models = Vec::new();
    for i in 0..3u8 {
        data[i as usize * 100_000..i as usize * 100_000 + 30_000].fill(i + 1);
        write(&img, &data);
        local.ok(&["backup", img.to_str().unwrap(), "--volume", "vm/web"]);
        models.push(data.clone());
    }
    let moto = moto();
    let bucket = moto.bucket();
    let s3 = format!("s3://{bucket}/offsite");
    let env: Vec<(&str, &str)> = moto
        .env()
        .leak()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let out = local.run_env(&["copy", "--to", &s3, "--json"], &env);
    assert!(out.success, "{}", out.show());
    let r: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(r["initialised"], true);
    assert_eq!(r["copied"].as_array().unwrap().len(), 3);
    let again = local.run_env(&["copy", "--to", &s3], &env);
    assert_eq!(
        again.stdout,
        format!("nothing to copy: {s3} already holds the 3 chosen point(s)\n"),
        "{}",
        again.show()
    );
    // Restore every point from S3, then copy S3 -> another local directory and
    // restore from there.
    let back = local.path("back");
    let back = back.to_str().unwrap();
    let out = thinarc_s3(&env, &["-r", &s3, "copy", "--to", back, "vm/web", "--json"]);
    assert!(out.success, "{}", out.show());
    for (i, model) in models.iter().enumerate() {
        let seq = (i + 1).to_string();
        for repo in [s3.as_str(), back] {
            let target = local.path(&format!("r-{i}.img"));
            let _ = std::fs::remove_file(&target);
            let o = thinarc_s3(
                &env,
                &[
                    "-r",
                    repo,
                    "restore",
                    "vm/web",
                    target.to_str().unwrap(),
                    "--at",
                    &seq,
                ],
            );
            assert!(o.success, "{}", o.show());
            assert_same_image(&read(&target), model, &format!("{repo} seq {seq}"));
        }
    }
    let o = thinarc_s3(&env, &["-r", back, "verify", "--data"]);
    assert!(o.success, "{}", o.show());
}

fn thinarc_s3(env: &[(&str, &str)], args: &[&str]) -> crate::util::Output {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    crate::util::thinarc_env(args, &env)
}

#[test]
fn bad_destinations_and_locked_destinations() {
    let t = TempRepo::new();
    let img = t.path("d.img");
    write(&img, &make_image(100 << 10, 2));
    t.ok(&["backup", img.to_str().unwrap(), "--volume", "v"]);
    let o = t.run(&["copy", "--to", t.location()]);
    assert_eq!(o.code, Some(1));
    assert_eq!(
        o.stderr,
        format!(
            "error: {0} is this repository ({0}): copy to another one\n",
            t.location()
        )
    );
    // A destination that is not a location is a usage error (exit 2).
    let o = t.run(&["copy", "--to", "ftp://x/y"]);
    assert_eq!(o.code, Some(2));
    assert!(
        o.stderr
            .starts_with("error: invalid value 'ftp://x/y' for '--to <DEST>': unsupported scheme"),
        "{}",
        o.show()
    );
    let o = t.run(&["copy", "--to", "s3:/offsite/x"]);
    assert_eq!(o.code, Some(2), "{}", o.show());
    assert!(
        o.stderr
            .contains("\"s3\" looks like a URL scheme without \"//\""),
        "{}",
        o.show()
    );
    let o = t.run(&["copy", "--to", "/tmp/x", "--at", "1"]);
    assert_eq!(o.code, Some(2), "--at needs a volume: {}", o.show());
    // Another volume under the same name in the destination.
    let other = TempRepo::new();
    other.ok(&["backup", img.to_str().unwrap(), "--volume", "v"]);
    let o = t.run(&["copy", "--to", other.location()]);
    assert_eq!(o.code, Some(1));
    assert!(
        o.stderr.contains(&format!(
            "{} holds a different volume named v (volume id ",
            other.location()
        )),
        "{}",
        o.show()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn locked_destination_volume_exits_3() {
    let t = TempRepo::new();
    let img = t.path("d.img");
    write(&img, &make_image(100 << 10, 2));
    t.ok(&["backup", img.to_str().unwrap(), "--volume", "v"]);
    let dest = TempRepo::new();
    let repo = crate::lock::lib_repo(&dest).await;
    let lock = thinarc::repo::VolumeLock::acquire(&repo, &VolumeName::new("v").unwrap(), "prune")
        .await
        .unwrap();
    let o = t.run(&["copy", "--to", dest.location()]);
    assert_eq!(o.code, Some(3), "{}", o.show());
    assert!(
        o.stderr.starts_with(&format!(
            "error: v is locked by {} pid {} since ",
            lock.info().host,
            lock.info().pid
        )),
        "{}",
        o.show()
    );
    lock.release().await.unwrap();
    t.ok(&["copy", "--to", dest.location()]);
}

/// Kill-point test for one kind of copy: for every N, a copy whose destination
/// store dies after N calls fails, every point the destination then lists restores
/// byte for byte, and a second copy completes with every point restorable.
async fn kill_points(consolidate: bool) {
    let src = LibRepo::new().await;
    let volume = VolumeName::new("k").unwrap();
    let models = source(&src, &volume, 3).await;
    let o = opts(&volume, None, consolidate);
    let mut n = 0usize;
    loop {
        let dest = LibRepo::new().await;
        let faults = Arc::new(Mutex::new(Faults::default()));
        let store = FaultyStore {
            inner: local_store(&dest.path("repo")),
            faults: faults.clone(),
        };
        let faulty = Repository::open(Arc::new(store), "faulty").await.unwrap();
        {
            let mut f = faults.lock().unwrap();
            f.ops = 0;
            f.crash_at = Some(n);
        }
        let result = copy(&src.repo, &faulty, false, &o, Arc::default()).await;
        if result.is_ok() {
            assert!(n > 10, "the copy needs more than {n} store calls");
            restore_held_points(&dest.repo, dest.dir.path(), &volume, &models).await;
            break;
        }
        // Killed: what the destination lists restores.
        let held = restore_held_points(&dest.repo, dest.dir.path(), &volume, &models).await;
        // The killed run's lock stays until it goes stale (tested in lock.rs); remove
        // it as its TTL would.
        let locks = dest.path("repo/volumes/k/locks");
        if locks.exists() {
            std::fs::remove_dir_all(&locks).unwrap();
        }
        let r = run_copy(&src.repo, &dest.repo, &o).await;
        assert_eq!(
            r.present as usize,
            held.len(),
            "N={n}: points kept are not copied again"
        );
        let all = restore_held_points(&dest.repo, dest.dir.path(), &volume, &models).await;
        let expect: Vec<u64> = if consolidate { vec![3] } else { vec![1, 2, 3] };
        assert_eq!(all, expect, "N={n}");
        n += 1;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_killed_at_every_store_call_leaves_restorable_points() {
    kill_points(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn consolidate_killed_at_every_store_call_leaves_restorable_points() {
    kill_points(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_destination_of_a_library_copy_restores() {
    let src = LibRepo::new().await;
    let volume = VolumeName::new("s").unwrap();
    let models = source(&src, &volume, 3).await;
    let moto = moto();
    let store: Arc<dyn ObjectStore> = Arc::new(PrefixStore::new(moto.store(&moto.bucket()), "r"));
    let dest = Repository::create(store, "s3://test/r").await.unwrap();
    run_copy(&src.repo, &dest, &opts(&volume, None, true)).await;
    run_copy(&src.repo, &dest, &opts(&volume, None, false)).await;
    restore_every_point(&dest, src.dir.path(), &volume, &models).await;
    let _ = dest.store().head(&Key::from("config")).await.unwrap();
}

/// `thinarc copy v` and `thinarc copy v --at 1` as the CLI runs them
/// (`nightly::copy`) from the S3 test server: the source is checked once (the check
/// that refuses bad input before the destination exists: 1 LIST of the volume, 1
/// GET of its summary). The CLI used to check it twice, once before unlocking the
/// destination and again in the copy of the volume.
#[tokio::test(flavor = "multi_thread")]
async fn copy_from_s3_checks_its_source_once() {
    use thinarc::nightly::{self, Given, Job, Unobserved};
    let t = TempRepo::s3();
    let img = t.path("disk.img");
    let mut data = make_image(300 << 10, 5);
    for i in 0..2u8 {
        data[i as usize * 100_000] ^= 0xff;
        write(&img, &data);
        t.ok(&["backup", img.to_str().unwrap(), "--volume", "v"]);
    }
    let v = VolumeName::new("v").unwrap();
    let state = t.path("state");
    let run = async |at: Option<PointSelector>, dest: &str| {
        let repo = crate::catalog_scale::open(&t).await;
        let job = Job::new(Given {
            state_dir: Some(state.clone()),
            ..Given::default()
        });
        job.keep_open(repo.clone());
        let report = nightly::copy(
            &job,
            t.location(),
            dest,
            Some(v.clone()),
            at,
            false,
            &Unobserved,
        )
        .await
        .unwrap();
        assert!(report.initialised);
        let cost = repo.requests();
        (report.copied.len(), (cost.list, cost.get, cost.put))
    };
    // The check alone.
    let repo = crate::catalog_scale::open(&t).await;
    thinarc::copy::check_source(&repo, &v, Some(&PointSelector::Seq(1)), false)
        .await
        .unwrap();
    let check = repo.requests();
    assert_eq!((check.list, check.get), (1, 1), "{check:?}");
    // The check; the copy's catalog (1 LIST, its summary) and damage records (1
    // LIST); one ranged read per archive copied; the start and result records (3
    // PUTs).
    let dest = t.path("every");
    assert_eq!(
        run(None, dest.to_str().unwrap()).await,
        (2, (3, 4, 3)),
        "every point"
    );
    let dest = t.path("one");
    assert_eq!(
        run(Some(PointSelector::Seq(1)), dest.to_str().unwrap()).await,
        (1, (3, 3, 3)),
        "one point"
    );
}

/// `copy` that chooses no point says what is true: the source holds no volume, and
/// the destination was not created (none is) or is unchanged; a copy whose chosen
/// points the destination holds already says so, as before.
#[test]
fn copy_choosing_nothing_says_why_and_creates_nothing() {
    let empty = TempRepo::new();
    let src = empty.location().to_string();
    let dest = empty.path("dest");
    let to = dest.to_str().unwrap();
    let out = empty.run(&["copy", "--to", to]);
    assert!(out.success, "{}", out.show());
    assert_eq!(
        out.stdout,
        format!(
            "nothing to copy: {src} holds no volume, so no point was chosen; {to} was not created\n"
        ),
        "{}",
        out.show()
    );
    assert!(!dest.exists(), "{}", out.show());
    // An existing destination is left as it was.
    let existing = TempRepo::new();
    let before = std::fs::read_dir(existing.repo()).unwrap().count();
    let out = empty.run(&["copy", "--to", existing.location()]);
    assert_eq!(
        out.stdout,
        format!(
            "nothing to copy: {src} holds no volume, so no point was chosen; {} is unchanged\n",
            existing.location()
        ),
        "{}",
        out.show()
    );
    assert_eq!(std::fs::read_dir(existing.repo()).unwrap().count(), before);
    let json = empty.json(&["copy", "--to", to]);
    assert_eq!(
        (&json["copied"], &json["present"], &json["existed"]),
        (
            &serde_json::json!([]),
            &serde_json::json!(0),
            &serde_json::json!(false)
        ),
        "{json}"
    );
    assert!(!dest.exists());
    // A destination that holds every chosen point.
    let t = TempRepo::new();
    let img = t.path("disk.img");
    write(&img, &make_image(100 << 10, 3));
    t.ok(&["backup", img.to_str().unwrap(), "--volume", "v"]);
    t.ok(&["copy", "--to", to]);
    for args in [&["copy", "--to", to][..], &["copy", "v", "--to", to]] {
        let out = t.run(args);
        assert_eq!(
            out.stdout,
            format!("nothing to copy: {to} already holds the 1 chosen point(s)\n"),
            "{}",
            out.show()
        );
    }
}

/// A copy into an existing destination opens it once: the handle the unlock opened
/// is the one every volume's copy uses, so its config is read once per command (it
/// was read once more per volume), plain and encrypted, in `copy` and in `run`. The
/// destination is on S3 behind the counting proxy.
#[test]
fn copy_into_an_existing_s3_destination_reads_its_config_once() {
    for encrypted in [false, true] {
        let t = TempRepo::uninit().with_env("THINARC_PASSWORD", "x");
        match encrypted {
            true => t.ok(&["init"]),
            false => t.ok(&["init", "--no-encryption"]),
        };
        let dest = TempRepo::s3_without_etags();
        let env = dest.env_pairs();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let config = format!("/{}/repo/config", dest.bucket());
        let proxy = crate::util::etagless::etagless();
        let img = t.path("disk.img");
        let mut data = make_image(200 << 10, 11);
        let backup = |data: &[u8]| {
            write(&img, data);
            for v in ["a", "b"] {
                t.ok(&["backup", img.to_str().unwrap(), "--volume", v]);
            }
        };
        backup(&data);
        let to = dest.location();
        if encrypted {
            // An encrypted source's plain copy needs a destination with its key:
            // the first copy creates it (the one made by `init` goes).
            crate::util::s3::moto().delete_under(dest.bucket(), "repo");
        }
        let o = t.run_env(&["copy", "--to", to], &env);
        assert!(o.success, "{}", o.show());
        // Two volumes into the existing destination: its config is read once.
        data[0] ^= 1;
        backup(&data);
        let before = proxy.gets(&config);
        let o = t.run_env(&["copy", "--to", to, "--json"], &env);
        assert!(o.success, "{}", o.show());
        let r: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(r["copied"].as_array().unwrap().len(), 2, "{r}");
        assert_eq!(
            proxy.gets(&config) - before,
            1,
            "copy, encrypted {encrypted}"
        );
        // `run`: backs both volumes up and copies them.
        let file = t.path("thinarc.toml");
        write(
            &file,
            format!(
                "state_dir = \"{}\"\n[repositories.main]\nlocation = \"{}\"\n[[volumes]]\nname = \"a\"\nsource = \"{}\"\n[[volumes]]\nname = \"b\"\nsource = \"{}\"\n[[copies]]\nto = \"{to}\"\n",
                t.path("state").display(),
                t.location(),
                img.display(),
                img.display(),
            )
            .as_bytes(),
        );
        data[1] ^= 1;
        write(&img, &data);
        let before = proxy.gets(&config);
        let all: Vec<(String, String)> = t
            .env_pairs()
            .into_iter()
            .chain(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        let o =
            crate::util::thinarc_env(&["run", "--config", file.to_str().unwrap(), "--json"], &all);
        assert_eq!(o.code, Some(0), "{}", o.show());
        let steps: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        let copies = steps
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["operation"] == "copy" && s["ok"] == true)
            .count();
        assert_eq!(copies, 2, "{steps}");
        assert_eq!(
            proxy.gets(&config) - before,
            1,
            "run, encrypted {encrypted}"
        );
        restore_newest_from(&dest, &all, "a", &data, &t.path("back.img"));
    }
}

/// Restores the newest point of `volume` from `dest` (run with `env`) to `out` and
/// compares it with `data`.
fn restore_newest_from(
    dest: &TempRepo,
    env: &[(String, String)],
    volume: &str,
    data: &[u8],
    out: &Path,
) {
    let _ = std::fs::remove_file(out);
    let o = crate::util::thinarc_env(
        &[
            "-r",
            dest.location(),
            "restore",
            volume,
            out.to_str().unwrap(),
        ],
        env,
    );
    assert!(o.success, "{}", o.show());
    assert_same_image(&read(out), data, "restored from the destination");
}
