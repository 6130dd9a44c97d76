//! Every documented exit code, asserted by number for each command that documents one
//! (README, *Using it*): 0 success, 1 failure, 2 usage, 3 a volume locked by another
//! run (backup, prune, copy) or another `thinarc run` going, 4 verify found problems;
//! bad input, wherever it is found, 2 (`bad_input_exits_2_naming_the_value`).
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

/// Bad input, everywhere the binary takes some: each value that cannot be what its
/// option asks for is a usage error (exit 2) whose first line names the value and what
/// is accepted, whether clap finds it (sizes, block sizes, selectors, names, targets,
/// addresses, locations, partitions) or the command does once it reads a file the
/// user wrote (a config, a changed-blocks list, a key file). Nothing runs.
#[test]
fn bad_input_exits_2_naming_the_value() {
    let (t, img) = one_point();
    let restored = t.path("r.img").display().to_string();
    let mnt = t.path("mnt").display().to_string();
    let cb = t.path("cb.txt");
    write(&cb, b"0 4096\n4096 lots\n");
    let cb = cb.display().to_string();
    let config = |name: &str, text: &str| {
        let p = t.path(name);
        write(&p, text.as_bytes());
        p.display().to_string()
    };
    let toml_syntax = config("syntax.toml", "[repositories\n");
    let unknown_key = config(
        "key.toml",
        "[repositories.main]\nlocation = \"/srv/r\"\ncolour = \"blue\"\n",
    );
    let bad_rate = config(
        "rate.toml",
        "read_limit = \"fast\"\n[repositories.main]\nlocation = \"/srv/r\"\n",
    );
    let bad_pattern = config(
        "pattern.toml",
        "[repositories.main]\nlocation = \"/srv/r\"\n[[volumes]]\nsource = \"lvm:vg0/web*[\"\n",
    );
    let invalid = |value: &str, arg: &str, why: &str| {
        format!("error: invalid value '{value}' for '{arg}': {why}")
    };
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["backup", &img, "--block-size", "3K"],
            invalid(
                "3K",
                "--block-size <SIZE>",
                "\"3K\" is not a power of two from 4K to 16M",
            ),
        ),
        (
            vec!["backup", &img, "--block-size", "32M"],
            invalid(
                "32M",
                "--block-size <SIZE>",
                "\"32M\" is not a power of two from 4K to 16M",
            ),
        ),
        (
            vec!["backup", &img, "--block-size", "64Q"],
            invalid(
                "64Q",
                "--block-size <SIZE>",
                "\"64Q\" has an unknown unit (use K, M, G or T)",
            ),
        ),
        (
            vec!["backup", &img, "--dry-run"],
            "error: --dry-run applies to lvm:VG/LV sources only".into(),
        ),
        (
            vec!["backup", &img, "--changed-blocks", &cb],
            format!("error: {cb}:2: length \"lots\" is not a number"),
        ),
        (
            vec!["restore", "v", "lvm:vg0/-x"],
            invalid(
                "lvm:vg0/-x",
                "<TARGET>",
                "LV name \"-x\" starts with '-' (lvm(8), VALID NAMES)",
            ),
        ),
        (
            vec!["restore", "v", "lvm:vg0"],
            invalid("lvm:vg0", "<TARGET>", "an LVM target is written lvm:VG/LV"),
        ),
        (
            vec!["restore", "v", "lvm:vg0/r", "--create", "--pool", "vg0//p"],
            invalid("vg0//p", "--pool <POOL>", "\"vg0//p\" is not VG/LV"),
        ),
        (
            vec!["restore", "v", "lvm:vg0/r", "--create", "--pool", "p_tdata"],
            invalid(
                "p_tdata",
                "--pool <POOL>",
                "LV name \"p_tdata\" contains \"_tdata\", which LVM reserves for its internal LVs (lvm(8), VALID NAMES)",
            ),
        ),
        (
            vec!["restore", "v", &restored, "--pool", "p"],
            "error: --create, --pool, --size and --no-readback apply to lvm:VG/LV targets only"
                .into(),
        ),
        (
            vec!["restore", "v", &restored, "--at", "v1"],
            invalid(
                "v1",
                "--at <AT>",
                "\"v1\" is not `latest`, a sequence number or an archive id (in full, or a unique prefix of at least 6 hex digits)",
            ),
        ),
        (
            vec!["serve", "v", "--listen", "localhost"],
            invalid(
                "localhost",
                "--listen <[HOST:]PORT>",
                "\"localhost\" is not PORT or HOST:PORT (a port from 0 to 65535)",
            ),
        ),
        (
            vec!["serve", "v", "--listen", "65536"],
            invalid(
                "65536",
                "--listen <[HOST:]PORT>",
                "\"65536\" is not PORT or HOST:PORT (a port from 0 to 65535)",
            ),
        ),
        (
            vec!["serve", "v", "--socket", "/tmp/never.sock", "--cache", "lots"],
            invalid(
                "lots",
                "--cache <SIZE>",
                "\"lots\" is not a size (e.g. 65536, 64K, 1M)",
            ),
        ),
        (
            vec!["mount", "v", &mnt, "--partition", "0"],
            invalid("0", "--partition <N>", "0 is not in 1..=4294967295"),
        ),
        (
            vec!["copy", "--to", "s3://"],
            invalid(
                "s3://",
                "--to <DEST>",
                "no bucket name (use s3://BUCKET/PREFIX)",
            ),
        ),
        (
            vec!["--read-limit", "fast", "list"],
            invalid(
                "fast",
                "--read-limit <RATE>",
                "\"fast\" is not a rate (bytes per second, e.g. 50M or 50M/s)",
            ),
        ),
        (
            vec!["prune", "--keep-within", "7x"],
            "error: invalid duration \"7x\": use numbers with units y, m, w, d, h (e.g. 7d, 1y6m, 36h)"
                .into(),
        ),
        (
            vec!["run", "--config", &toml_syntax],
            format!("error: {toml_syntax}:1:14: unclosed table, expected `]`"),
        ),
        (
            vec!["run", "--config", &unknown_key],
            format!(
                "error: {unknown_key}:3:1: unknown field `colour`, expected one of `location`, `password_file`, `password_command`, `identity_file`, `writer_key_file`"
            ),
        ),
        (
            vec!["run", "--config", &bad_rate],
            format!("error: {bad_rate}:1:14: \"fast\" is not a rate (bytes per second, e.g. 50M or 50M/s)"),
        ),
        (
            vec!["run", "--config", &bad_pattern],
            format!(
                "error: {bad_pattern}:4:10: source \"lvm:vg0/web*[\": LV pattern \"web*[\" contains '[': use letters, digits, + _ . - and the wildcards * and ?"
            ),
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(args, first_line)| {
            let out = t.run(args);
            let line = out.stderr.lines().next().unwrap_or_default();
            (out.code != Some(2) || line != first_line).then(|| {
                format!(
                    "{args:?}\n  expected 2: {first_line}\n  got {:?}: {line}",
                    out.code
                )
            })
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        t.json(&["list", "v"]).as_array().map(Vec::len),
        Some(1),
        "no bad input wrote a point"
    );
    // The repository's location (TempRepo passes its own -r).
    let out = crate::util::thinarc(&["-r", "ftp://host/repo", "list"]);
    assert_eq!(out.code, Some(2), "{}", out.show());
    assert_eq!(
        out.stderr.lines().next(),
        Some(
            invalid(
                "ftp://host/repo",
                "--repo <REPO>",
                "unsupported scheme \"ftp\" (use a path, file:// or s3:// URL)",
            )
            .as_str()
        ),
        "{}",
        out.show()
    );

    // Key material given that is not key material.
    let e = crate::util::TempRepo::uninit().with_env("THINARC_PASSWORD", "pw");
    e.ok(&["init"]);
    let not_a_key = config("not-a-key.txt", "hello\n");
    for (args, first_line) in [
        (
            vec!["--identity", &not_a_key, "restore", "v", &restored],
            format!(
                "error: identity file {not_a_key}: line 1 is not an age X25519 identity (AGE-SECRET-KEY-1…)"
            ),
        ),
        (
            vec!["--writer-key", &not_a_key, "backup", &img, "--volume", "v"],
            format!("error: writer key file {not_a_key}: line 1 is not `name = value`"),
        ),
        (
            vec!["key", "add", "--recipient", "age1nope"],
            "error: \"age1nope\" is not an age X25519 recipient (age1…)".into(),
        ),
    ] {
        let out = assert_exit(&e, &args, 2);
        assert_eq!(
            out.stderr.lines().next(),
            Some(first_line.as_str()),
            "{args:?}: {}",
            out.show()
        );
    }
}

/// Input that is well formed but names nothing that exists is a failure (exit 1), not
/// a usage error: the command could not find what it was told to use.
#[test]
fn well_formed_input_naming_nothing_exits_1() {
    let (t, img) = one_point();
    let restored = t.path("r.img").display().to_string();
    let missing = t.path("missing").display().to_string();
    for (args, first_line) in [
        (
            vec!["restore", "v", &restored, "--at", "99"],
            format!(
                "error: restore of v to {restored} failed: volume v has no archive matching \"99\" (see `thinarc list v`)"
            ),
        ),
        (
            vec!["restore", "nope", &restored],
            format!(
                "error: restore of nope to {restored} failed: no volume named \"nope\" in the repository (known: v)"
            ),
        ),
        (
            vec!["list", "nope"],
            "error: no volume named \"nope\" in the repository (known: v)".to_string(),
        ),
        (
            vec!["repair", "nope"],
            "error: no volume named \"nope\" in the repository (known: v)".to_string(),
        ),
        (
            vec!["run", "--config", &missing],
            format!("error: cannot read config {missing}: No such file or directory (os error 2)"),
        ),
        (
            vec![
                "backup",
                &img,
                "--volume",
                "v",
                "--changed-blocks",
                &missing,
            ],
            format!(
                "error: cannot read --changed-blocks {missing}: No such file or directory (os error 2)"
            ),
        ),
        (
            vec!["backup", &img, "--volume", "v", "--block-size", "8K"],
            format!(
                "error: backup of {img} to volume v failed: volume v uses block size 65536; --block-size 8192 cannot change it"
            ),
        ),
    ] {
        let out = assert_exit(&t, &args, 1);
        let error = out.stderr.lines().find(|l| l.starts_with("error: "));
        assert_eq!(error, Some(first_line.as_str()), "{args:?}: {}", out.show());
    }
}
