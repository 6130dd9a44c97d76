//! Issue 10, kind 5 (local part): nothing hangs and nothing lingers. Sources that
//! cannot be read at random offsets are refused before anything is opened or written;
//! SIGTERM ends a command within seconds whatever it is blocked on, and a second
//! signal at once; a restore killed with SIGKILL leaves a temporary file that the next
//! restore to that target removes, while a running restore's is left alone.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{TempRepo, assert_same_image, make_image, read, write};

const MIB: usize = 1 << 20;

/// Starts `thinarc -r REPO args` in the background (records go to the test's state
/// directory).
fn spawn(t: &TempRepo, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_thinarc"))
        .args(["-r", t.location()])
        .args(args)
        .env("THINARC_STATE_DIR", t.path("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` at most `limit`, killing it (and failing) past that; returns
/// its exit code, stderr and how long it took.
fn wait_at_most(mut child: Child, limit: Duration, what: &str) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            let o = child.wait_with_output().unwrap();
            panic!(
                "{what}: still running after {limit:?}; killed. stderr:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = start.elapsed();
    let o = child.wait_with_output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        took,
    )
}

/// Waits until `cond` holds (at most 20 s).
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// The temporary files of restores to `name` in `dir`.
fn temps(dir: &Path, name: &str) -> Vec<PathBuf> {
    let prefix = format!(".{name}.thinarc-");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
        })
        .collect()
}

/// The last line of `stderr`.
fn last_line(stderr: &str) -> &str {
    stderr.trim_end().lines().last().unwrap_or("")
}

#[test]
fn special_file_sources_are_refused_up_front() {
    let t = TempRepo::new();
    let fifo = t.path("f");
    mkfifo(&fifo);
    let sock = t.path("s");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let dir = t.path("d");
    std::fs::create_dir(&dir).unwrap();
    for (source, kind) in [
        (fifo.clone(), "fifo"),
        (sock.clone(), "socket"),
        (dir.clone(), "directory"),
        (PathBuf::from("/dev/null"), "character device"),
    ] {
        let s = source.to_str().unwrap();
        // A FIFO without a writer used to block the backup forever.
        let child = spawn(&t, &["-q", "backup", s, "--volume", "special"]);
        let (code, stderr, _) = wait_at_most(child, Duration::from_secs(10), s);
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(
            last_line(&stderr),
            format!(
                "error: backup of {s} to volume special failed: {s} is a {kind}, not a regular file or block device: thinarc reads sources at random offsets"
            )
        );
        assert!(
            !t.repo().join("volumes/special").exists(),
            "nothing is written to the repository for a refused source"
        );
    }
    // Nothing of the FIFO was opened: it is still a FIFO, and nobody waits on it.
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // The refusal is recorded on this host, for status and monitoring.
    let record = t.path("state/records");
    assert!(record.exists(), "a failure record is kept locally");

    // The same for verify --source and for a restore target.
    let img = t.path("v.img");
    write(&img, &make_image(MIB, 1));
    t.ok(&["-q", "backup", img.to_str().unwrap(), "--volume", "v"]);
    let f = fifo.to_str().unwrap();
    let child = spawn(&t, &["verify", "v", "--source", f]);
    let (code, stderr, _) = wait_at_most(child, Duration::from_secs(10), "verify --source");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{f} is a fifo, not a regular file or block device: thinarc reads sources at random offsets"
        )),
        "{stderr}"
    );
    let child = spawn(&t, &["restore", "v", f]);
    let (code, stderr, _) = wait_at_most(child, Duration::from_secs(10), "restore onto a fifo");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "target {f} is a fifo, not a regular file or block device"
        )),
        "{stderr}"
    );
}

#[test]
fn sigterm_ends_a_backup_whatever_it_waits_on() {
    let t = TempRepo::new();
    let src = t.path("big.img");
    write(&src, &make_image(64 * MIB, 2));
    let s = src.to_str().unwrap();
    let locks = t.repo().join("volumes/big/locks");
    let has_lock = || std::fs::read_dir(&locks).is_ok_and(|mut d| d.next().is_some());

    // A throttled read of a big source (64 s at 1 MiB/s).
    let child = spawn(
        &t,
        &["-q", "--read-limit", "1M", "backup", s, "--volume", "big"],
    );
    wait_until("the throttled backup's lock", has_lock);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGTERM);
    let (code, stderr, took) = wait_at_most(child, Duration::from_secs(10), "throttled backup");
    assert!(took < Duration::from_secs(5), "took {took:?} after SIGTERM");
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        last_line(&stderr),
        "error: interrupted by SIGTERM: nothing partial was committed, and the partial upload was removed"
    );
    assert!(!has_lock(), "the lock was removed on the way out");
    let commits = t.repo().join("volumes/big/commits");
    assert!(
        std::fs::read_dir(&commits).map_or(0, |d| d.count()) == 0,
        "nothing was committed"
    );

    // A changed-blocks FIFO whose writer never writes: the read waits forever.
    t.ok(&["-q", "backup", s, "--volume", "big"]);
    let cb = t.path("cb.fifo");
    mkfifo(&cb);
    let child = spawn(
        &t,
        &[
            "-q",
            "backup",
            s,
            "--volume",
            "big",
            "--changed-blocks",
            cb.to_str().unwrap(),
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, libc::SIGTERM);
    let (code, stderr, took) = wait_at_most(child, Duration::from_secs(10), "fifo changed-blocks");
    assert!(took < Duration::from_secs(5), "took {took:?} after SIGTERM");
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        last_line(&stderr),
        "error: interrupted by SIGTERM: nothing partial was committed"
    );
}

#[test]
fn unwinding_is_bounded_and_a_second_signal_exits_at_once() {
    let t = TempRepo::new();
    let src = t.path("big.img");
    write(&src, &make_image(64 * MIB, 3));
    let s = src.to_str().unwrap();
    let locks = t.repo().join("volumes/big/locks");
    let has_lock = || std::fs::read_dir(&locks).is_ok_and(|mut d| d.next().is_some());
    // The on-failure hook of the interrupted run hangs: the run still ends within
    // the grace period...
    let hook = ["--on-failure", "exec sleep 30 >/dev/null 2>&1"];
    let backup = ["-q", "--read-limit", "1M", "backup", s, "--volume", "big"];
    let args: Vec<&str> = hook.iter().chain(backup.iter()).copied().collect();
    let child = spawn(&t, &args);
    wait_until("the backup's lock", has_lock);
    signal(&child, libc::SIGTERM);
    let (code, stderr, took) = wait_at_most(child, Duration::from_secs(10), "hanging hook");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(6),
        "took {took:?} after SIGTERM"
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        last_line(&stderr),
        "error: interrupted by SIGTERM: the command did not end within 4s, exiting; a later run removes what it left"
    );
    // ...and a second signal ends it at once, with 128 + the signal's number.
    let child = spawn(&t, &args);
    wait_until("the backup's lock", has_lock);
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, libc::SIGTERM);
    let (code, stderr, took) = wait_at_most(child, Duration::from_secs(10), "second signal");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(code, Some(143), "{stderr}");
    assert_eq!(
        last_line(&stderr),
        "error: SIGTERM again: exiting at once; a later run removes what this one left"
    );
}

#[test]
fn sigterm_ends_a_restore_and_removes_its_temporary_file() {
    let t = TempRepo::new();
    let src = t.path("i.img");
    let img = make_image(256 * MIB, 4);
    write(&src, &img);
    t.ok(&["-q", "backup", src.to_str().unwrap()]);
    let out = t.path("out.img");
    let child = spawn(&t, &["-q", "restore", "i.img", out.to_str().unwrap()]);
    wait_until("the restore's temporary file", || {
        !temps(t.dir.path(), "out.img").is_empty() || out.exists()
    });
    signal(&child, libc::SIGTERM);
    let (code, stderr, took) = wait_at_most(child, Duration::from_secs(10), "restore");
    assert!(took < Duration::from_secs(5), "took {took:?} after SIGTERM");
    assert_eq!(temps(t.dir.path(), "out.img"), Vec::<PathBuf>::new());
    if code == Some(0) {
        // The restore won the race: the target is complete.
        assert_same_image(&read(&out), &img, "restore finished before the signal");
    } else {
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(
            last_line(&stderr),
            "error: interrupted by SIGTERM: nothing partial was committed"
        );
        assert!(!out.exists(), "an interrupted restore leaves no target");
    }
}

#[test]
fn killed_restore_leftovers_are_removed_by_the_next_restore() {
    let t = TempRepo::new();
    let src = t.path("i.img");
    let img = make_image(256 * MIB, 5);
    write(&src, &img);
    t.ok(&["-q", "backup", src.to_str().unwrap()]);
    let out = t.path("out.img");
    let o = out.to_str().unwrap();

    let mut child = spawn(&t, &["-q", "restore", "i.img", o]);
    wait_until("the restore's temporary file", || {
        !temps(t.dir.path(), "out.img").is_empty()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let left = temps(t.dir.path(), "out.img");
    assert_eq!(left.len(), 1, "SIGKILL leaves the temporary file: {left:?}");
    let size = std::fs::metadata(&left[0]).unwrap().len();

    // A restore still running (it holds the flock of its temporary file) is left alone.
    let live = t.path(".out.img.thinarc-0badcafe.tmp");
    let live_file = std::fs::File::create(&live).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&live_file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        },
        0
    );
    // Other files of the directory are not touched.
    let other = t.path(".other.img.thinarc-12345678.tmp");
    write(&other, b"x");

    let r = t.run(&["-q", "restore", "i.img", o]);
    assert!(r.success, "{}", r.show());
    let mut warnings: Vec<&str> = r.stderr.lines().collect();
    warnings.sort();
    assert_eq!(
        warnings,
        [
            format!(
                "warning: {} is being written by another restore to {o} (its lock is held): left alone; the restore that finishes last is kept",
                live.display()
            ),
            format!(
                "warning: removed {} ({size} bytes), the temporary file of an interrupted restore to {o}",
                left[0].display()
            ),
        ]
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        "{}",
        r.show()
    );
    assert!(!left[0].exists());
    assert!(live.exists(), "a running restore's temporary file stays");
    assert!(other.exists());
    assert_same_image(&read(&out), &img, "the next restore");
    drop(live_file);
}
