//! The fault campaign (issue 10) at a scale that fits CI: seeded, bounded, run through
//! the real binary on a local repository and on the moto S3 server.
//!
//! Every fault is followed by the next normal run, then every point committed before the
//! fault is restored and compared byte for byte (except the points prune was asked to
//! remove). The seed is printed; `THINARC_TEST_SEED=N` replays a run. Each test ends by
//! printing its figures (`campaign: ...`), which the README quotes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Rng, TempRepo, make_image, read, write};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// The test volume: small enough for many rounds, large enough that a throttled run
/// is still going when the kill lands.
const IMAGE: usize = 6 * MIB;
const BLOCK: usize = 64 * KIB;
/// Uploads and reads are slowed to this so that kills land before, during and after
/// the interesting steps.
const LIMIT: &str = "3M";

/// The seed of this run: `THINARC_TEST_SEED`, or a fixed default so CI is repeatable.
fn seed(default: u64) -> u64 {
    let seed = std::env::var("THINARC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("campaign seed {seed} (replay with THINARC_TEST_SEED={seed})");
    seed
}

/// What a campaign did, printed at its end.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub runs: usize,
    pub kills: usize,
    pub points_checked: usize,
    pub lost: usize,
    pub damage_total: usize,
    pub damage_named: usize,
    pub ways_back_total: usize,
    pub ways_back_ok: usize,
    /// What went wrong, one line each; the test fails at its end if any.
    pub failures: Vec<String>,
}

impl Tally {
    pub(crate) fn print(&self, what: &str) {
        eprintln!(
            "campaign {what}: runs {}, kills {}, points checked {}, lost {}, damage detected and named {}/{}, ways back working {}/{}",
            self.runs,
            self.kills,
            self.points_checked,
            self.lost,
            self.damage_named,
            self.damage_total,
            self.ways_back_ok,
            self.ways_back_total
        );
        for f in &self.failures {
            eprintln!("  FAILED: {f}");
        }
    }

    /// Records a lost point.
    pub(crate) fn lost(&mut self, what: String) {
        self.lost += 1;
        self.failures.push(what);
    }

    /// Prints the figures, then fails if anything was lost or not named.
    pub(crate) fn finish(&self, what: &str) {
        self.print(what);
        assert!(
            self.failures.is_empty(),
            "{what}: {} failure(s)",
            self.failures.len()
        );
        assert_eq!(
            self.damage_named, self.damage_total,
            "every damage is named"
        );
        assert_eq!(
            self.ways_back_ok, self.ways_back_total,
            "every way back works"
        );
    }
}

/// One volume under test and the image every committed point must restore to.
pub(crate) struct Volume {
    pub t: TempRepo,
    pub src: PathBuf,
    pub img: Vec<u8>,
    pub rng: Rng,
    /// Committed points: seq → image.
    pub expected: BTreeMap<u64, Vec<u8>>,
}

impl Volume {
    pub(crate) fn new(t: TempRepo, seed: u64) -> Self {
        let src = t.path("v.img");
        let img = make_image(IMAGE, seed);
        write(&src, &img);
        Volume {
            t,
            src,
            img,
            rng: Rng::new(seed ^ 0x5eed),
            expected: BTreeMap::new(),
        }
    }

    /// Overwrites a few random blocks with new random data.
    pub(crate) fn mutate(&mut self) {
        let blocks = IMAGE / BLOCK;
        for _ in 0..(4 + self.rng.below(12)) {
            let b = self.rng.below(blocks as u64) as usize;
            let at = b * BLOCK;
            self.rng.fill(&mut self.img[at..at + BLOCK]);
        }
        write(&self.src, &self.img);
    }

    pub(crate) fn src(&self) -> &str {
        self.src.to_str().unwrap()
    }

    /// A backup that must succeed; records its point.
    pub(crate) fn backup(&mut self) -> u64 {
        let r = self.t.json(&["backup", self.src(), "--volume", "v"]);
        let seq = r["seq"].as_u64().expect("seq");
        self.expected.insert(seq, self.img.clone());
        seq
    }

    /// Seqs listed in `t`'s repository for the volume.
    pub(crate) fn listed_in(t: &TempRepo) -> Vec<u64> {
        let o = t.run(&["list", "v", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&o.stdout)
            .unwrap_or_else(|e| panic!("list --json: {e}\n{}", o.show()));
        v.as_array()
            .expect("array")
            .iter()
            .filter_map(|p| p["seq"].as_u64())
            .collect()
    }

    /// A child `thinarc -q -r REPO args...`, to be killed.
    pub(crate) fn spawn(&self, args: &[&str]) -> Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_thinarc"));
        for (k, _) in std::env::vars() {
            if k.starts_with("THINARC_") || k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.t.env_pairs())
            .env("THINARC_LOCK_TTL", "1")
            .args(["-q", "-r", self.t.location()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn thinarc")
    }

    /// Restores seq `seq` from `t` and compares it with the expected image.
    pub(crate) fn restores(&self, t: &TempRepo, seq: u64, tally: &mut Tally, what: &str) {
        let out = t.path(&format!("check-{seq}.img"));
        let _ = std::fs::remove_file(&out);
        let o = t.run(&[
            "restore",
            "v",
            out.to_str().unwrap(),
            "--at",
            &seq.to_string(),
        ]);
        tally.points_checked += 1;
        let expected = &self.expected[&seq];
        if !o.success || read(&out) != *expected {
            tally.lost(format!(
                "{what}: seq {seq} does not restore byte for byte: {}",
                o.stderr.trim()
            ));
        }
        let _ = std::fs::remove_file(&out);
    }
}

/// Kills `child` with SIGKILL after `delay` (or reaps it if it ended first); true if
/// the kill landed on a running process.
fn kill_after(mut child: Child, delay: Duration) -> bool {
    let end = Instant::now() + delay;
    while Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let landed = child.try_wait().unwrap().is_none();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    child.wait().unwrap();
    landed
}

/// SIGKILL at random moments of backup, prune and copy, each followed by the next
/// normal run of the same command and a nightly backup; then every point committed
/// before the fault (and not asked to be pruned) restores byte for byte, from the
/// repository and from the copy.
fn kills(v: &mut Volume, dest: &TempRepo, rounds: usize, tally: &mut Tally) {
    let dest_loc = dest.location().to_string();
    v.backup();
    v.mutate();
    v.backup();
    for round in 0..rounds {
        let op = v.rng.below(3);
        let delay = Duration::from_millis(v.rng.below(700));
        tally.runs += 1;
        let mut prune_keep = None;
        let child = match op {
            0 => {
                v.mutate();
                v.spawn(&["--upload-limit", LIMIT, "backup", v.src(), "--volume", "v"])
            }
            1 => {
                let keep = 2 + v.rng.below(2);
                prune_keep = Some(keep);
                v.spawn(&[
                    "--upload-limit",
                    LIMIT,
                    "prune",
                    "v",
                    "--keep-last",
                    &keep.to_string(),
                ])
            }
            _ => {
                let mut args = vec!["--upload-limit", LIMIT, "copy", "--to", &dest_loc, "v"];
                if v.rng.below(3) == 0 {
                    args.push("--consolidate");
                }
                v.spawn(&args)
            }
        };
        if kill_after(child, delay) {
            tally.kills += 1;
        }
        let what = format!("round {round}: kill of op {op} after {delay:?}");
        // The next normal run of the same command, then the nightly backup.
        match op {
            1 => {
                let keep = prune_keep.unwrap().to_string();
                v.t.ok(&["prune", "v", "--keep-last", &keep]);
            }
            2 => {
                v.t.ok(&["copy", "--to", &dest_loc, "v"]);
            }
            _ => {}
        }
        let before: Vec<u64> = v.expected.keys().copied().collect();
        let new_seq = v.backup();
        let listed = Volume::listed_in(&v.t);
        // A killed backup may have committed (or left a complete archive that the next
        // run re-committed): its point holds the image it read, which is the current
        // one (the recovery backup read the same image).
        for &seq in &listed {
            if !v.expected.contains_key(&seq) {
                assert!(
                    op == 0 && seq < new_seq,
                    "{what}: unexpected new point {seq}"
                );
                v.expected.insert(seq, v.img.clone());
            }
        }
        // Points prune was asked to remove may be gone; every other one must be listed.
        let droppable: Vec<u64> = match prune_keep {
            Some(k) => before.iter().rev().skip(k as usize).copied().collect(),
            None => Vec::new(),
        };
        for seq in before {
            if !listed.contains(&seq) {
                if droppable.contains(&seq) {
                    v.expected.remove(&seq);
                } else {
                    tally.lost(format!("{what}: seq {seq} was lost (listed: {listed:?})"));
                    v.expected.remove(&seq);
                }
            }
        }
        for &seq in &listed {
            v.restores(&v.t, seq, tally, &what);
        }
        // Keep the chain short so the rounds stay cheap.
        if listed.len() > 6 {
            v.t.ok(&["prune", "v", "--keep-last", "4"]);
            let kept = Volume::listed_in(&v.t);
            v.expected.retain(|s, _| kept.contains(s));
        }
    }
    // The copy restores on its own: bring it up to date, then check what it holds.
    v.t.ok(&["copy", "--to", &dest_loc, "v"]);
    for seq in Volume::listed_in(dest) {
        if v.expected.contains_key(&seq) {
            v.restores(dest, seq, tally, "the copy");
        }
    }
    let verify = v.t.run(&["verify", "--data"]);
    assert!(
        verify.success,
        "verify --data after the campaign:\n{}",
        verify.show()
    );
}

#[test]
fn sigkill_at_random_moments_of_backup_prune_and_copy_loses_no_point_local() {
    let seed = seed(20261130);
    let mut v = Volume::new(TempRepo::new(), seed);
    let dest = TempRepo::uninit();
    let mut tally = Tally::default();
    kills(&mut v, &dest, 14, &mut tally);
    tally.finish("SIGKILL, local");
}

#[test]
fn sigkill_at_random_moments_of_backup_prune_and_copy_loses_no_point_s3() {
    let seed = seed(20261131);
    let mut v = Volume::new(TempRepo::s3(), seed);
    let dest = TempRepo::uninit();
    let mut tally = Tally::default();
    kills(&mut v, &dest, 6, &mut tally);
    tally.finish("SIGKILL, moto S3");
}

/// Where in an archive a byte is flipped.
#[derive(Debug, Clone, Copy)]
enum Region {
    /// Inside the compressed data of the first data frame.
    Frame,
    /// Inside the first index segment.
    Index,
    /// Inside the CBOR header.
    Header,
    /// Inside the trailer.
    Trailer,
}

/// One kind of damage to one object of a four-point volume.
#[derive(Debug, Clone, Copy)]
enum Damage {
    Flip(u64, Region),
    Truncate(u64),
    Delete(u64),
    CorruptMarker(u64),
    TruncateMarker(u64),
    DeleteMarker(u64),
}

impl Damage {
    /// The seq whose object is damaged.
    fn seq(self) -> u64 {
        match self {
            Damage::Flip(s, _)
            | Damage::Truncate(s)
            | Damage::Delete(s)
            | Damage::CorruptMarker(s)
            | Damage::TruncateMarker(s)
            | Damage::DeleteMarker(s) => s,
        }
    }

    fn on_marker(self) -> bool {
        matches!(
            self,
            Damage::CorruptMarker(_) | Damage::TruncateMarker(_) | Damage::DeleteMarker(_)
        )
    }
}

/// Flips one byte of `file` at `at`.
fn flip(file: &std::path::Path, at: usize) {
    let mut bytes = read(file);
    bytes[at] ^= 0x5a;
    write(file, &bytes);
}

/// The offset of a byte inside `region` of the archive `bytes`.
fn region_offset(bytes: &[u8], region: Region) -> usize {
    use thinarc::format::{ArchiveReader, DIR_ENTRY_LEN, DirEntry, EntryKind, PREAMBLE_LEN};
    let a = ArchiveReader::open(bytes).expect("an intact archive");
    match region {
        Region::Header => PREAMBLE_LEN + 8,
        Region::Trailer => bytes.len() - 40,
        Region::Index => {
            let dir = a.trailer.directory_offset as usize;
            let first: [u8; DIR_ENTRY_LEN] = bytes[dir..dir + DIR_ENTRY_LEN].try_into().unwrap();
            DirEntry::decode(&first).expect("directory entry").offset as usize + 24
        }
        Region::Frame => {
            let entries = a.entries().expect("index");
            let (off, len) = entries
                .iter()
                .find_map(|e| match e.kind {
                    EntryKind::Data {
                        frame_offset,
                        frame_len,
                        ..
                    } => Some((frame_offset as usize, frame_len as usize)),
                    _ => None,
                })
                .expect("a data frame");
            off + len / 2
        }
    }
}

/// Applies `damage` to the local repository of `v`.
fn apply(v: &Volume, damage: Damage) {
    let vol = v.t.repo().join("volumes/v");
    let seq = damage.seq();
    let archive = std::fs::read_dir(vol.join("archives"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(&format!("{seq:012}-")) && n.ends_with(".tarc")
        })
        .expect("the archive of the damaged seq");
    let marker = std::fs::read_dir(vol.join("commits"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{seq:012}"))
        })
        .expect("the marker of the damaged seq");
    match damage {
        Damage::Flip(_, region) => flip(&archive, region_offset(&read(&archive), region)),
        Damage::Truncate(_) => {
            let len = std::fs::metadata(&archive).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&archive)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        }
        Damage::Delete(_) => std::fs::remove_file(&archive).unwrap(),
        Damage::CorruptMarker(_) => flip(&marker, 20),
        Damage::TruncateMarker(_) => write(&marker, b""),
        Damage::DeleteMarker(_) => std::fs::remove_file(&marker).unwrap(),
    }
}

/// The names by which reports may name the damaged object of `damage`: the marker's
/// or archive object's seq prefix, or `seq N archive ID`.
fn object_names(damage: Damage, archive_id: &str) -> [String; 2] {
    let seq = damage.seq();
    [
        format!("{seq:012}"),
        format!("seq {seq} archive {archive_id}"),
    ]
}

/// Every kind of damage verify can see, in every position that matters: each is named
/// by verify and status, intact points keep restoring, no damaged point restores wrong
/// bytes, and the documented way back (README "Damage and repair") brings the newest
/// point and the nightly run back without renaming the volume or reusing a seq.
#[test]
fn every_damage_is_named_contained_and_has_a_way_back() {
    let cases = [
        Damage::Flip(2, Region::Frame),
        Damage::Flip(4, Region::Frame),
        Damage::Flip(2, Region::Index),
        Damage::Flip(3, Region::Header),
        Damage::Flip(2, Region::Trailer),
        Damage::Flip(1, Region::Frame),
        Damage::Truncate(1),
        Damage::Truncate(3),
        Damage::Delete(2),
        Damage::Delete(4),
        Damage::CorruptMarker(2),
        Damage::CorruptMarker(4),
        Damage::TruncateMarker(3),
        Damage::DeleteMarker(2),
        Damage::DeleteMarker(4),
    ];
    let mut tally = Tally::default();
    for (i, damage) in cases.into_iter().enumerate() {
        let what = format!("{damage:?}");
        let mut v = Volume::new(TempRepo::new(), 700 + i as u64);
        for _ in 0..4 {
            v.backup();
            v.mutate();
        }
        let ids = v.t.json(&["list", "v"]);
        let archive_id = ids
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["seq"] == damage.seq())
            .map(|p| p["id"].as_str().unwrap().to_string())
            .unwrap();
        apply(&v, damage);
        tally.runs += 1;
        tally.damage_total += 1;

        // Named: verify --data and status exit 4 and name the object.
        let verify = v.t.run(&["verify", "--data"]);
        let names = object_names(damage, &archive_id);
        let status = v.t.run(&["status", "v"]);
        if verify.code == Some(4)
            && names
                .iter()
                .any(|n| verify.stdout.contains(n) || verify.stderr.contains(n))
            && status.code == Some(4)
        {
            tally.damage_named += 1;
        } else {
            tally.failures.push(format!(
                "{what}: not named (want exit 4 naming one of {names:?}): verify {:?} {} | status {:?} {}",
                verify.code,
                verify.stderr.trim(),
                status.code,
                status.stdout.trim()
            ));
        }

        // Contained: points below the damaged seq restore; no point restores wrong bytes.
        for seq in 1..=4 {
            let out = v.t.path(&format!("r{seq}.img"));
            let at = seq.to_string();
            let o =
                v.t.run(&["restore", "v", out.to_str().unwrap(), "--at", &at]);
            tally.points_checked += 1;
            if o.success {
                assert!(
                    read(&out) == v.expected[&seq],
                    "{what}: seq {seq} restored WRONG BYTES"
                );
                std::fs::remove_file(&out).unwrap();
            } else if seq < damage.seq() {
                tally.lost(format!(
                    "{what}: intact seq {seq} does not restore: {}",
                    o.stderr.trim()
                ));
            }
        }

        // The way back: repair for the catalog, then the next nightly backup (which
        // re-stores known-damaged blocks, or starts a new chain).
        tally.ways_back_total += 1;
        let lost_before = tally.failures.len();
        if damage.on_marker() {
            let o = v.t.run(&["repair", "v"]);
            if !o.success {
                tally
                    .failures
                    .push(format!("{what}: repair failed: {}", o.stderr.trim()));
                continue;
            }
            // The point itself and everything built on it come back.
            for seq in damage.seq()..=4 {
                v.restores(&v.t, seq, &mut tally, &what);
            }
        }
        let o = v.t.run(&["backup", v.src(), "--volume", "v", "--json"]);
        if !o.success {
            tally.failures.push(format!(
                "{what}: the next backup failed: {}",
                o.stderr.trim()
            ));
            continue;
        }
        let r: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        let newest = r["seq"].as_u64().unwrap();
        if newest <= 4 {
            tally.failures.push(format!("{what}: seq {newest} reused"));
        }
        v.expected.insert(newest, v.img.clone());
        v.restores(&v.t, newest, &mut tally, &what);
        v.mutate();
        let next = v.backup();
        v.restores(&v.t, next, &mut tally, &what);
        if tally.failures.len() == lost_before {
            tally.ways_back_ok += 1;
        }
    }
    tally.finish("damage, local");
}
