//! Per-volume locks: a second writer is refused with exit code 3 and the holder's
//! name (local and S3, a real second process), stale locks are broken with a
//! warning, racing runs end with exactly one holder, refreshing keeps a long run's
//! lock alive, and a lock removed from under its holder stops the operation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path as Key;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use thinarc::repo::{LockError, LockInfo, Repository, VolumeLock, VolumeName};

use crate::util::s3::moto;
use crate::util::{TempRepo, make_image, write};

/// The library's view of the repository a [`TempRepo`] runs the CLI against.
/// (A local repository is opened by its location, as the CLI opens it, so that lock
/// refreshes take the local file path.)
pub(crate) async fn lib_repo(t: &TempRepo) -> Repository {
    if !t.location().starts_with("s3://") {
        return Repository::open_location(t.location()).await.expect("open");
    }
    let store: Arc<dyn ObjectStore> = Arc::new(PrefixStore::new(moto().store(t.bucket()), "repo"));
    Repository::open(store, t.location()).await.expect("open")
}

/// Lock objects of `volume` in the repository.
async fn lock_keys(repo: &Repository, volume: &str) -> Vec<String> {
    let prefix = Key::from(format!("volumes/{volume}/locks"));
    let metas: Vec<_> =
        futures::TryStreamExt::try_collect::<Vec<_>>(repo.store().list(Some(&prefix)))
            .await
            .expect("list locks");
    metas.into_iter().map(|m| m.location.to_string()).collect()
}

/// The exact refusal a second run prints while `holder` holds the volume.
fn refusal(volume: &str, holder: &LockInfo) -> String {
    format!(
        "error: {volume} is locked by {} pid {} since {} ({}); wait for that run to finish, or if it is gone, run again once its lock is older than 600s without a refresh (it is then broken as stale)\n",
        holder.host, holder.pid, holder.started, holder.operation
    )
}

/// While this process holds the lock, `thinarc backup` (another process) exits with
/// 3 and the holder's name and commits nothing; once released, it runs.
async fn contention_scenario(t: &TempRepo) {
    let repo = lib_repo(t).await;
    let volume = VolumeName::new("vm/locked").unwrap();
    let img = t.path("disk.img");
    write(&img, &make_image(300 << 10, 5));
    let img = img.display().to_string();
    let backup = ["backup", img.as_str(), "--volume", "vm/locked"];

    let lock = VolumeLock::acquire(&repo, &volume, "prune").await.unwrap();
    let refused = t.run(&backup);
    assert_eq!(refused.code, Some(3), "{}", refused.show());
    assert_eq!(refused.stderr, refusal("vm/locked", lock.info()));
    assert_eq!(refused.stdout, "");
    assert_eq!(
        lock_keys(&repo, "vm~locked").await,
        [lock.key().to_string()],
        "the refused run removed its own lock object"
    );
    // Nothing was committed, and the lock alone does not make a volume.
    assert_eq!(t.json(&["list"]), serde_json::json!([]));
    lock.check().expect("the holder still holds its lock");
    lock.release().await.unwrap();

    let r = t.json(&backup);
    assert_eq!(r["seq"], 1);
    assert!(
        lock_keys(&repo, "vm~locked").await.is_empty(),
        "the backup released its lock"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn second_writer_gets_exit_3_naming_the_holder() {
    contention_scenario(&TempRepo::new()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn second_writer_gets_exit_3_naming_the_holder_on_s3() {
    contention_scenario(&TempRepo::s3()).await;
}

/// A lock object of a run that died: `ttl` seconds, last written `age` ago (on the
/// local store, by setting its mtime; on S3, by waiting).
async fn plant_dead_lock(t: &TempRepo, repo: &Repository, ttl: f64, age: Duration) {
    let mut info = lock_info_of_ghost("vm/stale");
    info.ttl_seconds = ttl;
    let key = Key::from("volumes/vm~stale/locks/20200101T000000.000000Z-00000000deadbeef");
    let body = PutPayload::from(serde_json::to_vec(&info).unwrap());
    repo.store().put(&key, body).await.unwrap();
    if t.location().starts_with("s3://") {
        tokio::time::sleep(age).await;
    } else {
        let file = std::fs::File::options()
            .write(true)
            .open(t.repo().join(key.as_ref()))
            .unwrap();
        file.set_modified(std::time::SystemTime::now() - age)
            .unwrap();
    }
}

async fn stale_scenario(t: &TempRepo, ttl: f64, age: Duration) {
    let repo = lib_repo(t).await;
    let img = t.path("disk.img");
    write(&img, &make_image(200 << 10, 6));
    let img = img.display().to_string();
    plant_dead_lock(t, &repo, ttl, age).await;

    let out = t.run(&["backup", img.as_str(), "--volume", "vm/stale", "--json"]);
    assert!(out.success, "{}", out.show());
    // The age is the store's: the file system's coarse clock may lag the planted
    // time by a fraction of a second, and the run takes a moment.
    let prefix = "WARN broke the stale lock of vm/stale held by ghost pid 4242 since 2020-01-01T00:00:00Z (backup): not refreshed for ";
    let suffix = format!("s, longer than its TTL of {}s", ttl as u64);
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains(" WARN "))
        .collect();
    let seen: u64 = match warnings[..] {
        [line] => line
            .split_once(prefix)
            .and_then(|(_, r)| r.strip_suffix(&suffix))
            .and_then(|n| n.parse().ok()),
        _ => None,
    }
    .unwrap_or_else(|| panic!("unexpected stderr:\n{}", out.stderr));
    assert!(
        (age.as_secs() - 1..age.as_secs() + 5).contains(&seen),
        "{seen}"
    );
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["seq"], 1);
    assert!(lock_keys(&repo, "vm~stale").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_lock_is_broken_with_a_warning() {
    stale_scenario(&TempRepo::new(), 600.0, Duration::from_secs(3600)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_lock_is_broken_with_a_warning_on_s3() {
    // S3 keeps last-modified times in whole seconds: a 1 s TTL, 3 s old.
    stale_scenario(&TempRepo::s3(), 1.0, Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_lock_is_not_broken_by_a_short_ttl_run() {
    let t = TempRepo::new();
    let repo = lib_repo(&t).await;
    let volume = VolumeName::new("vm/locked").unwrap();
    let lock = VolumeLock::acquire(&repo, &volume, "copy").await.unwrap();
    // The refused run's own TTL does not matter: the holder's (600 s) does.
    let img = t.path("disk.img");
    write(&img, &make_image(100 << 10, 7));
    let out = t.run_env(
        &["backup", img.to_str().unwrap(), "--volume", "vm/locked"],
        &[("THINARC_LOCK_TTL", "0.5")],
    );
    assert_eq!(out.code, Some(3), "{}", out.show());
    assert_eq!(out.stderr, refusal("vm/locked", lock.info()));
    lock.release().await.unwrap();
    let bad = t.run_env(
        &["backup", img.to_str().unwrap(), "--volume", "vm/locked"],
        &[("THINARC_LOCK_TTL", "soon")],
    );
    assert_eq!(bad.code, Some(1));
    assert!(
        bad.stderr
            .ends_with(": THINARC_LOCK_TTL=\"soon\" is not a positive number of seconds\n"),
        "{}",
        bad.show()
    );
}

/// Runs that race for one volume end with exactly one holder, every time.
async fn race(repo: &Repository, rounds: usize) {
    let volume = VolumeName::new("race").unwrap();
    for round in 0..rounds {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (repo, volume) = (repo.clone(), volume.clone());
                tokio::spawn(async move { VolumeLock::acquire(&repo, &volume, "backup").await })
            })
            .collect();
        let mut held = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(lock) => held.push(lock),
                Err(LockError::Held { .. }) => {}
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(held.len(), 1, "round {round}: exactly one holder");
        let lock = held.pop().unwrap();
        assert_eq!(lock_keys(repo, "race").await, [lock.key().to_string()]);
        lock.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_runs_end_with_exactly_one_holder() {
    let t = TempRepo::new();
    race(&lib_repo(&t).await, 10).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_runs_end_with_exactly_one_holder_on_s3() {
    let t = TempRepo::s3();
    race(&lib_repo(&t).await, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refreshing_keeps_a_long_runs_lock_alive() {
    let t = TempRepo::new();
    let repo = lib_repo(&t).await;
    let volume = VolumeName::new("long").unwrap();
    let ttl = Duration::from_millis(800);
    let lock = VolumeLock::acquire_with_ttl(&repo, &volume, "backup", ttl)
        .await
        .unwrap();
    // Four TTLs later the lock is still fresh: another run is refused, not let in.
    let work = lock.guard(async {
        tokio::time::sleep(4 * ttl).await;
        Ok::<_, LockError>("done")
    });
    assert_eq!(work.await.unwrap(), "done");
    let second = VolumeLock::acquire_with_ttl(&repo, &volume, "prune", ttl).await;
    assert!(
        matches!(&second, Err(LockError::Held { pid, .. }) if *pid == std::process::id()),
        "{second:?}"
    );
    lock.check().unwrap();
    lock.release().await.unwrap();

    // The same lock object left without refreshes for as long is broken.
    let key = Key::from("volumes/long/locks/20200101T000000.000000Z-0000000000000001");
    let mut info = lock_info_of_ghost("long");
    info.ttl_seconds = ttl.as_secs_f64();
    let body = PutPayload::from(serde_json::to_vec(&info).unwrap());
    repo.store().put(&key, body).await.unwrap();
    tokio::time::sleep(4 * ttl).await;
    let taken = VolumeLock::acquire_with_ttl(&repo, &volume, "backup", ttl)
        .await
        .expect("the unrefreshed lock is stale");
    assert_eq!(taken.broken().len(), 1, "{:?}", taken.broken());
    assert!(
        taken.broken()[0].starts_with("broke the stale lock of long held by ghost pid 4242"),
        "{:?}",
        taken.broken()
    );
    taken.release().await.unwrap();
    assert!(lock_keys(&repo, "long").await.is_empty());
}

fn lock_info_of_ghost(volume: &str) -> LockInfo {
    LockInfo {
        volume: volume.into(),
        host: "ghost".into(),
        pid: 4242,
        operation: "backup".into(),
        started: "2020-01-01T00:00:00Z".into(),
        ttl_seconds: 600.0,
        boot_id: None,
        pid_namespace: None,
        process_start: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_lock_stops_the_operation() {
    let t = TempRepo::new();
    let repo = lib_repo(&t).await;
    let volume = VolumeName::new("lost").unwrap();
    let lock = VolumeLock::acquire_with_ttl(&repo, &volume, "backup", Duration::from_secs(1))
        .await
        .unwrap();
    // Another run breaks it (as it would a stale one).
    repo.store().delete(lock.key()).await.unwrap();
    let started = Instant::now();
    let r = lock
        .guard(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, LockError>(())
        })
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stopped promptly"
    );
    let e = r.expect_err("the operation must stop");
    assert_eq!(
        e.to_string(),
        format!(
            "lost the lock of lost: its lock object {} was removed, most likely broken as stale by another run; the run was stopped so that two writers never work on the volume at once (run it again)",
            lock.key()
        )
    );
    assert!(matches!(lock.check(), Err(LockError::Lost { .. })));
    lock.release().await.unwrap();
    assert!(lock_keys(&repo, "lost").await.is_empty(), "not re-created");
}

#[test]
fn an_interrupted_backup_removes_its_lock() {
    let t = TempRepo::new();
    let src = t.path("big.img");
    let mut img = vec![0u8; 256 << 20];
    crate::util::Rng::new(43).fill(&mut img);
    write(&src, &img);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_thinarc"))
        .args(["-q", "-r", t.location(), "backup", src.to_str().unwrap()])
        .arg("--volume")
        .arg("big")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it holds its lock, then stop it.
    let locks = t.repo().join("volumes/big/locks");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&locks).map_or(0, |d| d.count()) == 0 {
        assert!(Instant::now() < deadline, "the backup never took its lock");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() || stderr.contains("interrupted by SIGTERM"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&locks)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "the lock object was removed on the way out: {left:?}\n{stderr}"
    );
    // The next run is not refused.
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "big", "-q"]);
}
