//! The archive format against `format-spec/FORMAT.md`: every test vector decodes (or
//! fails) as its `.json` says, random archives round-trip, the image digest matches an
//! implementation written from the spec, and hostile bytes never make the reader panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use thinarc::format::{
    ArchiveReader, ArchiveWriter, BlockSize, Compression, Digest, DirEntry, EncodedFrame,
    EntryKind, FormatError, FrameKind, Geometry, Header, ImageHasher, IndexEntry, ParentRef,
    SourceInfo, TRAILER_LEN, compress_frame,
};

pub(crate) fn vector_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("format-spec/vectors")
        .join(kind)
}

/// Every `NAME.tarc` of `valid/` or `invalid/` with its parsed `NAME.json`.
pub(crate) fn vectors(kind: &str) -> Vec<(String, Vec<u8>, Value)> {
    let dir = vector_dir(kind);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "tarc") {
            continue;
        }
        let name = path
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        let json = std::fs::read_to_string(path.with_extension("json"))
            .unwrap_or_else(|e| panic!("{name}.json: {e}"));
        let json: Value =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{name}.json: {e}"));
        out.push((name, std::fs::read(&path).expect("read vector"), json));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no vectors in {}", dir.display());
    out
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{v} is not an unsigned integer"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("{v} is not a string"))
}

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The entry of a sorted index that holds `block`, if any.
fn holder(entries: &[IndexEntry], block: u64) -> Option<&IndexEntry> {
    let i = entries.partition_point(|e| e.block <= block);
    entries[..i].last().filter(|e| block < e.end())
}

/// Content of every block held by an archive, decoding each frame once.
fn held_blocks(r: &ArchiveReader<'_>) -> BTreeMap<u64, Vec<u8>> {
    let entries = r.entries().expect("entries");
    let mut frames: BTreeMap<u64, Vec<IndexEntry>> = BTreeMap::new();
    for e in &entries {
        if let EntryKind::Data { frame_offset, .. } = e.kind {
            frames.entry(frame_offset).or_default().push(*e);
        }
    }
    let mut out = BTreeMap::new();
    for e in &entries {
        match e.kind {
            EntryKind::Zero { .. } => {
                for b in e.block..e.end() {
                    out.insert(b, vec![0; r.geometry().block_len(b) as usize]);
                }
            }
            EntryKind::Data { frame_offset, .. } => {
                let block = r.read_block(e, &frames[&frame_offset]).expect("read block");
                out.insert(e.block, block);
            }
        }
    }
    out
}

/// The image digest exactly as FORMAT.md defines it, from the image's blocks: a record
/// per maximal run of all-zero blocks and one per other block.
pub(crate) fn spec_image_digest(size: u64, block_size: u32, blocks: &[Vec<u8>]) -> String {
    let mut h = Sha256::new();
    h.update(b"thinarc-image-v1");
    h.update(size.to_le_bytes());
    h.update(block_size.to_le_bytes());
    let mut run = 0u64;
    for b in blocks {
        if b.iter().all(|&x| x == 0) {
            run += 1;
            continue;
        }
        if run > 0 {
            h.update([0u8]);
            h.update(run.to_le_bytes());
            run = 0;
        }
        h.update([1u8]);
        h.update(Sha256::digest(b));
    }
    if run > 0 {
        h.update([0u8]);
        h.update(run.to_le_bytes());
    }
    hex::encode(h.finalize())
}

/// The point in time of the last archive of `chain` (oldest first), by the chain rule:
/// a block comes from the newest archive holding it, unless an archive newer than that
/// holder has the block past its end (the volume shrank); blocks nobody holds are zero.
pub(crate) fn chain_point(chain: &[ArchiveReader<'_>]) -> Vec<Vec<u8>> {
    let last = chain.last().expect("non-empty chain").geometry();
    let indexes: Vec<Vec<IndexEntry>> = chain
        .iter()
        .map(|r| r.entries().expect("entries"))
        .collect();
    let contents: Vec<BTreeMap<u64, Vec<u8>>> = chain.iter().map(held_blocks).collect();
    (0..last.blocks())
        .map(|b| {
            let zero = vec![0; last.block_len(b) as usize];
            for (i, r) in chain.iter().enumerate().rev() {
                if holder(&indexes[i], b).is_some() {
                    let block = contents[i][&b].clone();
                    assert_eq!(
                        block.len(),
                        zero.len(),
                        "block {b}: a held block has the point's length"
                    );
                    return block;
                }
                if r.geometry().blocks() <= b {
                    return zero;
                }
            }
            zero
        })
        .collect()
}

fn entry_json(e: &IndexEntry) -> Value {
    match e.kind {
        EntryKind::Zero { count } => serde_json::json!({"block": e.block, "kind": "zero",
            "count": count, "frame_offset": 0, "frame_len": 0, "slot": 0,
            "digest": Digest::default().to_hex()}),
        EntryKind::Data {
            frame,
            frame_offset,
            frame_len,
            slot,
            digest,
        } => serde_json::json!({
            "block": e.block, "kind": if frame == FrameKind::Zstd { "zstd" } else { "raw" },
            "count": 1, "frame_offset": frame_offset, "frame_len": frame_len, "slot": slot,
            "digest": digest.to_hex()}),
    }
}

fn check_valid(name: &str, bytes: &[u8], j: &Value) {
    assert_eq!(u(&j["file_len"]), bytes.len() as u64, "{name}: file length");
    assert_eq!(s(&j["file_sha256"]), sha_hex(bytes), "{name}: file digest");
    let r = ArchiveReader::open(bytes).unwrap_or_else(|e| panic!("{name}: open: {e}"));
    r.verify().unwrap_or_else(|e| panic!("{name}: verify: {e}"));

    // Preamble and header.
    let p = &j["preamble"];
    assert_eq!(
        u(&p["major"]),
        u64::from(u16::from_le_bytes([bytes[8], bytes[9]])),
        "{name}"
    );
    assert_eq!(
        u(&p["minor"]),
        u64::from(u16::from_le_bytes([bytes[10], bytes[11]])),
        "{name}"
    );
    let header_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    assert_eq!(u(&p["header_len"]), u64::from(header_len), "{name}");
    assert_eq!(
        serde_json::to_value(&r.header).expect("header json"),
        j["header"],
        "{name}: header"
    );
    let h: Header = serde_json::from_value(j["header"].clone()).expect("header from json");
    assert_eq!(h, r.header, "{name}: header");

    // Trailer.
    let t = &r.trailer;
    let jt = &j["trailer"];
    assert_eq!(u(&jt["body_offset"]), t.body_offset, "{name}");
    assert_eq!(u(&jt["body_offset"]), 16 + u64::from(header_len), "{name}");
    assert_eq!(u(&jt["directory_offset"]), t.directory_offset, "{name}");
    assert_eq!(
        u(&jt["directory_entries"]),
        u64::from(t.directory_entries),
        "{name}"
    );
    assert_eq!(u(&jt["data_blocks"]), t.data_blocks, "{name}");
    assert_eq!(u(&jt["zero_blocks"]), t.zero_blocks, "{name}");
    assert_eq!(u(&jt["frame_bytes"]), t.frame_bytes, "{name}");
    assert_eq!(s(&jt["header_sha256"]), t.header_sha256.to_hex(), "{name}");
    assert_eq!(
        s(&jt["header_sha256"]),
        sha_hex(&bytes[..t.body_offset as usize]),
        "{name}"
    );
    assert_eq!(
        s(&jt["directory_sha256"]),
        t.directory_sha256.to_hex(),
        "{name}"
    );
    assert_eq!(s(&jt["image_digest"]), t.image_digest.to_hex(), "{name}");
    assert_eq!(
        s(&jt["trailer_sha256"]),
        t.trailer_sha256.to_hex(),
        "{name}"
    );
    let tail = &bytes[bytes.len() - TRAILER_LEN..];
    assert_eq!(
        s(&jt["trailer_sha256"]),
        sha_hex(&tail[..144]),
        "{name}: archive digest"
    );
    assert_eq!(s(&j["archive_digest"]), t.trailer_sha256.to_hex(), "{name}");
    assert_eq!(u(&j["blocks"]), r.geometry().blocks(), "{name}");

    // Directory.
    let dir_bytes = &bytes[t.directory_offset as usize..bytes.len() - TRAILER_LEN];
    let dir: Vec<DirEntry> = dir_bytes
        .chunks_exact(64)
        .map(|c| DirEntry::decode(c.try_into().expect("64 bytes")).expect("directory entry"))
        .collect();
    let jd = j["directory"].as_array().expect("directory");
    assert_eq!(jd.len(), dir.len(), "{name}: directory entries");
    for (d, jd) in dir.iter().zip(jd) {
        assert_eq!(u(&jd["offset"]), d.offset, "{name}");
        assert_eq!(u(&jd["entries"]), u64::from(d.entries), "{name}");
        assert_eq!(u(&jd["first_block"]), d.first_block, "{name}");
        assert_eq!(u(&jd["end_block"]), d.end_block, "{name}");
        assert_eq!(s(&jd["sha256"]), d.sha256.to_hex(), "{name}");
        let seg = &bytes[d.offset as usize..(d.offset + d.len()) as usize];
        assert_eq!(s(&jd["sha256"]), sha_hex(seg), "{name}: segment checksum");
    }

    // Index entries: all of them through their digest, the listed ones field by field.
    let entries = r.entries().expect("entries");
    assert_eq!(u(&j["entry_count"]), entries.len() as u64, "{name}");
    let mut encoded = Vec::new();
    entries.iter().for_each(|e| e.encode(&mut encoded));
    assert_eq!(
        s(&j["entries_sha256"]),
        sha_hex(&encoded),
        "{name}: entries"
    );
    for je in j["entries"].as_array().expect("entries") {
        let mut want = je.clone();
        let i = u(&want
            .as_object_mut()
            .expect("object")
            .remove("index")
            .expect("index")) as usize;
        assert_eq!(entry_json(&entries[i]), want, "{name}: entry {i}");
    }

    // Blocks this archive holds.
    let held = held_blocks(&r);
    if let Some(list) = j["held_blocks"].as_array() {
        assert_eq!(list.len(), held.len(), "{name}: held blocks");
        for jb in list {
            let b = u(&jb["block"]);
            assert_eq!(s(&jb["sha256"]), sha_hex(&held[&b]), "{name}: block {b}");
            let zero = held[&b].iter().all(|&x| x == 0);
            assert_eq!(
                s(&jb["kind"]),
                if zero { "zero" } else { "data" },
                "{name}: block {b}"
            );
        }
    }

    // The point in time: for a delta, rebuilt from its chain by the chain rule.
    let chain_bytes: Vec<Vec<u8>> = j["chain"]
        .as_array()
        .expect("chain")
        .iter()
        .map(|c| std::fs::read(vector_dir("valid").join(s(c))).expect("chain member"))
        .collect();
    let mut chain: Vec<ArchiveReader<'_>> = chain_bytes
        .iter()
        .map(|b| ArchiveReader::open(b).expect("chain member opens"))
        .collect();
    assert_eq!(
        chain.is_empty(),
        r.header.parent.is_none(),
        "{name}: only deltas have a chain"
    );
    if let Some(parent) = &r.header.parent {
        let p = chain.last().expect("parent");
        // The link rule (11.4): by id and digest, or through `parent.image` when the
        // parent's archive was replaced by another archive of the same point.
        let by_id = parent.id == p.header.archive_id && parent.digest == p.trailer.trailer_sha256;
        let by_image = parent.image == Some(p.trailer.image_digest);
        assert!(by_id || by_image, "{name}: parent link");
        assert_eq!(
            by_id,
            name != "delta-relinked",
            "{name}: only delta-relinked links through parent.image alone"
        );
        assert_eq!(parent.seq, p.header.seq, "{name}: parent seq");
        assert_eq!(p.header.volume_id, r.header.volume_id, "{name}: volume id");
        assert_eq!(
            p.header.block_size, r.header.block_size,
            "{name}: block size"
        );
        // A delta whose size differs holds the boundary block.
        let (old, new) = (p.geometry().blocks(), r.geometry().blocks());
        if p.header.size != r.header.size && old.min(new) > 0 {
            assert!(
                held.contains_key(&(old.min(new) - 1)),
                "{name}: boundary block not held"
            );
        }
    }
    let geometry = r.geometry();
    chain.push(r);
    let point = chain_point(&chain);
    let digest = spec_image_digest(geometry.size(), geometry.block_size().get(), &point);
    assert_eq!(
        s(&j["point"]["image_digest"]),
        digest,
        "{name}: point image digest"
    );
    assert_eq!(s(&j["image_digest"]), digest, "{name}: image digest");
    assert_eq!(
        chain.last().expect("self").trailer.image_digest.to_hex(),
        digest,
        "{name}: trailer image digest"
    );
    let mut all = Vec::new();
    point
        .iter()
        .for_each(|b| all.extend_from_slice(&Sha256::digest(b)));
    assert_eq!(
        s(&j["point"]["block_digests_sha256"]),
        sha_hex(&all),
        "{name}: point blocks"
    );
    if let Some(list) = j["point"]["blocks"].as_array() {
        assert_eq!(list.len(), point.len(), "{name}: point blocks");
        for (jb, b) in list.iter().zip(&point) {
            assert_eq!(
                u(&jb["len"]),
                b.len() as u64,
                "{name}: block {}",
                jb["block"]
            );
            assert_eq!(
                s(&jb["sha256"]),
                sha_hex(b),
                "{name}: block {}",
                jb["block"]
            );
        }
    }
}

#[test]
fn valid_vectors_decode_as_described() {
    let all = vectors("valid");
    for (name, bytes, json) in &all {
        assert_eq!(s(&json["file"]), format!("{name}.tarc"));
        check_valid(name, bytes, json);
    }
    let names: Vec<&str> = all.iter().map(|v| v.0.as_str()).collect();
    for want in [
        "full-small",
        "delta-grow",
        "delta-shrink",
        "delta-regrow",
        "delta-merged",
        "delta-relinked",
        "full-segments",
        "empty",
        "minor-version",
    ] {
        assert!(names.contains(&want), "valid vector {want} missing");
    }
}

fn error_kind(e: &FormatError) -> &'static str {
    match e {
        FormatError::BadMagic { .. } => "BadMagic",
        FormatError::UnsupportedVersion { .. } => "UnsupportedVersion",
        FormatError::Truncated { .. } => "Truncated",
        FormatError::ChecksumMismatch { .. } => "ChecksumMismatch",
        FormatError::Corrupt { .. } => "Corrupt",
        FormatError::InvalidInput(_) => "InvalidInput",
        _ => "other",
    }
}

/// Opens, lists and verifies `bytes`; returns the stage and error of the first failure.
fn first_error(bytes: &[u8]) -> Option<(&'static str, FormatError)> {
    let r = match ArchiveReader::open(bytes) {
        Ok(r) => r,
        Err(e) => return Some(("open", e)),
    };
    if let Err(e) = r.entries() {
        return Some(("entries", e));
    }
    r.verify().err().map(|e| ("verify", e))
}

#[test]
fn invalid_vectors_fail_as_described() {
    for (name, bytes, json) in vectors("invalid") {
        let Some((stage, err)) = first_error(&bytes) else {
            panic!("invalid/{name} was accepted");
        };
        assert_eq!(error_kind(&err), s(&json["error"]), "invalid/{name}: {err}");
        assert_eq!(stage, s(&json["stage"]), "invalid/{name}: {err}");
        // Errors render as one readable line.
        let msg = err.to_string();
        assert!(
            !msg.is_empty() && !msg.contains('\n'),
            "invalid/{name}: {msg:?}"
        );
    }
}

#[test]
fn image_hasher_merges_split_zero_runs() {
    let g = Geometry::new(9 * 4096, BlockSize::new(4096).expect("block size"));
    let d = Digest::of(b"x");
    let digest = |split: bool| {
        let mut h = ImageHasher::new(g);
        h.data(&d);
        if split {
            h.zeros(2);
            h.zeros(3);
        } else {
            h.zeros(5);
        }
        h.data(&d);
        h.zeros(1);
        h.zeros(1);
        h.finish().expect("9 blocks")
    };
    assert_eq!(digest(true), digest(false));
    let mut h = ImageHasher::new(g);
    h.zeros(4);
    assert!(h.finish().is_err(), "a digest of too few blocks is refused");
}

#[test]
fn image_digest_matches_the_spec_for_an_empty_volume() {
    let g = Geometry::new(0, BlockSize::new(1 << 16).expect("block size"));
    let d = ImageHasher::new(g).finish().expect("no blocks");
    assert_eq!(d.to_hex(), spec_image_digest(0, 1 << 16, &[]));
}

/// One block of a generated image.
#[derive(Debug, Clone)]
enum Content {
    Zero,
    /// Compressible: a repeated byte pattern from the seed.
    Pattern(u8),
    /// Incompressible bytes from the seed.
    Noise(u64),
}

fn block_bytes(c: &Content, len: usize) -> Vec<u8> {
    match *c {
        Content::Zero => vec![0; len],
        Content::Pattern(seed) => (0..len)
            .map(|i| seed.wrapping_add((i % 7) as u8) | 1)
            .collect(),
        Content::Noise(seed) => {
            let mut x = seed | 1;
            let mut v: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            v[0] |= 1;
            v
        }
    }
}

fn header_for(size: u64, block_size: u32, parent: Option<ParentRef>) -> Header {
    Header {
        volume_name: "vg0/test".into(),
        volume_id: "0123456789abcdef0123456789abcdef".into(),
        archive_id: "fedcba9876543210fedcba9876543210".into(),
        seq: 7,
        parent,
        created: "2026-11-22T00:00:00Z".into(),
        size,
        block_size,
        compression: Compression {
            algorithm: "zstd".into(),
            level: 1,
        },
        source: SourceInfo {
            kind: "file".into(),
            path: "/tmp/test.img".into(),
            method: "full".into(),
        },
        lvm: None,
        encryption: None,
    }
}

/// Writes a full archive of `blocks`, starting a new frame before block `i` when
/// `breaks[i]` (frames also end at zero blocks). Zero runs are pushed one block at a time,
/// or in one call when `merge_zeros`.
fn write_archive(
    size: u64,
    block_size: u32,
    blocks: &[Vec<u8>],
    breaks: &[bool],
    merge_zeros: bool,
) -> Vec<u8> {
    let geometry = Geometry::new(size, BlockSize::new(block_size).expect("block size"));
    let mut out = Vec::new();
    let mut w =
        ArchiveWriter::new(&header_for(size, block_size, None), None, &mut out).expect("header");
    let mut compressor = zstd::bulk::Compressor::new(1).expect("zstd");
    let mut hasher = ImageHasher::new(geometry);
    let mut frame: Vec<u64> = Vec::new();
    let flush = |frame: &mut Vec<u64>,
                 w: &mut ArchiveWriter,
                 out: &mut Vec<u8>,
                 c: &mut zstd::bulk::Compressor<'_>| {
        let Some(&first) = frame.first() else { return };
        let content: Vec<u8> = frame
            .iter()
            .flat_map(|&b| blocks[b as usize].clone())
            .collect();
        let (kind, bytes) = compress_frame(&content, c).expect("compress");
        let digests = frame
            .iter()
            .map(|&b| Digest::of(&blocks[b as usize]))
            .collect();
        w.push_frame(
            &EncodedFrame {
                first_block: first,
                kind,
                bytes,
                digests,
            },
            out,
        )
        .expect("push frame");
        frame.clear();
    };
    let mut b = 0usize;
    while b < blocks.len() {
        if blocks[b].iter().all(|&x| x == 0) {
            flush(&mut frame, &mut w, &mut out, &mut compressor);
            let mut n = 1;
            if merge_zeros {
                while b + n < blocks.len() && blocks[b + n].iter().all(|&x| x == 0) {
                    n += 1;
                }
            }
            w.push_zeros(b as u64, n as u64, &mut out)
                .expect("push zeros");
            hasher.zeros(n as u64);
            b += n;
            continue;
        }
        if breaks[b] || frame.len() >= 64 {
            flush(&mut frame, &mut w, &mut out, &mut compressor);
        }
        frame.push(b as u64);
        hasher.data(&Digest::of(&blocks[b]));
        b += 1;
    }
    flush(&mut frame, &mut w, &mut out, &mut compressor);
    let image = hasher.finish().expect("image");
    let t = w.finish(image, &mut out);
    assert_eq!(t.archive_len(), out.len() as u64);
    out
}

/// Reads an archive back and checks it holds exactly `blocks`.
fn check_round_trip(size: u64, block_size: u32, blocks: &[Vec<u8>], archive: &[u8]) {
    let r = ArchiveReader::open(archive).expect("open");
    r.verify().expect("verify");
    assert_eq!(r.header, header_for(size, block_size, None));
    assert_eq!(r.geometry().blocks(), blocks.len() as u64);
    let entries = r.entries().expect("entries");
    let mut next = 0;
    for e in &entries {
        assert_eq!(
            e.block, next,
            "a full archive's entries cover every block in order"
        );
        next = e.end();
    }
    assert_eq!(next, blocks.len() as u64);
    let held = held_blocks(&r);
    assert_eq!(held.len(), blocks.len());
    for (b, want) in blocks.iter().enumerate() {
        assert_eq!(&held[&(b as u64)], want, "block {b}");
        let h = holder(&entries, b as u64).expect("held");
        assert_eq!(
            matches!(h.kind, EntryKind::Zero { .. }),
            want.iter().all(|&x| x == 0),
            "block {b}"
        );
    }
    let zeros = blocks.iter().filter(|b| b.iter().all(|&x| x == 0)).count() as u64;
    assert_eq!(r.trailer.zero_blocks, zeros);
    assert_eq!(r.trailer.data_blocks, blocks.len() as u64 - zeros);
    assert_eq!(
        r.trailer.image_digest.to_hex(),
        spec_image_digest(size, block_size, blocks)
    );
}

fn image_strategy() -> impl Strategy<Value = (u64, u32, Vec<Vec<u8>>, Vec<bool>)> {
    (
        prop_oneof![Just(4096u32), Just(8192u32)],
        0usize..24,
        0u32..8192,
    )
        .prop_flat_map(|(bs, n, short)| {
            let content = prop_oneof![
                3 => Just(Content::Zero),
                3 => any::<u8>().prop_map(Content::Pattern),
                1 => any::<u64>().prop_map(Content::Noise),
            ];
            (
                proptest::collection::vec(content, n),
                proptest::collection::vec(any::<bool>(), n),
            )
                .prop_map(move |(contents, breaks)| {
                    let n = contents.len() as u64;
                    let size = if n == 0 {
                        0
                    } else {
                        n * u64::from(bs) - u64::from(short % bs)
                    };
                    let g = Geometry::new(size, BlockSize::new(bs).expect("block size"));
                    let blocks = contents
                        .iter()
                        .enumerate()
                        .map(|(i, c)| block_bytes(c, g.block_len(i as u64) as usize))
                        .collect();
                    (size, bs, blocks, breaks)
                })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_archives_round_trip((size, bs, blocks, breaks) in image_strategy(), merge in any::<bool>()) {
        let archive = write_archive(size, bs, &blocks, &breaks, merge);
        check_round_trip(size, bs, &blocks, &archive);
    }
}

#[test]
fn archives_with_several_segments_round_trip() {
    // More than two segments' worth of entries: data blocks in frames of 1..=5 blocks,
    // broken by single zero blocks, so frames and zero runs fall on segment boundaries.
    let n = 2 * 4096 + 300;
    let size = n as u64 * 4096 - 10;
    let g = Geometry::new(size, BlockSize::new(4096).expect("block size"));
    let blocks: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let c = if i % 11 == 10 {
                Content::Zero
            } else {
                Content::Pattern(i as u8)
            };
            block_bytes(&c, g.block_len(i as u64) as usize)
        })
        .collect();
    let breaks: Vec<bool> = (0..n).map(|i| i % 5 == 0).collect();
    let archive = write_archive(size, 4096, &blocks, &breaks, true);
    let r = ArchiveReader::open(&archive).expect("open");
    assert_eq!(r.trailer.directory_entries, 3);
    check_round_trip(size, 4096, &blocks, &archive);
}

#[test]
fn writer_refuses_what_readers_reject() {
    let size = 4 * 4096;
    let h = header_for(size, 4096, None);
    let mut out = Vec::new();
    let mut w = ArchiveWriter::new(&h, None, &mut out).expect("header");
    let zero = EncodedFrame {
        first_block: 0,
        kind: FrameKind::Raw,
        bytes: vec![0; 4096],
        digests: vec![Digest::of(&[0; 4096])],
    };
    assert!(
        matches!(
            w.push_frame(&zero, &mut out),
            Err(FormatError::InvalidInput(_))
        ),
        "all-zero data block"
    );
    let data = vec![7u8; 4096];
    let short_raw = EncodedFrame {
        first_block: 0,
        kind: FrameKind::Raw,
        bytes: data[..100].to_vec(),
        digests: vec![Digest::of(&data)],
    };
    assert!(
        matches!(
            w.push_frame(&short_raw, &mut out),
            Err(FormatError::InvalidInput(_))
        ),
        "raw frame of the wrong length"
    );
    let empty = EncodedFrame {
        first_block: 0,
        kind: FrameKind::Raw,
        bytes: vec![],
        digests: vec![],
    };
    assert!(
        w.push_frame(&empty, &mut out).is_err(),
        "frame without blocks"
    );
    w.push_zeros(1, 2, &mut out).expect("zeros");
    assert!(w.push_zeros(0, 1, &mut out).is_err(), "out of order");
    assert!(w.push_zeros(3, 2, &mut out).is_err(), "past the volume end");
    let mut bad = h.clone();
    bad.block_size = 3000;
    assert!(
        ArchiveWriter::new(&bad, None, &mut Vec::new()).is_err(),
        "block size not a power of two"
    );
}

/// Recomputes every checksum of a (damaged) archive where its offsets allow, so that
/// mutations reach the checks behind the checksums. Never panics on garbage.
fn reseal(v: &mut [u8]) {
    let Some(t) = v.len().checked_sub(TRAILER_LEN) else {
        return;
    };
    let read_u64 = |v: &[u8], at: usize| {
        v.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    };
    let (Some(body), Some(dir)) = (read_u64(v, t), read_u64(v, t + 8)) else {
        return;
    };
    let entries = v
        .get(t + 16..t + 20)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4"))) as usize;
    let dir = usize::try_from(dir).unwrap_or(usize::MAX);
    if dir <= t && entries.checked_mul(64).is_some_and(|n| dir + n <= t) {
        for i in 0..entries {
            let d = dir + 64 * i;
            let off = usize::try_from(read_u64(v, d).expect("in range")).unwrap_or(usize::MAX);
            let n = u32::from_le_bytes(v[d + 8..d + 12].try_into().expect("4")) as usize;
            if let Some(seg) = off
                .checked_add(64 * n)
                .filter(|&end| end <= v.len())
                .map(|end| off..end)
            {
                let sum = Sha256::digest(&v[seg]);
                v[d + 32..d + 64].copy_from_slice(&sum);
            }
        }
        let sum = Sha256::digest(&v[dir..t]);
        v[t + 80..t + 112].copy_from_slice(&sum);
    }
    if let Ok(body) = usize::try_from(body)
        && body <= t
    {
        let sum = Sha256::digest(&v[..body]);
        v[t + 48..t + 80].copy_from_slice(&sum);
    }
    let sum = Sha256::digest(&v[t..t + 144]);
    v[t + 144..t + 176].copy_from_slice(&sum);
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Flip(usize, u8),
    /// Overwrite 8 bytes with a little-endian value: offsets, counts and lengths.
    Word(usize, u64),
    /// Overwrite the `k`-th 8-byte word from the end, where the trailer, the directory
    /// and the last segment keep their 8-byte fields.
    TailWord(usize, u64),
    Truncate(usize),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(4096),
        Just(1 << 40),
        any::<u64>()
    ];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, 1 << bit)),
        (any::<usize>(), interesting.clone()).prop_map(|(i, w)| Mutation::Word(i, w)),
        (0usize..96, interesting).prop_map(|(k, w)| Mutation::TailWord(k, w)),
        any::<usize>().prop_map(Mutation::Truncate),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Append),
    ]
}

fn apply(v: &mut Vec<u8>, m: &Mutation) {
    let len = v.len().max(1);
    match m {
        Mutation::Set(i, b) => {
            if let Some(x) = v.get_mut(i % len) {
                *x = *b;
            }
        }
        Mutation::Flip(i, bit) => {
            if let Some(x) = v.get_mut(i % len) {
                *x ^= bit;
            }
        }
        Mutation::Word(i, w) => {
            let at = i % len;
            if let Some(x) = v.get_mut(at..at + 8) {
                x.copy_from_slice(&w.to_le_bytes());
            }
        }
        Mutation::TailWord(k, w) => {
            if let Some(at) = v.len().checked_sub(8 * (k + 1)) {
                v[at..at + 8].copy_from_slice(&w.to_le_bytes());
            }
        }
        Mutation::Truncate(n) => v.truncate(n % len),
        Mutation::Append(b) => v.extend_from_slice(b),
    }
}

fn small_valid_vectors() -> Vec<Vec<u8>> {
    [
        "full-small",
        "delta-grow",
        "delta-regrow",
        "empty",
        "minor-version",
    ]
    .iter()
    .map(|n| std::fs::read(vector_dir("valid").join(format!("{n}.tarc"))).expect("vector"))
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024), magic in any::<bool>()) {
        let mut bytes = bytes;
        if magic && bytes.len() >= 16 {
            bytes[..8].copy_from_slice(b"\x89THINARC");
            bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
        }
        let _ = first_error(&bytes);
        reseal(&mut bytes);
        let _ = first_error(&bytes);
    }

    #[test]
    fn mutated_archives_never_panic(
        which in 0usize..5,
        mutations in proptest::collection::vec(mutation(), 1..4),
        resealed in any::<bool>(),
    ) {
        let mut v = small_valid_vectors().swap_remove(which);
        for m in &mutations {
            apply(&mut v, m);
        }
        if resealed {
            reseal(&mut v);
        }
        // Errors are expected, panics are bugs; a mutation may also leave the archive valid.
        if let Some((_, e)) = first_error(&v) {
            prop_assert!(!matches!(e, FormatError::InvalidInput(_)), "reader returned InvalidInput: {e}");
        }
    }
}

/// Format 1.1: `parent.image` names the parent point's image digest; 1.0 vectors have
/// none and stay version 1.0 files.
#[test]
fn parent_image_is_the_parents_image_digest() {
    let all = vectors("valid");
    let get = |n: &str| all.iter().find(|v| v.0 == n).expect("vector");
    let full = ArchiveReader::open(&get("full-small").1).expect("full-small");
    let merged = ArchiveReader::open(&get("delta-merged").1).expect("delta-merged");
    let shrink = ArchiveReader::open(&get("delta-shrink").1).expect("delta-shrink");
    assert_eq!(
        u16::from_le_bytes([get("delta-merged").1[10], get("delta-merged").1[11]]),
        1
    );
    let p = merged.header.parent.as_ref().expect("a delta");
    assert_eq!(p.image, Some(full.trailer.image_digest));
    assert_eq!(merged.trailer.image_digest, shrink.trailer.image_digest);
    assert_eq!(merged.header.seq, shrink.header.seq);
    for name in ["delta-grow", "delta-shrink", "delta-regrow"] {
        let (_, bytes, _) = get(name);
        assert_eq!(
            u16::from_le_bytes([bytes[10], bytes[11]]),
            0,
            "{name} is a 1.0 file"
        );
        let r = ArchiveReader::open(bytes).expect("opens");
        assert_eq!(r.header.parent.expect("delta").image, None, "{name}");
    }
}
