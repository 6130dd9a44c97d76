//! Damage is contained, reported and repairable (issue 10, kind 2): for every kind of
//! damage verify can see, intact points still list and restore, verify names every
//! point that depends on the damage and exits 4, status exits 4 and its metrics show
//! it, and the documented way back (README "Damage and repair") brings the newest
//! point and the nightly backup back without renaming the volume or reusing a seq.

use object_store::ObjectStoreExt;
use object_store::path::Path as Key;
use thinarc::format::{ArchiveReader, DIR_ENTRY_LEN, DirEntry};

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
            write(&self.t.repo().join(rel), bytes);
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
            Damage::FrameFlip | Damage::IndexFlip | Damage::Truncated => &[1],
            Damage::HeaderFlip => &[],
            Damage::TrailerFlip | Damage::ArchiveDeleted => &[1, 2],
            Damage::MiddleMarkerCorrupt | Damage::MiddleMarkerDeleted => &[1],
            Damage::NewestMarkerCorrupt | Damage::NewestMarkerDeleted => &[1, 2],
        }
    }

    /// Points verify must name (`volume seq N`).
    fn named(self) -> &'static [u64] {
        match self {
            Damage::FrameFlip | Damage::IndexFlip | Damage::Truncated => &[2, 3],
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
