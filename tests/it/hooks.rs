//! Issue 15, item 1: the pre- and post-snapshot commands, on real runs of the binary
//! with file sources (their hooks run around the whole read): ordering against the
//! lock and the commit, the `THINARC_*` environment, a failing pre-command, a hanging
//! one killed after `hook_timeout` (the run goes on with the next volume), the
//! post-command after a SIGTERM, and `consistency` in `backup --json` and the record.
//! `libvirt:` freezing runs a fake `virsh` on PATH.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{TempRepo, make_image, thinarc_env, write};

const MIB: usize = 1 << 20;

/// A hook that appends `TAG volume source snapshot status locks commits` to `log`.
fn logger(t: &TempRepo, tag: &str, volume: &str) -> String {
    let vol = t.repo().join("volumes").join(volume);
    format!(
        "echo \"{tag} $THINARC_EVENT $THINARC_VOLUME $THINARC_SOURCE [$THINARC_SNAPSHOT] [$THINARC_STATUS] locks=$(ls {v}/locks 2>/dev/null | wc -l) commits=$(ls {v}/commits 2>/dev/null | wc -l)\" >> {log}",
        v = vol.display(),
        log = t.path("hooks.log").display()
    )
}

fn log(t: &TempRepo) -> Vec<String> {
    std::fs::read_to_string(t.path("hooks.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn hooks_run_in_order_with_their_environment_and_make_the_point_application_consistent() {
    let t = TempRepo::new();
    let src = t.path("db.img");
    write(&src, &make_image(MIB, 1));
    let s = src.to_str().unwrap();
    let plain = t.json(&["backup", s]);
    assert_eq!(plain["consistency"], "crash");
    let (pre, post) = (logger(&t, "pre", "db.img"), logger(&t, "post", "db.img"));
    let report = t.json(&[
        "backup",
        s,
        "--pre-snapshot",
        &pre,
        "--post-snapshot",
        &post,
    ]);
    assert_eq!(report["consistency"], "application");
    // Under the volume's lock, before the commit; the post-command after it.
    assert_eq!(
        log(&t),
        [
            format!("pre pre-snapshot db.img {s} [] [] locks=1 commits=1"),
            format!("post post-snapshot db.img {s} [] [ok] locks=1 commits=2"),
        ]
    );
    let state = t.path("state");
    let records = std::process::Command::new("grep")
        .args(["-rh", "\"consistency\"", state.to_str().unwrap()])
        .output()
        .unwrap();
    let records = String::from_utf8_lossy(&records.stdout);
    assert!(
        records.contains("\"consistency\": \"application\""),
        "{records}"
    );
}

#[test]
fn a_failing_pre_command_stops_the_backup_with_its_stderr() {
    let t = TempRepo::new();
    let src = t.path("db.img");
    write(&src, &make_image(MIB, 2));
    let s = src.to_str().unwrap();
    let post = logger(&t, "post", "db.img");
    let o = t.run(&[
        "backup",
        s,
        "--pre-snapshot",
        "echo 'no lock:' >&2; echo 'server gone' >&2; exit 7",
        "--post-snapshot",
        &post,
    ]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert_eq!(
        o.stderr.trim_end().lines().last().unwrap(),
        format!(
            "error: backup of {s} to volume db.img failed: pre-snapshot command \"echo 'no lock:' >&2; echo 'server gone' >&2; exit 7\" failed (exit status: 7): no lock: server gone; the backup did not start"
        )
    );
    assert!(log(&t).is_empty(), "no post-command without a pre-command");
    assert!(
        !t.repo().join("volumes/db.img/commits").exists()
            || std::fs::read_dir(t.repo().join("volumes/db.img/commits"))
                .unwrap()
                .count()
                == 0
    );
}

#[test]
fn a_hanging_pre_command_is_killed_after_hook_timeout_and_the_run_goes_on() {
    let t = TempRepo::new();
    write(&t.path("a.img"), &make_image(MIB, 3));
    write(&t.path("b.img"), &make_image(MIB, 4));
    let marker = t.path("child-alive");
    let cfg = t.path("thinarc.toml");
    let text = format!(
        r#"state_dir = "{state}"
[repositories.main]
location = "{repo}"

[[volumes]]
name = "a"
source = "{a}"
pre_snapshot = "(sleep 3; touch {marker}) & sleep 60"
hook_timeout = 1

[[volumes]]
name = "b"
source = "{b}"
"#,
        state = t.path("state").display(),
        repo = t.location(),
        a = t.path("a.img").display(),
        b = t.path("b.img").display(),
        marker = marker.display(),
    );
    write(&cfg, text.as_bytes());
    let started = Instant::now();
    let o = thinarc_env(
        &["run", "--config", cfg.to_str().unwrap(), "--json"],
        &[(
            "THINARC_STATE_DIR".into(),
            t.path("state").display().to_string(),
        )],
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(o.code, Some(1), "{}", o.show());
    let report: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let steps = report.as_array().unwrap();
    let a = steps.iter().find(|s| s["volume"] == "a").unwrap();
    assert_eq!(a["ok"], false);
    assert_eq!(
        a["detail"],
        format!(
            "backup of {} to volume a failed: pre-snapshot command \"(sleep 3; touch {}) & sleep 60\" did not finish within 1s and was killed with its process group; the backup did not start",
            t.path("a.img").display(),
            marker.display()
        ),
        "{a}"
    );
    let b = steps
        .iter()
        .find(|s| s["volume"] == "b" && s["operation"] == "backup")
        .unwrap();
    assert_eq!(b["ok"], true, "{b}");
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !marker.exists(),
        "the hook's whole process group was killed"
    );
}

#[test]
fn the_post_command_runs_when_sigterm_stops_the_backup() {
    let t = TempRepo::new();
    let src = t.path("big.img");
    write(&src, &make_image(32 * MIB, 5));
    let (pre, post) = (logger(&t, "pre", "big"), logger(&t, "post", "big"));
    let child = Command::new(env!("CARGO_BIN_EXE_thinarc"))
        .args(["-r", t.location(), "-q", "--read-limit", "1M", "backup"])
        .arg(&src)
        .args([
            "--volume",
            "big",
            "--pre-snapshot",
            &pre,
            "--post-snapshot",
            &post,
        ])
        .env("THINARC_STATE_DIR", t.path("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while log(&t).is_empty() {
        assert!(Instant::now() < deadline, "the pre-command never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let s = src.to_str().unwrap();
    assert_eq!(
        log(&t),
        [
            format!("pre pre-snapshot big {s} [] [] locks=1 commits=0"),
            format!("post post-snapshot big {s} [] [failed] locks=1 commits=0"),
        ]
    );
}

/// A fake `virsh`: `domfsfreeze`/`domfsthaw` of domain `web1` succeed and are logged
/// to `$VIRSH_LOG`; domain `mute` has a guest agent that never answers; domain `gone`
/// has none.
const FAKE_VIRSH: &str = r#"#!/bin/sh
echo "$1 $2" >> "$VIRSH_LOG"
case "$2" in
  web1) echo "Froze 2 filesystem(s)" ;;
  mute) exec sleep 60 ;;
  *) echo "error: Guest agent is not responding: QEMU guest agent is not connected" >&2; exit 1 ;;
esac
"#;

#[test]
fn libvirt_freeze_through_a_fake_virsh() {
    // The fake goes first on PATH of a child test process (this test binary itself),
    // never of this one: other tests run in parallel here.
    let dir = tempfile::tempdir().unwrap();
    let virsh = dir.path().join("virsh");
    write(&virsh, FAKE_VIRSH.as_bytes());
    std::fs::set_permissions(&virsh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap()
    );
    let o = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hooks::libvirt_freeze_child",
            "--ignored",
            "--nocapture",
        ])
        .env("PATH", path)
        .env("VIRSH_LOG", dir.path().join("virsh.log"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 passed"));
}

/// The body of [`libvirt_freeze_through_a_fake_virsh`], run by it in a child process
/// with the fake `virsh` on PATH (it fails when run otherwise).
#[test]
#[ignore = "run by libvirt_freeze_through_a_fake_virsh with a fake virsh on PATH"]
fn libvirt_freeze_child() {
    use thinarc::source::consistent::{Freeze, FreezeTarget};
    let log_path = std::env::var("VIRSH_LOG").expect("run by libvirt_freeze_through_a_fake_virsh");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let freeze = |domain: &str, required: bool| Freeze {
        target: FreezeTarget::Libvirt(domain.into()),
        timeout: Duration::from_secs(1),
        required,
    };
    // An answering agent: frozen, then thawed.
    let mut warnings = Vec::new();
    let frozen = freeze("web1", true).freeze(&mut warnings).unwrap().unwrap();
    assert_eq!(log(), "domfsfreeze web1\n");
    frozen.thaw().unwrap();
    assert_eq!(log(), "domfsfreeze web1\ndomfsthaw web1\n");
    assert!(warnings.is_empty());

    // A freeze that outlives freeze_timeout is thawed by the watchdog, and the point is
    // reported crash-consistent.
    let frozen = freeze("web1", true).freeze(&mut warnings).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        log().ends_with("domfsfreeze web1\ndomfsthaw web1\n"),
        "{}",
        log()
    );
    assert_eq!(
        frozen.thaw().unwrap_err(),
        "the freeze outlived freeze_timeout (1s) and was thawed before the snapshot was complete: the point is crash-consistent only"
    );

    // No agent: with freeze_required = false, a warning and a crash-consistent snapshot.
    let none = freeze("gone", false).freeze(&mut warnings).unwrap();
    assert!(none.is_none());
    assert_eq!(
        warnings,
        [
            "virsh domfsfreeze gone failed (exit status: 1): error: Guest agent is not responding: QEMU guest agent is not connected; the snapshot is crash-consistent only (freeze_required = false)"
        ]
    );
    // ... required: the backup stops before the snapshot.
    let e = freeze("gone", true).freeze(&mut Vec::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "virsh domfsfreeze gone failed (exit status: 1): error: Guest agent is not responding: QEMU guest agent is not connected; freeze_required is set, so no snapshot was taken"
    );
    // An agent that never answers is killed after freeze_timeout, and thawed anyway.
    let started = Instant::now();
    let e = freeze("mute", true).freeze(&mut Vec::new()).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        e.to_string(),
        "virsh domfsfreeze mute did not finish within 1s and was killed with its process group; freeze_required is set, so no snapshot was taken"
    );
    assert!(
        log().ends_with("domfsfreeze mute\ndomfsthaw mute\n"),
        "{}",
        log()
    );
}

/// Fakes of the LVM tools and `virsh` on PATH for a backup of `lvm:pve/vm-101-disk-0`
/// (from the captured `lvs` report of VG `pve`, pool `data`) up to its `lvcreate`,
/// which fails (`lvcreate_delay` seconds later: a slow snapshot). `virsh` and the
/// hooks log to `events.log`, so their order shows. Returns the config file and the
/// environment of the run.
fn fake_lvm(t: &TempRepo, lvcreate_delay: u32) -> (String, Vec<(String, String)>) {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = t.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let events = t.path("events.log");
    let fakes = [
        (
            "lvs",
            format!(
                "cat {}",
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/lvm/lvs-discovery.json")
            ),
        ),
        (
            "dmsetup",
            "echo '0 16777216 thin-pool 2 112/20480 32/131072 - rw discard_passdown queue_if_no_space - 256'".to_string(),
        ),
        (
            "lvcreate",
            format!(
                "echo lvcreate >> {}; sleep {lvcreate_delay}; echo '  Volume group \"pve\" has insufficient free space (0 extents): 1 required.' >&2; exit 5",
                events.display()
            ),
        ),
        ("virsh", format!("echo \"$1 $2\" >> {}", events.display())),
    ];
    for (name, body) in fakes {
        let path = bin.join(name);
        write(&path, format!("#!/bin/sh\n{body}\n").as_bytes());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let config = t.path("fake.toml");
    write(
        &config,
        format!(
            "state_dir = \"{state}\"\n[repositories.r]\nlocation = \"{repo}\"\n[[volumes]]\nname = \"pve/vm-101-disk-0\"\nsource = \"lvm:pve/vm-101-disk-0\"\nfreeze = \"libvirt:web1\"\nfreeze_timeout = 60\npre_snapshot = \"echo pre >> {log}\"\npost_snapshot = \"echo post $THINARC_STATUS >> {log}\"\n",
            state = t.path("state").display(),
            repo = t.location(),
            log = events.display()
        )
        .as_bytes(),
    );
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    (
        config.display().to_string(),
        vec![("PATH".to_string(), path)],
    )
}

fn events(t: &TempRepo) -> Vec<String> {
    std::fs::read_to_string(t.path("events.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Issue 15: a failed `lvcreate` still thaws the guest and runs the post-snapshot
/// command (with `THINARC_STATUS=failed`), in that order; the backup fails with
/// lvcreate's error.
#[test]
fn post_snapshot_runs_after_a_failed_lvcreate() {
    let t = TempRepo::new();
    let (config, env) = fake_lvm(&t, 0);
    let o = thinarc_env(&["run", "--config", &config], &env);
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert!(
        o.stdout.contains("backup pve/vm-101-disk-0: FAILED: backup of lvm:pve/vm-101-disk-0 to volume pve/vm-101-disk-0 failed: `lvcreate -y --config backup { archive = 0 } -s -n vm-101-disk-0-thinarc-"),
        "{}",
        o.show()
    );
    assert!(
        o.stdout.contains("failed (exit status: 5): Volume group \"pve\" has insufficient free space (0 extents): 1 required."),
        "{}",
        o.show()
    );
    assert_eq!(
        events(&t),
        [
            "pre",
            "domfsfreeze web1",
            "lvcreate",
            "domfsthaw web1",
            "post failed"
        ]
    );
}

/// Issue 15: SIGTERM while the guest is frozen (a slow `lvcreate`, longer than the 4 s
/// the unwinding gets) thaws first, runs the post-command, then exits with code 1;
/// the thaw is the unwinding's, not the watchdog's (`freeze_timeout` is 60 s).
#[test]
fn sigterm_while_frozen_thaws_first_then_exits() {
    let t = TempRepo::new();
    let (config, env) = fake_lvm(&t, 6);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_thinarc"));
    cmd.args(["run", "--config", &config])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !events(&t).iter().any(|e| e == "lvcreate") {
        assert!(
            Instant::now() < deadline,
            "lvcreate never ran: {:?}",
            events(&t)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let signalled = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "ended {:?} after the signal",
        signalled.elapsed()
    );
    assert!(err.contains("error: "), "{err}");
    assert_eq!(
        events(&t),
        [
            "pre",
            "domfsfreeze web1",
            "lvcreate",
            "domfsthaw web1",
            "post failed"
        ],
        "{err}"
    );
}
