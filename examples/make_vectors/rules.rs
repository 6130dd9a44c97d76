//! Invalid vectors for the rules of FORMAT.md that a reader MUST enforce, beyond the
//! first set in `main.rs`: each breaks exactly one rule of a valid vector, with every
//! other offset and checksum recomputed (by [`Parts`] or the `reseal_*` helpers).

use ciborium::Value as C;
use thinarc::format::{
    ArchiveWriter, BlockSize, Digest, EncodedFrame, EntryKind, FrameKind, Geometry, ImageHasher,
    TRAILER_LEN, Trailer, check_zstd_frame, decompress_frame, zstd_frame_header,
};

use crate::parts::Parts;
use crate::{Case, header, reseal_directory, reseal_segment, text};

/// The CBOR header map of `p`.
fn header_map(p: &Parts) -> Vec<(C, C)> {
    match ciborium::from_reader(&p.header[..]).expect("cbor") {
        C::Map(m) => m,
        _ => unreachable!("a header is a map"),
    }
}

fn cbor(v: &C) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("cbor");
    out
}

/// Sets (`Some`) or removes (`None`) the key at `path` in a header map.
fn edit(m: &mut Vec<(C, C)>, path: &[&str], value: Option<C>) {
    let (key, rest) = path.split_first().expect("a path");
    let i = m.iter().position(|(k, _)| k.as_text() == Some(key));
    if !rest.is_empty() {
        let C::Map(inner) = &mut m[i.expect("the key exists")].1 else {
            panic!("{key} is not a map");
        };
        return edit(inner, rest, value);
    }
    match (i, value) {
        (Some(i), Some(v)) => m[i].1 = v,
        (Some(i), None) => {
            m.remove(i);
        }
        (None, Some(v)) => m.push((C::Text((*key).into()), v)),
        (None, None) => panic!("no key {key} to remove"),
    }
}

/// `base` with its header map changed by `f`, laid out again.
fn with_header(base: &[u8], f: impl FnOnce(&mut Vec<(C, C)>)) -> Vec<u8> {
    let mut p = Parts::of(base);
    let mut m = header_map(&p);
    f(&mut m);
    p.header = cbor(&C::Map(m));
    p.assemble()
}

/// `base` with the 64-byte index entry `i` of its first segment changed by `f`.
fn with_entry(base: &[u8], i: usize, f: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut v = base.to_vec();
    let seg = segment_offset(&v, 0);
    f(&mut v[seg + 64 * i..seg + 64 * (i + 1)]);
    reseal_segment(&mut v, 0);
    v
}

/// `base` with directory entry `i` changed by `f`.
fn with_dir_entry(base: &[u8], i: usize, f: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut v = base.to_vec();
    let d = trailer(&v).directory_offset as usize + 64 * i;
    f(&mut v[d..d + 64]);
    reseal_directory(&mut v);
    v
}

/// `base` with its trailer changed by `f` (then its checksum recomputed).
fn with_trailer(base: &[u8], f: impl FnOnce(&mut Trailer)) -> Vec<u8> {
    let mut v = base.to_vec();
    let mut t = trailer(&v);
    f(&mut t);
    v.truncate(v.len() - TRAILER_LEN);
    t.encode(&mut v);
    v
}

fn trailer(v: &[u8]) -> Trailer {
    Trailer::decode(&v[v.len() - TRAILER_LEN..]).expect("trailer")
}

fn segment_offset(v: &[u8], i: usize) -> usize {
    let d = trailer(v).directory_offset as usize + 64 * i;
    u64::from_le_bytes(v[d..d + 8].try_into().expect("8 bytes")) as usize
}

fn put<const N: usize>(b: &mut [u8], at: usize, bytes: [u8; N]) {
    b[at..at + N].copy_from_slice(&bytes);
}

/// The zstd frame `stored` with a window descriptor of `window_byte` instead of its
/// single-segment flag (RFC 8878 3.1.1.1), and a 4-byte content size.
fn with_window(stored: &[u8], window_byte: u8) -> Vec<u8> {
    let h = zstd_frame_header(stored).expect("zstd header");
    let mut v = stored[..4].to_vec();
    v.extend([0x80 | (stored[4] & 0x04), window_byte]);
    v.extend((h.content_size.expect("content size") as u32).to_le_bytes());
    v.extend(&stored[h.header_len..]);
    v
}

/// The zstd frame `stored` with a one-byte `Dictionary_ID` field naming dictionary 1.
fn with_dictionary(stored: &[u8]) -> Vec<u8> {
    let h = zstd_frame_header(stored).expect("zstd header");
    let window = if h.single_segment { 5 } else { 6 };
    let mut v = stored[..window].to_vec();
    v[4] |= 0x01;
    v.push(1);
    v.extend(&stored[window..]);
    v
}

/// The two segments of `two` (an archive of two segments) swapped in the body; `by_block`
/// lists the directory in block order (so offsets decrease), otherwise in offset order
/// (so blocks decrease).
fn swapped_segments(two: &[u8], by_block: bool) -> Vec<u8> {
    let mut v = two.to_vec();
    let t = trailer(&v);
    let d = t.directory_offset as usize;
    let (a, b) = (v[d..d + 64].to_vec(), v[d + 64..d + 128].to_vec());
    let len = |e: &[u8]| 64 * u32::from_le_bytes(e[8..12].try_into().expect("4")) as usize;
    let (la, lb) = (len(&a), len(&b));
    let start = segment_offset(&v, 0);
    let (sa, sb) = (
        v[start..start + la].to_vec(),
        v[start + la..start + la + lb].to_vec(),
    );
    v[start..start + lb].copy_from_slice(&sb);
    v[start + lb..start + lb + la].copy_from_slice(&sa);
    let (mut a, mut b) = (a, b);
    put(&mut b, 0, (start as u64).to_le_bytes());
    put(&mut a, 0, ((start + lb) as u64).to_le_bytes());
    let order = if by_block { [a, b] } else { [b, a] };
    v[d..d + 128].copy_from_slice(&order.concat());
    reseal_directory(&mut v);
    v
}

/// A volume of 16 MiB blocks, 16 MiB + 100 bytes: a zero block and a 100-byte data
/// block in a raw frame.
fn big_blocks() -> Vec<u8> {
    let bs = 16 << 20;
    let size = u64::from(bs) + 100;
    let mut h = header("b1000000000000000000000000000009", 1, None, size);
    h.block_size = bs;
    let data = text("big", 100);
    let mut out = Vec::new();
    let mut w = ArchiveWriter::new(&h, None, &mut out).expect("header");
    w.push_zeros(0, 1, &mut out).expect("zeros");
    let frame = EncodedFrame {
        first_block: 1,
        kind: FrameKind::Raw,
        bytes: data.clone(),
        digests: vec![Digest::of(&data)],
    };
    w.push_frame(&frame, &mut out).expect("frame");
    let mut image = ImageHasher::new(Geometry::new(size, BlockSize::new(bs).expect("bs")));
    image.zeros(1);
    image.data(&Digest::of(&data));
    w.finish(image.finish().expect("covers"), &mut out);
    out
}

/// The invalid vectors of this module. `a` is `full-small`, `grow` `delta-grow` and
/// `merged` `delta-merged`.
pub fn cases(a: &[u8], grow: &[u8], merged: &[u8]) -> Vec<Case> {
    let mut out: Vec<Case> = Vec::new();
    let mut case =
        |name: &str, bytes: Vec<u8>, error: &'static str, stage: &'static str, d: &str| {
            out.push((name.to_string(), bytes, error, stage, d.to_string()));
        };
    let t = trailer(a);
    let p = Parts::of(a);
    assert_eq!(p.assemble(), a, "full-small lays out again byte for byte");
    // Entries of full-small: 0 block 0 (raw frame), 1 zero block 1, 2..4 blocks 2..4
    // (one zstd frame, slots 0..2). Frames: 0 raw, 1 zstd.
    let zstd_frame = p.frames[1].clone();
    let content_len = check_zstd_frame(&zstd_frame).expect("valid frame") as usize;
    let content = decompress_frame(FrameKind::Zstd, &zstd_frame, content_len).expect("decodes");

    // Preamble.
    let mut v = a.to_vec();
    put(&mut v, 12, 0u32.to_le_bytes());
    case(
        "header-len-0",
        v,
        "Corrupt",
        "open",
        "preamble header length 0 (the header must be 1 ..= 1 MiB)",
    );

    // Header (5, 5.2): each breaks one rule of the CBOR map; offsets and checksums follow.
    let hcase = |f: fn(&mut Vec<(C, C)>)| with_header(a, f);
    let header_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "header-not-map",
            {
                let mut q = p.clone();
                let values = header_map(&p).into_iter().map(|(_, v)| v).collect();
                q.header = cbor(&C::Array(values));
                q.assemble()
            },
            "the header is a CBOR array of the field values, not a map",
        ),
        (
            "header-missing-key",
            hcase(|m| edit(m, &["size"], None)),
            "the required key `size` is missing",
        ),
        (
            "header-missing-nested-key",
            hcase(|m| edit(m, &["source", "method"], None)),
            "the required key `source.method` is missing",
        ),
        (
            "header-wrong-type",
            hcase(|m| edit(m, &["seq"], Some(C::Text("1".into())))),
            "`seq` is the text \"1\", not an unsigned integer",
        ),
        (
            "header-duplicate-key",
            hcase(|m| m.push((C::Text("seq".into()), C::Integer(1.into())))),
            "the key `seq` appears twice (with the same value)",
        ),
        (
            "header-key-not-text",
            hcase(|m| {
                let i = m
                    .iter()
                    .position(|(k, _)| k.as_text() == Some("block_size"))
                    .expect("block_size");
                m[i].0 = C::Integer(7.into());
            }),
            "the key `block_size` is written as the integer 7 (its position in 5.1); header keys are text",
        ),
        (
            "block-size-not-power-of-two",
            hcase(|m| edit(m, &["block_size"], Some(C::Integer(6144.into())))),
            "block_size 6144 is not a power of two",
        ),
        (
            "block-size-too-small",
            hcase(|m| edit(m, &["block_size"], Some(C::Integer(2048.into())))),
            "block_size 2048 is below 4096",
        ),
        (
            "block-size-too-large",
            hcase(|m| edit(m, &["block_size"], Some(C::Integer((32u64 << 20).into())))),
            "block_size 32 MiB is above 16 MiB",
        ),
        (
            "volume-id-not-hex",
            hcase(|m| {
                edit(
                    m,
                    &["volume_id"],
                    Some(C::Text("7468696e6172632d766f6c756d652d3g".into())),
                )
            }),
            "volume_id has a `g` among its 32 characters",
        ),
        (
            "archive-id-short",
            hcase(|m| {
                edit(
                    m,
                    &["archive_id"],
                    Some(C::Text("a000000000000000000000000000001".into())),
                )
            }),
            "archive_id has 31 hex digits",
        ),
        (
            "compression-not-zstd",
            hcase(|m| {
                edit(
                    m,
                    &["compression", "algorithm"],
                    Some(C::Text("lz4".into())),
                )
            }),
            "compression.algorithm is \"lz4\"",
        ),
        (
            "volume-size-too-small",
            hcase(|m| edit(m, &["size"], Some(C::Integer(16384.into())))),
            "size 16384 (4 blocks) while the index holds 5 blocks: the segment runs past the volume end",
        ),
        (
            "lvm-missing-key",
            hcase(|m| {
                let lvm = [
                    ("vg", C::Text("vg0".into())),
                    ("lv", C::Text("vectors".into())),
                    (
                        "lv_uuid",
                        C::Text("rPA6P5-RfIj-Kxof-Od3P-pkvh-qnNc-rMpq1b".into()),
                    ),
                    ("pool", C::Text("pool".into())),
                    ("snapshot", C::Text("vectors-thinarc-a00000000000".into())),
                    (
                        "snapshot_uuid",
                        C::Text("P5k2ga-M18t-aBCd-0BsV-cxy1-yp4K-kATD8O".into()),
                    ),
                    ("chunk_size", C::Integer(65536.into())),
                ];
                m.push((
                    C::Text("lvm".into()),
                    C::Map(
                        lvm.into_iter()
                            .map(|(k, v)| (C::Text(k.into()), v))
                            .collect(),
                    ),
                ));
            }),
            "an `lvm` map without `thin_id` (every `lvm` key is required when the map is present)",
        ),
    ];
    for (name, bytes, d) in header_cases {
        case(name, bytes, "Corrupt", "open", d);
    }
    let mcase = |f: fn(&mut Vec<(C, C)>)| with_header(merged, f);
    let parent_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "parent-seq-not-below",
            mcase(|m| edit(m, &["parent", "seq"], Some(C::Integer(3.into())))),
            "delta-merged (seq 3) with parent.seq 3",
        ),
        (
            "parent-digest-not-hex",
            mcase(|m| edit(m, &["parent", "digest"], Some(C::Text("x".repeat(64))))),
            "delta-merged with a parent.digest of 64 `x`",
        ),
        (
            "parent-image-short",
            mcase(|m| edit(m, &["parent", "image"], Some(C::Text("ab".repeat(31))))),
            "delta-merged with a parent.image of 62 hex digits",
        ),
        (
            "parent-missing-digest",
            mcase(|m| edit(m, &["parent", "digest"], None)),
            "delta-merged whose parent map lacks `digest`",
        ),
    ];
    for (name, bytes, d) in parent_cases {
        case(name, bytes, "Corrupt", "open", d);
    }

    // Trailer and layout (9).
    case(
        "layout-length",
        with_trailer(a, |t| t.directory_offset -= 1),
        "Corrupt",
        "open",
        "directory_offset one byte early: directory and trailer do not end the file; checksum recomputed",
    );
    case(
        "body-offset",
        with_trailer(a, |t| t.body_offset += 1),
        "Corrupt",
        "open",
        "body_offset one above 16 + header_len; checksum recomputed",
    );
    case(
        "body-after-directory",
        with_trailer(a, |t| t.body_offset = t.directory_offset + 1),
        "Corrupt",
        "open",
        "body_offset one past directory_offset; checksum recomputed",
    );
    case(
        "trailer-counts-span",
        with_trailer(a, |t| t.data_blocks += 5),
        "Corrupt",
        "open",
        "the trailer counts 5 more data blocks than the segments span; checksum recomputed",
    );

    // Directory (8).
    case(
        "directory-no-entries",
        with_dir_entry(a, 0, |d| put(d, 8, 0u32.to_le_bytes())),
        "Corrupt",
        "open",
        "directory entry 0 says its segment has 0 entries; checksums recomputed",
    );
    case(
        "directory-too-many-entries",
        with_dir_entry(a, 0, |d| put(d, 8, 4097u32.to_le_bytes())),
        "Corrupt",
        "open",
        "directory entry 0 says its segment has 4097 entries; checksums recomputed",
    );
    case(
        "directory-empty-range",
        with_dir_entry(a, 0, |d| put(d, 24, 0u64.to_le_bytes())),
        "Corrupt",
        "open",
        "directory entry 0 has end_block 0 = first_block; checksums recomputed",
    );
    case(
        "segment-past-volume-end",
        with_dir_entry(a, 0, |d| put(d, 24, 6u64.to_le_bytes())),
        "Corrupt",
        "open",
        "directory entry 0 has end_block 6 in a 5-block volume; checksums recomputed",
    );
    case(
        "segment-outside-body",
        with_dir_entry(a, 0, |d| put(d, 0, t.directory_offset.to_le_bytes())),
        "Corrupt",
        "open",
        "directory entry 0 locates its segment at the directory; checksums recomputed",
    );
    case(
        "segment-before-body",
        with_dir_entry(a, 0, |d| put(d, 0, 16u64.to_le_bytes())),
        "Corrupt",
        "open",
        "directory entry 0 locates its segment in the header; checksums recomputed",
    );
    let two = Parts {
        per_segment: 2,
        ..p.clone()
    }
    .assemble();
    case(
        "segments-block-order",
        swapped_segments(&two, false),
        "Corrupt",
        "open",
        "full-small with two segments (blocks 2..5 first in the body, then 0..2), listed in offset order: segments out of block order",
    );
    case(
        "segments-offset-order",
        swapped_segments(&two, true),
        "Corrupt",
        "open",
        "full-small with two segments (blocks 2..5 first in the body, then 0..2), listed in block order: segments out of offset order",
    );

    // Index entries (6.2, 7).
    let entry_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "entry-kind-3",
            with_entry(a, 0, |e| e[12] = 3),
            "index entry 0 has kind 3 (reserved)",
        ),
        (
            "zero-count-0",
            with_entry(a, 1, |e| put(e, 8, 0u32.to_le_bytes())),
            "the zero entry of block 1 has count 0",
        ),
        (
            "zero-with-digest",
            with_entry(a, 1, |e| e[32] = 1),
            "the zero entry of block 1 has a non-zero digest byte",
        ),
        (
            "zero-with-frame-offset",
            with_entry(a, 1, |e| put(e, 16, t.body_offset.to_le_bytes())),
            "the zero entry of block 1 has a frame offset",
        ),
        (
            "data-count-2",
            with_entry(a, 0, |e| put(e, 8, 2u32.to_le_bytes())),
            "the data entry of block 0 has count 2",
        ),
        (
            "frame-len-0",
            with_entry(a, 0, |e| put(e, 24, 0u32.to_le_bytes())),
            "the data entry of block 0 has frame_len 0",
        ),
        (
            "frame-len-too-large",
            with_entry(a, 0, |e| {
                put(
                    e,
                    24,
                    (16u32 << 20 | 64 << 10).wrapping_add(1).to_le_bytes(),
                )
            }),
            "the data entry of block 0 has frame_len 16 MiB + 64 KiB + 1",
        ),
        (
            "frame-before-body",
            with_entry(a, 0, |e| put(e, 16, 16u64.to_le_bytes())),
            "the data entry of block 0 points its frame into the header",
        ),
        (
            "slot-above-block",
            with_entry(a, 0, |e| put(e, 14, 1u16.to_le_bytes())),
            "the data entry of block 0 has slot 1 (slot > block)",
        ),
        (
            "entries-out-of-order",
            {
                let mut v = a.to_vec();
                let seg = segment_offset(&v, 0);
                let (e0, e1) = (v[seg..seg + 64].to_vec(), v[seg + 64..seg + 128].to_vec());
                v[seg..seg + 128].copy_from_slice(&[e1, e0].concat());
                reseal_segment(&mut v, 0);
                v
            },
            "index entries 0 (block 0) and 1 (block 1) swapped",
        ),
        (
            "entries-overlap",
            with_entry(a, 1, |e| put(e, 8, 2u32.to_le_bytes())),
            "the zero entry of block 1 has count 2, overlapping the entry of block 2",
        ),
        (
            "entry-slot-beyond-frame-limit",
            {
                let big = big_blocks();
                with_entry(&big, 1, |e| put(e, 14, 1u16.to_le_bytes()))
            },
            "16 MiB blocks: the data entry of block 1 has slot 1, but a frame holds at most 16 MiB / block_size = 1 block",
        ),
        (
            "segment-span",
            with_dir_entry(grow, 0, |d| put(d, 16, 1u64.to_le_bytes())),
            "delta-grow, whose segment starts at block 2, with first_block 1 in its directory entry",
        ),
    ];
    for (name, bytes, d) in entry_cases {
        case(
            name,
            bytes,
            "Corrupt",
            "entries",
            &format!("{d}; checksums recomputed"),
        );
    }

    // Frames and blocks (6.1, 7.2, 13.3 verify).
    let slots = |e: &mut [u8], s: u16| put(e, 14, s.to_le_bytes());
    let frame_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "frame-slots-out-of-order",
            {
                let v = with_entry(a, 3, |e| slots(e, 2));
                with_entry(&v, 4, |e| slots(e, 1))
            },
            "blocks 3 and 4 of the zstd frame have slots 2 and 1",
        ),
        (
            "frame-kind-disagrees",
            with_entry(a, 3, |e| e[12] = 2),
            "block 3 says its frame (zstd for blocks 2 and 4) is raw",
        ),
        (
            "frame-len-disagrees",
            with_entry(a, 3, |e| {
                let n = u32::from_le_bytes(e[24..28].try_into().expect("4"));
                put(e, 24, (n + 1).to_le_bytes());
            }),
            "block 3 gives its frame a stored length one above that of blocks 2 and 4",
        ),
    ];
    for (name, bytes, d) in frame_cases {
        case(
            name,
            bytes,
            "Corrupt",
            "verify",
            &format!("{d}; checksums recomputed"),
        );
    }
    let mut zstd_case = |name: &str, bytes: Vec<u8>, d: &str| {
        let mut q = p.clone();
        q.set_frame(1, bytes);
        case(
            name,
            q.assemble(),
            "Corrupt",
            "verify",
            &format!("the zstd frame of blocks 2..4 {d}; offsets and checksums recomputed"),
        );
    };
    let mut c = zstd::bulk::Compressor::new(3).expect("zstd");
    c.set_parameter(zstd::stream::raw::CParameter::ContentSizeFlag(false))
        .expect("flag");
    zstd_case(
        "zstd-no-content-size",
        c.compress(&content).expect("zstd"),
        "has no Frame_Content_Size",
    );
    let mut c = zstd::bulk::Compressor::new(3).expect("zstd");
    let mut longer = content.clone();
    longer.extend(text("extra", 100));
    zstd_case(
        "zstd-content-size-larger",
        c.compress(&longer).expect("zstd"),
        "holds its blocks and 100 more bytes (its content size is 100 above the blocks')",
    );
    zstd_case(
        "zstd-trailing-bytes",
        [zstd_frame.clone(), vec![0; 4]].concat(),
        "is followed by 4 zero bytes inside frame_len",
    );
    zstd_case(
        "zstd-second-frame",
        [zstd_frame.clone(), c.compress(b"").expect("zstd")].concat(),
        "is followed by a second, empty zstd frame inside frame_len",
    );
    let skippable = [0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 0, 0, 0, 0];
    zstd_case(
        "zstd-skippable-frame",
        [zstd_frame.clone(), skippable.to_vec()].concat(),
        "is followed by a skippable frame inside frame_len",
    );
    zstd_case(
        "zstd-window-too-large",
        with_window(&zstd_frame, 15 << 3),
        "declares a 32 MiB window (Window_Descriptor 0x78, no single-segment flag); zstd itself decodes it",
    );
    zstd_case(
        "zstd-skippable-first",
        [skippable.to_vec(), zstd_frame.clone()].concat(),
        "is preceded by a skippable frame inside frame_len",
    );
    let mut bit = zstd_frame.clone();
    bit[4] |= 0x08;
    zstd_case(
        "zstd-reserved-bit",
        bit,
        "has the reserved bit of its Frame_Header_Descriptor set",
    );
    zstd_case(
        "zstd-dictionary",
        with_dictionary(&zstd_frame),
        "names dictionary 1 (a one-byte Dictionary_ID field)",
    );
    let mut reserved = zstd_frame.clone();
    reserved[zstd_frame_header(&zstd_frame).expect("header").header_len] |= 0x06;
    zstd_case(
        "zstd-reserved-block",
        reserved,
        "has its first block's type set to 3 (reserved): it does not decode",
    );
    let mut q = p.clone();
    let mut raw = q.frames[0].clone();
    raw.push(0);
    q.set_frame(0, raw);
    case(
        "raw-frame-length",
        q.assemble(),
        "Corrupt",
        "verify",
        "the raw frame of block 0 is 4097 bytes, one more than the block; offsets and checksums recomputed",
    );
    let mut q = p.clone();
    q.gap = vec![0; 8];
    case(
        "body-gap",
        q.assemble(),
        "Corrupt",
        "verify",
        "8 bytes between the last frame and the segment belong to no frame or segment; offsets and checksums recomputed",
    );
    let mut q = p.clone();
    q.entries
        .retain(|e| !matches!(e.kind, EntryKind::Zero { .. }));
    case(
        "full-missing-block",
        q.assemble(),
        "Corrupt",
        "verify",
        "a full archive whose index lacks the zero entry of block 1; counts and checksums recomputed",
    );
    out
}

/// A chain vector: name, the delta's bytes, error kind, description and its chain
/// (valid vectors, oldest first).
pub type ChainCase = (
    &'static str,
    Vec<u8>,
    &'static str,
    &'static str,
    &'static [&'static str],
);

/// Deltas that are valid archives on their own but break a chain rule of FORMAT.md 13.3
/// against the valid vectors they name: `a` is `full-small`, `grow` `delta-grow` and
/// `relinked` `delta-relinked`.
pub fn chain_cases(a: &[u8], grow: &[u8], relinked: &[u8]) -> Vec<ChainCase> {
    let full: &[&str] = &["full-small"];
    let merged: &[&str] = &["full-small", "delta-merged"];
    let digest = |m: &mut Vec<(C, C)>| {
        edit(m, &["parent", "digest"], Some(C::Text("0f".repeat(32))));
    };
    // A delta of full-small in 8 KiB blocks, holding nothing.
    let block_size = {
        let t = trailer(a);
        let mut h = header("b2000000000000000000000000000010", 2, None, 17384);
        h.parent = Some(thinarc::format::ParentRef {
            id: "a0000000000000000000000000000001".into(),
            digest: t.trailer_sha256,
            seq: 1,
            image: None,
        });
        h.block_size = 8192;
        let mut out = Vec::new();
        let w = ArchiveWriter::new(&h, None, &mut out).expect("header");
        w.finish(t.image_digest, &mut out);
        out
    };
    vec![
        (
            "chain-parent-digest",
            with_header(grow, digest),
            "Corrupt",
            "delta-grow whose parent.digest is not full-small's (no parent.image): the link does not hold",
            full,
        ),
        (
            "chain-parent-image",
            with_header(relinked, |m| {
                edit(m, &["parent", "image"], Some(C::Text("0f".repeat(32))));
            }),
            "Corrupt",
            "delta-relinked whose parent.image is not delta-merged's image digest: neither id and digest nor image link it",
            merged,
        ),
        (
            "chain-parent-seq",
            with_header(grow, |m| {
                edit(m, &["parent", "seq"], Some(C::Integer(0.into())))
            }),
            "Corrupt",
            "delta-grow whose parent.seq is 0, not full-small's seq 1",
            full,
        ),
        (
            "chain-volume-id",
            with_header(grow, |m| {
                edit(m, &["volume_id"], Some(C::Text("0f".repeat(16))));
            }),
            "Corrupt",
            "delta-grow with another volume_id than its parent full-small",
            full,
        ),
        (
            "chain-block-size",
            block_size,
            "Corrupt",
            "a delta of full-small (4 KiB blocks) in 8 KiB blocks, holding no block",
            full,
        ),
        (
            "chain-image-digest",
            with_trailer(grow, |t| t.image_digest.0[0] ^= 1),
            "ChecksumMismatch",
            "delta-grow whose trailer image digest differs from that of the point its chain resolves to; checksum recomputed",
            full,
        ),
    ]
}
