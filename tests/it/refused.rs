//! Bad input leaves nothing behind: a command refused for an unknown volume or point,
//! a bad path or a bad option creates no repository, target, overlay or socket (the
//! fault family of `copy` creating its destination before finding the volume
//! unknown).

use std::path::Path;

use crate::util::{TempRepo, make_image, write};

/// A repository (encrypted with passphrase `x` when `encrypted`) holding one point of
/// volume `v`.
fn one_point(encrypted: bool) -> TempRepo {
    let t = TempRepo::uninit().with_env("THINARC_PASSWORD", "x");
    if encrypted {
        t.ok(&["init"]);
    } else {
        t.ok(&["init", "--no-encryption"]);
    }
    let src = t.path("src.img");
    write(&src, &make_image(200 << 10, 7));
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    t
}

/// Runs `args`, asserts exit code `code` and the error line `error`.
fn refused(t: &TempRepo, args: &[&str], code: i32, error: &str) {
    let o = t.run(args);
    assert_eq!(o.code, Some(code), "{args:?}: {}", o.show());
    assert_eq!(o.stderr, format!("error: {error}\n"), "{args:?}");
}

fn absent(path: &Path) {
    assert!(!path.exists(), "{} was left behind", path.display());
}

#[test]
fn copy_of_an_unknown_volume_or_point_creates_no_destination() {
    for encrypted in [false, true] {
        let t = one_point(encrypted);
        let dest = t.path("dest");
        let d = dest.to_str().unwrap();
        refused(
            &t,
            &["copy", "--to", d, "nope"],
            1,
            "no volume named \"nope\" in the repository (known: v)",
        );
        absent(&dest);
        for consolidate in [false, true] {
            let mut args = vec!["copy", "--to", d, "v", "--at", "9"];
            if consolidate {
                args.push("--consolidate");
            }
            refused(
                &t,
                &args,
                1,
                "volume v has no archive matching \"9\" (see `thinarc list v`)",
            );
            absent(&dest);
        }
        // The same copy of a known point creates it.
        let out = t.ok(&["copy", "--to", d, "v", "--at", "1"]);
        assert!(
            out.starts_with(&format!("created thinarc repository at {d}\n")),
            "{out}"
        );
        assert!(dest.join("config").exists());
    }
}

/// `run` with a copy of a volume whose first backup failed (its source is missing):
/// the copy step fails its check, and the destination is not created, plain or
/// encrypted (`run` used to create an encrypted destination while unlocking, before
/// any copy was checked). Once the volume has a point, the next run creates it.
#[test]
fn run_whose_copy_fails_its_check_creates_no_destination() {
    for encrypted in [false, true] {
        let t = one_point(encrypted);
        let dest = t.path("dest");
        let missing = t.path("missing.img");
        let config = t.path("thinarc.toml");
        write(
            &config,
            format!(
                "state_dir = \"{}\"\n[repositories.main]\nlocation = \"{}\"\n[[volumes]]\nname = \"w\"\nsource = \"{}\"\n[[copies]]\nto = \"{}\"\nretention = {{ keep_last = 1 }}\n",
                t.path("state").display(),
                t.location(),
                missing.display(),
                dest.display()
            )
            .as_bytes(),
        );
        let run = || {
            let o = crate::util::thinarc_env(
                &["run", "--config", config.to_str().unwrap(), "--json"],
                &t.env_pairs(),
            );
            let steps: serde_json::Value =
                serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", o.show()));
            (o.code, steps)
        };
        let (code, steps) = run();
        assert_eq!(code, Some(1), "{steps}");
        assert_eq!(steps[1]["operation"], "copy", "{steps}");
        assert_eq!(steps[1]["ok"], false, "{steps}");
        assert_eq!(
            steps[1]["detail"], "no volume named \"w\" in the repository (known: v)",
            "{steps}"
        );
        absent(&dest);
        // The volume's first point: the copy creates its destination, encrypted
        // with the source's key when the source is encrypted.
        write(&missing, &make_image(100 << 10, 8));
        let (code, steps) = run();
        assert_eq!(code, Some(0), "{steps}");
        // Copied, then pruned by its own retention with the key it was created with.
        let ops: Vec<&str> = steps
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["operation"].as_str().unwrap())
            .collect();
        assert_eq!(ops, ["backup", "copy", "prune"], "{steps}");
        assert!(steps[2]["ok"].as_bool().unwrap(), "{steps}");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dest.join("config")).unwrap()).unwrap();
        assert_eq!(config["encryption"].is_object(), encrypted, "{config}");
    }
}

#[test]
fn serve_with_a_bad_socket_or_point_creates_no_overlay_or_socket() {
    let t = one_point(false);
    let overlay = t.path("v.ovl");
    let map = t.path("v.ovl.map");
    let socket = t.path("v.sock");
    let (o, s) = (overlay.to_str().unwrap(), socket.to_str().unwrap());
    let nodir = t.path("nodir/v.sock");
    refused(
        &t,
        &[
            "serve",
            "v",
            "--socket",
            nodir.to_str().unwrap(),
            "--overlay",
            o,
        ],
        1,
        &format!(
            "cannot serve v: cannot listen on socket {}: No such file or directory (os error 2)",
            nodir.display()
        ),
    );
    refused(
        &t,
        &["serve", "v", "--at", "9", "--socket", s, "--overlay", o],
        1,
        "cannot serve v: volume v has no archive matching \"9\" (see `thinarc list v`)",
    );
    refused(
        &t,
        &["serve", "nope", "--socket", s, "--overlay", o],
        1,
        "cannot serve nope: no volume named \"nope\" in the repository (known: v)",
    );
    for p in [&overlay, &map, &socket] {
        absent(p);
    }
}

#[test]
fn restore_backup_and_init_refused_leave_no_target_volume_or_repository() {
    let t = one_point(false);
    let out = t.path("out.img");
    let o = out.to_str().unwrap();
    refused(
        &t,
        &["restore", "v", "--at", "9", o],
        1,
        &format!(
            "restore of v to {o} failed: volume v has no archive matching \"9\" (see `thinarc list v`)"
        ),
    );
    refused(
        &t,
        &["restore", "v", "--since", "9", o],
        1,
        &format!(
            "restore of v to {o} failed: volume v has no archive matching \"9\" (see `thinarc list v`)"
        ),
    );
    refused(
        &t,
        &["restore", "nope", o],
        1,
        &format!(
            "restore of nope to {o} failed: no volume named \"nope\" in the repository (known: v)"
        ),
    );
    absent(&out);
    let src = t.path("src.img");
    let o = t.run(&["backup", src.to_str().unwrap(), "--volume", "bad name"]);
    assert_eq!(o.code, Some(2), "{}", o.show());
    let volumes: Vec<_> = std::fs::read_dir(t.repo().join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(volumes, ["v"], "only the volume backed up");
    // A repository that is not there is not created by a backup, nor by a bad init.
    let fresh = TempRepo::uninit();
    let o = fresh.run(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    refused(
        &fresh,
        &["init", "--recipient", "bogus"],
        2,
        "\"bogus\" is not an age X25519 recipient (age1…)",
    );
    refused(
        &fresh,
        &["init", "--password-file", "/nonexistent"],
        1,
        "init creates an encrypted repository: give its passphrase, or --recipient age1…, or --no-encryption: cannot read password file /nonexistent: No such file or directory (os error 2)",
    );
    absent(&fresh.repo());
}
