//! Damage is contained, reported and repairable (issue 10, kind 2): for every kind of
//! damage verify can see, intact points still list and restore, verify names every
//! point that depends on the damage and exits 4, status exits 4 and its metrics show
//! it, and the documented way back (README "Damage and repair") brings the newest
//! point and the nightly backup back without renaming the volume or reusing a seq.
//! The marker family flips every class of byte of a commit marker (syntax, `archive`,
//! `object`, `size`, `digest`, truncation) and every byte with four masks; the lock
//! family damages lock objects of dead and of live holders.

use object_store::ObjectStoreExt;
use object_store::path::Path as Key;
use thinarc::format::{ArchiveReader, DIR_ENTRY_LEN, DirEntry};

use serde_json::json;

use crate::util::s3::moto;
use crate::util::{TempRepo, assert_same_image, make_image, read, write};

const MIB: usize = 1 << 20;

/// The repository's objects, on disk or on the S3 test server, by key relative to the
/// repository root.
struct Objects<'a> {
    t: &'a TempRepo,
    rt: tokio::runtime::Runtime,
}

impl<'a> Objects<'a> {
    fn new(t: &'a TempRepo) -> Self {
        Objects {
            t,
            rt: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    fn s3(&self) -> bool {
        self.t.location().starts_with("s3://")
    }

    fn key(&self, rel: &str) -> Key {
        Key::from(format!("repo/{rel}"))
    }

    fn list(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = if self.s3() {
            let store = moto().store(self.t.bucket());
            self.rt
                .block_on(futures::TryStreamExt::try_collect::<Vec<_>>(
                    store.list(Some(&self.key(prefix))),
                ))
                .unwrap()
                .into_iter()
                .map(|m| m.location.filename().unwrap().to_string())
                .collect()
        } else {
            match std::fs::read_dir(self.t.repo().join(prefix)) {
                Ok(d) => d
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(_) => Vec::new(),
            }
        };
        names.sort();
        names
    }

    fn get(&self, rel: &str) -> Vec<u8> {
        if self.s3() {
            let store = moto().store(self.t.bucket());
            let key = self.key(rel);
            self.rt
                .block_on(async { store.get(&key).await.unwrap().bytes().await })
                .unwrap()
                .to_vec()
        } else {
            read(&self.t.repo().join(rel))
        }
    }

    fn put(&self, rel: &str, bytes: &[u8]) {
        if self.s3() {
            let store = moto().store(self.t.bucket());
            let key = self.key(rel);
            self.rt
                .block_on(store.put(&key, bytes.to_vec().into()))
                .unwrap();
        } else {
            let path = self.t.repo().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            write(&path, bytes);
        }
    }

    fn delete(&self, rel: &str) {
        if self.s3() {
            let store = moto().store(self.t.bucket());
            self.rt.block_on(store.delete(&self.key(rel))).unwrap();
        } else {
            std::fs::remove_file(self.t.repo().join(rel)).unwrap();
        }
    }

    /// `volumes/v/archives/<name>` of the archive of `seq`.
    fn archive(&self, seq: u64) -> String {
        let prefix = format!("{seq:012}-");
        let name = self
            .list("volumes/v/archives")
            .into_iter()
            .find(|n| n.starts_with(&prefix) && n.ends_with(".tarc"))
            .unwrap_or_else(|| panic!("no archive of seq {seq}"));
        format!("volumes/v/archives/{name}")
    }
}

/// One kind of damage, applied to a volume `v` of three points (seq 1 full, 2 and 3
/// deltas changing different blocks).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Damage {
    /// A flipped byte in a data frame of seq 2.
    FrameFlip,
    /// The first byte of seq 2's first data frame flipped: the frame no longer decodes
    /// (opens, in an encrypted repository), so every block it holds is lost with it.
    FrameUndecodable,
    /// A flipped byte in the first index segment of seq 2.
    IndexFlip,
    /// A flipped byte in the header of seq 1 (the full).
    HeaderFlip,
    /// A flipped byte in the trailer of seq 3 (the newest).
    TrailerFlip,
    /// Seq 2's archive cut to half its size.
    Truncated,
    /// Seq 3's archive deleted.
    ArchiveDeleted,
    /// Seq 2's commit marker overwritten with garbage.
    MiddleMarkerCorrupt,
    /// Seq 3's commit marker with a zero byte in it (no longer JSON).
    NewestMarkerCorrupt,
    /// Seq 2's commit marker deleted.
    MiddleMarkerDeleted,
    /// Seq 3's commit marker deleted.
    NewestMarkerDeleted,
}

impl Damage {
    fn apply(self, o: &Objects) {
        let flip = |rel: &str, at: usize| {
            let mut b = o.get(rel);
            b[at] ^= 0x5a;
            o.put(rel, &b);
        };
        match self {
            Damage::FrameFlip => {
                let rel = o.archive(2);
                let bytes = o.get(&rel);
                let body = ArchiveReader::open(&bytes).unwrap().trailer.body_offset as usize;
                flip(&rel, body + 100);
            }
            Damage::FrameUndecodable => {
                let rel = o.archive(2);
                let bytes = o.get(&rel);
                let body = ArchiveReader::open(&bytes).unwrap().trailer.body_offset as usize;
                flip(&rel, body);
            }
            Damage::IndexFlip => {
                let rel = o.archive(2);
                let bytes = o.get(&rel);
                let dir = ArchiveReader::open(&bytes)
                    .unwrap()
                    .trailer
                    .directory_offset as usize;
                let first: [u8; DIR_ENTRY_LEN] =
                    bytes[dir..dir + DIR_ENTRY_LEN].try_into().unwrap();
                let seg = DirEntry::decode(&first).unwrap().offset as usize;
                flip(&rel, seg + 40);
            }
            Damage::HeaderFlip => flip(&o.archive(1), 40),
            Damage::TrailerFlip => {
                let rel = o.archive(3);
                let len = o.get(&rel).len();
                flip(&rel, len - 20);
            }
            Damage::Truncated => {
                let rel = o.archive(2);
                let b = o.get(&rel);
                o.put(&rel, &b[..b.len() / 2]);
            }
            Damage::ArchiveDeleted => o.delete(&o.archive(3)),
            Damage::MiddleMarkerCorrupt => o.put("volumes/v/commits/000000000002", b"{\"arch"),
            Damage::NewestMarkerCorrupt => {
                let rel = "volumes/v/commits/000000000003";
                let mut b = o.get(rel);
                b[20] = 0;
                o.put(rel, &b);
            }
            Damage::MiddleMarkerDeleted => o.delete("volumes/v/commits/000000000002"),
            Damage::NewestMarkerDeleted => o.delete("volumes/v/commits/000000000003"),
        }
    }

    /// Points that restore byte for byte while the damage is there.
    fn intact(self) -> &'static [u64] {
        match self {
            Damage::FrameFlip
            | Damage::FrameUndecodable
            | Damage::IndexFlip
            | Damage::Truncated => &[1],
            Damage::HeaderFlip => &[],
            Damage::TrailerFlip | Damage::ArchiveDeleted => &[1, 2],
            Damage::MiddleMarkerCorrupt | Damage::MiddleMarkerDeleted => &[1],
            Damage::NewestMarkerCorrupt | Damage::NewestMarkerDeleted => &[1, 2],
        }
    }

    /// Points verify must name (`volume seq N`).
    fn named(self) -> &'static [u64] {
        match self {
            Damage::FrameFlip
            | Damage::FrameUndecodable
            | Damage::IndexFlip
            | Damage::Truncated => &[2, 3],
            Damage::HeaderFlip => &[1, 2, 3],
            Damage::TrailerFlip | Damage::ArchiveDeleted => &[3],
            Damage::MiddleMarkerCorrupt | Damage::MiddleMarkerDeleted => &[2, 3],
            Damage::NewestMarkerCorrupt | Damage::NewestMarkerDeleted => &[3],
        }
    }

    /// Whether the way back needs `thinarc repair` (a marker of a point below the
    /// newest); else the next backup alone brings the volume back.
    fn needs_repair(self) -> bool {
        matches!(
            self,
            Damage::MiddleMarkerCorrupt | Damage::MiddleMarkerDeleted
        )
    }

    /// Whether the damage is in the catalog (markers) rather than in archives.
    fn marker(self) -> bool {
        matches!(
            self,
            Damage::MiddleMarkerCorrupt
                | Damage::NewestMarkerCorrupt
                | Damage::MiddleMarkerDeleted
                | Damage::NewestMarkerDeleted
        )
    }
}

/// Images of the three points and the source file.
fn three_points(t: &TempRepo) -> (Vec<Vec<u8>>, std::path::PathBuf) {
    let src = t.path("v.img");
    let mut img = make_image(4 * MIB, 7);
    let mut images = Vec::new();
    for (seq, at) in [(1u64, 0usize), (2, MIB), (3, 3 * MIB)] {
        if seq > 1 {
            for b in &mut img[at..at + 300_000] {
                *b = b.wrapping_add(seq as u8) ^ 0x33;
            }
        }
        write(&src, &img);
        let out = t.json(&["backup", src.to_str().unwrap(), "--volume", "v"]);
        assert_eq!(out["seq"], seq);
        images.push(img.clone());
    }
    (images, src)
}

fn restore_same(t: &TempRepo, at: &str, expected: &[u8], what: &str) {
    let out = t.path(&format!("r-{at}.img"));
    let _ = std::fs::remove_file(&out);
    t.ok(&["restore", "v", out.to_str().unwrap(), "--at", at]);
    assert_same_image(&read(&out), expected, what);
    std::fs::remove_file(&out).unwrap();
}

/// The damaged points `status v --json` reports (it must exit 4).
fn damaged_points(t: &TempRepo) -> u64 {
    let s = t.run(&["status", "v", "--json"]);
    assert_eq!(s.code, Some(4), "{}", s.show());
    let status: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
    status["volumes"][0]["damage"]["damaged_points"]
        .as_u64()
        .unwrap_or_else(|| panic!("no damaged_points in {status}"))
}

/// The metric `name` of volume v in `text`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("volume=\"v\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} for v in:\n{text}"))
}

fn damage_way_back(t: &TempRepo, damage: Damage) {
    let o = Objects::new(t);
    let (images, src) = three_points(t);
    damage.apply(&o);

    // Contained: intact points still list and restore, other volumes are unaffected.
    let other = t.path("w.img");
    write(&other, &make_image(MIB, 99));
    t.ok(&["backup", other.to_str().unwrap(), "--volume", "w"]);
    for &seq in damage.intact() {
        restore_same(
            t,
            &seq.to_string(),
            &images[seq as usize - 1],
            "intact point",
        );
    }

    // Verify names every point that depends on the damage, and exits 4.
    let v = t.run(&["verify", "--data"]);
    assert_eq!(v.code, Some(4), "{damage:?}: {}", v.show());
    for seq in damage.named() {
        assert!(
            v.stdout.contains(&format!("problem: v seq {seq}")),
            "{damage:?}: verify names seq {seq}:\n{}",
            v.show()
        );
    }
    assert!(!v.stdout.contains("problem: w"), "{}", v.show());

    // list shows the damage and exits 1; other volumes are listed.
    let l = t.run(&["list"]);
    assert_eq!(l.code, Some(1), "{damage:?}: {}", l.show());
    assert!(l.stdout.contains("DAMAGED"), "{}", l.show());
    assert!(
        l.stdout.lines().any(|r| r.starts_with("w ")),
        "{}",
        l.show()
    );

    // status exits 4 and its metrics say so.
    let prom = t.path("status.prom");
    let s = t.run(&["status", "--prometheus", prom.to_str().unwrap()]);
    assert_eq!(s.code, Some(4), "{damage:?}: {}", s.show());
    assert!(s.stdout.contains("DAMAGED"), "{}", s.show());
    let text = std::fs::read_to_string(&prom).unwrap();
    let bad = metric(&text, "thinarc_damaged_points")
        + metric(&text, "thinarc_corrupt_markers")
        + metric(&text, "thinarc_uncommitted_archives");
    assert!(bad > 0.0, "{damage:?}:\n{text}");

    // The way back: `repair` for a lost or corrupt marker below the newest, then the
    // nightly backup (which also re-commits a lost newest marker, re-stores damaged
    // blocks, or starts a new chain).
    if damage.needs_repair() {
        let dry = t.ok(&["repair", "v", "--dry-run"]);
        assert!(dry.contains("would seq 2 recommit"), "{dry}");
        let r = t.ok(&["repair", "v"]);
        assert!(r.contains("seq 2 recommit"), "{r}");
        for seq in 1..=3u64 {
            restore_same(t, &seq.to_string(), &images[seq as usize - 1], "repaired");
        }
    }
    let mut img = images[2].clone();
    for b in &mut img[2 * MIB..2 * MIB + 70_000] {
        *b ^= 0xa5;
    }
    write(&src, &img);
    let b = t.run(&["backup", src.to_str().unwrap(), "--volume", "v", "--json"]);
    assert!(
        b.success,
        "{damage:?}: the nightly backup succeeds: {}",
        b.show()
    );
    let report: serde_json::Value = serde_json::from_str(&b.stdout).unwrap();
    assert_eq!(report["seq"], 4, "{damage:?}: no seq is reused");
    restore_same(t, "latest", &img, "the newest point after the way back");
    if matches!(
        damage,
        Damage::NewestMarkerCorrupt | Damage::NewestMarkerDeleted
    ) {
        assert_eq!(report["kind"], "delta", "built on the re-committed seq 3");
        restore_same(t, "3", &images[2], "the re-committed newest point");
    }

    // Until then the old points that depend on damaged data keep status DAMAGED
    // (exit 4), though the newest point restores (README, "Damage and repair").
    if !damage.marker() {
        let s = t.run(&["status", "v"]);
        assert_eq!(s.code, Some(4), "{damage:?}: {}", s.show());
        assert!(s.stdout.contains("  DAMAGED: "), "{}", s.show());
    }
    // What still depends on damage is unlisted; the volume is healthy again.
    if !damage.marker() || damage == Damage::NewestMarkerCorrupt {
        t.ok(&["repair", "v", "--drop-damaged"]);
    }
    let l = t.run(&["list"]);
    assert_eq!(l.code, Some(0), "{damage:?}: {}", l.show());
    let s = t.run(&["status"]);
    assert_eq!(s.code, Some(0), "{damage:?}: {}", s.show());
    restore_same(t, "latest", &img, "the newest point after repair");
    let next = t.json(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    assert_eq!(next["seq"], 5);
    let v = t.run(&["verify", "--data"]);
    assert_eq!(v.code, Some(0), "{damage:?}: {}", v.show());
}

#[test]
fn damage_frame_flip_way_back() {
    damage_way_back(&TempRepo::new(), Damage::FrameFlip);
}

/// A frame that does not decode loses all its blocks: verify records each of them,
/// so the next backup stores them all again (not only the frame's first block).
#[test]
fn damage_undecodable_frame_way_back() {
    damage_way_back(&TempRepo::new(), Damage::FrameUndecodable);
}

/// In an encrypted repository any flipped byte of a frame fails its seal: the same.
#[test]
fn damage_undecodable_frame_way_back_encrypted() {
    let t = TempRepo::uninit().with_env("THINARC_PASSWORD", "damage test");
    t.ok(&["init"]);
    damage_way_back(&t, Damage::FrameUndecodable);
}

#[test]
fn damage_index_flip_way_back() {
    damage_way_back(&TempRepo::new(), Damage::IndexFlip);
}

#[test]
fn damage_header_flip_way_back() {
    damage_way_back(&TempRepo::new(), Damage::HeaderFlip);
}

#[test]
fn damage_trailer_flip_way_back() {
    damage_way_back(&TempRepo::new(), Damage::TrailerFlip);
}

#[test]
fn damage_truncated_archive_way_back() {
    damage_way_back(&TempRepo::new(), Damage::Truncated);
}

#[test]
fn damage_deleted_archive_way_back() {
    damage_way_back(&TempRepo::new(), Damage::ArchiveDeleted);
}

#[test]
fn damage_corrupt_middle_marker_way_back() {
    damage_way_back(&TempRepo::new(), Damage::MiddleMarkerCorrupt);
}

#[test]
fn damage_corrupt_newest_marker_way_back() {
    damage_way_back(&TempRepo::new(), Damage::NewestMarkerCorrupt);
}

#[test]
fn damage_deleted_middle_marker_way_back() {
    damage_way_back(&TempRepo::new(), Damage::MiddleMarkerDeleted);
}

#[test]
fn damage_deleted_newest_marker_way_back() {
    damage_way_back(&TempRepo::new(), Damage::NewestMarkerDeleted);
}

#[test]
fn damage_frame_flip_way_back_on_s3() {
    damage_way_back(&TempRepo::s3(), Damage::FrameFlip);
}

#[test]
fn damage_deleted_newest_marker_way_back_on_s3() {
    damage_way_back(&TempRepo::s3(), Damage::NewestMarkerDeleted);
}

/// The `  DAMAGED: ` lines `list` prints, by seq, and `status v`'s problem lines.
fn damage_lines(t: &TempRepo) -> (Vec<(u64, String)>, Vec<String>) {
    let l = t.run(&["list", "v"]);
    let mut seq = 0;
    let mut listed = Vec::new();
    for line in l.stdout.lines() {
        if let Some(d) = line.strip_prefix("  DAMAGED: ") {
            listed.push((seq, d.to_string()));
        } else if let Some(s) = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            seq = s;
        }
    }
    let s = t.run(&["status", "v"]);
    let problems = s
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("  problem: "))
        .map(str::to_string)
        .collect();
    (listed, problems)
}

/// The way back `list`, `status` and `verify` give for each point that depends on
/// recorded damage is the one true for that point: for the newest, the next backup;
/// for an older one while no newer point is whole, the next backup and then `repair
/// --drop-damaged`; once the next backup made a whole point, restoring that point or
/// `repair --drop-damaged` (never "the next backup" again). Damaged blocks (a frame)
/// and a damaged archive (its index) alike; `repair --drop-damaged` then leaves no
/// damage listed or recorded.
#[test]
fn damage_way_back_of_old_points_names_the_whole_newer_point() {
    for (damage, next) in [
        (
            Damage::FrameFlip,
            "the next backup stores these blocks again",
        ),
        (Damage::IndexFlip, "the next backup starts a new chain"),
    ] {
        let t = TempRepo::new();
        let o = Objects::new(&t);
        let (images, src) = three_points(&t);
        damage.apply(&o);
        let v = t.run(&["verify", "--data"]);
        assert_eq!(v.code, Some(4), "{damage:?}: {}", v.show());
        let drop = "`thinarc repair v --drop-damaged` unlists this point";
        let (listed, problems) = damage_lines(&t);
        let advice: Vec<(u64, &str)> = listed
            .iter()
            .map(|(seq, d)| (*seq, d.rsplit_once(" (").map_or("", |(_, a)| a)))
            .collect();
        let older = format!("{next} in a new point; then {drop}; see `thinarc verify`)");
        let newest = format!("{next}; see `thinarc verify`)");
        assert_eq!(
            advice,
            [(2, older.as_str()), (3, newest.as_str())],
            "{damage:?}: {listed:#?}"
        );
        for (seq, d) in &listed {
            assert!(
                problems.contains(&format!("seq {seq}: {d}")),
                "{damage:?}: status says what list says: {problems:#?}"
            );
        }

        // The nightly backup: seq 4 is whole, the old points stay damaged and name it.
        write(&src, &images[2]);
        let b = t.json(&["backup", src.to_str().unwrap(), "--volume", "v"]);
        assert_eq!(b["seq"], 4);
        restore_same(&t, "4", &images[2], "the whole newer point");
        let (listed, problems) = damage_lines(&t);
        let whole = format!("seq 4 is whole: restore it; {drop}; see `thinarc verify`)");
        let advice: Vec<(u64, &str)> = listed
            .iter()
            .map(|(seq, d)| (*seq, d.rsplit_once(" (").map_or("", |(_, a)| a)))
            .collect();
        assert_eq!(
            advice,
            [(2, whole.as_str()), (3, whole.as_str())],
            "{damage:?}: {listed:#?}"
        );
        for (seq, d) in &listed {
            assert!(
                problems.contains(&format!("seq {seq}: {d}")),
                "{damage:?}: {problems:#?}"
            );
        }
        assert!(
            !problems.iter().any(|p| p.starts_with("seq 4")),
            "{problems:#?}"
        );
        let v = t.run(&["verify", "--data"]);
        assert_eq!(v.code, Some(4), "{damage:?}: {}", v.show());
        let told: Vec<&str> = v
            .stdout
            .lines()
            .filter(|l| l.contains("the point depends on"))
            .collect();
        // (A damaged index fails the points built on it in verify's own check: "the
        // point cannot be restored", no way back named.)
        assert_eq!(told.is_empty(), damage == Damage::IndexFlip, "{}", v.show());
        assert!(!v.stdout.contains("the next backup"), "{}", v.show());
        for l in &told {
            assert!(
                l.ends_with(&format!(
                    "it cannot be restored in full; seq 4 is whole: restore it; {drop}"
                )),
                "{damage:?}: {l}"
            );
        }
        assert!(!v.stdout.contains("problem: v seq 4"), "{}", v.show());

        // The way back taken: nothing damaged is listed, and no record is left.
        t.ok(&["repair", "v", "--drop-damaged"]);
        assert_eq!(damage_lines(&t), (Vec::new(), Vec::new()), "{damage:?}");
        assert_eq!(t.run(&["status", "v"]).code, Some(0));
        assert_eq!(
            o.list("volumes/v/damage"),
            Vec::<String>::new(),
            "{damage:?}: no damage record is left"
        );
        restore_same(&t, "latest", &images[2], "the newest point after repair");
    }
}

/// Case `damaged-delta-built-on.sh`: a flipped byte in a middle delta, and a backup
/// that ran before anyone noticed built on it. Verify names every point that needs
/// the block; status says damaged; the next backup stores the block again.
#[test]
fn damage_case_delta_built_on_is_named_and_stored_again() {
    let t = TempRepo::new();
    let o = Objects::new(&t);
    let (images, src) = three_points(&t);
    Damage::FrameFlip.apply(&o);
    // Built on, unnoticed: nothing changed, nothing recorded yet.
    let b = t.json(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    assert_eq!(
        (b["seq"].as_u64(), b["blocks_changed"].as_u64()),
        (Some(4), Some(0))
    );
    let v = t.run(&["verify", "--data"]);
    assert_eq!(v.code, Some(4), "{}", v.show());
    for seq in 2..=4 {
        assert!(
            v.stdout.contains(&format!("problem: v seq {seq}")),
            "seq {seq} is named:\n{}",
            v.show()
        );
    }
    assert_eq!(damaged_points(&t), 3);
    restore_same(&t, "1", &images[0], "seq 1 is intact");
    // The nightly backup stores the damaged blocks again, and says so.
    let b = t.run(&["backup", src.to_str().unwrap(), "--volume", "v", "--json"]);
    assert!(b.success, "{}", b.show());
    let report: serde_json::Value = serde_json::from_str(&b.stdout).unwrap();
    assert_eq!(report["seq"], 5);
    assert_eq!(report["kind"], "delta");
    assert!(report["blocks_changed"].as_u64().unwrap() > 0, "{report}");
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("damaged block(s)"), "{warnings}");
    restore_same(&t, "latest", &images[2], "the newest point restores again");
    // With --changed-blocks saying nothing changed, the blocks are read all the same.
    let t2 = TempRepo::new();
    let o2 = Objects::new(&t2);
    let (images2, src2) = three_points(&t2);
    Damage::FrameFlip.apply(&o2);
    assert_eq!(t2.run(&["verify", "--data"]).code, Some(4));
    let empty = t2.path("none.txt");
    write(&empty, b"");
    let b = t2.json(&[
        "backup",
        src2.to_str().unwrap(),
        "--volume",
        "v",
        "--changed-blocks",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(b["method"], "changed-blocks");
    assert!(b["blocks_changed"].as_u64().unwrap() > 0, "{b}");
    restore_same(
        &t2,
        "latest",
        &images2[2],
        "re-stored under --changed-blocks",
    );
}

/// A plain copy of a volume with recorded damage is not a clean copy: the damaged
/// archive goes with its damage record and the copy says so, so the destination's
/// status and verify report it (a consolidated copy refuses to merge damaged data).
#[test]
fn damage_is_carried_by_a_plain_copy_and_reported_there() {
    let t = TempRepo::new();
    let o = Objects::new(&t);
    let (images, _) = three_points(&t);
    Damage::FrameFlip.apply(&o);
    assert_eq!(t.run(&["verify", "--data"]).code, Some(4));
    let dest = TempRepo::new();
    let c = t.run(&["copy", "--to", dest.location()]);
    assert!(c.success, "{}", c.show());
    assert!(
        c.stderr.contains("is recorded damaged in the source")
            && c.stderr.contains("copied as it is, with its damage record"),
        "the copy says what it carried:\n{}",
        c.show()
    );
    assert_eq!(damaged_points(&dest), 2, "the destination reports it");
    assert_eq!(dest.run(&["verify", "--data"]).code, Some(4));
    // The intact point is intact in the copy too.
    restore_same(&dest, "1", &images[0], "seq 1 of the copy");
    let consolidated = TempRepo::new();
    let c = t.run(&["copy", "--to", consolidated.location(), "--consolidate"]);
    assert_eq!(c.code, Some(1), "{}", c.show());
}

/// Case `damaged-full-blocks-later-backups.sh`: a truncated full archive. Every later
/// backup succeeds (the first one starts a new chain), prune works, `backup --full`
/// is documented.
#[test]
fn damage_case_truncated_full_does_not_block_later_backups() {
    let t = TempRepo::new();
    let o = Objects::new(&t);
    let (images, src) = three_points(&t);
    let rel = o.archive(1);
    let b = o.get(&rel);
    o.put(&rel, &b[..1_000_000.min(b.len() / 2)]);
    let v = t.run(&["verify"]);
    assert_eq!(v.code, Some(4), "{}", v.show());
    assert!(v.stdout.contains("is truncated: "), "{}", v.show());
    let first = t.run(&["backup", src.to_str().unwrap(), "--volume", "v", "--json"]);
    assert!(first.success, "{}", first.show());
    let r: serde_json::Value = serde_json::from_str(&first.stdout).unwrap();
    assert_eq!(
        (r["seq"].as_u64(), r["kind"].as_str()),
        (Some(4), Some("full"))
    );
    assert!(r["warnings"].to_string().contains("new chain"), "{r}");
    for seq in 5..=6 {
        let r = t.json(&["backup", src.to_str().unwrap(), "--volume", "v"]);
        assert_eq!(
            (r["seq"].as_u64(), r["kind"].as_str()),
            (Some(seq), Some("delta"))
        );
    }
    t.ok(&["prune", "v", "--keep-last", "1"]);
    assert_eq!(t.run(&["list"]).code, Some(0));
    assert_eq!(t.run(&["status"]).code, Some(0));
    restore_same(&t, "latest", &images[2], "after prune");
    let help = crate::util::thinarc(&["backup", "--help"]).stdout;
    assert!(help.contains("--full"), "{help}");
}

/// Case `corrupt-marker.sh`: one corrupt marker. Intact points list and restore;
/// backup, prune and verify go on; verify names the marker with its remedy.
#[test]
fn damage_case_corrupt_marker_is_contained() {
    let t = TempRepo::new();
    let o = Objects::new(&t);
    let (images, src) = three_points(&t);
    Damage::NewestMarkerCorrupt.apply(&o);
    restore_same(&t, "1", &images[0], "seq 1");
    restore_same(&t, "2", &images[1], "seq 2");
    let l = t.run(&["list", "--json"]);
    assert_eq!(l.code, Some(1), "{}", l.show());
    let rows: serde_json::Value = serde_json::from_str(&l.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3, "{rows}");
    assert!(
        rows[2]["damage"]
            .as_str()
            .unwrap()
            .contains("thinarc repair v"),
        "{rows}"
    );
    let v = t.run(&["verify"]);
    assert_eq!(v.code, Some(4), "{}", v.show());
    assert!(
        v.stdout
            .contains("commit marker volumes/v/commits/000000000003 is corrupt"),
        "{}",
        v.show()
    );
    let b = t.json(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    assert_eq!(b["seq"], 4);
    t.ok(&["prune", "v", "--keep-last", "1"]);
    restore_same(&t, "latest", &images[2], "after prune");
    assert_eq!(t.run(&["verify"]).code, Some(0));
}

/// Case `lost-newest-marker.sh`: the newest marker is lost. list, verify and status
/// say so; the archive is never deleted as a leftover; the next backup re-commits it
/// (seq 3 is not reused) and builds on it.
#[test]
fn damage_case_lost_newest_marker_is_reported_and_recommitted() {
    let t = TempRepo::new();
    let o = Objects::new(&t);
    let (images, src) = three_points(&t);
    let archive3 = o.archive(3);
    Damage::NewestMarkerDeleted.apply(&o);
    assert_eq!(t.run(&["list"]).code, Some(1));
    let v = t.run(&["verify", "--data"]);
    assert_eq!(v.code, Some(4), "{}", v.show());
    assert!(
        v.stdout.contains("is complete but not committed"),
        "{}",
        v.show()
    );
    let s = t.run(&["status", "v"]);
    assert_eq!(s.code, Some(4), "{}", s.show());
    assert!(
        s.stdout
            .contains("the last successful backup committed seq 3, which is not listed"),
        "{}",
        s.show()
    );
    // A prune (which cleans leftovers, here with no grace at all) keeps the archive.
    t.ok(&["prune", "v", "--keep-last", "5", "--grace", "0"]);
    assert!(
        o.list("volumes/v/archives")
            .iter()
            .any(|n| archive3.ends_with(n.as_str()))
    );
    let b = t.run(&["backup", src.to_str().unwrap(), "--volume", "v", "--json"]);
    assert!(b.success, "{}", b.show());
    let r: serde_json::Value = serde_json::from_str(&b.stdout).unwrap();
    assert_eq!(r["seq"], 4, "seq 3 is not reused");
    assert!(r["warnings"].to_string().contains("committed again"), "{r}");
    restore_same(&t, "3", &images[2], "the re-committed point");
    assert_eq!(t.run(&["status", "v"]).code, Some(0));
}

/// A prune whose merge would need damaged data skips that segment with a warning and
/// runs the rest of its plan.
#[test]
fn damage_prune_skips_a_merge_that_needs_damaged_data() {
    let t = TempRepo::new();
    let o = Objects::new(&t);
    let (images, _src) = three_points(&t);
    // Seq 2's first frame is damaged and seq 3 takes those blocks from it: dropping
    // seq 2 needs them.
    Damage::FrameFlip.apply(&o);
    let p = t.run(&["prune", "v", "--keep-last", "1", "--grace", "0"]);
    assert!(p.success, "{}", p.show());
    assert!(
        p.stderr
            .contains("was not rewritten, it needs damaged data"),
        "{}",
        p.show()
    );
    let l = t.json(&["list", "v"]);
    let seqs: Vec<u64> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3], "nothing the merge needed was dropped");
    restore_same(&t, "1", &images[0], "seq 1");
}

/// `repair --dry-run` changes nothing; `--json` reports the actions; a seq set aside
/// is never reused.
#[test]
fn damage_repair_dry_run_json_and_set_aside_seq() {
    let t = TempRepo::new();
    let o = Objects::new(&t);
    let (_images, src) = three_points(&t);
    Damage::NewestMarkerCorrupt.apply(&o);
    let before = o.list("volumes/v/commits");
    let dry = t.json(&["repair", "v", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        o.list("volumes/v/commits"),
        before,
        "a dry run writes nothing"
    );
    let r = t.json(&["repair", "v"]);
    let actions: Vec<&str> = r["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["recommit", "set-aside"], "{r}");
    assert_eq!(o.list("volumes/v/damaged"), ["000000000003"]);
    assert_eq!(
        o.list("volumes/v/commits"),
        ["000000000001", "000000000002", "000000000003.000001"]
    );
    let b = t.json(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    assert_eq!(b["seq"], 4);
    let again = t.json(&["repair", "v"]);
    assert_eq!(again["actions"], serde_json::json!([]));
}

/// A volume whose only marker is lost is still listed as damaged, and its next backup
/// commits the archive again (seq 1 is not reused).
#[test]
fn damage_lost_marker_of_a_volumes_only_point() {
    let t = TempRepo::new();
    let o = Objects::new(&t);
    let src = t.path("v.img");
    let img = make_image(2 * MIB, 5);
    write(&src, &img);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    o.delete("volumes/v/commits/000000000001");
    let l = t.run(&["list"]);
    assert_eq!(l.code, Some(1), "{}", l.show());
    assert!(
        l.stdout.contains("is complete but not committed"),
        "{}",
        l.show()
    );
    assert_eq!(t.run(&["status"]).code, Some(4));
    let b = t.json(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    assert_eq!(b["seq"], 2);
    restore_same(&t, "1", &img, "the re-committed first point");
    assert_eq!(t.run(&["list"]).code, Some(0));
}

/// A volume whose only marker is corrupt is a volume with a damaged point, not a
/// missing volume: verify names the marker (exit 4), restore and the other commands
/// say there is no intact point and what to run, status shows no placeholder.
#[test]
fn damage_corrupt_marker_of_a_volumes_only_point() {
    let t = TempRepo::new();
    let o = Objects::new(&t);
    let src = t.path("v.img");
    let img = make_image(2 * MIB, 5);
    write(&src, &img);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    MarkerFlip::Syntax.apply(&o, 1);
    let v = t.run(&["verify", "v", "--data"]);
    assert_eq!(v.code, Some(4), "{}", v.show());
    assert!(v.stdout.contains("commit marker"), "{}", v.show());
    let out = t.path("r.img");
    for args in [
        vec!["restore", "v", out.to_str().unwrap()],
        vec!["prune", "v", "--keep-last", "1"],
        vec!["copy", "--to", t.path("dest").to_str().unwrap(), "v"],
    ] {
        let r = t.run(&args);
        assert_eq!(r.code, Some(1), "{args:?}: {}", r.show());
        assert!(
            r.stderr
                .contains("volume v has no intact point: commit marker")
                && r.stderr.contains("run `thinarc repair v`"),
            "{args:?}: {}",
            r.show()
        );
    }
    assert!(!out.exists());
    let s = t.run(&["status", "v"]);
    assert_eq!(s.code, Some(4), "{}", s.show());
    assert!(!s.stdout.contains("volume ?"), "{}", s.show());
    t.ok(&["repair", "v"]);
    restore_same(&t, "latest", &img, "the repaired point");
}

/// Where in a commit marker a byte is flipped (the marker family).
#[derive(Debug, Clone, Copy, PartialEq)]
enum MarkerFlip {
    /// JSON syntax: the `:` after `"size"`, so the marker no longer parses.
    Syntax,
    /// The `archive` id: one hex digit turned into another (still valid JSON).
    Archive,
    /// The fifth byte of `archive` XOR 0x5a, as the fault campaign flips it.
    ArchiveCampaign,
    /// The `object` name: one hex digit of its archive id turned into another.
    Object,
    /// One digit of `object`'s seq turned into another.
    ObjectSeq,
    /// The last digit of `size` turned into another (a few bytes off).
    SizeLast,
    /// The first digit of `size` turned into another (far off).
    SizeFirst,
    /// One hex digit of `digest` turned into another.
    Digest,
    /// One letter of `digest` turned upper case (the same value, another spelling).
    DigestCase,
    /// The marker cut to zero bytes.
    TruncatedEmpty,
    /// The marker cut to half its length.
    TruncatedHalf,
}

impl MarkerFlip {
    /// Applies the damage to the marker of `seq`.
    fn apply(self, o: &Objects, seq: u64) {
        let rel = format!("volumes/v/commits/{seq:012}");
        let mut b = o.get(&rel);
        let text = String::from_utf8(b.clone()).unwrap();
        // The offset of the first byte of member `name`'s value (after `": "` and any
        // opening quote).
        let value = |name: &str| {
            let at = text.find(&format!("\"{name}\": ")).unwrap() + name.len() + 4;
            at + usize::from(text.as_bytes()[at] == b'"')
        };
        let other_hex = |c: u8| if c == b'0' { b'1' } else { b'0' };
        let other_digit = |c: u8| if c == b'9' { b'8' } else { c + 1 };
        match self {
            MarkerFlip::Syntax => {
                let at = value("size") - 2;
                b[at] ^= 0x5a;
            }
            MarkerFlip::Archive => {
                let at = value("archive") + 7;
                b[at] = other_hex(b[at]);
            }
            MarkerFlip::ArchiveCampaign => {
                assert_eq!(value("archive"), 16);
                b[20] ^= 0x5a;
            }
            MarkerFlip::Object => {
                let at = value("object") + 13 + 9;
                b[at] = other_hex(b[at]);
            }
            MarkerFlip::ObjectSeq => {
                let at = value("object") + 11;
                b[at] = other_digit(b[at]);
            }
            MarkerFlip::SizeLast => {
                let start = value("size");
                let at = start + text[start..].find(',').unwrap() - 1;
                b[at] = other_digit(b[at]);
            }
            MarkerFlip::SizeFirst => {
                let at = value("size");
                b[at] = other_digit(b[at]);
            }
            MarkerFlip::Digest => {
                let at = value("digest") + 30;
                b[at] = other_hex(b[at]);
            }
            MarkerFlip::DigestCase => {
                let start = value("digest");
                let at = start
                    + text[start..]
                        .find(|c: char| c.is_ascii_lowercase())
                        .unwrap();
                b[at] = b[at].to_ascii_uppercase();
            }
            MarkerFlip::TruncatedEmpty => b.clear(),
            MarkerFlip::TruncatedHalf => b.truncate(b.len() / 2),
        }
        assert_ne!(o.get(&rel), b, "{self:?} changes the marker");
        o.put(&rel, &b);
    }
}

/// A damaged marker of `seq` (2: a middle point, 3: the newest) of a three-point
/// volume: verify exits 4 naming the marker, list exits 1, the points below restore,
/// the damaged point does not restore but names the marker and the way back, `repair`
/// brings every point back byte for byte, and the next backup gets a new seq.
fn marker_flip_way_back(t: &TempRepo, flip: MarkerFlip, seq: u64) {
    let what = format!("{flip:?} of seq {seq}");
    let o = Objects::new(t);
    let (images, src) = three_points(t);
    flip.apply(&o, seq);
    let marker = format!("volumes/v/commits/{seq:012}");

    let v = t.run(&["verify"]);
    assert_eq!(v.code, Some(4), "{what}: {}", v.show());
    assert!(
        v.stdout.contains(&format!("problem: v seq {seq}")) && v.stdout.contains(&marker),
        "{what}: verify names the marker:\n{}",
        v.show()
    );
    let l = t.run(&["list"]);
    assert_eq!(l.code, Some(1), "{what}: {}", l.show());
    assert!(
        l.stdout.contains(&marker) && l.stdout.contains("thinarc repair v"),
        "{what}: list names the marker and the way back:\n{}",
        l.show()
    );
    for below in 1..seq {
        restore_same(t, &below.to_string(), &images[below as usize - 1], &what);
    }
    let out = t.path("damaged.img");
    let r = t.run(&[
        "restore",
        "v",
        out.to_str().unwrap(),
        "--at",
        &seq.to_string(),
    ]);
    assert_eq!(r.code, Some(1), "{what}: {}", r.show());
    assert!(
        r.stderr.contains("thinarc repair v"),
        "{what}: restore says the way back:\n{}",
        r.show()
    );

    if seq == 2 {
        let r = t.run(&["restore", "v", out.to_str().unwrap(), "--at", "3"]);
        assert!(
            r.code == Some(1)
                && r.stderr.contains(&marker)
                && r.stderr.contains("thinarc repair v"),
            "{what}: a point above names the marker and the way back:\n{}",
            r.show()
        );
    }
    let fixed = t.ok(&["repair", "v"]);
    assert!(
        fixed.contains(&format!("seq {seq} recommit"))
            && fixed.contains(&format!("seq {seq} set-aside {marker}")),
        "{what}: {fixed}"
    );
    for s in 1..=3u64 {
        restore_same(t, &s.to_string(), &images[s as usize - 1], &what);
    }
    let v = t.run(&["verify"]);
    assert_eq!(v.code, Some(0), "{what}: {}", v.show());
    let l = t.run(&["list"]);
    assert_eq!(l.code, Some(0), "{what}: {}", l.show());
    let b = t.json(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    assert_eq!(b["seq"], 4, "{what}: a new seq");
    assert_eq!(b["kind"], "delta", "{what}: built on the repaired chain");
    restore_same(t, "latest", &images[2], &what);
}

fn marker_flips(flip: MarkerFlip) {
    for seq in [2, 3] {
        marker_flip_way_back(&TempRepo::new(), flip, seq);
    }
}

#[test]
fn marker_flip_syntax_way_back() {
    marker_flips(MarkerFlip::Syntax);
}

#[test]
fn marker_flip_archive_way_back() {
    marker_flips(MarkerFlip::Archive);
    marker_flips(MarkerFlip::ArchiveCampaign);
}

#[test]
fn marker_flip_object_way_back() {
    marker_flips(MarkerFlip::Object);
    marker_flips(MarkerFlip::ObjectSeq);
}

#[test]
fn marker_flip_size_way_back() {
    marker_flips(MarkerFlip::SizeLast);
    marker_flips(MarkerFlip::SizeFirst);
}

#[test]
fn marker_flip_digest_way_back() {
    marker_flips(MarkerFlip::Digest);
    marker_flips(MarkerFlip::DigestCase);
}

#[test]
fn marker_truncated_way_back() {
    marker_flips(MarkerFlip::TruncatedEmpty);
    marker_flips(MarkerFlip::TruncatedHalf);
}

#[test]
fn marker_flip_digest_way_back_on_s3() {
    marker_flip_way_back(&TempRepo::s3(), MarkerFlip::Digest, 2);
    marker_flip_way_back(&TempRepo::s3(), MarkerFlip::SizeLast, 3);
}

/// How a lock object of another run is damaged.
#[derive(Debug, Clone, Copy)]
enum LockDamage {
    /// One byte XOR 0x5a (inside the host name: the JSON no longer parses).
    Flip,
    /// Cut to half its length.
    TruncatedHalf,
    /// Cut to zero bytes.
    TruncatedEmpty,
}

/// The key of a planted lock object of volume `v` (an old start time, so that a new
/// run's own lock is the newer one and the refusal comes at once).
const PLANTED_LOCK: &str = "volumes/v/locks/20200101T000000.000000Z-00000000deadbeef";

/// A readable lock object of a run on another host, just written.
fn ghost_lock() -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "volume": "v",
        "host": "ghost",
        "pid": 4242,
        "operation": "backup",
        "started": "2020-01-01T00:00:00Z",
        "ttl_seconds": 600.0,
    }))
    .unwrap()
}

/// A damaged lock object keeps the volume locked (exit 3) with a refusal that names
/// the object and the way back; `repair --break-lock` (after a dry run that changes
/// nothing) removes it, saying what it was, and the next backup succeeds.
fn lock_damage_way_back(t: &TempRepo, damage: LockDamage) {
    let what = format!("{damage:?}");
    let o = Objects::new(t);
    let src = t.path("v.img");
    let img = make_image(MIB, 3);
    write(&src, &img);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    let mut lock = ghost_lock();
    match damage {
        LockDamage::Flip => {
            let at = String::from_utf8(lock.clone())
                .unwrap()
                .find("ghost")
                .unwrap();
            lock[at + 2] ^= 0x5a;
            lock[at + 6] ^= 0x5a; // the closing quote: no longer a string
        }
        LockDamage::TruncatedHalf => lock.truncate(lock.len() / 2),
        LockDamage::TruncatedEmpty => lock.clear(),
    }
    o.put(PLANTED_LOCK, &lock);

    let refused = t.run(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    assert_eq!(refused.code, Some(3), "{what}: {}", refused.show());
    let prefix = format!(
        "error: v is locked by an unreadable lock object {PLANTED_LOCK} ({} bytes that are not a lock: ",
        lock.len()
    );
    let suffix = "); if no run of v is going, remove it with `thinarc repair v --break-lock`, else wait: it is broken as stale once it is 600s old\n";
    assert!(
        refused.stderr.starts_with(&prefix) && refused.stderr.ends_with(suffix),
        "{what}: {}",
        refused.show()
    );

    let dry = t.ok(&["repair", "v", "--break-lock", "--dry-run"]);
    assert!(
        dry.starts_with(&format!(
            "would remove unreadable lock object {PLANTED_LOCK} ("
        )),
        "{what}: {dry}"
    );
    assert_eq!(o.list("volumes/v/locks").len(), 1, "{what}: a dry run");
    let done = t.ok(&["repair", "v", "--break-lock"]);
    assert!(
        done.starts_with(&format!("remove unreadable lock object {PLANTED_LOCK} (")),
        "{what}: {done}"
    );
    assert!(o.list("volumes/v/locks").is_empty(), "{what}");
    let b = t.json(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    assert_eq!(b["seq"], 2, "{what}");
    restore_same(t, "latest", &img, &what);
}

#[test]
fn lock_object_damage_way_back() {
    for damage in [
        LockDamage::Flip,
        LockDamage::TruncatedHalf,
        LockDamage::TruncatedEmpty,
    ] {
        lock_damage_way_back(&TempRepo::new(), damage);
    }
}

#[test]
fn lock_object_damage_way_back_on_s3() {
    lock_damage_way_back(&TempRepo::s3(), LockDamage::Flip);
}

/// `repair --break-lock` leaves a readable lock of a run that may be alive (another
/// host, fresh): refused with exit 3 naming the holder, the lock stays.
#[test]
fn lock_break_refuses_a_live_readable_lock() {
    let t = TempRepo::new();
    let o = Objects::new(&t);
    let src = t.path("v.img");
    write(&src, &make_image(MIB, 3));
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    o.put(PLANTED_LOCK, &ghost_lock());
    let r = t.run(&["repair", "v", "--break-lock"]);
    assert_eq!(r.code, Some(3), "{}", r.show());
    assert!(
        r.stderr.starts_with(
            "error: v is locked by ghost pid 4242 since 2020-01-01T00:00:00Z (backup)"
        ),
        "{}",
        r.show()
    );
    assert_eq!(o.list("volumes/v/locks").len(), 1);
}

/// The lock object of a live holder that gets damaged: on a local repository the
/// holder's next refresh rewrites it in place; on S3 the conditional refresh fails
/// and the holder stops with "lost the lock" (it never overwrites what it did not
/// write).
async fn live_lock_damage(t: &TempRepo) {
    use thinarc::repo::{LockError, LockInfo, VolumeLock, VolumeName};
    let repo = crate::lock::lib_repo(t).await;
    let volume = VolumeName::new("v").unwrap();
    let lock = VolumeLock::acquire_with_ttl(
        &repo,
        &volume,
        "backup",
        std::time::Duration::from_millis(800),
    )
    .await
    .unwrap();
    let get = || async {
        let r = repo.store().get(lock.key()).await.unwrap();
        r.bytes().await.unwrap().to_vec()
    };
    let mut b = get().await;
    b.truncate(b.len() / 2);
    repo.store().put(lock.key(), b.into()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    if t.location().starts_with("s3://") {
        assert!(
            matches!(lock.check(), Err(LockError::Lost { .. })),
            "{:?}",
            lock.check()
        );
    } else {
        lock.check().unwrap();
        let info: LockInfo = serde_json::from_slice(&get().await).expect("rewritten");
        assert_eq!(&info, lock.info());
    }
    let _ = lock.release().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_object_of_a_live_holder_damaged() {
    live_lock_damage(&TempRepo::new()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_object_of_a_live_holder_damaged_on_s3() {
    live_lock_damage(&TempRepo::s3()).await;
}

/// Every byte of a middle marker, flipped with each of four masks (a low bit, the
/// case bit, the campaign's 0x5a, the high bit): each flip is found, as a corrupt
/// marker of seq 2 at read time or as a marker that disagrees with its intact archive,
/// and `repair` (dry run) would set that marker aside and commit seq 2's archive
/// again. No flip is silently taken for a valid marker.
#[tokio::test(flavor = "multi_thread")]
async fn marker_every_byte_flip_is_found_and_repairable() {
    use thinarc::repo::{CatalogProblem, RemoteArchive, RepairScope, RepoError, VolumeName};
    let t = TempRepo::new();
    tokio::task::block_in_place(|| three_points(&t));
    let repo = crate::lock::lib_repo(&t).await;
    let volume = VolumeName::new("v").unwrap();
    let file = t.repo().join("volumes/v/commits/000000000002");
    let intact = read(&file);
    let mut found = 0;
    for at in 0..intact.len() {
        for mask in [0x01u8, 0x20, 0x5a, 0x80] {
            let mut b = intact.clone();
            b[at] ^= mask;
            write(&file, &b);
            let what = format!("byte {at} ^ {mask:#04x}");
            let catalog = repo.catalog(&volume).await.unwrap();
            let corrupt = catalog
                .problems
                .iter()
                .any(|p| matches!(p, CatalogProblem::CorruptMarker { seq: 2, .. }));
            if !corrupt {
                let c = catalog.commits.iter().find(|c| c.seq == 2).expect(&what);
                let e = RemoteArchive::open(&repo, c).await.err();
                assert!(
                    matches!(&e, Some(RepoError::BadCommit { key, .. }) if key.ends_with("commits/000000000002")),
                    "{what}: a flipped marker is taken as valid: {e:?}"
                );
            }
            let actions = repo
                .repair_catalog(&volume, RepairScope::All, true)
                .await
                .unwrap();
            let acts: Vec<(u64, &str)> = actions.iter().map(|a| (a.seq, a.action)).collect();
            assert_eq!(acts, [(2, "recommit"), (2, "set-aside")], "{what}");
            found += 1;
        }
    }
    write(&file, &intact);
    assert_eq!(found, intact.len() * 4);
}

/// A record of the whole archive written while its marker disagreed with it (by an
/// older verify) goes with the repair that commits the archive again.
#[test]
fn marker_repair_clears_a_stale_whole_archive_record() {
    let t = TempRepo::new();
    let o = Objects::new(&t);
    let (images, _src) = three_points(&t);
    MarkerFlip::Digest.apply(&o, 2);
    let object = o.archive(2);
    let name = object.rsplit('/').next().unwrap();
    let id = name
        .trim_end_matches(".tarc")
        .split_once('-')
        .unwrap()
        .1
        .to_string();
    let record = serde_json::json!({
        "archive": id, "seq": 2, "object": name, "kind": "archive", "blocks": [],
        "detail": "commit volumes/v/commits/000000000002 is invalid: names archive digest ...",
        "found_at": "2026-11-30T00:00:00Z", "found_by": "verify",
    });
    o.put(
        &format!("volumes/v/damage/{id}"),
        &serde_json::to_vec(&record).unwrap(),
    );
    let v = t.run(&["verify"]);
    assert_eq!(v.code, Some(4), "{}", v.show());
    t.ok(&["repair", "v"]);
    assert!(o.list("volumes/v/damage").is_empty());
    let l = t.run(&["list"]);
    assert_eq!(l.code, Some(0), "{}", l.show());
    assert_eq!(t.run(&["status", "v"]).code, Some(0));
    restore_same(&t, "3", &images[2], "after repair");
}

/// The damage record of `seq`'s archive, if any.
fn damage_record(o: &Objects, seq: u64) -> Option<serde_json::Value> {
    let id = o
        .archive(seq)
        .rsplit_once('-')
        .unwrap()
        .1
        .trim_end_matches(".tarc")
        .to_string();
    o.list("volumes/v/damage")
        .contains(&id)
        .then(|| serde_json::from_slice(&o.get(&format!("volumes/v/damage/{id}"))).unwrap())
}

/// A damage record is cleared by the check that read what it is about, once that
/// check finds the archive whole: the structure by any `verify`, block data only by
/// `verify --data`; a structural verify keeps a data record and says which check
/// clears it. A record written before `found_in` existed counts as data.
#[test]
fn damage_records_are_cleared_by_the_check_that_read_them() {
    let t = TempRepo::new();
    let o = Objects::new(&t);
    three_points(&t);
    let rel = o.archive(2);
    let whole = o.get(&rel);
    let kept = |r: &serde_json::Value| {
        format!(
            "v seq 2 archive {}: the data damage recorded by verify at {} ({}) is kept: this check did not read all of its block data; `thinarc verify --data` reads it and clears the record if the data is whole",
            r["archive"].as_str().unwrap(),
            r["found_at"].as_str().unwrap(),
            r["detail"].as_str().unwrap()
        )
    };

    // Data damage: found by --data, kept by a structural verify, cleared by --data.
    Damage::FrameFlip.apply(&o);
    assert_eq!(t.run(&["verify", "--data"]).code, Some(4));
    let r = damage_record(&o, 2).expect("a record of the frame");
    assert_eq!(
        (&r["kind"], &r["found_in"]),
        (&json!("blocks"), &json!("data"))
    );
    o.put(&rel, &whole);
    let v = t.json(&["verify"]);
    assert_eq!(v["warnings"], json!([kept(&r)]));
    assert_eq!(damage_record(&o, 2), Some(r.clone()), "kept");
    assert_eq!(damaged_points(&t), 2, "status still counts it");
    let v = t.run(&["verify", "--data"]);
    assert_eq!(v.code, Some(0), "{}", v.show());
    assert_eq!(damage_record(&o, 2), None, "cleared by the data check");
    assert_eq!(t.run(&["status", "v"]).code, Some(0));

    // Structural damage: cleared by a structural verify that finds the archive whole.
    Damage::Truncated.apply(&o);
    assert_eq!(t.run(&["verify"]).code, Some(4));
    let r = damage_record(&o, 2).expect("a record of the archive");
    assert_eq!(
        (&r["kind"], &r["found_in"]),
        (&json!("archive"), &json!("structure"))
    );
    o.put(&rel, &whole);
    let v = t.json(&["verify"]);
    assert_eq!(v["warnings"], json!([]));
    assert_eq!(
        damage_record(&o, 2),
        None,
        "cleared by the structural check"
    );
    assert_eq!(t.run(&["status", "v"]).code, Some(0));

    // A record without `found_in` (an older thinarc) is data damage.
    let mut old = r.clone();
    old.as_object_mut().unwrap().remove("found_in");
    let key = format!("volumes/v/damage/{}", r["archive"].as_str().unwrap());
    o.put(&key, &serde_json::to_vec(&old).unwrap());
    let mut shown = old.clone();
    shown["found_in"] = json!("data");
    let v = t.json(&["verify"]);
    assert_eq!(v["warnings"], json!([kept(&shown)]));
    assert_eq!(t.run(&["verify", "--data"]).code, Some(0));
    assert_eq!(damage_record(&o, 2), None);
}

/// On a local store a summary entry is trusted while the archive keeps its size and
/// modification time (its ETag): a header byte flipped in place with the time put
/// back is not seen by `list` or `status` (they read no archive, by choice: README
/// "The catalog at scale"), is found by a structural `verify`, and from its damage
/// record on `list` and `status` report it.
#[test]
fn damage_header_rot_at_rest_is_found_by_verify_then_listed() {
    let t = TempRepo::new();
    let o = Objects::new(&t);
    three_points(&t);
    let path = t.repo().join(o.archive(1));
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut b = read(&path);
    b[40] ^= 0x5a;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &b[40..41], 40).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    let list = t.run(&["list", "v"]);
    assert_eq!(list.code, Some(0), "the summary hides it: {}", list.show());
    assert!(!list.stdout.contains("DAMAGED"), "{}", list.show());
    assert_eq!(t.run(&["status", "v"]).code, Some(0));
    let v = t.run(&["verify"]);
    assert_eq!(v.code, Some(4), "{}", v.show());
    let r = damage_record(&o, 1).expect("verify records it");
    assert_eq!(
        (&r["kind"], &r["found_in"]),
        (&json!("archive"), &json!("structure"))
    );
    let list = t.run(&["list", "v"]);
    assert_eq!(list.code, Some(1), "{}", list.show());
    assert_eq!(list.stdout.matches("DAMAGED").count(), 3, "{}", list.show());
    assert_eq!(damaged_points(&t), 3);
}

/// `copy --consolidate` of a point that depends on damaged data creates nothing and
/// names the way back, into a plain and into an encrypted destination (the source's
/// key): refused up front when the damage is recorded, with the way back `list` gives
/// for the point; when only the merge finds it, the destination the copy created is
/// removed, and the error names the archive and `verify --data`. `run`'s consolidated
/// copies do the same.
#[test]
fn damage_consolidated_copy_of_damaged_point_creates_nothing() {
    for encrypted in [false, true] {
        let t = if encrypted {
            let t = TempRepo::uninit().with_env("THINARC_PASSWORD", "damage test");
            t.ok(&["init"]);
            t
        } else {
            TempRepo::new()
        };
        let o = Objects::new(&t);
        let (_, src) = three_points(&t);
        Damage::FrameFlip.apply(&o);
        let dest = t.path("dest");
        let to = dest.to_str().unwrap();
        let object = o.archive(2);
        let id = object
            .rsplit('-')
            .next()
            .unwrap()
            .trim_end_matches(".tarc")
            .to_string();
        // What the merge meets is what verify finds (and records: the record is
        // taken back out, for the unrecorded case).
        let c = t.run(&["verify", "--data", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&c.stdout).unwrap();
        let found = v["problems"][0]["problem"].as_str().unwrap();
        // Verify adds what else the frame held.
        let found = found
            .split(" (its frame also holds")
            .next()
            .unwrap()
            .to_string();
        let first = if encrypted {
            "corrupt frame: frame at offset "
        } else {
            "block 16 checksum mismatch"
        };
        assert!(found.starts_with(first), "{v}");
        std::fs::remove_dir_all(t.repo().join("volumes/v/damage")).unwrap();
        // Not recorded: the merge finds it, and the new destination goes.
        let c = t.run(&["copy", "v", "--to", to, "--consolidate"]);
        assert_eq!(c.code, Some(1), "{}", c.show());
        let error = c.stderr.lines().find(|l| l.starts_with("error:")).unwrap();
        assert_eq!(
            error,
            format!(
                "error: copy to {to} failed: v seq 3 cannot be consolidated: archive {object}: {found}; nothing was copied: run `thinarc verify --data v` to record the damage, then follow the way back it names"
            ),
            "{}",
            c.show()
        );
        assert!(
            !dest.exists(),
            "the new destination was removed: {}",
            c.show()
        );
        // A folder that held the user's files when the copy made a repository in it
        // keeps them, and only them.
        let shared = t.path("shared");
        std::fs::create_dir_all(shared.join("photos/empty")).unwrap();
        std::fs::write(shared.join("photos/a.jpg"), b"mine").unwrap();
        std::fs::write(shared.join("volumes.txt"), b"notes").unwrap();
        let c = t.run(&[
            "copy",
            "v",
            "--to",
            shared.to_str().unwrap(),
            "--consolidate",
        ]);
        assert_eq!(c.code, Some(1), "{}", c.show());
        let mut left: Vec<String> = walkdir(&shared);
        left.sort();
        assert_eq!(
            left,
            ["photos", "photos/a.jpg", "photos/empty", "volumes.txt"],
            "{}",
            c.show()
        );
        assert_eq!(std::fs::read(shared.join("photos/a.jpg")).unwrap(), b"mine");
        // Recorded: refused before the destination is opened or created.
        assert_eq!(t.run(&["verify", "--data"]).code, Some(4));
        let blocks = if encrypted { 4 } else { 1 };
        let c = t.run(&["copy", "v", "--to", to, "--consolidate"]);
        assert_eq!(c.code, Some(1), "{}", c.show());
        assert_eq!(
            c.stderr,
            format!(
                "error: copy to {to} failed: v seq 3 cannot be consolidated: it depends on {blocks} damaged block(s) of archive {id} (seq 2), first block 16 (the next backup stores these blocks again; see `thinarc verify`); nothing was copied\n"
            )
        );
        let list = t.run(&["list", "v"]);
        assert!(
            list.stdout.contains(&format!("DAMAGED: depends on {blocks} damaged block(s) of archive {id} (seq 2), first block 16 (the next backup stores these blocks again; see `thinarc verify`)")),
            "the same way back as list: {}",
            list.show()
        );
        assert!(!dest.exists(), "no destination created: {}", c.show());
        // An existing destination gets nothing either.
        let existing = TempRepo::new();
        let c = t.run(&["copy", "v", "--to", existing.location(), "--consolidate"]);
        assert_eq!(c.code, Some(1), "{}", c.show());
        assert!(!existing.repo().join("volumes").exists(), "{}", c.show());

        // `run`: its backup builds seq 4 on the damaged block (the record is taken
        // out again: unrecorded, the backup cannot know), its copy's merge finds it.
        std::fs::remove_dir_all(t.repo().join("volumes/v/damage")).unwrap();
        let config = t.path("thinarc.toml");
        write(
            &config,
            format!(
                "state_dir = \"{}\"\n[repositories.main]\nlocation = \"{}\"\n[[volumes]]\nname = \"v\"\nsource = \"{}\"\n[[copies]]\nto = \"{to}\"\nconsolidate = true\n",
                t.path("state").display(),
                t.location(),
                src.display(),
            )
            .as_bytes(),
        );
        let o = crate::util::thinarc_env(
            &["run", "--config", config.to_str().unwrap(), "--json"],
            &t.env_pairs(),
        );
        assert_eq!(o.code, Some(1), "{}", o.show());
        let steps: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(
            (&steps[1]["operation"], &steps[1]["ok"]),
            (&json!("copy"), &json!(false)),
            "{steps}"
        );
        assert!(
            steps[1]["detail"]
                .as_str()
                .unwrap()
                .contains("v seq 4 cannot be consolidated: archive volumes/v/archives/"),
            "{steps}"
        );
        assert!(
            !dest.exists(),
            "run removed the destination it created: {steps}"
        );
    }
}

/// `verify`'s summary counts every point it examined, the damaged ones as failed,
/// whatever is damaged: a data frame (found by `--data`), an index segment, a header
/// (a point whose own archive is damaged used to be left out: "3 archive(s), 2
/// point(s)").
#[test]
fn damage_verify_summary_counts_every_point() {
    for (damage, args, summary) in [
        (
            Damage::FrameFlip,
            &["verify", "--data"][..],
            "verified 1 volume(s), 3 archive(s), 3 point(s); data: all, 57 blocks checked, 2.2 MiB read; 2 problem(s)",
        ),
        (
            Damage::IndexFlip,
            &["verify"][..],
            "verified 1 volume(s), 3 archive(s), 3 point(s); data: off, 0 blocks checked, 0 B read; 2 problem(s)",
        ),
        (
            Damage::HeaderFlip,
            &["verify"][..],
            "verified 1 volume(s), 3 archive(s), 3 point(s); data: off, 0 blocks checked, 0 B read; 3 problem(s)",
        ),
    ] {
        let t = TempRepo::new();
        let o = Objects::new(&t);
        three_points(&t);
        damage.apply(&o);
        let v = t.run(args);
        assert_eq!(v.code, Some(4), "{damage:?}: {}", v.show());
        let last = v.stdout.lines().last().unwrap();
        assert_eq!(
            last.rsplit_once(" in ").unwrap().0,
            summary,
            "{damage:?}: {}",
            v.show()
        );
        let j = t.run(&[args, &["--json"]].concat());
        let json: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
        assert_eq!(
            (&json["archives"], &json["points"]),
            (&json!(3), &json!(3)),
            "{damage:?}: {json}"
        );
    }
}

/// After `repair --drop-damaged` removed what a failed verify found, `status` exits 0
/// and shows that verify as resolved since by the repair, not as the present; the
/// repair has its own `last repair` line (a record of its own). Before the repair,
/// with a whole newer point backed up but the damaged points still listed, the line
/// has no such clause: what the verify found is still there.
#[test]
fn damage_status_after_repair_shows_the_verify_failure_resolved() {
    let t = TempRepo::new();
    let o = Objects::new(&t);
    let (_, src) = three_points(&t);
    Damage::FrameFlip.apply(&o);
    assert_eq!(t.run(&["verify", "--data"]).code, Some(4));
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    let time = |r: &serde_json::Value| {
        let t = r["finished"].as_str().unwrap();
        format!("{}Z", &t[..19])
    };
    let status = || {
        let s = t.run(&["status", "v"]);
        let j = t.run(&["status", "v", "--json"]);
        let j: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
        (s, j["volumes"][0].clone())
    };
    let (s, v) = status();
    assert_eq!(s.code, Some(4), "{}", s.show());
    let verify = v["verify"]["last"].clone();
    assert_eq!(verify["result"], "failure", "{v}");
    let failed = format!(
        "  last verify {}: FAILED: {}",
        time(&verify),
        verify["error"].as_str().unwrap()
    );
    assert!(
        verify["error"]
            .as_str()
            .unwrap()
            .starts_with("2 problem(s); first: v seq 2 archive "),
        "{v}"
    );
    assert!(s.stdout.lines().any(|l| l == failed), "{}", s.show());
    assert_eq!(v.get("verify_resolved"), None, "{v}");

    t.ok(&["repair", "v", "--drop-damaged"]);
    let (s, v) = status();
    assert_eq!(s.code, Some(0), "{}", s.show());
    let repair = &v["repair"]["last"];
    assert_eq!(repair["result"], "success", "{v}");
    assert_eq!(v["verify_resolved"]["by"], "repair", "{v}");
    let lines: Vec<&str> = s.stdout.lines().skip(2).collect();
    assert_eq!(
        lines,
        [
            format!(
                "{failed}; resolved since: repair {} succeeded and nothing listed depends on damage now",
                time(repair)
            ),
            format!("  last repair {}: ok", time(repair)),
        ],
        "{}",
        s.show()
    );
    // A dry run changes nothing and records nothing.
    t.ok(&["repair", "v", "--drop-damaged", "--dry-run"]);
    assert_eq!(status().1["repair"]["last"], *repair);
}

/// The destination a failed consolidation created is removed from S3 too: no object
/// is left under its prefix.
#[test]
fn damage_consolidated_copy_to_s3_leaves_no_destination_objects() {
    let t = TempRepo::new();
    let o = Objects::new(&t);
    three_points(&t);
    Damage::FrameFlip.apply(&o);
    let dest = TempRepo::s3_uninit();
    let env = dest.env_pairs();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let c = t.run_env(
        &["copy", "v", "--to", dest.location(), "--consolidate"],
        &env,
    );
    assert_eq!(c.code, Some(1), "{}", c.show());
    assert!(
        c.stderr
            .contains("v seq 3 cannot be consolidated: archive volumes/v/archives/"),
        "{}",
        c.show()
    );
    let left = Objects::new(&dest).list("");
    assert_eq!(left, Vec::<String>::new(), "{}", c.show());
}

/// Every file and folder under `dir`, as paths relative to it.
fn walkdir(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            found.push(
                path.strip_prefix(dir)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string(),
            );
            if path.is_dir() {
                todo.push(path);
            }
        }
    }
    found
}
