//! `thinarc prune` end to end: the plan of a dry run, a prune that merges and folds,
//! exact messages for bad policies, an unknown volume and a corrupt archive in the
//! middle of the merged segment, and a held lock.

use crate::util::{TempRepo, assert_same_image, make_image, read, write};

const KIB: usize = 1 << 10;

/// Backs up five versions of one image into volume `v` (64 KiB blocks); returns them.
fn five_points(t: &TempRepo) -> Vec<Vec<u8>> {
    let src = t.path("v.img");
    let mut img = make_image(900 * KIB + 17, 3);
    let mut points = Vec::new();
    for i in 0..5u8 {
        if i > 0 {
            let at = usize::from(i) * 150 * KIB;
            img[at..at + 70 * KIB].fill(i);
            img.resize(img.len() + 20 * KIB, i);
        }
        write(&src, &img);
        t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
        points.push(img.clone());
    }
    points
}

fn restore_matches(t: &TempRepo, seq: u64, expected: &[u8]) {
    let out = t.path(&format!("out-{seq}.img"));
    t.ok(&[
        "restore",
        "v",
        out.to_str().unwrap(),
        "--at",
        &seq.to_string(),
    ]);
    assert_same_image(&read(&out), expected, &format!("seq {seq}"));
    std::fs::remove_file(out).unwrap();
}

#[test]
fn prune_keeps_the_newest_points_and_merges_the_rest() {
    let t = TempRepo::new();
    let points = five_points(&t);
    let plan = t.json(&["prune", "v", "--keep-last", "2", "--dry-run"]);
    let p = &plan[0];
    assert_eq!(p["dry_run"], true);
    let rows: Vec<(u64, bool, Option<u64>)> = p["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["seq"].as_u64().unwrap(),
                r["keep"].as_bool().unwrap(),
                r["new_parent"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, false, None),
            (2, false, None),
            (3, false, None),
            (4, true, None),
            (5, true, Some(4))
        ]
    );
    assert_eq!(p["points"][3]["rewrite"], "fold");
    assert_eq!(p["points"][3]["merged"], serde_json::json!([1, 2, 3, 4]));
    assert_eq!(
        p["points"][4]["reasons"],
        serde_json::json!(["newest", "last"])
    );
    assert_eq!(
        t.json(&["list", "v"]).as_array().unwrap().len(),
        5,
        "dry run"
    );
    // The human dry run names the plan.
    let text = t.ok(&["prune", "v", "--keep-last", "2", "--dry-run"]);
    assert!(text.starts_with("volume v (dry run):\n"), "{text}");
    assert!(
        text.contains("keep, fold as a full archive (archives of seq 1, 2, 3, 4)"),
        "{text}"
    );
    assert!(text.contains("would read at most"), "{text}");

    let done = t.json(&["prune", "v", "--keep-last", "2"]);
    assert_eq!(done[0]["merges"].as_array().unwrap().len(), 1);
    let list = t.json(&["list", "v"]);
    let seqs: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![4, 5]);
    assert_eq!(
        list[0]["parent"],
        serde_json::Value::Null,
        "seq 4 is a full archive now"
    );
    restore_matches(&t, 4, &points[3]);
    restore_matches(&t, 5, &points[4]);
    let gone = t.fails(&["restore", "v", t.path("x").to_str().unwrap(), "--at", "2"]);
    assert_eq!(
        gone,
        "error: restore of v to ".to_string()
            + t.path("x").to_str().unwrap()
            + " failed: volume v has no archive matching \"2\" (see `thinarc list v`)\n"
    );
}

#[test]
fn bad_policies_unknown_volumes_and_corrupt_archives_are_refused() {
    let t = TempRepo::new();
    five_points(&t);
    let o = t.run(&["prune", "v"]);
    assert_eq!(o.code, Some(2), "{}", o.show());
    // The library's check of a retention, as for a config's (tests/it/bad_names.rs).
    assert!(o.stderr.starts_with("error: the policy keeps nothing but the newest point: give at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within\n"), "{}", o.show());
    let o = t.run(&["prune", "v", "--keep-within", "7x"]);
    assert_eq!(o.code, Some(2));
    assert!(o.stderr.starts_with("error: invalid duration \"7x\": use numbers with units y, m, w, d, h (e.g. 7d, 1y6m, 36h)\n"), "{}", o.show());
    let o = t.run(&["prune", "v", "--keep-daily", "0"]);
    assert_eq!(o.code, Some(2));
    assert!(
        o.stderr.starts_with(
            "error: --keep-daily must be at least 1 (leave the option out to not use it)\n"
        ),
        "{}",
        o.show()
    );
    let o = t.run(&["prune", "nope", "--keep-last", "1"]);
    assert_eq!(o.code, Some(1));
    assert_eq!(
        o.stderr,
        "error: prune of nope failed: no volume named \"nope\" in the repository (known: v)\n"
    );

    // A flipped byte in the block data of seq 3, which `--keep-last 1` merges into 5.
    let dir = t.repo().join("volumes/v/archives");
    let name = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with("000000000003-"))
        .unwrap();
    let mut bytes = read(&dir.join(&name));
    // The frame of block 4, which seq 3 changed and no later point changes.
    let r = thinarc::format::ArchiveReader::open(&bytes).unwrap();
    let at = r
        .entries()
        .unwrap()
        .iter()
        .find_map(|e| match e.kind {
            thinarc::format::EntryKind::Data {
                frame_offset,
                frame_len,
                ..
            } if e.block == 4 => Some((frame_offset + u64::from(frame_len) / 2) as usize),
            _ => None,
        })
        .expect("seq 3 holds block 4");
    bytes[at] ^= 1;
    write(&dir.join(&name), &bytes);
    // The fold into seq 5 needs the damaged block: it is skipped with a warning, and
    // nothing it needs is dropped.
    let o = t.run(&["prune", "v", "--keep-last", "1"]);
    assert_eq!(o.code, Some(0), "{}", o.show());
    assert!(
        o.stderr.contains(&format!(
            "seq 5 was not rewritten, it needs damaged data (archive volumes/v/archives/{name}"
        )),
        "{}",
        o.show()
    );
    assert_eq!(
        t.json(&["list", "v"]).as_array().unwrap().len(),
        5,
        "nothing dropped"
    );
}

#[test]
fn a_held_lock_stops_prune_with_exit_code_3() {
    let t = TempRepo::new();
    five_points(&t);
    let lock = t
        .repo()
        .join("volumes/v/locks/99990101T000000.000000Z-0000000000000000");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(
        &lock,
        r#"{"volume":"v","host":"elsewhere","pid":42,"operation":"backup","started":"2026-11-23T10:00:00Z","ttl_seconds":600.0}"#,
    )
    .unwrap();
    let o = t.run(&["prune", "v", "--keep-last", "1"]);
    assert_eq!(o.code, Some(3), "{}", o.show());
    assert!(o.stderr.contains("elsewhere pid 42"), "{}", o.show());
    // A dry run needs no lock.
    t.ok(&["prune", "v", "--keep-last", "1", "--dry-run"]);
}

/// After a prune merged into a kept point (a new archive for its seq), `list` shows
/// a later point's parent as it resolves now, the one `restore` reads: the parent's
/// seq and its new archive, text and JSON; `built_on` keeps the archive the point was
/// built on.
#[test]
fn list_after_a_merging_prune_shows_the_parent_as_it_resolves_now() {
    let t = TempRepo::new();
    let points = five_points(&t);
    let before = t.json(&["list", "v"]);
    let old_four = before[3]["id"].as_str().unwrap().to_string();
    t.ok(&["prune", "v", "--keep-last", "2"]);
    let list = t.json(&["list", "v"]);
    let (four, five) = (&list[0], &list[1]);
    let new_four = four["id"].as_str().unwrap();
    assert_ne!(new_four, old_four, "the merge rewrote seq 4: {list}");
    assert_eq!(four["seq"], 4);
    assert_eq!(four["parent"], serde_json::Value::Null);
    assert_eq!(four["parent_seq"], serde_json::Value::Null);
    assert!(four.get("built_on").is_none(), "{list}");
    assert_eq!(five["seq"], 5);
    assert_eq!(five["parent"], new_four, "{list}");
    assert_eq!(five["parent_seq"], 4, "{list}");
    assert_eq!(five["built_on"], old_four.as_str(), "{list}");
    // Before the prune the parent was the archive it was built on: no `built_on`.
    assert_eq!(before[4]["parent"], old_four.as_str());
    assert_eq!(before[4]["parent_seq"], 4);
    assert!(before[4].get("built_on").is_none(), "{before}");

    let text = t.ok(&["list", "v"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with("  PARENT (SEQ ARCHIVE)"), "{text}");
    assert!(lines[1].ends_with("  -"), "{text}");
    assert!(lines[2].ends_with(&format!("  4 {new_four}")), "{text}");
    assert!(!text.contains(&old_four), "{text}");
    assert_eq!(lines.len(), 3, "{text}");
    // What list names is what restore reads.
    restore_matches(&t, 5, &points[4]);
}
