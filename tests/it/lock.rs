//! Per-volume locks: a second writer is refused with exit code 3 and the holder's
//! name (local and S3, a real second process), stale locks are broken with a
//! warning, racing runs end with exactly one holder, refreshing keeps a long run's
//! lock alive (also behind throttled uploads), a lock removed from under its holder
//! stops the operation and is never written again (also by a stalled writer), and a
//! lock of a dead process on this host is broken at once while other hosts' wait
//! for their TTL.

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

/// A lock deleted from under its holder (broken by another run) stops the operation
/// promptly, and the holder never writes it again.
async fn lost_scenario(t: &TempRepo) {
    let repo = lib_repo(t).await;
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
    // Several refresh intervals later, the object has not come back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(lock_keys(&repo, "lost").await.is_empty(), "re-created");
    lock.release().await.unwrap();
    assert!(lock_keys(&repo, "lost").await.is_empty(), "not re-created");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_lock_stops_the_operation() {
    lost_scenario(&TempRepo::new()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_lock_stops_the_operation_on_s3() {
    lost_scenario(&TempRepo::s3()).await;
}

/// Starts `thinarc -q -r REPO args...` in the background with the test's state
/// directory and `env`.
fn spawn(t: &TempRepo, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_thinarc"))
        .args(["-q", "-r", t.location()])
        .args(args)
        .env("THINARC_STATE_DIR", t.path("state"))
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `volume` (its directory name) has a lock object; returns its contents.
fn wait_for_lock(t: &TempRepo, volume: &str) -> LockInfo {
    let dir = t.repo().join("volumes").join(volume).join("locks");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok());
        if let Some(info) = found {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "no lock appeared in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The lock objects left in a local repository's `volume` (directory name), without
/// the local store's staging files (`KEY#N`, which it does not list).
fn lock_files(t: &TempRepo, volume: &str) -> Vec<String> {
    std::fs::read_dir(t.repo().join("volumes").join(volume).join("locks"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.contains('#'))
        .collect()
}

/// The case `stalled-writer-lock-comes-back.sh`: a prune stalled (SIGSTOP) past its
/// lock's TTL has its lock broken by another writer; when it resumes it stops with
/// "lost the lock" and never writes its lock object again, so the next writer is not
/// refused.
#[test]
fn stalled_writer_lock_never_comes_back() {
    let t = TempRepo::new();
    let img = t.path("a.img");
    let mut data = make_image(16 << 20, 11);
    crate::util::Rng::new(12).fill(&mut data);
    for i in 0..4u64 {
        crate::util::Rng::new(100 + i).fill(&mut data[(i as usize) << 20..][..1 << 20]);
        write(&img, &data);
        t.ok(&["backup", img.to_str().unwrap(), "--volume", "v", "-q"]);
    }
    let ttl = [("THINARC_LOCK_TTL", "2")];
    let prune = spawn(
        &t,
        &["--upload-limit", "4M", "prune", "v", "--keep-last", "1"],
        &ttl,
    );
    let holder = wait_for_lock(&t, "v");
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(prune.id() as libc::pid_t, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(3)); // longer than the TTL
    let other = t.run(&["backup", img.to_str().unwrap(), "--volume", "v"]);
    assert!(other.success, "{}", other.show());
    assert!(
        other.stderr.contains(&format!(
            "WARN broke the stale lock of v held by {} pid {} since {} (prune): not refreshed for ",
            holder.host, holder.pid, holder.started
        )),
        "{}",
        other.show()
    );
    // SAFETY: as above.
    unsafe { libc::kill(prune.id() as libc::pid_t, libc::SIGCONT) };
    let out = prune.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: prune of v failed: lost the lock of v: it was not refreshed for ")
            && stderr.ends_with("s because this process was stalled, longer than three quarters of its 2.0s TTL; the run was stopped so that two writers never work on the volume at once (run it again)\n"),
        "{stderr}"
    );
    // Its lock object never comes back.
    for _ in 0..20 {
        assert_eq!(lock_files(&t, "v"), Vec::<String>::new());
        std::thread::sleep(Duration::from_millis(100));
    }
    let next = t.run(&["backup", img.to_str().unwrap(), "--volume", "v"]);
    assert!(next.success, "{}", next.show());
    assert_eq!(t.json(&["list", "v"]).as_array().unwrap().len(), 6);
}

/// Lock refreshes go around `--upload-limit`: a backup whose 8 MiB parts wait seconds
/// for their upload budget keeps a 1 s lock fresh, and every other writer is refused
/// with exit 3 throughout.
#[test]
fn lock_refreshes_do_not_wait_behind_throttled_uploads() {
    let t = TempRepo::new();
    let img = t.path("big.img");
    let mut data = vec![0u8; 12 << 20];
    crate::util::Rng::new(21).fill(&mut data);
    write(&img, &data);
    let img = img.to_str().unwrap();
    let ttl = [("THINARC_LOCK_TTL", "1")];
    let holder = spawn(
        &t,
        &["--upload-limit", "2M", "backup", img, "--volume", "v"],
        &ttl,
    );
    let info = wait_for_lock(&t, "v");
    let started = Instant::now();
    let mut refused = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let out = t.run(&["backup", img, "--volume", "v"]);
        assert_eq!(
            out.code,
            Some(3),
            "after {:?}: {}",
            started.elapsed(),
            out.show()
        );
        assert!(
            out.stderr.starts_with(&format!(
                "error: v is locked by {} pid {} ",
                info.host, info.pid
            )),
            "{}",
            out.show()
        );
        refused += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(refused >= 4, "{refused}");
    let out = holder.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() > Duration::from_secs(4),
        "the upload was not throttled"
    );
}

/// The case `same-host-dead-pid-lock.sh`: after a backup is SIGKILLed, the next one on
/// the same host breaks its lock at once with a warning naming the holder and why.
#[test]
fn dead_holder_on_this_host_is_broken_at_once() {
    let t = TempRepo::new();
    let img = t.path("a.img");
    write(&img, &make_image(8 << 20, 31));
    let img = img.to_str().unwrap();
    t.ok(&["backup", img, "--volume", "v", "-q"]);
    let mut killed = spawn(
        &t,
        &["--read-limit", "1M", "backup", img, "--volume", "v"],
        &[],
    );
    let holder = wait_for_lock(&t, "v");
    assert_eq!(holder.pid, killed.id());
    assert_eq!(holder.host, thinarc::repo::hostname());
    assert!(
        holder.boot_id.is_some()
            && holder.pid_namespace.is_some()
            && holder.process_start.is_some(),
        "{holder:?}"
    );
    std::thread::sleep(Duration::from_millis(300)); // mid-read, past taking the lock
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert_eq!(lock_files(&t, "v").len(), 1, "the killed run left its lock");
    // status shows it as dead, not as a run going on.
    let dead = format!("process {} no longer exists on this host", holder.pid);
    let status = t.run(&["status", "v", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let lock = &status["volumes"][0]["locks"][0];
    assert_eq!(
        (&lock["stale"], &lock["dead"]),
        (&true.into(), &dead.clone().into()),
        "{status:#}"
    );
    let text = t.run(&["status", "v"]);
    assert!(
        text.stdout.contains(&format!(
            "  locked by {} pid {} since {} (backup), dead: {dead}\n",
            holder.host, holder.pid, holder.started
        )),
        "{}",
        text.show()
    );

    let started = Instant::now();
    let out = t.run(&["backup", img, "--volume", "v"]);
    assert!(out.success, "{}", out.show());
    assert!(started.elapsed() < Duration::from_secs(10));
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains(" WARN "))
        .collect();
    let expected = format!(
        "WARN broke the lock of v held by {} pid {} since {} (backup) at once: process {} no longer exists on this host, so its run is dead",
        holder.host, holder.pid, holder.started, holder.pid
    );
    assert!(
        matches!(warnings[..], [w] if w.contains(&expected)),
        "{}",
        out.show()
    );
    assert!(lock_files(&t, "v").is_empty());
}

/// A lock whose pid is dead here but that was written on another host, in another boot
/// or pid namespace, or by a version that did not record the process, is respected
/// until its TTL: exit 3, naming the holder.
#[tokio::test(flavor = "multi_thread")]
async fn other_hosts_locks_with_dead_pids_are_respected() {
    let t = TempRepo::new();
    let repo = lib_repo(&t).await;
    let img = t.path("a.img");
    write(&img, &make_image(1 << 20, 32));
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let here = VolumeLock::acquire(&repo, &VolumeName::new("probe").unwrap(), "backup")
        .await
        .unwrap();
    let this_host = here.info().clone();
    here.release().await.unwrap();
    let base = LockInfo {
        volume: "v".into(),
        pid: dead,
        process_start: Some(12345),
        ..this_host
    };
    let cases = [
        (
            "another host",
            LockInfo {
                host: "otherhost".into(),
                ..base.clone()
            },
        ),
        (
            "another boot",
            LockInfo {
                boot_id: Some("00000000-0000-0000-0000-000000000000".into()),
                ..base.clone()
            },
        ),
        (
            "another pid namespace",
            LockInfo {
                pid_namespace: Some("pid:[1]".into()),
                ..base.clone()
            },
        ),
        (
            "an older version",
            LockInfo {
                boot_id: None,
                pid_namespace: None,
                process_start: None,
                ..base.clone()
            },
        ),
    ];
    for (what, info) in cases {
        let key = Key::from("volumes/v/locks/20200101T000000.000000Z-00000000deadbeef");
        repo.store()
            .put(&key, PutPayload::from(serde_json::to_vec(&info).unwrap()))
            .await
            .unwrap();
        let out = t.run(&["backup", img.to_str().unwrap(), "--volume", "v"]);
        assert_eq!(out.code, Some(3), "{what}: {}", out.show());
        assert_eq!(out.stderr, refusal("v", &info), "{what}");
        assert_eq!(lock_keys(&repo, "v").await, [key.to_string()], "{what}");
        repo.store().delete(&key).await.unwrap();
    }
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

/// The library's `backup` takes the volume's lock itself: an embedder cannot back up
/// without it. While one backup of a volume runs (its reads throttled so that it
/// lasts), a second one in the same process is refused with `LockError::Held` and
/// commits nothing; no lock object is left. `repair` refuses a held volume the same
/// way, as a lock error (exit code 3 for the binary).
#[tokio::test(flavor = "multi_thread")]
async fn library_backup_takes_its_own_lock() {
    use thinarc::backup::{BackupError, BackupOptions, backup};
    use thinarc::nightly::{Given, Job, JobError, RepairOptions, is_locked, repair};
    use thinarc::source::RawSource;
    use thinarc::throttle::RateLimiter;

    let t = TempRepo::new();
    let repo = lib_repo(&t).await;
    let volume = VolumeName::new("vm/twice").unwrap();
    let img = t.path("disk.img");
    write(&img, &make_image(8 << 20, 41));
    let mut slow = BackupOptions::new(volume.clone());
    slow.read_limit = Some(Arc::new(RateLimiter::new(8 << 20)));
    let first = backup(&repo, RawSource::open(&img).unwrap(), &slow, Arc::default());
    let second = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock_keys(&repo, "vm~twice").await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the first backup never took its lock"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let opts = BackupOptions::new(volume.clone());
        backup(&repo, RawSource::open(&img).unwrap(), &opts, Arc::default()).await
    };
    let (done, refused) = tokio::join!(first, second);
    let (done, refused) = (done.unwrap(), refused.unwrap_err());
    assert_eq!(done.seq, 1);
    match &refused {
        BackupError::Lock(LockError::Held { volume, .. }) => assert_eq!(volume, "vm/twice"),
        e => panic!("expected LockError::Held, got {e:?}"),
    }
    assert_eq!(repo.commits(&volume).await.unwrap().len(), 1);
    assert!(lock_keys(&repo, "vm~twice").await.is_empty());

    let held = VolumeLock::acquire(&repo, &volume, "prune").await.unwrap();
    let job = Job::new(Given {
        state_dir: Some(t.path("state")),
        ..Given::default()
    });
    let e = repair(&job, t.location(), &volume, RepairOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, JobError::Lock(LockError::Held { .. })), "{e:?}");
    assert!(is_locked(&e));
    held.release().await.unwrap();
    let report = repair(&job, t.location(), &volume, RepairOptions::default())
        .await
        .unwrap();
    assert!(report.actions.is_empty(), "{report:?}");
}
