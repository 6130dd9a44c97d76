//! Regenerates the archive format test vectors in `format-spec/vectors/`.
//!
//! ```text
//! cargo run --example make_vectors [-- OUTPUT_DIR]
//! ```
//!
//! Everything is deterministic: fixed ids, a fixed creation time, content from a fixed
//! pseudo-random generator and zstd level 3. The same zstd library version produces
//! the same bytes; the committed files are the reference either way, and
//! `tests/it/format.rs` checks them against their `.json` descriptions.
//!
//! `valid/NAME.tarc` must decode and verify, and `valid/NAME.json` gives every decoded
//! field, every index entry, the digest of every block and the image digest (for a
//! delta, also the point in time its chain restores). `invalid/NAME.tarc` must be
//! rejected with the error kind named in `invalid/NAME.json`; `rules.rs` makes those that
//! break one rule each (with `parts.rs`, which lays an archive out again). `chains/`
//! holds deltas valid alone that break a chain rule, and `repository.rs` writes
//! `repository/`, a repository tree with its expected listing (`tests/it/repo_vector.rs`).
//! `encrypted.rs` writes `encrypted/`: format 2.0 vectors under a published test key
//! (`tests/it/crypt.rs`).

mod encrypted;
mod parts;
mod repository;
mod rules;

use parts::Parts;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use thinarc::format::{
    ArchiveReader, BlockSize, Compression, Digest, EncodedFrame, EntryKind, FrameKind, Geometry,
    Header, ImageHasher, ParentRef, SourceInfo, TRAILER_LEN, Trailer, compress_frame,
};

const BS: u32 = 4096;
const BSU: usize = BS as usize;
const VOLUME_ID: &str = "7468696e6172632d766f6c756d652d31";
const CREATED: &str = "2026-11-22T00:00:00Z";
const LEVEL: i32 = 3;

/// An invalid vector: name, bytes, error kind, stage and description.
type Case = (String, Vec<u8>, &'static str, &'static str, String);

fn main() {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("format-spec/vectors"));
    let mut g = Generator::new(&out);
    g.run();
    println!("wrote {} files to {}", g.written, out.display());
}

/// A small deterministic generator (SplitMix64), so vectors need no `rand`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `len` incompressible bytes: zstd cannot shrink them, so the frame is stored raw.
    fn noise(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// `len` highly compressible bytes: a short text line naming `tag`, repeated.
fn text(tag: &str, len: usize) -> Vec<u8> {
    let line = format!("thinarc test vector block {tag}\n");
    line.bytes().cycle().take(len).collect()
}

/// A volume image in memory: `None` is a block that reads as zero.
#[derive(Clone)]
struct Image {
    size: u64,
    blocks: Vec<Option<Vec<u8>>>,
}

impl Image {
    fn geometry(&self) -> Geometry {
        Geometry::new(self.size, BlockSize::new(BS).expect("valid block size"))
    }

    fn new(size: u64) -> Self {
        let g = Geometry::new(size, BlockSize::new(BS).expect("valid block size"));
        Image {
            size,
            blocks: vec![None; g.blocks() as usize],
        }
    }

    /// Content of block `b` at its real length (zeros included).
    fn block(&self, b: u64) -> Vec<u8> {
        let len = self.geometry().block_len(b) as usize;
        match &self.blocks[b as usize] {
            Some(d) => {
                assert_eq!(d.len(), len, "block {b} has the wrong length");
                d.clone()
            }
            None => vec![0; len],
        }
    }

    fn image_digest(&self) -> Digest {
        let mut h = ImageHasher::new(self.geometry());
        for b in 0..self.blocks.len() as u64 {
            match &self.blocks[b as usize] {
                Some(d) => h.data(&Digest::of(d)),
                None => h.zeros(1),
            }
        }
        h.finish().expect("image covers the volume")
    }
}

/// What an archive holds, in block order.
enum Item {
    /// `count` zero blocks from `first`.
    Zeros(u64, u64),
    /// One frame of the image's blocks `first..first + count`.
    Frame(u64, u64),
}

struct Generator {
    out: PathBuf,
    written: usize,
    compressor: zstd::bulk::Compressor<'static>,
}

fn header(archive_id: &str, seq: u64, parent: Option<ParentRef>, size: u64) -> Header {
    Header {
        volume_name: "vg0/vectors".into(),
        volume_id: VOLUME_ID.into(),
        archive_id: archive_id.into(),
        seq,
        parent,
        created: CREATED.into(),
        size,
        block_size: BS,
        compression: Compression {
            algorithm: "zstd".into(),
            level: LEVEL,
        },
        source: SourceInfo {
            kind: "file".into(),
            path: "/dev/null/vectors.img".into(),
            method: if seq == 1 {
                "full".into()
            } else {
                "scan".into()
            },
        },
        lvm: None,
        encryption: None,
    }
}

fn parent_of(h: &Header, t: &Trailer) -> ParentRef {
    ParentRef {
        id: h.archive_id.clone(),
        digest: t.trailer_sha256,
        seq: h.seq,
        image: None,
    }
}

impl Generator {
    fn new(out: &Path) -> Self {
        Generator {
            out: out.to_path_buf(),
            written: 0,
            compressor: zstd::bulk::Compressor::new(LEVEL).expect("zstd level 3"),
        }
    }

    fn write(&mut self, rel: &str, bytes: &[u8]) {
        let path = self.out.join(rel);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("create dir");
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self.written += 1;
    }

    fn write_json(&mut self, rel: &str, v: &Value) {
        let mut s = serde_json::to_string_pretty(v).expect("json");
        s.push('\n');
        self.write(rel, s.as_bytes());
    }

    /// Writes an archive holding `items` of `image` and returns its bytes and trailer.
    fn build(&mut self, h: &Header, image: &Image, items: &[Item]) -> (Vec<u8>, Trailer) {
        let mut out = Vec::new();
        let mut w = thinarc::format::ArchiveWriter::new(h, None, &mut out).expect("header");
        for item in items {
            match *item {
                Item::Zeros(first, count) => w.push_zeros(first, count, &mut out).expect("zeros"),
                Item::Frame(first, count) => {
                    let blocks: Vec<Vec<u8>> =
                        (first..first + count).map(|b| image.block(b)).collect();
                    let (kind, bytes) =
                        compress_frame(&blocks.concat(), &mut self.compressor).expect("compress");
                    let digests = blocks.iter().map(|b| Digest::of(b)).collect();
                    let frame = EncodedFrame {
                        first_block: first,
                        kind,
                        bytes,
                        digests,
                    };
                    w.push_frame(&frame, &mut out).expect("frame");
                }
            }
        }
        let trailer = w.finish(image.image_digest(), &mut out);
        // Archives using no key of version 1.1 (`parent.image`) are written as the 1.0
        // files they were when version 1.0 was published, so the vectors stay the same.
        if h.parent.as_ref().is_none_or(|p| p.image.is_none()) {
            out[10..12].copy_from_slice(&0u16.to_le_bytes());
            reseal_header(&mut out);
            let t = Trailer::decode(&out[out.len() - TRAILER_LEN..]).expect("trailer");
            return (out, t);
        }
        (out, trailer)
    }

    fn run(&mut self) {
        // (a) full-small: 5 blocks, the last one 1000 bytes; a raw frame, a zero block
        // and a three-block zstd frame ending in the short block.
        let mut rng = Rng(0x7468_696e_6172_6331);
        let mut a = Image::new(4 * u64::from(BS) + 1000);
        a.blocks[0] = Some(rng.noise(BSU));
        a.blocks[2] = Some(text("a2", BSU));
        a.blocks[3] = Some(text("a3", BSU));
        a.blocks[4] = Some(text("a4", 1000));
        let ha = header("a0000000000000000000000000000001", 1, None, a.size);
        let (ba, ta) = self.build(
            &ha,
            &a,
            &[Item::Frame(0, 1), Item::Zeros(1, 1), Item::Frame(2, 3)],
        );
        self.valid(
            "full-small",
            "full archive of a 5-block volume whose last block is 1000 bytes: a raw frame \
             (block 0), a zero block (1) and a zstd frame of three blocks (2..4)",
            &ba,
            &[],
            &a,
        );

        // (b) delta-grow: child of (a); the volume grows to 9 blocks. Block 2 changes,
        // block 3 becomes zero, block 4 (the old short boundary block, now full) and the
        // new block 5 are one frame, 6..7 are a zero run, and block 8 is not held at all
        // (it reads as zero because the volume grew).
        let mut b = Image::new(8 * u64::from(BS) + 500);
        b.blocks[0] = a.blocks[0].clone();
        b.blocks[2] = Some(text("b2", BSU));
        let mut b4 = a.block(4);
        b4.resize(BSU, 0);
        b.blocks[4] = Some(b4);
        b.blocks[5] = Some(
            rng.noise(BSU / 2)
                .into_iter()
                .chain(text("b5", BSU / 2))
                .collect(),
        );
        let hb = header(
            "b0000000000000000000000000000002",
            2,
            Some(parent_of(&ha, &ta)),
            b.size,
        );
        let (bb, tb) = self.build(
            &hb,
            &b,
            &[
                Item::Frame(2, 1),
                Item::Zeros(3, 1),
                Item::Frame(4, 2),
                Item::Zeros(6, 2),
            ],
        );
        self.valid(
            "delta-grow",
            "delta child of full-small: the volume grows from 5 to 9 blocks; block 2 changes, \
             block 3 becomes zero, the old boundary block 4 and the new block 5 form one frame, \
             blocks 6..7 are a zero run and block 8 is held by no archive",
            &bb,
            &["full-small"],
            &b,
        );

        // (f) delta-shrink: child of (b); the volume shrinks to 3 blocks, the last one
        // 100 bytes, so the new boundary block 2 must be held.
        let mut f = Image::new(2 * u64::from(BS) + 100);
        f.blocks[0] = b.blocks[0].clone();
        f.blocks[2] = Some(b.block(2)[..100].to_vec());
        let hf = header(
            "f0000000000000000000000000000003",
            3,
            Some(parent_of(&hb, &tb)),
            f.size,
        );
        let (bf, tf) = self.build(&hf, &f, &[Item::Frame(2, 1)]);
        self.valid(
            "delta-shrink",
            "delta child of delta-grow: the volume shrinks to 3 blocks, the last one 100 bytes; \
             it holds only the new boundary block 2",
            &bf,
            &["full-small", "delta-grow"],
            &f,
        );

        // (g) delta-regrow: child of (f); the volume grows back to 6 full blocks. It holds
        // only the boundary block 2. Blocks 3..5 are held by older archives, but the
        // shrink in between makes them read as zero.
        let mut gi = Image::new(6 * u64::from(BS));
        gi.blocks[0] = f.blocks[0].clone();
        let mut g2 = f.block(2);
        g2.extend(text("g2", BSU - 100));
        gi.blocks[2] = Some(g2);
        let hg = header(
            "c0000000000000000000000000000004",
            4,
            Some(parent_of(&hf, &tf)),
            gi.size,
        );
        let (bg, _) = self.build(&hg, &gi, &[Item::Frame(2, 1)]);
        self.valid(
            "delta-regrow",
            "delta child of delta-shrink: the volume grows back to 6 blocks; it holds only block 2, \
             and blocks 3..5, held by older archives, read as zero because delta-shrink cut them off",
            &bg,
            &["full-small", "delta-grow", "delta-shrink"],
            &gi,
        );

        // (i) delta-merged (version 1.1): the point of delta-shrink as a merge writes it
        // when delta-grow is dropped: a delta of full-small with seq 3 holding what
        // delta-grow and delta-shrink decide, i.e. only block 2 (block 0 and the zero
        // block 1 are full-small's), with `parent.image` and source kind `archive`.
        let mut hm = header(
            "e1000000000000000000000000000008",
            3,
            Some(ParentRef {
                image: Some(ta.image_digest),
                ..parent_of(&ha, &ta)
            }),
            f.size,
        );
        hm.source = SourceInfo {
            kind: "archive".into(),
            path: "/dev/null/vectors.img".into(),
            method: "merge".into(),
        };
        let (bm, tm) = self.build(&hm, &f, &[Item::Frame(2, 1)]);
        assert_eq!(
            tm.image_digest, tf.image_digest,
            "same point as delta-shrink"
        );
        self.valid(
            "delta-merged",
            "format 1.1: delta-shrink's point merged onto full-small (delta-grow dropped); it \
             holds only block 2 and names its parent with `parent.image`",
            &bm,
            &["full-small"],
            &f,
        );

        // (j) delta-relinked (version 1.1): delta-regrow's point written as a child of
        // delta-shrink, with `parent.image`, in a repository where a merge then replaced
        // delta-shrink's archive by delta-merged. Its link holds only through
        // `parent.image` (section 11.4): id and digest name delta-shrink, the chain is
        // full-small, delta-merged.
        let hj = header(
            "c1000000000000000000000000000009",
            4,
            Some(ParentRef {
                image: Some(tf.image_digest),
                ..parent_of(&hf, &tf)
            }),
            gi.size,
        );
        let (bj, _) = self.build(&hj, &gi, &[Item::Frame(2, 1)]);
        self.valid(
            "delta-relinked",
            "format 1.1: delta-regrow's point as a child of delta-shrink with `parent.image`; \
             delta-shrink's archive was replaced by delta-merged, so the link holds only \
             through `parent.image`",
            &bj,
            &["full-small", "delta-merged"],
            &gi,
        );

        // (c) full-segments: 4400 blocks (the last one short) in more than 4096 entries,
        // so the index has two segments; every 50th block is zero, data blocks are
        // grouped in frames of up to 32 blocks, and one frame's entries straddle the
        // segment boundary.
        let mut c = Image::new(4400 * u64::from(BS) - 96);
        let mut items = Vec::new();
        let mut run_start = None;
        for blk in 0..4400u64 {
            let len = c.geometry().block_len(blk) as usize;
            let zero = blk % 50 == 49;
            if !zero {
                c.blocks[blk as usize] = Some(text(&format!("c{blk}"), len));
                run_start.get_or_insert(blk);
            }
            let frame_full = run_start.is_some_and(|s| blk + 1 - s == 32);
            if let Some(s) = run_start
                && (zero || frame_full || blk == 4399)
            {
                let end = if zero { blk } else { blk + 1 };
                items.push(Item::Frame(s, end - s));
                run_start = None;
            }
            if zero {
                items.push(Item::Zeros(blk, 1));
            }
        }
        let hc = header("d0000000000000000000000000000005", 1, None, c.size);
        let (bc, _) = self.build(&hc, &c, &items);
        let r = ArchiveReader::open(&bc).expect("full-segments opens");
        assert!(
            r.trailer.directory_entries >= 2,
            "full-segments needs two segments"
        );
        let e = r.entries().expect("entries");
        let straddles = matches!(
            (e[4095].kind, e[4096].kind),
            (EntryKind::Data { frame_offset: x, .. }, EntryKind::Data { frame_offset: y, .. }) if x == y
        );
        assert!(straddles, "a frame must straddle the segment boundary");
        self.valid(
            "full-segments",
            "full archive of 4400 blocks (the last one 4000 bytes) with more than 4096 index \
             entries, hence two segments; every 50th block is zero, frames hold up to 32 blocks \
             and the frame at entries 4095..4096 has its entries in both segments",
            &bc,
            &[],
            &c,
        );

        // (d) empty: a volume of size 0 has no blocks, no segments and an empty directory.
        let e = Image::new(0);
        let he = header("e0000000000000000000000000000006", 1, None, 0);
        let (be, _) = self.build(&he, &e, &[]);
        self.valid(
            "empty",
            "full archive of an empty volume (size 0): no blocks, no index segments",
            &be,
            &[],
            &e,
        );

        // (h) minor-version: minor version 1 and header keys this reader does not know,
        // which readers of major version 1 must accept and ignore.
        let z = Image::new(3 * u64::from(BS));
        let hz = header("90000000000000000000000000000007", 1, None, z.size);
        let (bz, _) = self.build(&hz, &z, &[Item::Zeros(0, 3)]);
        let bz = with_future_header(&bz, &hz);
        self.valid(
            "minor-version",
            "full archive of 3 zero blocks written as format version 1.1 with header keys \
             unknown to version 1.0 (top level and nested); readers must accept it and ignore them",
            &bz,
            &[],
            &z,
        );

        self.invalid(&ba, &be, rules::cases(&ba, &bb, &bm));
        self.chains(rules::chain_cases(&ba, &bb, &bj));
        self.repository(&a, &b, &f, &gi);
        self.encrypted();
    }

    /// Writes `valid/NAME.tarc` and its description. `chain` names the ancestors, oldest
    /// first; `image` is the point in time the archive completes.
    fn valid(
        &mut self,
        name: &str,
        description: &str,
        bytes: &[u8],
        chain: &[&str],
        image: &Image,
    ) {
        let r = ArchiveReader::open(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        r.verify().unwrap_or_else(|e| panic!("{name}: {e}"));
        let entries = r.entries().expect("entries");
        let t = &r.trailer;
        assert_eq!(t.image_digest, image.image_digest(), "{name}: image digest");
        let header_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        // Big vectors list a sample of their entries and blocks; digests over all of
        // them pin the rest.
        let big = entries.len() > 64;
        let sample =
            |i: usize| !big || i < 3 || (4093..4099).contains(&i) || i + 3 >= entries.len();
        let mut held = Vec::new();
        let mut all_entries = Vec::new();
        let mut entries_json = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            e.encode(&mut all_entries);
            for b in e.block..e.end() {
                let kind = if matches!(e.kind, EntryKind::Zero { .. }) {
                    "zero"
                } else {
                    "data"
                };
                held.push(json!({"block": b, "kind": kind, "sha256": Digest::of(&image.block(b)).to_hex()}));
            }
            if !sample(i) {
                continue;
            }
            entries_json.push(match e.kind {
                EntryKind::Zero { count } => json!({"index": i, "block": e.block, "kind": "zero",
                    "count": count, "frame_offset": 0, "frame_len": 0, "slot": 0,
                    "digest": Digest::default().to_hex()}),
                EntryKind::Data {
                    frame,
                    frame_offset,
                    frame_len,
                    slot,
                    digest,
                } => json!({
                    "index": i, "block": e.block,
                    "kind": if frame == FrameKind::Zstd { "zstd" } else { "raw" },
                    "count": 1, "frame_offset": frame_offset, "frame_len": frame_len,
                    "slot": slot, "digest": digest.to_hex()}),
            });
        }
        let dir_off = t.directory_offset as usize;
        let directory: Vec<Value> = bytes[dir_off..bytes.len() - TRAILER_LEN]
            .chunks_exact(64)
            .map(|d| {
                let e = thinarc::format::DirEntry::decode(d.try_into().expect("64 bytes"))
                    .expect("dir");
                json!({"offset": e.offset, "entries": e.entries, "first_block": e.first_block,
                    "end_block": e.end_block, "sha256": e.sha256.to_hex()})
            })
            .collect();
        let mut all_blocks = Vec::new();
        let point: Vec<Value> = (0..image.blocks.len() as u64)
            .map(|b| {
                let sha = Digest::of(&image.block(b));
                all_blocks.extend_from_slice(&sha.0);
                let kind = if image.blocks[b as usize].is_some() {
                    "data"
                } else {
                    "zero"
                };
                json!({"block": b, "kind": kind, "len": image.geometry().block_len(b),
                    "sha256": sha.to_hex()})
            })
            .collect();
        let list = |v: Vec<Value>| if big { Value::Null } else { Value::Array(v) };
        let mut v = json!({
            "description": description,
            "file": format!("{name}.tarc"),
            "file_len": bytes.len(),
            "file_sha256": hex::encode(Sha256::digest(bytes)),
            "preamble": {
                "major": u16::from_le_bytes([bytes[8], bytes[9]]),
                "minor": u16::from_le_bytes([bytes[10], bytes[11]]),
                "header_len": header_len,
            },
            "header": serde_json::to_value(&r.header).expect("header json"),
            "trailer": {
                "body_offset": t.body_offset,
                "directory_offset": t.directory_offset,
                "directory_entries": t.directory_entries,
                "data_blocks": t.data_blocks,
                "zero_blocks": t.zero_blocks,
                "frame_bytes": t.frame_bytes,
                "header_sha256": t.header_sha256.to_hex(),
                "directory_sha256": t.directory_sha256.to_hex(),
                "image_digest": t.image_digest.to_hex(),
                "trailer_sha256": t.trailer_sha256.to_hex(),
            },
            "archive_digest": t.trailer_sha256.to_hex(),
            "blocks": r.geometry().blocks(),
            "directory": directory,
            "entry_count": entries.len(),
            "entries_sha256": hex::encode(Sha256::digest(&all_entries)),
            "entries": entries_json,
            "held_blocks": list(held),
            "chain": chain.iter().map(|c| format!("{c}.tarc")).collect::<Vec<_>>(),
            "point": {
                "image_digest": image.image_digest().to_hex(),
                "block_digests_sha256": hex::encode(Sha256::digest(&all_blocks)),
                "blocks": list(point),
            },
        });
        v["image_digest"] = json!(image.image_digest().to_hex());
        self.write(&format!("valid/{name}.tarc"), bytes);
        self.write_json(&format!("valid/{name}.json"), &v);
    }

    /// Writes `chains/NAME.tarc` and `chains/NAME.json`: deltas that each break a chain
    /// rule against the valid vectors they name. Each must be a valid archive on its own.
    fn chains(&mut self, cases: Vec<rules::ChainCase>) {
        for (name, bytes, error, description, chain) in cases {
            let r = ArchiveReader::open(&bytes).unwrap_or_else(|e| panic!("chains/{name}: {e}"));
            r.verify().unwrap_or_else(|e| panic!("chains/{name}: {e}"));
            let v = json!({
                "description": description,
                "file": format!("{name}.tarc"),
                "error": error,
                "chain": chain.iter().map(|c| format!("valid/{c}.tarc")).collect::<Vec<_>>(),
            });
            self.write(&format!("chains/{name}.tarc"), &bytes);
            self.write_json(&format!("chains/{name}.json"), &v);
        }
    }

    /// Writes the invalid vectors, derived from `full-small` (`a`) and `empty` (`e`), and
    /// those of [`rules::cases`] (`more`).
    fn invalid(&mut self, a: &[u8], e: &[u8], more: Vec<Case>) {
        let t = Trailer::decode(&a[a.len() - TRAILER_LEN..]).expect("trailer");
        let r = ArchiveReader::open(a).expect("open");
        let entries = r.entries().expect("entries");
        let raw_frame = entries
            .iter()
            .find_map(|e| match e.kind {
                EntryKind::Data {
                    frame: FrameKind::Raw,
                    frame_offset,
                    ..
                } => Some(frame_offset),
                _ => None,
            })
            .expect("full-small has a raw frame") as usize;
        let dir = t.directory_offset as usize;
        let seg = u64::from_le_bytes(a[dir..dir + 8].try_into().expect("8 bytes")) as usize;
        let trl = a.len() - TRAILER_LEN;
        let body = t.body_offset as usize;
        let mut cases: Vec<Case> = Vec::new();
        let mut case =
            |name: &str, bytes: Vec<u8>, error: &'static str, stage: &'static str, d: String| {
                cases.push((name.to_string(), bytes, error, stage, d));
            };

        let mut v = a.to_vec();
        v[1] ^= 0x20;
        case(
            "bad-magic",
            v,
            "BadMagic",
            "open",
            "full-small with byte 1 of the magic changed".into(),
        );
        case(
            "not-an-archive",
            b"this is a text file, not a thinarc archive\n".to_vec(),
            "BadMagic",
            "open",
            "a text file".into(),
        );
        let mut v = a.to_vec();
        v[8..10].copy_from_slice(&3u16.to_le_bytes());
        case(
            "version-3",
            v,
            "UnsupportedVersion",
            "open",
            "full-small with major version 3 (checked before any checksum)".into(),
        );
        let mut v = a.to_vec();
        v[12..16].copy_from_slice(&(2u32 << 20).to_le_bytes());
        case(
            "header-too-long",
            v,
            "Corrupt",
            "open",
            "preamble header length of 2 MiB, above the 1 MiB limit".into(),
        );
        for (n, what) in [
            (0, "an empty file"),
            (10, "inside the preamble"),
            (100, "inside the header"),
            (body + 1000, "inside the body"),
            (trl, "just before the trailer"),
            (a.len() - 1, "one byte short"),
        ] {
            case(
                &format!("truncated-{n}"),
                a[..n].to_vec(),
                "Truncated",
                "open",
                format!("full-small cut to {n} bytes ({what})"),
            );
        }
        let mut v = a.to_vec();
        v[body - 5] ^= 0x01;
        case(
            "flip-header",
            v,
            "ChecksumMismatch",
            "open",
            "a flipped bit in the CBOR header".into(),
        );
        let mut v = a.to_vec();
        v[raw_frame + 100] ^= 0x01;
        case(
            "flip-frame",
            v,
            "ChecksumMismatch",
            "verify",
            "a flipped bit in the raw frame of block 0 (block digest mismatch)".into(),
        );
        let mut v = a.to_vec();
        v[seg + 64 + 40] ^= 0x01;
        case(
            "flip-segment",
            v,
            "ChecksumMismatch",
            "entries",
            "a flipped bit in the index segment".into(),
        );
        let mut v = a.to_vec();
        v[dir + 20] ^= 0x01;
        case(
            "flip-directory",
            v,
            "ChecksumMismatch",
            "open",
            "a flipped bit in the directory".into(),
        );
        let mut v = a.to_vec();
        v[trl + 24] ^= 0x01;
        case(
            "flip-trailer",
            v,
            "ChecksumMismatch",
            "open",
            "a flipped bit in the trailer's data_blocks field".into(),
        );
        let mut v = a.to_vec();
        v[seg + 64 + 13] = 1;
        reseal_segment(&mut v, 0);
        case(
            "reserved-entry",
            v,
            "Corrupt",
            "entries",
            "index entry 1 has reserved byte 13 set; all checksums recomputed".into(),
        );
        let mut v = a.to_vec();
        v[dir + 12] = 1;
        reseal_directory(&mut v);
        case(
            "reserved-directory",
            v,
            "Corrupt",
            "open",
            "directory entry 0 has reserved byte 12 set; all checksums recomputed".into(),
        );
        let mut v = a.to_vec();
        v[trl + 20] = 1;
        reseal_trailer(&mut v);
        case(
            "reserved-trailer",
            v,
            "Corrupt",
            "open",
            "the trailer has reserved byte 20 set; its checksum recomputed".into(),
        );
        let mut v = a.to_vec();
        v[seg + 16..seg + 24].copy_from_slice(&t.directory_offset.to_le_bytes());
        reseal_segment(&mut v, 0);
        case(
            "frame-outside-body",
            v,
            "Corrupt",
            "entries",
            "index entry 0 points its frame at the directory; all checksums recomputed".into(),
        );
        let mut v = a.to_vec();
        v[trl + 24..trl + 32].copy_from_slice(&(t.data_blocks - 1).to_le_bytes());
        v[trl + 32..trl + 40].copy_from_slice(&(t.zero_blocks + 1).to_le_bytes());
        reseal_trailer(&mut v);
        case(
            "trailer-counts",
            v,
            "Corrupt",
            "verify",
            "the trailer counts one data block too few and one zero block too many; checksum recomputed".into(),
        );
        let mut v = a.to_vec();
        v[trl + 112] ^= 0x01;
        reseal_trailer(&mut v);
        case(
            "image-digest",
            v,
            "ChecksumMismatch",
            "verify",
            "a full archive whose trailer image digest does not match its blocks; checksum recomputed".into(),
        );
        case("zero-data-block", zero_data_block(a, raw_frame), "Corrupt", "verify", "block 0 is stored as a raw data frame of zeros with a matching digest; all checksums and the image digest recomputed".into());
        case(
            "header-trailing-bytes",
            header_trailing_byte(e),
            "Corrupt",
            "open",
            "the empty archive with one byte after the CBOR header map, inside the header length; offsets and checksums recomputed".into(),
        );

        cases.extend(more);
        let mut index = BTreeMap::new();
        for (name, bytes, error, stage, description) in cases {
            self.write(&format!("invalid/{name}.tarc"), &bytes);
            let v = json!({
                "description": description,
                "file": format!("{name}.tarc"),
                "error": error,
                "stage": stage,
            });
            self.write_json(&format!("invalid/{name}.json"), &v);
            assert!(
                index.insert(name, (error, stage)).is_none(),
                "two invalid vectors of one name"
            );
        }
        // Every invalid vector must be rejected by the reference reader as described.
        for (name, want) in &index {
            let bytes =
                std::fs::read(self.out.join(format!("invalid/{name}.tarc"))).expect("read back");
            let got = match ArchiveReader::open(&bytes) {
                Err(e) => ("open", e),
                Ok(r) => match r.entries().and_then(|_| r.verify()) {
                    Err(e) if r.entries().is_err() => ("entries", e),
                    Err(e) => ("verify", e),
                    Ok(()) => panic!("invalid/{name} was accepted"),
                },
            };
            let kind = format!("{:?}", got.1);
            assert!(
                kind.starts_with(want.0) && got.0 == want.1,
                "invalid/{name}: expected {want:?}, got {} {}",
                got.0,
                got.1
            );
        }
    }
}

fn trailer_at(v: &[u8]) -> usize {
    v.len() - TRAILER_LEN
}

/// Recomputes the trailer checksum after an edit of the trailer.
fn reseal_trailer(v: &mut [u8]) {
    let t = trailer_at(v);
    let sum = Sha256::digest(&v[t..t + 144]);
    v[t + 144..t + 176].copy_from_slice(&sum);
}

/// Recomputes the directory checksum (and the trailer's) after an edit of the directory.
fn reseal_directory(v: &mut [u8]) {
    let t = trailer_at(v);
    let dir = u64::from_le_bytes(v[t + 8..t + 16].try_into().expect("8 bytes")) as usize;
    let sum = Sha256::digest(&v[dir..t]);
    v[t + 80..t + 112].copy_from_slice(&sum);
    reseal_trailer(v);
}

/// Recomputes segment `i`'s checksum (and everything above it) after an edit of it.
fn reseal_segment(v: &mut [u8], i: usize) {
    let t = trailer_at(v);
    let d = u64::from_le_bytes(v[t + 8..t + 16].try_into().expect("8 bytes")) as usize + 64 * i;
    let off = u64::from_le_bytes(v[d..d + 8].try_into().expect("8 bytes")) as usize;
    let n = u32::from_le_bytes(v[d + 8..d + 12].try_into().expect("4 bytes")) as usize;
    let sum = Sha256::digest(&v[off..off + 64 * n]);
    v[d + 32..d + 64].copy_from_slice(&sum);
    reseal_directory(v);
}

/// Recomputes the header checksum (and the trailer's) after an edit of the header.
fn reseal_header(v: &mut [u8]) {
    let t = trailer_at(v);
    let body = u64::from_le_bytes(v[t..t + 8].try_into().expect("8 bytes")) as usize;
    let sum = Sha256::digest(&v[..body]);
    v[t + 48..t + 80].copy_from_slice(&sum);
    reseal_trailer(v);
}

/// `full-small` with the raw frame of block 0 overwritten by zeros, its entry digest and
/// the image digest made to match: only the "data blocks are never all zero" rule fails.
fn zero_data_block(a: &[u8], raw_frame: usize) -> Vec<u8> {
    let mut v = a.to_vec();
    v[raw_frame..raw_frame + BSU].fill(0);
    let zero = Digest::of(&[0u8; BSU]);
    let r = ArchiveReader::open(a).expect("open");
    let t = r.trailer;
    let dir = t.directory_offset as usize;
    let seg = u64::from_le_bytes(a[dir..dir + 8].try_into().expect("8 bytes")) as usize;
    v[seg + 32..seg + 64].copy_from_slice(&zero.0);
    // The image digest a writer would have computed from this index.
    let mut h = ImageHasher::new(r.geometry());
    for e in r.entries().expect("entries") {
        match e.kind {
            EntryKind::Zero { count } => h.zeros(u64::from(count)),
            EntryKind::Data { .. } if e.block == 0 => h.data(&zero),
            EntryKind::Data { digest, .. } => h.data(&digest),
        }
    }
    let image = h.finish().expect("covers");
    let tr = trailer_at(&v);
    v[tr + 112..tr + 144].copy_from_slice(&image.0);
    reseal_segment(&mut v, 0);
    v
}

/// The empty archive with one byte appended to its CBOR header (inside the header
/// length), every offset and checksum adjusted.
fn header_trailing_byte(e: &[u8]) -> Vec<u8> {
    let mut p = Parts::of(e);
    p.header.push(0);
    p.assemble()
}

/// Rewrites an archive as format version 1.1 with header keys that version 1.0 does not
/// define, every offset and checksum adjusted.
fn with_future_header(bytes: &[u8], h: &Header) -> Vec<u8> {
    use ciborium::Value as C;
    let mut map = match C::serialized(h).expect("header value") {
        C::Map(m) => m,
        _ => unreachable!("a header is a map"),
    };
    for (k, v) in map.iter_mut() {
        if k.as_text() == Some("compression")
            && let C::Map(m) = v
        {
            m.push((C::Text("window_log".into()), C::Integer(27.into())));
        }
    }
    map.push((
        C::Text("x_future_field".into()),
        C::Text("readers of 1.0 ignore this".into()),
    ));
    map.push((
        C::Text("x_future_map".into()),
        C::Map(vec![(C::Integer(1.into()), C::Bool(true))]),
    ));
    let mut p = Parts::of(bytes);
    p.minor = 1;
    p.header.clear();
    ciborium::into_writer(&C::Map(map), &mut p.header).expect("cbor");
    p.assemble()
}
