//! End-to-end tests of the `thinarc` binary on real files and a local repository.

use crate::util::{TempRepo, assert_same_image, make_image, read, write};

const MIB: usize = 1 << 20;

/// Backs up `img` as written at `path`, returning the `backup --json` object.
pub fn backup(t: &TempRepo, path: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let p = path.display().to_string();
    let mut args = vec!["backup", p.as_str(), "--volume", "vm/disk"];
    args.extend_from_slice(extra);
    t.json(&args)
}

#[test]
fn full_scan_and_changed_block_deltas_restore_every_point() {
    chain_scenario(&TempRepo::new());
}

/// A chain of full, scan and changed-blocks deltas with growth and shrinking; every
/// point restores byte for byte. Run against every kind of store.
pub fn chain_scenario(t: &TempRepo) {
    let src = t.path("disk.img");
    let mut img = make_image(6 * MIB + 1234, 1);
    let mut points = Vec::new();

    write(&src, &img);
    let full = backup(t, &src, &[]);
    assert_eq!(full["kind"], "full");
    assert_eq!(full["seq"], 1);
    assert_eq!(full["parent"], serde_json::Value::Null);
    points.push(img.clone());

    // A scan delta records exactly the blocks that changed.
    img[100_000..100_010].copy_from_slice(b"0123456789");
    img[3 * MIB..3 * MIB + 70_000].fill(7);
    img[3 * MIB + 8192..3 * MIB + 70_000].fill(0);
    write(&src, &img);
    let d1 = backup(t, &src, &[]);
    assert_eq!(d1["kind"], "delta");
    assert_eq!(d1["method"], "scan");
    assert_eq!(d1["parent"], full["archive"]);
    assert_eq!(
        d1["bytes_read"],
        img.len() as u64,
        "a scan reads the whole non-sparse source"
    );
    let changed_blocks = img
        .chunks(65536)
        .zip(points[0].chunks(65536))
        .filter(|(a, b)| a != b)
        .count();
    assert!(changed_blocks >= 2);
    assert_eq!(d1["blocks_changed"], changed_blocks as u64);
    points.push(img.clone());

    // A changed-blocks delta reads only the listed ranges.
    img[5 * MIB..5 * MIB + 10].copy_from_slice(b"abcdefghij");
    write(&src, &img);
    let list = t.path("changed.txt");
    write(
        &list,
        format!("# offset length\n{} 10\n", 5 * MIB).as_bytes(),
    );
    let d2 = backup(t, &src, &["--changed-blocks", list.to_str().unwrap()]);
    assert_eq!(d2["method"], "changed-blocks");
    assert_eq!(d2["bytes_read"], 65536);
    assert_eq!(d2["blocks_changed"], 1);
    points.push(img.clone());

    // Growth and shrinking, including a partial last block.
    img.extend(make_image(MIB + 77, 2));
    write(&src, &img);
    backup(t, &src, &[]);
    points.push(img.clone());
    img.truncate(2 * MIB + 5);
    write(&src, &img);
    backup(t, &src, &[]);
    points.push(img.clone());
    img.extend(vec![0u8; 3 * MIB]);
    write(&src, &img);
    let grown = backup(t, &src, &[]);
    assert_eq!(grown["size"], img.len() as u64);
    points.push(img.clone());

    for (i, expected) in points.iter().enumerate() {
        let out = t.path(&format!("restore-{i}.img"));
        let seq = (i + 1).to_string();
        let r = t.json(&["restore", "vm/disk", out.to_str().unwrap(), "--at", &seq]);
        assert_eq!(r["seq"], i as u64 + 1);
        assert_same_image(&read(&out), expected, &format!("point {}", i + 1));
    }
    // `latest` is the default, and an archive id prefix selects a point too.
    let out = t.path("latest.img");
    t.ok(&["restore", "vm/disk", out.to_str().unwrap()]);
    assert_same_image(&read(&out), points.last().unwrap(), "latest");
    let id = d1["archive"].as_str().unwrap();
    let out = t.path("by-id.img");
    t.ok(&[
        "restore",
        "vm/disk",
        out.to_str().unwrap(),
        "--at",
        &id[..10],
    ]);
    assert_same_image(&read(&out), &points[1], "by id prefix");
}

#[test]
fn list_json_describes_every_point() {
    list_scenario(&TempRepo::new());
}

/// `list --json` and `backup --json` agree on every field. Run against every store.
pub fn list_scenario(t: &TempRepo) {
    let src = t.path("a.img");
    let mut img = make_image(MIB, 3);
    write(&src, &img);
    let full = t.json(&["backup", src.to_str().unwrap(), "--block-size", "16K"]);
    img[0] ^= 1;
    write(&src, &img);
    let delta = t.json(&["backup", src.to_str().unwrap()]);
    let list = t.json(&["list", "a.img"]);
    let rows = list.as_array().expect("array");
    assert_eq!(rows.len(), 2);
    for (row, b) in rows.iter().zip([&full, &delta]) {
        assert_eq!(row["volume"], "a.img");
        assert_eq!(row["id"], b["archive"]);
        assert_eq!(row["seq"], b["seq"]);
        assert_eq!(row["size"], MIB as u64);
        assert_eq!(row["block_size"], 16384);
        assert_eq!(row["blocks"], b["blocks_changed"]);
        assert_eq!(row["stored_bytes"], b["stored_bytes"]);
        assert_eq!(row["image_digest"], b["image_digest"]);
        let created = row["created"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(created).is_ok(),
            "created {created:?}"
        );
    }
    assert_eq!(rows[0]["parent"], serde_json::Value::Null);
    assert_eq!(rows[1]["parent"], full["archive"]);
    let text = t.ok(&["list"]);
    assert!(text.contains(full["archive"].as_str().unwrap()), "{text}");
}

#[test]
fn sparse_source_is_read_by_data_extents_only() {
    sparse_scenario(&TempRepo::new());
}

/// A sparse source is read by data extents and restores sparse. Run against every store.
pub fn sparse_scenario(t: &TempRepo) {
    let src = t.path("sparse.img");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(256 * MIB as u64).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &make_image(MIB, 4), 100 * MIB as u64).unwrap();
    drop(f);
    let full = t.json(&["backup", src.to_str().unwrap()]);
    assert!(
        full["bytes_read"].as_u64().unwrap() <= 2 * MIB as u64,
        "read {} of a sparse file",
        full["bytes_read"]
    );
    let out = t.path("out.img");
    t.ok(&["restore", "sparse.img", out.to_str().unwrap()]);
    assert_same_image(&read(&out), &read(&src), "sparse restore");
    let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&out).unwrap()) * 512;
    assert!(
        allocated < 4 * MIB as u64,
        "new target should stay sparse, {allocated} bytes allocated"
    );
}

#[test]
fn restore_onto_existing_file_zeroes_what_must_be_zero() {
    existing_target_scenario(&TempRepo::new());
}

/// Restoring onto an existing file zeroes what must read zero. Run against every store.
pub fn existing_target_scenario(t: &TempRepo) {
    let src = t.path("z.img");
    let mut img = make_image(2 * MIB, 5);
    img[..MIB].fill(0);
    write(&src, &img);
    t.ok(&["backup", src.to_str().unwrap()]);
    let out = t.path("existing.img");
    let mut junk = vec![0xAAu8; 3 * MIB];
    junk[5] = 1;
    write(&out, &junk);
    t.ok(&["restore", "z.img", out.to_str().unwrap()]);
    assert_same_image(&read(&out), &img, "existing target");
}

#[test]
fn bad_input_is_rejected_with_clear_errors() {
    bad_input_scenario(&TempRepo::new());
}

/// Each bad input gets a clear error and loses nothing. Run against every store.
pub fn bad_input_scenario(t: &TempRepo) {
    let src = t.path("v.img");
    write(&src, &make_image(MIB, 6));

    let e = t.fails(&["backup", t.path("missing.img").to_str().unwrap()]);
    assert!(
        e.contains("cannot open source") && e.contains("missing.img"),
        "{e}"
    );

    let e = t.fails(&["backup", t.dir.path().to_str().unwrap(), "--volume", "x"]);
    assert!(
        e.contains("is a directory, not a regular file or block device"),
        "{e}"
    );

    let e = t.fails(&["backup", src.to_str().unwrap(), "--block-size", "3000"]);
    assert!(
        e.contains("\"3000\" is not a power of two from 4K to 16M"),
        "{e}"
    );

    let e = t.fails(&["backup", src.to_str().unwrap(), "--volume", "a//b"]);
    assert!(e.contains("invalid volume name \"a//b\""), "{e}");

    let cb = t.path("cb.txt");
    write(&cb, b"0 4096\nfoo bar\n");
    let e = t.fails(&[
        "backup",
        src.to_str().unwrap(),
        "--changed-blocks",
        cb.to_str().unwrap(),
    ]);
    assert!(
        e.contains("cb.txt:2: offset \"foo\" is not a number"),
        "{e}"
    );

    write(&cb, b"0 4096\n");
    let e = t.fails(&[
        "backup",
        src.to_str().unwrap(),
        "--changed-blocks",
        cb.to_str().unwrap(),
    ]);
    assert!(
        e.contains("volume v.img has no backup yet: --changed-blocks needs a previous point"),
        "{e}"
    );

    t.ok(&["backup", src.to_str().unwrap()]);
    write(&cb, format!("0 10\n{MIB} 4096\n").as_bytes());
    let e = t.fails(&[
        "backup",
        src.to_str().unwrap(),
        "--changed-blocks",
        cb.to_str().unwrap(),
    ]);
    assert!(
        e.contains(&format!("--changed-blocks {}:2: range {MIB}+4096 lies past the end of the source ({MIB} bytes): is the list for this source?", cb.display())),
        "{e}"
    );
    let e = t.fails(&["backup", src.to_str().unwrap(), "--block-size", "4K"]);
    assert!(
        e.contains("volume v.img uses block size 65536; --block-size 4096 cannot change it"),
        "{e}"
    );

    let out = t.path("o.img");
    let e = t.fails(&["restore", "v.img", out.to_str().unwrap(), "--at", "7"]);
    assert!(
        e.contains("volume v.img has no archive matching \"7\""),
        "{e}"
    );
    let e = t.fails(&[
        "restore",
        "v.img",
        out.to_str().unwrap(),
        "--at",
        "deadbeef",
    ]);
    assert!(e.contains("no archive matching \"deadbeef\""), "{e}");
    let e = t.fails(&[
        "restore",
        "v.img",
        out.to_str().unwrap(),
        "--at",
        "yesterday",
    ]);
    assert!(
        e.contains("\"yesterday\" is not `latest`, a sequence number or an archive id"),
        "{e}"
    );
    let e = t.fails(&["restore", "nope", out.to_str().unwrap()]);
    assert!(
        e.contains("no volume named \"nope\" in the repository (known: v.img)"),
        "{e}"
    );
    assert!(
        !out.exists(),
        "a failed restore must not leave a target behind"
    );

    let small = t.path("small.img");
    write(&small, &[1u8; 1000]);
    let e = t.fails(&["restore", "v.img", small.to_str().unwrap()]);
    assert!(
        e.contains(&format!(
            "target {} is 1000 bytes, the volume needs {MIB}",
            small.display()
        )),
        "{e}"
    );
    assert_eq!(
        read(&small),
        vec![1u8; 1000],
        "a refused target is untouched"
    );

    let e = t.fails(&["restore", "v.img", src.to_str().unwrap()]);
    assert!(
        e.contains("is the source of volume v.img") && e.contains("--force"),
        "{e}"
    );

    let e = t.fails(&["init", "--no-encryption"]);
    assert!(e.contains("a thinarc repository already exists at"), "{e}");
}

#[test]
fn repository_errors_name_the_location() {
    let t = TempRepo::uninit();
    let e = t.fails(&["list"]);
    assert!(
        e.contains(&format!("no thinarc repository at {}", t.repo().display())),
        "{e}"
    );
    assert!(e.contains("init"), "{e}");

    std::fs::create_dir(t.repo()).unwrap();
    write(&t.repo().join("config"), b"{\"hello\": 1}");
    let e = t.fails(&["list"]);
    assert!(e.contains("is not a thinarc repository"), "{e}");

    let o = crate::util::thinarc(&["list"]);
    assert!(
        !o.success
            && o.stderr
                .contains("no repository given: pass -r REPO or set THINARC_REPO"),
        "{}",
        o.show()
    );

    // A URL mistyped without "//" is refused, never taken as a local directory.
    let dir = tempfile::tempdir().expect("tempdir");
    for location in ["s3:/bucket/x", "s3:bucket", "file:relative", "S3:/bucket"] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_thinarc"))
            .current_dir(dir.path())
            .args(["-r", location, "init", "--no-encryption"])
            .env("THINARC_STATE_DIR", dir.path().join("state"))
            .output()
            .expect("run thinarc");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{location}: {stderr}");
        assert!(
            stderr.contains("looks like a URL scheme without \"//\""),
            "{location}: {stderr}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path())
                .expect("list")
                .filter(|e| e.as_ref().is_ok_and(|e| e.file_name() != "state"))
                .count(),
            0,
            "{location}: no repository directory is created"
        );
    }

    let o = crate::util::thinarc(&["-r", "ftp://x/y", "list"]);
    assert!(
        !o.success && o.stderr.contains("unsupported scheme \"ftp\""),
        "{}",
        o.show()
    );
}

#[test]
fn unwritable_repository_fails_and_commits_nothing() {
    if unsafe { libc::geteuid() } == 0 {
        // Root ignores directory permissions; use an immutable-free trick instead:
        // replace the volume's archives folder with a file so the upload cannot start.
        let t = TempRepo::new();
        let src = t.path("w.img");
        write(&src, &make_image(MIB, 7));
        std::fs::create_dir_all(t.repo().join("volumes/w.img")).unwrap();
        write(&t.repo().join("volumes/w.img/archives"), b"not a directory");
        let e = t.fails(&["backup", src.to_str().unwrap()]);
        assert!(e.contains("backup of") && e.contains("failed"), "{e}");
        assert!(
            !t.repo().join("volumes/w.img/commits").exists(),
            "nothing may be committed"
        );
        return;
    }
    let t = TempRepo::new();
    let src = t.path("w.img");
    write(&src, &make_image(MIB, 7));
    let mut perms = std::fs::metadata(t.repo()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o500);
    std::fs::set_permissions(t.repo(), perms).unwrap();
    let e = t.fails(&["backup", src.to_str().unwrap()]);
    assert!(e.contains("failed"), "{e}");
}

#[test]
fn corrupt_archive_fails_restore_and_list_naming_it_other_volumes_unaffected() {
    let t = TempRepo::new();
    let a = t.path("a.img");
    let b = t.path("b.img");
    write(&a, &make_image(MIB, 8));
    write(&b, &make_image(MIB, 9));
    t.ok(&["backup", a.to_str().unwrap()]);
    t.ok(&["backup", b.to_str().unwrap()]);
    let dir = t.repo().join("volumes/a.img/archives");
    let archive = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let name = archive.file_name().unwrap().to_str().unwrap().to_string();

    // A flipped byte in block data: restore fails naming the archive and block, and
    // leaves no target behind.
    let mut bytes = read(&archive);
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x40;
    write(&archive, &bytes);
    let out = t.path("out.img");
    let e = t.fails(&["restore", "a.img", out.to_str().unwrap()]);
    assert!(e.contains(&name), "{e}");
    assert!(!out.exists());
    bytes[mid] ^= 0x40;

    // A truncated archive: list and restore name it; volume b still lists and restores.
    write(&archive, &bytes[..bytes.len() - 100]);
    let e = t.fails(&["restore", "a.img", out.to_str().unwrap()]);
    assert!(e.contains(&name) && e.contains("is truncated: "), "{e}");
    let o = t.run(&["list", "--json"]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert!(
        o.stderr.contains("a.img have damaged points"),
        "{}",
        o.show()
    );
    let rows: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(rows[0]["volume"], "a.img");
    let damage = rows[0]["damage"].as_str().unwrap();
    assert!(
        damage.contains(&name) && damage.contains("is truncated: "),
        "{damage}"
    );
    assert_eq!(rows[1]["volume"], "b.img");
    assert!(rows[1].get("damage").is_none(), "{rows}");
    let out_b = t.path("out-b.img");
    t.ok(&["restore", "b.img", out_b.to_str().unwrap()]);
    assert_same_image(&read(&out_b), &read(&b), "volume b");
}

#[tokio::test]
async fn source_that_changes_size_mid_read_commits_nothing() {
    use std::sync::Arc;
    use thinarc::backup::{BackupOptions, backup};
    use thinarc::repo::{Repository, VolumeName};
    use thinarc::source::RawSource;

    let t = TempRepo::new();
    let loc = t.repo().display().to_string();
    let repo = Repository::open_location(&loc).await.unwrap();
    let volume = VolumeName::new("s").unwrap();
    let src = t.path("s.img");
    for (before, after) in [(4 * MIB, MIB), (MIB, 4 * MIB)] {
        write(&src, &make_image(before, 10));
        let source = RawSource::open(&src).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&src)
            .unwrap()
            .set_len(after as u64)
            .unwrap();
        let e = backup(
            &repo,
            source,
            &BackupOptions::new(volume.clone()),
            Arc::default(),
        )
        .await
        .unwrap_err();
        let expected = format!(
            "changed size during the backup ({before} -> {after} bytes); nothing was committed"
        );
        assert!(e.to_string().contains(&expected), "{e}");
        assert!(
            repo.commits(&volume).await.unwrap().is_empty(),
            "the failed run committed nothing"
        );
    }
}

#[test]
fn leftovers_of_interrupted_runs_are_ignored_then_removed_after_the_grace_period() {
    let t = TempRepo::new();
    let src = t.path("l.img");
    write(&src, &make_image(MIB, 12));
    t.ok(&["backup", src.to_str().unwrap()]);
    let dir = t.repo().join("volumes/l.img/archives");
    let old_orphan = dir.join("000000000002-0123456789abcdef0123456789abcdef.tarc");
    let old_staging = dir.join("000000000002-0123456789abcdef0123456789abcdef.tarc#1");
    let fresh_partial = dir.join("000000000001-fedcba9876543210fedcba9876543210.tarc");
    let fresh_orphan = dir.join("000000000009-fedcba9876543210fedcba9876543210.tarc");
    for f in [&old_orphan, &old_staging, &fresh_partial, &fresh_orphan] {
        write(f, b"half an archive");
    }
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for f in [&old_orphan, &old_staging] {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
    }
    // Readers never take an uncommitted object for an archive, nor a volume whose
    // first backup never committed for a volume.
    let stray = t.repo().join("volumes/never-committed/archives");
    std::fs::create_dir_all(&stray).unwrap();
    write(
        &stray.join("000000000001-0123456789abcdef0123456789abcdef.tarc"),
        b"half",
    );
    let rows = t.json(&["list"]);
    assert_eq!(rows.as_array().unwrap().len(), 1);
    let e = t.fails(&["list", "never-committed"]);
    assert!(
        e.contains("no volume named \"never-committed\" in the repository (known: l.img)"),
        "{e}"
    );

    // Seqs 2 and 9 are named by archive objects: they are not used again.
    let r = t.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(r["seq"], 10);
    assert_eq!(r["leftovers_removed"], 3);
    assert!(
        !old_orphan.exists() && !old_staging.exists(),
        "old leftovers removed"
    );
    assert!(
        !fresh_partial.exists(),
        "under the lock, an archive of a seq committed under another one is a partial leftover"
    );
    assert!(
        fresh_orphan.exists(),
        "an orphan (no marker for its seq) younger than the grace period may be a point whose marker was lost"
    );
    let out = t.path("o.img");
    t.ok(&["restore", "l.img", out.to_str().unwrap()]);
    assert_same_image(&read(&out), &read(&src), "after cleanup");
}

/// A small tmpfs mounted for one test, unmounted on drop.
#[test]
fn disk_full_during_backup_keeps_the_repository_valid() {
    let t = TempRepo::uninit();
    let _fs = crate::util::SmallFs::mount(&t.repo(), "3m");
    t.ok(&["init", "--no-encryption"]);
    let src = t.path("d.img");
    let mut img = make_image(MIB, 13);
    write(&src, &img);
    t.ok(&["backup", src.to_str().unwrap()]);
    let first = img.clone();

    // 8 MiB of random data cannot fit in what is left of 3 MiB.
    let mut rng = crate::util::Rng::new(14);
    img.resize(8 * MIB, 0);
    rng.fill(&mut img[MIB..]);
    write(&src, &img);
    let e = t.fails(&["backup", src.to_str().unwrap()]);
    assert!(e.contains("No space left on device"), "{e}");
    assert!(
        e.contains("volumes/d.img/archives/000000000002-"),
        "the error names the object: {e}"
    );

    // Nothing of the failed run is listed or left behind, and the first point restores.
    let rows = t.json(&["list"]);
    assert_eq!(rows.as_array().unwrap().len(), 1);
    let archives: Vec<_> = std::fs::read_dir(t.repo().join("volumes/d.img/archives"))
        .unwrap()
        .collect();
    assert_eq!(
        archives.len(),
        1,
        "the aborted upload left files: {archives:?}"
    );
    let out = t.path("first.img");
    t.ok(&["restore", "d.img", out.to_str().unwrap()]);
    assert_same_image(&read(&out), &first, "point 1 after a failed backup");

    // Once there is room again the next backup commits as seq 2.
    write(&src, &first[..MIB / 2]);
    let r = t.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(r["seq"], 2);
}

#[test]
fn archive_of_a_newer_major_version_is_reported_as_such() {
    let t = TempRepo::new();
    let src = t.path("n.img");
    write(&src, &make_image(MIB, 15));
    t.ok(&["backup", src.to_str().unwrap()]);
    let dir = t.repo().join("volumes/n.img/archives");
    let archive = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = read(&archive);
    bytes[8..10].copy_from_slice(&3u16.to_le_bytes());
    bytes[10..12].copy_from_slice(&0u16.to_le_bytes());
    write(&archive, &bytes);
    let e = t.fails(&["restore", "n.img", t.path("o.img").to_str().unwrap()]);
    assert!(
        e.contains("unsupported format version 3.0 (this build reads major versions 1 to 2)"),
        "{e}"
    );
}

#[test]
fn huge_sparse_volume_is_backed_up_and_restored_by_its_data_alone() {
    let t = TempRepo::new();
    let src = t.path("huge.img");
    let size = 1u64 << 40; // 1 TiB, almost all hole
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(size).unwrap();
    let data = make_image(MIB, 40);
    let at = 700 << 30;
    std::os::unix::fs::FileExt::write_all_at(&f, &data, at).unwrap();
    drop(f);
    let full = t.json(&["backup", src.to_str().unwrap()]);
    assert!(full["bytes_read"].as_u64().unwrap() <= MIB as u64, "{full}");
    assert!(
        full["stored_bytes"].as_u64().unwrap() < 2 * MIB as u64,
        "{full}"
    );
    let delta = t.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(delta["blocks_changed"], 0);

    let out = t.path("out.img");
    let r = t.json(&["restore", "huge.img", out.to_str().unwrap()]);
    assert_eq!(
        r["image_digest"], full["image_digest"],
        "restore verified the image digest"
    );
    let m = std::fs::metadata(&out).unwrap();
    assert_eq!(m.len(), size);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&m) * 512 < 4 * MIB as u64,
        "restored target stays sparse"
    );
    let mut back = vec![0u8; MIB];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(&out).unwrap(), &mut back, at)
        .unwrap();
    assert_same_image(&back, &data, "the data region");
}

#[test]
fn interrupted_restore_leaves_no_partial_target() {
    let t = TempRepo::new();
    let src = t.path("i.img");
    let mut img = vec![0u8; 256 * MIB];
    crate::util::Rng::new(41).fill(&mut img);
    write(&src, &img);
    t.ok(&["backup", src.to_str().unwrap()]);
    let out = t.path("out.img");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_thinarc"))
        .args([
            "-q",
            "-r",
            t.location(),
            "restore",
            "i.img",
            out.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let leftovers: Vec<_> = std::fs::read_dir(t.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".thinarc-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary targets left: {leftovers:?}"
    );
    if o.status.success() {
        // The restore won the race: the target is complete.
        assert_same_image(&read(&out), &img, "restore finished before the signal");
    } else {
        assert!(
            stderr.contains("interrupted by SIGINT: nothing partial was committed"),
            "{stderr}"
        );
        assert!(!out.exists(), "an interrupted restore leaves no target");
    }
}
