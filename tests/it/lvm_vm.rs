//! Real LVM end to end, inside a qemu VM (the host kernel has no device-mapper).
//!
//! `lvm_in_vm` (host) boots `tests/vm/run.sh`, which runs THIS test binary inside the
//! VM over 9p with `THINARC_IN_VM=1`, selecting `guest_scenario`: a thin pool and a
//! thin LV with ext4 and real files, backed up with the thinarc binary built for
//! these tests, changed, trimmed, backed up again, interrupted, refused, and restored
//! onto new LVs; then `thinarc mount` of an ext4 point through the kernel's NBD
//! device (`nbd_mount_scenario`). `guest_scenario` is `#[ignore]`d on the host: it
//! needs the VM.

use std::process::Command;

use thinarc::lvm::LvName;
use thinarc::repo::{PointSelector, Repository, VolumeName};
use thinarc::source::lvm::{LvmPlan, ThinarcSnapshot};

use crate::chain::runtime;
use crate::util::TempRepo;

#[test]
fn lvm_in_vm() {
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("guest.sh");
    std::fs::write(
        &script,
        format!(
            "cd {}\nexec {} --exact lvm_vm::guest_scenario --ignored --nocapture --test-threads=1\n",
            env!("CARGO_MANIFEST_DIR"),
            exe.display()
        ),
    )
    .unwrap();
    // The guest sees the host's root, but with its own /tmp and /run: the checkout
    // (shared by run.sh) and the binaries (wherever the target dir is) are bound back.
    let binaries = [
        exe.as_path(),
        std::path::Path::new(env!("CARGO_BIN_EXE_thinarc")),
    ]
    .map(|p| p.parent().unwrap().display().to_string());
    let started = std::time::Instant::now();
    let o = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vm/run.sh"))
        .arg(&script)
        .env("PV_SIZE", "3G")
        .env("VM_HOST_PATHS", binaries.join(" "))
        .output()
        .expect("run tests/vm/run.sh");
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("{err}");
    println!("{out}");
    assert!(
        o.status.success() && out.contains("test result: ok. 1 passed; 0 failed"),
        "the LVM scenario failed in the VM (exit {:?}); output above",
        o.status.code()
    );
    eprintln!("LVM VM test took {:.0} s", started.elapsed().as_secs_f64());
}

/// Runs a shell command in the guest, asserting success; returns stdout.
fn sh(cmd: &str) -> String {
    let o = Command::new("bash").args(["-c", cmd]).output().unwrap();
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// thinarc's snapshots in the VG.
fn thinarc_snapshots() -> Vec<String> {
    sh("lvs --noheadings -o lv_name @thinarc")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// sha256 of the first `len` bytes of a device.
fn sha256_of(dev: &str, len: u64) -> String {
    sh(&format!("head -c {len} {dev} | sha256sum | cut -d' ' -f1"))
        .trim()
        .to_string()
}

/// Percent of an LV's chunks mapped in the pool.
fn mapped_percent(lv: &str) -> f64 {
    sh(&format!("lvs --noheadings -o data_percent {lv}"))
        .trim()
        .parse()
        .unwrap()
}

/// sha256 and mapped percent of the kept base snapshot (activated for the read, then
/// deactivated again).
fn snapshot_sha256(size: u64) -> (String, f64) {
    let snaps = thinarc_snapshots();
    assert_eq!(
        snaps.len(),
        1,
        "exactly one thinarc snapshot after a run: {snaps:?}"
    );
    let lv = format!("vg/{}", snaps[0]);
    sh(&format!("lvchange -ay -K {lv}"));
    let h = sha256_of(&format!("/dev/{lv}"), size);
    let mapped = mapped_percent(&lv);
    sh(&format!("lvchange -an {lv}"));
    (h, mapped)
}

/// Writes `mib` MiB of random data to `path` and syncs.
fn write_file(path: &str, mib: usize) {
    sh(&format!("head -c {mib}M /dev/urandom > {path} && sync"));
}

/// Logs a step with the time since the scenario started.
fn step(t0: std::time::Instant, what: &str) {
    eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// thinarc's snapshots of vg/data as the library sees them against the latest point of
/// volume vg/data in `t`'s repository.
fn snapshots_api(t: &TempRepo) -> Vec<ThinarcSnapshot> {
    runtime().block_on(async {
        let repo = Repository::open_location(t.location()).await.unwrap();
        let volume = VolumeName::new("vg/data").unwrap();
        let commits = repo.commits(&volume).await.unwrap();
        let chain = repo
            .resolve(&commits, &PointSelector::Latest)
            .await
            .unwrap();
        LvmPlan::inspect(
            &LvName::parse("vg/data").unwrap(),
            Some(&chain.tip().header),
        )
        .unwrap()
        .snapshots()
    })
}

/// Whether an LV is active.
fn is_active(lv: &str) -> bool {
    sh(&format!("lvs --noheadings -o lv_attr {lv}"))
        .trim()
        .chars()
        .nth(4)
        == Some('a')
}

/// `verify vg/data --source lvm:vg/data` matches the latest point (`seq`), reading the
/// one thinarc snapshot, which is inactive again afterwards.
fn verify_lvm_source(t: &TempRepo, seq: u64) {
    let snaps = thinarc_snapshots();
    let base = format!("vg/{}", snaps[0]);
    let v = t.json(&["verify", "vg/data", "--source", "lvm:vg/data"]);
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["source"]["matches"], true, "{v}");
    assert_eq!(v["source"]["seq"], seq, "{v}");
    assert_eq!(
        v["source"]["source"],
        format!("lvm:vg/data (snapshot {base})"),
        "{v}"
    );
    assert!(!is_active(&base), "verify left {base} active");
    assert_eq!(
        thinarc_snapshots(),
        snaps,
        "verify created or removed nothing"
    );
}

fn held_metadata_root() -> String {
    sh("dmsetup status vg-pool-tpool")
        .split_whitespace()
        .nth(6)
        .unwrap()
        .to_string()
}

/// Issue 15: `thinarc run` with `freeze = "fs:..."` and hooks on the mounted ext4 of
/// vg/data. A path that is not a mount of the LV is refused before anything is frozen
/// or created; the real mount is frozen by `lvcreate`'s suspend only (a writer blocks
/// during the freeze and goes on after it), between the pre- and post-commands, and
/// the point is recorded `application`-consistent. Leaves one new point. (A first
/// version ran `fsfreeze --freeze` before `lvcreate`: the suspend then failed with
/// EBUSY on this kernel.)
fn freeze_scenario(t: &TempRepo) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let hooks = t.path("hooks.log");
    let config = |freeze: &str| {
        let path = t.path("freeze.toml");
        let text = format!(
            "state_dir = \"{state}\"\n[repositories.r]\nlocation = \"{repo}\"\n[[volumes]]\nname = \"vg/data\"\nsource = \"lvm:vg/data\"\nfreeze = \"{freeze}\"\npre_snapshot = \"echo pre $THINARC_SNAPSHOT >> {log}\"\npost_snapshot = \"echo post $THINARC_STATUS >> {log}\"\n",
            state = t.path("state").display(),
            repo = t.location(),
            log = hooks.display(),
        );
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let run = |freeze: &str| {
        Command::new(env!("CARGO_BIN_EXE_thinarc"))
            .args(["run", "--config", &config(freeze)])
            .output()
            .unwrap()
    };
    // /tmp is not a mount of vg/data.
    let before = thinarc_snapshots();
    let o = run("fs:/tmp");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("freeze fs:/tmp: ") && err.contains(", not a mount of vg/data (device "),
        "{err}"
    );
    assert!(err.contains("nothing was frozen or created"), "{err}");
    assert_eq!(thinarc_snapshots(), before);
    let log = std::fs::read_to_string(&hooks).unwrap();
    assert!(
        log.starts_with("pre vg/data-thinarc-") && log.ends_with("post failed\n"),
        "{log}"
    );
    std::fs::remove_file(&hooks).unwrap();

    // A writer that fsyncs every few milliseconds blocks while the fs is frozen.
    let stop = Arc::new(AtomicBool::new(false));
    let longest = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, longest, writes) = (stop.clone(), longest.clone(), writes.clone());
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut f = std::fs::File::create("/tmp/fs/ticker").unwrap();
            while !stop.load(Ordering::SeqCst) {
                let started = std::time::Instant::now();
                f.write_all(&[7u8; 4096]).unwrap();
                f.sync_data().unwrap();
                let ms = started.elapsed().as_millis() as u64;
                longest.fetch_max(ms, Ordering::SeqCst);
                writes.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let quiet = longest.swap(0, Ordering::SeqCst);
    let o = run("fs:/tmp/fs");
    let blocked = longest.load(Ordering::SeqCst);
    let after_run = writes.load(Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        writes.load(Ordering::SeqCst) > after_run,
        "the writer goes on after the thaw"
    );
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    eprintln!("longest fsync: {quiet} ms before the run, {blocked} ms during it");
    assert!(
        blocked >= 50,
        "a write blocked during the freeze: {blocked} ms"
    );
    let log = std::fs::read_to_string(&hooks).unwrap();
    assert!(
        log.starts_with("pre vg/data-thinarc-") && log.ends_with("post ok\n"),
        "{log}"
    );
    let record = sh(&format!(
        "cat $(find {} -path '*/records/*' -name 'backup.last.json')",
        t.location()
    ));
    assert!(
        record.contains("\"consistency\": \"application\""),
        "{record}"
    );
    // Not left frozen: a write completes at once.
    sh("timeout 5 sh -c 'echo x > /tmp/fs/after && sync'");
}

#[test]
#[ignore = "runs inside the VM that lvm_in_vm boots"]
fn guest_scenario() {
    assert_eq!(
        std::env::var("THINARC_IN_VM").as_deref(),
        Ok("1"),
        "run by lvm_in_vm"
    );
    const SIZE: u64 = 64 << 20;
    sh("pvcreate -q -y /dev/vda && vgcreate -q vg /dev/vda");
    sh(
        "lvcreate -q -y -L 1G --chunksize 64k -T vg/pool && lvcreate -q -y -V 64M -T vg/pool -n data",
    );
    sh(
        "mkfs.ext4 -q -E nodiscard /dev/vg/data && mkdir -p /tmp/fs && mount -o noinit_itable /dev/vg/data /tmp/fs",
    );
    let t0 = std::time::Instant::now();
    for i in 0..8 {
        write_file(&format!("/tmp/fs/file{i}"), 1);
    }
    let t = TempRepo::new();
    let mut hashes = Vec::new();

    // Full backup: only mapped chunks are read.
    let full = t.json(&["backup", "lvm:vg/data"]);
    assert_eq!(full["volume"], "vg/data");
    assert_eq!(full["kind"], "full");
    assert_eq!(full["block_size"], 65536);
    let read = full["bytes_read"].as_u64().unwrap();
    assert!(
        (8 << 20..SIZE / 2).contains(&read),
        "full backup read {read} bytes"
    );
    hashes.push(snapshot_sha256(SIZE));

    // Change two files: the delta reads about what changed, far below the LV size.
    step(t0, "full backup done");
    write_file("/tmp/fs/file1", 1);
    write_file("/tmp/fs/file5", 1);
    let d = t.json(&["backup", "lvm:vg/data"]);
    assert_eq!(
        (d["kind"].as_str(), d["method"].as_str()),
        (Some("delta"), Some("changed-blocks")),
        "{d}"
    );
    let read = d["bytes_read"].as_u64().unwrap();
    assert!(
        (2 << 20..6 << 20).contains(&read),
        "delta read {read} bytes for 4 MiB changed"
    );
    assert_eq!(d["warnings"].as_array().unwrap().len(), 0, "{d}");
    hashes.push(snapshot_sha256(SIZE));

    // verify --source lvm: reads the base snapshot; the library lists it as the base.
    verify_lvm_source(&t, 2);
    let base = format!("vg/{}", thinarc_snapshots()[0]);
    assert_eq!(
        snapshots_api(&t),
        vec![ThinarcSnapshot {
            name: base,
            archive: d["archive"].as_str().map(str::to_string),
            base: true
        }]
    );

    freeze_scenario(&t);
    hashes.push(snapshot_sha256(SIZE));

    // Delete files and trim: discarded chunks become zero without being read.
    sh("rm /tmp/fs/file2 /tmp/fs/file3 && sync && fstrim -v /tmp/fs");
    let d = t.json(&["backup", "lvm:vg/data"]);
    let read = d["bytes_read"].as_u64().unwrap();
    assert!(read < 4 << 20, "trim delta read {read} bytes");
    assert!(d["blocks_changed"].as_u64().unwrap() >= 32, "{d}");
    hashes.push(snapshot_sha256(SIZE));

    // A run killed mid-backup leaves a stray snapshot (and here also a reserved
    // metadata snapshot, as a kill during thin_delta would); the next run removes and
    // releases them, and says so.
    step(t0, "trim delta done");
    write_file("/tmp/fs/big", 32);
    // A killed run cannot remove its volume lock either: a short TTL lets the next
    // run break it as stale instead of waiting the default ten minutes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_thinarc"))
        .args(["-q", "-r", t.location(), "backup", "lvm:vg/data"])
        .env("THINARC_LOCK_TTL", "1")
        .env("THINARC_STATE_DIR", t.path("state"))
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while thinarc_snapshots().len() < 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(t0.elapsed().as_secs() < 60, "no new snapshot appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        thinarc_snapshots().len(),
        2,
        "the killed run left its snapshot"
    );
    sh("dmsetup message vg-pool-tpool 0 reserve_metadata_snap");
    assert_ne!(held_metadata_root(), "-");
    let snaps = snapshots_api(&t);
    assert_eq!(
        snaps.iter().map(|s| s.base).collect::<Vec<_>>(),
        [true, false],
        "{snaps:?}"
    );
    assert!(snaps[1].name.starts_with("vg/data-thinarc-"), "{snaps:?}");
    assert_ne!(snaps[0].name, snaps[1].name);
    let dry = t.json(&["backup", "lvm:vg/data", "--dry-run"]);
    assert_eq!(dry["strays"], serde_json::json!([snaps[1].name]), "{dry}");
    assert_eq!(dry["snapshots"].as_array().unwrap().len(), 2, "{dry}");
    let dry = t.ok(&["backup", "lvm:vg/data", "--dry-run"]);
    assert!(dry.contains("stray snapshot vg/data-thinarc-"), "{dry}");
    assert!(dry.contains("a metadata snapshot is reserved"), "{dry}");
    assert_eq!(
        thinarc_snapshots().len(),
        2,
        "--dry-run created or removed nothing"
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let d = t.json(&["backup", "lvm:vg/data"]);
    let warnings = d["warnings"].to_string();
    assert!(
        warnings.contains("removed thinarc snapshot vg/data-thinarc-"),
        "{warnings}"
    );
    assert!(
        warnings.contains("released a metadata snapshot"),
        "{warnings}"
    );
    assert_eq!(d["method"], "changed-blocks");
    assert_eq!(held_metadata_root(), "-");
    hashes.push(snapshot_sha256(SIZE));

    step(t0, "recovery after the killed run done");
    // SIGTERM mid-backup: the run unwinds; its new snapshot is removed, no metadata
    // snapshot stays reserved, the volume lock is released and the run is recorded as
    // interrupted. The base is kept, so the next delta is still a changed-blocks one.
    write_file("/tmp/fs/big", 32);
    let before = thinarc_snapshots();
    let child = Command::new(env!("CARGO_BIN_EXE_thinarc"))
        .args(["-q", "-r", t.location(), "backup", "lvm:vg/data"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t1 = std::time::Instant::now();
    while thinarc_snapshots().len() <= before.len() {
        assert!(t1.elapsed().as_secs() < 60, "no new snapshot appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    sh(&format!("kill -TERM {}", child.id()));
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("interrupted by SIGTERM: nothing partial was committed"),
        "{err}"
    );
    assert_eq!(thinarc_snapshots(), before, "{err}");
    assert_eq!(held_metadata_root(), "-");
    let repo = t.location();
    assert_eq!(sh(&format!("find {repo} -path '*/locks/*' -type f")), "");
    let record = sh(&format!(
        "cat $(find {repo} -path '*/records/*' -name 'backup.last.json')"
    ));
    assert!(record.contains("interrupted by SIGTERM"), "{record}");
    assert!(!err.contains("warning"), "{err}");
    let d = t.json(&["backup", "lvm:vg/data"]);
    assert_eq!(d["method"], "changed-blocks", "{d}");
    assert_eq!(d["warnings"].as_array().unwrap().len(), 0, "{d}");
    hashes.push(snapshot_sha256(SIZE));
    // A broken base (snapshot removed behind thinarc's back): full scan, with a warning.
    let base = thinarc_snapshots().remove(0);
    sh(&format!("lvremove -y vg/{base}"));
    let e = t.fails(&["verify", "vg/data", "--source", "lvm:vg/data"]);
    assert_eq!(
        e.trim(),
        format!(
            "error: reading --source lvm:vg/data: the thinarc snapshot of lvm:vg/data cannot be compared with the latest point: its base snapshot vg/{base} is missing; the next backup of lvm:vg/data takes a new one"
        )
    );
    write_file("/tmp/fs/file6", 1);
    let d = t.json(&["backup", "lvm:vg/data"]);
    assert_eq!(d["method"], "scan");
    assert!(
        d["warnings"]
            .to_string()
            .contains(&format!("its base snapshot vg/{base} is missing")),
        "{d}"
    );
    hashes.push(snapshot_sha256(SIZE));
    verify_lvm_source(&t, 7);

    // A pool above the threshold is refused before anything is created.
    let pct: f64 = sh("lvs --noheadings -o data_percent vg/pool")
        .trim()
        .parse()
        .unwrap();
    let before = thinarc_snapshots();
    let e = t.fails(&["backup", "lvm:vg/data", "--max-pool-data", "1"]);
    // The error is the last line (an info line says the backup started).
    assert_eq!(
        e.trim().lines().last().unwrap(),
        format!(
            "error: backup of lvm:vg/data to volume vg/data failed: thin pool vg/pool data usage is {pct:.2}%, above the limit of 1% (--max-pool-data): extend the pool (lvextend) or free space first; nothing was created"
        )
    );
    assert_eq!(thinarc_snapshots(), before);

    step(t0, "refusal done");
    // Every point restores onto a new thin LV, identical to its snapshot.
    sh("umount /tmp/fs");
    for (i, (h, mapped)) in hashes.iter().enumerate() {
        let seq = (i + 1).to_string();
        let lv = format!("r{seq}");
        t.ok(&[
            "restore",
            "vg/data",
            &format!("lvm:vg/{lv}"),
            "--create",
            "--pool",
            "vg/pool",
            "--at",
            &seq,
        ]);
        assert_eq!(&sha256_of(&format!("/dev/vg/{lv}"), SIZE), h, "point {seq}");
        // Only data blocks were written: the restored LV maps no more than the
        // snapshot it came from.
        let restored = mapped_percent(&format!("vg/{lv}"));
        assert!(
            restored <= *mapped,
            "restored LV {lv} maps {restored}%, its snapshot {mapped}%"
        );
    }

    step(t0, "restores done");
    // LV target: an existing LV needs --force, an open one is refused, and with
    // --force an older point replaces a newer one exactly (zero blocks zeroed).
    let e = t.fails(&["restore", "vg/data", "lvm:vg/r5", "--at", "1"]);
    assert!(
        e.contains("LV vg/r5 exists: pass --force to overwrite it"),
        "{e}"
    );
    sh("mkdir -p /tmp/r5 && mount -o ro /dev/vg/r5 /tmp/r5");
    let e = t.fails(&["restore", "vg/data", "lvm:vg/r5", "--at", "1", "--force"]);
    assert!(
        e.contains("LV vg/r5 is open (mounted or in use): unmount or close it first"),
        "{e}"
    );
    sh("umount /tmp/r5");
    t.ok(&["restore", "vg/data", "lvm:vg/r5", "--at", "1", "--force"]);
    assert_eq!(sha256_of("/dev/vg/r5", SIZE), hashes[0].0);
    let e = t.fails(&["restore", "vg/data", "lvm:vg/nope", "--at", "1"]);
    assert!(
        e.contains("LV vg/nope does not exist: pass --create"),
        "{e}"
    );
    // A plain LV (no pool) of a given size.
    t.ok(&[
        "restore",
        "vg/data",
        "lvm:vg/plain",
        "--create",
        "--size",
        "300M",
    ]);
    assert_eq!(sha256_of("/dev/vg/plain", SIZE), hashes.last().unwrap().0);
    discovery_scenario(&t);
    nbd_mount_scenario();
    nbd_partition_scenario();
}

/// The NBD mount scenarios alone, for a quicker VM run while working on `mount`:
/// `tests/vm/run.sh` with a guest script that runs this test (`--exact
/// lvm_vm::guest_nbd_scenarios --ignored`), as `lvm_in_vm` does `guest_scenario`.
#[test]
#[ignore = "runs inside the VM that tests/vm/run.sh boots"]
fn guest_nbd_scenarios() {
    assert_eq!(
        std::env::var("THINARC_IN_VM").as_deref(),
        Ok("1"),
        "run in the VM"
    );
    nbd_mount_scenario();
    nbd_partition_scenario();
}

/// Issue 15, whole-pool discovery: `lvm:vg/pool/*` with `exclude` on a pool that also
/// holds vg/data (excluded), thinarc's snapshot of it, the LVs restored above (r1..r7,
/// tagged `thinarc-restored`: their names match `*`) and a plain LV. `run --dry-run`
/// lists exactly the two VM disks, touching nothing; `run` backs up exactly those; a
/// removed LV is reported `gone` once (status shows it, not as a failure), a new one
/// is backed up as a full; a pattern that matches nothing warns (exit 4).
fn discovery_scenario(t: &TempRepo) {
    use crate::util::{Output, thinarc_env};
    let lvcreate = |lv: &str| {
        sh(&format!(
            "lvcreate -q -y -V 16M -T vg/pool -n {lv} && dd if=/dev/urandom of=/dev/vg/{lv} bs=1M count=2 oflag=direct status=none"
        ));
    };
    for lv in ["vm-1-disk-0", "vm-2-disk-0", "scratch"] {
        lvcreate(lv);
    }
    let state = t.path("state-discovery");
    let config = |source: &str| {
        let path = t.path("discovery.toml");
        let text = format!(
            "state_dir = \"{}\"\n[repositories.r]\nlocation = \"{}\"\n[[volumes]]\nsource = \"{source}\"\nexclude = [\"data\", \"vg/scr*\"]\n",
            state.display(),
            t.location(),
        );
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let run = |source: &str, args: &[&str]| -> Output {
        let cfg = config(source);
        let mut all = vec!["run", "--config", cfg.as_str()];
        all.extend_from_slice(args);
        thinarc_env(&all, &[])
    };
    let steps = |o: &Output| -> Vec<(String, String, bool)> {
        assert!(o.success, "{}", o.show());
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["operation"].as_str().unwrap().to_string(),
                    s["volume"].as_str().unwrap().to_string(),
                    s["ok"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let step = |op: &str, volume: &str| (op.to_string(), volume.to_string(), true);
    let pool = "lvm:vg/pool/*";

    let before = thinarc_snapshots();
    let o = run(pool, &["--dry-run", "--json"]);
    assert_eq!(
        steps(&o),
        [
            step("backup", "vg/vm-1-disk-0"),
            step("backup", "vg/vm-2-disk-0")
        ]
    );
    let dry: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    for s in dry.as_array().unwrap() {
        assert_eq!(s["kind"], "full", "{s}");
        assert_eq!(s["discovered_by"], pool, "{s}");
        assert!(
            s["detail"].as_str().unwrap().contains(
                "would write a full archive: full backup of the chunks mapped in a new snapshot"
            ),
            "{s}"
        );
    }
    let o = run(pool, &["--dry-run"]);
    assert!(o.success, "{}", o.show());
    assert!(
        o.stdout.starts_with(&format!(
            "backup vg/vm-1-disk-0: from lvm:vg/vm-1-disk-0 (selected by {pool}): would write a full archive: "
        )),
        "{}",
        o.show()
    );
    assert_eq!(thinarc_snapshots(), before, "a dry run creates nothing");
    assert!(!state.join("records").exists(), "a dry run records nothing");

    // The run backs up exactly the two VM disks, as new volumes (full archives).
    let o = run(pool, &["--json"]);
    assert_eq!(
        steps(&o),
        [
            step("backup", "vg/vm-1-disk-0"),
            step("backup", "vg/vm-2-disk-0")
        ]
    );
    let listed = |volume: &str| t.json(&["list", volume]);
    let points = listed("vg/vm-2-disk-0");
    assert_eq!(points.as_array().unwrap().len(), 1, "{points}");
    assert!(points[0]["parent"].is_null(), "{points}");
    let snaps = thinarc_snapshots();
    for lv in ["vm-1-disk-0", "vm-2-disk-0"] {
        assert!(
            snaps
                .iter()
                .any(|s| s.starts_with(&format!("{lv}-thinarc-"))),
            "{snaps:?}"
        );
    }
    let record = std::fs::read_to_string(
        std::fs::read_dir(state.join("records"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join("vg~vm-1-disk-0/backup.last.json"),
    )
    .unwrap();
    assert!(
        record.contains(&format!("\"discovered_by\": \"{pool}\"")),
        "{record}"
    );

    // vm-2 goes, vm-3 comes: gone once, a full of the new one, a delta of vm-1.
    sh("lvremove -q -y vg/vm-2-disk-0");
    lvcreate("vm-3-disk-0");
    let o = run(pool, &[]);
    assert!(o.success, "{}", o.show());
    assert!(
        o.stdout.contains("gone vg/vm-2-disk-0: LV vg/vm-2-disk-0 no longer exists: recorded as gone; its points are kept"),
        "{}",
        o.show()
    );
    assert!(
        o.stdout
            .contains("; removed its thinarc snapshot vg/vm-2-disk-0-thinarc-"),
        "{}",
        o.show()
    );
    assert!(
        !thinarc_snapshots()
            .iter()
            .any(|s| s.starts_with("vm-2-disk-0-")),
        "the gone LV's base snapshot is removed"
    );
    let o = run(pool, &["--json"]);
    assert_eq!(
        steps(&o),
        [
            step("backup", "vg/vm-1-disk-0"),
            step("backup", "vg/vm-3-disk-0")
        ],
        "gone is reported once"
    );
    let points = listed("vg/vm-3-disk-0");
    assert!(points[0]["parent"].is_null(), "{points}");
    let points = listed("vg/vm-1-disk-0");
    assert_eq!(points.as_array().unwrap().len(), 3, "{points}");
    assert!(!points[1]["parent"].is_null(), "{points}");
    assert_eq!(
        listed("vg/vm-2-disk-0").as_array().unwrap().len(),
        1,
        "the history of a gone volume is kept"
    );
    let status = thinarc_env(
        &[
            "-r",
            t.location(),
            "--state-dir",
            &state.display().to_string(),
            "status",
            "vg/vm-2-disk-0",
        ],
        &[],
    );
    assert!(status.success, "{}", status.show());
    assert!(status.stdout.contains("gone since "), "{}", status.show());
    assert!(
        status.stdout.contains("  gone: LV vg/vm-2-disk-0 no longer exists; it was backed up by the pattern lvm:vg/pool/*"),
        "{}",
        status.show()
    );

    // A pattern that matches nothing: a warning, exit 4.
    let o = run("lvm:vg/ct-*", &["--dry-run"]);
    assert_eq!(o.code, Some(4), "{}", o.show());
    assert!(
        o.stdout
            .contains("discover lvm:vg/ct-*: WARNING: lvm:vg/ct-* matches no thin LV"),
        "{}",
        o.show()
    );
}

/// A running `thinarc mount` and the line it printed once mounted.
fn start_mount(t: &TempRepo, args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_thinarc"))
        .args(["-r", t.location(), "mount"])
        .args(args)
        .envs(t.env_pairs())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
}

/// Whether `path` is a mountpoint.
fn is_mounted(path: &str) -> bool {
    Command::new("mountpoint")
        .args(["-q", path])
        .status()
        .unwrap()
        .success()
}

/// `thinarc mount` of an ext4 point: read a file and compare it, refuse a mountpoint
/// in use, `umount`; with `--overlay` write, unmount, and the repository is unchanged
/// (verify --data clean); a killed mount is cleaned up by `umount`; an image without a
/// file system is refused and leaves no device attached.
fn nbd_mount_scenario() {
    let t = TempRepo::new();
    sh(
        "mkdir -p /tmp/nbd-src /tmp/nbd-mnt && head -c 3M /dev/urandom > /tmp/nbd-src/data.bin && echo hello > /tmp/nbd-src/hello.txt",
    );
    // 32 MiB and 700 bytes: not whole sectors; the last 8 bytes are a marker.
    sh("truncate -s 33555132 /tmp/nbd.img && mkfs.ext4 -q -d /tmp/nbd-src /tmp/nbd.img");
    sh("printf TAILMARK | dd of=/tmp/nbd.img bs=1 seek=33555124 conv=notrunc status=none");
    t.ok(&["backup", "/tmp/nbd.img", "--volume", "img"]);
    let repo_state = || {
        sh(&format!(
            "cd {} && find . -type f | sort | xargs sha256sum",
            t.repo().display()
        ))
    };
    let before = repo_state();

    // Read-only: the file's bytes, a mountpoint in use refused, umount.
    let (mut child, line) = start_mount(&t, &["img", "/tmp/nbd-mnt"]);
    assert!(
        line.starts_with("mounted img (ro) on /tmp/nbd-mnt from /dev/nbd0 (/dev/nbd0); end with `thinarc umount /tmp/nbd-mnt`"),
        "{line}"
    );
    assert_eq!(
        sh("sha256sum < /tmp/nbd-mnt/data.bin"),
        sh("sha256sum < /tmp/nbd-src/data.bin")
    );
    assert_eq!(sh("cat /tmp/nbd-mnt/hello.txt"), "hello\n");
    // The device is the volume rounded up to whole sectors: its last bytes show,
    // the padding reads as zeros.
    assert_eq!(sh("cat /sys/block/nbd0/size"), "65538\n");
    assert_eq!(
        sh("dd if=/dev/nbd0 bs=1 skip=33555124 count=8 status=none"),
        "TAILMARK"
    );
    assert_eq!(
        sh("dd if=/dev/nbd0 bs=1 skip=33555132 count=324 status=none | tr -d '\\0' | wc -c"),
        "0\n"
    );
    assert!(
        Command::new("touch")
            .arg("/tmp/nbd-mnt/x")
            .status()
            .is_ok_and(|s| !s.success())
    );
    let o = t.run(&["mount", "img", "/tmp/nbd-mnt"]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert_eq!(
        o.stderr.trim_end(),
        "error: cannot mount img on /tmp/nbd-mnt: mountpoint /tmp/nbd-mnt: is in use: /dev/nbd0 is mounted there (unmount it first)"
    );
    assert_eq!(
        t.ok(&["umount", "/tmp/nbd-mnt"]),
        "unmounted /tmp/nbd-mnt and disconnected /dev/nbd0\n"
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!is_mounted("/tmp/nbd-mnt"));
    assert!(!std::path::Path::new("/sys/block/nbd0/pid").exists());

    // With an overlay: read-write; SIGTERM unmounts; the writes stay in the overlay.
    let (child, line) = start_mount(&t, &["img", "/tmp/nbd-mnt", "--overlay", "/tmp/nbd.ovl"]);
    assert!(
        line.starts_with("mounted img (rw) on /tmp/nbd-mnt"),
        "{line}"
    );
    sh("echo changed > /tmp/nbd-mnt/new.txt && rm /tmp/nbd-mnt/data.bin && sync");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(!is_mounted("/tmp/nbd-mnt"));
    let (mut child, _) = start_mount(&t, &["img", "/tmp/nbd-mnt", "--overlay", "/tmp/nbd.ovl"]);
    assert_eq!(sh("cat /tmp/nbd-mnt/new.txt"), "changed\n");
    assert!(!std::path::Path::new("/tmp/nbd-mnt/data.bin").exists());
    t.ok(&["umount", "/tmp/nbd-mnt"]);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(repo_state(), before, "the repository changed");
    let v = t.ok(&["verify", "img", "--data"]);
    assert!(v.contains("0 problem(s)"), "{v}");

    // A mount process killed hard: umount of its mountpoint cleans up, and the next
    // mount works.
    let (mut child, _) = start_mount(&t, &["img", "/tmp/nbd-mnt"]);
    child.kill().unwrap();
    child.wait().unwrap();
    t.ok(&["umount", "/tmp/nbd-mnt"]);
    assert!(!is_mounted("/tmp/nbd-mnt"));
    let (mut child, line) = start_mount(&t, &["img", "/tmp/nbd-mnt"]);
    assert!(line.starts_with("mounted img (ro)"), "{line}");
    t.ok(&["umount", "/tmp/nbd-mnt"]);
    assert_eq!(child.wait().unwrap().code(), Some(0));

    // No file system: refused, nothing left attached or mounted.
    sh("head -c 8M /dev/urandom > /tmp/noise.img");
    t.ok(&["backup", "/tmp/noise.img", "--volume", "noise"]);
    let o = t.run(&["mount", "noise", "/tmp/nbd-mnt"]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert!(
        o.stderr.starts_with(
            "error: cannot mount noise on /tmp/nbd-mnt: cannot mount /dev/nbd0 on /tmp/nbd-mnt: "
        ) && o
            .stderr
            .contains("(does the image hold a file system this kernel knows?)"),
        "{}",
        o.show()
    );
    assert!(!is_mounted("/tmp/nbd-mnt"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!std::path::Path::new("/sys/block/nbd0/pid").exists());
}

/// `thinarc mount` of a partitioned image (an MBR written by sfdisk; ext4 in the second
/// partition, none in the first): without `--partition` it lists the partitions and
/// exits 2, leaving nothing attached or mounted; `--partition 2` mounts the file system.
fn nbd_partition_scenario() {
    let t = TempRepo::new();
    sh(
        "rm -rf /tmp/part-src && mkdir -p /tmp/part-src /tmp/nbd-mnt && echo second > /tmp/part-src/which.txt",
    );
    sh(
        "truncate -s 24M /tmp/part.img && printf 'start=2048, size=8192, type=83\\nstart=10240, size=38912, type=83\\n' | sfdisk -q /tmp/part.img",
    );
    // Partition 2 starts 10240 sectors (5 MiB) in and is 19 MiB long.
    sh("mkfs.ext4 -q -F -E offset=5242880 -d /tmp/part-src /tmp/part.img 19456k");
    t.ok(&["backup", "/tmp/part.img", "--volume", "part"]);

    let o = t.run(&["mount", "part", "/tmp/nbd-mnt"]);
    assert_eq!(o.code, Some(2), "{}", o.show());
    assert_eq!(
        o.stderr.trim_end(),
        "error: cannot mount part on /tmp/nbd-mnt: /dev/nbd0: the image is partitioned (1 4 MiB, 2 19 MiB): name one with --partition N"
    );
    assert!(!is_mounted("/tmp/nbd-mnt"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!std::path::Path::new("/sys/block/nbd0/pid").exists());

    let (mut child, line) = start_mount(&t, &["part", "/tmp/nbd-mnt", "--partition", "2"]);
    assert!(
        line.starts_with("mounted part (ro) on /tmp/nbd-mnt from /dev/nbd0p2"),
        "{line}"
    );
    assert_eq!(sh("cat /tmp/nbd-mnt/which.txt"), "second\n");
    t.ok(&["umount", "/tmp/nbd-mnt"]);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!is_mounted("/tmp/nbd-mnt"));
}
