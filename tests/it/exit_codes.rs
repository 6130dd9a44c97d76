//! Every documented exit code, asserted by number for each command that documents one
//! (README, *Using it*): 0 success, 1 failure, 2 usage, 3 a volume locked by another
//! run (backup, prune, copy) or another `thinarc run` going, 4 verify found problems.
//! (`run`'s 4, a discovery pattern that matched nothing, needs a fake `lvs`: it is
//! asserted in `run::pattern_matching_nothing_is_a_warning`.)

use std::time::{Duration, Instant};

use thinarc::repo::{VolumeLock, VolumeName};

use crate::lock::lib_repo;
use crate::util::{TempRepo, make_image, write};

/// A repository holding one point of `v`, and its image's path.
fn one_point() -> (TempRepo, String) {
    let t = TempRepo::new();
    let img = t.path("v.img");
    write(&img, &make_image(1 << 20, 71));
    let img = img.display().to_string();
    t.ok(&["backup", &img, "--volume", "v", "-q"]);
    (t, img)
}

#[track_caller]
fn assert_exit(t: &TempRepo, args: &[&str], code: i32) -> crate::util::Output {
    let out = t.run(args);
    assert_eq!(out.code, Some(code), "thinarc {args:?}: {}", out.show());
    out
}

#[test]
fn exit_0_on_success() {
    let (t, img) = one_point();
    let dest = t.path("copy");
    let restored = t.path("restored.img");
    for args in [
        vec!["backup", img.as_str(), "--volume", "v"],
        vec!["list"],
        vec!["verify", "--data"],
        vec!["restore", "v", restored.to_str().unwrap()],
        vec!["copy", "--to", dest.to_str().unwrap()],
        vec!["prune", "v", "--keep-last", "1"],
        vec!["status"],
    ] {
        assert_exit(&t, &args, 0);
    }
}

#[test]
fn exit_1_on_failure() {
    let (t, _) = one_point();
    let missing = t.path("missing.img");
    for (args, message) in [
        (
            vec!["backup", missing.to_str().unwrap(), "--volume", "v"],
            "missing.img",
        ),
        (
            vec!["restore", "nope", "/dev/null"],
            "no volume named \"nope\"",
        ),
        (vec!["verify", "nope"], "no volume named \"nope\""),
        (
            vec!["prune", "nope", "--keep-last", "1"],
            "no volume named \"nope\"",
        ),
    ] {
        let out = assert_exit(&t, &args, 1);
        assert!(
            out.stderr.starts_with("error: ") && out.stderr.contains(message),
            "{args:?}: {}",
            out.show()
        );
    }
}

#[test]
fn exit_2_on_usage_errors() {
    let (t, img) = one_point();
    for args in [
        vec!["backup"],
        vec!["backup", img.as_str(), "--no-such-flag"],
        vec!["prune", "v"],
        vec!["prune", "v", "--keep-daily", "0"],
        vec!["prune", "v", "--keep-within", "7x"],
        vec!["restore", "v"],
        vec!["backup", img.as_str(), "--volume", "a b"],
        vec!["restore", "a//b", "/tmp/never.img"],
        vec!["status", "a b"],
        vec!["verify", "--data-subset", "lots"],
        vec!["--upload-limit", "0", "list"],
        vec!["no-such-command"],
    ] {
        let out = assert_exit(&t, &args, 2);
        assert!(
            out.stderr.starts_with("error: "),
            "{args:?}: {}",
            out.show()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_3_when_backup_prune_or_copy_find_the_volume_locked() {
    let (t, img) = one_point();
    let repo = lib_repo(&t).await;
    let v = VolumeName::new("v").unwrap();
    let lock = VolumeLock::acquire(&repo, &v, "backup").await.unwrap();
    let refusal = format!(
        "error: v is locked by {} pid {} since ",
        lock.info().host,
        lock.info().pid
    );
    for args in [
        vec!["backup", img.as_str(), "--volume", "v"],
        vec!["prune", "v", "--keep-last", "1"],
    ] {
        let out = assert_exit(&t, &args, 3);
        assert!(out.stderr.starts_with(&refusal), "{args:?}: {}", out.show());
    }
    lock.release().await.unwrap();

    // copy locks the destination's volume.
    let dest = TempRepo::new();
    let dest_repo = lib_repo(&dest).await;
    let lock = VolumeLock::acquire(&dest_repo, &v, "prune").await.unwrap();
    let out = assert_exit(&t, &["copy", "--to", dest.location(), "v"], 3);
    assert!(
        out.stderr.starts_with(&format!(
            "error: v is locked by {} pid {} since ",
            lock.info().host,
            lock.info().pid
        )),
        "{}",
        out.show()
    );
    lock.release().await.unwrap();
    assert_exit(&t, &["copy", "--to", dest.location(), "v"], 0);
}

/// The case `run-overlap-exit-code.sh`: a second `thinarc run` while one is going
/// exits with 3, as the README says.
#[test]
fn exit_3_when_another_run_is_going() {
    let t = TempRepo::new();
    let img = t.path("vol.img");
    write(&img, &make_image(8 << 20, 72));
    let cfg = t.path("thinarc.toml");
    write(
        &cfg,
        format!(
            "state_dir = \"{state}\"\nread_limit = \"2M\"\n[repositories.local]\nlocation = \"{repo}\"\n[[volumes]]\nname = \"vm1\"\nsource = \"{img}\"\nrepository = \"local\"\n",
            state = t.path("state").display(),
            repo = t.location(),
            img = img.display(),
        )
        .as_bytes(),
    );
    let cfg = cfg.to_str().unwrap();
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_thinarc"))
        .args(["-q", "run", "--config", cfg])
        .spawn()
        .unwrap();
    let lock = t.path("state/run.lock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&lock).map_or(true, |s| s.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "the first run never took its lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = assert_exit(&t, &["run", "--config", cfg], 3);
    assert!(
        out.stderr.starts_with(&format!(
            "error: another thinarc run is still going (pid {} since ",
            first.id()
        )),
        "{}",
        out.show()
    );
    assert!(first.wait().unwrap().success());
    assert_exit(&t, &["-q", "run", "--config", cfg], 0);
}

#[test]
fn exit_4_when_verify_finds_problems() {
    let (t, _) = one_point();
    let archives = t.repo().join("volumes/v/archives");
    let archive = std::fs::read_dir(&archives)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tarc"))
        .unwrap();
    // Flip one byte in the middle of the block data.
    let mut bytes = std::fs::read(&archive).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    write(&archive, &bytes);
    let out = assert_exit(&t, &["verify", "--data"], 4);
    assert!(
        out.stdout.starts_with("problem: v seq 1 archive "),
        "{}",
        out.show()
    );
}
