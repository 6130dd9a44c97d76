//! Space emergencies (issue 10, kind 4): what a failed or interrupted run wrote is
//! given back by that run, or by the next run of the volume at once; on real tmpfs
//! disks that fill up (the tests run as root).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::{
    Rng, SmallFs, TempRepo, assert_same_image, make_image, read, thinarc_env, write,
};

const MIB: usize = 1 << 20;

/// Names of the files in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn archives(t: &TempRepo, volume: &str) -> Vec<String> {
    files(&t.repo().join("volumes").join(volume).join("archives"))
}

/// Runs `thinarc -r REPO args --json` on another repository directory.
fn json_at(repo: &Path, state: &Path, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["-r".to_string(), repo.display().to_string()];
    full.extend(args.iter().map(|s| s.to_string()));
    full.push("--json".into());
    let env = [("THINARC_STATE_DIR".to_string(), state.display().to_string())];
    let o = thinarc_env(&full, &env);
    assert!(o.success, "{}", o.show());
    serde_json::from_str(&o.stdout).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// enospc-at-commit.sh: the disk fills exactly at the commit marker. The run removes
/// its complete but uncommitted archive before it exits and says so; once there is room,
/// the next backup commits the same seq.
#[test]
fn space_failed_commit_gives_back_its_archive() {
    let t = TempRepo::uninit();
    let src = t.path("a.img");
    let mut img = make_image(8 * MIB, 70);
    write(&src, &img);
    let fs = SmallFs::mount(&t.repo(), "40m");
    t.ok(&["init", "--no-encryption"]);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    let first = img.clone();
    Rng::new(71).fill(&mut img[..4 * MIB]);
    write(&src, &img);

    // The size of the next archive, from a backup into a copy of the repository.
    let probe = t.path("probe");
    copy_dir(&t.repo(), &probe);
    let r = json_at(
        &probe,
        &t.path("probe-state"),
        &["backup", src.to_str().unwrap(), "--volume", "v"],
    );
    let stored = r["stored_bytes"].as_u64().unwrap();

    // The lock object and the archive fit, the marker does not.
    let ballast = fs.fill_until(stored.next_multiple_of(4096) + 4096);
    let o = t.run(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    let e = o.stderr;
    assert!(
        e.contains("commit volumes/v/commits/000000000002 failed: ")
            && e.contains("No space left on device"),
        "{e}"
    );
    assert!(
        e.contains("; this run's archive volumes/v/archives/000000000002-")
            && e.contains(".tarc was removed"),
        "{e}"
    );
    assert_eq!(archives(&t, "v").len(), 1, "{:?}", archives(&t, "v"));
    let out = t.path("first.img");
    t.ok(&["restore", "v", out.to_str().unwrap()]);
    assert_same_image(&read(&out), &first, "seq 1 after the failed commit");

    std::fs::remove_file(ballast).unwrap();
    let r = t.json(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    assert_eq!(r["seq"], 2);
    t.ok(&["restore", "v", out.to_str().unwrap()]);
    assert_same_image(&read(&out), &img, "seq 2");
}

/// Leftovers of other runs, under the volume's lock: partial ones (an archive of a seq
/// committed under another archive, a local staging file) go at once; an orphan
/// (a seq with no marker: maybe a point whose marker was lost) and a superseded
/// archive (a reader may still read it) keep the grace period.
#[test]
fn space_partial_leftovers_go_at_once_orphans_and_superseded_wait() {
    let t = TempRepo::new();
    let src = t.path("l.img");
    let mut img = make_image(2 * MIB, 72);
    write(&src, &img);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "l"]);
    img[..4096].fill(1);
    write(&src, &img);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "l"]);
    let dir = t.repo().join("volumes/l/archives");
    let committed = archives(&t, "l");
    let seq1 = dir.join(&committed[0]);
    let partial = [
        "000000000001-00000000000000000000000000000001.tarc",
        "000000000002-00000000000000000000000000000002.tarc#7",
        "000000000002-00000000000000000000000000000003.tarc",
    ];
    let orphan = "000000000009-00000000000000000000000000000009.tarc";
    for name in partial.iter().chain([&orphan]) {
        std::fs::copy(&seq1, dir.join(name)).unwrap();
    }
    img[8192..9000].fill(2);
    write(&src, &img);
    let r = t.json(&["backup", src.to_str().unwrap(), "--volume", "l"]);
    assert_eq!(r["leftovers_removed"], partial.len(), "{r}");
    let mut left = archives(&t, "l");
    left.retain(|n| !committed.contains(n));
    assert_eq!(left.len(), 2, "the new point and the orphan: {left:?}");
    assert!(left.contains(&orphan.to_string()), "{left:?}");
}

/// An interrupted backup (SIGINT) aborts its upload before it exits, says so, and
/// leaves no staging file behind.
#[test]
fn space_interrupted_backup_removes_its_partial_upload() {
    let t = TempRepo::new();
    let src = t.path("i.img");
    let mut img = vec![0u8; 64 * MIB];
    Rng::new(73).fill(&mut img);
    write(&src, &img);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_thinarc"))
        .args(["-q", "-r", t.location(), "--upload-limit", "8M", "backup"])
        .arg(&src)
        .env("THINARC_STATE_DIR", t.path("state"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let dir = t.repo().join("volumes/i.img/archives");
    let started = Instant::now();
    while !dir.exists() || files(&dir).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no upload started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "interrupted by SIGINT: nothing partial was committed, and the partial upload was removed"
        ),
        "{stderr}"
    );
    assert_eq!(files(&dir), Vec::<String>::new());
}

/// Backs `img` up as point of volume `v` and returns the `--json` report.
fn backup_v(t: &TempRepo, src: &Path, img: &[u8]) -> serde_json::Value {
    write(src, img);
    t.json(&["backup", src.to_str().unwrap(), "--volume", "v"])
}

/// `len` bytes of incompressible data.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

fn restore_v(t: &TempRepo, seq: &str, expected: &[u8], what: &str) {
    let out = t.path("out.img");
    t.ok(&["restore", "v", out.to_str().unwrap(), "--at", seq]);
    assert_same_image(&read(&out), expected, what);
}

/// full-disk-prune-frees-nothing.sh: a full disk, and a prune whose only way to drop
/// a point is a merge that does not fit. The failed backup that filled the disk gave
/// its space back; prune refuses before writing anything, with numbers and what to
/// do, and the newest point still restores.
#[test]
fn space_full_disk_prune_refuses_a_merge_that_does_not_fit() {
    let t = TempRepo::uninit();
    let fs = SmallFs::mount(&t.repo(), "19m");
    t.ok(&["init", "--no-encryption"]);
    let src = t.path("d.img");
    backup_v(&t, &src, &noise(8 * MIB, 80));
    let img = noise(8 * MIB, 81);
    backup_v(&t, &src, &img);
    let before = fs.free();
    let mut third = img.clone();
    Rng::new(82).fill(&mut third[..4 * MIB]);
    write(&src, &third);
    let e = t.fails(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    assert!(e.contains("No space left on device"), "{e}");
    assert!(
        fs.free() + 64 * 1024 >= before,
        "the failed backup gave its space back: {} free before, {} after",
        before,
        fs.free()
    );

    let o = t.run(&["prune", "v", "--keep-last", "1"]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    let have = fs.free() >> 20;
    // The 8 MiB image, its index and header (24 KiB), rounded up to a MiB: not the
    // 16 MiB of the archives merged, nor the largest header possible (it said 10).
    let expected = format!(
        "need 9 MiB free on {} for the merged archive of seq 2, have {have} MiB: nothing more can be deleted without these rewrites: free space on it or move the repository to a larger disk",
        t.location()
    );
    assert!(
        o.stderr.contains(&expected),
        "{}\nexpected: {expected}",
        o.stderr
    );
    let rows = t.json(&["list", "v"]);
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    restore_v(&t, "2", &img, "the newest point after the refused prune");
}

/// A full disk with points that need no rewrite to go: prune drops them first; their
/// archives wait for the grace period, and `--no-grace` deletes them (and every other
/// superseded archive) at once. The newest point still restores.
#[test]
fn space_no_grace_prune_frees_space_on_a_full_disk() {
    let t = TempRepo::uninit();
    let fs = SmallFs::mount(&t.repo(), "24m");
    t.ok(&["init", "--no-encryption"]);
    let src = t.path("d.img");
    backup_v(&t, &src, &noise(4 * MIB, 83));
    let img = noise(4 * MIB, 84);
    backup_v(&t, &src, &img);
    // Seq 2 becomes a full archive: seq 1 then has no dependent.
    let r = t.json(&["prune", "v", "--keep-last", "2", "--max-chain-length", "1"]);
    assert_eq!(r[0]["merges"].as_array().unwrap().len(), 1, "{r}");
    let _ballast = fs.fill_until(256 << 10);

    let r = t.json(&["prune", "v", "--keep-last", "1"]);
    assert_eq!(r[0]["bytes_deleted"], 0, "{r}");
    assert!(r[0]["merges"].as_array().unwrap().is_empty(), "{r}");
    let waiting = r[0]["bytes_waiting"].as_u64().unwrap();
    assert!(
        waiting >= 8 * MIB as u64,
        "seq 1 and the replaced seq 2 wait: {r}"
    );
    let text = t.ok(&["prune", "v", "--keep-last", "1"]);
    assert!(
        text.contains(
            "of superseded archives kept for the grace period (`--no-grace` deletes them at once)"
        ),
        "{text}"
    );

    let free = fs.free();
    let r = t.json(&["prune", "v", "--keep-last", "1", "--no-grace"]);
    assert_eq!(r[0]["grace_seconds"], 0, "{r}");
    assert_eq!(r[0]["bytes_deleted"].as_u64().unwrap(), waiting, "{r}");
    assert_eq!(r[0]["bytes_waiting"], 0, "{r}");
    assert!(
        fs.free() >= free + waiting,
        "{} free, was {free}",
        fs.free()
    );
    let rows = t.json(&["list", "v"]);
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    restore_v(&t, "2", &img, "the newest point after prune --no-grace");
}

/// `--no-grace` on a prune that merges: the archive the merge replaced, tombstoned in
/// the same run, is deleted in that run too (not left for the grace period until the
/// next prune), and so is the dropped point's.
#[test]
fn space_no_grace_deletes_what_the_same_run_superseded() {
    let t = TempRepo::new();
    let src = t.path("d.img");
    let mut img = noise(4 * MIB, 85);
    for round in 0..3 {
        img[round * MIB..round * MIB + 100_000].fill(round as u8 + 1);
        backup_v(&t, &src, &img);
    }
    let r = t.json(&["prune", "v", "--keep-last", "2", "--no-grace"]);
    assert_eq!(r[0]["merges"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r[0]["bytes_waiting"], 0, "{r}");
    let archives: Vec<_> = std::fs::read_dir(t.repo().join("volumes/v/archives"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        archives.len(),
        2,
        "only the kept points' archives: {archives:?}"
    );
    assert!(
        !std::fs::read_dir(t.repo().join("volumes/v/tombstones"))
            .map(|d| d.count() > 0)
            .unwrap_or(false),
        "no tombstone left"
    );
    restore_v(&t, "3", &img, "the newest point after prune --no-grace");
}

/// SIGTERM in the middle of a prune's merge: the merged archive's upload is aborted
/// before the run exits (no staging file stays), the message says so, and every point
/// is still listed and the newest restores.
#[test]
fn space_interrupted_prune_removes_its_partial_merge() {
    let t = TempRepo::new();
    let src = t.path("d.img");
    for seed in [94, 95, 96] {
        backup_v(&t, &src, &noise(24 * MIB, seed));
    }
    let newest = read(&src);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_thinarc"))
        .args(["-q", "-r", t.location(), "--upload-limit", "4M"])
        .args(["prune", "v", "--keep-last", "1"])
        .env("THINARC_STATE_DIR", t.path("state"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let dir = t.repo().join("volumes/v/archives");
    let started = Instant::now();
    while !files(&dir).iter().any(|f| f.contains(".tarc#")) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no merge started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "interrupted by SIGTERM: nothing partial was committed, and the partial upload was removed"
        ),
        "{stderr}"
    );
    let left = files(&dir);
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(!left.iter().any(|f| f.contains('#')), "{left:?}");
    let rows = t.json(&["list", "v"]);
    assert_eq!(rows.as_array().unwrap().len(), 3, "{rows}");
    restore_v(
        &t,
        "3",
        &newest,
        "the newest point after the interrupted prune",
    );
}

/// What prune's free-space check counts on: a merged archive of incompressible data,
/// plain or sealed (a tag per frame and segment), in 4 KiB blocks (the most index per
/// byte), is no larger than the bound of its geometry with its own header.
#[test]
fn space_merged_archive_of_noise_fits_the_whole_archive_bound() {
    for encrypted in [false, true] {
        let t = TempRepo::uninit().with_env("THINARC_PASSWORD", "x");
        match encrypted {
            true => t.ok(&["init"]),
            false => t.ok(&["init", "--no-encryption"]),
        };
        let src = t.path("d.img");
        write(&src, &noise(MIB, 90));
        t.ok(&[
            "backup",
            src.to_str().unwrap(),
            "--volume",
            "v",
            "--block-size",
            "4K",
        ]);
        backup_v(&t, &src, &noise(MIB, 91));
        t.ok(&["prune", "v", "--keep-last", "1", "--no-grace"]);
        let dir = t.repo().join("volumes/v/archives");
        let names = files(&dir);
        assert_eq!(names.len(), 1, "{names:?}");
        let bytes = read(&dir.join(&names[0]));
        let trailer = thinarc::format::ArchiveReader::open(&bytes)
            .unwrap()
            .trailer;
        let bound = thinarc::format::Geometry::new(
            MIB as u64,
            thinarc::format::BlockSize::new(4096).unwrap(),
        )
        .archive_len_bound(trailer.body_offset);
        assert!(
            bytes.len() as u64 <= bound,
            "encrypted {encrypted}: {} bytes, bound {bound}",
            bytes.len()
        );
        // Not loose either: the image and its index, within a few KiB.
        assert!(
            bound - bytes.len() as u64 <= 256 * 64 + 8192,
            "{bound} {}",
            bytes.len()
        );
    }
}
