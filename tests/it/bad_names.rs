//! Bad nouns where they enter: `lvm:VG/LV` names that LVM would refuse and retention
//! policies that keep nothing or cannot be read are refused by the same parser from
//! the command line and from the config (`thinarc run`, before any work), with the same
//! message; both are usage errors (exit 2).

use crate::util::{TempRepo, thinarc_env, write};

/// Every class of bad `lvm:` source: (source, why).
fn bad_lvm_sources() -> Vec<(String, String)> {
    let long = format!("lvm:vg0/{}", "x".repeat(128));
    let rule = |why: &str| format!("{why} (lvm(8), VALID NAMES)");
    vec![
        (
            "lvm:vg0".into(),
            "an LVM source is written lvm:VG/LV".into(),
        ),
        (
            "lvm:vg0/".into(),
            "an LVM source is written lvm:VG/LV".into(),
        ),
        (
            "lvm:vg0/web/x".into(),
            "an LVM source is written lvm:VG/LV".into(),
        ),
        (
            "lvm:vg0/-web".into(),
            rule("LV name \"-web\" starts with '-'"),
        ),
        (
            "lvm:-vg0/web".into(),
            rule("VG name \"-vg0\" starts with '-'"),
        ),
        (
            "lvm:vg0/we b".into(),
            rule("LV name \"we b\" contains ' ': only letters, digits and + _ . - are allowed"),
        ),
        (
            "lvm:vg:0/web".into(),
            rule("VG name \"vg:0\" contains ':': only letters, digits and + _ . - are allowed"),
        ),
        ("lvm:vg0/..".into(), rule("LV name \"..\" is reserved")),
        ("lvm:./web".into(), rule("VG name \".\" is reserved")),
        (
            "lvm:vg0/snapshot-web".into(),
            rule("LV name \"snapshot-web\" starts with \"snapshot\", which LVM reserves"),
        ),
        (
            "lvm:vg0/pvmove1".into(),
            rule("LV name \"pvmove1\" starts with \"pvmove\", which LVM reserves"),
        ),
        (
            "lvm:vg0/web_tmeta".into(),
            rule(
                "LV name \"web_tmeta\" contains \"_tmeta\", which LVM reserves for its internal LVs",
            ),
        ),
        (
            "lvm:vg0/pool_rimage_0".into(),
            rule(
                "LV name \"pool_rimage_0\" contains \"_rimage\", which LVM reserves for its internal LVs",
            ),
        ),
        (
            long.clone(),
            rule(&format!(
                "LV name \"{}\"... (128 bytes) is longer than 127 characters",
                "x".repeat(60)
            )),
        ),
    ]
}

/// How clap quotes a value: in full, or its first 60 characters and its length.
fn quoted(value: &str) -> String {
    if value.len() > 60 {
        format!("{}... ({} bytes)", &value[..60], value.len())
    } else {
        value.to_string()
    }
}

#[test]
fn bad_lvm_names_are_usage_errors_on_the_command_line() {
    let t = TempRepo::new();
    for (source, why) in bad_lvm_sources() {
        let out = t.run(&["backup", &source]);
        assert_eq!(out.code, Some(2), "backup {source}: {}", out.show());
        assert_eq!(
            out.stderr.lines().next().unwrap(),
            format!(
                "error: invalid value '{}' for '<SOURCE>': {why}",
                quoted(&source)
            ),
            "{}",
            out.show()
        );
        let out = t.run(&["verify", "v", "--source", &source]);
        assert_eq!(
            out.code,
            Some(2),
            "verify --source {source}: {}",
            out.show()
        );
        assert_eq!(
            out.stderr.lines().next().unwrap(),
            format!(
                "error: invalid value '{}' for '--source <SOURCE>': {why}",
                quoted(&source)
            ),
            "{}",
            out.show()
        );
    }
    assert!(
        !t.repo().join("volumes").exists(),
        "nothing was written to the repository"
    );
}

/// Runs `thinarc run` over a config of one volume, `vg0/web`, whose source is
/// `source` (line 6, column 10) and whose table ends with `extra` (line 7).
fn run_config(t: &TempRepo, source: &str, extra: &str) -> (String, crate::util::Output) {
    let path = t.path("thinarc.toml");
    let text = format!(
        "state_dir = \"{state}\"\n[repositories.main]\nlocation = \"{repo}\"\n[[volumes]]\nname = \"vg0/web\"\nsource = \"{source}\"\n{extra}\n",
        state = t.path("state").display(),
        repo = t.location(),
    );
    write(&path, text.as_bytes());
    let cfg = path.display().to_string();
    let out = thinarc_env(&["run", "--config", &cfg], &[]);
    (cfg, out)
}

#[test]
fn bad_lvm_names_stop_run_at_config_load_before_any_work() {
    let t = TempRepo::new();
    for (source, why) in bad_lvm_sources() {
        let (cfg, out) = run_config(&t, &source, "");
        assert_eq!(out.code, Some(2), "{source}: {}", out.show());
        assert_eq!(
            out.stderr.trim_end(),
            format!(
                "error: {cfg}:6:10: volume vg0/web: source {}: {why}",
                thinarc::quote::excerpt(&source)
            ),
            "{}",
            out.show()
        );
        assert!(!t.path("state").exists(), "no run started: {source}");
    }
    assert!(!t.repo().join("volumes").exists(), "nothing was backed up");
}

#[test]
fn bad_retention_is_refused_with_one_message_from_prune_and_from_the_config() {
    let t = TempRepo::new();
    let img = t.path("web.img");
    write(&img, &crate::util::make_image(1 << 16, 7));
    for (flags, table, why) in [
        (
            vec![],
            "max_chain_length = 3",
            "the policy keeps nothing but the newest point: give at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within",
        ),
        (
            vec!["--keep-daily", "0"],
            "keep_daily = 0",
            "--keep-daily must be at least 1 (leave the option out to not use it)",
        ),
        (
            vec!["--keep-weekly", "2", "--keep-last", "0"],
            "keep_weekly = 2, keep_last = 0",
            "--keep-last must be at least 1 (leave the option out to not use it)",
        ),
        (
            vec!["--keep-within", "2 weeks"],
            "keep_within = \"2 weeks\"",
            "invalid duration \"2 weeks\": use numbers with units y, m, w, d, h (e.g. 7d, 1y6m, 36h)",
        ),
        (
            vec!["--keep-last", "1", "--max-chain-length", "0"],
            "keep_last = 1, max_chain_length = 0",
            "--max-chain-length must be at least 1 (leave the option out to not use it)",
        ),
    ] {
        let mut args = vec!["prune", "vg0/web"];
        args.extend(&flags);
        let out = t.run(&args);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.show());
        assert_eq!(
            out.stderr.lines().next().unwrap(),
            format!("error: {why}"),
            "{}",
            out.show()
        );
        let (cfg, out) = run_config(
            &t,
            &img.display().to_string(),
            &format!("retention = {{ {table} }}"),
        );
        assert_eq!(out.code, Some(2), "{table}: {}", out.show());
        assert_eq!(
            out.stderr.trim_end(),
            format!("error: {cfg}:7:13: volume vg0/web: retention: {why}"),
            "{}",
            out.show()
        );
        assert!(!t.path("state").exists(), "no run started: {table}");
    }
    assert!(!t.repo().join("volumes").exists(), "nothing was backed up");
}

/// Archive ids are checked where they enter: a commit marker whose id is not 32
/// lowercase hex digits is a corrupt marker (named, with the way back); a damage record
/// naming no valid archive id is not taken for one; a point selector that is no seq and
/// no id prefix is a usage error.
#[test]
fn bad_archive_ids_are_refused_where_they_enter() {
    let t = TempRepo::new();
    let img = t.path("v.img");
    write(&img, &crate::util::make_image(1 << 16, 11));
    let img = img.display().to_string();
    t.ok(&["-q", "backup", &img, "--volume", "v"]);
    t.ok(&["-q", "backup", &img, "--volume", "v"]);
    let marker = t.repo().join("volumes/v/commits/000000000002");
    let text = String::from_utf8(crate::util::read(&marker)).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let id = m["archive"].as_str().unwrap().to_string();

    // A damage record whose archive is no id: ignored (records are derived).
    let record = serde_json::json!({
        "archive": "not-an-id", "seq": 2, "object": m["object"], "kind": "archive",
        "blocks": [], "detail": "d", "found_at": "2026-11-30T00:00:00Z", "found_by": "verify",
    });
    let damage = t.repo().join("volumes/v/damage");
    std::fs::create_dir_all(&damage).unwrap();
    write(
        &damage.join("not-an-id"),
        &serde_json::to_vec(&record).unwrap(),
    );
    let l = t.run(&["list", "v"]);
    assert_eq!(l.code, Some(0), "{}", l.show());
    assert!(!l.stdout.contains("DAMAGED"), "{}", l.show());
    std::fs::remove_dir_all(&damage).unwrap();

    // The id of the marker spelled in upper case: corrupt, not another spelling.
    let upper = id.to_ascii_uppercase();
    write(
        &marker,
        text.replacen(
            &format!("\"archive\": \"{id}\""),
            &format!("\"archive\": \"{upper}\""),
            1,
        )
        .as_bytes(),
    );
    let l = t.run(&["list", "v"]);
    assert_eq!(l.code, Some(1), "{}", l.show());
    assert!(
        l.stdout.contains(&format!(
            "DAMAGED: commit marker volumes/v/commits/000000000002 is corrupt (archive \"{upper}\" is not 32 lowercase hex digits at line 2 column 47): run `thinarc repair v`"
        )),
        "{}",
        l.show()
    );
    let v = t.run(&["verify", "v"]);
    assert_eq!(v.code, Some(4), "{}", v.show());
    assert!(
        v.stdout.contains(&format!(
            "archive \"{upper}\" is not 32 lowercase hex digits"
        )),
        "{}",
        v.show()
    );

    let out = t.run(&[
        "restore",
        "v",
        t.path("x.img").to_str().unwrap(),
        "--at",
        "12345g",
    ]);
    assert_eq!(out.code, Some(2), "{}", out.show());
    assert_eq!(
        out.stderr.lines().next().unwrap(),
        "error: invalid value '12345g' for '--at <AT>': \"12345g\" is not `latest`, a sequence number or an archive id (in full, or a unique prefix of at least 6 hex digits)"
    );
    // An id prefix typed in upper case still names the point.
    t.ok(&["repair", "v"]);
    let at = id[..8].to_ascii_uppercase();
    let out = t.run(&[
        "restore",
        "v",
        t.path("y.img").to_str().unwrap(),
        "--at",
        &at,
    ]);
    assert_eq!(out.code, Some(0), "{}", out.show());
}
