//! `thinarc verify` on a real three-point chain, clean and with each kind of damage
//! injected through the store (so the same code damages local and S3 repositories):
//! a flipped byte in block data (found only with --data), in an index segment, the
//! header and the trailer; a missing parent (commit marker or archive object); a
//! truncated archive; a commit marker whose digest does not match. Each problem must
//! name the volume, the archive (seq and id) and, where it concerns one, the block;
//! verify keeps going and exits with 4.

use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path as Key;
use serde_json::{Value, json};
use thinarc::format::{ArchiveReader, DIR_ENTRY_LEN, DirEntry, EntryKind, FrameKind};
use thinarc::repo::{Commit, Repository, VolumeName};

use crate::lock::lib_repo;
use crate::util::{TempRepo, make_image, write};

const VOLUME: &str = "vm/disk";

/// A chain of three points (full, two deltas) of a 600 KiB image with 4 KiB blocks;
/// returns the library's view and the commits.
async fn chain(t: &TempRepo) -> (Repository, Vec<Commit>) {
    let src = t.path("disk.img");
    let mut img = make_image(600 << 10, 21);
    for (i, at) in [(0u8, 0), (2, 100_000), (3, 400_000)] {
        if i > 0 {
            img[at..at + 30_000].fill(i);
        }
        write(&src, &img);
        t.ok(&[
            "backup",
            src.to_str().unwrap(),
            "--volume",
            VOLUME,
            "--block-size",
            "4K",
        ]);
    }
    let repo = lib_repo(t).await;
    let commits = repo
        .commits(&VolumeName::new(VOLUME).unwrap())
        .await
        .unwrap();
    assert_eq!(commits.len(), 3);
    (repo, commits)
}

async fn get(repo: &Repository, key: &Key) -> Vec<u8> {
    repo.store()
        .get(key)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

async fn put(repo: &Repository, key: &Key, bytes: Vec<u8>) {
    repo.store()
        .put(key, Bytes::from(bytes).into())
        .await
        .unwrap();
}

/// Flips bit 0 of byte `at` of `c`'s archive object.
async fn flip(repo: &Repository, c: &Commit, at: usize) {
    let key = c.archive_key();
    let mut bytes = get(repo, &key).await;
    bytes[at] ^= 1;
    put(repo, &key, bytes).await;
}

/// Runs `verify ARGS --json`, expecting exit code `code`; returns the report.
fn verify(t: &TempRepo, args: &[&str], code: i32) -> Value {
    let mut a = vec!["verify"];
    a.extend_from_slice(args);
    a.push("--json");
    let out = t.run(&a);
    assert_eq!(out.code, Some(code), "{}", out.show());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", out.show()))
}

/// The problems of a report as (seq, archive, block) and their texts.
fn problems(report: &Value) -> (Vec<(Value, Value, Value)>, Vec<String>) {
    let list = report["problems"].as_array().unwrap();
    for p in list {
        assert_eq!(p["volume"], VOLUME);
    }
    (
        list.iter()
            .map(|p| (p["seq"].clone(), p["archive"].clone(), p["block"].clone()))
            .collect(),
        list.iter()
            .map(|p| p["problem"].as_str().unwrap().to_string())
            .collect(),
    )
}

fn at(c: &Commit, block: Option<u64>) -> (Value, Value, Value) {
    (json!(c.seq), json!(c.archive_id), json!(block))
}

/// Asserts that the clean chain verifies with and without data.
fn assert_clean(t: &TempRepo) {
    for args in [
        &[][..],
        &["--data"],
        &["--data-subset", "50%", "--seed", "7"],
    ] {
        let r = verify(t, args, 0);
        assert_eq!(r["problems"], json!([]), "{args:?}");
        assert_eq!(r["archives"], 3);
        assert_eq!(r["points"], 3);
    }
    let all = verify(t, &["--data"], 0);
    let n = all["data_blocks_checked"].as_u64().unwrap();
    assert!(n > 150, "every data block of three archives: {n}");
    let full = verify(t, &["--data-subset", "100%"], 0);
    assert_eq!(
        full["data_blocks_checked"], n,
        "a 100% sample reads everything"
    );
    // Samples by seed: the same seed reads the same frames, and different seeds read
    // different parts (this chain has few frames, so some seeds read none or all).
    let sample = |seed: u64| {
        let seed = seed.to_string();
        let r = verify(t, &["--data-subset", "50%", "--seed", &seed], 0);
        assert_eq!(r["data"], format!("sample 50% seed {seed}"));
        r["data_blocks_checked"].as_u64().unwrap()
    };
    let counts: Vec<u64> = (1..=12).map(sample).collect();
    assert_eq!(
        sample(1),
        counts[0],
        "the same seed samples the same frames"
    );
    assert!(
        counts.iter().any(|&h| h > 0 && h < n),
        "samples read part of the data: {counts:?} of {n}"
    );
}

/// The first data block of a raw frame of `c`, and the offset of its byte 100.
async fn raw_block(repo: &Repository, c: &Commit) -> (u64, usize) {
    let bytes = get(repo, &c.archive_key()).await;
    let r = ArchiveReader::open(&bytes).unwrap();
    r.entries()
        .unwrap()
        .iter()
        .find_map(|e| match e.kind {
            EntryKind::Data {
                frame: FrameKind::Raw,
                frame_offset,
                slot,
                ..
            } => Some((
                e.block,
                frame_offset as usize + usize::from(slot) * 4096 + 100,
            )),
            _ => None,
        })
        .expect("random data is stored raw")
}

/// Flips a byte of block data: structure is fine; --data names the block.
async fn data_flip_scenario(t: &TempRepo) {
    let (repo, commits) = chain(t).await;
    assert_clean(t);
    let c = &commits[0];
    let (block, offset) = raw_block(&repo, c).await;
    flip(&repo, c, offset).await;
    assert_eq!(verify(t, &[], 0)["problems"], json!([]), "no data read");
    for args in [&["--data"][..], &["--data-subset", "100%"]] {
        let (at_, texts) = problems(&verify(t, args, 4));
        // The block, then every point that takes it from seq 1's archive.
        assert_eq!(
            at_,
            [
                at(c, Some(block)),
                at(&commits[1], Some(block)),
                at(&commits[2], Some(block))
            ],
            "{texts:?}"
        );
        assert!(
            texts[0].starts_with(&format!("block {block} checksum mismatch (expected ")),
            "{texts:?}"
        );
        for text in &texts[1..] {
            assert!(
                text.starts_with(&format!(
                    "the point depends on 1 damaged block(s) of archive {} (seq 1), first block {block}: ",
                    c.archive_id
                )),
                "{texts:?}"
            );
        }
    }
    // The human form: one line per problem, then the summary; exit code 4.
    let out = t.run(&["verify", "--data", "-q"]);
    assert_eq!(out.code, Some(4));
    let first = out.stdout.lines().next().unwrap();
    assert!(
        first.starts_with(&format!(
            "problem: {VOLUME} seq 1 archive {} block {block}: block {block} checksum mismatch",
            c.archive_id
        )),
        "{}",
        out.show()
    );
    assert_eq!(
        out.stderr,
        format!(
            "error: verify found 3 problems in {} (listed above)\n",
            t.location()
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_data_byte_is_found_only_by_data() {
    data_flip_scenario(&TempRepo::new()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clean_and_flipped_data_on_s3() {
    data_flip_scenario(&TempRepo::s3()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_index_segment_names_the_segment_and_the_points_it_breaks() {
    let t = TempRepo::new();
    let (repo, commits) = chain(&t).await;
    let c = &commits[1];
    let bytes = get(&repo, &c.archive_key()).await;
    let dir = ArchiveReader::open(&bytes)
        .unwrap()
        .trailer
        .directory_offset as usize;
    let d = DirEntry::decode(&bytes[dir..dir + DIR_ENTRY_LEN].try_into().unwrap()).unwrap();
    flip(&repo, c, d.offset as usize + 40).await;
    let (at_, texts) = problems(&verify(&t, &[], 4));
    assert_eq!(
        at_,
        [at(c, Some(d.first_block)), at(&commits[2], None)],
        "{texts:?}"
    );
    assert!(
        texts[0].starts_with(&format!(
            "index segment 0 (blocks {}..{}): archive {} is corrupt: index segment at offset {} checksum mismatch",
            d.first_block,
            d.end_block,
            c.archive_key(),
            d.offset
        )),
        "{texts:?}"
    );
    assert!(
        texts[1].starts_with("the point cannot be restored: archive"),
        "{texts:?}"
    );
}

/// Damages seq 1's archive at `offset(len)`; the archive and the two points built on
/// it are reported, and the message says `what`.
async fn base_damage(offset: fn(usize) -> usize, what: &str) {
    let t = TempRepo::new();
    let (repo, commits) = chain(&t).await;
    let c = &commits[0];
    let len = get(&repo, &c.archive_key()).await.len();
    flip(&repo, c, offset(len)).await;
    let (at_, texts) = problems(&verify(&t, &["--data"], 4));
    assert_eq!(
        at_,
        [at(c, None), at(&commits[1], None), at(&commits[2], None)],
        "{texts:?}"
    );
    assert!(
        texts[0].starts_with(&format!("archive {} is corrupt: ", c.archive_key())),
        "{texts:?}"
    );
    assert!(texts[0].contains(what), "{texts:?}");
    for t in &texts[1..] {
        assert!(t.starts_with("the point cannot be restored: "), "{t}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_header_byte() {
    base_damage(|_| 30, "header checksum mismatch").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_trailer_byte() {
    base_damage(|len| len - 100, "trailer checksum mismatch").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_parent_commit_breaks_the_points_above() {
    let t = TempRepo::new();
    let (repo, commits) = chain(&t).await;
    repo.store().delete(&commits[1].key).await.unwrap();
    let (at_, texts) = problems(&verify(&t, &[], 4));
    // Seq 2's archive is complete and uncommitted (its marker lost): named with the
    // way back, and seq 3 above it.
    assert_eq!(
        at_,
        [at(&commits[1], None), at(&commits[2], None)],
        "{texts:?}"
    );
    assert_eq!(
        texts[0],
        format!(
            "archive {} is complete but not committed (its commit marker is lost or corrupt): run `thinarc repair {VOLUME}` to re-commit it",
            commits[1].archive_key()
        )
    );
    assert_eq!(
        texts[1],
        format!(
            "the point cannot be restored: chain of {VOLUME} is broken at seq 3: parent seq 2 (archive {}) is not committed: {}",
            commits[1].archive_id, texts[0]
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_parent_archive_object() {
    let t = TempRepo::new();
    let (repo, commits) = chain(&t).await;
    repo.store()
        .delete(&commits[1].archive_key())
        .await
        .unwrap();
    let (at_, texts) = problems(&verify(&t, &[], 4));
    assert_eq!(
        at_,
        [at(&commits[1], None), at(&commits[2], None)],
        "{texts:?}"
    );
    assert_eq!(
        texts[0],
        format!("archive object {} is missing", commits[1].archive_key())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_archive() {
    let t = TempRepo::new();
    let (repo, commits) = chain(&t).await;
    let c = &commits[2];
    let mut bytes = get(&repo, &c.archive_key()).await;
    let full = bytes.len();
    bytes.truncate(full / 2);
    put(&repo, &c.archive_key(), bytes).await;
    let (at_, texts) = problems(&verify(&t, &[], 4));
    assert_eq!(at_, [at(c, None)], "{texts:?}");
    assert_eq!(
        texts[0],
        format!(
            "archive {} is truncated: {} of {full} bytes",
            c.archive_key(),
            full / 2
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_marker_digest_mismatch() {
    let t = TempRepo::new();
    let (repo, commits) = chain(&t).await;
    let c = &commits[1];
    let mut marker: Value = serde_json::from_slice(&get(&repo, &c.key).await).unwrap();
    let wrong = "ab".repeat(32);
    marker["digest"] = json!(wrong);
    put(&repo, &c.key, serde_json::to_vec(&marker).unwrap()).await;
    let (at_, texts) = problems(&verify(&t, &[], 4));
    assert_eq!(at_, [at(c, None), at(&commits[2], None)], "{texts:?}");
    assert_eq!(
        texts[0],
        format!(
            "commit {} is invalid: names archive digest {wrong}, archive {} has {} (run `thinarc repair {VOLUME}` to re-commit the archive if it is intact)",
            c.key,
            c.archive_key(),
            c.digest
        )
    );
    assert_eq!(
        texts[1],
        format!("the point cannot be restored: {}", texts[0]),
        "seq 3 is built on seq 2"
    );
}

#[test]
fn bad_arguments_and_unknown_volumes() {
    let t = TempRepo::new();
    let out = t.run(&["verify", "nope"]);
    assert_eq!(out.code, Some(1), "{}", out.show());
    assert_eq!(
        out.stderr,
        "error: no volume named \"nope\" in the repository (known: none)\n"
    );
    let out = t.run(&["verify", "--data-subset", "0%"]);
    assert_eq!(out.code, Some(2), "{}", out.show());
    assert!(
        out.stderr
            .contains("\"0%\" must be more than 0% and at most 100%"),
        "{}",
        out.show()
    );
    let out = t.run(&["verify", "--source", "/dev/null"]);
    assert_eq!(out.code, Some(2), "--source needs a volume: {}", out.show());
    // An empty repository verifies.
    assert_eq!(verify(&t, &[], 0)["volumes"], json!([]));
}

#[test]
fn source_matches_the_latest_point_until_it_changes() {
    let t = TempRepo::new();
    let src = t.path("disk.img");
    let mut img = make_image(300 << 10, 3);
    write(&src, &img);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", VOLUME]);
    let s = src.to_str().unwrap();
    let r = verify(&t, &[VOLUME, "--source", s], 0);
    assert_eq!(r["source"]["matches"], true);
    assert_eq!(r["source"]["seq"], 1);
    img[1000] ^= 0xff;
    write(&src, &img);
    let r = verify(&t, &[VOLUME, "--source", s], 4);
    assert_eq!(r["source"]["matches"], false);
    let (at_, texts) = problems(&r);
    assert_eq!(at_.len(), 1);
    assert!(
        texts[0].starts_with(&format!("source {s} has image digest ")),
        "{texts:?}"
    );
    // lvm:VG/LV reads the LV's base snapshot (tests/it/lvm_vm.rs); here there is no
    // such VG, which fails to run (exit 1) and names the source.
    let out = t.run(&["verify", VOLUME, "--source", "lvm:vg0/web"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .starts_with("error: reading --source lvm:vg0/web: "),
        "{}",
        out.show()
    );
    // A malformed lvm: source is a usage error (every class: tests/it/bad_names.rs).
    let out = t.run(&["verify", VOLUME, "--source", "lvm:vg0"]);
    assert_eq!(out.code, Some(2));
    assert_eq!(
        out.stderr.lines().next().unwrap(),
        "error: invalid value 'lvm:vg0' for '--source <SOURCE>': an LVM source is written lvm:VG/LV",
        "{}",
        out.show()
    );
}
